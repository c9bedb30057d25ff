//! Postgres I/O of pricing: coupons and delivery bands. Runtime queries only.

use sqlx::PgPool;

use super::{Coupon, CouponRow, DeliveryBand};

const SELECT_COUPON: &str =
    "SELECT code, kind, value, min_order_cents, expires_at, active FROM coupons";

#[tracing::instrument(skip(pool))]
pub async fn coupon(pool: &PgPool, code: &str) -> Result<Option<Coupon>, sqlx::Error> {
    let row = sqlx::query_as::<_, CouponRow>(sqlx::AssertSqlSafe(format!(
        "{SELECT_COUPON} WHERE code = $1"
    )))
    .bind(code)
    .fetch_optional(pool)
    .await?;
    row.map(Coupon::try_from).transpose()
}

#[tracing::instrument(skip(pool))]
pub async fn coupons(pool: &PgPool) -> Result<Vec<Coupon>, sqlx::Error> {
    sqlx::query_as::<_, CouponRow>(sqlx::AssertSqlSafe(format!("{SELECT_COUPON} ORDER BY code")))
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(Coupon::try_from)
        .collect()
}

/// Inserts `coupon`; false when the code exists.
#[tracing::instrument(skip(pool, coupon), fields(code = %coupon.code))]
pub async fn insert_coupon(pool: &PgPool, coupon: &Coupon) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO coupons (code, kind, value, min_order_cents, expires_at, active) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (code) DO NOTHING",
    )
    .bind(&coupon.code)
    .bind(coupon.kind.as_str())
    .bind(coupon.value)
    .bind(coupon.min_order_cents)
    .bind(coupon.expires_at)
    .bind(coupon.active)
    .execute(pool)
    .await?;
    Ok(inserted.rows_affected() == 1)
}

/// Creates or replaces `coupon`.
#[tracing::instrument(skip(pool, coupon), fields(code = %coupon.code))]
pub async fn upsert_coupon(pool: &PgPool, coupon: &Coupon) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO coupons (code, kind, value, min_order_cents, expires_at, active) \
         VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (code) DO UPDATE SET kind = $2, value = $3, min_order_cents = $4, \
           expires_at = $5, active = $6, updated_at = now()",
    )
    .bind(&coupon.code)
    .bind(coupon.kind.as_str())
    .bind(coupon.value)
    .bind(coupon.min_order_cents)
    .bind(coupon.expires_at)
    .bind(coupon.active)
    .execute(pool)
    .await?;
    Ok(())
}

/// Deletes a coupon; false when there was none.
#[tracing::instrument(skip(pool))]
pub async fn delete_coupon(pool: &PgPool, code: &str) -> Result<bool, sqlx::Error> {
    let deleted =
        sqlx::query("DELETE FROM coupons WHERE code = $1").bind(code).execute(pool).await?;
    Ok(deleted.rows_affected() == 1)
}

/// Every band, nearest first.
#[tracing::instrument(skip(pool))]
pub async fn bands(pool: &PgPool) -> Result<Vec<DeliveryBand>, sqlx::Error> {
    let rows: Vec<(f64, i64)> =
        sqlx::query_as("SELECT up_to_km, charge_cents FROM delivery_bands ORDER BY up_to_km")
            .fetch_all(pool)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(up_to_km, charge_cents)| DeliveryBand { up_to_km, charge_cents })
        .collect())
}

/// Replaces the band table in one transaction.
#[tracing::instrument(skip(pool, bands), fields(bands = bands.len()))]
pub async fn replace_bands(pool: &PgPool, bands: &[DeliveryBand]) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("DELETE FROM delivery_bands").execute(&mut *tx).await?;
    for band in bands {
        sqlx::query("INSERT INTO delivery_bands (up_to_km, charge_cents) VALUES ($1, $2)")
            .bind(band.up_to_km)
            .bind(band.charge_cents)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await
}

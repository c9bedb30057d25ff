//! Pricing definitions in Postgres: coupons and delivery bands, the cached lookups a checkout
//! prices from ([`Pricing`], through the shared two-tier cache) and the admin queries.

use std::time::Duration;

use chrono::{DateTime, Utc};
use platform_redis::cache::{Cache, Cached};
use sqlx::PgPool;
use sqlx::postgres::PgArguments;
use sqlx::query::Query;

use crate::domain::pricing::{Coupon, CouponKind, DeliveryBand, delivery_charge};
use crate::error::CheckoutError;

/// Cache group of coupon definitions; the key is the code.
pub const COUPON_GROUP: &str = "checkout-coupons";
/// Cache group of the delivery band table; one key.
pub const DELIVERY_GROUP: &str = "checkout-delivery";
const BANDS_KEY: &str = "bands";

/// Cached pricing lookups. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Pricing {
    db: PgPool,
    cache: Cache,
    coupon_ttl: Duration,
    delivery_ttl: Duration,
}

impl Pricing {
    pub fn new(db: PgPool, cache: Cache, coupon_ttl: Duration, delivery_ttl: Duration) -> Self {
        Self { db, cache, coupon_ttl, delivery_ttl }
    }

    /// The coupon named `code` (already normalised), `None` when there is none; cached.
    #[tracing::instrument(name = "pricing.coupon", skip(self))]
    pub async fn coupon(&self, code: &str) -> Result<Cached<Option<Coupon>>, CheckoutError> {
        let db = self.db.clone();
        let owned = code.to_owned();
        self.cache
            .get_or_compute(COUPON_GROUP, code, self.coupon_ttl, move || async move {
                coupon(&db, &owned).await.map_err(CheckoutError::from)
            })
            .await
    }

    /// The delivery bands, sorted; cached.
    #[tracing::instrument(name = "pricing.bands", skip(self))]
    pub async fn bands(&self) -> Result<Cached<Vec<DeliveryBand>>, CheckoutError> {
        let db = self.db.clone();
        self.cache
            .get_or_compute(DELIVERY_GROUP, BANDS_KEY, self.delivery_ttl, move || async move {
                bands(&db).await.map_err(CheckoutError::from)
            })
            .await
    }

    /// The discount of coupon `code` on `subtotal_cents` now.
    pub async fn discount(&self, code: &str, subtotal_cents: i64) -> Result<i64, CheckoutError> {
        let coupon = self.coupon(code).await?.value.ok_or(CheckoutError::UnknownCoupon)?;
        coupon.discount(subtotal_cents, Utc::now())
    }

    /// The delivery charge of `distance_km`.
    pub async fn delivery(&self, distance_km: f64) -> Result<i64, CheckoutError> {
        delivery_charge(&self.bands().await?.value, distance_km)
    }

    /// Drops the cached definition of one coupon on every replica. A Redis failure is logged:
    /// this replica's copy is gone anyway and the TTL bounds what another could still serve.
    pub async fn invalidate_coupon(&self, code: &str) {
        if let Err(error) = self.cache.invalidate(COUPON_GROUP, code).await {
            tracing::warn!(%error, code, "coupon cache invalidation did not reach redis");
        }
    }

    /// Drops the cached band table on every replica (same failure handling).
    pub async fn invalidate_delivery(&self) {
        if let Err(error) = self.cache.invalidate_group(DELIVERY_GROUP).await {
            tracing::warn!(%error, "delivery cache invalidation did not reach redis");
        }
    }

    pub fn db(&self) -> &PgPool {
        &self.db
    }
}

/// A coupon row before its `kind` text is checked.
#[derive(Debug, sqlx::FromRow)]
struct CouponRow {
    code: String,
    kind: String,
    value: i64,
    min_order_cents: i64,
    expires_at: Option<DateTime<Utc>>,
    active: bool,
}

impl TryFrom<CouponRow> for Coupon {
    type Error = sqlx::Error;

    fn try_from(row: CouponRow) -> Result<Self, Self::Error> {
        let kind = CouponKind::parse(&row.kind).ok_or_else(|| {
            sqlx::Error::Decode(format!("unknown coupon kind {}", row.kind).into())
        })?;
        Ok(Coupon {
            code: row.code,
            kind,
            value: row.value,
            min_order_cents: row.min_order_cents,
            expires_at: row.expires_at,
            active: row.active,
        })
    }
}

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

/// `sql` with the coupon's six columns bound as `$1..$6`.
fn bind_coupon<'q>(
    sql: &'static str,
    coupon: &'q Coupon,
) -> Query<'q, sqlx::Postgres, PgArguments> {
    sqlx::query(sql)
        .bind(&coupon.code)
        .bind(coupon.kind.as_str())
        .bind(coupon.value)
        .bind(coupon.min_order_cents)
        .bind(coupon.expires_at)
        .bind(coupon.active)
}

/// Inserts `coupon`; false when the code exists.
#[tracing::instrument(skip(pool, coupon), fields(code = %coupon.code))]
pub async fn insert_coupon(pool: &PgPool, coupon: &Coupon) -> Result<bool, sqlx::Error> {
    let inserted = bind_coupon(
        "INSERT INTO coupons (code, kind, value, min_order_cents, expires_at, active) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (code) DO NOTHING",
        coupon,
    )
    .execute(pool)
    .await?;
    Ok(inserted.rows_affected() == 1)
}

/// Creates or replaces `coupon`.
#[tracing::instrument(skip(pool, coupon), fields(code = %coupon.code))]
pub async fn upsert_coupon(pool: &PgPool, coupon: &Coupon) -> Result<(), sqlx::Error> {
    bind_coupon(
        "INSERT INTO coupons (code, kind, value, min_order_cents, expires_at, active) \
         VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (code) DO UPDATE SET kind = $2, value = $3, min_order_cents = $4, \
           expires_at = $5, active = $6, updated_at = now()",
        coupon,
    )
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

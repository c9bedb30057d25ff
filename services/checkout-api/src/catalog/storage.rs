//! Postgres I/O of the product catalog, and the demo catalog `make run` seeds. Runtime queries
//! only.

use sqlx::PgPool;

use super::Product;

const SELECT_PRODUCT: &str =
    "SELECT sku, name, unit_amount_cents, stripe_price_id, active FROM products";

type Row = (String, String, i64, Option<String>, bool);

fn from_row((sku, name, unit_amount_cents, price_id, active): Row) -> Product {
    Product { sku, name, unit_amount_cents, price_id, active }
}

/// The demo catalog: the shop items of the demo scripts and the two plans of the subscription
/// examples (the local fake Stripe knows any price id).
const DEMO: &[(&str, &str, i64, Option<&str>)] = &[
    ("tea", "Tea", 1_250, None),
    ("mug", "Mug", 500, None),
    ("tee", "T-shirt", 1_000, None),
    ("plan-basic", "Basic plan (monthly)", 1_000, Some("price_basic")),
    ("plan-pro", "Pro plan (monthly)", 2_000, Some("price_pro")),
];

#[tracing::instrument(skip(pool))]
pub async fn product(pool: &PgPool, sku: &str) -> Result<Option<Product>, sqlx::Error> {
    let row: Option<Row> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!("{SELECT_PRODUCT} WHERE sku = $1")))
            .bind(sku)
            .fetch_optional(pool)
            .await?;
    Ok(row.map(from_row))
}

#[tracing::instrument(skip(pool))]
pub async fn product_by_price(
    pool: &PgPool,
    price_id: &str,
) -> Result<Option<Product>, sqlx::Error> {
    let row: Option<Row> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!("{SELECT_PRODUCT} WHERE stripe_price_id = $1")))
            .bind(price_id)
            .fetch_optional(pool)
            .await?;
    Ok(row.map(from_row))
}

#[tracing::instrument(skip(pool))]
pub async fn products(pool: &PgPool) -> Result<Vec<Product>, sqlx::Error> {
    let rows: Vec<Row> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!("{SELECT_PRODUCT} ORDER BY sku")))
            .fetch_all(pool)
            .await?;
    Ok(rows.into_iter().map(from_row).collect())
}

/// Inserts `product`; false when the sku exists. A price id another product has is a unique
/// violation (the caller maps it).
#[tracing::instrument(skip(pool, product), fields(sku = %product.sku))]
pub async fn insert_product(pool: &PgPool, product: &Product) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO products (sku, name, unit_amount_cents, stripe_price_id, active) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (sku) DO NOTHING",
    )
    .bind(&product.sku)
    .bind(&product.name)
    .bind(product.unit_amount_cents)
    .bind(&product.price_id)
    .bind(product.active)
    .execute(pool)
    .await?;
    Ok(inserted.rows_affected() == 1)
}

/// Creates or replaces `product`; returns the Stripe price id it had before (to invalidate).
#[tracing::instrument(skip(pool, product), fields(sku = %product.sku))]
pub async fn upsert_product(
    pool: &PgPool,
    product: &Product,
) -> Result<Option<String>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let previous: Option<Option<String>> =
        sqlx::query_scalar("SELECT stripe_price_id FROM products WHERE sku = $1 FOR UPDATE")
            .bind(&product.sku)
            .fetch_optional(&mut *tx)
            .await?;
    sqlx::query(
        "INSERT INTO products (sku, name, unit_amount_cents, stripe_price_id, active) \
         VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (sku) DO UPDATE SET name = $2, unit_amount_cents = $3, \
           stripe_price_id = $4, active = $5, updated_at = now()",
    )
    .bind(&product.sku)
    .bind(&product.name)
    .bind(product.unit_amount_cents)
    .bind(&product.price_id)
    .bind(product.active)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(previous.flatten())
}

/// Deletes a product; `None` when there was none, else the Stripe price id it had.
#[tracing::instrument(skip(pool))]
pub async fn delete_product(
    pool: &PgPool,
    sku: &str,
) -> Result<Option<Option<String>>, sqlx::Error> {
    sqlx::query_scalar("DELETE FROM products WHERE sku = $1 RETURNING stripe_price_id")
        .bind(sku)
        .fetch_optional(pool)
        .await
}

/// Adds the demo products that are missing (an admin's changes to them are kept); returns the
/// added ones' skus and price ids (their "unknown" cache entries must go).
#[tracing::instrument(skip(pool))]
pub async fn seed_demo(
    pool: &PgPool,
) -> Result<Vec<(&'static str, Option<&'static str>)>, sqlx::Error> {
    let mut added = Vec::new();
    for &(sku, name, unit_amount_cents, price_id) in DEMO {
        let inserted = sqlx::query(
            "INSERT INTO products (sku, name, unit_amount_cents, stripe_price_id) \
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        )
        .bind(sku)
        .bind(name)
        .bind(unit_amount_cents)
        .bind(price_id)
        .execute(pool)
        .await?;
        if inserted.rows_affected() == 1 {
            added.push((sku, price_id));
        }
    }
    tracing::info!(added = added.len(), demo_products = DEMO.len(), "demo catalog seeded");
    Ok(added)
}

//! The product catalog in Postgres: the cached lookups checkouts price from ([`Catalog`]: by
//! sku, and by Stripe price id, unknown ones included, through the shared two-tier cache that the
//! admin routes invalidate on every write), the admin queries, and the demo catalog `make run`
//! seeds.

use std::collections::HashMap;
use std::time::Duration;

use platform_redis::cache::{Cache, Cached};
use sqlx::PgPool;
use sqlx::postgres::PgArguments;
use sqlx::query::Query;

use crate::domain::catalog::{
    ItemRequest, PricedItem, Product, check_price_id, listed, price_lines, skus_to_price,
};
use crate::error::CheckoutError;

/// Cache group of products by sku.
pub const PRODUCT_GROUP: &str = "checkout-products";
/// Cache group of products by Stripe price id.
pub const PRICE_GROUP: &str = "checkout-product-prices";

const SELECT_PRODUCT: &str =
    "SELECT sku, name, unit_amount_cents, stripe_price_id, active FROM products";

type Row = (String, String, i64, Option<String>, bool);

fn from_row((sku, name, unit_amount_cents, price_id, active): Row) -> Product {
    Product { sku, name, unit_amount_cents, price_id, active }
}

/// Cached catalog lookups. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Catalog {
    db: PgPool,
    cache: Cache,
    ttl: Duration,
}

impl Catalog {
    pub fn new(db: PgPool, cache: Cache, ttl: Duration) -> Self {
        Self { db, cache, ttl }
    }

    pub fn db(&self) -> &PgPool {
        &self.db
    }

    /// The product `sku` names (any state), `None` when there is none; cached.
    #[tracing::instrument(name = "catalog.product", skip(self))]
    pub async fn product(&self, sku: &str) -> Result<Cached<Option<Product>>, CheckoutError> {
        let db = self.db.clone();
        let owned = sku.to_owned();
        self.cache
            .get_or_compute(PRODUCT_GROUP, sku, self.ttl, move || async move {
                product(&db, &owned).await.map_err(CheckoutError::from)
            })
            .await
    }

    /// The product sold as Stripe price `price_id`, `None` when the catalog lists none; cached.
    #[tracing::instrument(name = "catalog.by_price", skip(self))]
    pub async fn by_price(&self, price_id: &str) -> Result<Option<Product>, CheckoutError> {
        let db = self.db.clone();
        let owned = price_id.to_owned();
        let cached = self
            .cache
            .get_or_compute(PRICE_GROUP, price_id, self.ttl, move || async move {
                product_by_price(&db, &owned).await.map_err(CheckoutError::from)
            })
            .await?;
        Ok(cached.value)
    }

    /// An active product whose Stripe price is `price_id`, or 400 `unknown_price`.
    pub async fn listed_price(&self, price_id: &str) -> Result<Product, CheckoutError> {
        check_price_id(price_id)?;
        listed(price_id, self.by_price(price_id).await?)
    }

    /// Prices `items` from the catalog: each sku must name an active product, each quantity be
    /// 1–10 000, and a client-sent `unitAmountCents` must equal the catalog's price.
    #[tracing::instrument(name = "catalog.price_items", skip_all, fields(items = items.len()))]
    pub async fn price_items(
        &self,
        items: &[ItemRequest],
    ) -> Result<Vec<PricedItem>, CheckoutError> {
        let skus = skus_to_price(items)?;
        // One lookup per distinct well-formed sku, concurrently (misses read Postgres).
        let found = futures::future::try_join_all(skus.iter().map(|sku| self.product(sku))).await?;
        let products: HashMap<&str, Product> = skus
            .iter()
            .zip(found)
            .filter_map(|(sku, cached)| cached.value.map(|product| (*sku, product)))
            .collect();
        price_lines(items, &products)
    }

    /// Drops the cached entries of `sku` and of the Stripe prices it was or is sold as, on every
    /// replica. A Redis failure is logged: this replica's copies are gone anyway and the TTL
    /// bounds what another could still serve.
    pub async fn invalidate(&self, sku: &str, price_ids: &[Option<&str>]) {
        if let Err(error) = self.cache.invalidate(PRODUCT_GROUP, sku).await {
            tracing::warn!(%error, sku, "product cache invalidation did not reach redis");
        }
        for price_id in price_ids.iter().flatten() {
            if let Err(error) = self.cache.invalidate(PRICE_GROUP, price_id).await {
                tracing::warn!(%error, price_id, "price cache invalidation did not reach redis");
            }
        }
    }
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
    product_where(pool, "sku", sku).await
}

#[tracing::instrument(skip(pool))]
pub async fn product_by_price(
    pool: &PgPool,
    price_id: &str,
) -> Result<Option<Product>, sqlx::Error> {
    product_where(pool, "stripe_price_id", price_id).await
}

/// The product whose `column` (a unique one) equals `value`.
async fn product_where(
    pool: &PgPool,
    column: &'static str,
    value: &str,
) -> Result<Option<Product>, sqlx::Error> {
    let row: Option<Row> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!("{SELECT_PRODUCT} WHERE {column} = $1")))
            .bind(value)
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

/// `sql` with the product's five columns bound as `$1..$5`.
fn bind_product<'q>(
    sql: &'static str,
    product: &'q Product,
) -> Query<'q, sqlx::Postgres, PgArguments> {
    sqlx::query(sql)
        .bind(&product.sku)
        .bind(&product.name)
        .bind(product.unit_amount_cents)
        .bind(&product.price_id)
        .bind(product.active)
}

/// Inserts `product`; false when the sku exists. A price id another product has is a unique
/// violation (the caller maps it).
#[tracing::instrument(skip(pool, product), fields(sku = %product.sku))]
pub async fn insert_product(pool: &PgPool, product: &Product) -> Result<bool, sqlx::Error> {
    let inserted = bind_product(
        "INSERT INTO products (sku, name, unit_amount_cents, stripe_price_id, active) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (sku) DO NOTHING",
        product,
    )
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
    bind_product(
        "INSERT INTO products (sku, name, unit_amount_cents, stripe_price_id, active) \
         VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (sku) DO UPDATE SET name = $2, unit_amount_cents = $3, \
           stripe_price_id = $4, active = $5, updated_at = now()",
        product,
    )
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

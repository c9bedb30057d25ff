//! Postgres storage: the durable monthly copy of the usage counters (`usage_monthly`).
//!
//! Counters only grow, so an upsert keeps the larger of the stored and the new value: a Redis
//! that lost data and restarted from zero can never make the durable copy go backwards. Gauges
//! (`storage_used`) take the new value.

use std::collections::BTreeMap;

use sqlx::PgPool;

/// One row to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRow {
    pub org: String,
    pub month: String,
    pub metric: String,
    pub value: i64,
}

/// Runs the migrations in `migrations/`.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    sqlx::migrate!("./migrations").run(pool).await
}

/// Upserts `rows` in one statement.
#[tracing::instrument(skip_all, fields(rows = rows.len()))]
pub async fn upsert(pool: &PgPool, rows: &[UsageRow]) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let orgs: Vec<&str> = rows.iter().map(|r| r.org.as_str()).collect();
    let months: Vec<&str> = rows.iter().map(|r| r.month.as_str()).collect();
    let metrics: Vec<&str> = rows.iter().map(|r| r.metric.as_str()).collect();
    let values: Vec<i64> = rows.iter().map(|r| r.value).collect();
    sqlx::query(
        "INSERT INTO usage_monthly (org_id, month, metric, value, updated_at)
         SELECT o, m, k, v, now() FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[]) AS t(o, m, k, v)
         ON CONFLICT (org_id, month, metric) DO UPDATE SET
           value = CASE WHEN usage_monthly.metric = 'storage_used' THEN EXCLUDED.value
                        ELSE GREATEST(usage_monthly.value, EXCLUDED.value) END,
           updated_at = now()
         WHERE usage_monthly.value IS DISTINCT FROM
           (CASE WHEN usage_monthly.metric = 'storage_used' THEN EXCLUDED.value
                 ELSE GREATEST(usage_monthly.value, EXCLUDED.value) END)",
    )
    .bind(orgs)
    .bind(months)
    .bind(metrics)
    .bind(values)
    .execute(pool)
    .await?;
    Ok(())
}

/// The stored counters of `org` in `month`.
#[tracing::instrument(skip(pool))]
pub async fn usage(
    pool: &PgPool,
    org: &str,
    month: &str,
) -> Result<BTreeMap<String, i64>, sqlx::Error> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT metric, value FROM usage_monthly WHERE org_id = $1 AND month = $2")
            .bind(org)
            .bind(month)
            .fetch_all(pool)
            .await?;
    Ok(rows.into_iter().collect())
}

/// The `limit` organisations with the highest `metric` in `month`.
#[tracing::instrument(skip(pool))]
pub async fn top(
    pool: &PgPool,
    metric: &str,
    month: &str,
    limit: i64,
) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT org_id, value FROM usage_monthly WHERE month = $1 AND metric = $2
         ORDER BY value DESC, org_id LIMIT $3",
    )
    .bind(month)
    .bind(metric)
    .bind(limit)
    .fetch_all(pool)
    .await
}

//! Postgres storage: the durable monthly copy of the usage counters (`usage_monthly`), the
//! idempotency marks of durable metrics (`usage_idempotency_marks`) and the flush sequence
//! (`usage_flush_state`) that tells whether Redis is as new as this copy; the organisations
//! learned from campaign-api in [`organisations`].
//!
//! Counters only grow, so a flush keeps the larger of the stored and the new value (two
//! replicas' flushes may commit out of order). Gauges (`storage_used`) keep the value with the
//! later event time (`at_ms`). A flush commits only within the epoch it read in: once a restore
//! moved the sequence to a new epoch, a copy read from Redis before the data loss is refused.

pub mod organisations;

use std::collections::BTreeMap;

use sqlx::PgPool;

/// One counter row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRow {
    pub org: String,
    pub month: String,
    pub metric: String,
    pub value: i64,
    /// Event time (ms) of a gauge's value; `None` for counters.
    pub at_ms: Option<i64>,
}

/// One durable idempotency mark: producer key `key` was counted for `org`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MarkRow {
    pub org: String,
    pub key: String,
}

/// Runs the migrations in `migrations/`.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    sqlx::migrate!("./migrations").run(pool).await
}

/// The new value of a row on conflict: counters the larger, the gauge the later reading.
const VALUE_ON_CONFLICT: &str = "CASE WHEN usage_monthly.metric <> 'storage_used'
       THEN GREATEST(usage_monthly.value, EXCLUDED.value)
     WHEN usage_monthly.at_ms IS NULL OR EXCLUDED.at_ms >= usage_monthly.at_ms
       THEN EXCLUDED.value
     ELSE usage_monthly.value END";
const AT_ON_CONFLICT: &str = "CASE WHEN usage_monthly.metric <> 'storage_used' THEN NULL
     WHEN usage_monthly.at_ms IS NULL OR EXCLUDED.at_ms >= usage_monthly.at_ms
       THEN EXCLUDED.at_ms
     ELSE usage_monthly.at_ms END";

/// Copies `rows` and `marks` read at flush sequence `seq`, in one statement, and records `seq`
/// as committed. Nothing is written when the stored sequence is in a later epoch (a restore ran
/// since this copy was read): returns whether it committed.
#[tracing::instrument(skip_all, fields(rows = rows.len(), marks = marks.len(), seq))]
pub async fn flush(
    pool: &PgPool,
    rows: &[UsageRow],
    marks: &[MarkRow],
    seq: i64,
) -> Result<bool, sqlx::Error> {
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "WITH s AS (
               UPDATE usage_flush_state SET seq = GREATEST(seq, $7)
               WHERE id = 1 AND (seq >> 32) <= ($7 >> 32) RETURNING seq
             ), c AS (
               INSERT INTO usage_monthly (org_id, month, metric, value, at_ms, updated_at)
               SELECT o, m, k, v, a, now()
               FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[]) AS t(o, m, k, v, a)
               WHERE EXISTS (SELECT 1 FROM s)
               ON CONFLICT (org_id, month, metric) DO UPDATE SET
                 value = {VALUE_ON_CONFLICT}, at_ms = {AT_ON_CONFLICT}, updated_at = now()
               WHERE (usage_monthly.value, usage_monthly.at_ms) IS DISTINCT FROM
                 ({VALUE_ON_CONFLICT}, {AT_ON_CONFLICT})
             ), k AS (
               INSERT INTO usage_idempotency_marks (org_id, key, counted_at)
               SELECT o, k, now() FROM UNNEST($6::text[], $8::text[]) AS t(o, k)
               WHERE EXISTS (SELECT 1 FROM s)
               ON CONFLICT (org_id, key) DO UPDATE SET counted_at = EXCLUDED.counted_at
             )
             SELECT count(*) FROM s"
        )
    });
    let orgs: Vec<&str> = rows.iter().map(|r| r.org.as_str()).collect();
    let months: Vec<&str> = rows.iter().map(|r| r.month.as_str()).collect();
    let metrics: Vec<&str> = rows.iter().map(|r| r.metric.as_str()).collect();
    let values: Vec<i64> = rows.iter().map(|r| r.value).collect();
    let ats: Vec<Option<i64>> = rows.iter().map(|r| r.at_ms).collect();
    let mark_orgs: Vec<&str> = marks.iter().map(|m| m.org.as_str()).collect();
    let mark_keys: Vec<&str> = marks.iter().map(|m| m.key.as_str()).collect();
    let (committed,): (i64,) = sqlx::query_as(SQL.as_str())
        .bind(orgs)
        .bind(months)
        .bind(metrics)
        .bind(values)
        .bind(ats)
        .bind(mark_orgs)
        .bind(seq)
        .bind(mark_keys)
        .fetch_one(pool)
        .await?;
    Ok(committed == 1)
}

/// The largest flush sequence Postgres committed.
#[tracing::instrument(skip_all)]
pub async fn durable_seq(pool: &PgPool) -> Result<i64, sqlx::Error> {
    let (seq,): (i64,) =
        sqlx::query_as("SELECT seq FROM usage_flush_state WHERE id = 1").fetch_one(pool).await?;
    Ok(seq)
}

/// Moves the flush sequence to the epoch after the one of `observed` (idempotent for one
/// observed value, so two restores of the same loss move it once) and returns it. From then on a
/// flush read in an earlier epoch cannot commit.
#[tracing::instrument(skip_all)]
pub async fn next_epoch(pool: &PgPool, observed: i64) -> Result<i64, sqlx::Error> {
    let (seq,): (i64,) = sqlx::query_as(
        "UPDATE usage_flush_state SET seq = GREATEST(seq, (($1 >> 32) + 1) << 32)
         WHERE id = 1 RETURNING seq",
    )
    .bind(observed)
    .fetch_one(pool)
    .await?;
    Ok(seq)
}

/// Rows of months `from_month` and later, in `(month, org, metric)` order after `after`.
#[tracing::instrument(skip(pool))]
pub async fn rows_from_month(
    pool: &PgPool,
    from_month: &str,
    after: &(String, String, String),
    limit: i64,
) -> Result<Vec<UsageRow>, sqlx::Error> {
    let rows: Vec<(String, String, String, i64, Option<i64>)> = sqlx::query_as(
        "SELECT org_id, month, metric, value, at_ms FROM usage_monthly
         WHERE month >= $1 AND (month, org_id, metric) > ($2, $3, $4)
         ORDER BY month, org_id, metric LIMIT $5",
    )
    .bind(from_month)
    .bind(&after.0)
    .bind(&after.1)
    .bind(&after.2)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(org, month, metric, value, at_ms)| UsageRow { org, month, metric, value, at_ms })
        .collect())
}

/// Marks copied less than `window_secs` ago, in `(org, key)` order after `after`.
#[tracing::instrument(skip(pool))]
pub async fn recent_marks(
    pool: &PgPool,
    window_secs: u64,
    after: &(String, String),
    limit: i64,
) -> Result<Vec<MarkRow>, sqlx::Error> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT org_id, key FROM usage_idempotency_marks
         WHERE counted_at > now() - make_interval(secs => $1) AND (org_id, key) > ($2, $3)
         ORDER BY org_id, key LIMIT $4",
    )
    .bind(window_secs as f64)
    .bind(&after.0)
    .bind(&after.1)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|(org, key)| MarkRow { org, key }).collect())
}

/// Deletes marks copied more than `window_secs` ago (a repeat that late may count again anyway).
#[tracing::instrument(skip(pool))]
pub async fn prune_marks(pool: &PgPool, window_secs: u64) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "DELETE FROM usage_idempotency_marks WHERE counted_at < now() - make_interval(secs => $1)",
    )
    .bind(window_secs as f64)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
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

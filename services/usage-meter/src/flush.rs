//! Copies changed counters from Redis to Postgres (`usage_monthly`): periodically, on demand,
//! and once more at shutdown after the stream consumer stopped.
//!
//! Crash-safe: a dirty mark is only cleared after its counters were written, and only if its
//! generation did not change meanwhile (a change during the copy keeps it marked). Several
//! replicas may flush at once: the upsert is idempotent and never moves a counter backwards.

use std::time::Duration;

use platform_redis::{RedisClients, RedisError};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::db::{self, UsageRow};
use crate::metrics::UsageMetrics;
use crate::store;

/// Org-months copied per round trip.
const CHUNK: usize = 500;

#[derive(Debug, thiserror::Error)]
pub enum FlushError {
    #[error("reading counters from redis failed")]
    Redis(#[from] RedisError),
    #[error("writing counters to postgres failed")]
    Database(#[from] sqlx::Error),
}

/// One pass over the dirty set; returns the number of rows written.
#[tracing::instrument(skip_all)]
pub async fn flush_once(clients: &RedisClients, pool: &PgPool) -> Result<usize, FlushError> {
    let dirty = store::dirty(clients).await?;
    let mut written = 0;
    for chunk in dirty.chunks(CHUNK) {
        let usages = store::usage_many(clients, chunk).await?;
        let rows: Vec<UsageRow> = chunk
            .iter()
            .zip(usages)
            .flat_map(|(m, usage)| {
                usage.into_iter().map(move |(metric, value)| UsageRow {
                    org: m.org.clone(),
                    month: m.month.clone(),
                    metric,
                    value,
                })
            })
            .collect();
        db::upsert(pool, &rows).await?;
        store::clear_dirty(clients, chunk).await?;
        written += rows.len();
    }
    if written > 0 {
        tracing::info!(rows = written, months = dirty.len(), "usage counters copied to postgres");
    }
    Ok(written)
}

/// Flushes every `interval` until `cancel` fires; then waits for `before_final` (the consumer)
/// to finish and flushes once more.
pub async fn run(
    clients: RedisClients,
    pool: PgPool,
    interval: Duration,
    cancel: CancellationToken,
    metrics: UsageMetrics,
    before_final: impl Future<Output = ()>,
) {
    let attempt = |clients: RedisClients, pool: PgPool, metrics: UsageMetrics| async move {
        match flush_once(&clients, &pool).await {
            Ok(rows) => metrics.flushed(rows),
            Err(error) => {
                metrics.flush_failed();
                let chain = platform_service::error::error_chain(&error);
                tracing::warn!(error = %chain, "copying usage counters to postgres failed; retrying next interval");
            }
        }
    };
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(interval) => attempt(clients.clone(), pool.clone(), metrics.clone()).await,
        }
    }
    before_final.await;
    attempt(clients, pool, metrics).await;
    tracing::info!("final usage flush done");
}

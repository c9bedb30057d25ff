//! Copies changed counters from Redis to Postgres (`usage_monthly`), with the idempotency keys
//! of durable metrics counted into them: every `flush_interval_ms`, on demand, and once more at
//! shutdown after the stream consumer stopped. Each tick first checks that Redis did not lose
//! data, and restores it from Postgres when it did ([`crate::domain::recovery`]).
//!
//! Nothing is counted twice: a flush copies absolute values (never deltas), read in one script
//! together with their months' unflushed marks and a new flush sequence, and writes them in one
//! Postgres statement. A dirty mark is cleared only after that commits, and only if its
//! generation did not change meanwhile, so a crash mid-flush loses nothing. Several replicas may
//! flush at once: counters never move backwards.

use std::collections::BTreeSet;
use std::sync::Arc;

use platform_redis::RedisClients;
use sqlx::PgPool;

use crate::db::{self, MarkRow, UsageRow};
use crate::domain::recovery::{self, Recovery, RestoreReport, RestoreScope};
use crate::domain::usage::{Metric, Month};
use crate::error::FlushError;
use crate::metrics::UsageMetrics;
use crate::store::sync;
use crate::store::{Fence, Retention};

/// Org-months copied per round trip.
const CHUNK: usize = 500;

/// Old durable marks are deleted from Postgres every this many ticks (and on the first).
const PRUNE_EVERY: u64 = 600;

/// One pass over the dirty set; returns the number of rows written. Copies nothing while
/// recording is fenced (Redis lost data: the next tick restores it) or once a restore ran since
/// the copy was read (its values predate the loss and were restored, or lost, with it).
#[tracing::instrument(skip_all)]
pub async fn flush_once(
    clients: &RedisClients,
    pool: &PgPool,
    fence: &Fence,
) -> Result<usize, FlushError> {
    let dirty = sync::dirty(clients).await?;
    let mut written = 0;
    for chunk in dirty.chunks(CHUNK) {
        let Some(read) = sync::flush_read(clients, chunk, fence.get()).await? else {
            tracing::warn!("usage recording is fenced (redis lost data); not copying counters");
            break;
        };
        let mut rows = Vec::new();
        let mut marks = BTreeSet::new();
        for (m, month) in chunk.iter().zip(&read.months) {
            for (metric, value) in &month.counters {
                let gauge = metric == Metric::StorageUsed.as_str();
                rows.push(UsageRow {
                    org: m.org.clone(),
                    month: m.month.clone(),
                    metric: metric.clone(),
                    value: *value,
                    at_ms: if gauge { month.gauge_at } else { None },
                });
            }
            for member in &month.marks {
                if let Some((org, key)) = member.split_once('|') {
                    marks.insert(MarkRow { org: org.to_owned(), key: key.to_owned() });
                }
            }
        }
        let marks: Vec<MarkRow> = marks.into_iter().collect();
        if !db::flush(pool, &rows, &marks, read.seq).await? {
            tracing::warn!(
                seq = read.seq,
                "usage counters were restored since this copy was read; dropping it"
            );
            break;
        }
        fence.raise(read.seq);
        let copied: Vec<Vec<String>> = read.months.into_iter().map(|m| m.marks).collect();
        sync::clear_flushed(clients, chunk, &copied).await?;
        written += rows.len();
    }
    if written > 0 {
        tracing::debug!(rows = written, months = dirty.len(), "usage counters copied to postgres");
    }
    Ok(written)
}

/// What one tick did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tick {
    /// Counter rows copied to Postgres.
    pub rows: usize,
    /// Set when this tick restored Redis from Postgres.
    pub restored: Option<RestoreReport>,
    /// Another replica is restoring, or this restore was interrupted: nothing was copied.
    pub waiting: bool,
}

/// The check-restore-flush cycle of one replica. Cheap to clone; ticks of one replica never
/// overlap (the periodic loop and `POST /internal/usage/flush` share it).
#[derive(Debug, Clone)]
pub struct Flusher {
    clients: RedisClients,
    pool: PgPool,
    fence: Fence,
    retention: Retention,
    max_event_age: chrono::Duration,
    metrics: UsageMetrics,
    /// This replica's restore claim token.
    token: Arc<str>,
    ticks: Arc<tokio::sync::Mutex<u64>>,
}

impl Flusher {
    /// `max_event_age`: events older than this are refused, so a restore brings back the months
    /// from `now - max_event_age` on.
    pub fn new(
        clients: RedisClients,
        pool: PgPool,
        fence: Fence,
        retention: Retention,
        max_event_age: chrono::Duration,
        metrics: UsageMetrics,
    ) -> Self {
        Self {
            clients,
            pool,
            fence,
            retention,
            max_event_age,
            metrics,
            token: random_token().into(),
            ticks: Arc::default(),
        }
    }

    /// Checks Redis (restoring it when it lost data), then copies what changed.
    pub async fn tick(&self) -> Result<Tick, FlushError> {
        let mut ticks = self.ticks.lock().await;
        let result = self.tick_inner(*ticks).await;
        *ticks += 1;
        match &result {
            Ok(tick) => {
                self.metrics.flushed(tick.rows);
                if tick.restored.is_some() {
                    self.metrics.restored();
                }
            }
            Err(_) => self.metrics.flush_failed(),
        }
        result
    }

    async fn tick_inner(&self, n: u64) -> Result<Tick, FlushError> {
        let scope = RestoreScope {
            retention: self.retention,
            from_month: Month::of(chrono::Utc::now() - self.max_event_age),
        };
        let recovery =
            recovery::recover(&self.clients, &self.pool, &self.fence, &self.token, scope).await?;
        let mut tick = Tick::default();
        match recovery {
            Recovery::Intact => {}
            Recovery::Restored(report) => tick.restored = Some(report),
            Recovery::Busy | Recovery::Interrupted => {
                tick.waiting = true;
                return Ok(tick);
            }
        }
        tick.rows = flush_once(&self.clients, &self.pool, &self.fence).await?;
        if n.is_multiple_of(PRUNE_EVERY) {
            let pruned =
                db::prune_marks(&self.pool, self.retention.idempotency_window_secs).await?;
            if pruned > 0 {
                tracing::info!(pruned, "old durable idempotency marks deleted");
            }
        }
        Ok(tick)
    }
}

/// 128 random bits as hex: std's `RandomState` is seeded from the OS per instance.
fn random_token() -> String {
    use std::hash::BuildHasher;
    let a = std::collections::hash_map::RandomState::new().hash_one(std::process::id());
    let b = std::collections::hash_map::RandomState::new().hash_one(a);
    format!("{a:016x}{b:016x}")
}

//! What storing checkout sessions means, whatever tier holds them: the contract each tier fulfils ([`SessionTier`]: Redis in `store::sessions`, Postgres in `db::sessions`) and
//! the shapes of what they answer (outcomes, counters, listings).

use std::collections::HashMap;
use std::future::Future;

use chrono::{DateTime, Utc};
use platform_redis::RedisError;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::domain::sessions::{SessionRecord, Tier};
use crate::error::CheckoutError;

/// Which counter a replace bumps besides the update counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatField {
    Completed,
    Failed,
}

/// Outcome of a compare-and-replace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replaced {
    Done,
    /// Someone else wrote since the read.
    Conflict,
    /// Expired or deleted since the read.
    Gone,
}

/// Counters of both tiers, summed.
#[derive(Debug, Clone, Copy, Default, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    pub total_created: i64,
    pub total_completed: i64,
    pub total_failed: i64,
    /// completed / created, 0 when nothing was created.
    pub conversion_rate: f64,
    /// Mean time from receiving a create / update to its store call, ms.
    pub average_create_ms: f64,
    pub average_update_ms: f64,
    /// False when Redis could not be read: the numbers are then Postgres' share only.
    pub redis_included: bool,
}

impl Stats {
    /// The summary of the counters of the tiers that could be read (field names as in the Redis
    /// hash: `totalCreated`, `createMicros`, …).
    pub fn from_counters(
        redis: Option<&HashMap<String, i64>>,
        postgres: &HashMap<String, i64>,
    ) -> Self {
        let get = |name: &str| {
            let redis = redis.and_then(|counts| counts.get(name)).copied().unwrap_or(0);
            redis.saturating_add(postgres.get(name).copied().unwrap_or(0))
        };
        let average = |sum: i64, count: i64| {
            if count > 0 { sum as f64 / count as f64 / 1000.0 } else { 0.0 }
        };
        let created = get("totalCreated");
        let completed = get("totalCompleted");
        Stats {
            total_created: created,
            total_completed: completed,
            total_failed: get("totalFailed"),
            conversion_rate: if created > 0 { completed as f64 / created as f64 } else { 0.0 },
            average_create_ms: average(get("createMicros"), get("createCount")),
            average_update_ms: average(get("updateMicros"), get("updateCount")),
            redis_included: redis.is_some(),
        }
    }
}

/// Result of `cleanup_expired`.
#[derive(Debug, Clone, Copy, Default, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CleanupReport {
    /// Index entries of sessions whose Redis key had expired.
    pub redis_index_entries_removed: u64,
    /// Expired rows deleted from Postgres.
    pub postgres_sessions_removed: u64,
}

/// One page of `get_all_sessions`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionPage {
    pub sessions: Vec<ListedSession>,
    /// Pass back as `cursor` for the next page; `null` at the end.
    pub next_cursor: Option<String>,
}

/// A session in a listing (not extending its TTL).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ListedSession {
    #[serde(flatten)]
    pub record: SessionRecord,
    pub expires_at: DateTime<Utc>,
    pub store: Tier,
}

/// A write of one session: the record, its JSON and how long the request took to get here.
#[derive(Debug, Clone, Copy)]
pub struct Write<'a> {
    pub record: &'a SessionRecord,
    pub json: &'a str,
    /// Time from receiving the request to this store call, µs (the stats' averages).
    pub latency_us: u64,
}

/// Why a tier did not answer.
#[derive(Debug)]
pub enum TierError {
    /// The tier cannot be reached (`None`: no connection is up; else the error that said so): a
    /// Redis-first store turns to its fallback.
    Unreachable(Option<RedisError>),
    /// Anything else: the request fails with it.
    Failed(CheckoutError),
}

impl TierError {
    /// The error a request fails with when no other tier takes over.
    pub fn into_error(self) -> CheckoutError {
        match self {
            TierError::Unreachable(Some(error)) => error.into(),
            TierError::Unreachable(None) => {
                CheckoutError::Unavailable(anyhow::anyhow!("no connection to the tier is up"))
            }
            TierError::Failed(error) => error,
        }
    }
}

impl From<RedisError> for TierError {
    fn from(error: RedisError) -> Self {
        if error.is_unavailable() {
            TierError::Unreachable(Some(error))
        } else {
            TierError::Failed(error.into())
        }
    }
}

impl From<platform_redis::fred::error::Error> for TierError {
    fn from(error: platform_redis::fred::error::Error) -> Self {
        RedisError::from(error).into()
    }
}

impl From<CheckoutError> for TierError {
    fn from(error: CheckoutError) -> Self {
        TierError::Failed(error)
    }
}

impl From<sqlx::Error> for TierError {
    fn from(error: sqlx::Error) -> Self {
        TierError::Failed(error.into())
    }
}

impl From<serde_json::Error> for TierError {
    fn from(error: serde_json::Error) -> Self {
        TierError::Failed(error.into())
    }
}

/// One tier of checkout sessions (Redis, Postgres): every tier stores the same records with the
/// same sliding TTL and the same counters; a Redis-first store composes two of them.
pub trait SessionTier: Send + Sync {
    /// Which tier this is (reported with every session it holds).
    const TIER: Tier;

    /// False while the tier cannot take requests (no connection up).
    fn reachable(&self) -> bool;

    /// Stores a new session with the full TTL and counts it.
    fn create(&self, write: Write<'_>) -> impl Future<Output = Result<(), TierError>> + Send;

    /// The stored JSON of session `id`, extending its TTL; `None` when gone or expired.
    fn get_json(&self, id: Uuid) -> impl Future<Output = Result<Option<String>, TierError>> + Send;

    /// Writes the record over the stored session if its version is still `expected_version`,
    /// counting the update (and `stat`).
    fn replace(
        &self,
        write: Write<'_>,
        expected_version: u64,
        stat: Option<StatField>,
    ) -> impl Future<Output = Result<Replaced, TierError>> + Send;

    /// The counters, under the Redis hash's field names.
    fn counters(&self) -> impl Future<Output = Result<HashMap<String, i64>, TierError>> + Send;

    /// Live (not expired) sessions.
    fn live_count(&self) -> impl Future<Output = Result<u64, TierError>> + Send;

    /// Forgets expired sessions; how many entries went.
    fn remove_expired(&self) -> impl Future<Output = Result<u64, TierError>> + Send;

    /// Live sessions from `offset` (by expiry) and how many entries the page looked at (a
    /// tier may skip entries that expired meanwhile, so fewer sessions than that may come).
    fn list(
        &self,
        offset: i64,
        limit: i64,
    ) -> impl Future<Output = Result<(Vec<ListedSession>, usize), TierError>> + Send;
}

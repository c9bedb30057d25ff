//! Redis storage of the count: the fenced write, the reads, the shared refresh status.
//!
//! Keys (built in `platform_redis::keys`, all with the `customer-count` lock's hash tag):
//! `customer_count` (hash, `PX` = `refresh.ttl_secs`: the fresh count), `customer_count_last_good`
//! (same fields, `PX` = `refresh.retention_secs`: served as stale when the fresh one is gone or
//! the last refresh failed), `customer_count_status` (outcome of the latest attempt).
//!
//! The write is one Lua script that refuses a writer whose fence is older than the lock's newest
//! fence or than the fence of the stored result: a refresh that lost its lease (paused, partitioned)
//! and was overtaken can never overwrite a newer count.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Duration;

use platform_redis::fred::prelude::*;
use platform_redis::fred::types::scripts::Script;
use platform_redis::keys::CUSTOMER_COUNT_LOCK;
use platform_redis::{RedisClients, RedisError};

/// A Redis hash as read.
type Fields = HashMap<String, String>;

/// A stored count and what produced it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountRecord {
    pub count: u64,
    pub total_invoices: u64,
    /// Milliseconds since the epoch.
    pub last_updated_ms: i64,
    pub duration_ms: u64,
    pub pages: u64,
    /// Fence of the lock holder that wrote it (0 for a memory-only result).
    pub fence: u64,
}

impl CountRecord {
    fn from_hash(hash: &HashMap<String, String>) -> Option<Self> {
        let number = |name: &str| hash.get(name).and_then(|v| v.parse::<u64>().ok());
        Some(Self {
            count: number("count")?,
            total_invoices: number("totalInvoices").unwrap_or(0),
            last_updated_ms: hash.get("lastUpdated")?.parse().ok()?,
            duration_ms: number("durationMs").unwrap_or(0),
            pages: number("pages").unwrap_or(0),
            fence: number("fence").unwrap_or(0),
        })
    }
}

/// The latest refresh attempt, as every replica sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RefreshStatus {
    pub last_attempt_ms: Option<i64>,
    pub last_success_ms: Option<i64>,
    pub last_failure_ms: Option<i64>,
    pub last_error: Option<String>,
    pub consecutive_failures: u64,
}

/// What is stored now.
#[derive(Debug, Clone, Default)]
pub struct Stored {
    /// The fresh count, with its remaining TTL.
    pub fresh: Option<(CountRecord, Duration)>,
    /// The last good count (same as fresh while that exists).
    pub last_good: Option<CountRecord>,
    pub status: RefreshStatus,
    /// Someone (any replica) holds the refresh lock.
    pub locked: bool,
}

/// `KEYS`: count, last-good, lock fence, status. `ARGV`: fence, ttl ms, retention ms, count,
/// totalInvoices, lastUpdated, durationMs, pages. 1 = written, 0 = refused (older fence).
static WRITE_FENCED: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        r"
local fence = tonumber(ARGV[1])
local newest = tonumber(redis.call('GET', KEYS[3]) or '0')
local stored = tonumber(redis.call('HGET', KEYS[2], 'fence') or '0')
if fence < newest or fence < stored then
  return 0
end
for i = 1, 2 do
  redis.call('DEL', KEYS[i])
  redis.call('HSET', KEYS[i], 'count', ARGV[4], 'totalInvoices', ARGV[5], 'lastUpdated', ARGV[6],
    'durationMs', ARGV[7], 'pages', ARGV[8], 'fence', ARGV[1])
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('HSET', KEYS[4], 'lastAttemptAt', ARGV[6], 'lastSuccessAt', ARGV[6], 'consecutiveFailures', 0)
redis.call('HDEL', KEYS[4], 'lastError')
redis.call('PEXPIRE', KEYS[4], ARGV[3])
return 1
",
    )
});

/// Writes `record` as the fresh and last-good count, if `record.fence` is still the newest.
/// `Ok(false)`: refused because a newer lock holder exists or wrote a newer result.
#[tracing::instrument(name = "storage.write_count", skip(clients, record), fields(count = record.count, fence = record.fence))]
pub async fn write_fenced(
    clients: &RedisClients,
    record: &CountRecord,
    ttl: Duration,
    retention: Duration,
) -> Result<bool, RedisError> {
    let keys = clients.keys();
    let written: i64 = WRITE_FENCED
        .evalsha_with_reload(
            clients.primary().next(),
            vec![
                keys.customer_count(),
                keys.customer_count_last_good(),
                keys.lock_fence(CUSTOMER_COUNT_LOCK),
                keys.customer_count_status(),
            ],
            vec![
                record.fence.to_string(),
                millis(ttl).to_string(),
                millis(retention).to_string(),
                record.count.to_string(),
                record.total_invoices.to_string(),
                record.last_updated_ms.to_string(),
                record.duration_ms.to_string(),
                record.pages.to_string(),
            ],
        )
        .await?;
    Ok(written == 1)
}

/// Marks the start of an attempt.
pub async fn record_attempt(clients: &RedisClients, at_ms: i64) -> Result<(), RedisError> {
    let key = clients.keys().customer_count_status();
    let _: () = clients.primary().hset(key, ("lastAttemptAt", at_ms.to_string())).await?;
    Ok(())
}

/// Records a failed attempt (message without secrets) for every replica's status route.
pub async fn record_failure(
    clients: &RedisClients,
    at_ms: i64,
    error: &str,
    retention: Duration,
) -> Result<(), RedisError> {
    let key = clients.keys().customer_count_status();
    let pipeline = clients.primary().next().pipeline();
    let _: () = pipeline
        .hset(&key, [("lastFailureAt", at_ms.to_string()), ("lastError", error.to_owned())])
        .await?;
    let _: () = pipeline.hincrby(&key, "consecutiveFailures", 1).await?;
    let _: () = pipeline.pexpire(&key, millis(retention) as i64, None).await?;
    let _: () = pipeline.all().await?;
    Ok(())
}

/// Reads the fresh count (with its TTL), the last good one, the status and whether the lock is held.
#[tracing::instrument(name = "storage.read", skip(clients))]
pub async fn read(clients: &RedisClients) -> Result<Stored, RedisError> {
    let keys = clients.keys();
    let pipeline = clients.primary().next().pipeline();
    let _: () = pipeline.hgetall(keys.customer_count()).await?;
    let _: () = pipeline.pttl(keys.customer_count()).await?;
    let _: () = pipeline.hgetall(keys.customer_count_last_good()).await?;
    let _: () = pipeline.hgetall(keys.customer_count_status()).await?;
    let _: () = pipeline.exists(keys.lock(CUSTOMER_COUNT_LOCK)).await?;
    let (fresh, pttl, last_good, status, locked): (Fields, i64, Fields, Fields, i64) =
        pipeline.all().await?;
    let fresh = CountRecord::from_hash(&fresh)
        .map(|record| (record, Duration::from_millis(u64::try_from(pttl).unwrap_or(0))));
    let number = |name: &str| status.get(name).and_then(|v| v.parse::<i64>().ok());
    Ok(Stored {
        fresh,
        last_good: CountRecord::from_hash(&last_good),
        status: RefreshStatus {
            last_attempt_ms: number("lastAttemptAt"),
            last_success_ms: number("lastSuccessAt"),
            last_failure_ms: number("lastFailureAt"),
            last_error: status.get("lastError").cloned(),
            consecutive_failures: number("consecutiveFailures")
                .and_then(|n| u64::try_from(n).ok())
                .unwrap_or(0),
        },
        locked: locked > 0,
    })
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX).max(1)
}

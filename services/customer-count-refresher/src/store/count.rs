//! Redis storage of the count: the fenced write, the reads, the shared refresh status.
//!
//! Keys (built in `platform_redis::keys`, all with the `customer-count` lock's hash tag):
//! `customer_count` (hash, `PX` = `refresh.ttl_secs`: the fresh count), `customer_count_last_good`
//! (same fields, `PX` = `refresh.retention_secs`: served as stale when the fresh one is gone or
//! the last refresh failed), `customer_count_status` (outcome of the latest attempt).
//!
//! With the real-time mode on, the same script also swaps in the walk's exact id set (see
//! `realtime`), so the walked count and the live set change together or not at all.
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
    /// `SCARD` of the real-time live id set, once a walk has reconciled it (see `realtime`).
    pub live_count: Option<u64>,
}

/// `KEYS`: count, last-good, lock fence, status, and with `ARGV[9]` = `swap` also live ids,
/// staging ids (this fence's), since-walk ids, walk marker. `ARGV`: fence, ttl ms, retention ms,
/// count, totalInvoices, lastUpdated, durationMs, pages, live mode (`off` | `keep` | `swap`).
/// Returns `{written 1|0, live SCARD or -1, swap 0 none | 1 exact | 2 merged}`.
///
/// `swap`: the live set becomes staging ∪ since (ids received during the walk), by adding the
/// (small) since set to staging and renaming it over the live set; the old set is `UNLINK`ed
/// first so Redis frees it off the main thread. If the walk's marker is gone (the walk outlived
/// its marker, so ids received meanwhile are unknown) the walk's ids are only added: nothing is
/// lost, nothing removed. `liveIds` in the count hashes says whether the live set has been
/// replaced by a walk and so is the count reads report: `swap` sets it, `keep` (this walk could
/// not stage its ids) keeps it, `off` (mode disabled: intakes refused, the set drifts) clears it.
static WRITE_FENCED: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        r"
local fence = tonumber(ARGV[1])
local newest = tonumber(redis.call('GET', KEYS[3]) or '0')
local stored = tonumber(redis.call('HGET', KEYS[2], 'fence') or '0')
local mode = ARGV[9]
if fence < newest or fence < stored then
  if mode == 'swap' then redis.call('UNLINK', KEYS[6]) end
  return {0, -1, 0}
end
local seeded = redis.call('HGET', KEYS[2], 'liveIds') == '1'
local live, swap = -1, 0
if mode == 'swap' then
  if redis.call('GET', KEYS[8]) == ARGV[1] then
    local since = redis.call('SMEMBERS', KEYS[7])
    for i = 1, #since, 1000 do
      redis.call('SADD', KEYS[6], unpack(since, i, math.min(i + 999, #since)))
    end
    redis.call('UNLINK', KEYS[5])
    if redis.call('EXISTS', KEYS[6]) == 1 then
      redis.call('PERSIST', KEYS[6])
      redis.call('RENAME', KEYS[6], KEYS[5])
    end
    redis.call('UNLINK', KEYS[7], KEYS[8])
    swap = 1
  else
    redis.call('SUNIONSTORE', KEYS[5], KEYS[5], KEYS[6])
    redis.call('UNLINK', KEYS[6])
    swap = 2
  end
  seeded = seeded or swap == 1
  live = redis.call('SCARD', KEYS[5])
elseif mode == 'off' then
  seeded = false
end
for i = 1, 2 do
  redis.call('DEL', KEYS[i])
  redis.call('HSET', KEYS[i], 'count', ARGV[4], 'totalInvoices', ARGV[5], 'lastUpdated', ARGV[6],
    'durationMs', ARGV[7], 'pages', ARGV[8], 'fence', ARGV[1], 'liveIds', seeded and '1' or '0')
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('HSET', KEYS[4], 'lastAttemptAt', ARGV[6], 'lastSuccessAt', ARGV[6], 'consecutiveFailures', 0)
redis.call('HDEL', KEYS[4], 'lastError')
redis.call('PEXPIRE', KEYS[4], ARGV[3])
return {1, live, swap}
",
    )
});

/// What the real-time mode asks of the fenced write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiveIds {
    /// Mode disabled: the live set is not the count any more (`liveIds` cleared).
    Off,
    /// Mode enabled but this walk's ids were not staged: leave the live set and its flag alone.
    Keep,
    /// Replace the live set by the staged ids of this fence plus the ids received during the walk.
    Swap,
}

impl LiveIds {
    fn as_arg(self) -> &'static str {
        match self {
            LiveIds::Off => "off",
            LiveIds::Keep => "keep",
            LiveIds::Swap => "swap",
        }
    }
}

/// How the live set was reconciled by a fenced write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Reconciled {
    /// Replaced by the walk's ids plus those received during the walk.
    Exact,
    /// The walk's marker had expired: the walk's ids were added, nothing removed.
    Merged,
}

/// Outcome of [`write_fenced_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Refused: a newer lock holder exists or wrote a newer result.
    Refused,
    Written {
        /// `SCARD` of the live set after a swap.
        live_count: Option<u64>,
        reconciled: Option<Reconciled>,
    },
}

/// Writes `record` as the fresh and last-good count, if `record.fence` is still the newest.
/// `Ok(false)`: refused because a newer lock holder exists or wrote a newer result.
pub async fn write_fenced(
    clients: &RedisClients,
    record: &CountRecord,
    ttl: Duration,
    retention: Duration,
) -> Result<bool, RedisError> {
    let outcome = write_fenced_with(clients, record, ttl, retention, LiveIds::Off).await?;
    Ok(outcome != WriteOutcome::Refused)
}

/// [`write_fenced`], also reconciling the real-time live id set as `live` says, in the same script.
#[tracing::instrument(name = "storage.write_count", skip(clients, record), fields(count = record.count, fence = record.fence))]
pub async fn write_fenced_with(
    clients: &RedisClients,
    record: &CountRecord,
    ttl: Duration,
    retention: Duration,
    live: LiveIds,
) -> Result<WriteOutcome, RedisError> {
    let keys = clients.keys();
    let mut script_keys = vec![
        keys.customer_count(),
        keys.customer_count_last_good(),
        keys.lock_fence(CUSTOMER_COUNT_LOCK),
        keys.customer_count_status(),
    ];
    if live == LiveIds::Swap {
        script_keys.extend([
            keys.customer_ids_live(),
            keys.customer_ids_staging(record.fence),
            keys.customer_ids_since_walk(),
            keys.customer_ids_walk_marker(),
        ]);
    }
    let (written, live_count, swap): (i64, i64, i64) = WRITE_FENCED
        .evalsha_with_reload(
            clients.primary().next(),
            script_keys,
            vec![
                record.fence.to_string(),
                millis(ttl).to_string(),
                millis(retention).to_string(),
                record.count.to_string(),
                record.total_invoices.to_string(),
                record.last_updated_ms.to_string(),
                record.duration_ms.to_string(),
                record.pages.to_string(),
                live.as_arg().to_owned(),
            ],
        )
        .await?;
    if written != 1 {
        return Ok(WriteOutcome::Refused);
    }
    Ok(WriteOutcome::Written {
        live_count: u64::try_from(live_count).ok(),
        reconciled: match swap {
            1 => Some(Reconciled::Exact),
            2 => Some(Reconciled::Merged),
            _ => None,
        },
    })
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
    let _: () = pipeline.scard(keys.customer_ids_live()).await?;
    let (fresh, pttl, last_good, status, locked, live): (Fields, i64, Fields, Fields, i64, u64) =
        pipeline.all().await?;
    let seeded = last_good.get("liveIds").is_some_and(|v| v == "1");
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
        live_count: seeded.then_some(live),
    })
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX).max(1)
}

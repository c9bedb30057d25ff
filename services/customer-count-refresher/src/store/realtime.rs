//! The optional real-time mode's Redis side: the live id set fed by the intake, and a walk's marker and staging set.
//!
//! Keys (all in `platform_redis::keys`, all with the `{customer-count}` hash tag of the lock):
//! `customer_ids_live` (set: every customer id known now; `SCARD` is the live count),
//! `customer_ids_walk_marker` (the fence of the walk now running, with `PX`),
//! `customer_ids_since_walk` (set: ids received while that walk runs) and
//! `customer_ids_staging(fence)` (set: the exact ids that walk found).
//!
//! Why the "since" set: a walk reads simPRO page by page over minutes, so an invoice created after
//! its page was read is missing from the walk's result although the intake reported it. The walk
//! marks its start; from then on every intake also records its ids in the since set, and the swap
//! (in `store::count`'s fenced write, one script) makes the live set `staging ∪ since`. Ids
//! received before the walk started are in simPRO already, so the walk finds them; an id the walk
//! does not find and nobody reported during it (a deleted or bogus invoice) disappears.
//!
//! The live set only counts once a reconciling walk has replaced it: until then it holds only the
//! ids the intake saw, so reads keep answering the walked count (the fenced write records
//! `liveIds = 1` with the count when it swapped the set).

use std::sync::LazyLock;
use std::time::Duration;

use platform_redis::fred::prelude::*;
use platform_redis::fred::types::scripts::Script;
use platform_redis::{RedisClients, RedisError};

use crate::upstream::walk::IdSet;

/// What one intake stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IntakeOutcome {
    /// Ids that were not in the live set yet.
    pub added: u64,
    /// `SCARD` of the live set afterwards.
    pub live_count: u64,
    /// A reconciling walk has replaced the live set, so `live_count` is the count reads report.
    pub seeded: bool,
}

/// `KEYS`: live, since-walk, walk marker, last-good count. `ARGV`: ids (at least one).
/// Returns `{added, scard, seeded}`. The since set shares the marker's expiry.
static INTAKE: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        r"
local added = redis.call('SADD', KEYS[1], unpack(ARGV))
local walking = redis.call('PTTL', KEYS[3])
if walking > 0 then
  redis.call('SADD', KEYS[2], unpack(ARGV))
  redis.call('PEXPIRE', KEYS[2], walking)
end
local seeded = redis.call('HGET', KEYS[4], 'liveIds') == '1' and 1 or 0
return {added, redis.call('SCARD', KEYS[1]), seeded}
",
    )
});

/// Adds `ids` to the live set (and to the since set while a walk runs), in one script.
#[tracing::instrument(name = "storage.intake_ids", skip(clients, ids), fields(ids = ids.len()))]
pub async fn intake(clients: &RedisClients, ids: &[u64]) -> Result<IntakeOutcome, RedisError> {
    let keys = clients.keys();
    if ids.is_empty() {
        let pipeline = clients.primary().next().pipeline();
        let _: () = pipeline.scard(keys.customer_ids_live()).await?;
        let _: () = pipeline.hget(keys.customer_count_last_good(), "liveIds").await?;
        let (live_count, seeded): (u64, Option<String>) = pipeline.all().await?;
        return Ok(IntakeOutcome { added: 0, live_count, seeded: seeded.as_deref() == Some("1") });
    }
    let (added, live_count, seeded): (u64, u64, i64) = INTAKE
        .evalsha_with_reload(
            clients.primary().next(),
            vec![
                keys.customer_ids_live(),
                keys.customer_ids_since_walk(),
                keys.customer_ids_walk_marker(),
                keys.customer_count_last_good(),
            ],
            ids.iter().map(u64::to_string).collect::<Vec<_>>(),
        )
        .await?;
    Ok(IntakeOutcome { added, live_count, seeded: seeded == 1 })
}

/// `KEYS`: walk marker, since-walk. `ARGV`: fence, marker ttl ms.
static BEGIN_WALK: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        r"
redis.call('UNLINK', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
",
    )
});

/// Marks the start of the walk holding `fence`: from now on intakes also record into the since
/// set (emptied here). The marker outlives the walk's deadline (`ttl`), never the walk.
#[tracing::instrument(name = "storage.begin_reconcile", skip(clients))]
pub async fn begin_walk(
    clients: &RedisClients,
    fence: u64,
    ttl: Duration,
) -> Result<(), RedisError> {
    let keys = clients.keys();
    let _: i64 = BEGIN_WALK
        .evalsha_with_reload(
            clients.primary().next(),
            vec![keys.customer_ids_walk_marker(), keys.customer_ids_since_walk()],
            vec![fence.to_string(), millis(ttl).to_string()],
        )
        .await?;
    Ok(())
}

/// Writes the walk's exact id set into its own staging set (`chunk` ids per `SADD`, pipelined),
/// which expires after `ttl` unless the fenced write renames it over the live set first.
#[tracing::instrument(name = "storage.stage_ids", skip(clients, ids), fields(ids = ids.len()))]
pub async fn stage(
    clients: &RedisClients,
    fence: u64,
    ids: &IdSet,
    chunk: usize,
    ttl: Duration,
) -> Result<(), RedisError> {
    let key = clients.keys().customer_ids_staging(fence);
    let client = clients.primary().next().clone();
    let pipeline = client.pipeline();
    let _: () = pipeline.del(&key).await?;
    let mut batch: Vec<String> = Vec::with_capacity(chunk.min(ids.len()));
    for id in ids {
        batch.push(id.to_string());
        if batch.len() == chunk {
            let _: () = pipeline.sadd(&key, std::mem::take(&mut batch)).await?;
        }
    }
    if !batch.is_empty() {
        let _: () = pipeline.sadd(&key, batch).await?;
    }
    let _: () = pipeline.pexpire(&key, millis(ttl) as i64, None).await?;
    let _: Vec<Value> = pipeline.all().await?;
    Ok(())
}

/// `KEYS`: walk marker, since-walk, staging. `ARGV`: fence. The marker and since set are only
/// dropped while they are this walk's (a newer walk may have taken over).
static ABANDON_WALK: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('UNLINK', KEYS[1], KEYS[2])
end
redis.call('UNLINK', KEYS[3])
return 1
",
    )
});

/// Best-effort clean-up after a walk that will not swap (failed, refused): its marker and since
/// set stop collecting, its staging set goes. All expire anyway.
pub async fn abandon_walk(clients: &RedisClients, fence: u64) {
    let keys = clients.keys();
    let result: Result<i64, _> = ABANDON_WALK
        .evalsha_with_reload(
            clients.primary().next(),
            vec![
                keys.customer_ids_walk_marker(),
                keys.customer_ids_since_walk(),
                keys.customer_ids_staging(fence),
            ],
            vec![fence.to_string()],
        )
        .await;
    if let Err(error) = result {
        tracing::warn!(%error, "could not clean up the real-time walk keys; they expire on their own");
    }
}

/// `SCARD` of the live set.
pub async fn live_count(clients: &RedisClients) -> Result<u64, RedisError> {
    Ok(clients.primary().scard(clients.keys().customer_ids_live()).await?)
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX).max(1)
}

//! The Redis tier of checkout sessions ([`RedisSessions`]), with the index and statistics that
//! listing, cleanup and health use.
//!
//! [`Keys::checkout_session`] holds the JSON record with `PX` = the session TTL;
//! [`Keys::checkout_index`] scores each id by its expiry; [`Keys::checkout_stats`] counts
//! created / completed / failed and sums create / update latency. Each operation is one round
//! trip: create = `SET NX PX` + `ZADD` + counters (Lua, atomic); replace = compare the stored
//! version, then `SET PX` + `ZADD` + counters (Lua); read = `GETEX PX` on the worker's direct
//! connection (`platform_redis::direct`) or, when that is not up, `GET` + `PEXPIRE` pipelined on
//! the fred pool (the sliding TTL either way), or, when this replica has not moved the session's
//! index score for a tenth of the TTL, `GET` + `PEXPIRE` + `ZADD` (Lua). Reads are the hot path
//! and the index `ZADD` was most of a read's Redis time, so an index score may lag the key's real
//! expiry by up to that tenth ([`IndexFreshness`]); listing and counting look that far into the
//! past and ask the keys themselves (existence, `PTTL`), and cleanup only removes entries whose
//! key is gone.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chrono::Utc;
use platform_redis::fred::prelude::*;
use platform_redis::fred::types::scripts::Script;
use platform_redis::fred::types::sorted_sets::{ZRange, ZRangeBound, ZRangeKind};
use platform_redis::{DirectConnection, Keys, RedisError, Reply, RolePool};
use uuid::Uuid;

use crate::domain::session_store::{
    ListedSession, Replaced, SessionTier, StatField, TierError, Write,
};
use crate::domain::sessions::{SessionRecord, Tier};
use crate::error::CheckoutError;

static CREATE: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        r"
if redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3], 'NX') then
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
  redis.call('HINCRBY', KEYS[3], 'totalCreated', 1)
  redis.call('HINCRBY', KEYS[3], 'createCount', 1)
  redis.call('HINCRBY', KEYS[3], 'createMicros', ARGV[5])
  return 1
end
return 0
",
    )
});

/// KEYS: session, index. ARGV: id, TTL ms, expiry ms. Returns the JSON or nil.
static READ: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        r"
local value = redis.call('GET', KEYS[1])
if not value then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return false
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
return value
",
    )
});

/// KEYS: session, index, stats. ARGV: id, JSON, TTL ms, expiry ms, expected version, counter
/// field or '', latency µs. Returns 1 written, 0 version changed, -1 gone.
static REPLACE: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        r"
local current = redis.call('GET', KEYS[1])
if not current then return -1 end
local ok, decoded = pcall(cjson.decode, current)
if not ok or tonumber(decoded['version']) ~= tonumber(ARGV[5]) then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
if ARGV[6] ~= '' then redis.call('HINCRBY', KEYS[3], ARGV[6], 1) end
redis.call('HINCRBY', KEYS[3], 'updateCount', 1)
redis.call('HINCRBY', KEYS[3], 'updateMicros', ARGV[7])
return 1
",
    )
});

/// KEYS: session keys. Returns, per key, its JSON (nil when gone) and its `PTTL`.
static LIST: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        r"
local out = {}
for i = 1, #KEYS do
  out[#out + 1] = redis.call('GET', KEYS[i])
  out[#out + 1] = redis.call('PTTL', KEYS[i])
end
return out
",
    )
});

/// KEYS: index, then one session key per id. ARGV: now ms, then the ids. Removes index entries
/// whose session key is gone and whose score is past (a concurrent read may have just moved it).
static CLEANUP: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        r"
local removed = 0
for i = 2, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 0 then
    local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
    if score and tonumber(score) <= tonumber(ARGV[1]) then
      removed = removed + redis.call('ZREM', KEYS[1], ARGV[i])
    end
  end
end
return removed
",
    )
});

/// Index entries examined per cleanup script call (and keys per `EXISTS` when counting).
const CLEANUP_BATCH: i64 = 500;

/// An index score may lag its session's real expiry by at most TTL / this (3 min of 30).
const INDEX_SLACK_DIVISOR: u32 = 10;

/// Sessions whose index refresh a replica remembers before it forgets the stale ones (and, if
/// still full, all: forgetting only costs one extra `ZADD` per session).
const MAX_TRACKED_SESSIONS: usize = 100_000;

/// When this replica last moved each session's index score, so a read within the slack sends
/// only `GET` + `PEXPIRE` (no Lua, no `ZADD`). Every replica refreshes a score it has not moved for a slack,
/// so whichever replica reads, a score lags the last read by at most one slack. Shared by clones.
#[derive(Debug)]
struct IndexFreshness {
    slack: Duration,
    refreshed: Mutex<HashMap<Uuid, Instant>>,
}

impl IndexFreshness {
    fn new(ttl: Duration) -> Self {
        Self { slack: ttl / INDEX_SLACK_DIVISOR, refreshed: Mutex::new(HashMap::new()) }
    }

    fn is_fresh(&self, id: Uuid) -> bool {
        let refreshed = self.refreshed.lock().unwrap_or_else(PoisonError::into_inner);
        refreshed.get(&id).is_some_and(|at| at.elapsed() < self.slack)
    }

    fn moved(&self, id: Uuid, at: Instant) {
        let mut refreshed = self.refreshed.lock().unwrap_or_else(PoisonError::into_inner);
        if refreshed.len() >= MAX_TRACKED_SESSIONS {
            refreshed.retain(|_, moved| moved.elapsed() < self.slack);
            if refreshed.len() >= MAX_TRACKED_SESSIONS {
                refreshed.clear();
            }
        }
        refreshed.insert(id, at);
    }

    fn forget(&self, id: Uuid) {
        self.refreshed.lock().unwrap_or_else(PoisonError::into_inner).remove(&id);
    }

    fn slack_ms(&self) -> u64 {
        ttl_ms(self.slack)
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)
}

fn exclusive(score: f64) -> ZRange {
    ZRange { kind: ZRangeKind::Exclusive, range: ZRangeBound::Score(score) }
}

/// The counter field a replace bumps in the stats hash.
fn stat_field(stat: StatField) -> &'static str {
    match stat {
        StatField::Completed => "totalCompleted",
        StatField::Failed => "totalFailed",
    }
}

/// Checkout sessions in Redis. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RedisSessions {
    redis: RolePool,
    keys: Keys,
    ttl: Duration,
    index: Arc<IndexFreshness>,
}

impl RedisSessions {
    pub fn new(redis: RolePool, keys: Keys, ttl: Duration) -> Self {
        Self { redis, keys, ttl, index: Arc::new(IndexFreshness::new(ttl)) }
    }

    /// A connected client of this thread's pool, or [`TierError::Unreachable`].
    fn client(&self) -> Result<Client, TierError> {
        let pool = self.redis.pool();
        let client = pool.next_connected();
        if client.is_connected() { Ok(client.clone()) } else { Err(TierError::Unreachable(None)) }
    }

    /// KEYS and the leading ARGV (id, JSON, TTL ms, expiry ms) of the create and replace scripts.
    fn write_call(&self, write: &Write<'_>) -> (Vec<String>, Vec<String>) {
        let id = write.record.id.to_string();
        let ttl = ttl_ms(self.ttl);
        let keys = vec![
            self.keys.checkout_session(&id),
            self.keys.checkout_index(),
            self.keys.checkout_stats(),
        ];
        let args = vec![
            id,
            write.json.to_owned(),
            ttl.to_string(),
            now_ms().saturating_add(ttl).to_string(),
        ];
        (keys, args)
    }

    /// [`Self::touch_key`] on this worker's direct connection (see `platform_redis::direct`),
    /// as one `GETEX PX`: atomic, and one command for Redis to run instead of two. (fred's
    /// flush after every custom command, the reason for the pipeline there, does not apply.)
    async fn touch_key_direct(
        &self,
        direct: &DirectConnection,
        id: Uuid,
    ) -> Result<Option<String>, RedisError> {
        let key = self.keys.checkout_session(&id.to_string());
        let ttl = ttl_ms(self.ttl).to_string();
        let reply = direct
            .request(&[&[b"GETEX", key.as_bytes(), b"PX", ttl.as_bytes()]])
            .await?
            .pop()
            .ok_or_else(|| RedisError::Unexpected("a session read got no reply".into()))?;
        match reply.into_result()? {
            Reply::Bulk(None) => Ok(None),
            Reply::Bulk(Some(json)) => String::from_utf8(json.into())
                .map(Some)
                .map_err(|_| RedisError::Unexpected(format!("session {id} is not UTF-8 in redis"))),
            other => {
                Err(RedisError::Unexpected(format!("GETEX of session {id} answered {other:?}")))
            }
        }
    }

    /// `GET` + `PEXPIRE` in one pipeline: the sliding TTL alone (the index score is recent
    /// enough). Not `GETEX PX`: fred 10.1 only sends it as a custom command, and it flushes the
    /// socket after every custom command, one `writev` and one Redis wake-up per read; built-in
    /// commands queued by concurrent reads go out in one write. The two commands run back to back
    /// on one connection; a session deleted between them is simply not extended.
    async fn touch_key(&self, client: &Client, id: Uuid) -> Result<Option<String>, RedisError> {
        let key = self.keys.checkout_session(&id.to_string());
        let pipeline = client.pipeline();
        let () = pipeline.get(&key).await?;
        let () = pipeline
            .pexpire(&key, i64::try_from(ttl_ms(self.ttl)).unwrap_or(i64::MAX), None)
            .await?;
        let (json, _extended): (Option<String>, bool) = pipeline.all().await?;
        Ok(json)
    }

    /// The read script: `GET` + `PEXPIRE` + `ZADD` (or `ZREM` when gone); notes the index move.
    async fn touch_key_and_index(
        &self,
        client: &Client,
        id: Uuid,
    ) -> Result<Option<String>, RedisError> {
        let moved = Instant::now();
        let id_text = id.to_string();
        let ttl = ttl_ms(self.ttl);
        let keys = vec![self.keys.checkout_session(&id_text), self.keys.checkout_index()];
        let args = vec![id_text, ttl.to_string(), now_ms().saturating_add(ttl).to_string()];
        let found: Option<String> = READ.evalsha_with_reload(client, keys, args).await?;
        if found.is_some() {
            self.index.moved(id, moved);
        }
        Ok(found)
    }

    /// Index entries scored in the future, plus those scored within the last slack whose key
    /// still exists (a score lags a read that skipped the `ZADD` by at most the slack).
    async fn live_count_redis(&self, client: &Client) -> Result<u64, RedisError> {
        let index = self.keys.checkout_index();
        let now = now_ms() as f64;
        let mut count: u64 = client.zcount(&index, now, f64::INFINITY).await?;
        let lagging: Vec<String> = client
            .zrangebyscore(&index, self.lag_window_start(), exclusive(now), false, None)
            .await?;
        for ids in lagging.chunks(usize::try_from(CLEANUP_BATCH).unwrap_or(500)) {
            let keys: Vec<String> = ids.iter().map(|id| self.keys.checkout_session(id)).collect();
            let live: u64 = client.exists(keys).await?;
            count += live;
        }
        Ok(count)
    }

    /// Oldest index score (exclusive) that may still belong to a live session.
    fn lag_window_start(&self) -> ZRange {
        exclusive(now_ms().saturating_sub(self.index.slack_ms()) as f64)
    }

    async fn cleanup_redis(&self, client: &Client) -> Result<u64, RedisError> {
        let index = self.keys.checkout_index();
        let now = now_ms();
        let mut removed = 0u64;
        let mut offset = 0i64;
        loop {
            let ids: Vec<String> = client
                .zrangebyscore(
                    &index,
                    f64::NEG_INFINITY,
                    now as f64,
                    false,
                    Some((offset, CLEANUP_BATCH)),
                )
                .await?;
            if ids.is_empty() {
                return Ok(removed);
            }
            let mut keys = vec![index.clone()];
            keys.extend(ids.iter().map(|id| self.keys.checkout_session(id)));
            let mut args = vec![now.to_string()];
            args.extend(ids.iter().cloned());
            let batch: u64 = CLEANUP.evalsha_with_reload(client, keys, args).await?;
            removed += batch;
            // Entries kept (their key still exists) stay in range; skip past them.
            offset += i64::try_from(ids.len() as u64 - batch).unwrap_or(0);
            if (ids.len() as i64) < CLEANUP_BATCH {
                return Ok(removed);
            }
        }
    }

    async fn list_redis(
        &self,
        client: &Client,
        offset: i64,
        limit: i64,
    ) -> Result<(Vec<ListedSession>, usize), RedisError> {
        let index = self.keys.checkout_index();
        // From one slack in the past: a live session's score may lag (see the module doc); the
        // keys' own PTTL gives the expiry, and a gone key is skipped.
        let ids: Vec<String> = client
            .zrangebyscore(
                &index,
                self.lag_window_start(),
                f64::INFINITY,
                false,
                Some((offset, limit)),
            )
            .await?;
        if ids.is_empty() {
            return Ok((Vec::new(), 0));
        }
        let keys: Vec<String> = ids.iter().map(|id| self.keys.checkout_session(id)).collect();
        let found: Vec<Value> =
            LIST.evalsha_with_reload(client, keys, Vec::<String>::new()).await?;
        let now = Utc::now();
        let mut sessions = Vec::with_capacity(ids.len());
        for pair in found.chunks(2) {
            let [value, pttl] = pair else { continue };
            let (Some(json), Some(pttl)) = (value.as_str(), pttl.as_i64()) else { continue };
            if pttl < 0 {
                continue;
            }
            let record: SessionRecord = serde_json::from_str(&json)?;
            let expires_at = now + chrono::Duration::milliseconds(pttl);
            sessions.push(ListedSession { record, expires_at, store: Tier::Redis });
        }
        Ok((sessions, ids.len()))
    }
}

impl SessionTier for RedisSessions {
    const TIER: Tier = Tier::Redis;

    /// False while no connection of the sessions pool is up.
    fn reachable(&self) -> bool {
        self.redis.pool().next_connected().is_connected()
    }

    async fn create(&self, write: Write<'_>) -> Result<(), TierError> {
        let client = self.client()?;
        let moved = Instant::now();
        let (keys, mut args) = self.write_call(&write);
        args.push(write.latency_us.to_string());
        let created: i64 = CREATE.evalsha_with_reload(&client, keys, args).await?;
        if created != 1 {
            return Err(TierError::Failed(CheckoutError::Internal(anyhow::anyhow!(
                "a new random session id already exists in redis"
            ))));
        }
        self.index.moved(write.record.id, moved);
        Ok(())
    }

    async fn get_json(&self, id: Uuid) -> Result<Option<String>, TierError> {
        let fresh = self.index.is_fresh(id);
        if fresh && let Some(direct) = self.redis.direct() {
            match self.touch_key_direct(&direct, id).await {
                // The direct connection's failure is not Redis': the fred pool may still answer.
                Err(error) if error.is_unavailable() => {
                    tracing::debug!(%error, "direct session read failed; retrying on the pool");
                }
                answer => return self.found(id, answer?),
            }
        }
        let client = self.client()?;
        // Boxed: fred's futures are about 7 KB, and inline they would be copied with this future
        // each time it moves (into actix's box, for one).
        let found = if fresh {
            Box::pin(self.touch_key(&client, id)).await
        } else {
            Box::pin(self.touch_key_and_index(&client, id)).await
        };
        self.found(id, found?)
    }

    async fn replace(
        &self,
        write: Write<'_>,
        expected_version: u64,
        stat: Option<StatField>,
    ) -> Result<Replaced, TierError> {
        // The session was just read from Redis: no connection check, a failure is the request's.
        let pool = self.redis.pool();
        let client = pool.next_connected();
        let moved = Instant::now();
        let (keys, mut args) = self.write_call(&write);
        args.extend([
            expected_version.to_string(),
            stat.map_or("", stat_field).to_owned(),
            write.latency_us.to_string(),
        ]);
        let outcome: i64 = REPLACE.evalsha_with_reload(client, keys, args).await?;
        Ok(match outcome {
            1 => {
                self.index.moved(write.record.id, moved);
                Replaced::Done
            }
            0 => Replaced::Conflict,
            _ => Replaced::Gone,
        })
    }

    async fn counters(&self) -> Result<HashMap<String, i64>, TierError> {
        let client = self.client()?;
        Ok(client.hgetall::<HashMap<String, i64>, _>(self.keys.checkout_stats()).await?)
    }

    async fn live_count(&self) -> Result<u64, TierError> {
        let client = self.client()?;
        Ok(self.live_count_redis(&client).await?)
    }

    async fn remove_expired(&self) -> Result<u64, TierError> {
        let client = self.client()?;
        Ok(self.cleanup_redis(&client).await?)
    }

    async fn list(
        &self,
        offset: i64,
        limit: i64,
    ) -> Result<(Vec<ListedSession>, usize), TierError> {
        let client = self.client()?;
        Ok(self.list_redis(&client, offset, limit).await?)
    }
}

impl RedisSessions {
    /// A read's answer; a session gone from Redis is no longer tracked for its index score.
    fn found(&self, id: Uuid, json: Option<String>) -> Result<Option<String>, TierError> {
        if json.is_none() {
            self.index.forget(id);
        }
        Ok(json)
    }
}

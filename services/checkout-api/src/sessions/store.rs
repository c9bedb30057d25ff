//! Where checkout sessions live: Redis first, Postgres when Redis is unreachable (seed 002's
//! storage hierarchy), with the index and statistics that listing, cleanup and health use.
//!
//! - **Redis tier.** [`Keys::checkout_session`] holds the JSON record with `PX` = the session
//!   TTL; [`Keys::checkout_index`] scores each id by its expiry; [`Keys::checkout_stats`] counts
//!   created / completed / failed and sums create / update latency. Each operation is one round
//!   trip: create = `SET NX PX` + `ZADD` + counters (Lua, atomic); replace = compare the stored
//!   version, then `SET PX` + `ZADD` + counters (Lua); read = `GETEX PX` on the worker's direct
//!   connection (`platform_redis::direct`) or, when that is not up, `GET` + `PEXPIRE` pipelined
//!   on the fred pool (the sliding TTL either way), or, when this replica has not moved the
//!   session's index score for a tenth of the TTL, `GET` + `PEXPIRE` + `ZADD` (Lua). Reads are
//!   the hot path and the index `ZADD` was most of a read's Redis time, so an index score may lag
//!   the key's real expiry by up to that tenth ([`IndexFreshness`]); listing and counting look
//!   that far into the past and ask the keys themselves (existence, `PTTL`), and cleanup only
//!   removes entries whose key is gone.
//! - **Postgres tier.** When no sessions-pool connection is up, or a Redis command fails because
//!   Redis cannot be reached, creates go to `checkout_sessions` (sliding `expires_at`) and its
//!   counters to `checkout_stats`. Reads try Redis, then Postgres, so a session is found wherever
//!   it was written: sessions created during an outage stay in Postgres until they expire while
//!   new ones go to Redis again as soon as it is back (migration without downtime). Updates go to
//!   the tier that holds the session. A session held by Redis is not reachable while Redis is
//!   down (404 / 503): there is no copy elsewhere.
//! - No in-memory tier: a replica-local copy would make a session appear and vanish depending on
//!   which replica serves the request, and Postgres already covers a Redis outage.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};
use platform_redis::fred::prelude::*;
use platform_redis::fred::types::scripts::Script;
use platform_redis::fred::types::sorted_sets::{ZRange, ZRangeBound, ZRangeKind};
use platform_redis::{DirectConnection, Keys, RedisError, Reply, RolePool};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use super::SessionRecord;
use crate::error::CheckoutError;
use crate::fallback::TierSwitch;
use crate::metrics::CheckoutMetrics;

/// KEYS: session, index, stats. ARGV: id, JSON, TTL ms, expiry ms, latency µs.
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

/// The tier that holds a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Redis,
    Postgres,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Redis => "redis",
            Tier::Postgres => "postgres",
        }
    }
}

/// Which counter a replace bumps besides the update counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatField {
    Completed,
    Failed,
}

impl StatField {
    fn redis_field(self) -> &'static str {
        match self {
            StatField::Completed => "totalCompleted",
            StatField::Failed => "totalFailed",
        }
    }
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
#[derive(Debug, Clone, Copy, Default, Serialize)]
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

/// Result of `cleanup_expired`.
#[derive(Debug, Clone, Copy, Default, Serialize)]
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
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListedSession {
    #[serde(flatten)]
    pub record: SessionRecord,
    pub expires_at: DateTime<Utc>,
    pub store: Tier,
}

/// The two-tier session store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SessionStore {
    redis: RolePool,
    keys: Keys,
    db: PgPool,
    ttl: Duration,
    tier: TierSwitch,
    index: Arc<IndexFreshness>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)
}

impl SessionStore {
    pub fn new(
        redis: RolePool,
        keys: Keys,
        db: PgPool,
        ttl: Duration,
        metrics: CheckoutMetrics,
    ) -> Self {
        let tier = TierSwitch::new("checkout sessions", "postgres", metrics.store_fallback());
        Self { redis, keys, db, ttl, tier, index: Arc::new(IndexFreshness::new(ttl)) }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// True while no connection of the sessions pool is up: new sessions go to Postgres.
    pub fn in_fallback(&self) -> bool {
        !self.redis.pool().next_connected().is_connected()
    }

    /// Stores a new session; returns the tier that took it.
    #[tracing::instrument(name = "sessions.create", skip_all, fields(session_id = %record.id))]
    pub async fn create(
        &self,
        record: &SessionRecord,
        latency_us: u64,
    ) -> Result<Tier, CheckoutError> {
        let json = serde_json::to_string(record)?;
        if let Some(client) = &self.tier.client(&self.redis) {
            let moved = Instant::now();
            let id = record.id.to_string();
            let ttl = ttl_ms(self.ttl);
            let keys = vec![
                self.keys.checkout_session(&id),
                self.keys.checkout_index(),
                self.keys.checkout_stats(),
            ];
            let args = vec![
                id,
                json.clone(),
                ttl.to_string(),
                now_ms().saturating_add(ttl).to_string(),
                latency_us.to_string(),
            ];
            let created: Result<i64, RedisError> =
                CREATE.evalsha_with_reload(client, keys, args).await.map_err(Into::into);
            match created {
                Ok(1) => {
                    self.tier.note(false, None);
                    self.index.moved(record.id, moved);
                    return Ok(Tier::Redis);
                }
                Ok(_) => {
                    return Err(CheckoutError::Internal(anyhow::anyhow!(
                        "a new random session id already exists in redis"
                    )));
                }
                Err(error) => self.tier.failed(error)?,
            }
        }
        pg::create(&self.db, record, &json, self.ttl, latency_us).await?;
        Ok(Tier::Postgres)
    }

    /// The session and its tier, extending its TTL; `None` when it does not exist or expired.
    pub async fn get(&self, id: Uuid) -> Result<Option<(SessionRecord, Tier)>, CheckoutError> {
        match self.get_json(id).await? {
            Some((json, tier)) => Ok(Some((serde_json::from_str(&json)?, tier))),
            None => Ok(None),
        }
    }

    /// The stored JSON of the session (as [`get`](Self::get), undecoded) and its tier.
    #[tracing::instrument(name = "sessions.get", skip(self))]
    pub async fn get_json(&self, id: Uuid) -> Result<Option<(String, Tier)>, CheckoutError> {
        let fresh = self.index.is_fresh(id);
        let mut found = None;
        if fresh && let Some(direct) = self.redis.direct() {
            match self.touch_key_direct(&direct, id).await {
                // The direct connection's failure is not Redis': the fred pool may still answer.
                Err(error) if error.is_unavailable() => {
                    tracing::debug!(%error, "direct session read failed; retrying on the pool");
                }
                answer => found = Some(answer),
            }
        }
        if found.is_none()
            && let Some(client) = &self.tier.client(&self.redis)
        {
            // Boxed, like the Postgres read below: fred's futures are about 7 KB, and inline they
            // would be copied with this future each time it moves (into actix's box, for one).
            found = Some(if fresh {
                Box::pin(self.touch_key(client, id)).await
            } else {
                Box::pin(self.touch_key_and_index(client, id)).await
            });
        }
        if let Some(found) = found {
            match found {
                Ok(Some(json)) => {
                    self.tier.note(false, None);
                    return Ok(Some((json, Tier::Redis)));
                }
                Ok(None) => {
                    self.tier.note(false, None);
                    self.index.forget(id);
                }
                Err(error) => self.tier.failed(error)?,
            }
        }
        let json = Box::pin(pg::touch(&self.db, id, self.ttl)).await?;
        Ok(json.map(|json| (json, Tier::Postgres)))
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

    /// Writes `record` over the stored session if its version is still `expected_version`.
    #[tracing::instrument(name = "sessions.replace", skip(self, record), fields(session_id = %record.id))]
    pub async fn replace(
        &self,
        tier: Tier,
        record: &SessionRecord,
        expected_version: u64,
        stat: Option<StatField>,
        latency_us: u64,
    ) -> Result<Replaced, CheckoutError> {
        let json = serde_json::to_string(record)?;
        match tier {
            Tier::Redis => {
                let pool = self.redis.pool();
                let client = pool.next_connected();
                let moved = Instant::now();
                let id = record.id.to_string();
                let ttl = ttl_ms(self.ttl);
                let keys = vec![
                    self.keys.checkout_session(&id),
                    self.keys.checkout_index(),
                    self.keys.checkout_stats(),
                ];
                let args = vec![
                    id,
                    json,
                    ttl.to_string(),
                    now_ms().saturating_add(ttl).to_string(),
                    expected_version.to_string(),
                    stat.map_or("", StatField::redis_field).to_owned(),
                    latency_us.to_string(),
                ];
                let outcome: i64 = REPLACE
                    .evalsha_with_reload(client, keys, args)
                    .await
                    .map_err(|e| CheckoutError::from(RedisError::from(e)))?;
                Ok(match outcome {
                    1 => {
                        self.index.moved(record.id, moved);
                        Replaced::Done
                    }
                    0 => Replaced::Conflict,
                    _ => Replaced::Gone,
                })
            }
            Tier::Postgres => {
                pg::replace(&self.db, record, &json, expected_version, stat, self.ttl, latency_us)
                    .await
            }
        }
    }

    /// Counters of both tiers. Fails only when neither can be read.
    pub async fn stats(&self) -> Result<Stats, CheckoutError> {
        let mut redis_counts: Option<HashMap<String, i64>> = None;
        if let Some(client) = &self.tier.client(&self.redis) {
            match client.hgetall::<HashMap<String, i64>, _>(self.keys.checkout_stats()).await {
                Ok(counts) => redis_counts = Some(counts),
                Err(error) => self.tier.failed(error.into())?,
            }
        }
        let pg = pg::stats(&self.db).await;
        let (pg, redis) = match (pg, redis_counts) {
            (Ok(pg), redis) => (pg, redis),
            (Err(error), Some(redis)) => {
                tracing::warn!(%error, "postgres checkout counters unreadable; stats from redis only");
                (HashMap::new(), Some(redis))
            }
            (Err(error), None) => return Err(error.into()),
        };
        let redis_included = redis.is_some();
        let redis = redis.unwrap_or_default();
        let get = |name: &str| {
            redis.get(name).copied().unwrap_or(0).saturating_add(pg.get(name).copied().unwrap_or(0))
        };
        let average = |sum: i64, count: i64| {
            if count > 0 { sum as f64 / count as f64 / 1000.0 } else { 0.0 }
        };
        let created = get("totalCreated");
        let completed = get("totalCompleted");
        Ok(Stats {
            total_created: created,
            total_completed: completed,
            total_failed: get("totalFailed"),
            conversion_rate: if created > 0 { completed as f64 / created as f64 } else { 0.0 },
            average_create_ms: average(get("createMicros"), get("createCount")),
            average_update_ms: average(get("updateMicros"), get("updateCount")),
            redis_included,
        })
    }

    /// Live (not expired) sessions in both tiers; a tier that cannot be read counts 0.
    pub async fn live_count(&self) -> u64 {
        let mut count = 0;
        if let Some(client) = &self.tier.client(&self.redis) {
            match self.live_count_redis(client).await {
                Ok(n) => count += n,
                Err(error) => tracing::debug!(%error, "cannot count redis sessions"),
            }
        }
        match pg::live_count(&self.db).await {
            Ok(n) => count += n,
            Err(error) => tracing::debug!(%error, "cannot count postgres sessions"),
        }
        count
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

    /// Removes index entries of expired Redis sessions and expired Postgres rows.
    #[tracing::instrument(name = "sessions.cleanup_expired", skip(self))]
    pub async fn cleanup_expired(&self) -> Result<CleanupReport, CheckoutError> {
        let mut report = CleanupReport::default();
        let mut redis_ok = false;
        if let Some(client) = &self.tier.client(&self.redis) {
            match self.cleanup_redis(client).await {
                Ok(removed) => {
                    report.redis_index_entries_removed = removed;
                    redis_ok = true;
                }
                Err(error) => self.tier.failed(error)?,
            }
        }
        match pg::delete_expired(&self.db).await {
            Ok(removed) => report.postgres_sessions_removed = removed,
            Err(error) if redis_ok => {
                tracing::warn!(%error, "expired postgres sessions not removed");
            }
            Err(error) => return Err(error.into()),
        }
        tracing::info!(
            redis_index_entries_removed = report.redis_index_entries_removed,
            postgres_sessions_removed = report.postgres_sessions_removed,
            "expired checkout sessions cleaned up"
        );
        Ok(report)
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

    /// One page of live sessions: Redis' first (by expiry), then Postgres'. `cursor` is what the
    /// previous page returned (`r:<offset>` or `p:<offset>`). Offsets move when sessions are
    /// read or expire meanwhile, so a page may repeat or skip one; fine for an admin listing.
    pub async fn list(
        &self,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<SessionPage, CheckoutError> {
        let (on_redis, offset) = parse_cursor(cursor)?;
        let limit_i = i64::try_from(limit).unwrap_or(100);
        if !on_redis {
            return self.list_pg(offset, limit).await;
        }
        let Some(client) = &self.tier.client(&self.redis) else {
            return self.list_pg(0, limit).await;
        };
        let (mut sessions, entries) = match self.list_redis(client, offset, limit_i).await {
            Ok(found) => found,
            Err(error) => {
                self.tier.failed(error)?;
                return self.list_pg(0, limit).await;
            }
        };
        if entries == limit {
            // (Entries whose key expired since the index read are skipped, so a page can be short.)
            return Ok(SessionPage {
                sessions,
                next_cursor: Some(format!("r:{}", offset + limit_i)),
            });
        }
        // Redis is exhausted: fill the page from Postgres.
        let mut rest = self.list_pg(0, limit - sessions.len()).await?;
        sessions.append(&mut rest.sessions);
        Ok(SessionPage { sessions, next_cursor: rest.next_cursor })
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

    async fn list_pg(&self, offset: i64, limit: usize) -> Result<SessionPage, CheckoutError> {
        let limit_i = i64::try_from(limit).unwrap_or(100);
        let rows = pg::list(&self.db, offset, limit_i).await?;
        let next_cursor = (rows.len() == limit).then(|| format!("p:{}", offset + limit_i));
        let sessions = rows
            .into_iter()
            .map(|(record, expires_at)| ListedSession { record, expires_at, store: Tier::Postgres })
            .collect();
        Ok(SessionPage { sessions, next_cursor })
    }
}

fn exclusive(score: f64) -> ZRange {
    ZRange { kind: ZRangeKind::Exclusive, range: ZRangeBound::Score(score) }
}

fn parse_cursor(cursor: Option<&str>) -> Result<(bool, i64), CheckoutError> {
    let Some(cursor) = cursor.filter(|c| !c.is_empty()) else {
        return Ok((true, 0));
    };
    let bad = || {
        CheckoutError::invalid("invalid_cursor", "cursor must be a value returned as nextCursor")
    };
    let (tier, offset) = cursor.split_once(':').ok_or_else(bad)?;
    let offset: i64 = offset.parse().map_err(|_| bad())?;
    if offset < 0 {
        return Err(bad());
    }
    match tier {
        "r" => Ok((true, offset)),
        "p" => Ok((false, offset)),
        _ => Err(bad()),
    }
}

/// Postgres queries of the session tier.
mod pg {
    use super::*;

    fn secs(ttl: Duration) -> f64 {
        ttl.as_secs_f64()
    }

    pub async fn create(
        db: &PgPool,
        record: &SessionRecord,
        json: &str,
        ttl: Duration,
        latency_us: u64,
    ) -> Result<(), sqlx::Error> {
        let mut tx = db.begin().await?;
        sqlx::query(
            "INSERT INTO checkout_sessions (id, record, version, status, expires_at) \
             VALUES ($1, $2::jsonb, $3, $4, now() + make_interval(secs => $5))",
        )
        .bind(record.id)
        .bind(json)
        .bind(i64::try_from(record.version).unwrap_or(i64::MAX))
        .bind(record.status.as_str())
        .bind(secs(ttl))
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE checkout_stats SET total_created = total_created + 1, \
               create_count = create_count + 1, create_us = create_us + $1 WHERE id = 1",
        )
        .bind(i64::try_from(latency_us).unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    }

    pub async fn touch(
        db: &PgPool,
        id: Uuid,
        ttl: Duration,
    ) -> Result<Option<String>, sqlx::Error> {
        sqlx::query_scalar(
            "UPDATE checkout_sessions SET expires_at = now() + make_interval(secs => $2) \
             WHERE id = $1 AND expires_at > now() RETURNING record::text",
        )
        .bind(id)
        .bind(secs(ttl))
        .fetch_optional(db)
        .await
    }

    pub async fn replace(
        db: &PgPool,
        record: &SessionRecord,
        json: &str,
        expected_version: u64,
        stat: Option<StatField>,
        ttl: Duration,
        latency_us: u64,
    ) -> Result<Replaced, CheckoutError> {
        let mut tx = db.begin().await?;
        let updated = sqlx::query(
            "UPDATE checkout_sessions SET record = $2::jsonb, version = $3, status = $4, \
               expires_at = now() + make_interval(secs => $5), updated_at = now() \
             WHERE id = $1 AND version = $6 AND expires_at > now()",
        )
        .bind(record.id)
        .bind(json)
        .bind(i64::try_from(record.version).unwrap_or(i64::MAX))
        .bind(record.status.as_str())
        .bind(secs(ttl))
        .bind(i64::try_from(expected_version).unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 0 {
            let exists: Option<i64> = sqlx::query_scalar(
                "SELECT version FROM checkout_sessions WHERE id = $1 AND expires_at > now()",
            )
            .bind(record.id)
            .fetch_optional(&mut *tx)
            .await?;
            return Ok(if exists.is_some() { Replaced::Conflict } else { Replaced::Gone });
        }
        sqlx::query(
            "UPDATE checkout_stats SET \
               total_completed = total_completed + CASE WHEN $1 = 'completed' THEN 1 ELSE 0 END, \
               total_failed = total_failed + CASE WHEN $1 = 'failed' THEN 1 ELSE 0 END, \
               update_count = update_count + 1, update_us = update_us + $2 WHERE id = 1",
        )
        .bind(match stat {
            Some(StatField::Completed) => "completed",
            Some(StatField::Failed) => "failed",
            None => "",
        })
        .bind(i64::try_from(latency_us).unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Replaced::Done)
    }

    /// The counters under the Redis hash's field names.
    pub async fn stats(db: &PgPool) -> Result<HashMap<String, i64>, sqlx::Error> {
        let row: (i64, i64, i64, i64, i64, i64, i64) = sqlx::query_as(
            "SELECT total_created, total_completed, total_failed, create_count, create_us, \
               update_count, update_us FROM checkout_stats WHERE id = 1",
        )
        .fetch_one(db)
        .await?;
        Ok(HashMap::from([
            ("totalCreated".to_owned(), row.0),
            ("totalCompleted".to_owned(), row.1),
            ("totalFailed".to_owned(), row.2),
            ("createCount".to_owned(), row.3),
            ("createMicros".to_owned(), row.4),
            ("updateCount".to_owned(), row.5),
            ("updateMicros".to_owned(), row.6),
        ]))
    }

    pub async fn live_count(db: &PgPool) -> Result<u64, sqlx::Error> {
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM checkout_sessions WHERE expires_at > now()")
                .fetch_one(db)
                .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    pub async fn delete_expired(db: &PgPool) -> Result<u64, sqlx::Error> {
        let deleted = sqlx::query("DELETE FROM checkout_sessions WHERE expires_at <= now()")
            .execute(db)
            .await?;
        Ok(deleted.rows_affected())
    }

    pub async fn list(
        db: &PgPool,
        offset: i64,
        limit: i64,
    ) -> Result<Vec<(SessionRecord, DateTime<Utc>)>, CheckoutError> {
        let rows: Vec<(String, DateTime<Utc>)> = sqlx::query_as(
            "SELECT record::text, expires_at FROM checkout_sessions WHERE expires_at > now() \
             ORDER BY expires_at, id OFFSET $1 LIMIT $2",
        )
        .bind(offset)
        .bind(limit)
        .fetch_all(db)
        .await?;
        rows.into_iter()
            .map(|(json, expires_at)| Ok((serde_json::from_str(&json)?, expires_at)))
            .collect()
    }
}

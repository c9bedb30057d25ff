//! Two-tier cache-aside: an in-process L1 in front of Redis (L2), with request coalescing,
//! probabilistic early refresh, invalidation by key and by group, and invalidation broadcast so
//! every replica drops its L1 copies.
//!
//! How a read is served ([`Cache::get_or_compute`]):
//! 1. **L1**: a bounded in-process map (least recently used entry evicted first, to within half
//!    the bound: see [`L1`]). An L1 copy lives at most [`CacheSettings::l1_ttl_max`] and never past
//!    the L2 expiry, so a lost invalidation message cannot keep stale data around for long.
//! 2. **Single flight**: concurrent misses of one key in one process share one leader; the others
//!    wait for its value. If the leader's `compute` fails (or the leader's future is dropped), each
//!    waiter runs its own `compute` once, uncoalesced, and gets its own result or error: nobody
//!    waits for a second round, and error types need not be `Clone`.
//! 3. **L2**: the leader reads [`Keys::cache_entry`], a JSON envelope `{value, computedAtMs, ttlMs,
//!    computeMs}` stored with `PX ttl`; a value that does not decode is treated as a miss.
//! 4. **Origin**: the leader runs `compute`, then writes the entry and adds its key to
//!    [`Keys::cache_group_members`] (TTL raised to at least the entry's) in one Lua script.
//!
//! **Early refresh (XFetch).** On a hit, an entry whose expiry is near is refreshed with
//! probability rising towards expiry: refresh when `now - computeMs * beta * ln(rand) >= expiry`
//! (Vattani et al., "Optimal probabilistic cache stampede prevention"). The request that draws it
//! is served the current value with status `STALE`, and `compute` runs once in the background
//! (at most one refresh per key per process at a time). That is why `compute` must be
//! `Send + 'static`: pass a `move` closure over owned handles.
//!
//! **Redis down.** The cache never fails a request: when Redis is unreachable or a command errs,
//! the read falls back to L1, then to `compute` (status `MISS`, tier `Origin`), and the computed
//! value still goes to L1. Warnings are rate limited. When Redis returns, caching resumes by
//! itself (the pool reconnects; nothing here needs rebuilding).
//!
//! **Invalidation.** [`Cache::invalidate`] and [`Cache::invalidate_group`] delete from Redis (a
//! group by its member set, in one Lua script; never `KEYS`), drop local L1 copies, and publish
//! [`Invalidation`] on [`Keys::invalidation_channel`]; [`Cache::listen_for_invalidations`] applies
//! other replicas' messages to this L1, and clears L1 whenever the pub/sub connection comes back
//! (messages sent meanwhile were lost). A value computed while an invalidation was applied in this
//! process is returned to its caller but not cached. A replica that computed before another
//! replica's invalidation reached it can still write its older value to L2 in that window; keep
//! TTLs honest for data where that matters.
//!
//! **Serialised values.** An L1 hit clones the cached value. For a response body, cache a
//! [`JsonBytes`] (or a struct holding one): it holds the JSON already serialised, so a hit costs a
//! reference-count increment and the handler sends the bytes without running serde.
//!
//! **Hot reads.** `compute` owns clones of its handles (pools, counters), and building and
//! dropping it means reference counts that every worker thread touches, on every read, hit or not.
//! A hot route calls [`Cache::fresh_l1_hit`] first and builds `compute` only when that says no.

use std::any::Any;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix_web::web::Bytes;
use fred::prelude::*;
use fred::types::scripts::Script;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::client::{RedisClients, Role, RolePool};
use crate::error::Result;
use crate::keys::Keys;
use crate::messages::Invalidation;
use crate::pubsub::{self, PubSub};

/// Writes one entry and records it in its group. KEYS: entry, group members. ARGV: JSON, TTL ms.
const WRITE_ENTRY: &str = r"
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SADD', KEYS[2], KEYS[1])
local ttl = tonumber(ARGV[2])
if redis.call('PTTL', KEYS[2]) < ttl then
  redis.call('PEXPIRE', KEYS[2], ttl)
end
return 1
";

/// Deletes one entry and its membership. KEYS: entry, group members.
const DELETE_ENTRY: &str = r"
redis.call('SREM', KEYS[2], KEYS[1])
return redis.call('DEL', KEYS[1])
";

/// Deletes every entry of a group, then the member set. KEYS: group members. The members share
/// the set's hash tag, so they are in its slot even though they are not listed in KEYS.
const DELETE_GROUP: &str = r"
local members = redis.call('SMEMBERS', KEYS[1])
local deleted = 0
for i = 1, #members, 256 do
  deleted = deleted + redis.call('DEL', unpack(members, i, math.min(i + 255, #members)))
end
redis.call('DEL', KEYS[1])
return deleted
";

/// A value serialised to JSON once, kept as bytes: cloning it (an L1 hit) is a reference-count
/// increment, and a handler answers with [`JsonBytes::bytes`] without serialising again. In the
/// L2 envelope it is stored as a JSON string holding that text (decoded once per L2 read).
#[derive(Clone, PartialEq, Eq)]
pub struct JsonBytes(Bytes);

impl JsonBytes {
    /// Serialises `value` to JSON.
    pub fn to_json<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<Self> {
        serde_json::to_vec(value).map(|json| JsonBytes(Bytes::from(json)))
    }

    /// The JSON text, taken out without touching the reference count.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    /// The JSON text in a buffer of its own. Cheaper than a clone for a hot value read on
    /// several threads at once: copying a few kilobytes costs less than the reference count's
    /// cache line moving between cores twice per read.
    pub fn copied(&self) -> JsonBytes {
        JsonBytes(Bytes::copy_from_slice(&self.0))
    }

    /// The JSON text as a slice.
    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for JsonBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JsonBytes({})", String::from_utf8_lossy(&self.0))
    }
}

impl Serialize for JsonBytes {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // `to_json` produced it, so it is UTF-8; a foreign buffer that is not fails loudly.
        let text = std::str::from_utf8(&self.0).map_err(serde::ser::Error::custom)?;
        serializer.serialize_str(text)
    }
}

impl<'de> Deserialize<'de> for JsonBytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(|text| JsonBytes(Bytes::from(text)))
    }
}

/// Minimum time between two "Redis unavailable" warnings of one cache.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The `[cache]` settings of a service.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CacheSettings {
    /// When false every read computes (status `MISS`, tier `Origin`) and nothing is stored.
    pub enabled: bool,
    /// Bound on the in-process tier; 0 disables L1.
    pub l1_max_entries: usize,
    /// Longest life of an L1 copy. In config: milliseconds, or a string such as `"30s"`,
    /// `"500ms"`, `"2m"`.
    #[serde(deserialize_with = "deserialize_duration")]
    pub l1_ttl_max: Duration,
    /// XFetch `beta`: above 1 refreshes earlier, below 1 later, 0 never early.
    pub early_refresh_beta: f64,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            l1_max_entries: 10_000,
            l1_ttl_max: Duration::from_secs(30),
            early_refresh_beta: 1.0,
        }
    }
}

/// Whether a read was served from the cache; see [`CacheStatus::as_header`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CacheStatus {
    /// Served from L1 or L2.
    Hit,
    /// Computed for this request (or for a concurrent request this one waited for).
    Miss,
    /// Served from L1 or L2 while a background refresh of the entry runs (early refresh).
    Stale,
}

impl CacheStatus {
    /// The `X-Cache` header value: `HIT`, `MISS` or `STALE`.
    pub fn as_header(self) -> &'static str {
        match self {
            CacheStatus::Hit => "HIT",
            CacheStatus::Miss => "MISS",
            CacheStatus::Stale => "STALE",
        }
    }
}

impl fmt::Display for CacheStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_header())
    }
}

/// Where the value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tier {
    /// This process's memory.
    L1,
    /// Redis.
    L2,
    /// The `compute` function.
    Origin,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::L1 => "l1",
            Tier::L2 => "l2",
            Tier::Origin => "origin",
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A value with how it was served.
#[derive(Debug, Clone, PartialEq)]
pub struct Cached<T> {
    pub value: T,
    pub status: CacheStatus,
    pub tier: Tier,
}

/// Counters since the cache was built (shared by clones).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheStats {
    /// Reads served from L1 with status `HIT`.
    pub l1_hits: u64,
    /// Reads served from Redis with status `HIT`.
    pub l2_hits: u64,
    /// Reads that returned a computed value (including coalesced waiters and disabled cache).
    pub misses: u64,
    /// Reads served with status `STALE` while an early refresh runs.
    pub stale: u64,
    /// Redis commands that failed or were skipped because Redis was unreachable, and stored
    /// values that did not decode.
    pub errors: u64,
    /// Misses that waited for another caller's `compute` instead of running their own.
    pub coalesced: u64,
    /// Entries currently in L1 (expired ones included until evicted or read).
    pub l1_entries: usize,
}

/// The two-tier cache. Cheap to clone; clones share L1, flights and counters.
#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

impl fmt::Debug for Cache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("keys", &self.inner.keys)
            .field("settings", &self.inner.settings)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

type Shared = Arc<dyn Any + Send + Sync>;
type Waiting = watch::Receiver<Option<Outcome>>;

struct Inner {
    /// The cache instance (seed 001 may put it apart from the primary).
    pool: RolePool,
    /// Invalidations are published where [`PubSub`] subscribes: the primary.
    primary: RolePool,
    keys: Keys,
    settings: CacheSettings,
    l1: Mutex<L1>,
    /// Bumped (under the L1 lock) by every invalidation applied here, so a value computed across
    /// one is not cached.
    generation: AtomicU64,
    /// Running flights by entry key: the flight's id and its waiters' receiver.
    flights: Mutex<HashMap<String, (u64, Waiting)>>,
    next_flight: AtomicU64,
    refreshing: Mutex<HashSet<String>>,
    counters: Counters,
    write_entry: Script,
    delete_entry: Script,
    delete_group: Script,
    warn_limit: WarnLimiter,
}

#[derive(Default)]
struct Counters {
    l1_hits: AtomicU64,
    l2_hits: AtomicU64,
    misses: AtomicU64,
    stale: AtomicU64,
    errors: AtomicU64,
    coalesced: AtomicU64,
}

/// What a flight's waiters receive.
#[derive(Clone)]
enum Outcome {
    Value(Shared),
    Failed,
}

/// Timing data stored with each value; drives expiry and XFetch.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Meta {
    computed_at_ms: u64,
    ttl_ms: u64,
    compute_ms: u64,
}

impl Meta {
    fn expires_at_ms(&self) -> u64 {
        self.computed_at_ms.saturating_add(self.ttl_ms)
    }
}

/// The L2 value: `value` next to the flattened [`Meta`].
#[derive(Serialize, Deserialize)]
struct Stored<T> {
    value: T,
    #[serde(flatten)]
    meta: Meta,
}

impl Cache {
    /// A cache on the `cache()` pool of `clients`, under its key prefix.
    pub fn new(clients: &RedisClients, settings: CacheSettings) -> Cache {
        Cache {
            inner: Arc::new(Inner {
                pool: clients.role(Role::Cache).clone(),
                primary: clients.role(Role::Primary).clone(),
                keys: clients.keys().clone(),
                l1: Mutex::new(L1::new(settings.l1_max_entries)),
                settings,
                generation: AtomicU64::new(0),
                flights: Mutex::new(HashMap::new()),
                next_flight: AtomicU64::new(0),
                refreshing: Mutex::new(HashSet::new()),
                counters: Counters::default(),
                write_entry: Script::from_lua(WRITE_ENTRY),
                delete_entry: Script::from_lua(DELETE_ENTRY),
                delete_group: Script::from_lua(DELETE_GROUP),
                warn_limit: WarnLimiter::default(),
            }),
        }
    }

    /// The settings this cache was built with.
    pub fn settings(&self) -> &CacheSettings {
        &self.inner.settings
    }

    /// The value of `key` in `group` if this replica's L1 holds it: no I/O, no compute, no
    /// counters (for side uses such as metering a request that never reached its handler).
    pub fn peek<T: Clone + 'static>(&self, group: &str, key: &str) -> Option<T> {
        let entry_key = self.inner.keys.cache_entry(group, key);
        self.inner.l1_get::<T>(&entry_key).map(|(value, _)| value)
    }

    /// `read` of the L1 copy of `key` in `group` when this replica holds one too far from its
    /// expiry for an early refresh to be drawn: no I/O, no allocation, no random draw (see "Hot
    /// reads" in the module doc). `read` runs under the L1 lock: keep it to a clone or a copy. On
    /// `None` call [`Self::get_or_compute`], which decides everything else as it always does.
    /// Counted as an L1 hit.
    pub fn fresh_l1_hit<T: 'static, R>(
        &self,
        group: &str,
        key: &str,
        read: impl FnOnce(&T) -> R,
    ) -> Option<Cached<R>> {
        thread_local! {
            /// The entry key of the lookup, rebuilt in place so a hit allocates nothing.
            static ENTRY_KEY: RefCell<String> = const { RefCell::new(String::new()) };
        }
        let inner = &self.inner;
        if !inner.settings.enabled {
            return None;
        }
        let now = Instant::now();
        let value = ENTRY_KEY.with_borrow_mut(|entry_key| {
            entry_key.clear();
            inner.keys.write_cache_entry(entry_key, group, key);
            let mut l1 = lock(&inner.l1);
            let entry = l1.get(entry_key, now)?;
            if now >= entry.quiet_until {
                return None;
            }
            entry.value.downcast_ref::<T>().map(read)
        })?;
        inner.counters.l1_hits.fetch_add(1, Ordering::Relaxed);
        Some(Cached { value, status: CacheStatus::Hit, tier: Tier::L1 })
    }

    /// Returns the value of `key` in invalidation `group`, from L1, Redis, or `compute` (stored
    /// for `ttl`). See the module doc for coalescing, early refresh and Redis failures. Only
    /// `compute`'s error is ever returned.
    ///
    /// An L1 hit is answered before the miss path's future exists: that future (Redis, flights,
    /// `compute`) is several kilobytes, and building and moving it on every hot read cost more
    /// than the hit itself. The miss path is boxed and traced (`cache.get_or_compute` span).
    pub async fn get_or_compute<T, E, F, Fut>(
        &self,
        group: &str,
        key: &str,
        ttl: Duration,
        compute: F,
    ) -> Result<Cached<T>, E>
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        E: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        let inner = &self.inner;
        if !inner.settings.enabled {
            // Boxed like the miss path: inline, `compute`'s future would size this one.
            let value = Box::pin(compute()).await?;
            inner.counters.misses.fetch_add(1, Ordering::Relaxed);
            return Ok(Cached { value, status: CacheStatus::Miss, tier: Tier::Origin });
        }
        let entry_key = inner.keys.cache_entry(group, key);
        if let Some((value, meta)) = inner.l1_get::<T>(&entry_key) {
            return Ok(self.serve(value, meta, Tier::L1, group, &entry_key, ttl, compute));
        }
        let span = tracing::info_span!(
            "cache.get_or_compute",
            group,
            key,
            status = tracing::field::Empty,
            tier = tracing::field::Empty
        );
        let result =
            Box::pin(self.lookup(group, entry_key, ttl, compute)).instrument(span.clone()).await;
        if let Ok(cached) = &result {
            span.record("status", cached.status.as_header());
            span.record("tier", cached.tier.as_str());
        }
        result
    }

    /// The miss path: join or lead the flight for `entry_key`, then Redis, then `compute`.
    async fn lookup<T, E, F, Fut>(
        &self,
        group: &str,
        entry_key: String,
        ttl: Duration,
        compute: F,
    ) -> Result<Cached<T>, E>
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        E: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        let inner = &self.inner;
        let flight = match inner.join_or_lead(&entry_key) {
            Err(mut waiting) => {
                let outcome = match waiting.wait_for(Option::is_some).await {
                    Ok(outcome) => outcome.clone(),
                    Err(_) => None,
                };
                inner.counters.misses.fetch_add(1, Ordering::Relaxed);
                if let Some(Outcome::Value(shared)) = outcome
                    && let Some(value) = shared.downcast_ref::<T>()
                {
                    inner.counters.coalesced.fetch_add(1, Ordering::Relaxed);
                    return Ok(Cached {
                        value: value.clone(),
                        status: CacheStatus::Miss,
                        tier: Tier::Origin,
                    });
                }
                // The leader failed or went away: compute once ourselves, uncoalesced.
                let generation = inner.generation.load(Ordering::SeqCst);
                let started = Instant::now();
                let value = compute().await?;
                let meta = Meta::now(ttl, started.elapsed());
                inner.store(group, &entry_key, &value, meta, generation).await;
                return Ok(Cached { value, status: CacheStatus::Miss, tier: Tier::Origin });
            }
            Ok(flight) => flight,
        };

        let generation = inner.generation.load(Ordering::SeqCst);
        // A flight may have finished between the L1 check above and taking the lead.
        if let Some((value, meta)) = inner.l1_get::<T>(&entry_key) {
            flight.complete(Arc::new(value.clone()));
            return Ok(self.serve(value, meta, Tier::L1, group, &entry_key, ttl, compute));
        }
        if let Some((value, meta)) = inner.l2_get::<T>(&entry_key).await {
            let shared: Shared = Arc::new(value.clone());
            inner.l1_insert(group, &entry_key, Arc::clone(&shared), meta, generation);
            flight.complete(shared);
            return Ok(self.serve(value, meta, Tier::L2, group, &entry_key, ttl, compute));
        }

        let started = Instant::now();
        // On error the flight is dropped unanswered and its waiters compute for themselves.
        let value = compute().await?;
        let meta = Meta::now(ttl, started.elapsed());
        inner.store(group, &entry_key, &value, meta, generation).await;
        flight.complete(Arc::new(value.clone()));
        inner.counters.misses.fetch_add(1, Ordering::Relaxed);
        Ok(Cached { value, status: CacheStatus::Miss, tier: Tier::Origin })
    }

    /// Answers a hit, starting an early refresh when XFetch draws one.
    #[allow(clippy::too_many_arguments)]
    fn serve<T, E, F, Fut>(
        &self,
        value: T,
        meta: Meta,
        tier: Tier,
        group: &str,
        entry_key: &str,
        ttl: Duration,
        compute: F,
    ) -> Cached<T>
    where
        T: Serialize + Clone + Send + Sync + 'static,
        E: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        let inner = &self.inner;
        if inner.refresh_due(&meta) && inner.start_refresh(entry_key) {
            inner.counters.stale.fetch_add(1, Ordering::Relaxed);
            let task = Refresh {
                inner: Arc::clone(inner),
                group: group.to_owned(),
                entry_key: entry_key.to_owned(),
            };
            tokio::spawn(task.run(ttl, compute));
            return Cached { value, status: CacheStatus::Stale, tier };
        }
        let counter = match tier {
            Tier::L1 => &inner.counters.l1_hits,
            _ => &inner.counters.l2_hits,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        Cached { value, status: CacheStatus::Hit, tier }
    }

    /// Deletes `key` of `group` from Redis and this L1, and tells the other replicas to drop
    /// theirs. The local L1 copy is dropped even when Redis fails; the error is then returned so
    /// the caller can log or retry.
    #[tracing::instrument(name = "cache.invalidate", skip(self))]
    pub async fn invalidate(&self, group: &str, key: &str) -> Result<()> {
        let inner = &self.inner;
        let entry_key = inner.keys.cache_entry(group, key);
        inner.drop_keys(std::slice::from_ref(&entry_key));
        let keys = vec![entry_key.clone(), inner.keys.cache_group_members(group)];
        let deleted: Result<()> = inner
            .delete_entry
            .evalsha_with_reload::<i64, _, _>(inner.pool.pool().next_connected(), keys, ())
            .await
            .map(drop)
            .map_err(Into::into);
        let message = Invalidation::Keys { keys: vec![entry_key] };
        let published = inner.broadcast(&message).await;
        deleted.and(published)
    }

    /// Deletes every entry of `group` from Redis and this L1, and tells the other replicas to
    /// drop theirs. Returns how many entries Redis held. Error handling as [`Cache::invalidate`].
    #[tracing::instrument(name = "cache.invalidate_group", skip(self))]
    pub async fn invalidate_group(&self, group: &str) -> Result<u64> {
        let inner = &self.inner;
        inner.drop_group(group);
        let members = inner.keys.cache_group_members(group);
        let deleted: Result<u64> = inner
            .delete_group
            .evalsha_with_reload(inner.pool.pool().next_connected(), members, ())
            .await
            .map_err(Into::into);
        let published = inner.broadcast(&Invalidation::Group { group: group.to_owned() }).await;
        let deleted = deleted?;
        published?;
        Ok(deleted)
    }

    /// Subscribes to the invalidation channel and applies what other replicas publish to this L1
    /// until `pubsub` stops or the cache is dropped. Also clears L1 whenever the pub/sub
    /// connection comes back, since invalidations sent while it was down are lost. When Redis is
    /// reachable the subscription is confirmed before this returns.
    pub async fn listen_for_invalidations(&self, pubsub: &PubSub) -> Result<JoinHandle<()>> {
        let channel = self.inner.keys.invalidation_channel();
        let mut reconnections = pubsub.reconnections();
        let mut messages = pubsub.subscribe::<Invalidation>(&channel).await?;
        let cache: Weak<Inner> = Arc::downgrade(&self.inner);
        Ok(tokio::spawn(async move {
            loop {
                tokio::select! {
                    message = messages.recv() => {
                        let (Some(message), Some(inner)) = (message, cache.upgrade()) else {
                            return;
                        };
                        inner.apply(message.body);
                    }
                    event = reconnections.recv() => {
                        if matches!(event, Err(tokio::sync::broadcast::error::RecvError::Closed)) {
                            return;
                        }
                        let Some(inner) = cache.upgrade() else { return };
                        let dropped = inner.clear_l1();
                        tracing::info!(dropped, "pub/sub reconnected; cleared L1 (invalidations may have been missed)");
                    }
                }
            }
        }))
    }

    /// Current counters.
    pub fn stats(&self) -> CacheStats {
        let counters = &self.inner.counters;
        CacheStats {
            l1_hits: counters.l1_hits.load(Ordering::Relaxed),
            l2_hits: counters.l2_hits.load(Ordering::Relaxed),
            misses: counters.misses.load(Ordering::Relaxed),
            stale: counters.stale.load(Ordering::Relaxed),
            errors: counters.errors.load(Ordering::Relaxed),
            coalesced: counters.coalesced.load(Ordering::Relaxed),
            l1_entries: lock(&self.inner.l1).len(),
        }
    }
}

impl Inner {
    fn l1_get<T: Clone + 'static>(&self, entry_key: &str) -> Option<(T, Meta)> {
        let mut l1 = lock(&self.l1);
        let entry = l1.get(entry_key, Instant::now())?;
        // Another type under the same key is a caller bug; treat it as a miss and overwrite.
        entry.value.downcast_ref::<T>().map(|value| (value.clone(), entry.meta))
    }

    /// Puts a copy in L1 unless an invalidation was applied since `generation` was read.
    fn l1_insert(&self, group: &str, entry_key: &str, value: Shared, meta: Meta, generation: u64) {
        let remaining_ms = meta.expires_at_ms().saturating_sub(now_ms());
        let life = self.settings.l1_ttl_max.min(Duration::from_millis(remaining_ms));
        if life.is_zero() {
            return;
        }
        let quiet_ms =
            remaining_ms.saturating_sub(max_head_start_ms(&meta, self.settings.early_refresh_beta));
        let now = Instant::now();
        let times = L1Times {
            deadline: now + life,
            quiet_until: now + life.min(Duration::from_millis(quiet_ms)),
        };
        let mut l1 = lock(&self.l1);
        if self.generation.load(Ordering::SeqCst) == generation {
            l1.insert(entry_key, group, value, meta, times);
        }
    }

    async fn l2_get<T: DeserializeOwned>(&self, entry_key: &str) -> Option<(T, Meta)> {
        let client = self.redis()?;
        match client.get::<Option<String>, _>(entry_key).await {
            Ok(None) => None,
            Ok(Some(text)) => match serde_json::from_str::<Stored<T>>(&text) {
                Ok(stored) => Some((stored.value, stored.meta)),
                Err(error) => {
                    self.counters.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%error, key = entry_key, "cached value does not decode; recomputing");
                    None
                }
            },
            Err(error) => {
                self.redis_failed(&error, entry_key);
                None
            }
        }
    }

    /// Writes a computed value to L2 and L1 (best effort), unless invalidated meanwhile.
    async fn store<T: Serialize + Clone + Send + Sync + 'static>(
        &self,
        group: &str,
        entry_key: &str,
        value: &T,
        meta: Meta,
        generation: u64,
    ) {
        if self.generation.load(Ordering::SeqCst) != generation {
            tracing::debug!(key = entry_key, "invalidated while computing; not caching");
            return;
        }
        if meta.ttl_ms == 0 {
            return;
        }
        if let Some(client) = self.redis() {
            let stored = Stored { value, meta };
            match serde_json::to_string(&stored) {
                Ok(text) => {
                    let keys = vec![entry_key.to_owned(), self.keys.cache_group_members(group)];
                    let args = vec![text, meta.ttl_ms.to_string()];
                    let written: std::result::Result<i64, _> =
                        self.write_entry.evalsha_with_reload(&client, keys, args).await;
                    if let Err(error) = written {
                        self.redis_failed(&error, entry_key);
                    }
                }
                Err(error) => {
                    self.counters.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%error, key = entry_key, "value does not serialise; not cached in redis");
                }
            }
        }
        self.l1_insert(group, entry_key, Arc::new(value.clone()), meta, generation);
    }

    /// A connected client of the cache pool, or `None` (counted, warned) when Redis is down, so
    /// requests skip L2 at once instead of queueing until the command timeout.
    fn redis(&self) -> Option<Client> {
        let pool = self.pool.pool();
        let client = pool.next_connected();
        if client.is_connected() {
            return Some(client.clone());
        }
        self.counters.errors.fetch_add(1, Ordering::Relaxed);
        if let Some(suppressed) = self.warn_limit.allow() {
            tracing::warn!(suppressed, "redis unreachable; cache reads go to L1 and origin");
        }
        None
    }

    fn redis_failed(&self, error: &fred::error::Error, entry_key: &str) {
        self.counters.errors.fetch_add(1, Ordering::Relaxed);
        if let Some(suppressed) = self.warn_limit.allow() {
            tracing::warn!(%error, key = entry_key, suppressed, "redis cache command failed; serving from L1 or origin");
        }
    }

    async fn broadcast(&self, message: &Invalidation) -> Result<()> {
        let receivers =
            pubsub::publish(&self.primary.pool(), &self.keys.invalidation_channel(), message)
                .await?;
        tracing::debug!(receivers, "invalidation published");
        Ok(())
    }

    fn apply(&self, message: Invalidation) {
        match message {
            Invalidation::Keys { keys } => self.drop_keys(&keys),
            Invalidation::Group { group } => self.drop_group(&group),
        }
    }

    fn drop_keys(&self, keys: &[String]) {
        let mut l1 = lock(&self.l1);
        self.generation.fetch_add(1, Ordering::SeqCst);
        for key in keys {
            l1.remove(key);
        }
    }

    fn drop_group(&self, group: &str) {
        let mut l1 = lock(&self.l1);
        self.generation.fetch_add(1, Ordering::SeqCst);
        l1.remove_group(group);
    }

    fn clear_l1(&self) -> usize {
        let mut l1 = lock(&self.l1);
        self.generation.fetch_add(1, Ordering::SeqCst);
        l1.clear()
    }

    /// XFetch: whether this read should refresh the entry early.
    fn refresh_due(&self, meta: &Meta) -> bool {
        // In (0, 1], so its logarithm is finite.
        let draw = 1.0 - rand::random::<f64>();
        xfetch_due(meta, self.settings.early_refresh_beta, now_ms(), draw)
    }

    /// Claims the one background refresh of `entry_key`; false when one already runs.
    fn start_refresh(&self, entry_key: &str) -> bool {
        lock(&self.refreshing).insert(entry_key.to_owned())
    }

    /// Makes this caller the leader of `entry_key`'s flight, or returns the running flight.
    fn join_or_lead(self: &Arc<Self>, entry_key: &str) -> std::result::Result<Flight, Waiting> {
        let mut flights = lock(&self.flights);
        if let Some((_, waiting)) = flights.get(entry_key) {
            return Err(waiting.clone());
        }
        let id = self.next_flight.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = watch::channel(None);
        flights.insert(entry_key.to_owned(), (id, receiver));
        Ok(Flight { inner: Arc::clone(self), entry_key: entry_key.to_owned(), id, sender })
    }
}

/// The leader's side of a single flight. Dropping it ends the flight; waiters that got no value
/// by then compute for themselves.
struct Flight {
    inner: Arc<Inner>,
    entry_key: String,
    id: u64,
    sender: watch::Sender<Option<Outcome>>,
}

impl Flight {
    fn complete(&self, value: Shared) {
        self.sender.send_replace(Some(Outcome::Value(value)));
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        let mut flights = lock(&self.inner.flights);
        if flights.get(&self.entry_key).is_some_and(|(id, _)| *id == self.id) {
            flights.remove(&self.entry_key);
        }
        drop(flights);
        if self.sender.borrow().is_none() {
            self.sender.send_replace(Some(Outcome::Failed));
        }
    }
}

/// One background early refresh; releases its claim on the key however it ends.
struct Refresh {
    inner: Arc<Inner>,
    group: String,
    entry_key: String,
}

impl Refresh {
    async fn run<T, E, F, Fut>(self, ttl: Duration, compute: F)
    where
        T: Serialize + Clone + Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let generation = self.inner.generation.load(Ordering::SeqCst);
        let started = Instant::now();
        match compute().await {
            Ok(value) => {
                let meta = Meta::now(ttl, started.elapsed());
                self.inner.store(&self.group, &self.entry_key, &value, meta, generation).await;
                tracing::debug!(key = %self.entry_key, "early refresh stored");
            }
            Err(_) => tracing::warn!(
                key = %self.entry_key,
                "early refresh failed; the cached value is served until it expires"
            ),
        }
    }
}

impl Drop for Refresh {
    fn drop(&mut self) {
        lock(&self.inner.refreshing).remove(&self.entry_key);
    }
}

impl Meta {
    fn now(ttl: Duration, compute_time: Duration) -> Meta {
        Meta {
            computed_at_ms: now_ms(),
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
            compute_ms: u64::try_from(compute_time.as_millis()).unwrap_or(u64::MAX),
        }
    }
}

/// The in-process tier: a map bounded by `max` entries, least recently used evicted first.
///
/// Recency is tracked lazily: a read moves an entry to the young end only once it has fallen into
/// the older half of the order (`max / 2` moves behind). A hot entry is then read with no
/// reordering and no allocation, and what is evicted is still among the least recently used half.
struct L1 {
    entries: HashMap<String, L1Entry>,
    /// Recency order: the smallest sequence number is the least recently used.
    order: BTreeMap<u64, String>,
    next_seq: u64,
    max: usize,
}

struct L1Entry {
    value: Shared,
    group: String,
    meta: Meta,
    deadline: Instant,
    /// Before this no early refresh can be drawn ([`max_head_start_ms`]), so a read needs no
    /// draw ([`Cache::fresh_l1_hit`]).
    quiet_until: Instant,
    seq: u64,
}

/// When an L1 copy expires, and until when it cannot be due for an early refresh.
#[derive(Debug, Clone, Copy)]
struct L1Times {
    deadline: Instant,
    quiet_until: Instant,
}

impl L1 {
    fn new(max: usize) -> Self {
        Self { entries: HashMap::new(), order: BTreeMap::new(), next_seq: 0, max }
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    fn get(&mut self, key: &str, now: Instant) -> Option<&L1Entry> {
        if self.entries.get(key)?.deadline <= now {
            self.remove(key);
            return None;
        }
        let entry = self.entries.get_mut(key)?;
        if self.next_seq - entry.seq > self.max as u64 / 2 {
            self.order.remove(&entry.seq);
            entry.seq = self.next_seq;
            self.next_seq += 1;
            self.order.insert(entry.seq, key.to_owned());
        }
        Some(entry)
    }

    fn insert(&mut self, key: &str, group: &str, value: Shared, meta: Meta, times: L1Times) {
        if self.max == 0 {
            return;
        }
        self.remove(key);
        while self.entries.len() >= self.max {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.entries.remove(&oldest);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.order.insert(seq, key.to_owned());
        let L1Times { deadline, quiet_until } = times;
        let entry = L1Entry { value, group: group.to_owned(), meta, deadline, quiet_until, seq };
        self.entries.insert(key.to_owned(), entry);
    }

    fn remove(&mut self, key: &str) {
        if let Some(entry) = self.entries.remove(key) {
            self.order.remove(&entry.seq);
        }
    }

    fn remove_group(&mut self, group: &str) {
        let order = &mut self.order;
        self.entries.retain(|_, entry| {
            let keep = entry.group != group;
            if !keep {
                order.remove(&entry.seq);
            }
            keep
        });
    }

    fn clear(&mut self) -> usize {
        let dropped = self.entries.len();
        self.entries.clear();
        self.order.clear();
        dropped
    }
}

/// Lets one warning through per [`WARN_EVERY`], counting the ones it held back.
#[derive(Default)]
struct WarnLimiter {
    last: Mutex<Option<Instant>>,
    suppressed: AtomicU64,
}

impl WarnLimiter {
    /// `Some(number held back since the last one)` when a warning may be logged now.
    fn allow(&self) -> Option<u64> {
        let mut last = lock(&self.last);
        let now = Instant::now();
        if last.is_some_and(|at| now.duration_since(at) < WARN_EVERY) {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *last = Some(now);
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

/// XFetch with a uniform `draw` in (0, 1]: refresh when `now - computeMs * beta * ln(draw)`
/// reaches the expiry. A zero or invalid `beta` refreshes only once expired.
fn xfetch_due(meta: &Meta, beta: f64, now_ms: u64, draw: f64) -> bool {
    if beta <= 0.0 || !beta.is_finite() {
        return now_ms >= meta.expires_at_ms();
    }
    let delta = meta.compute_ms.max(1) as f64;
    let head_start = -delta * beta * draw.ln();
    now_ms as f64 + head_start >= meta.expires_at_ms() as f64
}

/// The longest head start [`xfetch_due`] can draw for `meta`: the draw is `1 - rand` with `rand`
/// a multiple of 2^-53 in [0, 1), so `-ln(draw)` is at most 53 ln 2 ≈ 36.74.
fn max_head_start_ms(meta: &Meta, beta: f64) -> u64 {
    if beta <= 0.0 || !beta.is_finite() {
        return 0;
    }
    // Saturating float-to-int conversion: an absurd beta means "always possibly due".
    (meta.compute_ms.max(1) as f64 * beta * 37.0).ceil() as u64
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the data consistent, so a poisoned lock is used as is.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Milliseconds as a number, or a string with a unit: `ms`, `s`, `m`, `h`.
fn deserialize_duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Millis(u64),
        Text(String),
    }
    match Raw::deserialize(deserializer)? {
        Raw::Millis(ms) => Ok(Duration::from_millis(ms)),
        Raw::Text(text) => parse_duration(&text).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "`{text}` is not a duration (use e.g. 500ms, 30s, 5m, 1h)"
            ))
        }),
    }
}

fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let ms_per_unit = match unit.trim() {
        "" | "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return None,
    };
    number.checked_mul(ms_per_unit).map(Duration::from_millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> Meta {
        Meta { computed_at_ms: now_ms(), ttl_ms: 60_000, compute_ms: 1 }
    }

    fn until(deadline: Instant) -> L1Times {
        L1Times { deadline, quiet_until: deadline }
    }

    #[test]
    fn l1_evicts_the_least_recently_used_entry_at_its_bound() {
        let mut l1 = L1::new(2);
        let later = Instant::now() + Duration::from_secs(60);
        l1.insert("a", "g", Arc::new(1u32), meta(), until(later));
        l1.insert("b", "g", Arc::new(2u32), meta(), until(later));
        assert!(l1.get("a", Instant::now()).is_some());
        l1.insert("c", "g", Arc::new(3u32), meta(), until(later));
        assert_eq!(l1.len(), 2);
        assert!(l1.get("b", Instant::now()).is_none());
        assert!(l1.get("a", Instant::now()).is_some());
        assert!(l1.get("c", Instant::now()).is_some());
    }

    #[test]
    fn l1_reads_move_only_entries_that_fell_into_the_older_half() {
        let mut l1 = L1::new(10);
        let later = Instant::now() + Duration::from_secs(60);
        for key in ["a", "b", "c", "d", "e", "f", "g", "h"] {
            l1.insert(key, "g", Arc::new(1u32), meta(), until(later));
        }
        let seq = |l1: &L1, key: &str| l1.entries.get(key).map(|entry| entry.seq);
        assert!(l1.get("h", Instant::now()).is_some());
        assert_eq!(seq(&l1, "h"), Some(7), "a young entry keeps its place");
        assert!(l1.get("a", Instant::now()).is_some());
        assert_eq!(seq(&l1, "a"), Some(8), "an old entry moves to the young end");
        assert_eq!(l1.order.len(), l1.entries.len());
    }

    #[test]
    fn l1_drops_expired_entries_and_whole_groups() {
        let mut l1 = L1::new(10);
        let later = Instant::now() + Duration::from_secs(60);
        l1.insert("gone", "g1", Arc::new(1u32), meta(), until(Instant::now()));
        l1.insert("x", "g1", Arc::new(1u32), meta(), until(later));
        l1.insert("y", "g2", Arc::new(1u32), meta(), until(later));
        assert!(l1.get("gone", Instant::now()).is_none());
        l1.remove_group("g1");
        assert!(l1.get("x", Instant::now()).is_none());
        assert!(l1.get("y", Instant::now()).is_some());
        assert_eq!(l1.order.len(), l1.entries.len());
    }

    #[test]
    fn json_bytes_round_trip_through_the_l2_envelope_as_a_string() {
        let body = JsonBytes::to_json(&serde_json::json!([{"name": "Well \"A\""}]))
            .unwrap_or_else(|_| JsonBytes(Bytes::new()));
        let stored = Stored { value: body.clone(), meta: meta() };
        let text = serde_json::to_string(&stored).unwrap_or_default();
        let back: Option<Stored<JsonBytes>> = serde_json::from_str(&text).ok();
        assert_eq!(back.map(|s| s.value), Some(body.clone()));
        assert_eq!(body.as_slice(), br#"[{"name":"Well \"A\""}]"#);
    }

    #[test]
    fn settings_accept_durations_with_units_or_milliseconds() {
        let settings: CacheSettings =
            serde_json::from_str(r#"{"l1_ttl_max": "2m"}"#).unwrap_or_default();
        assert_eq!(settings.l1_ttl_max, Duration::from_secs(120));
        let settings: CacheSettings =
            serde_json::from_str(r#"{"l1_ttl_max": 1500}"#).unwrap_or_default();
        assert_eq!(settings.l1_ttl_max, Duration::from_millis(1500));
        assert!(serde_json::from_str::<CacheSettings>(r#"{"l1_ttl_max": "soon"}"#).is_err());
        assert_eq!(CacheSettings::default().l1_max_entries, 10_000);
    }

    #[test]
    fn no_draw_starts_a_refresh_before_the_longest_head_start() {
        let meta = Meta { computed_at_ms: 1_000_000, ttl_ms: 60_000, compute_ms: 100 };
        let head_start = max_head_start_ms(&meta, 1.0);
        let smallest_draw = 2f64.powi(-53);
        let earliest = meta.expires_at_ms() - head_start;
        assert!(!xfetch_due(&meta, 1.0, earliest - 1, smallest_draw));
        assert!(xfetch_due(&meta, 1.0, meta.expires_at_ms() - 3_600, smallest_draw));
        assert_eq!(max_head_start_ms(&meta, 0.0), 0);
    }

    #[test]
    fn xfetch_refreshes_only_near_expiry_and_earlier_for_slow_computes() {
        let meta = Meta { computed_at_ms: 1_000_000, ttl_ms: 60_000, compute_ms: 100 };
        let expiry = meta.expires_at_ms();
        // A typical draw (ln 0.5 = -0.69) starts ~69 ms before expiry for a 100 ms compute.
        assert!(!xfetch_due(&meta, 1.0, expiry - 1_000, 0.5));
        assert!(xfetch_due(&meta, 1.0, expiry - 50, 0.5));
        // An unlucky draw near 0 refreshes much earlier; beta scales the head start.
        assert!(xfetch_due(&meta, 1.0, expiry - 1_000, 1e-6));
        assert!(xfetch_due(&meta, 20.0, expiry - 1_000, 0.5));
        // beta 0: only once expired.
        assert!(!xfetch_due(&meta, 0.0, expiry - 1, 1e-9));
        assert!(xfetch_due(&meta, 0.0, expiry, 0.5));
    }
}

//! Two-tier cache-aside: an in-process L1 in front of Redis (L2), with request coalescing,
//! probabilistic early refresh, invalidation by key and by group, and invalidation broadcast so
//! every replica drops its L1 copies. This module owns the read path and the public API; the
//! tiers, the settings, the timing rules and the broadcast live in its submodules.
//!
//! How a read is served ([`Cache::get_or_compute`]):
//! 1. **L1**: a bounded in-process cache (moka; least recently used entry evicted first). An L1
//!    copy lives at most [`CacheSettings::l1_ttl_max`] and never past the L2 expiry, so a lost
//!    invalidation message cannot keep stale data around for long.
//! 2. **Coalescing**: concurrent misses of one key in one process share one load (moka's
//!    `try_get_with`); the others wait for its value. If the leader's `compute` fails, each
//!    waiter runs its own `compute` once, uncoalesced, and gets its own result or error: nobody
//!    waits for a second round, and error types need not be `Clone`. If the leader's future is
//!    dropped, a waiter takes the lead.
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

mod freshness;
mod invalidation;
mod l1;
mod l2;
mod settings;
mod status;

use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::task::JoinHandle;
use tracing::Instrument;

use self::freshness::Meta;
use self::invalidation::Broadcast;
use self::l1::L1;
use self::l2::L2;
use crate::client::{RedisClients, Role};
use crate::error::Result;
use crate::keys::Keys;
use crate::messages::Invalidation;
use crate::pubsub::PubSub;

pub use self::l2::JsonBytes;
pub use self::settings::CacheSettings;
pub use self::status::{CacheStats, CacheStatus, Cached, Tier};

/// The two-tier cache. Cheap to clone; clones share L1, loads in flight and counters.
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

struct Inner {
    keys: Keys,
    settings: CacheSettings,
    /// Shared with the invalidation listener, which holds it weakly.
    l1: Arc<L1>,
    l2: L2,
    broadcast: Broadcast,
    /// Entry keys with an early refresh running in this process.
    refreshing: Mutex<HashSet<String>>,
    counters: Counters,
}

#[derive(Default)]
struct Counters {
    l1_hits: AtomicU64,
    l2_hits: AtomicU64,
    misses: AtomicU64,
    stale: AtomicU64,
    coalesced: AtomicU64,
}

/// Why a load's value is not kept in L1. moka hands it to every caller that waited on the load.
enum NotKept {
    /// The leader's `compute` failed; its error went to the leader alone.
    Failed,
    /// The value is served but not kept: an invalidation was applied while loading, or the value
    /// has no L1 life left.
    Served(l1::Value),
}

impl Cache {
    /// A cache on the `cache()` pool of `clients`, under its key prefix.
    pub fn new(clients: &RedisClients, settings: CacheSettings) -> Cache {
        let keys = clients.keys().clone();
        Cache {
            inner: Arc::new(Inner {
                l1: Arc::new(L1::new(&settings)),
                l2: L2::new(clients.role(Role::Cache).clone(), keys.clone()),
                broadcast: Broadcast::new(
                    clients.role(Role::Primary).clone(),
                    keys.invalidation_channel(),
                ),
                keys,
                settings,
                refreshing: Mutex::new(HashSet::new()),
                counters: Counters::default(),
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
        self.inner.l1.get_now(&entry_key)?.value.downcast_ref::<T>().cloned()
    }

    /// `read` of the L1 copy of `key` in `group` when this replica holds one too far from its
    /// expiry for an early refresh to be drawn: no I/O, no allocation, no random draw (see "Hot
    /// reads" in the module doc). `read` borrows the shared copy: keep it to a clone or a copy.
    /// On `None` call [`Self::get_or_compute`], which decides everything else as it always does.
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
        let entry = ENTRY_KEY.with_borrow_mut(|entry_key| {
            entry_key.clear();
            inner.keys.write_cache_entry(entry_key, group, key);
            inner.l1.get_now(entry_key)
        })?;
        if Instant::now() >= entry.quiet_until {
            return None;
        }
        let value = entry.value.downcast_ref::<T>().map(read)?;
        inner.counters.l1_hits.fetch_add(1, Ordering::Relaxed);
        Some(Cached { value, status: CacheStatus::Hit, tier: Tier::L1 })
    }

    /// Returns the value of `key` in invalidation `group`, from L1, Redis, or `compute` (stored
    /// for `ttl`). See the module doc for coalescing, early refresh and Redis failures. Only
    /// `compute`'s error is ever returned.
    ///
    /// An L1 hit is answered before the miss path's future exists: that future (Redis, the load,
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
        if let Some(entry) = inner.l1.get_now(&entry_key)
            && let Some(value) = entry.value.downcast_ref::<T>()
        {
            let (value, meta) = (value.clone(), entry.meta);
            drop(entry);
            return Ok(self.serve(value, meta, Tier::L1, group, &entry_key, ttl, compute));
        }
        let span = tracing::info_span!(
            "cache.get_or_compute",
            group,
            key,
            status = tracing::field::Empty,
            tier = tracing::field::Empty
        );
        let result = Box::pin(self.lookup(group, entry_key, ttl, Box::pin(compute())))
            .instrument(span.clone())
            .await;
        if let Ok(cached) = &result {
            span.record("status", cached.status.as_header());
            span.record("tier", cached.tier.as_str());
        }
        result
    }

    /// The miss path: lead or wait for the load of `entry_key` (Redis, then `origin`). `origin` is
    /// `compute`'s future, not yet polled: the leader's load polls it; a caller that waited on
    /// another's load polls it only if that load failed.
    async fn lookup<T, E, Fut>(
        &self,
        group: &str,
        entry_key: String,
        ttl: Duration,
        mut origin: std::pin::Pin<Box<Fut>>,
    ) -> Result<Cached<T>, E>
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        E: Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        let inner = &self.inner;
        // Set by this caller's load if moka ran it: what it read or computed, and the generation
        // it started at.
        let mut led: Option<Result<(T, Meta, Tier, u64), E>> = None;
        let loaded = inner
            .l1
            .get_or_load(&entry_key, async {
                let generation = inner.l1.generation();
                let (value, meta, tier) = match inner.l2.get::<T>(&entry_key).await {
                    Some((value, meta)) => (value, meta, Tier::L2),
                    None => {
                        let started = Instant::now();
                        match origin.as_mut().await {
                            Ok(value) => {
                                let meta = Meta::now(ttl, started.elapsed());
                                inner.write_l2(group, &entry_key, &value, meta, generation).await;
                                (value, meta, Tier::Origin)
                            }
                            Err(error) => {
                                led = Some(Err(error));
                                return Err(NotKept::Failed);
                            }
                        }
                    }
                };
                let entry = inner.l1.entry(group, value.clone(), meta);
                led = Some(Ok((value, meta, tier, generation)));
                if inner.l1.unchanged_since(generation) && entry.lives() {
                    Ok(entry)
                } else {
                    Err(NotKept::Served(entry))
                }
            })
            .await;

        match led {
            Some(Err(error)) => return Err(error),
            Some(Ok((value, meta, tier, generation))) => {
                inner.l1.keep_since(&entry_key, generation).await;
                if tier == Tier::L2 {
                    return Ok(self.serve(value, meta, tier, group, &entry_key, ttl, || origin));
                }
                inner.counters.misses.fetch_add(1, Ordering::Relaxed);
                return Ok(Cached { value, status: CacheStatus::Miss, tier: Tier::Origin });
            }
            None => {}
        }

        inner.counters.misses.fetch_add(1, Ordering::Relaxed);
        let shared = match &loaded {
            Ok(entry) => Some(entry),
            Err(not_kept) => match &**not_kept {
                NotKept::Served(entry) => Some(entry),
                NotKept::Failed => None,
            },
        };
        if let Some(value) = shared.and_then(|entry| entry.value.downcast_ref::<T>()) {
            inner.counters.coalesced.fetch_add(1, Ordering::Relaxed);
            return Ok(Cached {
                value: value.clone(),
                status: CacheStatus::Miss,
                tier: Tier::Origin,
            });
        }
        // The leader failed (or another type sits under this key): compute once, uncoalesced.
        let generation = inner.l1.generation();
        let started = Instant::now();
        let value = origin.await?;
        let meta = Meta::now(ttl, started.elapsed());
        inner.store(group, &entry_key, &value, meta, generation).await;
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
        if meta.refresh_due(inner.settings.early_refresh_beta) && inner.start_refresh(entry_key) {
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
        inner.l1.drop_keys(std::slice::from_ref(&entry_key)).await;
        let deleted = inner.l2.delete_entry(group, &entry_key).await;
        let message = Invalidation::Keys { keys: vec![entry_key] };
        let published = inner.broadcast.publish(&message).await;
        deleted.and(published)
    }

    /// Deletes every entry of `group` from Redis and this L1, and tells the other replicas to
    /// drop theirs. Returns how many entries Redis held. Error handling as [`Cache::invalidate`].
    #[tracing::instrument(name = "cache.invalidate_group", skip(self))]
    pub async fn invalidate_group(&self, group: &str) -> Result<u64> {
        let inner = &self.inner;
        inner.l1.drop_group(group);
        let deleted = inner.l2.delete_group(group).await;
        let message = Invalidation::Group { group: group.to_owned() };
        let published = inner.broadcast.publish(&message).await;
        let deleted = deleted?;
        published?;
        Ok(deleted)
    }

    /// Subscribes to the invalidation channel and applies what other replicas publish to this L1
    /// until `pubsub` stops or the cache is dropped. Also clears L1 whenever the pub/sub
    /// connection comes back, since invalidations sent while it was down are lost. When Redis is
    /// reachable the subscription is confirmed before this returns.
    pub async fn listen_for_invalidations(&self, pubsub: &PubSub) -> Result<JoinHandle<()>> {
        self.inner.broadcast.listen(pubsub, &self.inner.l1).await
    }

    /// Current counters.
    pub fn stats(&self) -> CacheStats {
        let counters = &self.inner.counters;
        CacheStats {
            l1_hits: counters.l1_hits.load(Ordering::Relaxed),
            l2_hits: counters.l2_hits.load(Ordering::Relaxed),
            misses: counters.misses.load(Ordering::Relaxed),
            stale: counters.stale.load(Ordering::Relaxed),
            errors: self.inner.l2.errors(),
            coalesced: counters.coalesced.load(Ordering::Relaxed),
            l1_entries: self.inner.l1.len(),
        }
    }
}

impl Inner {
    /// Writes a computed value to Redis (best effort), unless invalidated since `generation`.
    async fn write_l2<T: Serialize>(
        &self,
        group: &str,
        entry_key: &str,
        value: &T,
        meta: Meta,
        generation: u64,
    ) {
        if !self.l1.unchanged_since(generation) {
            tracing::debug!(key = entry_key, "invalidated while computing; not caching");
            return;
        }
        if meta.ttl_ms > 0 {
            self.l2.write(group, entry_key, value, meta).await;
        }
    }

    /// Writes a computed value to Redis and L1 (best effort), unless invalidated meanwhile.
    async fn store<T: Serialize + Clone + Send + Sync + 'static>(
        &self,
        group: &str,
        entry_key: &str,
        value: &T,
        meta: Meta,
        generation: u64,
    ) {
        self.write_l2(group, entry_key, value, meta, generation).await;
        let entry = self.l1.entry(group, value.clone(), meta);
        self.l1.insert(entry_key, entry, generation).await;
    }

    /// Claims the one background refresh of `entry_key`; false when one already runs.
    fn start_refresh(&self, entry_key: &str) -> bool {
        lock(&self.refreshing).insert(entry_key.to_owned())
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
        let generation = self.inner.l1.generation();
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

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the data consistent, so a poisoned lock is used as is.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

//! The in-process tier: a bounded moka cache of type-erased copies (least recently used evicted
//! first), each living at most `l1_ttl_max` and never past its L2 expiry; dropping copies by key,
//! by group or all at once; and the generation that tells a load it crossed such a drop.

use std::any::Any;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::FutureExt;
use moka::Expiry;
use moka::future::Cache;
use moka::policy::EvictionPolicy;

use super::freshness::{Meta, max_head_start};
use super::settings::CacheSettings;

/// One L1 copy of a `T`; the cache holds it as `dyn Any` ([`Value`]).
pub(super) struct Entry<T: ?Sized> {
    pub group: String,
    pub meta: Meta,
    /// End of this copy's life: `l1_ttl_max` after it was made, or the L2 expiry if sooner.
    deadline: Instant,
    /// Before this no early refresh can be drawn, so a read needs no draw.
    pub quiet_until: Instant,
    pub value: T,
}

impl<T: ?Sized> Entry<T> {
    /// Whether the copy still has life left.
    pub fn lives(&self) -> bool {
        self.deadline > Instant::now()
    }
}

/// What L1 holds: cloning it (every read) is one reference-count increment.
pub(super) type Value = Arc<Entry<dyn Any + Send + Sync>>;

/// Expires each copy at its own deadline, however it got in.
struct AtDeadline;

impl Expiry<String, Value> for AtDeadline {
    fn expire_after_create(&self, _: &String, entry: &Value, at: Instant) -> Option<Duration> {
        Some(entry.deadline.saturating_duration_since(at))
    }

    fn expire_after_update(
        &self,
        _: &String,
        entry: &Value,
        at: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(entry.deadline.saturating_duration_since(at))
    }
}

/// The in-process tier of one cache. A bound of 0 keeps nothing, but loads still coalesce.
pub(super) struct L1 {
    entries: Cache<String, Value>,
    /// Bumped by every drop, before it is applied, so a value loaded across one is not kept.
    generation: AtomicU64,
    ttl_max: Duration,
    beta: f64,
}

impl L1 {
    pub fn new(settings: &CacheSettings) -> L1 {
        let entries = Cache::builder()
            .max_capacity(u64::try_from(settings.l1_max_entries).unwrap_or(u64::MAX))
            .eviction_policy(EvictionPolicy::lru())
            .expire_after(AtDeadline)
            .support_invalidation_closures()
            .build();
        L1 {
            entries,
            generation: AtomicU64::new(0),
            ttl_max: settings.l1_ttl_max,
            beta: settings.early_refresh_beta,
        }
    }

    /// A copy of `value` for `group` (one with no life left is handed to waiters, not kept).
    pub fn entry<T: Any + Send + Sync>(&self, group: &str, value: T, meta: Meta) -> Value {
        let remaining = meta.remaining();
        let life = self.ttl_max.min(remaining);
        let now = Instant::now();
        let quiet = life.min(remaining.saturating_sub(max_head_start(&meta, self.beta)));
        let entry = Entry {
            group: group.to_owned(),
            meta,
            deadline: now + life,
            quiet_until: now + quiet,
            value,
        };
        Arc::new(entry)
    }

    /// The copy of `key`, without waiting. moka's read is async only so that an eviction
    /// listener's future can run on it; this cache has none, so the read completes on its first
    /// poll (if it ever did not, the key reads as absent, which every caller handles).
    pub fn get_now(&self, key: &str) -> Option<Value> {
        self.entries.get(key).now_or_never().flatten()
    }

    /// The copy of `key`, or the one `load` makes. Concurrent calls for one key share one `load`
    /// (the others' are dropped unpolled): they all get its value or its error. `Ok` values are
    /// kept, `Err` ones are not.
    pub async fn get_or_load<E: Send + Sync + 'static>(
        &self,
        key: &str,
        load: impl Future<Output = Result<Value, E>>,
    ) -> Result<Value, Arc<E>> {
        self.entries.try_get_with_by_ref(key, load).await
    }

    /// The current generation, to pass to [`Self::insert`] or [`Self::keep_since`] after a load.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Whether nothing was dropped since `generation` was read.
    pub fn unchanged_since(&self, generation: u64) -> bool {
        self.generation() == generation
    }

    /// Keeps `entry` under `key` unless something was dropped since `generation` was read.
    pub async fn insert(&self, key: &str, entry: Value, generation: u64) {
        if self.unchanged_since(generation) && entry.lives() {
            self.entries.insert(key.to_owned(), entry).await;
            self.keep_since(key, generation).await;
        }
    }

    /// Drops the copy of `key` just put in if a drop started since `generation` was read: that
    /// drop may have run before the copy was in.
    pub async fn keep_since(&self, key: &str, generation: u64) {
        if !self.unchanged_since(generation) {
            self.entries.invalidate(key).await;
        }
    }

    pub async fn drop_keys(&self, keys: &[String]) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        for key in keys {
            self.entries.invalidate(key).await;
        }
    }

    pub fn drop_group(&self, group: &str) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        let group = group.to_owned();
        // Only fails when invalidation closures are off, and `new` turns them on.
        if let Err(error) = self.entries.invalidate_entries_if(move |_, entry| entry.group == group)
        {
            tracing::error!(%error, "cannot drop an L1 group; clearing L1");
            self.entries.invalidate_all();
        }
    }

    /// Drops every copy; returns how many there were.
    pub fn clear(&self) -> usize {
        self.generation.fetch_add(1, Ordering::SeqCst);
        let dropped = self.len();
        self.entries.invalidate_all();
        dropped
    }

    /// Live copies (a walk over the map: moka's own count lags until its housekeeping runs).
    pub fn len(&self) -> usize {
        self.entries.iter().count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l1(max: usize) -> L1 {
        L1::new(&CacheSettings { l1_max_entries: max, ..CacheSettings::default() })
    }

    fn meta(ttl: Duration) -> Meta {
        Meta::now(ttl, Duration::from_millis(1))
    }

    #[tokio::test]
    async fn a_copy_lives_at_most_l1_ttl_max_and_never_past_its_l2_expiry() {
        let l1 = l1(10);
        let short = l1.entry("g", 1u32, meta(Duration::from_millis(50)));
        let long = l1.entry("g", 2u32, meta(Duration::from_secs(3600)));
        let expired = l1.entry("g", 3u32, meta(Duration::ZERO));

        for (key, entry) in [("short", short), ("long", long)] {
            l1.insert(key, entry, l1.generation()).await;
        }
        tokio::time::sleep(Duration::from_millis(80)).await;

        assert!(!expired.lives());
        assert!(l1.get_now("short").is_none(), "gone at its L2 expiry");
        let long = l1.get_now("long").expect("still within l1_ttl_max");
        assert!(long.deadline <= Instant::now() + CacheSettings::default().l1_ttl_max);
        assert_eq!(long.value.downcast_ref::<u32>(), Some(&2));
    }

    #[tokio::test]
    async fn drops_by_group_and_by_key_and_a_stale_generation_is_not_kept() {
        let l1 = l1(10);
        let copy = |group: &str| l1.entry(group, 1u32, meta(Duration::from_secs(60)));
        for (key, group) in [("x", "g1"), ("y", "g2"), ("z", "g2")] {
            l1.insert(key, copy(group), l1.generation()).await;
        }
        let before = l1.generation();

        l1.drop_group("g1");
        l1.drop_keys(&["y".to_owned()]).await;
        l1.insert("late", copy("g3"), before).await;

        assert!(l1.get_now("x").is_none() && l1.get_now("y").is_none());
        assert!(l1.get_now("z").is_some());
        assert!(l1.get_now("late").is_none(), "loaded across a drop");
        assert_eq!(l1.len(), 1);
        assert_eq!(l1.clear(), 1);
        assert_eq!(l1.len(), 0);
    }

    #[tokio::test]
    async fn holds_at_most_its_bound() {
        let l1 = l1(2);
        for key in ["a", "b", "c", "d"] {
            let entry = l1.entry("g", 1u32, meta(Duration::from_secs(60)));
            l1.insert(key, entry, l1.generation()).await;
        }
        l1.entries.run_pending_tasks().await;
        assert!(l1.len() <= 2);
    }
}

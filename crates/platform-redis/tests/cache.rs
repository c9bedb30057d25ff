//! Two-tier cache-aside against a real Redis: coalescing, L1 and L2 hits, invalidation across
//! replicas (by key and by group), early refresh, failures of `compute`, and Redis going away and
//! coming back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use platform_redis::cache::{Cache, CacheSettings, CacheStatus, Cached, Tier};
use platform_redis::fred::prelude::*;
use platform_redis::pubsub::PubSub;
use platform_redis::{RedisClients, RedisSettings};
use platform_testing::{RedisServer, eventually, unique_prefix};
use serde::{Deserialize, Serialize};

const TTL: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Campaigns {
    names: Vec<String>,
    version: usize,
}

fn campaigns(version: usize) -> Campaigns {
    Campaigns { names: vec!["Clean water".into(), "School roof".into()], version }
}

/// One "process": its own connections, cache and invalidation listener.
struct Replica {
    clients: RedisClients,
    cache: Cache,
    pubsub: PubSub,
}

impl Replica {
    async fn start(server: &RedisServer, prefix: &str) -> Replica {
        Self::with_settings(server, prefix, CacheSettings::default()).await
    }

    async fn with_settings(server: &RedisServer, prefix: &str, settings: CacheSettings) -> Replica {
        let clients =
            RedisClients::connect(&RedisSettings::for_url(&server.url(), prefix)).await.unwrap();
        let cache = Cache::new(&clients, settings);
        let pubsub = PubSub::start(&clients).await.unwrap();
        cache.listen_for_invalidations(&pubsub).await.unwrap();
        Replica { clients, cache, pubsub }
    }

    /// Reads `key` with a compute that counts its runs and returns version `version`.
    async fn read(
        &self,
        group: &str,
        key: &str,
        version: usize,
        runs: &Arc<AtomicUsize>,
    ) -> Cached<Campaigns> {
        let runs = Arc::clone(runs);
        self.cache
            .get_or_compute(group, key, TTL, move || async move {
                runs.fetch_add(1, Ordering::SeqCst);
                Ok::<_, String>(campaigns(version))
            })
            .await
            .unwrap()
    }

    async fn stop(self) {
        self.pubsub.stop().await;
        self.clients.quit().await;
    }
}

fn counter() -> Arc<AtomicUsize> {
    Arc::new(AtomicUsize::new(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_misses_compute_once_and_the_next_read_is_an_l1_hit() {
    // Arrange
    let replica = Replica::start(RedisServer::shared(), &unique_prefix("cache-coalesce")).await;
    let runs = counter();

    // Act: 50 tasks miss the same key at once; compute is slow enough for them to overlap
    let readers: Vec<_> = (0..50)
        .map(|_| {
            let cache = replica.cache.clone();
            let runs = Arc::clone(&runs);
            tokio::spawn(async move {
                cache
                    .get_or_compute("org:1", "active", TTL, move || async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        Ok::<_, String>(campaigns(1))
                    })
                    .await
                    .unwrap()
            })
        })
        .collect();
    let results = futures::future::join_all(readers).await;
    let next = replica.read("org:1", "active", 2, &runs).await;

    // Assert
    assert_eq!(runs.load(Ordering::SeqCst), 1, "compute ran once for 50 concurrent misses");
    for result in results {
        assert_eq!(result.unwrap().value, campaigns(1));
    }
    assert_eq!((next.status, next.tier), (CacheStatus::Hit, Tier::L1));
    assert_eq!(next.status.as_header(), "HIT");
    assert_eq!(next.value, campaigns(1));
    let stats = replica.cache.stats();
    assert_eq!(stats.l1_entries, 1);
    assert!(stats.l1_hits >= 1);
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_process_reads_the_value_from_redis_as_an_l2_hit() {
    // Arrange
    let prefix = unique_prefix("cache-l2");
    let first = Replica::start(RedisServer::shared(), &prefix).await;
    let second = Replica::start(RedisServer::shared(), &prefix).await;
    let (first_runs, second_runs) = (counter(), counter());
    let computed = first.read("org:2", "active", 1, &first_runs).await;

    // Act
    let read = second.read("org:2", "active", 2, &second_runs).await;

    // Assert
    assert_eq!((computed.status, computed.tier), (CacheStatus::Miss, Tier::Origin));
    assert_eq!((read.status, read.tier), (CacheStatus::Hit, Tier::L2));
    assert_eq!(read.value, campaigns(1));
    assert_eq!(second_runs.load(Ordering::SeqCst), 0);
    assert_eq!(second.cache.stats().l2_hits, 1);
    // The entry is recorded in its group's member set, which lives at least as long.
    let members: Vec<String> = second
        .clients
        .primary()
        .smembers(second.clients.keys().cache_group_members("org:2"))
        .await
        .unwrap();
    assert_eq!(members, vec![second.clients.keys().cache_entry("org:2", "active")]);
    first.stop().await;
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_from_one_replica_empties_the_l1_of_another() {
    // Arrange: both replicas hold the value in L1
    let prefix = unique_prefix("cache-invalidate");
    let a = Replica::start(RedisServer::shared(), &prefix).await;
    let b = Replica::start(RedisServer::shared(), &prefix).await;
    let runs = counter();
    a.read("org:3", "active", 1, &runs).await;
    b.read("org:3", "active", 1, &runs).await;
    let cached = b.read("org:3", "active", 1, &runs).await;
    assert_eq!(cached.tier, Tier::L1);

    // Act
    a.cache.invalidate("org:3", "active").await.unwrap();
    eventually("b's L1 is empty", || async { b.cache.stats().l1_entries == 0 }).await;
    let after = b.read("org:3", "active", 2, &runs).await;

    // Assert
    assert_eq!(a.cache.stats().l1_entries, 0);
    assert_eq!((after.status, after.tier), (CacheStatus::Miss, Tier::Origin));
    assert_eq!(after.value, campaigns(2));
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_l1_hit_answers_from_l1_until_an_invalidation_and_never_computes() {
    // Arrange
    let prefix = unique_prefix("cache-fresh-hit");
    let a = Replica::start(RedisServer::shared(), &prefix).await;
    let b = Replica::start(RedisServer::shared(), &prefix).await;
    let runs = counter();
    let before = b.cache.fresh_l1_hit::<Campaigns, _>("org:4", "active", Clone::clone);
    b.read("org:4", "active", 1, &runs).await;
    let hits_before = b.cache.stats().l1_hits;

    // Act
    let hit = b.cache.fresh_l1_hit::<Campaigns, _>("org:4", "active", |c| c.version);
    let other_key = b.cache.fresh_l1_hit::<Campaigns, _>("org:4", "stats", Clone::clone);
    let other_type = b.cache.fresh_l1_hit::<String, _>("org:4", "active", Clone::clone);
    a.cache.invalidate_group("org:4").await.unwrap();
    eventually("b's L1 is empty", || async { b.cache.stats().l1_entries == 0 }).await;
    let after = b.cache.fresh_l1_hit::<Campaigns, _>("org:4", "active", Clone::clone);

    // Assert
    assert!(before.is_none(), "nothing is cached before the first read");
    let hit = hit.expect("the value read is a fresh L1 hit");
    assert_eq!((hit.value, hit.status, hit.tier), (1, CacheStatus::Hit, Tier::L1));
    assert_eq!(b.cache.stats().l1_hits, hits_before + 1);
    assert!(other_key.is_none() && other_type.is_none());
    assert!(after.is_none(), "an invalidated value is no fresh hit");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_invalidation_drops_every_entry_of_the_group_on_every_replica() {
    // Arrange
    let prefix = unique_prefix("cache-group");
    let a = Replica::start(RedisServer::shared(), &prefix).await;
    let b = Replica::start(RedisServer::shared(), &prefix).await;
    let runs = counter();
    for replica in [&a, &b] {
        replica.read("org:4", "active", 1, &runs).await;
        replica.read("org:4", "stats", 1, &runs).await;
        replica.read("org:5", "active", 1, &runs).await;
    }
    assert_eq!(b.cache.stats().l1_entries, 3);

    // Act
    let deleted = a.cache.invalidate_group("org:4").await.unwrap();
    eventually("b dropped org:4", || async { b.cache.stats().l1_entries == 1 }).await;
    let active = b.read("org:4", "active", 2, &runs).await;
    let stats = b.read("org:4", "stats", 2, &runs).await;
    let other = b.read("org:5", "active", 2, &runs).await;

    // Assert
    assert_eq!(deleted, 2);
    assert_eq!((active.tier, active.value.version), (Tier::Origin, 2));
    assert_eq!((stats.tier, stats.value.version), (Tier::Origin, 2));
    assert_eq!((other.tier, other.value.version), (Tier::L1, 1));
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_compute_returns_its_error_and_caches_nothing() {
    // Arrange
    let replica = Replica::start(RedisServer::shared(), &unique_prefix("cache-error")).await;
    let runs = counter();

    // Act
    let failed = replica
        .cache
        .get_or_compute("org:6", "active", TTL, || async {
            Err::<Campaigns, _>("database down".to_owned())
        })
        .await;
    let retried = replica.read("org:6", "active", 1, &runs).await;

    // Assert
    assert_eq!(failed.unwrap_err(), "database down");
    assert_eq!((retried.status, retried.tier), (CacheStatus::Miss, Tier::Origin));
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_compute_for_themselves_when_the_leader_fails() {
    // Arrange: the first compute to run (the leader's) fails, every later one succeeds
    let replica = Replica::start(RedisServer::shared(), &unique_prefix("cache-leader")).await;
    let runs = counter();

    // Act
    let readers: Vec<_> = (0..10)
        .map(|_| {
            let cache = replica.cache.clone();
            let runs = Arc::clone(&runs);
            tokio::spawn(async move {
                cache
                    .get_or_compute("org:7", "active", TTL, move || async move {
                        let run = runs.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        if run == 0 { Err("first run fails".to_owned()) } else { Ok(campaigns(1)) }
                    })
                    .await
            })
        })
        .collect();
    let results: Vec<_> =
        futures::future::join_all(readers).await.into_iter().map(Result::unwrap).collect();

    // Assert: only the leader sees the error; nobody is left without an answer
    assert_eq!(results.iter().filter(|r| r.is_err()).count(), 1);
    for result in results.into_iter().flatten() {
        assert_eq!(result.value, campaigns(1));
    }
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_near_expiry_is_served_stale_while_one_background_refresh_replaces_it() {
    // Arrange: a huge beta makes XFetch refresh on every hit
    let settings = CacheSettings { early_refresh_beta: 1e9, ..CacheSettings::default() };
    let replica =
        Replica::with_settings(RedisServer::shared(), &unique_prefix("cache-xfetch"), settings)
            .await;
    let version = counter();
    let read = || {
        let version = Arc::clone(&version);
        replica.cache.get_or_compute("org:8", "stats", TTL, move || async move {
            Ok::<_, String>(campaigns(version.fetch_add(1, Ordering::SeqCst) + 1))
        })
    };
    let first = read().await.unwrap();
    // A refresh may be drawn on any hit, so there is never a hit that skips the draw.
    let fresh = replica.cache.fresh_l1_hit::<Campaigns, _>("org:8", "stats", Clone::clone);

    // Act
    let stale = read().await.unwrap();

    // Assert: the old value is served at once, labelled STALE, and a refresh replaces it
    assert_eq!((first.status, first.value.version), (CacheStatus::Miss, 1));
    assert!(fresh.is_none());
    assert_eq!((stale.status, stale.tier, stale.value.version), (CacheStatus::Stale, Tier::L1, 1));
    assert_eq!(stale.status.as_header(), "STALE");
    eventually("the refreshed value is served", || async {
        read().await.unwrap().value.version >= 2
    })
    .await;
    assert!(replica.cache.stats().stale >= 1);
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_cache_always_computes() {
    // Arrange
    let settings = CacheSettings { enabled: false, ..CacheSettings::default() };
    let replica =
        Replica::with_settings(RedisServer::shared(), &unique_prefix("cache-off"), settings).await;
    let runs = counter();

    // Act
    let first = replica.read("org:9", "active", 1, &runs).await;
    let second = replica.read("org:9", "active", 1, &runs).await;

    // Assert
    assert_eq!((first.tier, second.tier), (Tier::Origin, Tier::Origin));
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_reads_compute_and_caching_resumes_after_restart() {
    // Arrange
    let server = RedisServer::start().unwrap();
    let prefix = unique_prefix("cache-down");
    let replica = Replica::start(&server, &prefix).await;
    let runs = counter();

    // Act: Redis dies
    server.stop();
    let while_down = replica.read("org:10", "active", 1, &runs).await;

    // Assert: the request is answered from origin; the cache error is counted, not returned
    assert_eq!((while_down.status, while_down.tier), (CacheStatus::Miss, Tier::Origin));
    assert_eq!(while_down.value, campaigns(1));
    assert!(replica.cache.stats().errors >= 1);

    // Act: Redis comes back (empty); the same Cache writes to it again
    server.restart().unwrap();
    eventually("the cache pool reconnected", || async {
        replica.clients.cache().clients().iter().all(|c| c.is_connected())
    })
    .await;
    let after = replica.read("org:10", "stats", 1, &runs).await;
    let other_process = Replica::start(&server, &prefix).await;
    let from_redis = other_process.read("org:10", "stats", 2, &runs).await;

    // Assert
    assert_eq!(after.tier, Tier::Origin);
    assert_eq!((from_redis.status, from_redis.tier), (CacheStatus::Hit, Tier::L2));
    assert_eq!(from_redis.value, campaigns(1));
    replica.stop().await;
    other_process.stop().await;
}

//! What the shared building blocks cost per call, next to one bare Redis round trip (`PING`)
//! measured in the same run against the same local redis-server.
//!
//! The claims checked here: a rate-limit decision is one round trip (ratio to `PING` close to 1),
//! a caller already blocked costs no round trip (far below `PING`), and a cache L1 hit costs no
//! round trip while an L2 hit costs one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use fred::prelude::*;
use platform_redis::cache::{Cache, CacheSettings};
use platform_redis::ratelimit::{PolicySettings, RateLimitSettings, RateLimiter};
use platform_redis::{RedisClients, RedisSettings};
use platform_testing::{RedisServer, unique_prefix};

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = RedisServer::start().unwrap();
    let clients = runtime
        .block_on(RedisClients::connect(&RedisSettings::for_url(
            &server.url(),
            &unique_prefix("bench"),
        )))
        .unwrap();

    let mut settings = RateLimitSettings::default();
    settings.policies.insert("open".into(), PolicySettings::new(1_000_000_000 / 1000, 3600));
    settings.policies.insert("closed".into(), PolicySettings::new(1, 3600));
    let limiter = RateLimiter::new(&clients, &settings).unwrap();
    runtime.block_on(async {
        limiter.check("closed", "blocked-caller").await.unwrap();
        limiter.check("closed", "blocked-caller").await.unwrap();
    });

    let l1 = Cache::new(&clients, CacheSettings::default());
    let l2_only =
        Cache::new(&clients, CacheSettings { l1_max_entries: 0, ..CacheSettings::default() });
    runtime.block_on(async {
        let value = vec!["campaign".to_owned(); 20];
        l1.get_or_compute("org:1", "active", Duration::from_secs(3600), move || async move {
            Ok::<_, std::convert::Infallible>(value)
        })
        .await
        .unwrap();
    });

    let mut group = c.benchmark_group("redis_paths");
    group.bench_function("ping_round_trip", |b| {
        b.to_async(&runtime).iter(|| async {
            let _: String = clients.primary().ping(None).await.unwrap();
        })
    });
    let mut n = 0u64;
    group.bench_function("rate_limit_decision", |b| {
        b.to_async(&runtime).iter(|| {
            n += 1;
            let identifier = format!("caller-{}", n % 1000);
            let limiter = limiter.clone();
            async move { limiter.check("open", &identifier).await.unwrap() }
        })
    });
    group.bench_function("rate_limit_blocked_caller", |b| {
        b.to_async(&runtime)
            .iter(|| async { limiter.check("closed", "blocked-caller").await.unwrap() })
    });
    for (name, cache) in [("cache_l1_hit", &l1), ("cache_l2_hit", &l2_only)] {
        group.bench_function(name, |b| {
            b.to_async(&runtime).iter(|| async {
                cache
                    .get_or_compute("org:1", "active", Duration::from_secs(3600), || async {
                        Ok::<Vec<String>, std::convert::Infallible>(Vec::new())
                    })
                    .await
                    .unwrap()
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);

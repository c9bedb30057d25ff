//! The refresh end to end: the real app on port 0, real Redis, the fake simPRO from platform-testing;
//! once against a real Redis Cluster.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{TestApp, redis_for};
use customer_count_refresher::store::count::{self as storage, CountRecord};
use platform_redis::keys::CUSTOMER_COUNT_LOCK;
use platform_redis::lock::Lock;
use platform_testing::{
    FakeSimpro, FakeSimproConfig, Fault, RedisCluster, RedisServer, unique_prefix,
};
use serde_json::Value;

fn fixture_scenario() -> (Vec<String>, u64, Value) {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/invoices_pages_scenario.assembled.json"
    ))
    .unwrap();
    let scenario: Value = serde_json::from_str(&text).unwrap();
    let pages = scenario["pages"].as_array().unwrap();
    let bodies = pages.iter().map(|p| p["body"].to_string()).collect();
    let total = pages[0]["headers"]["Result-Total"].as_str().unwrap().parse().unwrap();
    (bodies, total, scenario["expected"].clone())
}

#[tokio::test]
async fn the_two_page_fixture_scenario_counts_three_customers_over_five_invoices() {
    // Arrange
    let (bodies, total, expected) = fixture_scenario();
    let fake = FakeSimpro::start(FakeSimproConfig::pages(bodies, total)).unwrap();
    let redis = RedisServer::shared();
    let app = TestApp::spawn(
        &redis.url(),
        &unique_prefix("ccr-fixture"),
        &fake,
        &[("APP__SIMPRO__PAGE_SIZE", "3")],
    )
    .await;

    // Act
    let unauthorised =
        app.http.post(format!("{}/api/simpro/customers/refresh", app.base)).send().await.unwrap();
    let (status, refreshed) = app.refresh().await;
    let (_, read) = app.get("/api/simpro/customers").await;
    let (_, refresh_status) = app.get("/api/simpro/customers/refresh").await;

    // Assert
    assert_eq!(unauthorised.status().as_u16(), 401);
    assert_eq!(status, 200, "{refreshed}");
    assert_eq!(refreshed["success"], true);
    assert_eq!(refreshed["count"], expected["unique_customer_count"]);
    assert_eq!(refreshed["count"], 3);
    assert_eq!(refreshed["totalInvoices"], 5);
    assert_eq!(refreshed["storage"], "redis");
    assert_eq!(refreshed["ttl"], 21600);
    assert!(refreshed["nextRefresh"].is_string(), "{refreshed}");
    assert_eq!(read["count"], 3);
    assert_eq!(read["cached"], true);
    assert_eq!(read["source"], "redis");
    assert_eq!(read["stale"], false);
    assert!(read["lastUpdated"].is_i64(), "{read}");
    assert!(read["cacheAge"].is_i64(), "{read}");
    assert_eq!(refresh_status["count"], 3);
    assert_eq!(refresh_status["isRefreshing"], false);
    assert_eq!(refresh_status["storage"], "redis");
    assert!(refresh_status["ttl"].as_u64().unwrap() > 21_000, "{refresh_status}");
    assert_eq!(refresh_status["lastRefreshSucceeded"], true);
    assert_eq!(fake.complete_responses_for(1), 1);
    assert_eq!(fake.complete_responses_for(2), 1);
}

#[tokio::test]
async fn two_hundred_thousand_invoices_over_37123_customers_are_counted_exactly_despite_5xx_and_429()
 {
    // Arrange
    let fake = FakeSimpro::start(FakeSimproConfig::generated(200_000, 37_123)).unwrap();
    let pages = fake.pages_at(250);
    fake.inject(1, [Fault::Status(503)]);
    fake.inject(7, [Fault::Status(500), Fault::Status(502)]);
    fake.inject(100, [Fault::TooManyRequests { retry_after_secs: 1 }]);
    fake.inject(401, [Fault::DropConnection]);
    fake.inject(555, [Fault::Status(504), Fault::TooManyRequests { retry_after_secs: 0 }]);
    fake.inject(pages, [Fault::Status(503)]);
    let redis = RedisServer::shared();
    let app = TestApp::spawn(&redis.url(), &unique_prefix("ccr-200k"), &fake, &[]).await;

    // Act
    let (status, refreshed) = app.refresh().await;

    // Assert
    assert_eq!(status, 200, "{refreshed}");
    assert_eq!(refreshed["count"], 37_123);
    assert_eq!(refreshed["totalInvoices"], 200_000);
    assert_eq!(refreshed["pages"], pages);
    assert_eq!(refreshed["retries"], 8, "{refreshed}");
    assert_eq!(fake.pending_faults(), 0, "every injected fault was hit");
    let complete = fake.complete_responses();
    assert_eq!(complete.len() as u64, pages, "no page missed");
    assert!(complete.values().all(|n| *n == 1), "no page read twice: {complete:?}");
    assert!((1..=pages).all(|p| complete.contains_key(&p)));
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(
            "customer_count_invoices_walked_total{service=\"customer-count-refresher\"} 200000"
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn two_replicas_triggered_at_once_run_one_walk_and_the_other_gets_409() {
    // Arrange
    let fake = FakeSimpro::start(
        FakeSimproConfig::generated(5_000, 1_234).with_latency(Duration::from_millis(20)),
    )
    .unwrap();
    // Page 1 is slow, so the walk is surely still running when the second trigger lands.
    fake.inject(1, [Fault::Delay(Duration::from_millis(1_500))]);
    let redis = RedisServer::shared();
    let prefix = unique_prefix("ccr-replicas");
    let one = TestApp::spawn(&redis.url(), &prefix, &fake, &[]).await;
    let two = TestApp::spawn(&redis.url(), &prefix, &fake, &[]).await;

    // Act
    let (first, second) = tokio::join!(one.refresh(), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        two.refresh().await
    });

    // Assert
    let mut outcomes = [first, second];
    outcomes.sort_by_key(|(status, _)| *status);
    let [(ok_status, ok), (conflict_status, conflict)] = outcomes;
    assert_eq!(ok_status, 200, "{ok}");
    assert_eq!(ok["count"], 1_234);
    assert_eq!(conflict_status, 409, "{conflict}");
    assert_eq!(conflict["code"], "refresh_in_progress");
    assert!(conflict["error"].is_string());
    assert_eq!(fake.total_requests(), fake.pages_at(250), "exactly one walk reached simPRO");
    let (_, read_on_other) = two.get("/api/simpro/customers").await;
    assert_eq!(read_on_other["count"], 1_234, "both replicas serve the one stored result");
}

#[tokio::test]
async fn a_replica_killed_mid_walk_leaves_a_lock_that_expires_and_the_next_run_completes() {
    // Arrange: a replica took the lock and died (no release, no renewal) as a killed pod would.
    let fake = FakeSimpro::start(FakeSimproConfig::generated(3_000, 700)).unwrap();
    let redis = RedisServer::shared();
    let prefix = unique_prefix("ccr-killed");
    let clients = redis_for(&redis.url(), &prefix).await;
    let lock_ttl = Duration::from_millis(1_000);
    let dead = Lock::acquire(&clients, CUSTOMER_COUNT_LOCK, lock_ttl).await.unwrap().unwrap();
    let dead_fence = dead.fence();
    std::mem::forget(dead);
    let app =
        TestApp::spawn(&redis.url(), &prefix, &fake, &[("APP__REFRESH__LOCK_TTL_MS", "1000")])
            .await;

    // Act
    let (blocked_status, blocked) = app.refresh().await;
    let mut completed = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (status, body) = app.refresh().await;
        if status == 200 {
            completed = Some(body);
            break;
        }
        assert_eq!(status, 409, "{body}");
    }
    // The dead replica's late write (older fence) must not replace the newer count.
    let late = CountRecord {
        count: 1,
        total_invoices: 1,
        last_updated_ms: chrono::Utc::now().timestamp_millis(),
        duration_ms: 1,
        pages: 1,
        fence: dead_fence,
    };
    let late_written =
        storage::write_fenced(&clients, &late, Duration::from_secs(60), Duration::from_secs(60))
            .await
            .unwrap();
    let (_, read) = app.get("/api/simpro/customers").await;

    // Assert
    assert_eq!(blocked_status, 409, "{blocked}");
    assert_eq!(blocked["code"], "refresh_in_progress");
    let completed = completed.expect("the next run completes once the dead lock expired");
    assert_eq!(completed["count"], 700);
    assert!(!late_written, "the fenced write refuses the overtaken holder");
    assert_eq!(read["count"], 700);
}

#[tokio::test]
async fn in_redis_cluster_mode_a_refresh_is_stored_under_the_lock_fence_and_served() {
    // Arrange: the fenced write reads the lock's fence and writes the count keys in one script.
    let fake = FakeSimpro::start(FakeSimproConfig::generated(500, 123)).unwrap();
    let cluster = RedisCluster::shared();
    let app = TestApp::spawn(
        &cluster.url(),
        &unique_prefix("ccr-cluster"),
        &fake,
        &[("APP__REDIS__MODE", "cluster")],
    )
    .await;

    // Act
    let (status, refreshed) = app.refresh().await;
    let (_, read) = app.get("/api/simpro/customers").await;

    // Assert
    assert_eq!(status, 200, "{refreshed}");
    assert_eq!(
        (refreshed["count"].as_u64(), refreshed["storage"].as_str()),
        (Some(123), Some("redis"))
    );
    assert_eq!((read["count"].as_u64(), read["source"].as_str()), (Some(123), Some("redis")));
    assert_eq!(read["stale"], false);
}

#[tokio::test]
async fn when_simpro_is_down_the_last_count_is_still_served_cached_and_flagged_stale() {
    // Arrange
    let mut fake = FakeSimpro::start(FakeSimproConfig::generated(1_000, 321)).unwrap();
    let redis = RedisServer::shared();
    let app = TestApp::spawn(
        &redis.url(),
        &unique_prefix("ccr-upstream-down"),
        &fake,
        &[("APP__SIMPRO__MAX_ATTEMPTS", "2"), ("APP__SIMPRO__CONNECT_TIMEOUT_MS", "500")],
    )
    .await;
    let (status, _) = app.refresh().await;
    assert_eq!(status, 200);
    fake.stop();

    // Act
    let (failed_status, failed) = app.refresh().await;
    let (_, read) = app.get("/api/simpro/customers").await;
    let (_, refresh_status) = app.get("/api/simpro/customers/refresh").await;
    let metrics = app.metrics().await;

    // Assert
    assert_eq!(failed_status, 502, "{failed}");
    assert_eq!(failed["code"], "upstream_unavailable");
    assert_eq!(read["count"], 321);
    assert_eq!(read["cached"], true);
    assert_eq!(read["stale"], true);
    assert_eq!(read["source"], "redis");
    assert!(read["lastError"].is_string(), "{read}");
    assert_eq!(refresh_status["count"], 321);
    assert_eq!(refresh_status["stale"], true);
    assert_eq!(refresh_status["lastRefreshSucceeded"], false);
    assert_eq!(refresh_status["consecutiveFailures"], 1);
    assert!(refresh_status["lastError"].as_str().unwrap().contains("page 1"), "{refresh_status}");
    assert!(
        metrics.contains(
            "customer_count_last_refresh_success{service=\"customer-count-refresher\"} 0"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "customer_count_refresh_failures_total{service=\"customer-count-refresher\"} 1"
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn when_redis_is_down_reads_and_refreshes_fall_back_to_the_memory_copy() {
    // Arrange
    let fake = FakeSimpro::start(FakeSimproConfig::generated(2_000, 456)).unwrap();
    let redis = RedisServer::start().unwrap();
    let app = TestApp::spawn(&redis.url(), &unique_prefix("ccr-redis-down"), &fake, &[]).await;
    let (status, stored) = app.refresh().await;
    assert_eq!((status, stored["storage"].as_str()), (200, Some("redis")), "{stored}");
    redis.stop();

    // Act
    let (_, read_while_down) = app.get("/api/simpro/customers").await;
    let (refresh_status, refreshed_while_down) = app.refresh().await;
    let (_, status_while_down) = app.get("/api/simpro/customers/refresh").await;
    redis.restart().unwrap();
    let (_, read_after_restart) = app.get("/api/simpro/customers").await;
    let mut stored_again = Value::Null;
    for _ in 0..50 {
        let (status, body) = app.refresh().await;
        if status == 200 && body["storage"] == "redis" {
            stored_again = body;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, read_after) = app.get("/api/simpro/customers").await;

    // Assert
    assert_eq!(read_while_down["count"], 456);
    assert_eq!(read_while_down["source"], "memory");
    assert_eq!(read_while_down["cached"], true);
    assert_eq!(refresh_status, 200, "{refreshed_while_down}");
    assert_eq!(refreshed_while_down["storage"], "memory");
    assert_eq!(refreshed_while_down["count"], 456);
    assert_eq!(status_while_down["storage"], "memory");
    assert_eq!(
        read_after_restart["count"], 456,
        "an empty restarted redis does not lose the count"
    );
    assert_eq!(stored_again["storage"], "redis", "refreshes store in redis again once it is back");
    assert_eq!(read_after["source"], "redis");
    assert_eq!(read_after["count"], 456);
}

#[tokio::test]
async fn refresh_once_exits_zero_after_storing_and_two_while_another_refresh_holds_the_lock() {
    // Arrange
    let fake = FakeSimpro::start(FakeSimproConfig::generated(1_500, 99)).unwrap();
    let redis = RedisServer::shared();
    let prefix = unique_prefix("ccr-once");
    let clients = redis_for(&redis.url(), &prefix).await;
    let run = || {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_customer-count-refresher"))
            .arg("refresh-once")
            .env("APP__REDIS__URL", redis.url())
            .env("APP__REDIS__KEY_PREFIX", &prefix)
            .env("APP__SIMPRO__BASE_URL", fake.base_url())
            .env("APP__SIMPRO__TOKEN", fake.token().unwrap())
            .env("APP__TELEMETRY__FILTER", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
    };

    // Act
    let stored_exit = run().await.unwrap();
    let stored = storage::read(&clients).await.unwrap();
    let _held = Lock::acquire(&clients, CUSTOMER_COUNT_LOCK, Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    let skipped_exit = run().await.unwrap();

    // Assert
    assert_eq!(stored_exit.code(), Some(0));
    assert_eq!(stored.fresh.unwrap().0.count, 99);
    assert_eq!(skipped_exit.code(), Some(2));
}

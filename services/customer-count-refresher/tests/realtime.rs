//! The real-time mode end to end: intake into the live id set, SCARD reads, reconciliation by full walks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{TestApp, redis_for};
use platform_redis::fred::prelude::*;
use platform_testing::{FakeSimpro, FakeSimproConfig, Fault, RedisServer, unique_prefix};
use serde_json::{Value, json};

const REALTIME_ON: &[(&str, &str)] = &[("APP__REALTIME__ENABLED", "true")];
const INTAKE: &str = "/internal/simpro/invoices";

/// simPRO invoice rows for `customers` (invoice ids from `first_invoice`); `None` = no customer.
fn invoices(first_invoice: u64, customers: &[Option<u64>]) -> Value {
    let rows: Vec<Value> = customers
        .iter()
        .enumerate()
        .map(|(i, customer)| {
            json!({
                "ID": first_invoice + i as u64,
                "Type": "TaxInvoice",
                "Customer": customer.map(|id| json!({"ID": id, "CompanyName": "New Pty Ltd"})),
            })
        })
        .collect();
    json!({ "invoices": rows })
}

#[tokio::test]
async fn the_live_count_rises_on_intake_without_a_walk_and_duplicates_do_not_raise_it() {
    // Arrange
    let fake = FakeSimpro::start(FakeSimproConfig::generated(1_000, 300)).unwrap();
    let redis = RedisServer::shared();
    let app = TestApp::spawn(&redis.url(), &unique_prefix("ccr-live"), &fake, REALTIME_ON).await;
    let (status, seeded) = app.refresh().await;
    assert_eq!(status, 200, "{seeded}");
    let requests_after_walk = fake.total_requests();

    // Act
    let (new_status, new_ids) =
        app.post_json(INTAKE, &invoices(900_000, &[Some(301), Some(302), None])).await;
    let (_, read_after_new) = app.get("/api/simpro/customers").await;
    let (dup_status, duplicates) =
        app.post_json(INTAKE, &invoices(900_010, &[Some(301), Some(7), Some(302)])).await;
    let (_, read_after_duplicates) = app.get("/api/simpro/customers").await;
    let (_, refresh_status) = app.get("/api/simpro/customers/refresh").await;

    // Assert
    assert_eq!(seeded["count"], 300);
    assert_eq!(seeded["liveCount"], 300);
    assert_eq!(seeded["reconciled"], "exact");
    assert_eq!(new_status, 200, "{new_ids}");
    assert_eq!(new_ids["accepted"], 3);
    assert_eq!(new_ids["customerIds"], 2);
    assert_eq!(new_ids["added"], 2);
    assert_eq!(new_ids["liveCount"], 302);
    assert_eq!(new_ids["live"], true);
    assert_eq!(read_after_new["count"], 302);
    assert_eq!(read_after_new["countBasis"], "live");
    assert_eq!(read_after_new["walkedCount"], 300);
    assert_eq!(read_after_new["source"], "redis");
    assert_eq!(read_after_new["cached"], true);
    assert_eq!(dup_status, 200, "{duplicates}");
    assert_eq!(duplicates["added"], 0);
    assert_eq!(duplicates["liveCount"], 302);
    assert_eq!(read_after_duplicates["count"], 302);
    assert_eq!(refresh_status["liveCount"], 302);
    assert_eq!(refresh_status["count"], 300, "the status route keeps the walked count");
    assert_eq!(refresh_status["realtime"], true);
    assert_eq!(fake.total_requests(), requests_after_walk, "no walk reached simPRO");
    assert!(
        app.metrics().await.contains(
            "customer_count_intake_new_ids_total{service=\"customer-count-refresher\"} 2"
        ),
        "intake metrics"
    );
}

#[tokio::test]
async fn ids_received_before_the_first_walk_do_not_count_until_a_walk_has_reconciled_the_set() {
    // Arrange: 9 999 is no customer of any invoice simPRO lists (a deleted or bogus invoice).
    let fake = FakeSimpro::start(FakeSimproConfig::generated(600, 250)).unwrap();
    let redis = RedisServer::shared();
    let app =
        TestApp::spawn(&redis.url(), &unique_prefix("ccr-unseeded"), &fake, REALTIME_ON).await;

    // Act
    let (_, early) = app.post_json(INTAKE, &invoices(1, &[Some(9_999), Some(3)])).await;
    let (_, read_before_walk) = app.get("/api/simpro/customers").await;
    let (_, walked) = app.refresh().await;
    let (_, read_after_walk) = app.get("/api/simpro/customers").await;

    // Assert
    assert_eq!(early["liveCount"], 2);
    assert_eq!(early["live"], false, "not the count until a walk replaced the set");
    assert_eq!(read_before_walk["count"], Value::Null);
    assert_eq!(read_before_walk["cached"], false);
    assert_eq!(walked["count"], 250);
    assert_eq!(walked["liveCount"], 250, "the unknown id is gone, the known one counted once");
    assert_eq!(read_after_walk["count"], 250);
    assert_eq!(read_after_walk["countBasis"], "live");
}

#[tokio::test]
async fn a_full_walk_reconciles_the_live_set_dropping_vanished_ids_and_keeping_ids_received_during_it()
 {
    // Arrange
    let fake = FakeSimpro::start(FakeSimproConfig::generated(5_000, 1_000)).unwrap();
    let redis = RedisServer::shared();
    let prefix = unique_prefix("ccr-reconcile");
    let clients = redis_for(&redis.url(), &prefix).await;
    let app = TestApp::spawn(&redis.url(), &prefix, &fake, REALTIME_ON).await;
    let (status, seeded) = app.refresh().await;
    assert_eq!((status, seeded["liveCount"].as_u64()), (200, Some(1_000)), "{seeded}");
    // Reported, but simPRO does not list it (the invoice was deleted): the next walk drops it.
    let (_, vanished) = app.post_json(INTAKE, &invoices(800_000, &[Some(5_001)])).await;
    assert_eq!(vanished["liveCount"], 1_001);
    // Page 1 of the next walk is slow, so an intake lands while that walk runs.
    fake.inject(1, [Fault::Delay(Duration::from_millis(2_000))]);

    // Act
    let (walk, during) = tokio::join!(app.refresh(), async {
        for _ in 0..500 {
            if fake.requests_for(1) >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        app.post_json(INTAKE, &invoices(800_001, &[Some(5_002)])).await
    });
    let (_, read) = app.get("/api/simpro/customers").await;
    let live_key = clients.keys().customer_ids_live();
    let kept: bool = clients.primary().sismember(&live_key, 5_002).await.unwrap();
    let dropped: bool = clients.primary().sismember(&live_key, 5_001).await.unwrap();

    // Assert
    let (walk_status, walk) = walk;
    assert_eq!(during.0, 200, "{}", during.1);
    assert_eq!(during.1["liveCount"], 1_002, "received while the walk ran");
    assert_eq!(walk_status, 200, "{walk}");
    assert_eq!(walk["count"], 1_000, "the walk's own count");
    assert_eq!(walk["reconciled"], "exact");
    assert_eq!(walk["liveCount"], 1_001, "walk's ids plus the one received during it");
    assert!(kept, "an id received during the walk survives the swap");
    assert!(!dropped, "an id simPRO no longer lists is removed");
    assert_eq!(read["count"], 1_001);
    assert_eq!(read["walkedCount"], 1_000);
    assert_eq!(read["countBasis"], "live");
}

#[tokio::test]
async fn the_intake_answers_503_while_redis_is_down_and_acknowledges_nothing() {
    // Arrange
    let fake = FakeSimpro::start(FakeSimproConfig::generated(500, 120)).unwrap();
    let redis = RedisServer::start().unwrap();
    let app =
        TestApp::spawn(&redis.url(), &unique_prefix("ccr-intake-down"), &fake, REALTIME_ON).await;
    let (status, _) = app.refresh().await;
    assert_eq!(status, 200);
    redis.stop();

    // Act
    let (down_status, down) = app.post_json(INTAKE, &invoices(1, &[Some(121)])).await;
    let (_, read_while_down) = app.get("/api/simpro/customers").await;
    redis.restart().unwrap();
    let mut after = (0, Value::Null);
    for _ in 0..50 {
        after = app.post_json(INTAKE, &invoices(2, &[Some(122)])).await;
        if after.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Assert
    assert_eq!(down_status, 503, "{down}");
    assert_eq!(down["code"], "unavailable");
    assert!(down["error"].is_string());
    assert_eq!(read_while_down["count"], 120, "reads fall back to the walked count in memory");
    assert_eq!(read_while_down["countBasis"], "walk");
    assert_eq!(read_while_down["source"], "memory");
    assert_eq!(after.0, 200, "{}", after.1);
    assert_eq!(after.1["liveCount"], 1, "only the id stored after the restart is there");
    assert_eq!(after.1["live"], false, "an emptied redis needs a walk before the set counts");
}

#[tokio::test]
async fn the_intake_rejects_bad_requests_with_json_errors_and_is_off_by_default() {
    // Arrange
    let fake = FakeSimpro::start(FakeSimproConfig::generated(10, 5)).unwrap();
    let redis = RedisServer::shared();
    let on = TestApp::spawn(
        &redis.url(),
        &unique_prefix("ccr-intake-bad"),
        &fake,
        &[("APP__REALTIME__ENABLED", "true"), ("APP__REALTIME__MAX_BATCH", "2")],
    )
    .await;
    let off = TestApp::spawn(&redis.url(), &unique_prefix("ccr-intake-off"), &fake, &[]).await;

    // Act
    let unauthorised = on
        .http
        .post(format!("{}{INTAKE}", on.base))
        .json(&invoices(1, &[Some(1)]))
        .send()
        .await
        .unwrap();
    let (bad_id_status, bad_id) =
        on.post_json(INTAKE, &json!({"invoices": [{"ID": 1, "Customer": {"ID": "abc"}}]})).await;
    let (too_many_status, too_many) =
        on.post_json(INTAKE, &invoices(1, &[Some(1), Some(2), Some(3)])).await;
    let (disabled_status, disabled) = off.post_json(INTAKE, &invoices(1, &[Some(1)])).await;
    let (_, read_off) = off.get("/api/simpro/customers").await;

    // Assert
    assert_eq!(unauthorised.status().as_u16(), 401);
    assert_eq!(bad_id_status, 400, "{bad_id}");
    assert_eq!(bad_id["code"], "invalid_json");
    assert_eq!(too_many_status, 422, "{too_many}");
    assert_eq!(too_many["code"], "too_many_invoices");
    assert!(too_many["error"].as_str().unwrap().contains("at most 2"), "{too_many}");
    assert_eq!(disabled_status, 404, "{disabled}");
    assert_eq!(disabled["code"], "realtime_disabled");
    assert_eq!(read_off["countBasis"], Value::Null, "no count yet, no basis");
}

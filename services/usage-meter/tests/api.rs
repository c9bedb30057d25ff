//! The HTTP surface against the real service: event intake semantics, bills (a growth-tier example
//! to the cent, and reproduced from Postgres once Redis lost the month), quota checks, top
//! consumers, and 400s for bad input; the stream and HTTP intake against a real Redis Cluster.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use chrono::{Duration, Utc};
use common::{TestApp, event};
use platform_redis::StreamName;
use platform_redis::fred::prelude::*;
use platform_redis::messages::UsageEvent;
use platform_redis::streams::StreamProducer;
use platform_testing::RedisCluster;
use serde_json::json;

#[tokio::test]
async fn the_example_growth_bill_is_base_plus_overages_to_the_cent() {
    // Arrange: growth tier: 6 000 emails, 700 SMS, 250 000 API requests.
    let app = TestApp::spawn("usage-example-bill", &[]).await;
    let (status, body) = app
        .post(
            "/internal/usage/events",
            json!({ "events": [
                event("church-1", "email_sent", 6000),
                event("church-1", "sms_sent", 700),
                event("church-1", "api_request", 250_000),
            ]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    // Act
    let (status, bill) = app.get("/api/billing/church-1?tier=growth").await;

    // Assert: base $99; emails (6000-5000) x $0.01 = $10.00; SMS (700-500) x $0.05 = $10.00;
    // API (250000-200000) x $0.0001 = $5.00; total $124.00.
    assert_eq!(status, 200, "{bill}");
    assert_eq!(bill["tier"], "growth");
    assert_eq!(bill["basePriceCents"], 9900);
    let line = |metric: &str| {
        bill["lineItems"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["metric"] == metric)
            .unwrap()
            .clone()
    };
    let email = line("email_sent");
    assert_eq!((email["used"].as_i64(), email["included"].as_i64()), (Some(6000), Some(5000)));
    assert_eq!(
        (email["overage"].as_i64(), email["amountCents"].as_i64()),
        (Some(1000), Some(1000))
    );
    assert_eq!(email["unitRateMillicents"], 1000);
    let sms = line("sms_sent");
    assert_eq!((sms["overage"].as_i64(), sms["amountCents"].as_i64()), (Some(200), Some(1000)));
    let api = line("api_request");
    assert_eq!((api["overage"].as_i64(), api["amountCents"].as_i64()), (Some(50_000), Some(500)));
    assert_eq!(api["unitRateMillicents"], 10);
    assert_eq!(line("donation_processed")["unlimited"], true);
    assert_eq!(bill["overageCents"], 2500);
    assert_eq!(bill["totalCents"], 12_400);
    app.stop().await;
}

#[tokio::test]
async fn a_bill_for_a_month_whose_redis_keys_were_deleted_is_reproduced_from_postgres() {
    // Arrange: usage in a past month (30 days ago), on the org's configured tier.
    let app =
        TestApp::spawn("usage-durable", &[("APP__BILLING__ORG_TIERS__ACME", "starter")]).await;
    let at = (Utc::now() - Duration::days(30)).to_rfc3339();
    let month = (Utc::now() - Duration::days(30)).format("%Y-%m").to_string();
    let events: Vec<_> = [
        ("api_request", 61_234_i64),
        ("email_sent", 1500),
        ("sms_sent", 120),
        ("storage_used", 7_000_000_000),
    ]
    .iter()
    .map(|(m, v)| json!({ "orgId": "acme", "metric": m, "value": v, "occurredAt": at }))
    .chain([
        json!({ "orgId": "acme", "metric": "donation_processed", "value": 2500, "occurredAt": at }),
    ])
    .collect();
    let (status, body) = app.post("/internal/usage/events", json!({ "events": events })).await;
    assert_eq!(status, 200, "{body}");
    let (_, from_redis) = app.get(&format!("/api/billing/acme?month={month}")).await;
    let (status, flushed) = app.post("/internal/usage/flush", json!({})).await;
    assert_eq!(status, 200, "{flushed}");

    // Act: Redis loses the month.
    let keys = app.redis.keys().clone();
    let _: i64 = app.redis.primary().del(keys.usage_counters("acme", &month)).await.unwrap();
    let (status, from_postgres) = app.get(&format!("/api/billing/acme?month={month}")).await;
    let (_, usage) = app.get(&format!("/api/usage/acme?month={month}")).await;

    // Assert
    assert_eq!(status, 200, "{from_postgres}");
    assert_eq!(from_redis["source"], "redis");
    assert_eq!(from_postgres["source"], "postgres");
    let strip = |mut bill: serde_json::Value| {
        bill.as_object_mut().unwrap().remove("source");
        bill
    };
    assert_eq!(strip(from_postgres.clone()), strip(from_redis.clone()));
    assert_eq!(from_postgres["tier"], "starter");
    assert_eq!(from_postgres["usage"]["donation_volume_cents"], 2500);
    assert_eq!(usage["source"], "postgres");
    assert_eq!(usage["usage"]["api_request"], 61_234);
    app.stop().await;
}

#[tokio::test]
async fn http_events_are_all_or_nothing_and_idempotency_keys_count_once() {
    // Arrange
    let app = TestApp::spawn("usage-http-events", &[]).await;
    let bad = json!({ "events": [
        event("o1", "sms_sent", 1),
        event("o1", "beer_poured", 1),
        event("o1", "sms_sent", -3),
        { "metric": "sms_sent", "value": 1 },
        { "orgId": "o1", "metric": "sms_sent", "value": 1, "occurredAt": "last tuesday" },
    ]});
    let keyed = json!({ "orgId": "o1", "metric": "email_sent", "value": 4, "idempotencyKey": "mail-7",
                        "metadata": { "campaignId": "c9" } });

    // Act
    let (bad_status, bad_body) = app.post("/internal/usage/events", bad).await;
    let (_, after_bad) = app.get("/api/usage/o1").await;
    let (_, first) = app
        .post("/internal/usage/events", json!({ "events": [keyed.clone(), keyed.clone()] }))
        .await;
    let (_, second) = app.post("/internal/usage/events", json!({ "events": [keyed] })).await;
    let (_, usage) = app.get("/api/usage/o1").await;
    let (_, recent) = app.get("/api/usage/o1/events").await;
    let unauthorized = app
        .http
        .post(format!("{}/internal/usage/events", app.base))
        .json(&json!({ "events": [] }))
        .send()
        .await
        .unwrap();

    // Assert
    assert_eq!(bad_status, 400);
    assert_eq!(bad_body["code"], "invalid_events");
    let indices: Vec<i64> = bad_body["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["index"].as_i64().unwrap())
        .collect();
    assert_eq!(indices, vec![1, 2, 3, 4], "{bad_body}");
    assert!(bad_body["rejected"][0]["reason"].as_str().unwrap().contains("unknown metric"));
    assert!(bad_body["rejected"][2]["reason"].as_str().unwrap().contains("orgId"));
    assert_eq!(after_bad["usage"]["sms_sent"], 0, "nothing of a refused batch is stored");
    assert_eq!((first["counted"].as_i64(), first["duplicates"].as_i64()), (Some(1), Some(1)));
    assert_eq!((second["counted"].as_i64(), second["duplicates"].as_i64()), (Some(0), Some(1)));
    assert_eq!(usage["usage"]["email_sent"], 4);
    assert_eq!(recent["events"].as_array().unwrap().len(), 1);
    assert_eq!(recent["events"][0]["metadata"]["campaignId"], "c9");
    assert_eq!(unauthorized.status().as_u16(), 401);
    app.stop().await;
}

#[tokio::test]
async fn storage_used_keeps_the_value_with_the_latest_event_time_whatever_the_arrival_order() {
    // Arrange
    let app = TestApp::spawn("usage-gauge", &[]).await;
    let now = Utc::now();
    let at = |minutes: i64| (now - Duration::minutes(minutes)).to_rfc3339();
    let gauge = |value: i64, minutes: i64| json!({ "orgId": "g1", "metric": "storage_used", "value": value, "occurredAt": at(minutes) });

    // Act: newest first, then two older readings.
    app.post("/internal/usage/events", json!({ "events": [gauge(500, 1)] })).await;
    app.post("/internal/usage/events", json!({ "events": [gauge(900, 3), gauge(100, 2)] })).await;
    let (_, usage) = app.get("/api/usage/g1").await;

    // Assert
    assert_eq!(usage["usage"]["storage_used"], 500);
    app.stop().await;
}

#[tokio::test]
async fn quota_checks_answer_allowed_used_limit_and_remaining_from_the_tier() {
    // Arrange: default tier free allows 100 emails a month.
    let app = TestApp::spawn("usage-quota", &[]).await;
    app.post("/internal/usage/events", json!({ "events": [event("q1", "email_sent", 95)] })).await;

    // Act
    let (_, fits) = app
        .post(
            "/internal/quota/check",
            json!({ "orgId": "q1", "metric": "email_sent", "amount": 5 }),
        )
        .await;
    let (_, over) = app
        .post(
            "/internal/quota/check",
            json!({ "orgId": "q1", "metric": "email_sent", "amount": 6 }),
        )
        .await;
    let (_, unlimited) = app
        .post(
            "/internal/quota/check",
            json!({ "orgId": "q1", "metric": "donation_processed", "amount": 1000 }),
        )
        .await;
    let (bad_status, bad) = app
        .post("/internal/quota/check", json!({ "orgId": "q1", "metric": "nope", "amount": 1 }))
        .await;

    // Assert
    assert_eq!(
        fits,
        json!({ "allowed": true, "used": 95, "limit": 100, "remaining": 5, "orgId": "q1",
        "metric": "email_sent", "month": fits["month"], "tier": "free" })
    );
    assert_eq!(over["allowed"], false);
    assert_eq!(unlimited["allowed"], true);
    assert_eq!(unlimited["limit"], serde_json::Value::Null);
    assert_eq!((bad_status, bad["code"].as_str()), (400, Some("invalid_metric")));
    app.stop().await;
}

#[tokio::test]
async fn top_consumers_are_ranked_per_metric_and_month() {
    // Arrange
    let app = TestApp::spawn("usage-top", &[]).await;
    app.post("/internal/usage/events", json!({ "events": [
        event("small", "api_request", 5), event("big", "api_request", 50), event("mid", "api_request", 20),
        event("big", "sms_sent", 1),
    ]})).await;

    // Act
    let (status, top) = app.get("/api/usage/top?metric=api_request&limit=2").await;

    // Assert
    assert_eq!(status, 200, "{top}");
    assert_eq!(
        top["top"],
        json!([{ "orgId": "big", "value": 50 }, { "orgId": "mid", "value": 20 }])
    );
    app.stop().await;
}

#[tokio::test]
async fn bad_queries_answer_400_with_a_code() {
    // Arrange
    let app = TestApp::spawn("usage-bad-queries", &[]).await;

    // Act
    let cases = [
        ("/api/usage/o1?month=2026-13", "invalid_month"),
        ("/api/usage/o1?month=yesterday", "invalid_month"),
        ("/api/usage/a%7Bb%7D", "invalid_org"),
        ("/api/billing/o1?tier=platinum", "unknown_tier"),
        ("/api/usage/top?metric=beer", "invalid_metric"),
        ("/api/usage/top?limit=0", "invalid_query"),
    ];
    let mut answers = Vec::new();
    for (path, _) in cases {
        answers.push(app.get(path).await);
    }

    // Assert
    for ((path, code), (status, body)) in cases.iter().zip(answers) {
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["code"], *code, "{path}: {body}");
    }
    app.stop().await;
}

#[tokio::test]
async fn stopping_the_service_copies_the_counters_to_postgres() {
    // Arrange: no periodic flush during the test.
    let app =
        TestApp::spawn("usage-final-flush", &[("APP__USAGE__FLUSH_INTERVAL_MS", "3600000")]).await;
    app.post("/internal/usage/events", json!({ "events": [event("f1", "sms_sent", 42)] })).await;
    let database_url = app.database_url().to_owned();
    let month = Utc::now().format("%Y-%m").to_string();

    // Act
    app.stop().await;

    // Assert
    let pool = sqlx::PgPool::connect(&database_url).await.unwrap();
    let stored = usage_meter::db::usage(&pool, "f1", &month).await.unwrap();
    assert_eq!(stored.get("sms_sent"), Some(&42));
}

#[tokio::test]
async fn in_redis_cluster_mode_stream_and_http_events_are_counted_exactly_once() {
    // Arrange: a batch spans several organisations; the recording script and the XACK commit in
    // the stream slot.
    let cluster = RedisCluster::shared();
    let app = TestApp::spawn(
        "usage-cluster",
        &[("APP__REDIS__URL", &cluster.url()), ("APP__REDIS__MODE", "cluster")],
    )
    .await;
    let usage = |org: &str, key: &str| UsageEvent {
        org_id: org.to_owned(),
        metric: "sms_sent".to_owned(),
        value: 2,
        occurred_at: None,
        idempotency_key: Some(key.to_owned()),
        metadata: None,
    };
    let producer = StreamProducer::new(&app.redis, StreamName::UsageEvents, 10_000);
    let database_url = app.database_url().to_owned();
    let month = Utc::now().format("%Y-%m").to_string();

    // Act: k1 twice on the stream and, once those are counted, once more over HTTP.
    producer
        .append_all(&[usage("c1", "k1"), usage("c2", "k2"), usage("c1", "k1"), usage("c3", "k3")])
        .await
        .unwrap();
    let mut counted = false;
    for _ in 0..400 {
        let (_, c3) = app.get("/api/usage/c3").await;
        if c3["usage"]["sms_sent"] == 2 {
            counted = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (_, http) = app
        .post(
            "/internal/usage/events",
            json!({ "events": [
                { "orgId": "c1", "metric": "sms_sent", "value": 2, "idempotencyKey": "k1" },
                event("c2", "email_sent", 5),
            ]}),
        )
        .await;
    let (_, c1) = app.get("/api/usage/c1").await;
    let (_, c2) = app.get("/api/usage/c2").await;
    let (_, top) = app.get("/api/usage/top?metric=sms_sent&limit=3").await;
    app.stop().await;

    // Assert
    assert!(counted, "the stream's events were consumed");
    assert_eq!((http["counted"].as_i64(), http["duplicates"].as_i64()), (Some(1), Some(1)));
    assert_eq!(c1["usage"]["sms_sent"], 2, "{c1}");
    assert_eq!(
        (c2["usage"]["sms_sent"].as_i64(), c2["usage"]["email_sent"].as_i64()),
        (Some(2), Some(5))
    );
    assert_eq!(top["top"].as_array().map(Vec::len), Some(3), "{top}");
    let pool = sqlx::PgPool::connect(&database_url).await.unwrap();
    let stored = usage_meter::db::usage(&pool, "c2", &month).await.unwrap();
    assert_eq!(stored.get("email_sent"), Some(&5), "the flush to Postgres ran in cluster mode");
}

//! Redis data loss against the real service, each test on a Redis of its own: after a
//! `FLUSHALL` or a restart from an older snapshot the counters come back from Postgres at once,
//! new counts add on top, a redelivered donation (same idempotency key) is not counted twice,
//! and what is lost is exactly the counts recorded after the last flush. Plus the two guards
//! behind that: a copy read before a restore cannot commit after it, and a restore that lost its
//! claim stops with recording still fenced.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::Utc;
use common::{TestApp, event};
use platform_redis::StreamName;
use platform_redis::fred::prelude::*;
use platform_redis::fred::types::{ClusterHash, CustomCommand};
use platform_redis::messages::UsageEvent;
use platform_redis::streams::StreamProducer;
use platform_redis::{RedisClients, RedisSettings};
use platform_testing::{PostgresServer, RedisServer, holds_within, unique_prefix};
use serde_json::json;
use usage_meter::db::{self, MarkRow, UsageRow};
use usage_meter::domain::usage::{EventRules, MetricSet, Month, OrgId, validate};
use usage_meter::store::sync;
use usage_meter::store::{self, Fence, Retention};

/// No periodic tick: the test decides when the flusher runs (`POST /internal/usage/flush`).
const MANUAL: (&str, &str) = ("APP__USAGE__FLUSH_INTERVAL_MS", "3600000");

async fn spawn_on(redis: &RedisServer, test: &str, extra: &[(&str, &str)]) -> TestApp {
    let url = redis.url();
    let mut vars = vec![("APP__REDIS__URL", url.as_str())];
    vars.extend_from_slice(extra);
    TestApp::spawn(test, &vars).await
}

fn donation(org: &str, payment_intent: &str, cents: i64) -> serde_json::Value {
    json!({ "orgId": org, "metric": "donation_processed", "value": cents,
            "idempotencyKey": format!("donation:{payment_intent}") })
}

fn donation_event(org: &str, payment_intent: &str, cents: i64) -> UsageEvent {
    UsageEvent {
        org_id: org.to_owned(),
        metric: "donation_processed".to_owned(),
        value: cents,
        occurred_at: None,
        idempotency_key: Some(format!("donation:{payment_intent}")),
        metadata: None,
    }
}

async fn record(app: &TestApp, events: Vec<serde_json::Value>) -> serde_json::Value {
    let (status, body) = app.post("/internal/usage/events", json!({ "events": events })).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// [`record`] as a well-behaved producer does it: again after a 503 `restoring` (the restore
/// may still be replaying parked batches when the counters already read right).
async fn record_retrying(app: &TestApp, events: Vec<serde_json::Value>) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) =
            app.post("/internal/usage/events", json!({ "events": events.clone() })).await;
        if status == 200 {
            return body;
        }
        assert!(status == 503 && body["code"] == "restoring", "{status} {body}");
        assert!(Instant::now() < deadline, "still restoring");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One flusher tick now, retried while Redis is coming back.
async fn flush(app: &TestApp) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = app.post("/internal/usage/flush", json!({})).await;
        if status == 200 && body["waiting"] == false {
            return body;
        }
        assert!(Instant::now() < deadline, "flush kept failing: {status} {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn redis_counters(app: &TestApp, org: &str) -> BTreeMap<String, i64> {
    store::usage(&app.redis, &OrgId::parse(org).unwrap(), Month::current())
        .await
        .unwrap_or_default()
}

async fn postgres_counters(app: &TestApp, org: &str) -> BTreeMap<String, i64> {
    let pool = sqlx::PgPool::connect(app.database_url()).await.unwrap();
    usage_meter::db::usage(&pool, org, &Month::current().to_string()).await.unwrap()
}

async fn flushall(app: &TestApp) {
    let _: Value = app
        .redis
        .primary()
        .custom(
            CustomCommand::new_static("FLUSHALL", ClusterHash::Random, false),
            Vec::<String>::new(),
        )
        .await
        .unwrap();
}

fn counters(pairs: &[(&str, i64)]) -> BTreeMap<String, i64> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_flushall_counters_come_back_from_postgres_and_new_events_add_on_top_once() {
    // Arrange: the default 1 s flush interval; usage copied to Postgres by the periodic flush.
    let redis = RedisServer::start().unwrap();
    let app = spawn_on(&redis, "usage-restore-flushall", &[]).await;
    record(
        &app,
        vec![
            event("r1", "api_request", 7),
            event("r1", "email_sent", 3),
            donation("r1", "pi_1", 2500),
            json!({ "orgId": "r1", "metric": "storage_used", "value": 900 }),
        ],
    )
    .await;
    let flushed = counters(&[
        ("api_request", 7),
        ("email_sent", 3),
        ("donation_processed", 1),
        ("donation_volume_cents", 2500),
        ("storage_used", 900),
    ]);
    let copied = holds_within(Duration::from_secs(5), || async {
        postgres_counters(&app, "r1").await == flushed
    })
    .await;

    // Act: Redis loses everything.
    flushall(&app).await;
    let (_, first_read) = app.get("/api/usage/r1").await;
    let restored = holds_within(Duration::from_secs(5), || async {
        redis_counters(&app, "r1").await == flushed
    })
    .await;
    let (_, top) = app.get("/api/usage/top?metric=api_request").await;
    let after = record_retrying(
        &app,
        vec![
            event("r1", "api_request", 5),
            donation("r1", "pi_1", 2500),
            donation("r1", "pi_2", 700),
        ],
    )
    .await;
    let producer = StreamProducer::new(&app.redis, StreamName::UsageEvents, 10_000);
    producer.append_all(&[donation_event("r1", "pi_1", 2500)]).await.unwrap();
    producer.append_all(&[donation_event("r1", "pi_3", 100)]).await.unwrap();
    let expected = counters(&[
        ("api_request", 12),
        ("email_sent", 3),
        ("donation_processed", 3),
        ("donation_volume_cents", 3300),
        ("storage_used", 900),
    ]);
    let settled = holds_within(Duration::from_secs(10), || async {
        redis_counters(&app, "r1").await == expected
    })
    .await;
    let (_, usage) = app.get("/api/usage/r1").await;
    let last = redis_counters(&app, "r1").await;
    app.stop().await;

    // Assert
    assert!(copied, "the periodic flush copied the counters within its interval");
    assert_eq!(first_read["usage"]["api_request"], 7, "the next read has them: {first_read}");
    assert!(restored, "the Redis hash holds the restored counters");
    assert_eq!(top["top"][0], json!({ "orgId": "r1", "value": 7 }), "top set restored: {top}");
    assert_eq!((after["counted"].as_i64(), after["duplicates"].as_i64()), (Some(2), Some(1)));
    assert!(settled, "new events on top, pi_1 once: {last:?}");
    assert_eq!(usage["source"], "redis", "{usage}");
    assert_eq!(usage["usage"]["donation_volume_cents"], 3300, "{usage}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_events_arriving_before_the_restore_are_parked_then_counted_on_top_once() {
    // Arrange
    let redis = RedisServer::start().unwrap();
    let app = spawn_on(&redis, "usage-restore-parked", &[MANUAL]).await;
    record(&app, vec![event("p1", "sms_sent", 4), donation("p1", "pi_1", 1000)]).await;
    flush(&app).await;
    let keys = app.redis.keys().clone();

    // Act: Redis loses everything; events arrive on the stream (one a redelivery) and over HTTP
    // before the flusher's tick.
    flushall(&app).await;
    let producer = StreamProducer::new(&app.redis, StreamName::UsageEvents, 10_000);
    let sms = |value: i64| UsageEvent {
        org_id: "p1".to_owned(),
        metric: "sms_sent".to_owned(),
        value,
        occurred_at: None,
        idempotency_key: None,
        metadata: None,
    };
    producer
        .append_all(&[sms(2), donation_event("p1", "pi_1", 1000), donation_event("p1", "pi_2", 50)])
        .await
        .unwrap();
    let parked = holds_within(Duration::from_secs(10), || async {
        let n: i64 = app.redis.primary().llen(keys.usage_parked()).await.unwrap_or(0);
        n > 0
    })
    .await;
    let during = redis_counters(&app, "p1").await;
    let (http_status, http_body) =
        app.post("/internal/usage/events", json!({ "events": [event("p1", "sms_sent", 1)] })).await;
    let tick = flush(&app).await;
    let expected =
        counters(&[("sms_sent", 6), ("donation_processed", 2), ("donation_volume_cents", 1050)]);
    let settled = holds_within(Duration::from_secs(10), || async {
        redis_counters(&app, "p1").await == expected
    })
    .await;
    let last = redis_counters(&app, "p1").await;
    app.stop().await;

    // Assert
    assert!(parked, "the consumer parked its batch instead of counting on an empty Redis");
    assert!(during.is_empty(), "nothing counted before the restore: {during:?}");
    assert_eq!(http_status, 503, "{http_body}");
    assert_eq!(http_body["code"], "restoring");
    assert_eq!(tick["restored"]["rows"], 3, "{tick}");
    assert_eq!(tick["restored"]["marks"], 1, "{tick}");
    assert!(tick["restored"]["replayed"].as_i64() >= Some(1), "{tick}");
    assert!(settled, "restored + parked, pi_1 once: {last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_from_an_older_snapshot_only_the_counts_since_the_last_flush_are_lost() {
    // Arrange: A is flushed and in the snapshot; B is flushed after it; C is counted after the
    // last flush (the tail the loss takes).
    let redis = RedisServer::start().unwrap();
    let app = spawn_on(&redis, "usage-restore-snapshot", &[MANUAL]).await;
    record(&app, vec![event("s1", "api_request", 10), donation("s1", "pi_a", 1000)]).await;
    flush(&app).await;
    let _: Value = app
        .redis
        .primary()
        .custom(CustomCommand::new_static("SAVE", ClusterHash::Random, false), Vec::<String>::new())
        .await
        .unwrap();
    record(&app, vec![event("s1", "api_request", 20), donation("s1", "pi_b", 2000)]).await;
    flush(&app).await;
    record(&app, vec![event("s1", "api_request", 40), donation("s1", "pi_c", 4000)]).await;
    let before_loss = redis_counters(&app, "s1").await;

    // Act: Redis restarts from the snapshot (A only), the flusher ticks, then the Stripe stream
    // is re-driven (pi_a, pi_b, pi_c) and new usage arrives.
    let redis_thread = std::thread::spawn(move || {
        redis.restart().unwrap();
        redis
    });
    let redis = redis_thread.join().unwrap();
    let tick = flush(&app).await;
    let restored = redis_counters(&app, "s1").await;
    let redelivered = record(
        &app,
        vec![
            donation("s1", "pi_a", 1000),
            donation("s1", "pi_b", 2000),
            donation("s1", "pi_c", 4000),
        ],
    )
    .await;
    record(&app, vec![event("s1", "api_request", 5)]).await;
    let after = redis_counters(&app, "s1").await;
    flush(&app).await;
    let durable = postgres_counters(&app, "s1").await;
    app.stop().await;
    drop(redis);

    // Assert
    assert_eq!(
        before_loss,
        counters(&[
            ("api_request", 70),
            ("donation_processed", 3),
            ("donation_volume_cents", 7000)
        ])
    );
    assert!(tick["restored"].is_object(), "the older snapshot was detected: {tick}");
    assert_eq!(
        restored,
        counters(&[
            ("api_request", 30),
            ("donation_processed", 2),
            ("donation_volume_cents", 3000)
        ]),
        "exactly the flushed values: A and B back, C (after the last flush) lost"
    );
    assert_eq!(
        (redelivered["counted"].as_i64(), redelivered["duplicates"].as_i64()),
        (Some(1), Some(2)),
        "pi_a and pi_b were in the durable copy; pi_c was lost with the tail and counts again"
    );
    let expected = counters(&[
        ("api_request", 35),
        ("donation_processed", 3),
        ("donation_volume_cents", 7000),
    ]);
    assert_eq!(after, expected);
    assert_eq!(durable, expected, "Postgres follows");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_flusher_stopped_a_flushall_loses_exactly_the_counts_since_the_last_flush() {
    // Arrange: counts flushed, then more counts (HTTP and stream) the flusher never copies.
    let redis = RedisServer::start().unwrap();
    let app = spawn_on(&redis, "usage-restore-bound", &[MANUAL]).await;
    let month = Utc::now().format("%Y-%m").to_string();
    record(&app, vec![event("b1", "email_sent", 11), event("b2", "email_sent", 22)]).await;
    flush(&app).await;
    let flushed_b1 = postgres_counters(&app, "b1").await;
    let flushed_b2 = postgres_counters(&app, "b2").await;
    record(&app, vec![event("b1", "email_sent", 100), event("b3", "sms_sent", 1)]).await;
    let unflushed = redis_counters(&app, "b1").await;

    // Act
    flushall(&app).await;
    let tick = flush(&app).await;

    // Assert
    let (b1, b2, b3) = (
        redis_counters(&app, "b1").await,
        redis_counters(&app, "b2").await,
        redis_counters(&app, "b3").await,
    );
    let (_, top) = app.get(&format!("/api/usage/top?metric=email_sent&month={month}")).await;
    app.stop().await;
    assert_eq!(unflushed["email_sent"], 111);
    assert_eq!(tick["restored"]["rows"], 2, "{tick}");
    assert_eq!(b1, flushed_b1, "b1 is back at its flushed value; the 100 after it are lost");
    assert_eq!(b2, flushed_b2);
    assert!(b3.is_empty(), "b3 only had counts after the last flush: {b3:?}");
    assert_eq!(
        top["top"],
        json!([{ "orgId": "b2", "value": 22 }, { "orgId": "b1", "value": 11 }]),
        "{top}"
    );
    drop(redis);
}

#[tokio::test]
async fn a_copy_read_before_a_restore_cannot_commit_after_it() {
    // Arrange: a committed flush in epoch 0, and a copy read in epoch 0 that has not committed
    // when Redis loses data and a restore moves Postgres to epoch 1.
    let database = PostgresServer::shared().create_database().await.unwrap();
    let pool = sqlx::PgPool::connect(&database.url).await.unwrap();
    db::migrate(&pool).await.unwrap();
    let row = |value: i64| UsageRow {
        org: "f1".into(),
        month: "2026-11".into(),
        metric: "sms_sent".into(),
        value,
        at_ms: None,
    };
    assert!(db::flush(&pool, &[row(5)], &[], 1).await.unwrap());
    let late_mark = MarkRow { org: "f1".into(), key: "donation:pi_late".into() };

    // Act
    let observed = db::durable_seq(&pool).await.unwrap();
    let epoch = db::next_epoch(&pool, observed).await.unwrap();
    let again = db::next_epoch(&pool, observed).await.unwrap();
    let late = db::flush(&pool, &[row(9)], &[late_mark], 2).await.unwrap();
    let current = db::flush(&pool, &[row(7)], &[], epoch + 1).await.unwrap();

    // Assert
    assert_eq!((observed, epoch, again), (1, 1 << 32, 1 << 32), "one epoch per observed loss");
    assert!(!late, "the pre-loss copy is refused");
    assert!(current);
    let stored = db::usage(&pool, "f1", "2026-11").await.unwrap();
    assert_eq!(stored.get("sms_sent"), Some(&7));
    let marks = db::recent_marks(&pool, 3600, &(String::new(), String::new()), 10).await.unwrap();
    assert!(marks.is_empty(), "nor are its marks written: {marks:?}");
    assert_eq!(db::durable_seq(&pool).await.unwrap(), epoch + 1);
}

#[tokio::test]
async fn a_restore_whose_claim_vanished_stops_and_recording_stays_fenced() {
    // Arrange: recording open at sequence 0; Postgres has committed sequence 1 since (so this
    // Redis is behind); replica t1 claims the restore.
    let clients = RedisClients::connect(&RedisSettings::for_url(
        &RedisServer::shared().url(),
        &unique_prefix("usage-restore-claim"),
    ))
    .await
    .unwrap();
    sync::open_without_durable_copy(&clients).await.unwrap();
    let lease = Duration::from_secs(30);
    let begun = sync::begin_restore(&clients, 1, "t1", lease).await.unwrap();
    let other = sync::begin_restore(&clients, 1, "t2", lease).await.unwrap();

    // Act: the claim disappears (as with a second FLUSHALL during the restore).
    let _: i64 = clients.primary().del(clients.keys().usage_restore()).await.unwrap();
    let row = sync::RestoreRow {
        org: "c1".into(),
        month: Month::current().to_string(),
        field: "sms_sent".into(),
        value: 3,
        at_ms: None,
    };
    let restored = sync::restore_counters(&clients, "t1", lease, 3600, &[row]).await.unwrap();
    let opened = sync::open(&clients, "t1", 1 << 32).await.unwrap();
    let fence = Fence::default();
    fence.raise(1);
    let rules = EventRules {
        max_age: chrono::Duration::days(1),
        max_future_skew: chrono::Duration::minutes(5),
    };
    let raw = UsageEvent {
        org_id: "c1".into(),
        metric: "sms_sent".into(),
        value: 1,
        occurred_at: None,
        idempotency_key: None,
        metadata: None,
    };
    let event = validate(&raw, Utc::now(), &rules).unwrap();
    let retention = Retention {
        counter_ttl_secs: 3600,
        events_ttl_secs: 3600,
        events_per_org: 10,
        idempotency_window_secs: 3600,
        durable_marks: MetricSet::default(),
    };
    let recorded = store::record(&clients, &retention, &fence, &[&event]).await;

    // Assert
    assert_eq!((begun, other), (sync::Begin::Begun, sync::Begin::Busy));
    assert!(!restored, "a step without the claim changes nothing");
    assert_eq!(opened, sync::Open::Lost);
    assert!(matches!(recorded, Err(store::RecordError::Restoring)), "{recorded:?}");
    let counters = store::usage(&clients, &OrgId::parse("c1").unwrap(), Month::current()).await;
    assert!(counters.unwrap().is_empty());
}

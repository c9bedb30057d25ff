//! The webhook endpoint end to end against real Redis and Postgres: acceptance, dedup, crash
//! windows, dependency failures, admin routes, rate limit and metrics; once against a real Redis
//! Cluster.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use platform_redis::fred::prelude::*;
use platform_redis::{RedisClients, RedisSettings, StreamName};
use platform_service::settings::ServiceSettings;
use platform_testing::{PostgresServer, RedisCluster, RedisServer, unique_prefix};
use serde_json::Value;
use sqlx::PgPool;
use webhook_ingest::signature::sign_header;
use webhook_ingest::{Settings, build, ledger};

const SECRET: &str = "whsec_test_secret";
const ADMIN: &str = "test-admin-token";

struct TestApp {
    base: String,
    http: reqwest::Client,
    redis: RedisClients,
    db: PgPool,
    shutdown: platform_service::Shutdown,
}

impl TestApp {
    async fn start(redis_url: &str, extra: &[(&str, &str)]) -> Self {
        let prefix = unique_prefix("webhook");
        let database = PostgresServer::shared().create_database().await.unwrap();
        let mut vars = HashMap::from([
            ("APP__HTTP__PORT".to_owned(), "0".to_owned()),
            ("APP__HTTP__WORKERS".to_owned(), "2".to_owned()),
            ("APP__REDIS__URL".to_owned(), redis_url.to_owned()),
            ("APP__REDIS__KEY_PREFIX".to_owned(), prefix.clone()),
            ("APP__DATABASE__URL".to_owned(), database.url.clone()),
            ("APP__AUTH__ADMIN_TOKEN".to_owned(), ADMIN.to_owned()),
            ("APP__WEBHOOK__SECRETS".to_owned(), format!("whsec_old_one,{SECRET}")),
            ("APP__RATE_LIMIT__ENABLED".to_owned(), "false".to_owned()),
        ]);
        for (key, value) in extra {
            vars.insert((*key).to_owned(), (*value).to_owned());
        }
        let settings = Settings::from_overrides(vars).unwrap();
        let app = build(settings).await.unwrap();
        let base = format!("http://127.0.0.1:{}", app.port());
        let shutdown = app.context().shutdown.clone();
        tokio::spawn(app.run_until_stopped());
        let redis =
            RedisClients::connect(&RedisSettings::for_url(redis_url, &prefix)).await.unwrap();
        let db = PgPool::connect(&database.url).await.unwrap();
        Self { base, http: reqwest::Client::new(), redis, db, shutdown }
    }

    async fn shared(extra: &[(&str, &str)]) -> Self {
        Self::start(&RedisServer::shared().url(), extra).await
    }

    /// POSTs `body` with `header` as Stripe-Signature (none when `None`); status and JSON body.
    async fn deliver_with(&self, body: &str, header: Option<&str>) -> (u16, Value) {
        let mut request = self
            .http
            .post(format!("{}/api/webhooks/stripe", self.base))
            .header("content-type", "application/json")
            .body(body.to_owned());
        if let Some(header) = header {
            request = request.header("Stripe-Signature", header);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// Signs `body` as Stripe would now and delivers it.
    async fn deliver(&self, body: &str) -> (u16, Value) {
        self.deliver_with(body, Some(&sign_header(SECRET, now(), body.as_bytes()))).await
    }

    /// Every entry of the Stripe stream: (entry id, fields).
    async fn stream(&self) -> Vec<(String, HashMap<String, String>)> {
        let key = self.redis.keys().stream(StreamName::StripeEvents);
        self.redis.primary().xrange(key, "-", "+", None).await.unwrap()
    }

    /// The stream's `data` bodies.
    async fn stream_messages(&self) -> Vec<Value> {
        self.stream()
            .await
            .into_iter()
            .map(|(_, fields)| serde_json::from_str(&fields["data"]).unwrap())
            .collect()
    }

    async fn ledger_status(&self, event_id: &str) -> Option<(String, Option<String>)> {
        sqlx::query_as("SELECT status, stream_id FROM webhook_events WHERE event_id = $1")
            .bind(event_id)
            .fetch_optional(&self.db)
            .await
            .unwrap()
    }

    async fn admin(&self, method: reqwest::Method, path: &str) -> (u16, Value) {
        let response = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

fn fixture(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/stripe/events")
        .join(format!("{name}.json"));
    std::fs::read_to_string(path).unwrap()
}

/// The fixture with its shared anonymised id replaced by `id` (text replace: the bytes stay
/// Stripe's pretty-printed layout).
fn event_with_id(name: &str, id: &str) -> String {
    let body = fixture(name);
    assert!(body.contains("\"evt_000000000000000000000000\""));
    body.replacen("\"evt_000000000000000000000000\"", &format!("\"{id}\""), 1)
}

fn unique_event_id() -> String {
    format!("evt_test_{}", uuid::Uuid::new_v4().simple())
}

const FIXTURE_EVENTS: [&str; 9] = [
    "charge.refunded",
    "checkout.session.completed",
    "customer.subscription.created",
    "customer.subscription.deleted",
    "customer.subscription.updated",
    "invoice.paid",
    "invoice.payment_failed",
    "payment_intent.payment_failed",
    "payment_intent.succeeded",
];

#[tokio::test]
async fn each_fixture_event_resigned_with_its_own_id_is_accepted_and_streamed_once() {
    // Arrange
    let app = TestApp::shared(&[]).await;
    let events: Vec<(String, &str, String)> = FIXTURE_EVENTS
        .iter()
        .map(|name| {
            let id = unique_event_id();
            let body = event_with_id(name, &id);
            (id, *name, body)
        })
        .collect();

    // Act
    let mut first = Vec::new();
    let mut again = Vec::new();
    for (_, _, body) in &events {
        first.push(app.deliver(body).await);
    }
    for (_, _, body) in &events {
        again.push(app.deliver(body).await);
    }

    // Assert
    for ((status, body), (id, name, _)) in first.iter().zip(&events) {
        assert_eq!(*status, 200, "{name}: {body}");
        assert_eq!(body["duplicate"], false, "{name}");
        assert_eq!(body["status"], "streamed", "{name}");
        assert_eq!(body["eventId"], id.as_str());
    }
    for (status, body) in &again {
        assert_eq!(*status, 200);
        assert_eq!(body["received"], true);
        assert_eq!(body["duplicate"], true);
    }
    let stream = app.stream().await;
    assert_eq!(stream.len(), 9);
    for (id, name, body) in &events {
        let matching: Vec<_> = stream
            .iter()
            .filter(|(_, fields)| {
                serde_json::from_str::<Value>(&fields["data"]).unwrap()["eventId"] == id.as_str()
            })
            .collect();
        assert_eq!(matching.len(), 1, "{name} on the stream once");
        let (entry_id, fields) = matching[0];
        assert_eq!(fields["v"], "1");
        let message: Value = serde_json::from_str(&fields["data"]).unwrap();
        assert_eq!(message["eventType"], *name);
        assert_eq!(message["raw"], body.as_str(), "raw JSON byte for byte");
        assert_eq!(message["apiVersion"], "2020-08-27");
        let (status, stream_id) = app.ledger_status(id).await.unwrap();
        assert_eq!(status, "streamed");
        assert_eq!(stream_id.as_deref(), Some(entry_id.as_str()));
    }
    let customers: Vec<Value> =
        app.stream_messages().await.into_iter().map(|m| m["customerId"].clone()).collect();
    assert!(customers.iter().any(|c| c.as_str().is_some_and(|c| c.starts_with("cus_"))));
}

#[tokio::test]
async fn in_redis_cluster_mode_a_delivery_is_streamed_once_and_its_duplicate_acknowledged() {
    // Arrange: the dedup marker and the stream must share a slot for the append script.
    let cluster = RedisCluster::shared();
    let app = TestApp::start(&cluster.url(), &[("APP__REDIS__MODE", "cluster")]).await;
    let id = unique_event_id();
    let body = event_with_id("payment_intent.succeeded", &id);

    // Act
    let first = app.deliver(&body).await;
    let again = app.deliver(&body).await;

    // Assert
    assert_eq!(first.0, 200, "{}", first.1);
    assert_eq!(first.1["status"], "streamed");
    assert_eq!((again.0, &again.1["duplicate"]), (200, &Value::Bool(true)));
    let stream = app.stream().await;
    assert_eq!(stream.len(), 1);
    let (status, stream_id) = app.ledger_status(&id).await.unwrap();
    assert_eq!(status, "streamed");
    assert_eq!(stream_id.as_deref(), Some(stream[0].0.as_str()));
}

#[tokio::test]
async fn twenty_concurrent_deliveries_of_one_event_append_exactly_one_stream_entry() {
    // Arrange
    let app = TestApp::shared(&[]).await;
    let id = unique_event_id();
    let body = event_with_id("payment_intent.succeeded", &id);

    // Act
    let deliveries = (0..20).map(|_| app.deliver(&body));
    let answers = futures::future::join_all(deliveries).await;

    // Assert
    let fresh = answers.iter().filter(|(s, b)| *s == 200 && b["duplicate"] == false).count();
    let duplicates = answers.iter().filter(|(s, b)| *s == 200 && b["duplicate"] == true).count();
    let retry_later = answers.iter().filter(|(s, _)| *s == 409).count();
    assert_eq!(fresh, 1, "{answers:?}");
    assert_eq!(fresh + duplicates + retry_later, 20, "{answers:?}");
    assert_eq!(app.stream().await.len(), 1);
    let deliveries: i32 =
        sqlx::query_scalar("SELECT deliveries FROM webhook_events WHERE event_id = $1")
            .bind(&id)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert!(deliveries >= 1);
}

#[tokio::test]
async fn many_concurrent_distinct_deliveries_are_each_streamed_and_in_the_ledger_exactly_once() {
    // Arrange: small batches that linger, so deliveries share statements and commits.
    let app = TestApp::shared(&[
        ("APP__WEBHOOK__LEDGER_BATCH_MAX_ROWS", "8"),
        ("APP__WEBHOOK__LEDGER_BATCH_LINGER_MS", "5"),
    ])
    .await;
    let ids: Vec<String> = (0..60).map(|_| unique_event_id()).collect();
    let bodies: Vec<String> =
        ids.iter().map(|id| event_with_id("payment_intent.succeeded", id)).collect();

    // Act
    let answers = futures::future::join_all(bodies.iter().map(|body| app.deliver(body))).await;

    // Assert: every delivery learned its own entry, and stream and ledger agree on each.
    let stream: HashMap<String, String> = app
        .stream()
        .await
        .into_iter()
        .map(|(entry, fields)| {
            let data: Value = serde_json::from_str(&fields["data"]).unwrap();
            (data["eventId"].as_str().unwrap().to_owned(), entry)
        })
        .collect();
    assert_eq!(stream.len(), 60, "one entry per event");
    for (id, (status, answer)) in ids.iter().zip(&answers) {
        assert_eq!(*status, 200, "{answer}");
        assert_eq!(answer["duplicate"], false);
        assert_eq!(answer["eventId"], id.as_str());
        assert_eq!(answer["streamId"], stream[id].as_str());
        assert_eq!(
            app.ledger_status(id).await,
            Some(("streamed".to_owned(), Some(stream[id].clone())))
        );
    }
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_events WHERE deliveries = 1")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(rows, 60);
}

#[tokio::test]
async fn a_failed_ledger_batch_answers_503_to_all_its_deliveries_and_their_retries_append_nothing_new()
 {
    // Arrange: inserts fail (as if Postgres failed after the appends); one committer, batches
    // of up to 10 that wait for company.
    let app = TestApp::shared(&[
        ("APP__WEBHOOK__LEDGER_BATCH_MAX_ROWS", "10"),
        ("APP__WEBHOOK__LEDGER_BATCH_LINGER_MS", "50"),
        ("APP__WEBHOOK__LEDGER_BATCH_COMMITTERS", "1"),
    ])
    .await;
    for statement in [
        "CREATE FUNCTION reject_insert() RETURNS trigger LANGUAGE plpgsql AS
             $$ BEGIN RAISE EXCEPTION 'ledger unavailable'; END $$",
        "CREATE TRIGGER reject_insert BEFORE INSERT ON webhook_events
             FOR EACH ROW EXECUTE FUNCTION reject_insert()",
    ] {
        sqlx::query(statement).execute(&app.db).await.unwrap();
    }
    let ids: Vec<String> = (0..10).map(|_| unique_event_id()).collect();
    let bodies: Vec<String> = ids.iter().map(|id| event_with_id("invoice.paid", id)).collect();

    // Act
    let failed = futures::future::join_all(bodies.iter().map(|body| app.deliver(body))).await;
    let ledger_rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM webhook_events").fetch_one(&app.db).await.unwrap();
    sqlx::query("DROP TRIGGER reject_insert ON webhook_events").execute(&app.db).await.unwrap();
    let retried = futures::future::join_all(bodies.iter().map(|body| app.deliver(body))).await;

    // Assert: nobody was acknowledged before a committed row; the retries repair the ledger
    // from the done markers without appending again.
    for (status, answer) in &failed {
        assert_eq!(*status, 503, "{answer}");
        assert_eq!(answer["code"], "unavailable");
    }
    assert_eq!(ledger_rows, 0);
    for (status, answer) in &retried {
        assert_eq!(*status, 200, "{answer}");
        assert_eq!(answer["duplicate"], true);
    }
    assert_eq!(app.stream().await.len(), 10, "each appended exactly once");
    let streamed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM webhook_events WHERE status = 'streamed'")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(streamed, 10);
}

#[tokio::test]
async fn every_bad_delivery_gets_a_400_naming_the_failed_check_and_stores_nothing() {
    // Arrange
    let app = TestApp::shared(&[("APP__HTTP__BODY_LIMIT_BYTES", "65536")]).await;
    let body = event_with_id("payment_intent.succeeded", &unique_event_id());
    let signed = sign_header(SECRET, now(), body.as_bytes());
    let tampered = body.replacen("2000", "2001", 1);
    let stale = sign_header(SECRET, now() - 301, body.as_bytes());
    let wrong_secret = sign_header("whsec_someone_else", now(), body.as_bytes());
    let only_v0 = signed.replace("v1=", "v0=");
    let not_json = "this is not json";
    let not_an_event = r#"{"id":"cus_1","object":"customer"}"#;
    let huge = format!("{{\"pad\":\"{}\"}}", "x".repeat(70_000));

    // Act
    let cases = vec![
        ("tampered body", app.deliver_with(&tampered, Some(&signed)).await),
        ("no header", app.deliver_with(&body, None).await),
        ("garbage header", app.deliver_with(&body, Some("garbage")).await),
        ("only v0", app.deliver_with(&body, Some(&only_v0)).await),
        ("stale", app.deliver_with(&body, Some(&stale)).await),
        ("wrong secret", app.deliver_with(&body, Some(&wrong_secret)).await),
        ("not json", app.deliver(not_json).await),
        ("not an event", app.deliver(not_an_event).await),
        ("too large", app.deliver(&huge).await),
    ];

    // Assert
    let expected = [
        ("tampered body", 400, "signature_mismatch"),
        ("no header", 400, "missing_signature"),
        ("garbage header", 400, "malformed_signature"),
        ("only v0", 400, "malformed_signature"),
        ("stale", 400, "timestamp_out_of_tolerance"),
        ("wrong secret", 400, "signature_mismatch"),
        ("not json", 400, "invalid_json"),
        ("not an event", 400, "not_an_event"),
        ("too large", 413, "payload_too_large"),
    ];
    for ((name, (status, answer)), (_, want_status, want_code)) in cases.iter().zip(expected) {
        assert_eq!(*status, want_status, "{name}: {answer}");
        assert_eq!(answer["code"], want_code, "{name}: {answer}");
        assert!(answer["error"].as_str().is_some_and(|e| !e.is_empty()), "{name}");
    }
    assert!(app.stream().await.is_empty());
    let rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM webhook_events").fetch_one(&app.db).await.unwrap();
    assert_eq!(rows, 0);
    let metrics = app.http.get(format!("{}/metrics", app.base)).send().await.unwrap();
    let metrics = metrics.text().await.unwrap();
    assert!(metrics.contains("webhook_received_total{service=\"webhook-ingest\"} 9"), "{metrics}");
    assert!(metrics.contains("reason=\"signature_mismatch\"} 2"), "{metrics}");
    assert!(metrics.contains("reason=\"payload_too_large\"} 1"), "{metrics}");
}

#[tokio::test]
async fn an_event_type_outside_the_allow_list_is_recorded_as_ignored_and_not_streamed() {
    // Arrange
    let app = TestApp::shared(&[("APP__WEBHOOK__STREAM_EVENT_TYPES", "invoice.paid")]).await;
    let id = unique_event_id();
    let body = event_with_id("payment_intent.succeeded", &id);

    // Act
    let (status, answer) = app.deliver(&body).await;
    let (again_status, again) = app.deliver(&body).await;

    // Assert
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], "ignored");
    assert_eq!(again_status, 200);
    assert_eq!(again["duplicate"], true);
    assert!(app.stream().await.is_empty());
    assert_eq!(app.ledger_status(&id).await, Some(("ignored".to_owned(), None)));
}

#[tokio::test]
async fn a_row_left_received_by_an_earlier_version_is_streamed_once() {
    // Arrange: an earlier version stored the row first and died before the append (claim expired).
    let app = TestApp::shared(&[]).await;
    let id = unique_event_id();
    let body = event_with_id("invoice.paid", &id);
    let event = webhook_ingest::event::StripeEvent::parse(body.as_bytes()).unwrap();
    ledger::record(&app.db, &event, ledger::Status::Received, None, false).await.unwrap();

    // Act
    let (status, answer) = app.deliver(&body).await;
    let (_, again) = app.deliver(&body).await;

    // Assert
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["duplicate"], false);
    assert_eq!(again["duplicate"], true);
    let stream = app.stream().await;
    assert_eq!(stream.len(), 1);
    assert_eq!(
        app.ledger_status(&id).await,
        Some(("streamed".to_owned(), Some(stream[0].0.clone())))
    );
}

#[tokio::test]
async fn a_delivery_after_a_crash_between_append_and_ledger_insert_writes_the_row_without_appending()
 {
    // Arrange: the marker says done with the entry id and the ledger has no row, as if the process
    // (or Postgres) died right after the append script.
    let app = TestApp::shared(&[]).await;
    let id = unique_event_id();
    let body = event_with_id("invoice.paid", &id);
    let key = app.redis.keys().webhook_dedup(&id);
    let () = app.redis.primary().set(&key, "done:1-1", None, None, false).await.unwrap();

    // Act
    let (status, answer) = app.deliver(&body).await;

    // Assert
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["duplicate"], true);
    assert!(app.stream().await.is_empty(), "nothing appended a second time");
    assert_eq!(app.ledger_status(&id).await, Some(("streamed".to_owned(), Some("1-1".to_owned()))));
}

#[tokio::test]
async fn a_row_left_received_with_a_done_marker_is_repaired_without_appending() {
    // Arrange: an earlier version inserted the row, appended, and died before updating it.
    let app = TestApp::shared(&[]).await;
    let id = unique_event_id();
    let body = event_with_id("invoice.paid", &id);
    let event = webhook_ingest::event::StripeEvent::parse(body.as_bytes()).unwrap();
    ledger::record(&app.db, &event, ledger::Status::Received, None, false).await.unwrap();
    let key = app.redis.keys().webhook_dedup(&id);
    let () = app.redis.primary().set(&key, "done:1-1", None, None, false).await.unwrap();

    // Act
    let (status, answer) = app.deliver(&body).await;

    // Assert
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["duplicate"], true);
    assert!(app.stream().await.is_empty(), "nothing appended a second time");
    assert_eq!(app.ledger_status(&id).await, Some(("streamed".to_owned(), Some("1-1".to_owned()))));
}

#[tokio::test]
async fn a_claim_left_by_a_crashed_delivery_answers_409_until_it_expires_then_streams_once() {
    // Arrange
    let app = TestApp::shared(&[("APP__WEBHOOK__IN_FLIGHT_WAIT_MS", "50")]).await;
    let id = unique_event_id();
    let body = event_with_id("invoice.paid", &id);
    let key = app.redis.keys().webhook_dedup(&id);
    let () = app
        .redis
        .primary()
        .set(&key, "processing:crashed", Some(Expiration::PX(1_500)), None, false)
        .await
        .unwrap();

    // Act
    let (blocked, blocked_answer) = app.deliver(&body).await;
    let mut accepted = None;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (status, answer) = app.deliver(&body).await;
        if status == 200 {
            accepted = Some(answer);
            break;
        }
    }

    // Assert
    assert_eq!(blocked, 409, "{blocked_answer}");
    assert_eq!(blocked_answer["code"], "delivery_in_progress");
    assert_eq!(accepted.unwrap()["duplicate"], false);
    assert_eq!(app.stream().await.len(), 1);
}

#[tokio::test]
async fn a_failed_ledger_write_answers_503_releases_the_claim_and_the_retry_streams_once() {
    // Arrange: the ledger table is renamed away, so the insert fails as if Postgres were down.
    let app = TestApp::shared(&[]).await;
    let id = unique_event_id();
    let body = event_with_id("invoice.paid", &id);
    sqlx::query("ALTER TABLE webhook_events RENAME TO webhook_events_away")
        .execute(&app.db)
        .await
        .unwrap();

    // Act
    let (failed, failed_answer) = app.deliver(&body).await;
    let marker: Option<String> =
        app.redis.primary().get(app.redis.keys().webhook_dedup(&id)).await.unwrap();
    sqlx::query("ALTER TABLE webhook_events_away RENAME TO webhook_events")
        .execute(&app.db)
        .await
        .unwrap();
    let (retried, retried_answer) = app.deliver(&body).await;

    // Assert
    assert_eq!(failed, 503, "{failed_answer}");
    assert_eq!(failed_answer["code"], "unavailable");
    assert_eq!(marker, None, "claim released, nothing marked done");
    assert_eq!(retried, 200, "{retried_answer}");
    assert_eq!(retried_answer["duplicate"], false);
    assert_eq!(app.stream().await.len(), 1);
}

#[tokio::test]
async fn a_ledger_insert_failing_after_the_append_answers_503_and_the_retry_records_it_without_appending_again()
 {
    // Arrange: a trigger rejects inserts into this test's ledger, as if Postgres failed between
    // the append and the insert (the ledger check before the append still works).
    let app = TestApp::shared(&[]).await;
    let id = unique_event_id();
    let body = event_with_id("invoice.paid", &id);
    for statement in [
        "CREATE FUNCTION reject_insert() RETURNS trigger LANGUAGE plpgsql AS
             $$ BEGIN RAISE EXCEPTION 'ledger unavailable'; END $$",
        "CREATE TRIGGER reject_insert BEFORE INSERT ON webhook_events
             FOR EACH ROW EXECUTE FUNCTION reject_insert()",
    ] {
        sqlx::query(statement).execute(&app.db).await.unwrap();
    }

    // Act
    let (failed, failed_answer) = app.deliver(&body).await;
    sqlx::query("DROP TRIGGER reject_insert ON webhook_events").execute(&app.db).await.unwrap();
    let (retried, retried_answer) = app.deliver(&body).await;

    // Assert
    assert_eq!(failed, 503, "{failed_answer}");
    assert_eq!(retried, 200, "{retried_answer}");
    assert_eq!(retried_answer["duplicate"], true, "the entry was already on the stream");
    let stream = app.stream().await;
    assert_eq!(stream.len(), 1, "appended exactly once");
    assert_eq!(
        app.ledger_status(&id).await,
        Some(("streamed".to_owned(), Some(stream[0].0.clone())))
    );
}

#[tokio::test]
async fn with_redis_stopped_a_delivery_gets_503_and_once_it_restarts_the_retry_is_accepted_once() {
    // Arrange
    let redis = RedisServer::start().unwrap();
    let app = TestApp::start(&redis.url(), &[]).await;
    let id = unique_event_id();
    let body = event_with_id("payment_intent.succeeded", &id);
    redis.stop();

    // Act
    let (down, down_answer) = app.deliver(&body).await;
    let row_while_down = app.ledger_status(&id).await;
    redis.restart().unwrap();
    let mut ready = false;
    for _ in 0..100 {
        let response = app.http.get(format!("{}/readyz", app.base)).send().await.unwrap();
        if response.status().as_u16() == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (up, up_answer) = app.deliver(&body).await;
    let (again, again_answer) = app.deliver(&body).await;

    // Assert
    assert_eq!(down, 503, "{down_answer}");
    assert_eq!(down_answer["code"], "unavailable");
    assert!(
        row_while_down.as_ref().is_none_or(|(status, _)| status != "streamed"),
        "{row_while_down:?}"
    );
    assert!(ready, "service reconnected to redis");
    assert_eq!(up, 200, "{up_answer}");
    assert_eq!(up_answer["duplicate"], false);
    assert_eq!(again, 200);
    assert_eq!(again_answer["duplicate"], true);
    assert_eq!(app.stream().await.len(), 1);
    assert_eq!(app.ledger_status(&id).await.unwrap().0, "streamed");
}

#[tokio::test]
async fn admins_list_recent_events_by_type_and_replay_one_to_the_stream() {
    // Arrange
    let app = TestApp::shared(&[]).await;
    let paid = unique_event_id();
    let refunded = unique_event_id();
    app.deliver(&event_with_id("invoice.paid", &paid)).await;
    app.deliver(&event_with_id("charge.refunded", &refunded)).await;

    // Act
    let unauthorised =
        app.http.get(format!("{}/api/admin/webhooks/events", app.base)).send().await.unwrap();
    let (all_status, all) = app.admin(reqwest::Method::GET, "/api/admin/webhooks/events").await;
    let (_, filtered) = app
        .admin(reqwest::Method::GET, "/api/admin/webhooks/events?type=charge.refunded&limit=10")
        .await;
    let (bad_limit, _) =
        app.admin(reqwest::Method::GET, "/api/admin/webhooks/events?limit=0").await;
    let (replay_status, replayed) = app
        .admin(reqwest::Method::POST, &format!("/api/admin/webhooks/events/{paid}/replay"))
        .await;
    let (missing, missing_answer) =
        app.admin(reqwest::Method::POST, "/api/admin/webhooks/events/evt_nope/replay").await;

    // Assert
    assert_eq!(unauthorised.status().as_u16(), 401);
    assert_eq!(all_status, 200);
    assert_eq!(all["events"].as_array().unwrap().len(), 2);
    let filtered = filtered["events"].as_array().unwrap();
    assert_eq!(filtered.len(), 1);
    assert_eq!(filtered[0]["eventId"], refunded.as_str());
    assert_eq!(filtered[0]["status"], "streamed");
    assert_eq!(bad_limit, 400);
    assert_eq!(replay_status, 200, "{replayed}");
    assert_eq!(missing, 404);
    assert_eq!(missing_answer["code"], "event_not_found");
    let stream = app.stream().await;
    assert_eq!(stream.len(), 3, "two deliveries and one replay");
    assert_eq!(stream[2].0, replayed["streamId"].as_str().unwrap());
    let replays: i32 = sqlx::query_scalar("SELECT replays FROM webhook_events WHERE event_id = $1")
        .bind(&paid)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(replays, 1);
}

#[tokio::test]
async fn the_webhook_route_is_rate_limited_per_source_ip_with_the_webhook_policy() {
    // Arrange
    let app = TestApp::shared(&[
        ("APP__RATE_LIMIT__ENABLED", "true"),
        ("APP__RATE_LIMIT__POLICIES__WEBHOOK__LIMIT", "2"),
        ("APP__RATE_LIMIT__POLICIES__WEBHOOK__WINDOW_SECS", "60"),
    ])
    .await;

    // Act
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let body = event_with_id("invoice.paid", &unique_event_id());
        statuses.push(app.deliver(&body).await);
    }

    // Assert
    assert_eq!(statuses[0].0, 200);
    assert_eq!(statuses[1].0, 200);
    assert_eq!(statuses[2].0, 429, "{:?}", statuses[2].1);
    assert_eq!(statuses[2].1["code"], "rate_limited");
    assert_eq!(app.stream().await.len(), 2);
}

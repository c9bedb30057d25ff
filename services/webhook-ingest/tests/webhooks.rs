//! The webhook endpoint end to end against real Redis and Postgres: acceptance, dedup, what is
//! settled at the door, admin routes and rate limit; once against a real Redis Cluster.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;

use common::{SECRET, TestApp, event_with_id, now, payment_event, unique_event_id};
use platform_testing::RedisCluster;
use serde_json::Value;
use webhook_ingest::domain::signature::sign_header;

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
async fn each_fixture_event_resigned_with_its_own_id_is_recorded_and_streamed_once() {
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
    for (_, _, body) in &events {
        first.push(app.deliver(body).await);
    }
    app.stream_has(9).await;
    let mut again = Vec::new();
    for (_, _, body) in &events {
        again.push(app.deliver(body).await);
    }

    // Assert
    for ((status, body), (id, name, _)) in first.iter().zip(&events) {
        assert_eq!(*status, 200, "{name}: {body}");
        assert_eq!(body["duplicate"], false, "{name}");
        assert_eq!(body["status"], "received", "{name}");
        assert_eq!(body["eventId"], id.as_str());
    }
    for (status, body) in &again {
        assert_eq!(*status, 200);
        assert_eq!(body["received"], true);
        assert_eq!(body["duplicate"], true);
    }
    let stream = app.stream().await;
    assert_eq!(stream.len(), 9, "duplicates append nothing");
    for ((id, name, body), (status, answer)) in events.iter().zip(&first) {
        let (entry_id, fields) = stream
            .iter()
            .find(|(_, fields)| {
                serde_json::from_str::<Value>(&fields["data"]).unwrap()["eventId"] == id.as_str()
            })
            .unwrap();
        assert_eq!(*status, 200);
        assert_eq!(answer["streamId"], entry_id.as_str(), "the id the answer announced");
        assert_eq!(fields["v"], "1");
        let message: Value = serde_json::from_str(&fields["data"]).unwrap();
        assert_eq!(message["eventType"], *name);
        assert_eq!(message["raw"], body.as_str(), "raw JSON byte for byte");
        assert_eq!(message["apiVersion"], "2020-08-27");
        let (_, _, seq) = app.ledger_row(id).await.unwrap();
        assert_eq!(format!("{}-0", seq.unwrap()), *entry_id);
    }
    let (_, listed) = app.admin(reqwest::Method::GET, "/api/admin/webhooks/events?limit=20").await;
    let listed = listed["events"].as_array().unwrap();
    assert_eq!(listed.len(), 9);
    assert!(listed.iter().all(|e| e["status"] == "streamed" && e["deliveries"] == 2), "{listed:?}");
}

#[tokio::test]
async fn in_redis_cluster_mode_a_delivery_is_streamed_once_and_its_duplicate_acknowledged() {
    // Arrange: the relay's state script, stream and checkpoint hash share the stream slot.
    let cluster = RedisCluster::shared();
    let app = TestApp::start(&cluster.url(), &[("APP__REDIS__MODE", "cluster")]).await;
    let id = unique_event_id();
    let body = event_with_id("payment_intent.succeeded", &id);

    // Act
    let first = app.deliver(&body).await;
    app.stream_has(1).await;
    let again = app.deliver(&body).await;

    // Assert
    assert_eq!(first.0, 200, "{}", first.1);
    assert_eq!(first.1["status"], "received");
    assert_eq!((again.0, &again.1["duplicate"]), (200, &Value::Bool(true)));
    assert_eq!(app.streamed_ids().await, vec![id]);
}

#[tokio::test]
async fn twenty_concurrent_deliveries_of_one_event_record_and_stream_it_once() {
    // Arrange
    let app = TestApp::shared(&[]).await;
    let id = unique_event_id();
    let body = event_with_id("payment_intent.succeeded", &id);

    // Act
    let answers = futures::future::join_all((0..20).map(|_| app.deliver(&body))).await;
    app.stream_has(1).await;

    // Assert
    let fresh = answers.iter().filter(|(s, b)| *s == 200 && b["duplicate"] == false).count();
    let duplicates = answers.iter().filter(|(s, b)| *s == 200 && b["duplicate"] == true).count();
    assert_eq!((fresh, duplicates), (1, 19), "{answers:?}");
    let deliveries: i32 =
        sqlx::query_scalar("SELECT deliveries FROM webhook_events WHERE event_id = $1")
            .bind(&id)
            .fetch_one(app.db())
            .await
            .unwrap();
    assert_eq!(deliveries, 20);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(app.stream().await.len(), 1);
}

#[tokio::test]
async fn many_concurrent_distinct_deliveries_are_streamed_once_each_in_ledger_order() {
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
    app.stream_has(60).await;

    // Assert: each answer announced its entry, and the stream is in ledger order.
    let stream: HashMap<String, String> = app
        .stream()
        .await
        .into_iter()
        .map(|(entry, fields)| {
            let data: Value = serde_json::from_str(&fields["data"]).unwrap();
            (data["eventId"].as_str().unwrap().to_owned(), entry)
        })
        .collect();
    for (id, (status, answer)) in ids.iter().zip(&answers) {
        assert_eq!(*status, 200, "{answer}");
        assert_eq!(answer["eventId"], id.as_str());
        assert_eq!(answer["streamId"], stream[id].as_str());
    }
    let ledger_order: Vec<String> =
        sqlx::query_scalar("SELECT event_id FROM webhook_events ORDER BY seq")
            .fetch_all(app.db())
            .await
            .unwrap();
    assert_eq!(app.streamed_ids().await, ledger_order);
}

#[tokio::test]
async fn unauthentic_or_oversized_deliveries_get_a_400_naming_the_failed_check_and_store_nothing() {
    // Arrange
    let app = TestApp::shared(&[("APP__HTTP__BODY_LIMIT_BYTES", "65536")]).await;
    let body = event_with_id("payment_intent.succeeded", &unique_event_id());
    let signed = sign_header(SECRET, now(), body.as_bytes());
    let tampered = body.replacen("2000", "2001", 1);
    let stale = sign_header(SECRET, now() - 301, body.as_bytes());
    let wrong_secret = sign_header("whsec_someone_else", now(), body.as_bytes());
    let only_v0 = signed.replace("v1=", "v0=");
    let huge = format!("{{\"pad\":\"{}\"}}", "x".repeat(70_000));

    // Act
    let cases = [
        ("tampered body", app.deliver_with(&tampered, Some(&signed)).await),
        ("no header", app.deliver_with(&body, None).await),
        ("garbage header", app.deliver_with(&body, Some("garbage")).await),
        ("only v0", app.deliver_with(&body, Some(&only_v0)).await),
        ("stale", app.deliver_with(&body, Some(&stale)).await),
        ("wrong secret", app.deliver_with(&body, Some(&wrong_secret)).await),
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
        ("too large", 413, "payload_too_large"),
    ];
    for ((name, (status, answer)), (_, want_status, want_code)) in cases.iter().zip(expected) {
        assert_eq!(*status, want_status, "{name}: {answer}");
        assert_eq!(answer["code"], want_code, "{name}: {answer}");
        assert!(answer["error"].as_str().is_some_and(|e| !e.is_empty()), "{name}");
    }
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_events")
        .fetch_one(app.db())
        .await
        .unwrap();
    assert_eq!(rows, 0);
    let metrics = app.metrics().await;
    assert!(metrics.contains("webhook_received_total{service=\"webhook-ingest\"} 7"), "{metrics}");
    assert!(metrics.contains("reason=\"signature_mismatch\"} 2"), "{metrics}");
    assert!(metrics.contains("reason=\"payload_too_large\"} 1"), "{metrics}");
}

#[tokio::test]
async fn authentic_events_that_can_never_be_processed_settle_on_their_first_delivery() {
    // Arrange: the poison the contract refuses, and a good event sent at the same moment.
    let app = TestApp::shared(&[("APP__WEBHOOK__LEDGER_BATCH_LINGER_MS", "20")]).await;
    let nul = unique_event_id();
    let deep = unique_event_id();
    let surrogate = unique_event_id();
    let huge_amount = unique_event_id();
    let good = unique_event_id();
    let poison = [
        (
            nul.clone(),
            payment_event(&nul, r#"{"id":"pi_1","customer":"cus_\u0000x"}"#),
            "nul_in_text",
        ),
        (
            deep.clone(),
            payment_event(
                &deep,
                &format!(r#"{{"id":"pi_2","x":{}{}}}"#, "[".repeat(10_000), "]".repeat(10_000)),
            ),
            "invalid_json",
        ),
        (
            surrogate.clone(),
            payment_event(&surrogate, r#"{"id":"pi_3","x":"\ud800"}"#),
            "invalid_json",
        ),
        (
            huge_amount.clone(),
            payment_event(&huge_amount, r#"{"id":"pi_4","amount":9223372036854775807}"#),
            "amount_out_of_range",
        ),
    ];
    let not_json = "this is signed but not json";
    let good_body = payment_event(&good, r#"{"id":"pi_5","amount":500,"currency":"usd"}"#);

    // Act
    let mut sends: Vec<_> = poison.iter().map(|(_, body, _)| app.deliver(body)).collect();
    sends.push(app.deliver(&good_body));
    sends.push(app.deliver(not_json));
    let answers = futures::future::join_all(sends).await;
    let again = app.deliver(&poison[0].1).await;
    app.stream_has(1).await;

    // Assert
    for ((id, _, reason), (status, answer)) in poison.iter().zip(&answers) {
        assert_eq!(*status, 200, "{reason}: {answer}");
        assert_eq!(answer["status"], "unprocessable", "{answer}");
        assert_eq!(answer["eventId"], id.as_str());
        assert!(answer["reason"].as_str().unwrap().starts_with(reason), "{answer}");
        let (status, stored_reason, _) = app.ledger_row(id).await.unwrap();
        assert_eq!(status, "unprocessable");
        assert!(stored_reason.unwrap().starts_with(reason));
    }
    let (good_status, good_answer) = &answers[4];
    assert_eq!((*good_status, &good_answer["status"]), (200, &Value::from("received")));
    let (status, answer) = &answers[5];
    assert_eq!((*status, &answer["status"]), (200, &Value::from("unprocessable")), "{answer}");
    assert!(answer["eventId"].as_str().unwrap().starts_with("unparsed_"));
    assert_eq!((again.0, &again.1["duplicate"]), (200, &Value::Bool(true)), "settled once");
    assert_eq!(app.streamed_ids().await, vec![good]);
    let (_, listed) =
        app.admin(reqwest::Method::GET, "/api/admin/webhooks/events?status=unprocessable").await;
    assert_eq!(listed["events"].as_array().unwrap().len(), 5, "{listed}");
    let metrics = app.metrics().await;
    assert!(metrics.contains("reason=\"invalid_json\"} 3"), "{metrics}");
    assert!(metrics.contains("reason=\"nul_in_text\"} 1"), "{metrics}");
    assert!(metrics.contains("reason=\"amount_out_of_range\"} 1"), "{metrics}");
}

#[tokio::test]
async fn a_row_postgres_refuses_fails_alone_and_is_recorded_as_unprocessable() {
    // Arrange: a constraint only one customer breaks, and batches that wait for company.
    let app = TestApp::shared(&[
        ("APP__WEBHOOK__LEDGER_BATCH_LINGER_MS", "100"),
        ("APP__WEBHOOK__LEDGER_BATCH_COMMITTERS", "1"),
    ])
    .await;
    sqlx::query(
        "ALTER TABLE webhook_events ADD CONSTRAINT no_bad CHECK (customer_id <> 'cus_bad')",
    )
    .execute(app.db())
    .await
    .unwrap();
    let bad = unique_event_id();
    let goods: Vec<String> = (0..5).map(|_| unique_event_id()).collect();
    let mut bodies = vec![payment_event(&bad, r#"{"id":"pi_bad","customer":"cus_bad"}"#)];
    bodies
        .extend(goods.iter().map(|id| payment_event(id, r#"{"id":"pi_ok","customer":"cus_ok"}"#)));

    // Act
    let answers = futures::future::join_all(bodies.iter().map(|b| app.deliver(b))).await;

    // Assert
    assert_eq!(answers[0].0, 200, "{}", answers[0].1);
    assert_eq!(answers[0].1["status"], "unprocessable");
    assert!(answers[0].1["reason"].as_str().unwrap().starts_with("unstorable"));
    for (status, answer) in &answers[1..] {
        assert_eq!((*status, &answer["status"]), (200, &Value::from("received")), "{answer}");
    }
    app.stream_has(5).await;
    let batches = app.metrics().await;
    assert!(batches.contains("webhook_ledger_insert_batch_rows_count"), "{batches}");
}

#[tokio::test]
async fn an_event_type_outside_the_allow_list_is_recorded_as_ignored_and_not_streamed() {
    // Arrange
    let app = TestApp::shared(&[("APP__WEBHOOK__STREAM_EVENT_TYPES", "invoice.paid")]).await;
    let id = unique_event_id();
    let paid = unique_event_id();

    // Act
    let (status, answer) = app.deliver(&event_with_id("payment_intent.succeeded", &id)).await;
    let (again_status, again) = app.deliver(&event_with_id("payment_intent.succeeded", &id)).await;
    app.deliver(&event_with_id("invoice.paid", &paid)).await;
    app.stream_has(1).await;

    // Assert
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], "ignored");
    assert_eq!((again_status, &again["duplicate"]), (200, &Value::Bool(true)));
    assert_eq!(app.streamed_ids().await, vec![paid], "the ignored row is passed over");
    assert_eq!(app.ledger_row(&id).await.unwrap().0, "ignored");
}

#[tokio::test]
async fn admins_list_recent_events_by_type_and_replay_one_to_the_stream() {
    // Arrange
    let app = TestApp::shared(&[]).await;
    let paid = unique_event_id();
    let refunded = unique_event_id();
    let poison = unique_event_id();
    app.deliver(&event_with_id("invoice.paid", &paid)).await;
    app.deliver(&event_with_id("charge.refunded", &refunded)).await;
    app.deliver(&payment_event(&poison, r#"{"amount":-5}"#)).await;
    app.stream_has(2).await;
    // The relay appends to the stream before it checkpoints how far it got, which is what makes
    // a row read as streamed.
    platform_testing::eventually("the relay checkpoint covers both entries", || async {
        let (_, listed) =
            app.admin(reqwest::Method::GET, "/api/admin/webhooks/events?status=streamed").await;
        listed["events"].as_array().is_some_and(|events| events.len() == 2)
    })
    .await;

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
    let (refused, refused_answer) = app
        .admin(reqwest::Method::POST, &format!("/api/admin/webhooks/events/{poison}/replay"))
        .await;
    // Postgres refuses a NUL in text: the caller's input, not an outage.
    let (nul_type, nul_type_answer) =
        app.admin(reqwest::Method::GET, "/api/admin/webhooks/events?type=a%00b").await;
    let (nul_id, _) =
        app.admin(reqwest::Method::POST, "/api/admin/webhooks/events/evt_a%00b/replay").await;
    app.stream_has(3).await;

    // Assert
    assert_eq!(unauthorised.status().as_u16(), 401);
    assert_eq!(all_status, 200);
    assert_eq!(all["events"].as_array().unwrap().len(), 3);
    let filtered = filtered["events"].as_array().unwrap();
    assert_eq!(filtered.len(), 1);
    assert_eq!(filtered[0]["eventId"], refunded.as_str());
    assert_eq!(filtered[0]["status"], "streamed");
    assert_eq!(bad_limit, 400);
    assert_eq!(replay_status, 200, "{replayed}");
    assert_eq!((missing, &missing_answer["code"]), (404, &Value::from("event_not_found")));
    assert_eq!((refused, &refused_answer["code"]), (409, &Value::from("unprocessable_event")));
    assert_eq!((nul_type, &nul_type_answer["code"]), (400, &Value::from("invalid_input")));
    assert_eq!(nul_id, 400);
    let stream = app.stream().await;
    assert_eq!(stream[2].0, replayed["streamId"].as_str().unwrap(), "appended at its new place");
    assert_eq!(app.streamed_ids().await, vec![paid.clone(), refunded, paid]);
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
    app.stream_has(2).await;
}

#[tokio::test]
async fn a_wrong_method_on_the_webhook_route_gets_405_json_with_allow_and_an_unknown_path_404_json()
{
    // Arrange
    let app = TestApp::shared(&[]).await;

    // Act
    let put = app.http.put(format!("{}/api/webhooks/stripe", app.base)).send().await.unwrap();
    let get_admin_replay = app
        .http
        .get(format!("{}/api/admin/webhooks/events/evt_1/replay", app.base))
        .send()
        .await
        .unwrap();
    let unknown = app.http.get(format!("{}/api/webhooks/paypal", app.base)).send().await.unwrap();

    // Assert
    assert_eq!(put.status().as_u16(), 405);
    assert_eq!(put.headers()["allow"], "POST");
    let body: Value = put.json().await.unwrap();
    assert_eq!(body["code"], "method_not_allowed", "{body}");
    assert!(body["error"].as_str().unwrap().contains("PUT"), "{body}");
    assert_eq!(get_admin_replay.status().as_u16(), 405);
    let body: Value = get_admin_replay.json().await.unwrap();
    assert_eq!(body["code"], "method_not_allowed", "{body}");
    assert_eq!(unknown.status().as_u16(), 404);
    let body: Value = unknown.json().await.unwrap();
    assert_eq!(body["code"], "not_found", "{body}");
}

//! The real `platformctl` binary against real Redis (and usage-meter and webhook-ingest for the
//! redrives): its exit codes, its reports, and that it never prints a secret.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::web;
use platform_redis::fred::prelude::*;
use platform_redis::messages::{StripeEventMessage, UsageEvent};
use platform_redis::streams::encode_entry;
use platform_redis::{RedisClients, RedisSettings, StreamName};
use platform_service::AppContext;
use platform_testing::{
    RedisServer, TestApp, TestService, eventually, holds_within, unique_prefix,
};
use serde_json::Value;

/// usage-meter as the shared harness starts it, reading its streams quickly.
struct UsageMeter;

impl TestService for UsageMeter {
    type Settings = usage_meter::Settings;
    type App = usage_meter::UsageMeter;
    const DATABASE: bool = true;
    const VARS: &'static [(&'static str, &'static str)] = &[("APP__USAGE__BLOCK_MS", "100")];

    async fn build(settings: usage_meter::Settings) -> anyhow::Result<usage_meter::UsageMeter> {
        usage_meter::build(settings).await
    }
    fn port(app: &usage_meter::UsageMeter) -> u16 {
        app.port()
    }
    fn context(app: &usage_meter::UsageMeter) -> web::Data<AppContext> {
        app.context()
    }
    async fn serve(app: usage_meter::UsageMeter) -> std::io::Result<()> {
        app.run_until_stopped().await
    }
}

/// webhook-ingest as the shared harness starts it, relaying its ledger quickly.
struct WebhookIngest;

/// The endpoint secret webhook-ingest checks deliveries against.
const WEBHOOK_SECRET: &str = "whsec_platformctl";

impl TestService for WebhookIngest {
    type Settings = webhook_ingest::Settings;
    type App = platform_service::Application;
    const DATABASE: bool = true;
    const VARS: &'static [(&'static str, &'static str)] =
        &[("APP__WEBHOOK__SECRETS", WEBHOOK_SECRET)];

    async fn build(settings: webhook_ingest::Settings) -> anyhow::Result<Self::App> {
        webhook_ingest::build(settings).await
    }
    fn port(app: &Self::App) -> u16 {
        app.port()
    }
    fn context(app: &Self::App) -> web::Data<AppContext> {
        app.context()
    }
    async fn serve(app: Self::App) -> std::io::Result<()> {
        app.run_until_stopped().await
    }
}

/// Runs platformctl with `vars` on top of the defaults: (exit code, stdout, stderr).
async fn platformctl(args: &[&str], vars: &[(&str, String)]) -> (i32, String, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_platformctl"))
        .args(args)
        .env("APP__PLATFORMCTL__TIMEOUT_MS", "1500")
        .env("APP__REDIS__CONNECT_TIMEOUT_MS", "300")
        .envs(vars.iter().map(|(k, v)| (*k, v.clone())))
        .output()
        .await
        .unwrap();
    let text = |bytes: Vec<u8>| String::from_utf8_lossy(&bytes).into_owned();
    (output.status.code().unwrap_or(-1), text(output.stdout), text(output.stderr))
}

#[tokio::test]
async fn redis_check_passes_on_a_running_redis_and_fails_clearly_without_printing_secrets() {
    // Arrange
    let redis = RedisServer::start().unwrap();
    let running = [("APP__REDIS__URL", redis.url())];
    let with_password = format!("redis://ops:hunter2-secret@127.0.0.1:{}", redis.port());
    let stopped = [("APP__REDIS__URL", with_password)];

    // Act
    let (up_code, up_text, _) = platformctl(&["redis", "check"], &running).await;
    let (json_code, json_text, _) = platformctl(&["redis", "check", "--json"], &running).await;
    let (health_code, health_text, _) = platformctl(&["redis", "health"], &running).await;
    redis.stop();
    let (down_code, down_text, down_err) = platformctl(&["redis", "check"], &stopped).await;

    // Assert
    assert_eq!(up_code, 0, "{up_text}");
    assert!(up_text.starts_with("ok    primary"), "{up_text}");
    assert!(up_text.contains("redis 7") || up_text.contains("redis 8"), "{up_text}");
    let report: Value = serde_json::from_str(&json_text).unwrap();
    assert_eq!(
        (json_code, &report["ok"], &report["roles"][0]["ok"]),
        (0, &Value::Bool(true), &Value::Bool(true))
    );
    assert_eq!(health_code, 0, "{health_text}");
    assert!(health_text.contains("ping"), "{health_text}");
    assert_eq!(down_code, 1, "{down_text}{down_err}");
    assert!(down_text.contains("FAIL  primary"), "{down_text}");
    assert!(down_text.contains("not reachable"), "{down_text}");
    assert!(!format!("{down_text}{down_err}").contains("hunter2"), "a secret was printed");
}

#[tokio::test]
async fn a_redriven_dead_letter_is_processed_once_and_leaves_the_dead_letter_stream() {
    // Arrange: usage-meter runs; one valid usage event sits in its dead-letter stream (as if
    // dead-lettered during an incident).
    let prefix = unique_prefix("platformctl-redrive");
    let usage = TestApp::builder(&prefix).prefix(&prefix).spawn::<UsageMeter>().await;
    let redis =
        RedisClients::connect(&RedisSettings::for_url(&RedisServer::shared().url(), &prefix))
            .await
            .unwrap();
    let event = UsageEvent {
        org_id: "redrive-org".into(),
        metric: "sms_sent".into(),
        value: 3,
        occurred_at: None,
        idempotency_key: Some("sms-batch-7".into()),
        metadata: None,
    };
    let mut fields = vec![
        ("original_id", "1-0".to_owned()),
        ("reason", "postgres refused it during the incident".to_owned()),
        ("deliveries", "5".to_owned()),
        ("consumer", "usage-meter-0".to_owned()),
    ];
    fields.extend(encode_entry(&event).unwrap());
    let dead_key = redis.keys().dead_letter_stream(StreamName::UsageEvents, "usage-meter");
    let _: String = redis.primary().xadd(&dead_key, false, None, "*", fields).await.unwrap();
    let vars =
        [("APP__REDIS__URL", RedisServer::shared().url()), ("APP__REDIS__KEY_PREFIX", prefix)];
    let sms = || async {
        let url = usage.url("/api/usage/redrive-org");
        let body: Value = usage
            .http
            .get(url)
            .bearer_auth("dev-admin-token")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        body["usage"]["sms_sent"].as_i64()
    };

    // Act
    let (list_code, listed, _) =
        platformctl(&["dlq", "list", "usage-events", "usage-meter"], &vars).await;
    let (status_code, status, _) = platformctl(&["streams", "status", "--json"], &vars).await;
    let (redrive_code, redriven, _) =
        platformctl(&["dlq", "redrive", "usage-events", "usage-meter", "--all"], &vars).await;
    eventually("usage-meter counts the redriven event", || async { sms().await == Some(3) }).await;
    let (again_code, again, _) =
        platformctl(&["dlq", "redrive", "usage-events", "usage-meter", "--all"], &vars).await;
    let once = holds_within(Duration::from_secs(1), || async { sms().await == Some(3) }).await;
    let left: u64 = redis.primary().xlen(&dead_key).await.unwrap();
    let (refused_code, _, refused) =
        platformctl(&["dlq", "redrive", "organisation-events", "usage-meter", "--all"], &vars)
            .await;
    usage.stop().await;

    // Assert
    assert_eq!(list_code, 0);
    assert!(
        listed.contains("1 dead letters") && listed.contains("postgres refused it"),
        "{listed}"
    );
    let status: Value = serde_json::from_str(&status).unwrap();
    let group = status["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["stream"] == "usage-events" && g["group"] == "usage-meter")
        .cloned()
        .unwrap_or_default();
    assert_eq!((status_code, &group["deadLetters"]), (0, &Value::from(1)), "{status}");
    assert_eq!(redrive_code, 0, "{redriven}");
    assert!(redriven.starts_with("redriven "), "{redriven}");
    assert_eq!(left, 0, "the dead letter is gone");
    assert_eq!(again_code, 0, "nothing left to redrive is not an error: {again}");
    assert!(once, "the event was counted more than once");
    assert_eq!(refused_code, 2, "an outbox-fed stream is refused: {refused}");
    assert!(refused.contains("outbox"), "{refused}");
}

#[tokio::test]
async fn a_redriven_stripe_dead_letter_is_replayed_by_webhook_ingest_and_streamed_again() {
    // Arrange: webhook-ingest stored and streamed one event; campaign-api's group dead-lettered it.
    let prefix = unique_prefix("platformctl-stripe");
    let webhook = TestApp::builder(&prefix).prefix(&prefix).spawn::<WebhookIngest>().await;
    let redis =
        RedisClients::connect(&RedisSettings::for_url(&RedisServer::shared().url(), &prefix))
            .await
            .unwrap();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let body = serde_json::json!({
        "id": "evt_redrive_1", "object": "event", "api_version": "2020-08-27", "created": now,
        "livemode": false, "type": "payment_intent.succeeded",
        "data": {"object": {
            "id": "pi_redrive_1", "object": "payment_intent", "amount": 100,
            "amount_received": 100, "currency": "usd", "metadata": {},
        }},
    })
    .to_string();
    let signature =
        webhook_ingest::domain::signature::sign_header(WEBHOOK_SECRET, now, body.as_bytes());
    let delivered = webhook
        .http
        .post(webhook.url("/api/webhooks/stripe"))
        .header("Stripe-Signature", signature)
        .header("Content-Type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(delivered.status(), 200, "{}", delivered.text().await.unwrap());
    let stream_key = redis.keys().stream(StreamName::StripeEvents);
    let entries = || async {
        let entries: Vec<(String, Vec<(String, String)>)> =
            redis.primary().xrange(&stream_key, "-", "+", None).await.unwrap();
        entries
    };
    eventually("the relay streams the event", || async { entries().await.len() == 1 }).await;
    let message = StripeEventMessage {
        event_id: "evt_redrive_1".into(),
        event_type: "payment_intent.succeeded".into(),
        created: now,
        livemode: false,
        api_version: Some("2020-08-27".into()),
        object_id: Some("pi_redrive_1".into()),
        customer_id: None,
        raw: body,
    };
    let mut fields = vec![
        ("original_id", entries().await[0].0.clone()),
        ("reason", "the campaign was not found during the incident".to_owned()),
        ("deliveries", "10".to_owned()),
        ("consumer", "campaign-api-0".to_owned()),
    ];
    fields.extend(encode_entry(&message).unwrap());
    let dead_key = redis.keys().dead_letter_stream(StreamName::StripeEvents, "campaign-api");
    let _: String = redis.primary().xadd(&dead_key, false, None, "*", fields).await.unwrap();
    let vars = [
        ("APP__REDIS__URL", RedisServer::shared().url()),
        ("APP__REDIS__KEY_PREFIX", prefix),
        ("APP__PLATFORMCTL__WEBHOOK_INGEST_URL", webhook.url("")),
    ];

    // Act
    let (code, redriven, errors) =
        platformctl(&["dlq", "redrive", "stripe-events", "campaign-api", "--all"], &vars).await;
    eventually("the replay is streamed again", || async { entries().await.len() == 2 }).await;
    let left: u64 = redis.primary().xlen(&dead_key).await.unwrap();
    let streamed = entries().await;
    webhook.stop().await;

    // Assert: the replay is a new entry above the first (the ledger's next sequence), not an
    // append with `*` that would jump ahead of the outbox.
    assert_eq!(code, 0, "{redriven}{errors}");
    assert!(redriven.contains("replayed by webhook-ingest"), "{redriven}");
    assert_eq!(left, 0, "the dead letter is gone");
    let seq = |id: &str| id.split('-').next().unwrap().parse::<u64>().unwrap();
    assert_eq!(seq(&streamed[1].0), seq(&streamed[0].0) + 1, "{streamed:?}");
    let replayed = streamed[1].1.iter().find(|(k, _)| k == "data").map(|(_, v)| v.clone());
    assert!(replayed.unwrap_or_default().contains("evt_redrive_1"), "{streamed:?}");
}

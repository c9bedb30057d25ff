//! Stream entries carry the delivery's W3C trace context (own test binary: it installs a global
//! tracing subscriber with an OpenTelemetry layer, as `init_telemetry` does with an exporter).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry::trace::TracerProvider as _;
use platform_redis::fred::prelude::*;
use platform_redis::{RedisClients, RedisSettings, StreamName};
use platform_service::settings::ServiceSettings;
use platform_testing::{PostgresServer, RedisServer, unique_prefix};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use webhook_ingest::domain::signature::sign_header;
use webhook_ingest::{Settings, build};

#[tokio::test]
async fn a_streamed_event_carries_the_traceparent_of_the_delivery_that_brought_it() {
    // Arrange
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
        .init();
    let prefix = unique_prefix("webhook-trace");
    let database = PostgresServer::shared().create_database().await.unwrap();
    let vars = HashMap::from([
        ("APP__HTTP__PORT".to_owned(), "0".to_owned()),
        ("APP__REDIS__URL".to_owned(), RedisServer::shared().url()),
        ("APP__REDIS__KEY_PREFIX".to_owned(), prefix.clone()),
        ("APP__DATABASE__URL".to_owned(), database.url),
        ("APP__WEBHOOK__SECRETS".to_owned(), "whsec_trace".to_owned()),
        ("APP__RATE_LIMIT__ENABLED".to_owned(), "false".to_owned()),
    ]);
    let app = build(Settings::from_overrides(vars).unwrap()).await.unwrap();
    let base = format!("http://127.0.0.1:{}", app.port());
    let shutdown = app.context().shutdown.clone();
    tokio::spawn(app.run_until_stopped());
    let body = r#"{"id":"evt_trace_1","object":"event","type":"invoice.paid","created":1,"data":{"object":{"id":"in_1","customer":"cus_1"}}}"#;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";

    // Act
    let response = reqwest::Client::new()
        .post(format!("{base}/api/webhooks/stripe"))
        .header("Stripe-Signature", sign_header("whsec_trace", now, body.as_bytes()))
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let redis =
        RedisClients::connect(&RedisSettings::for_url(&RedisServer::shared().url(), &prefix))
            .await
            .unwrap();
    let key = redis.keys().stream(StreamName::StripeEvents);
    platform_testing::eventually("the relay appended the event", || async {
        redis.primary().xlen::<u64, _>(key.as_str()).await.unwrap() > 0
    })
    .await;
    let entries: Vec<(String, HashMap<String, String>)> =
        redis.primary().xrange(key.as_str(), "-", "+", None).await.unwrap();

    // Assert
    assert_eq!(status, 200);
    assert_eq!(entries.len(), 1);
    let traceparent = entries[0].1.get("traceparent").expect("entry has a traceparent");
    assert!(traceparent.starts_with(&format!("00-{trace_id}-")), "{traceparent}");
    shutdown.trigger();
}

//! The service binary's wiring: it starts on a free port against real Redis and Postgres and is ready.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;

use platform_service::settings::ServiceSettings;
use platform_testing::{PostgresServer, RedisServer, unique_prefix};
use webhook_ingest::{Settings, build};

#[tokio::test]
async fn service_starts_and_reports_ready_with_its_dependencies() {
    // Arrange
    let mut vars = HashMap::from([
        ("APP__HTTP__PORT".to_owned(), "0".to_owned()),
        ("APP__REDIS__URL".to_owned(), RedisServer::shared().url()),
        ("APP__REDIS__KEY_PREFIX".to_owned(), unique_prefix("webhook-ingest")),
    ]);
    let database = PostgresServer::shared().create_database().await.unwrap();
    vars.insert("APP__DATABASE__URL".to_owned(), database.url);
    let settings = Settings::from_overrides(vars).unwrap();
    let app = build(settings).await.unwrap();
    let base = format!("http://127.0.0.1:{}", app.port());
    let shutdown = app.context().shutdown.clone();
    let server = tokio::spawn(app.run_until_stopped());

    // Act
    let ready = reqwest::get(format!("{base}/readyz")).await.unwrap();
    let status = ready.status().as_u16();
    let body: serde_json::Value = ready.json().await.unwrap();

    // Assert
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["service"], "webhook-ingest");
    assert_eq!(body["checks"]["redis"]["ok"], true);
    assert_eq!(body["checks"]["postgres"]["ok"], true);
    shutdown.trigger();
    server.await.unwrap().unwrap();
}

#[test]
fn group_commit_settings_out_of_range_are_refused_naming_the_key() {
    // Arrange
    let with = |key: &str, value: &str| {
        Settings::from_overrides(HashMap::from([(key.to_owned(), value.to_owned())]))
    };

    // Act
    let rows = with("APP__WEBHOOK__LEDGER_BATCH_MAX_ROWS", "0");
    let committers = with("APP__WEBHOOK__LEDGER_BATCH_COMMITTERS", "8");
    let linger = with("APP__WEBHOOK__LEDGER_BATCH_LINGER_MS", "5000");
    let defaults = Settings::from_overrides(HashMap::new());

    // Assert
    assert!(rows.unwrap_err().to_string().contains("webhook.ledger_batch_max_rows"));
    let committers = committers.unwrap_err().to_string();
    assert!(committers.contains("webhook.ledger_batch_committers"), "{committers}");
    assert!(linger.unwrap_err().to_string().contains("webhook.ledger_batch_linger_ms"));
    assert!(defaults.is_ok());
}

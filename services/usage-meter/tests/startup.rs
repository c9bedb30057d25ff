//! The service binary's wiring: it starts on a free port against real Redis and Postgres and is ready.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;

use platform_service::settings::ServiceSettings;
use platform_testing::{PostgresServer, RedisServer, unique_prefix};
use usage_meter::{Settings, build};

#[tokio::test]
async fn service_starts_and_reports_ready_with_its_dependencies() {
    // Arrange
    let mut vars = HashMap::from([
        ("APP__HTTP__PORT".to_owned(), "0".to_owned()),
        ("APP__REDIS__URL".to_owned(), RedisServer::shared().url()),
        ("APP__REDIS__KEY_PREFIX".to_owned(), unique_prefix("usage-meter")),
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
    assert_eq!(body["service"], "usage-meter");
    assert_eq!(body["checks"]["redis"]["ok"], true);
    assert_eq!(body["checks"]["postgres"]["ok"], true);
    shutdown.trigger();
    server.await.unwrap().unwrap();
}

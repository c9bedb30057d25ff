//! The service binary's wiring: it starts on a free port against real Redis and is ready.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;

use customer_count_refresher::{Settings, build};
use platform_service::settings::ServiceSettings;
use platform_testing::{RedisServer, unique_prefix};

#[tokio::test]
async fn service_starts_and_reports_ready_with_its_dependencies() {
    // Arrange
    let vars = HashMap::from([
        ("APP__HTTP__PORT".to_owned(), "0".to_owned()),
        ("APP__REDIS__URL".to_owned(), RedisServer::shared().url()),
        ("APP__REDIS__KEY_PREFIX".to_owned(), unique_prefix("customer-count-refresher")),
        // No schedule and no refresh at start: this test only checks the wiring.
        ("APP__REFRESH__SCHEDULE_ENABLED".to_owned(), "false".to_owned()),
        ("APP__REFRESH__REFRESH_WHEN_EMPTY".to_owned(), "false".to_owned()),
    ]);
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
    assert_eq!(body["service"], "customer-count-refresher");
    assert_eq!(body["checks"]["redis"]["ok"], true);
    assert_eq!(body["checks"]["postgres"], serde_json::Value::Null);
    shutdown.trigger();
    server.await.unwrap().unwrap();
}

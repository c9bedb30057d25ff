//! The service binary's wiring: it starts on a free port against real Redis and Postgres, is
//! ready, serves its dashboard, and stops gracefully (consumer, then the final flush).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::TestApp;

#[tokio::test]
async fn service_starts_and_reports_ready_with_its_dependencies() {
    // Arrange
    let app = TestApp::spawn("usage-startup", &[]).await;

    // Act
    let (status, body) = app.get("/readyz").await;
    let dashboard = app.http.get(format!("{}/dashboard/demo", app.base)).send().await.unwrap();
    let dashboard_status = dashboard.status().as_u16();
    let html = dashboard.text().await.unwrap();

    // Assert
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["service"], "usage-meter");
    assert_eq!(body["checks"]["redis"]["ok"], true);
    assert_eq!(body["checks"]["postgres"]["ok"], true);
    assert_eq!(dashboard_status, 200);
    assert!(html.contains("/api/billing/"), "dashboard reads the billing API");
    app.stop().await;
}

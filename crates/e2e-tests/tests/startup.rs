//! Every service starts on a free port against real Redis (and Postgres where it has a database),
//! reports ready with the dependencies it has, and stops cleanly; plus the startup facts one
//! service adds (usage-meter's dashboard, webhook-ingest's refusal of out-of-range settings).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;

use common::{CampaignApi, CheckoutApi, Refresher, UsageMeter, WebhookIngest};
use platform_service::settings::ServiceSettings;
use platform_testing::{TestApp, TestService};
use serde_json::Value;

type Started = Pin<Box<dyn Future<Output = TestApp>>>;

/// Starts the app of `S` for the test named `test`.
fn start<S: TestService + 'static>(test: &'static str) -> Started {
    Box::pin(TestApp::builder(test).spawn::<S>())
}

/// `/readyz` of `app`: status and body.
async fn readyz(app: &TestApp) -> (u16, Value) {
    let ready = app.http.get(app.url("/readyz")).send().await.unwrap();
    (ready.status().as_u16(), ready.json().await.unwrap())
}

#[tokio::test]
async fn every_service_starts_reports_ready_with_its_dependencies_and_stops_cleanly() {
    // Arrange: (service name, whether it has a database, its start)
    let table: [(&str, bool, Started); 5] = [
        ("campaign-api", true, start::<CampaignApi>("campaign-api")),
        ("checkout-api", true, start::<CheckoutApi>("checkout-api")),
        ("customer-count-refresher", false, start::<Refresher>("customer-count-refresher")),
        ("usage-meter", true, start::<UsageMeter>("usage-meter")),
        ("webhook-ingest", true, start::<WebhookIngest>("webhook-ingest")),
    ];

    for (service, has_database, started) in table {
        // Act
        let app = started.await;
        let (status, body) = readyz(&app).await;
        let stopped = app.stop_and_join().await;

        // Assert
        assert_eq!(status, 200, "{service}: {body}");
        assert_eq!(body["service"], service);
        assert_eq!(body["checks"]["redis"]["ok"], true, "{service}: {body}");
        if has_database {
            assert_eq!(body["checks"]["postgres"]["ok"], true, "{service}: {body}");
        } else {
            assert_eq!(body["checks"]["postgres"], Value::Null, "{service}: {body}");
        }
        assert!(stopped.is_ok(), "{service} stopped with {stopped:?}");
    }
}

#[tokio::test]
async fn the_usage_meter_serves_its_dashboard_reading_the_billing_api() {
    // Arrange
    let app = TestApp::builder("usage-startup").spawn::<UsageMeter>().await;

    // Act
    let dashboard = app.http.get(app.url("/dashboard/demo")).send().await.unwrap();
    let dashboard_status = dashboard.status().as_u16();
    let html = dashboard.text().await.unwrap();

    // Assert
    assert_eq!(dashboard_status, 200);
    assert!(html.contains("/api/billing/"), "dashboard reads the billing API");
    app.stop_and_join().await.unwrap();
}

#[test]
fn webhook_group_commit_settings_out_of_range_are_refused_naming_the_key() {
    // Arrange
    let with = |key: &str, value: &str| {
        webhook_ingest::Settings::from_overrides(HashMap::from([(
            key.to_owned(),
            value.to_owned(),
        )]))
    };

    // Act
    let rows = with("APP__WEBHOOK__LEDGER_BATCH_MAX_ROWS", "0");
    let committers = with("APP__WEBHOOK__LEDGER_BATCH_COMMITTERS", "8");
    let linger = with("APP__WEBHOOK__LEDGER_BATCH_LINGER_MS", "5000");
    let defaults = webhook_ingest::Settings::from_overrides(HashMap::new());

    // Assert
    assert!(rows.unwrap_err().to_string().contains("webhook.ledger_batch_max_rows"));
    let committers = committers.unwrap_err().to_string();
    assert!(committers.contains("webhook.ledger_batch_committers"), "{committers}");
    assert!(linger.unwrap_err().to_string().contains("webhook.ledger_batch_linger_ms"));
    assert!(defaults.is_ok());
}

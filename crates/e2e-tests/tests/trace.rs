//! A donation webhook is one trace: webhook-ingest → Stripe event stream → campaign-api → usage
//! stream → usage-meter, linked only through the `traceparent` field of the stream entries.
//!
//! # Why the three services run in this process
//! The real apps are built with their library `build` functions (as each service's own tests do)
//! and share the test's Redis key prefix, so they talk through the same streams as in production.
//! Starting the three binaries as child processes would be closer to production, but a test can
//! only find binaries of its own package (`CARGO_BIN_EXE_*`); anything else would run whatever
//! stale binary sits in `target/`, or build them from inside the test. In process, the test runs
//! exactly the code it was compiled with and adds no build beyond this small test binary.
//!
//! # How this differs from three processes
//! A process has one global tracing subscriber, so the three apps share one `init_test_telemetry`
//! (the layer stack of `init_telemetry`, exporting OTLP/HTTP to the in-process
//! [`OtlpReceiver`]) and one resource: every span has the same `service.name`. Spans are told
//! apart by what they carry themselves: `service` on `http_request` spans (the app's name),
//! `group` on the stream consumer's spans (each consuming service has its own group), and the
//! code module otherwise. The parent links across services are not helped by sharing a process:
//! each consumer runs on its own task with no current span, and its `stream.entry` span gets its
//! parent only from the entry's `traceparent` — without it the span would start a new trace and
//! this test would fail. The test also reads those fields in Redis and checks they name the spans.
//!
//! One test per binary: the subscriber is global. It needs info-level spans: a `RUST_LOG` that
//! disables them (e.g. `RUST_LOG=warn`) makes it fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{ADMIN_TOKEN, CampaignApi, UsageMeter, WebhookIngest};
use platform_redis::fred::prelude::*;
use platform_redis::{RedisClients, RedisSettings, StreamName};
use platform_service::settings::{LogFormat, TelemetrySettings};
use platform_service::telemetry::{TelemetryGuard, init_test_telemetry};
use platform_testing::{
    OtlpReceiver, PostgresServer, ReceivedSpan, RedisServer, TestApp, TestAppBuilder, found_within,
    unique_prefix,
};
use serde_json::{Value, json};

const WEBHOOK_SECRET: &str = "whsec_e2e";
/// How long a bounded wait lasts.
const PATIENCE: Duration = Duration::from_secs(30);

/// The shared Redis and prefix, and a database of its own.
async fn app(prefix: &str, extra: &[(&str, &str)]) -> TestAppBuilder {
    let database = PostgresServer::shared().create_database().await.unwrap();
    common::app(&RedisServer::shared().url(), prefix, &database.url, extra)
}

async fn start_webhook_ingest(prefix: &str) -> TestApp {
    app(prefix, &[("APP__WEBHOOK__SECRETS", WEBHOOK_SECRET)]).await.spawn::<WebhookIngest>().await
}

async fn start_campaign_api(prefix: &str) -> TestApp {
    app(prefix, &[("APP__STRIPE_EVENTS__BLOCK_MS", "100")]).await.spawn::<CampaignApi>().await
}

async fn start_usage_meter(prefix: &str) -> TestApp {
    app(prefix, &[("APP__USAGE__BLOCK_MS", "100")]).await.spawn::<UsageMeter>().await
}

/// Creates an organisation and an active campaign through campaign-api's admin routes; returns
/// their ids.
async fn create_campaign(http: &reqwest::Client, campaign_api: &TestApp) -> (String, String) {
    let org: Value = http
        .post(format!("{}/api/admin/organisations", campaign_api.base))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"slug": "e2e-church", "name": "E2E Church"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let now = chrono::Utc::now();
    let campaign: Value = http
        .post(format!("{}/api/admin/organisations/e2e-church/campaigns", campaign_api.base))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({
            "name": "New roof",
            "description": "Traced end to end",
            "goalCents": 1_000_000,
            "startsAt": (now - chrono::Duration::hours(1)).to_rfc3339(),
            "endsAt": (now + chrono::Duration::days(7)).to_rfc3339(),
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (Some(org_id), Some(campaign_id)) = (org["id"].as_str(), campaign["id"].as_str()) else {
        panic!("organisation or campaign not created: {org} {campaign}");
    };
    (org_id.to_owned(), campaign_id.to_owned())
}

/// A `payment_intent.succeeded` event for the campaign, as Stripe sends it (trimmed).
fn donation_webhook(org_id: &str, campaign_id: &str, created: i64) -> String {
    json!({
        "id": "evt_e2e_trace",
        "object": "event",
        "api_version": "2020-08-27",
        "created": created,
        "livemode": false,
        "type": "payment_intent.succeeded",
        "data": {"object": {
            "id": "pi_e2e_trace",
            "object": "payment_intent",
            "amount": 2_500,
            "amount_received": 2_500,
            "currency": "usd",
            "payment_method_types": ["card"],
            "metadata": {"org_id": org_id, "campaign_id": campaign_id},
        }},
    })
    .to_string()
}

/// Exports what has finished so far (the batch exporter would wait up to 5 s) and waits for it.
async fn flush(telemetry: &std::sync::Arc<TelemetryGuard>) {
    let telemetry = telemetry.clone();
    tokio::task::spawn_blocking(move || telemetry.force_flush()).await.unwrap().unwrap();
}

/// The `traceparent` field of the only entry of `stream`.
async fn traceparent_of_entry(redis: &RedisClients, stream: StreamName) -> String {
    let entries: Vec<(String, HashMap<String, String>)> =
        redis.primary().xrange(redis.keys().stream(stream), "-", "+", None).await.unwrap();
    assert_eq!(entries.len(), 1, "one entry expected on {stream}: {entries:?}");
    entries[0].1.get("traceparent").cloned().unwrap_or_default()
}

/// Which service produced `span` (see the module doc): its `service` attribute, the consumer
/// group of a stream span, the crate of its code, or else its local parent's service.
fn service_of(span: &ReceivedSpan, by_id: &HashMap<&str, &ReceivedSpan>) -> Option<String> {
    if let Some(service) = span.attribute("service") {
        return Some(service.to_owned());
    }
    if span.name.starts_with("stream.")
        && let Some(group) = span.attribute("group")
    {
        return Some(group.to_owned());
    }
    let module = span.attribute("code.module.name").unwrap_or_default();
    let krate = module.split("::").next().unwrap_or_default();
    if ["webhook_ingest", "campaign_api", "usage_meter"].contains(&krate) {
        return Some(krate.replace('_', "-"));
    }
    let parent = by_id.get(span.parent_span_id.as_deref()?)?;
    service_of(parent, by_id)
}

fn is_named<'a>(
    spans: &'a [ReceivedSpan],
    name: &str,
    attribute: (&str, &str),
) -> Option<&'a ReceivedSpan> {
    spans.iter().find(|s| s.name == name && s.attribute(attribute.0) == Some(attribute.1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_donation_webhook_is_one_trace_from_webhook_ingest_through_campaign_api_to_usage_meter() {
    // Arrange
    let receiver = OtlpReceiver::start().unwrap();
    let telemetry = std::sync::Arc::new(
        init_test_telemetry(
            "platform-e2e",
            &TelemetrySettings {
                format: LogFormat::Pretty,
                filter: "info".to_owned(),
                otlp_endpoint: Some(receiver.endpoint()),
            },
        )
        .unwrap(),
    );
    let prefix = unique_prefix("e2e-trace");
    let webhook_ingest = start_webhook_ingest(&prefix).await;
    let campaign_api = start_campaign_api(&prefix).await;
    let usage_meter = start_usage_meter(&prefix).await;
    let http = reqwest::Client::new();
    let (org_id, campaign_id) = create_campaign(&http, &campaign_api).await;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let body = donation_webhook(&org_id, &campaign_id, now);
    let signature =
        webhook_ingest::domain::signature::sign_header(WEBHOOK_SECRET, now, body.as_bytes());

    // Act: Stripe delivers the webhook; wait until usage-meter counted the donation and the
    // usage-meter span that consumed it was exported.
    let response = http
        .post(format!("{}/api/webhooks/stripe", webhook_ingest.base))
        .header("Stripe-Signature", signature)
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let webhook_status = response.status().as_u16();
    let usage = found_within(PATIENCE, || async {
        let usage: Value = http
            .get(format!("{}/api/usage/{org_id}", usage_meter.base))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (usage["usage"]["donation_processed"] == 1).then_some(usage)
    })
    .await;
    let spans = found_within(PATIENCE, || async {
        flush(&telemetry).await;
        let spans = receiver.spans();
        is_named(&spans, "stream.entry", ("group", "usage-meter"))?;
        is_named(&spans, "stream.batch", ("group", "usage-meter"))?;
        Some(spans)
    })
    .await;
    let redis =
        RedisClients::connect(&RedisSettings::for_url(&RedisServer::shared().url(), &prefix))
            .await
            .unwrap();
    let stripe_traceparent = traceparent_of_entry(&redis, StreamName::StripeEvents).await;
    let usage_traceparent = traceparent_of_entry(&redis, StreamName::UsageEvents).await;

    // Assert: the donation went all the way through.
    assert_eq!(webhook_status, 200);
    assert!(usage.is_some(), "usage-meter never counted the donation");
    let spans = spans.unwrap_or_else(|| {
        panic!(
            "usage-meter's consumer spans never arrived ({} export requests; is RUST_LOG hiding info spans?): {:#?}",
            receiver.requests(),
            receiver.spans().iter().map(|s| &s.name).collect::<Vec<_>>()
        )
    });

    // webhook-ingest: the request span is the root; `ingest.accept` appended the entry.
    let request = spans
        .iter()
        .find(|s| {
            s.name == "http_request"
                && s.attribute("service") == Some("webhook-ingest")
                && s.attribute("http.route") == Some("/api/webhooks/stripe")
        })
        .expect("webhook-ingest's request span");
    assert_eq!(request.parent_span_id, None, "Stripe sends no traceparent: the trace starts here");
    let trace_id = request.trace_id.clone();
    let trace: Vec<ReceivedSpan> =
        spans.iter().filter(|s| s.trace_id == trace_id).cloned().collect();
    let by_id: HashMap<&str, &ReceivedSpan> =
        trace.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let accept = trace.iter().find(|s| s.name == "ingest.accept").expect("ingest.accept span");
    assert_eq!(accept.parent_span_id.as_deref(), Some(request.span_id.as_str()));
    assert_eq!(stripe_traceparent, format!("00-{trace_id}-{}-01", accept.span_id));

    // campaign-api: its consume span is a child of the webhook-ingest span that appended the
    // entry, and its usage event carries the consume span on.
    let donation = is_named(&trace, "stream.entry", ("group", "campaign-api"))
        .expect("campaign-api's consume span in the webhook's trace");
    assert_eq!(donation.parent_span_id.as_deref(), Some(accept.span_id.as_str()));
    assert_eq!(donation.attribute("outcome"), Some("ack"));
    assert_eq!(usage_traceparent, format!("00-{trace_id}-{}-01", donation.span_id));

    // usage-meter: its consume span is a child of campaign-api's, and the batch span that
    // committed it (a trace of its own) links to it.
    let counted = is_named(&trace, "stream.entry", ("group", "usage-meter"))
        .expect("usage-meter's consume span in the webhook's trace");
    assert_eq!(counted.parent_span_id.as_deref(), Some(donation.span_id.as_str()));
    assert_eq!(counted.attribute("outcome"), Some("ack"));
    let batch = spans
        .iter()
        .find(|s| {
            s.name == "stream.batch"
                && s.attribute("group") == Some("usage-meter")
                && s.links.contains(&(trace_id.clone(), counted.span_id.clone()))
        })
        .expect("usage-meter's batch span linked to the consume span");
    assert_ne!(batch.trace_id, trace_id);

    // The trace holds spans of exactly the three services, each attributable.
    let services: HashSet<Option<String>> = trace.iter().map(|s| service_of(s, &by_id)).collect();
    let expected: HashSet<Option<String>> = ["webhook-ingest", "campaign-api", "usage-meter"]
        .into_iter()
        .map(|s| Some(s.to_owned()))
        .collect();
    assert_eq!(services, expected, "{trace:#?}");

    usage_meter.stop().await;
    campaign_api.stop().await;
    webhook_ingest.stop().await;
}

//! The service's Prometheus metrics, registered on the shared registry (`/metrics`).

use platform_service::metrics::Metrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

/// Counters and the latency histogram of `POST /api/webhooks/stripe`. Cheap to clone.
#[derive(Clone, Debug)]
pub struct WebhookMetrics {
    pub received: Counter,
    pub verified: Counter,
    pub rejected: Family<ReasonLabel, Counter>,
    pub duplicates: Counter,
    pub streamed: Counter,
    pub ignored: Counter,
    pub replayed: Counter,
    pub latency: Histogram,
    /// Rows per batched ledger check / insert (group commit).
    pub touch_batch_rows: Histogram,
    pub insert_batch_rows: Histogram,
}

impl WebhookMetrics {
    pub fn register(metrics: &Metrics) -> Self {
        let this = Self {
            received: Counter::default(),
            verified: Counter::default(),
            rejected: Family::default(),
            duplicates: Counter::default(),
            streamed: Counter::default(),
            ignored: Counter::default(),
            replayed: Counter::default(),
            // 100 µs .. ~3.3 s
            latency: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            // 1 .. 512 rows
            touch_batch_rows: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
            insert_batch_rows: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
        };
        metrics.register("webhook_received", "Webhook deliveries received", this.received.clone());
        metrics.register(
            "webhook_verified",
            "Deliveries whose Stripe-Signature verified",
            this.verified.clone(),
        );
        metrics.register(
            "webhook_rejected",
            "Deliveries answered with an error, by reason",
            this.rejected.clone(),
        );
        metrics.register(
            "webhook_duplicates",
            "Deliveries of an event id already handed off",
            this.duplicates.clone(),
        );
        metrics.register(
            "webhook_streamed",
            "Events appended to the Stripe stream",
            this.streamed.clone(),
        );
        metrics.register(
            "webhook_ignored",
            "Events recorded but not streamed (type not allowed)",
            this.ignored.clone(),
        );
        metrics.register(
            "webhook_replayed",
            "Events re-published by an admin",
            this.replayed.clone(),
        );
        metrics.register(
            "webhook_ingest_duration_seconds",
            "Time from body read to answer of a delivery",
            this.latency.clone(),
        );
        metrics.register(
            "webhook_ledger_touch_batch_rows",
            "Ledger checks run together in one statement (group commit)",
            this.touch_batch_rows.clone(),
        );
        metrics.register(
            "webhook_ledger_insert_batch_rows",
            "Ledger inserts committed together in one statement and commit (group commit)",
            this.insert_batch_rows.clone(),
        );
        this
    }

    pub fn reject(&self, reason: &str) {
        self.rejected.get_or_create(&ReasonLabel { reason: reason.to_owned() }).inc();
    }
}

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

/// Counters and histograms of the webhook route. Cheap to clone.
#[derive(Clone, Debug)]
pub struct WebhookMetrics {
    pub received: Counter,
    pub verified: Counter,
    pub rejected: Family<ReasonLabel, Counter>,
    pub recorded: Counter,
    pub duplicates: Counter,
    pub ignored: Counter,
    pub unprocessable: Family<ReasonLabel, Counter>,
    pub replayed: Counter,
    pub latency: Histogram,
    /// Rows per batched ledger insert (group commit).
    pub insert_batch_rows: Histogram,
}

impl WebhookMetrics {
    pub fn register(metrics: &Metrics) -> Self {
        let this = Self {
            received: Counter::default(),
            verified: Counter::default(),
            rejected: Family::default(),
            recorded: Counter::default(),
            duplicates: Counter::default(),
            ignored: Counter::default(),
            unprocessable: Family::default(),
            replayed: Counter::default(),
            // 100 µs .. ~3.3 s
            latency: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            // 1 .. 512 rows
            insert_batch_rows: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
        };
        let counters = [
            ("webhook_received", "Webhook deliveries received", &this.received),
            ("webhook_verified", "Deliveries whose Stripe-Signature verified", &this.verified),
            (
                "webhook_recorded",
                "New events recorded in the ledger for the stream",
                &this.recorded,
            ),
            (
                "webhook_duplicates",
                "Deliveries of an event id already in the ledger",
                &this.duplicates,
            ),
            (
                "webhook_ignored",
                "Events recorded but not streamed (type not allowed)",
                &this.ignored,
            ),
            ("webhook_replayed", "Events queued again by an admin", &this.replayed),
        ];
        for (name, help, counter) in counters {
            metrics.register(name, help, counter.clone());
        }
        metrics.register(
            "webhook_rejected",
            "Deliveries answered with an error, by reason",
            this.rejected.clone(),
        );
        metrics.register(
            "webhook_unprocessable",
            "Authentic events recorded as unprocessable, by reason",
            this.unprocessable.clone(),
        );
        metrics.register(
            "webhook_ingest_duration_seconds",
            "Time from body read to answer of a delivery",
            this.latency.clone(),
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

    pub fn unprocessable(&self, reason: &str) {
        self.unprocessable.get_or_create(&ReasonLabel { reason: reason.to_owned() }).inc();
    }
}

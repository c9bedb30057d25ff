//! usage-meter's own Prometheus metrics, registered on the service's [`Metrics`] registry.

use platform_service::metrics::Metrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    /// `stream` or `http`.
    pub source: &'static str,
    /// `accepted` (stream: queued with its ack), `counted`, `duplicate`, `rejected`.
    pub result: &'static str,
}

/// Counters of events and flushes. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct UsageMetrics {
    events: Family<EventLabels, Counter>,
    flushed_rows: Counter,
    flush_failures: Counter,
    restores: Counter,
}

impl UsageMetrics {
    pub fn register(metrics: &Metrics) -> Self {
        let this = Self::default();
        metrics.register("usage_events", "Usage events by source and result", this.events.clone());
        metrics.register(
            "usage_flushed_rows",
            "Counter rows copied to Postgres",
            this.flushed_rows.clone(),
        );
        metrics.register(
            "usage_flush_failures",
            "Failed copies of counters to Postgres",
            this.flush_failures.clone(),
        );
        metrics.register(
            "usage_restores",
            "Restores of the Redis counters from Postgres after a Redis data loss",
            this.restores.clone(),
        );
        this
    }

    fn add(&self, source: &'static str, result: &'static str, n: usize) {
        if n > 0 {
            self.events.get_or_create(&EventLabels { source, result }).inc_by(n as u64);
        }
    }

    pub fn stream_events(&self, accepted: usize, dead_lettered: usize) {
        self.add("stream", "accepted", accepted);
        self.add("stream", "rejected", dead_lettered);
    }

    pub fn http_events(&self, counted: usize, duplicates: usize, rejected: usize) {
        self.add("http", "counted", counted);
        self.add("http", "duplicate", duplicates);
        self.add("http", "rejected", rejected);
    }

    pub fn flushed(&self, rows: usize) {
        self.flushed_rows.inc_by(rows as u64);
    }

    pub fn flush_failed(&self) {
        self.flush_failures.inc();
    }

    pub fn restored(&self) {
        self.restores.inc();
    }
}

//! The refresh's Prometheus metrics, registered on the service's registry.

use std::sync::atomic::AtomicU64;

use platform_service::metrics::Metrics;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

/// Handles to update; cheap to clone.
#[derive(Debug, Clone)]
pub struct RefreshMetrics {
    /// 1 when the latest refresh on this replica succeeded, 0 after a failure.
    pub last_success: Gauge,
    pub last_success_timestamp: Gauge<f64, AtomicU64>,
    pub failures: Counter,
    pub successes: Counter,
    pub duration: Histogram,
    pub invoices_walked: Counter,
    pub pages_fetched: Counter,
    pub upstream_retries: Counter,
    pub unique_customers: Gauge,
    /// Real-time mode: invoices received by the intake.
    pub intake_invoices: Counter,
    /// Real-time mode: ids the intake added to the live set (not seen before).
    pub intake_new_ids: Counter,
    /// Real-time mode: the live set's size after the latest intake or reconciling walk.
    pub live_customers: Gauge,
}

impl RefreshMetrics {
    pub fn register(metrics: &Metrics) -> Self {
        let this = Self {
            last_success: Gauge::default(),
            last_success_timestamp: Gauge::default(),
            failures: Counter::default(),
            successes: Counter::default(),
            // 0.1 s .. ~55 min
            duration: Histogram::new(exponential_buckets(0.1, 2.0, 16)),
            invoices_walked: Counter::default(),
            pages_fetched: Counter::default(),
            upstream_retries: Counter::default(),
            unique_customers: Gauge::default(),
            intake_invoices: Counter::default(),
            intake_new_ids: Counter::default(),
            live_customers: Gauge::default(),
        };
        metrics.register(
            "customer_count_last_refresh_success",
            "1 if the latest refresh on this replica succeeded, 0 if it failed",
            this.last_success.clone(),
        );
        metrics.register(
            "customer_count_last_success_timestamp_seconds",
            "Unix time of the latest successful refresh on this replica",
            this.last_success_timestamp.clone(),
        );
        metrics.register(
            "customer_count_refresh_failures",
            "Refreshes that failed (upstream, deadline, lock lost, storage)",
            this.failures.clone(),
        );
        metrics.register(
            "customer_count_refresh_successes",
            "Refreshes that produced a count",
            this.successes.clone(),
        );
        metrics.register(
            "customer_count_refresh_duration_seconds",
            "Wall time of a refresh walk, successful or not",
            this.duration.clone(),
        );
        metrics.register(
            "customer_count_invoices_walked",
            "Invoices read by successful walks",
            this.invoices_walked.clone(),
        );
        metrics.register(
            "customer_count_pages_fetched",
            "Invoice pages read by successful walks",
            this.pages_fetched.clone(),
        );
        metrics.register(
            "customer_count_upstream_retries",
            "simPRO requests retried after 5xx, 429, timeouts or dropped connections",
            this.upstream_retries.clone(),
        );
        metrics.register(
            "customer_count_unique_customers",
            "The latest count of distinct customers",
            this.unique_customers.clone(),
        );
        metrics.register(
            "customer_count_intake_invoices",
            "Invoices received by the real-time intake on this replica",
            this.intake_invoices.clone(),
        );
        metrics.register(
            "customer_count_intake_new_ids",
            "Customer ids the real-time intake added to the live set (not seen before)",
            this.intake_new_ids.clone(),
        );
        metrics.register(
            "customer_count_live_customers",
            "Size of the real-time live id set after the latest intake or reconciling walk here",
            this.live_customers.clone(),
        );
        this
    }
}

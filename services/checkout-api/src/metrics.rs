//! checkout-api's own Prometheus metrics (registered on the shared registry at build time). The
//! stores get only the gauges they set, so nothing below `domain` depends on this module.

use platform_service::metrics::Metrics;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use crate::domain::sessions::{Status, StoreLabel, Tier};

/// Counters and gauges of checkout sessions and the fallbacks. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct CheckoutMetrics {
    created: Family<StoreLabel, Counter>,
    completed: Counter,
    failed: Counter,
    store_fallback: Gauge,
    user_session_fallback: Gauge,
}

impl CheckoutMetrics {
    /// Registers every metric on `registry`.
    pub fn register(&self, registry: &Metrics) {
        registry.register(
            "checkout_sessions_created",
            "Checkout sessions created, by the tier that stored them (redis | postgres)",
            self.created.clone(),
        );
        registry.register(
            "checkout_sessions_completed",
            "Checkout sessions completed",
            self.completed.clone(),
        );
        registry.register(
            "checkout_sessions_failed",
            "Checkout sessions marked failed",
            self.failed.clone(),
        );
        registry.register(
            "checkout_session_store_fallback",
            "1 while new checkout sessions go to Postgres because Redis is unreachable",
            self.store_fallback.clone(),
        );
        registry.register(
            "checkout_user_session_fallback",
            "1 while user and guest sessions are kept in process memory because Redis is unreachable",
            self.user_session_fallback.clone(),
        );
    }

    pub fn created(&self, tier: Tier) {
        self.created.get_or_create(&StoreLabel { store: tier.as_str() }).inc();
    }

    pub fn finished(&self, status: Status) {
        match status {
            Status::Completed => self.completed.inc(),
            Status::Failed => self.failed.inc(),
            Status::Open => 0,
        };
    }

    /// The checkout-session store's fallback gauge (shared: clones set the same value).
    pub fn store_fallback(&self) -> Gauge {
        self.store_fallback.clone()
    }

    /// The user-session store's fallback gauge.
    pub fn user_session_fallback(&self) -> Gauge {
        self.user_session_fallback.clone()
    }
}

//! The service's own Prometheus metrics: cached reads by route and `X-Cache` status, open SSE
//! connections, donations recorded.

use platform_redis::cache::CacheStatus;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

/// Labels of `campaign_cache_reads`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    pub route: &'static str,
    pub status: &'static str,
}

/// The cached routes, as `campaign_cache_reads` labels them.
#[derive(Debug, Clone, Copy)]
pub enum CachedRoute {
    Active,
    Stats,
}

impl CachedRoute {
    const ALL: [CachedRoute; 2] = [CachedRoute::Active, CachedRoute::Stats];

    fn label(self) -> &'static str {
        match self {
            CachedRoute::Active => "active",
            CachedRoute::Stats => "stats",
        }
    }
}

const STATUSES: [CacheStatus; 3] = [CacheStatus::Hit, CacheStatus::Miss, CacheStatus::Stale];

/// The service's own metrics.
#[derive(Debug, Clone)]
pub struct ServiceMetrics {
    /// Cached reads by route and `X-Cache` status (hit rate = HIT / all).
    pub cache_reads: Family<CacheLabels, Counter>,
    /// `cache_reads`' counters by route and status, looked up once: the family's lock and label
    /// hashing cost more than the increment on a hot read.
    cache_read_counters: [[Counter; 3]; 2],
    /// Open SSE connections.
    pub sse_clients: Gauge,
    /// Donations recorded (first deliveries only).
    pub donations_recorded: Counter,
}

impl Default for ServiceMetrics {
    fn default() -> Self {
        let cache_reads = Family::<CacheLabels, Counter>::default();
        let cache_read_counters = CachedRoute::ALL.map(|route| {
            STATUSES.map(|status| {
                let labels = CacheLabels { route: route.label(), status: status.as_header() };
                cache_reads.get_or_create(&labels).clone()
            })
        });
        Self {
            cache_reads,
            cache_read_counters,
            sse_clients: Gauge::default(),
            donations_recorded: Counter::default(),
        }
    }
}

impl ServiceMetrics {
    pub fn cache_read(&self, route: CachedRoute, status: CacheStatus) {
        let status = match status {
            CacheStatus::Hit => 0,
            CacheStatus::Miss => 1,
            CacheStatus::Stale => 2,
        };
        self.cache_read_counters[route as usize][status].inc();
    }
}

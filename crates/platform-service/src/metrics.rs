//! Prometheus metrics (`/metrics`) and the per-request middleware that records them and opens the
//! request's tracing span.
//!
//! Services register their own metrics on [`Metrics::register`] while building; the request
//! middleware records `http_requests_total` and `http_request_duration_seconds` by method, route
//! pattern (never the raw path, to bound cardinality) and status. The rate limiter's counters are
//! read at scrape time ([`RateLimitCollector`]), and so is the backlog of the stream consumer
//! groups a service registers with [`Metrics::register_stream_group`]
//! ([`crate::stream_metrics`]) and whether each fallback is in use (`service_fallback`):
//! `/metrics` serves [`Metrics::scrape`].

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::web;
use platform_redis::ratelimit::RateLimiter;
use platform_redis::{RedisClients, StreamName};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry};
use tracing::Instrument;

use crate::context::FallbackStatus;
use crate::stream_metrics::{StreamGroupCollector, StreamGroups};

/// Labels of the HTTP metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: String,
    pub route: String,
    pub status: u16,
}

fn latency_histogram() -> Histogram {
    // 100 µs .. ~3.3 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

/// The registry and the HTTP metrics. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Metrics {
    /// The `service` label of every metric, and of each request's span.
    service: &'static str,
    registry: Arc<RwLock<Registry>>,
    requests: Family<HttpLabels, Counter>,
    durations: Family<HttpLabels, Histogram, fn() -> Histogram>,
    /// The consumer groups whose backlog is read at scrape time; created by the first
    /// registration.
    stream_groups: Arc<Mutex<Option<Arc<StreamGroups>>>>,
}

impl Metrics {
    /// A registry whose metrics all carry `service="<service>"`.
    pub fn new(service: &'static str) -> Self {
        let mut registry = Registry::with_labels(
            [(std::borrow::Cow::Borrowed("service"), std::borrow::Cow::Borrowed(service))]
                .into_iter(),
        );
        let requests = Family::<HttpLabels, Counter>::default();
        let durations: Family<HttpLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        registry.register("http_requests", "HTTP requests served", requests.clone());
        registry.register(
            "http_request_duration_seconds",
            "Time to produce the response",
            durations.clone(),
        );
        Self {
            service,
            registry: Arc::new(RwLock::new(registry)),
            requests,
            durations,
            stream_groups: Arc::default(),
        }
    }

    /// The service these metrics describe.
    pub fn service(&self) -> &'static str {
        self.service
    }

    /// Registers a service metric; keep a clone of `metric` to update it.
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        self.registry.write().unwrap_or_else(|p| p.into_inner()).register(name, help, metric);
    }

    /// Registers a metric that carries one more constant label (e.g. `stream="…"`).
    pub fn register_labelled(
        &self,
        label: (&'static str, &'static str),
        name: &str,
        help: &str,
        metric: impl Metric,
    ) {
        let label = (std::borrow::Cow::Borrowed(label.0), std::borrow::Cow::Borrowed(label.1));
        self.registry
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .sub_registry_with_label(label)
            .register(name, help, metric);
    }

    /// Registers a collector, read on every scrape.
    pub fn register_collector(&self, collector: impl Collector) {
        self.registry
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .register_collector(Box::new(collector));
    }

    /// Reports the backlog of consumer group `group` on `stream` (lag, pending, oldest pending
    /// age, dead letters; [`crate::stream_metrics`]), read from Redis on every scrape. Every
    /// service that runs a stream consumer calls this once per group.
    pub fn register_stream_group(&self, redis: &RedisClients, stream: StreamName, group: &str) {
        let mut slot = self.stream_groups.lock().unwrap_or_else(|p| p.into_inner());
        let groups = slot.get_or_insert_with(|| {
            let groups = Arc::new(StreamGroups::default());
            self.register_collector(StreamGroupCollector(groups.clone()));
            groups
        });
        groups.add(redis, stream, group);
    }

    /// Reads what the scrape-time metrics need from Redis, then encodes: what `/metrics` serves.
    pub async fn scrape(&self) -> String {
        let groups = self.stream_groups.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(groups) = groups {
            groups.refresh().await;
        }
        self.encode()
    }

    /// The Prometheus text exposition of the values held now (no Redis reads; see
    /// [`Metrics::scrape`]).
    pub fn encode(&self) -> String {
        let mut text = String::new();
        let registry = self.registry.read().unwrap_or_else(|p| p.into_inner());
        if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &registry) {
            tracing::error!(%error, "could not encode metrics");
        }
        text
    }

    fn observe(&self, labels: HttpLabels, seconds: f64) {
        self.durations.get_or_create(&labels).observe(seconds);
        self.requests.get_or_create(&labels).inc();
    }
}

/// `rate_limit_decisions_total{source}`, `rate_limit_denied_total`,
/// `rate_limit_lease_refills_ahead_total` and
/// `rate_limit_organisation_requests_total{tier,outcome}`, from the limiter's own atomics: counting them a second
/// time in Prometheus counters would put more writes on the hottest path.
#[derive(Debug)]
pub struct RateLimitCollector(pub RateLimiter);

impl Collector for RateLimitCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let stats = self.0.stats();
        let sources = [
            ("redis", stats.redis_decisions),
            ("lease", stats.lease_decisions),
            ("blocked_cache", stats.blocked_cache_hits),
            ("fallback", stats.fallback_decisions),
        ];
        {
            let mut decisions = encoder.encode_descriptor(
                "rate_limit_decisions",
                "Rate-limit decisions by where they were made (redis, lease, blocked_cache, fallback)",
                None,
                MetricType::Counter,
            )?;
            for (source, count) in sources {
                ConstCounter::new(count).encode(decisions.encode_family(&[("source", source)])?)?;
            }
        }
        ConstCounter::new(stats.denied).encode(encoder.encode_descriptor(
            "rate_limit_denied",
            "Requests the rate limiter refused",
            None,
            MetricType::Counter,
        )?)?;
        ConstCounter::new(stats.lease_refills_ahead).encode(encoder.encode_descriptor(
            "rate_limit_lease_refills_ahead",
            "Leases taken in the background before the held one ran out",
            None,
            MetricType::Counter,
        )?)?;
        let mut by_tier = encoder.encode_descriptor(
            "rate_limit_organisation_requests",
            "Requests of known organisations by their tier and the limiter's answer",
            None,
            MetricType::Counter,
        )?;
        for (tier, allowed, denied) in self.0.organisation_requests() {
            for (outcome, count) in [("allowed", allowed), ("denied", denied)] {
                let labels = [("tier", tier.as_str()), ("outcome", outcome)];
                ConstCounter::new(count).encode(by_tier.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// `service_fallback{component}`: 1 while a component of [`crate::AppContext::fallbacks`] serves on
/// its in-process fallback (the gauge behind `mode: fallback` in `/api/health/redis`).
pub(crate) struct FallbackCollector(pub Vec<Arc<dyn FallbackStatus>>);

impl std::fmt::Debug for FallbackCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.iter().map(|c| c.component())).finish()
    }
}

impl Collector for FallbackCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "service_fallback",
            "1 while the component serves on its in-process fallback because Redis is unreachable",
            None,
            MetricType::Gauge,
        )?;
        for component in &self.0 {
            let on = ConstGauge::new(i64::from(component.in_fallback()));
            on.encode(family.encode_family(&[("component", component.component())])?)?;
        }
        Ok(())
    }
}

/// Distinct paths whose route pattern a worker thread remembers before it starts over.
const ROUTE_CACHE_PATHS: usize = 4096;

thread_local! {
    /// (app's resource map, path) → route pattern, per worker thread. `match_pattern`
    /// re-runs the router's regexes on every call, which cost a hot parameterised route (e.g.
    /// `/api/public/campaigns/{orgSlug}/active`) about a seventh of its CPU; a path always maps to
    /// the same pattern, so the answer is kept. Bounded: cleared when full, so paths with ids in
    /// them cannot grow it without limit.
    static ROUTES: RefCell<HashMap<(usize, String), String>> = RefCell::new(HashMap::new());
}

/// The route pattern `req` matched (`unmatched` when none), remembered per path.
fn route_pattern(req: &ServiceRequest) -> String {
    // The map's address tells apps apart should one thread ever serve several (tests).
    let key = (std::ptr::from_ref(req.resource_map()) as usize, req.path().to_owned());
    if let Some(route) = ROUTES.with_borrow(|routes| routes.get(&key).cloned()) {
        return route;
    }
    let route = req.match_pattern().unwrap_or_else(|| "unmatched".to_owned());
    ROUTES.with_borrow_mut(|routes| {
        if routes.len() >= ROUTE_CACHE_PATHS {
            routes.clear();
        }
        routes.insert(key, route.clone());
    });
    route
}

/// Middleware (`middleware::from_fn(observe_requests)`): one span per request, child of the
/// caller's `traceparent` when present, and the HTTP metrics.
///
/// The span carries `service` (the [`Metrics`] service label): the exporter's resource already names the
/// process, but JSON log lines of the request and tests running several services in one process
/// (one global subscriber) need it on the span itself.
pub async fn observe_requests(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let route = route_pattern(&req);
    let method = req.method().to_string();
    let metrics = req.app_data::<web::Data<Metrics>>().cloned();
    let service = metrics.as_ref().map_or("unknown", |m| m.service());
    let span = tracing::info_span!(
        "http_request",
        service,
        http.method = %method,
        http.route = %route,
        http.status = tracing::field::Empty,
    );
    let traceparent = req.headers().get("traceparent").and_then(|v| v.to_str().ok());
    platform_redis::trace::set_parent_from(&span, traceparent);

    let started = Instant::now();
    let response = next.call(req).instrument(span.clone()).await?;
    let status = response.status().as_u16();
    span.record("http.status", status);
    if let Some(metrics) = metrics {
        metrics.observe(HttpLabels { method, route, status }, started.elapsed().as_secs_f64());
    }
    Ok(response)
}

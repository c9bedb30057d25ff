//! What the common routes and the services' handlers share: the [`AppContext`] (Redis pools,
//! rate limiter, Postgres pool, metrics registry, stop signal, fallback reporters), the
//! [`Shutdown`] signal, and [`connect_context`], which connects those dependencies at start.
//!
//! Its own module so that the routes (`health`), the metrics and the HTTP application all depend
//! on it and none of them on each other's internals.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use platform_redis::RedisClients;
use platform_redis::ratelimit::{LimiterMode, RateLimiter};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::metrics::{Metrics, RateLimitCollector};
use crate::settings::{CommonSettings, DatabaseSettings, READY_DEPENDENCIES};

/// The process-wide stop signal: draining flag for `/readyz`, cancellation for workers.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
    draining: Arc<AtomicBool>,
}

impl Shutdown {
    /// True from the stop signal on.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
    /// A token background workers select on; cancelled when the service stops.
    pub fn token(&self) -> CancellationToken {
        self.token.child_token()
    }
    /// Starts the stop sequence, as SIGTERM would.
    pub fn trigger(&self) {
        self.draining.store(true, Ordering::Relaxed);
        self.token.cancel();
    }
    /// Resolves once the stop sequence has started.
    pub async fn triggered(&self) {
        self.token.cancelled().await;
    }
}

/// What the common routes and the services' handlers share.
pub struct AppContext {
    pub service: &'static str,
    pub redis: RedisClients,
    /// Named policies from `[rate_limit]`; wrap routes with `RateLimit::new(limiter, "api")`.
    pub rate_limiter: RateLimiter,
    /// The service's Postgres pool, when it has a database.
    pub db: Option<PgPool>,
    pub metrics: Metrics,
    pub shutdown: Shutdown,
    /// Components that report their in-process fallback in `/api/health/redis`.
    pub fallbacks: Vec<Arc<dyn FallbackStatus>>,
    /// What `/readyz` requires (`http.ready_requires`); every check is reported regardless.
    pub ready_requires: Vec<String>,
}

impl std::fmt::Debug for AppContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppContext").field("service", &self.service).finish_non_exhaustive()
    }
}

impl AppContext {
    pub fn new(
        service: &'static str,
        redis: RedisClients,
        rate_limiter: RateLimiter,
        db: Option<PgPool>,
    ) -> Self {
        let limiter = rate_limiter.clone();
        let fallbacks =
            vec![fallback_status("rateLimiter", move || limiter.mode() == LimiterMode::Fallback)];
        let metrics = Metrics::new(service);
        metrics.register_collector(RateLimitCollector(rate_limiter.clone()));
        Self {
            service,
            redis,
            rate_limiter,
            db,
            metrics,
            shutdown: Shutdown::default(),
            fallbacks,
            ready_requires: READY_DEPENDENCIES.map(str::to_owned).to_vec(),
        }
    }
}

/// Something that can run on an in-process fallback when Redis is unreachable (rate limiter,
/// session store, …); reported by `/api/health/redis`.
pub trait FallbackStatus: Send + Sync {
    /// Short name, e.g. `rateLimiter`.
    fn component(&self) -> &'static str;
    /// True while the component is serving from its fallback.
    fn in_fallback(&self) -> bool;
}

/// A [`FallbackStatus`] from a closure.
pub fn fallback_status(
    component: &'static str,
    probe: impl Fn() -> bool + Send + Sync + 'static,
) -> Arc<dyn FallbackStatus> {
    struct Probe<F>(&'static str, F);
    impl<F: Fn() -> bool + Send + Sync> FallbackStatus for Probe<F> {
        fn component(&self) -> &'static str {
            self.0
        }
        fn in_fallback(&self) -> bool {
            (self.1)()
        }
    }
    Arc::new(Probe(component, probe))
}

/// Connects what every service needs (Redis pools, the rate limiter, and the Postgres pool when
/// `database` is given) and returns the context for [`Application::build`]. Neither dependency
/// has to be up: Redis reconnects in the background and the Postgres pool connects on first use.
pub async fn connect_context(
    service: &'static str,
    common: &CommonSettings,
    database: Option<&DatabaseSettings>,
) -> anyhow::Result<AppContext> {
    // Before any TLS client exists (tests build services without `init_telemetry`).
    crate::telemetry::install_crypto_provider();
    let redis = RedisClients::connect(&common.redis).await?;
    let rate_limiter = RateLimiter::new(&redis, &common.rate_limit)?;
    let db = database.map(crate::database::connect_lazy).transpose()?;
    let mut context = AppContext::new(service, redis, rate_limiter, db);
    context.ready_requires.clone_from(&common.http.ready_requires);
    Ok(context)
}

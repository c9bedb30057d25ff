//! The HTTP application every service runs: `Application::build` binds, `run_until_stopped` serves
//! until SIGTERM/SIGINT (or a programmatic stop) and drains.
//!
//! Shutdown order, so that rolling updates lose no request: the signal flips `/readyz` to 503
//! (draining), waits `http.drain_delay_ms` for load balancers to notice, then stops accepting and
//! gives in-flight requests `http.shutdown_timeout_secs`; background workers watch the same
//! [`Shutdown`] token and finish their current batch.
//!
//! The edge every request passes, outermost first: closing connections whose body was left
//! unfinished ([`close_unfinished`]), JSON error bodies ([`json_errors`]), CORS for listed origins
//! ([`CorsPolicy`]), metrics and the request span, the body deadline ([`BodyTimeout`]); the server
//! itself bounds head time (`http.header_timeout_ms`) and connections per worker
//! (`http.max_connections_per_worker`).

use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::middleware::{Condition, from_fn};
use actix_web::{App, HttpServer, web};
use platform_redis::RedisClients;
use platform_redis::ratelimit::{LimiterMode, RateLimiter};
use secrecy::SecretString;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::auth::AdminToken;
use crate::body_timeout::{BodyTimeout, close_unfinished};
use crate::cors::{CorsPolicy, only_for_allowed_origins};
use crate::error::{configure_extractors, json_errors, no_route};
use crate::health::{self, FallbackStatus};
use crate::metrics::{Metrics, RateLimitCollector, observe_requests};
use crate::settings::HttpSettings;

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
        let fallbacks = vec![health::fallback_status("rateLimiter", move || {
            limiter.mode() == LimiterMode::Fallback
        })];
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
            ready_requires: crate::settings::READY_DEPENDENCIES.map(str::to_owned).to_vec(),
        }
    }
}

/// A bound, not yet running HTTP server.
pub struct Application {
    port: u16,
    server: Server,
    context: web::Data<AppContext>,
    drain_delay: Duration,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application").field("port", &self.port).finish_non_exhaustive()
    }
}

impl Application {
    /// Binds `http.host:http.port` (port 0 picks a free one, as tests do) and builds the server
    /// with the common routes, the JSON error contract, metrics and tracing, plus `routes`.
    pub fn build<F>(
        http: &HttpSettings,
        admin_token: SecretString,
        context: AppContext,
        routes: F,
    ) -> std::io::Result<Self>
    where
        F: Fn(&mut web::ServiceConfig) + Send + Clone + 'static,
    {
        let listener = TcpListener::bind((http.host.as_str(), http.port))?;
        let port = listener.local_addr()?.port();
        let context = web::Data::new(context);
        let metrics = web::Data::new(context.metrics.clone());
        let token = web::Data::new(AdminToken(admin_token));
        let extractors = configure_extractors(http.body_limit_bytes);
        let body_timeout = BodyTimeout::new(Duration::from_millis(http.body_timeout_ms));
        let cors = CorsPolicy::new(http);
        let app_context = context.clone();
        let mut server = HttpServer::new(move || {
            // Runs once on each worker thread, inside the worker's runtime.
            if let Err(error) = app_context.redis.bind_worker() {
                tracing::warn!(%error, "no redis connections of its own for this worker; it uses the shared pools");
            }
            App::new()
                .wrap(body_timeout)
                .wrap(from_fn(observe_requests))
                .wrap(Condition::new(cors.enabled(), cors.middleware()))
                .wrap(Condition::new(cors.enabled(), from_fn(only_for_allowed_origins)))
                .wrap(json_errors())
                .wrap(from_fn(close_unfinished))
                .app_data(app_context.clone())
                .app_data(metrics.clone())
                .app_data(token.clone())
                .configure(extractors.clone())
                .configure(health::configure)
                .configure(routes.clone())
                .default_service(web::to(no_route))
        })
        .client_request_timeout(Duration::from_millis(http.header_timeout_ms))
        .max_connections(http.max_connections_per_worker)
        .listen(listener)?
        .disable_signals()
        .shutdown_timeout(http.shutdown_timeout_secs);
        if http.workers > 0 {
            server = server.workers(http.workers);
        }
        tracing::info!(service = context.service, port, "listening");
        Ok(Self {
            port,
            server: server.run(),
            context,
            drain_delay: Duration::from_millis(http.drain_delay_ms),
        })
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The shared context (tests use it to reach the stop signal or the pools).
    pub fn context(&self) -> web::Data<AppContext> {
        self.context.clone()
    }

    /// Serves until SIGTERM / SIGINT or [`Shutdown::trigger`], then drains as the module doc says.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let handle = self.server.handle();
        let shutdown = self.context.shutdown.clone();
        let drain_delay = self.drain_delay;
        let service = self.context.service;
        tokio::spawn(async move {
            tokio::select! {
                signal = stop_signal() => tracing::info!(signal, service, "stop signal received; draining"),
                () = shutdown.triggered() => tracing::info!(service, "stop requested; draining"),
            }
            shutdown.trigger();
            tokio::time::sleep(drain_delay).await;
            handle.stop(true).await;
        });
        self.server.await?;
        tracing::info!(service, "stopped");
        Ok(())
    }
}

async fn stop_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut sigterm) => tokio::select! {
            _ = sigterm.recv() => "SIGTERM",
            _ = tokio::signal::ctrl_c() => "SIGINT",
        },
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGTERM; only SIGINT stops the service");
            let _ = tokio::signal::ctrl_c().await;
            "SIGINT"
        }
    }
}

/// Connects what every service needs (Redis pools, the rate limiter, and the Postgres pool when
/// `database` is given) and returns the context for [`Application::build`]. Neither dependency
/// has to be up: Redis reconnects in the background and the Postgres pool connects on first use.
pub async fn connect_context(
    service: &'static str,
    common: &crate::settings::CommonSettings,
    database: Option<&crate::settings::DatabaseSettings>,
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

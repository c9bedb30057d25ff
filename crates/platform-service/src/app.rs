//! The HTTP application every service runs: `Application::build` binds, `run_until_stopped` serves
//! until SIGTERM/SIGINT (or a programmatic stop) and drains.
//!
//! Shutdown order, so that rolling updates lose no request: the signal flips `/readyz` to 503
//! (draining), waits `http.drain_delay_ms` for load balancers to notice, then stops accepting and
//! gives in-flight requests `http.shutdown_timeout_secs`; background workers watch the same
//! [`Shutdown`](crate::context::Shutdown) token and finish their current batch.
//!
//! The edge every request passes, outermost first: closing connections whose body was left
//! unfinished ([`close_unfinished`]), JSON error bodies ([`json_errors`]), CORS for listed origins
//! ([`CorsPolicy`]), metrics and the request span, the body deadline ([`BodyTimeout`]); the server
//! itself bounds head time (`http.header_timeout_ms`) and connections per worker
//! (`http.max_connections_per_worker`).

use std::net::TcpListener;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::middleware::{Condition, from_fn};
use actix_web::{App, HttpServer, web};
use secrecy::SecretString;

use crate::auth::AdminToken;
use crate::body_timeout::{BodyTimeout, close_unfinished};
use crate::context::AppContext;
use crate::cors::{CorsPolicy, only_for_allowed_origins};
use crate::error::{configure_extractors, json_errors, no_route};
use crate::health;
use crate::metrics::{FallbackCollector, observe_requests};
use crate::openapi::ServedDocument;
use crate::settings::HttpSettings;

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
    /// with the common routes, the JSON error contract, metrics and tracing, plus `routes`, which
    /// `api` describes (served whole at `/openapi.json`).
    pub fn build<F>(
        http: &HttpSettings,
        admin_token: SecretString,
        context: AppContext,
        api: utoipa::openapi::OpenApi,
        routes: F,
    ) -> std::io::Result<Self>
    where
        F: Fn(&mut web::ServiceConfig) + Send + Clone + 'static,
    {
        let listener = TcpListener::bind((http.host.as_str(), http.port))?;
        let port = listener.local_addr()?.port();
        context.metrics.register_collector(FallbackCollector(context.fallbacks.clone()));
        let context = web::Data::new(context);
        let metrics = web::Data::new(context.metrics.clone());
        let token = web::Data::new(AdminToken(admin_token));
        let document = web::Data::new(ServedDocument::new(context.service, api)?);
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
                .app_data(document.clone())
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

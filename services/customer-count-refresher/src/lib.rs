//! customer-count-refresher: the exact unique-customer count over all simPRO invoices, refreshed in the background.
//!
//! Layout: `routes` (HTTP) and `workers` (the in-process schedule) call `domain` (the refresh:
//! lock, walk, fenced store, fallbacks; the cron schedule; the real-time intake's input), which
//! reads and writes through `upstream` (the simPRO client and the walk over its pages) and
//! `store` (Redis: the count, the refresh status, the live id set). `main.rs` loads
//! [`Settings`] and either serves ([`build`]) or runs one refresh ([`refresh_once`], for a
//! Kubernetes CronJob); tests call [`build`] with port 0 and real Redis.

pub mod config;
pub mod domain;
pub mod error;
pub mod metrics;
pub mod routes;
pub mod store;
pub mod upstream;
pub mod workers;

use std::process::ExitCode;
use std::sync::Arc;

use platform_redis::RedisClients;
use platform_service::health::fallback_status;
use platform_service::metrics::Metrics;
use platform_service::{Application, connect_context};
use secrecy::SecretString;

pub use config::{RealtimeSettings, RefreshSettings, Settings, SimproSettings};
pub use domain::refresh::{RefreshReport, Refresher, Source};
pub use error::RefreshError;

/// The service name in logs, traces and metrics.
pub const SERVICE: &str = "customer-count-refresher";

/// Connects the dependencies, starts the schedule and binds the HTTP server (not yet serving).
pub async fn build(settings: Settings) -> anyhow::Result<Application> {
    let mut context = connect_context(SERVICE, &settings.common, None).await?;
    let refresher = Arc::new(Refresher::new(
        context.redis.clone(),
        settings.simpro.clone(),
        settings.refresh.clone(),
        settings.realtime.clone(),
        &context.metrics,
    )?);
    let redis = context.redis.clone();
    context.fallbacks.push(fallback_status("customerCount", move || !redis.is_connected()));
    if settings.refresh.schedule_enabled || settings.refresh.refresh_when_empty {
        tokio::spawn(workers::scheduler::run(refresher.clone(), context.shutdown.token()));
    }
    let admin_token: SecretString = settings.common.auth.admin_token.clone();
    Ok(Application::build(
        &settings.common.http,
        admin_token,
        context,
        <routes::ApiDoc as utoipa::OpenApi>::openapi(),
        routes::configure(refresher),
    )?)
}

/// How `refresh-once` ended; [`RefreshOnceOutcome::exit_code`] is the process's exit status.
#[derive(Debug)]
pub enum RefreshOnceOutcome {
    /// Walked and stored (exit 0).
    Refreshed(RefreshReport),
    /// Another replica holds the lock (exit 2): nothing was done, the CronJob may retry.
    Skipped,
    /// The refresh failed (exit 1); the previous count stays served.
    Failed(RefreshError),
}

impl RefreshOnceOutcome {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            RefreshOnceOutcome::Refreshed(report) if report.storage == Source::Redis => {
                ExitCode::SUCCESS
            }
            // A count only in this short-lived process's memory is lost at exit: not a success.
            RefreshOnceOutcome::Refreshed(_) | RefreshOnceOutcome::Failed(_) => ExitCode::from(1),
            RefreshOnceOutcome::Skipped => ExitCode::from(2),
        }
    }
}

/// One refresh and out: `customer-count-refresher refresh-once` (Kubernetes CronJob).
pub async fn refresh_once(settings: Settings) -> anyhow::Result<RefreshOnceOutcome> {
    platform_service::telemetry::install_crypto_provider();
    let redis = RedisClients::connect(&settings.common.redis).await?;
    let refresher = Refresher::new(
        redis.clone(),
        settings.simpro,
        settings.refresh,
        settings.realtime,
        &Metrics::new(SERVICE),
    )?;
    let outcome = match refresher.refresh().await {
        Ok(report) => RefreshOnceOutcome::Refreshed(report),
        Err(RefreshError::InProgress) => RefreshOnceOutcome::Skipped,
        Err(error) => RefreshOnceOutcome::Failed(error),
    };
    redis.quit().await;
    Ok(outcome)
}

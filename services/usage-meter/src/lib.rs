//! usage-meter: exactly-once usage counters, quotas, pricing tiers and monthly bills.
//!
//! `main.rs` loads [`Settings`], starts telemetry and runs the [`UsageMeter`] that [`build`]
//! returns: the HTTP [`Application`] plus the background workers (the usage-stream consumer and
//! the Postgres flusher, which also restores Redis after a data loss). Tests call [`build`] with
//! port 0 and real Redis and Postgres.
//!
//! Layout: [`routes`] (HTTP) and [`workers`] (the usage-stream consumer and the flusher loop)
//! call [`domain`] (metrics, months, validation, pricing tiers and bills, the Redis → Postgres
//! flush and the Postgres → Redis restore after a data loss), which reads and writes through
//! [`store`] (Redis: recording, reads, the Redis side of the flush and the restore) and [`db`]
//! (Postgres: the durable monthly copy); [`metrics`] registers the service's counters.

pub mod config;
pub mod db;
pub mod domain;
pub mod error;
pub mod metrics;
pub mod routes;
pub mod store;
pub mod workers;

use std::future::Future;
use std::time::Duration;

use actix_web::web;
use platform_redis::StreamName;
use platform_redis::streams::{StartFrom, StreamConsumer};
use platform_service::{AppContext, Application, Serve, TenantAuth, connect_context};
use secrecy::SecretString;
use tokio::task::JoinHandle;

use crate::domain::flush::Flusher;
use crate::domain::organisations::Directory;
use crate::metrics::UsageMetrics;
use crate::routes::State;
use crate::store::Fence;
use crate::workers::consumer::UsageHandler;
use crate::workers::organisations::OrganisationHandler;

pub use config::{Settings, UsageSettings};

/// The service name in logs, traces and metrics.
pub const SERVICE: &str = "usage-meter";

/// The HTTP application and the background workers.
#[derive(Debug)]
pub struct UsageMeter {
    app: Application,
    workers: JoinHandle<()>,
    state: web::Data<State>,
}

impl UsageMeter {
    pub fn port(&self) -> u16 {
        self.app.port()
    }

    pub fn context(&self) -> web::Data<AppContext> {
        self.app.context()
    }

    pub fn state(&self) -> web::Data<State> {
        self.state.clone()
    }

    /// Serves until stopped, then waits for the consumer to finish its batch and the final
    /// flush to Postgres.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let served = self.app.run_until_stopped().await;
        if let Err(error) = self.workers.await {
            tracing::error!(%error, "usage workers ended abnormally");
        }
        served
    }
}

impl Serve for UsageMeter {
    fn run_until_stopped(self) -> impl Future<Output = std::io::Result<()>> {
        UsageMeter::run_until_stopped(self)
    }
}

/// Connects the dependencies, migrates, starts the workers and binds the HTTP server.
pub async fn build(settings: Settings) -> anyhow::Result<UsageMeter> {
    let context = connect_context(SERVICE, &settings.common, Some(&settings.database)).await?;
    let pool = context.db.clone().ok_or_else(|| anyhow::anyhow!("database pool missing"))?;
    db::migrate(&pool).await?;
    let metrics = UsageMetrics::register(&context.metrics);
    let usage = &settings.usage;
    let fence = Fence::default();
    let flusher = Flusher::new(
        context.redis.clone(),
        pool.clone(),
        fence.clone(),
        usage.retention(),
        usage.rules().max_age,
        metrics.clone(),
    );
    // Restore at once if Redis lost data while this replica was down (recording is fenced until
    // then); a failure here is retried by every tick.
    if let Err(error) = flusher.tick().await {
        let chain = platform_service::error::error_chain(&error);
        tracing::warn!(error = %chain, "first usage check and flush failed; retrying every interval");
    }
    context.metrics.register_stream_group(
        &context.redis,
        StreamName::UsageEvents,
        &usage.consumer_group,
    );
    let directory = Directory::new(pool.clone(), Duration::from_millis(usage.plan_cache_ttl_ms));
    let state = web::Data::new(State {
        redis: context.redis.clone(),
        db: Some(pool.clone()),
        billing: settings.billing.clone(),
        retention: usage.retention(),
        rules: usage.rules(),
        max_http_events: usage.max_http_events,
        metrics: metrics.clone(),
        fence: fence.clone(),
        flusher: Some(flusher.clone()),
        directory: Some(directory.clone()),
    });

    // Bind first, so a port clash leaves no worker running.
    let redis = context.redis.clone();
    let context_metrics = context.metrics.clone();
    let cancel = context.shutdown.token();
    let admin_token: SecretString = settings.common.auth.admin_token.clone();
    // Organisations' external (IdP) ids are not known here yet: tokens must name the org id.
    let tenant_auth = web::Data::new(TenantAuth::from_settings(&settings.common.tenant_auth)?);
    let routes = routes::configure(state.clone(), context.rate_limiter.clone(), tenant_auth);
    let app = Application::build(
        &settings.common.http,
        admin_token,
        context,
        <routes::ApiDoc as utoipa::OpenApi>::openapi(),
        routes,
    )?;

    let organisations_task = settings.organisation_events.enabled.then(|| {
        let handler = OrganisationHandler {
            db: pool.clone(),
            directory,
            keys: redis.keys().clone(),
            retention: usage.retention(),
            rules: usage.rules(),
            fence: fence.clone(),
        };
        let mut consumer_settings =
            settings.organisation_events.consumer(StreamName::OrganisationEvents);
        // Every organisation ever published matters, not only those after the group appeared.
        consumer_settings.start_from = StartFrom::Beginning;
        context_metrics.register_stream_group(
            &redis,
            StreamName::OrganisationEvents,
            &consumer_settings.group,
        );
        let consumer = StreamConsumer::new(&redis, consumer_settings, cancel.clone());
        tokio::spawn(async move {
            if let Err(error) = consumer.run(&handler).await {
                tracing::error!(%error, "organisation stream consumer stopped with an error");
            }
        })
    });
    let consumer_task = if usage.consumer_enabled {
        let handler = UsageHandler::new(redis.keys().clone(), usage.retention(), usage.rules())
            .with_fence(fence)
            .with_metrics(metrics);
        let consumer = StreamConsumer::new(&redis, usage.consumer(), cancel.clone());
        Some(tokio::spawn(async move {
            if let Err(error) = consumer.run(&handler).await {
                tracing::error!(%error, "usage stream consumer stopped with an error");
            }
        }))
    } else {
        None
    };
    let before_final = async move {
        for task in [consumer_task, organisations_task].into_iter().flatten() {
            let _ = task.await;
        }
    };
    let workers = tokio::spawn(workers::flush::run(
        flusher,
        Duration::from_millis(usage.flush_interval_ms),
        cancel,
        before_final,
    ));
    Ok(UsageMeter { app, workers, state })
}

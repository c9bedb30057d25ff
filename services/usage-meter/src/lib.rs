//! usage-meter: exactly-once usage counters, quotas, pricing tiers and monthly bills.
//!
//! `main.rs` loads [`Settings`], starts telemetry and runs the [`UsageMeter`] that [`build`]
//! returns: the HTTP [`Application`] plus the background workers (the usage-stream consumer and
//! the Postgres flusher, which also restores Redis after a data loss). Tests call [`build`] with
//! port 0 and real Redis and Postgres.
//!
//! Modules: [`domain`] (metrics, months, validation), [`pricing`] (tiers, bills), [`store`]
//! (Redis: recording and reads), [`sync`] (Redis side of the flush and the restore), [`db`]
//! (Postgres), [`consumer`] (stream handler), [`flush`] (Redis → Postgres), [`recovery`]
//! (Postgres → Redis after a data loss), [`routes`] (HTTP).

pub mod consumer;
pub mod db;
pub mod domain;
pub mod error;
pub mod flush;
pub mod metrics;
pub mod pricing;
pub mod recovery;
pub mod routes;
pub mod store;
pub mod sync;

use std::time::Duration;

use actix_web::web;
use platform_redis::StreamName;
use platform_redis::streams::{ConsumerSettings, StartFrom, StreamConsumer};
use platform_service::settings::{
    CommonSettings, DatabaseSettings, ServiceSettings, SettingsError,
};
use platform_service::{AppContext, Application, TenantAuth, connect_context};
use secrecy::SecretString;
use serde::Deserialize;
use tokio::task::JoinHandle;

use crate::consumer::UsageHandler;
use crate::domain::{EventRules, Metric, MetricSet};
use crate::flush::Flusher;
use crate::metrics::UsageMetrics;
use crate::pricing::BillingSettings;
use crate::routes::State;
use crate::store::{Fence, Retention};

/// The service name in logs, traces and metrics.
pub const SERVICE: &str = "usage-meter";

/// This service's configuration.
#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    #[serde(flatten)]
    pub common: CommonSettings,
    pub database: DatabaseSettings,
    pub usage: UsageSettings,
    pub billing: BillingSettings,
}

/// `[usage]`: the stream consumer, retention, event rules and the Postgres flush.
#[derive(Debug, Clone, Deserialize)]
pub struct UsageSettings {
    pub consumer_enabled: bool,
    pub consumer_group: String,
    /// `beginning` (count events appended before the group existed) or `new`.
    pub start_from: String,
    pub batch_size: usize,
    pub block_ms: u64,
    pub claim_idle_ms: u64,
    pub max_deliveries: u64,
    pub counter_ttl_days: u64,
    pub events_ttl_days: u64,
    pub events_per_org: u64,
    pub idempotency_window_secs: u64,
    pub max_event_age_days: i64,
    pub max_future_skew_secs: i64,
    /// How often counters are copied to Postgres: the most a Redis data loss can cost.
    pub flush_interval_ms: u64,
    pub max_http_events: usize,
    /// Metrics whose idempotency keys are kept in Postgres with the counters, so their events
    /// redelivered after a Redis data loss are still counted once.
    pub durable_idempotency_metrics: Vec<String>,
}

impl UsageSettings {
    pub fn retention(&self) -> Retention {
        Retention {
            counter_ttl_secs: self.counter_ttl_days * 86_400,
            events_ttl_secs: self.events_ttl_days * 86_400,
            events_per_org: self.events_per_org,
            idempotency_window_secs: self.idempotency_window_secs,
            // Validated at load; an unknown name cannot get here.
            durable_marks: MetricSet::parse(&self.durable_idempotency_metrics).unwrap_or_default(),
        }
    }

    pub fn rules(&self) -> EventRules {
        EventRules {
            max_age: chrono::Duration::days(self.max_event_age_days),
            max_future_skew: chrono::Duration::seconds(self.max_future_skew_secs),
        }
    }

    pub fn consumer(&self) -> ConsumerSettings {
        let mut settings = ConsumerSettings::new(StreamName::UsageEvents, &self.consumer_group);
        settings.batch_size = self.batch_size;
        settings.block = Duration::from_millis(self.block_ms);
        settings.claim_idle = Duration::from_millis(self.claim_idle_ms);
        settings.max_deliveries = self.max_deliveries;
        settings.start_from =
            if self.start_from == "new" { StartFrom::New } else { StartFrom::Beginning };
        settings
    }

    fn validate(&self) -> Result<(), SettingsError> {
        let check = |ok: bool, key: &'static str, reason: &str| {
            if ok { Ok(()) } else { Err(SettingsError::invalid(key, reason)) }
        };
        check(
            matches!(self.start_from.as_str(), "beginning" | "new"),
            "usage.start_from",
            "must be beginning or new",
        )?;
        check(self.counter_ttl_days > 0, "usage.counter_ttl_days", "must be > 0")?;
        check(self.events_ttl_days > 0, "usage.events_ttl_days", "must be > 0")?;
        check(self.events_per_org > 0, "usage.events_per_org", "must be > 0")?;
        check(self.idempotency_window_secs > 0, "usage.idempotency_window_secs", "must be > 0")?;
        check(
            self.max_event_age_days > 0 && (self.max_event_age_days as u64) < self.counter_ttl_days,
            "usage.max_event_age_days",
            "must be > 0 and below counter_ttl_days (late events must find their month)",
        )?;
        check(self.max_future_skew_secs >= 0, "usage.max_future_skew_secs", "must be >= 0")?;
        check(
            (10..=3_600_000).contains(&self.flush_interval_ms),
            "usage.flush_interval_ms",
            "must be 10..=3600000",
        )?;
        for name in &self.durable_idempotency_metrics {
            let metric: Result<Metric, _> = name.parse();
            check(
                metric.is_ok_and(|m| !m.is_gauge()),
                "usage.durable_idempotency_metrics",
                "must name counter metrics (a gauge's repeat changes nothing)",
            )?;
        }
        check(
            (1..=10_000).contains(&self.max_http_events),
            "usage.max_http_events",
            "must be 1..=10000",
        )?;
        self.consumer().validate().map_err(|e| SettingsError::invalid("usage", e.to_string()))
    }
}

impl ServiceSettings for Settings {
    const DEFAULTS: &'static str = include_str!("../config/default.toml");

    fn validate(&self) -> Result<(), SettingsError> {
        self.common.validate()?;
        self.database.validate()?;
        self.usage.validate()?;
        self.billing.validate().map_err(|reason| SettingsError::invalid("billing", reason))?;
        Ok(())
    }
}

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
    });

    // Bind first, so a port clash leaves no worker running.
    let redis = context.redis.clone();
    let cancel = context.shutdown.token();
    let admin_token: SecretString = settings.common.auth.admin_token.clone();
    // Organisations' external (IdP) ids are not known here yet: tokens must name the org id.
    let tenant_auth = web::Data::new(TenantAuth::from_settings(&settings.common.tenant_auth)?);
    let routes = routes::configure(state.clone(), context.rate_limiter.clone(), tenant_auth);
    let app = Application::build(&settings.common.http, admin_token, context, routes)?;

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
        if let Some(task) = consumer_task {
            let _ = task.await;
        }
    };
    let workers = tokio::spawn(flush::run(
        flusher,
        Duration::from_millis(usage.flush_interval_ms),
        cancel,
        before_final,
    ));
    Ok(UsageMeter { app, workers, state })
}

//! usage-meter: exactly-once usage counters, quotas, pricing tiers and monthly bills.
//!
//! `main.rs` loads [`Settings`], starts telemetry and runs the [`UsageMeter`] that [`build`]
//! returns: the HTTP [`Application`] plus the background workers (the usage-stream consumer and
//! the Postgres flusher). Tests call [`build`] with port 0 and real Redis and Postgres.
//!
//! Modules: [`domain`] (metrics, months, validation), [`pricing`] (tiers, bills), [`store`]
//! (Redis), [`db`] (Postgres), [`consumer`] (stream handler), [`flush`] (Redis → Postgres),
//! [`routes`] (HTTP).

pub mod consumer;
pub mod db;
pub mod domain;
pub mod error;
pub mod flush;
pub mod metrics;
pub mod pricing;
pub mod routes;
pub mod store;

use std::time::Duration;

use actix_web::web;
use platform_redis::StreamName;
use platform_redis::streams::{ConsumerSettings, StartFrom, StreamConsumer};
use platform_service::settings::{
    CommonSettings, DatabaseSettings, ServiceSettings, SettingsError,
};
use platform_service::{AppContext, Application, connect_context};
use secrecy::SecretString;
use serde::Deserialize;
use tokio::task::JoinHandle;

use crate::consumer::UsageHandler;
use crate::domain::EventRules;
use crate::metrics::UsageMetrics;
use crate::pricing::BillingSettings;
use crate::routes::State;
use crate::store::Retention;

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
    pub flush_interval_secs: u64,
    pub max_http_events: usize,
}

impl UsageSettings {
    pub fn retention(&self) -> Retention {
        Retention {
            counter_ttl_secs: self.counter_ttl_days * 86_400,
            events_ttl_secs: self.events_ttl_days * 86_400,
            events_per_org: self.events_per_org,
            idempotency_window_secs: self.idempotency_window_secs,
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
        check(self.flush_interval_secs > 0, "usage.flush_interval_secs", "must be > 0")?;
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
    });

    // Bind first, so a port clash leaves no worker running.
    let redis = context.redis.clone();
    let cancel = context.shutdown.token();
    let admin_token: SecretString = settings.common.auth.admin_token.clone();
    let routes = routes::configure(state.clone(), context.rate_limiter.clone());
    let app = Application::build(&settings.common.http, admin_token, context, routes)?;

    let consumer_task = if usage.consumer_enabled {
        let handler = UsageHandler::new(redis.keys().clone(), usage.retention(), usage.rules())
            .with_metrics(metrics.clone());
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
        redis,
        pool,
        Duration::from_secs(usage.flush_interval_secs),
        cancel,
        metrics,
        before_final,
    ));
    Ok(UsageMeter { app, workers, state })
}

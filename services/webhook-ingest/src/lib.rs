//! webhook-ingest: verified, deduplicated, durable Stripe webhooks handed to a Redis stream.
//!
//! `main.rs` loads [`Settings`], starts telemetry and runs the [`Application`] that [`build`]
//! returns; tests call [`build`] with port 0 and real Redis and Postgres.
//!
//! Layers: [`routes`] (HTTP edge) → [`signature`] (pure check) and [`event`] (domain type) →
//! [`ingest`] (the exactly-once hand-off; its module doc explains the write order) → [`ledger`]
//! (Postgres) and `platform_redis` (dedup marker, stream).

pub mod batch;
pub mod error;
pub mod event;
pub mod ingest;
pub mod ledger;
pub mod metrics;
pub mod routes;
pub mod signature;

use std::time::Duration;

use actix_web::web;
use anyhow::Context;
use platform_service::settings::{
    CommonSettings, DatabaseSettings, ServiceSettings, SettingsError, string_list,
};
use platform_service::{Application, connect_context};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer};

use crate::batch::BatchLimits;
use crate::ingest::{AllowList, Ingest, IngestConfig};
use crate::metrics::WebhookMetrics;
use crate::routes::{RouteLimit, WebhookState};

/// The service name in logs, traces and metrics.
pub const SERVICE: &str = "webhook-ingest";

/// Stripe retries a failed delivery for up to three days; a done marker must outlive that.
const STRIPE_RETRY_WINDOW_SECS: u64 = 3 * 24 * 3600;

/// This service's configuration.
#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    #[serde(flatten)]
    pub common: CommonSettings,
    pub database: DatabaseSettings,
    pub webhook: WebhookSettings,
}

/// `[webhook]`: see `config/default.toml` for each key.
#[derive(Debug, Clone, Deserialize)]
pub struct WebhookSettings {
    #[serde(deserialize_with = "secret_list")]
    pub secrets: Vec<SecretString>,
    pub tolerance_secs: u64,
    #[serde(deserialize_with = "string_list")]
    pub stream_event_types: Vec<String>,
    pub stream_max_len: usize,
    pub claim_ttl_ms: u64,
    pub done_ttl_secs: u64,
    pub in_flight_wait_ms: u64,
    pub rate_limit: bool,
    pub rate_limit_policy: String,
    pub ledger_batch_max_rows: usize,
    pub ledger_batch_linger_ms: u64,
    pub ledger_batch_committers: usize,
}

fn secret_list<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<SecretString>, D::Error> {
    Ok(string_list(deserializer)?.into_iter().map(SecretString::from).collect())
}

impl WebhookSettings {
    fn validate(&self) -> Result<(), SettingsError> {
        if self.secrets.is_empty() || self.secrets.iter().any(|s| s.expose_secret().is_empty()) {
            return Err(SettingsError::invalid(
                "webhook.secrets",
                "at least one non-empty signing secret is required (set APP__WEBHOOK__SECRETS)",
            ));
        }
        if self.tolerance_secs == 0 {
            return Err(SettingsError::invalid("webhook.tolerance_secs", "must be > 0"));
        }
        if self.stream_max_len == 0 {
            return Err(SettingsError::invalid("webhook.stream_max_len", "must be > 0"));
        }
        if self.claim_ttl_ms < 100 {
            return Err(SettingsError::invalid("webhook.claim_ttl_ms", "must be at least 100"));
        }
        if self.done_ttl_secs <= STRIPE_RETRY_WINDOW_SECS {
            return Err(SettingsError::invalid(
                "webhook.done_ttl_secs",
                "must be longer than Stripe's 3-day retry window (259200 s)",
            ));
        }
        if !(1..=1000).contains(&self.ledger_batch_max_rows) {
            return Err(SettingsError::invalid(
                "webhook.ledger_batch_max_rows",
                "must be between 1 and 1000",
            ));
        }
        if self.ledger_batch_linger_ms > 1000 {
            return Err(SettingsError::invalid(
                "webhook.ledger_batch_linger_ms",
                "must be at most 1000 (every delivery may wait this long twice)",
            ));
        }
        if !(1..=16).contains(&self.ledger_batch_committers) {
            return Err(SettingsError::invalid(
                "webhook.ledger_batch_committers",
                "must be between 1 and 16",
            ));
        }
        if self.rate_limit_policy.is_empty() {
            return Err(SettingsError::invalid("webhook.rate_limit_policy", "must not be empty"));
        }
        Ok(())
    }
}

impl ServiceSettings for Settings {
    const DEFAULTS: &'static str = include_str!("../config/default.toml");

    fn validate(&self) -> Result<(), SettingsError> {
        self.common.validate()?;
        self.database.validate()?;
        self.webhook.validate()?;
        // Both batchers (checks, inserts) may hold a connection per committer at once; the rest
        // of the pool serves the cold paths (duplicates, ignored types, admin routes).
        if 2 * self.webhook.ledger_batch_committers >= self.database.max_connections as usize {
            return Err(SettingsError::invalid(
                "webhook.ledger_batch_committers",
                "2 x ledger_batch_committers must stay below database.max_connections",
            ));
        }
        Ok(())
    }
}

/// Connects the dependencies, migrates the ledger and binds the HTTP server (not yet serving).
pub async fn build(settings: Settings) -> anyhow::Result<Application> {
    let context = connect_context(SERVICE, &settings.common, Some(&settings.database)).await?;
    let db = context.db.clone().context("webhook-ingest needs its database")?;
    sqlx::migrate!().run(&db).await.context("migrate the webhook ledger")?;

    let webhook = &settings.webhook;
    let metrics = WebhookMetrics::register(&context.metrics);
    let config = IngestConfig {
        allow: AllowList::new(&webhook.stream_event_types),
        claim_ttl: Duration::from_millis(webhook.claim_ttl_ms),
        done_ttl: Duration::from_secs(webhook.done_ttl_secs),
        in_flight_wait: Duration::from_millis(webhook.in_flight_wait_ms),
        stream_max_len: webhook.stream_max_len,
        ledger_batch: BatchLimits {
            max_rows: webhook.ledger_batch_max_rows,
            linger: Duration::from_millis(webhook.ledger_batch_linger_ms),
            committers: webhook.ledger_batch_committers,
        },
    };
    let ingest = Ingest::new(context.redis.clone(), db.clone(), config, metrics.clone());
    let state = web::Data::new(WebhookState {
        ingest,
        db,
        secrets: webhook.secrets.clone(),
        tolerance: Duration::from_secs(webhook.tolerance_secs),
        body_limit: settings.common.http.body_limit_bytes,
        metrics,
    });
    let limit = RouteLimit {
        enabled: webhook.rate_limit && settings.common.rate_limit.enabled,
        limiter: context.rate_limiter.clone(),
        policy: webhook.rate_limit_policy.clone(),
    };
    let admin_token: SecretString = settings.common.auth.admin_token.clone();
    Ok(Application::build(
        &settings.common.http,
        admin_token,
        context,
        routes::configure(state, limit),
    )?)
}

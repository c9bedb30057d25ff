//! webhook-ingest: verified, deduplicated, durable Stripe webhooks relayed to a Redis stream.
//!
//! `main.rs` loads [`Settings`], starts telemetry and runs the [`Application`] that [`build`]
//! returns; tests call [`build`] with port 0 and real Redis and Postgres.
//!
//! Layers: [`routes`] (HTTP edge) → [`signature`] (pure check) → [`ingest`] (the event contract
//! and the ledger insert that acknowledges a delivery) → [`ledger`] (Postgres, the outbox);
//! [`relay`] moves ledger rows onto the stream in the background.

pub mod batch;
pub mod error;
pub mod ingest;
pub mod ledger;
pub mod metrics;
pub mod relay;
pub mod routes;
pub mod signature;

use std::sync::Arc;
use std::time::Duration;

use actix_web::web;
use anyhow::Context;
use platform_service::settings::{
    CommonSettings, DatabaseSettings, ServiceSettings, SettingsError, string_list,
};
use platform_service::{Application, connect_context};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer};
use tokio::sync::Notify;

use crate::batch::BatchLimits;
use crate::ingest::{AllowList, Ingest};
use crate::metrics::WebhookMetrics;
use crate::relay::{Relay, RelaySettings};
use crate::routes::{RouteLimit, WebhookState};

/// The service name in logs, traces and metrics.
pub const SERVICE: &str = "webhook-ingest";

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
    pub rate_limit: bool,
    pub rate_limit_policy: String,
    pub ledger_batch_max_rows: usize,
    pub ledger_batch_linger_ms: u64,
    pub ledger_batch_committers: usize,
    pub relay_batch: usize,
    pub relay_poll_ms: u64,
    pub relay_checkpoint_ms: u64,
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
        if !(1..=10_000).contains(&self.relay_batch) {
            return Err(SettingsError::invalid(
                "webhook.relay_batch",
                "must be between 1 and 10000",
            ));
        }
        if !(1..=60_000).contains(&self.relay_poll_ms) {
            return Err(SettingsError::invalid(
                "webhook.relay_poll_ms",
                "must be between 1 and 60000",
            ));
        }
        if !(100..=600_000).contains(&self.relay_checkpoint_ms) {
            return Err(SettingsError::invalid(
                "webhook.relay_checkpoint_ms",
                "must be between 100 and 600000",
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
                "must be at most 1000 (every delivery may wait this long)",
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
        // The committers may each hold a connection, the relay holds its leader lock on one and
        // reads with another; the rest of the pool serves the admin routes.
        if self.webhook.ledger_batch_committers + 2 >= self.database.max_connections as usize {
            return Err(SettingsError::invalid(
                "webhook.ledger_batch_committers",
                "ledger_batch_committers + 2 must stay below database.max_connections",
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
    let batch = BatchLimits {
        max_rows: webhook.ledger_batch_max_rows,
        linger: Duration::from_millis(webhook.ledger_batch_linger_ms),
        committers: webhook.ledger_batch_committers,
    };
    let relay_wake = Arc::new(Notify::new());
    let allow = AllowList::new(&webhook.stream_event_types);
    let ingest = Ingest::new(db.clone(), allow, batch, relay_wake.clone(), metrics.clone());
    let relay_settings = RelaySettings {
        batch: webhook.relay_batch,
        poll: Duration::from_millis(webhook.relay_poll_ms),
        checkpoint_every: Duration::from_millis(webhook.relay_checkpoint_ms),
        stream_max_len: webhook.stream_max_len,
    };
    let relay = Relay::new(db.clone(), &context.redis, relay_settings, relay_wake, metrics.clone());
    tokio::spawn(relay.run(context.shutdown.token()));
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

//! webhook-ingest: verified, deduplicated, durable Stripe webhooks relayed to a Redis stream.
//!
//! `main.rs` loads [`Settings`], starts telemetry and runs the [`Application`] that [`build`]
//! returns; tests call [`build`] with port 0 and real Redis and Postgres.
//!
//! Layout: [`routes`] (HTTP edge) call [`domain`] (the signature check, a pure function, and the
//! ingest: the event contract and the ledger insert that acknowledges a delivery), which writes
//! through [`db`] (Postgres: the ledger, the outbox of the Stripe stream, and the group commit of
//! its inserts); [`workers`] holds the ledger as the outbox the shared relay moves onto the stream in the
//! background; [`metrics`] registers the service's counters.

pub mod config;
pub mod db;
pub mod domain;
pub mod error;
pub mod metrics;
pub mod routes;
pub mod workers;

use std::sync::Arc;
use std::time::Duration;

use actix_web::web;
use anyhow::Context;
use platform_redis::StreamName;
use platform_service::relay::{Relay, RelayMetrics, RelaySettings};
use platform_service::{Application, connect_context};
use secrecy::SecretString;
use tokio::sync::Notify;

use crate::db::batch::BatchLimits;
use crate::domain::ingest::{AllowList, Ingest};
use crate::metrics::WebhookMetrics;
use crate::routes::{RouteLimit, WebhookState};
use crate::workers::relay::Ledger;

pub use config::{Settings, WebhookSettings};

/// The service name in logs, traces and metrics.
pub const SERVICE: &str = "webhook-ingest";

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
    let relay = Relay::new(
        Ledger,
        db.clone(),
        &context.redis,
        relay_settings,
        relay_wake,
        RelayMetrics::register(&context.metrics, StreamName::StripeEvents),
    );
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
        <routes::ApiDoc as utoipa::OpenApi>::openapi(),
        routes::configure(state, limit),
    )?)
}

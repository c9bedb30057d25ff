//! campaign-api: public campaign pages from a two-tier cache, admin writes, live donation updates,
//! and the organisations (tier, overrides) it publishes from its outbox.
//!
//! `main.rs` loads [`Settings`], starts telemetry and runs the [`Application`] that [`build`]
//! returns; tests call [`build`] with port 0 and real Redis and Postgres.
//!
//! Layout: `routes` (HTTP: public reads, SSE, admin writes, tenant tokens) and `workers` (the
//! Stripe donation consumer, the lifecycle ticker, the retry of owed invalidations, the outbox as
//! the shared relay reads it, the organisations' rate limits) call `store`
//! (Redis: the cached page reads and their invalidation, the `campaign_ended` update) and `db`
//! (Postgres: organisations, campaigns, donations), all of them speaking the types of `domain`
//! (validated input, the views); `metrics` holds the service's counters; `api_request` usage is
//! counted by the shared `platform_redis::usage` recorder.

pub mod config;
pub mod db;
pub mod domain;
pub mod error;
pub mod metrics;
pub mod routes;
pub mod store;
pub mod workers;

use std::sync::Arc;
use std::time::Duration;

use actix_web::web;
use anyhow::Context as _;
use platform_redis::StreamName;
use platform_redis::cache::{Cache, CacheSettings};
use platform_redis::pubsub::PubSub;
use platform_redis::usage::{UsageRecorder, UsageRecorderSettings};
use platform_service::health::fallback_status;
use platform_service::relay::{Relay, RelayMetrics};
use platform_service::{Application, connect_context};
use secrecy::SecretString;
use tokio::sync::Notify;

use crate::metrics::ServiceMetrics;
use crate::routes::State;
use crate::store::pages::Pages;
use crate::workers::donations::DonationHandler;
use crate::workers::relay::OrganisationOutbox;

pub use config::Settings;

/// The service name in logs, traces and metrics.
pub const SERVICE: &str = "campaign-api";

/// Connects the dependencies, migrates, starts the background workers (invalidation listener,
/// Stripe consumer, usage flusher, lifecycle ticker, outbox relay, organisation limits) and binds
/// the HTTP server (not yet serving).
pub async fn build(settings: Settings) -> anyhow::Result<Application> {
    let mut context = connect_context(SERVICE, &settings.common, Some(&settings.database)).await?;
    let db = context.db.clone().context("campaign-api needs a database")?;
    db::migrate(&db).await.context("running migrations")?;
    if settings.demo.seed {
        db::seed_demo(&db).await.context("seeding demo data")?;
    }
    let redis = context.redis.clone();
    let stop = context.shutdown.token();

    let cache_settings = CacheSettings {
        enabled: settings.cache.enabled,
        l1_max_entries: settings.cache.l1_max_entries,
        l1_ttl_max: Duration::from_millis(settings.cache.l1_ttl_max_ms),
        early_refresh_beta: settings.cache.early_refresh_beta,
    };
    let cache = Cache::new(&redis, cache_settings);
    let pubsub = PubSub::start(&redis).await?;
    cache.listen_for_invalidations(&pubsub).await?;
    let pages = Pages::new(cache, db.clone(), Duration::from_secs(settings.cache.ttl_seconds));
    workers::invalidations::spawn_repair(&pages, stop.clone());
    {
        let pubsub = pubsub.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            stop.cancelled().await;
            pubsub.stop().await;
        });
    }

    let metrics = ServiceMetrics::default();
    context.metrics.register(
        "campaign_cache_reads",
        "Cached reads by route and X-Cache status",
        metrics.cache_reads.clone(),
    );
    context.metrics.register(
        "campaign_sse_clients",
        "Open SSE connections",
        metrics.sse_clients.clone(),
    );
    context.metrics.register(
        "campaign_donations_recorded",
        "Donations recorded (first deliveries)",
        metrics.donations_recorded.clone(),
    );
    context.metrics.register(
        "campaign_cache_computes",
        "Cached pages computed from Postgres (one per coalesced miss)",
        pages.computes(),
    );
    let cache_redis = redis.clone();
    context.fallbacks.push(fallback_status("cache", move || !cache_redis.is_connected()));

    let usage_settings = UsageRecorderSettings {
        linger: Duration::from_millis(settings.usage.flush_interval_ms),
        max_tallies: settings.usage.max_orgs,
        stream_max_len: settings.usage.stream_max_len,
        ..UsageRecorderSettings::default()
    };
    let (usage, _) = UsageRecorder::start(&redis, usage_settings, stop.clone());

    if settings.stripe_events.enabled {
        let handler = DonationHandler {
            db: db.clone(),
            pages: pages.clone(),
            keys: redis.keys().clone(),
            usage_stream_max_len: settings.usage.stream_max_len,
            recorded: metrics.donations_recorded.clone(),
        };
        workers::donations::spawn(
            &redis,
            &settings.stripe_events,
            handler,
            &context.metrics,
            stop.clone(),
        )
        .await;
    }

    workers::lifecycle::spawn_lifecycle(
        db.clone(),
        pages.clone(),
        redis.clone(),
        Duration::from_millis(settings.live.lifecycle_tick_ms),
        stop.clone(),
    );

    let relay_wake = Arc::new(Notify::new());
    let relay_metrics = RelayMetrics::register(&context.metrics, StreamName::OrganisationEvents);
    let relay = Relay::new(
        OrganisationOutbox,
        db.clone(),
        &redis,
        settings.organisations.relay(),
        relay_wake.clone(),
        relay_metrics,
    );
    tokio::spawn(relay.run(stop.clone()));
    workers::limits::spawn(
        db.clone(),
        redis.clone(),
        context.rate_limiter.clone(),
        Duration::from_millis(settings.organisations.limits_reload_ms),
        stop.clone(),
    );

    let state = web::Data::new(State {
        db,
        redis,
        pages,
        pubsub,
        metrics,
        live: routes::events::StreamTimes {
            keep_alive: Duration::from_secs(settings.live.keep_alive_secs),
            max_duration: Duration::from_secs(settings.live.max_stream_secs),
        },
        stop,
        limits: settings.organisations.limits(),
        relay_wake,
    });
    let limiter = context.rate_limiter.clone();
    let policy = settings.public.rate_limit_policy.clone();
    let admin_token: SecretString = settings.common.auth.admin_token.clone();
    let signer = platform_service::TenantTokenSigner::from_settings(&settings.common.tenant_auth)?;
    let api = <routes::ApiDoc as utoipa::OpenApi>::openapi();
    Ok(Application::build(&settings.common.http, admin_token, context, api, move |cfg| {
        routes::configure(cfg, state.clone(), &limiter, &policy, &usage);
        routes::tokens::configure(cfg, signer.clone());
    })?)
}

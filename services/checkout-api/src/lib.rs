//! checkout-api: checkout sessions priced from its product catalog, coupon and delivery caches, user sessions, Stripe checkout with state synced to Redis.
//!
//! `main.rs` loads [`Settings`], starts telemetry and runs the [`Application`] that [`build`]
//! returns; tests call [`build`] with port 0 and real Redis and Postgres.
//!
//! Layout: `routes` (HTTP) and `workers` (the Stripe event consumer) call `domain` (checkout
//! sessions, catalog, pricing, user sessions, callers and Stripe payments: rules, types and the
//! operations over them), which reads and writes through `db` (Postgres: catalog, pricing, the
//! sessions' fallback tier), `store` (Redis: checkout and user sessions, Stripe records) and
//! `upstream` (the Stripe API); `metrics` registers the service's counters, `stripe` holds the
//! `[stripe]` settings.

pub mod config;
pub mod db;
pub mod domain;
pub mod error;
pub mod metrics;
pub mod routes;
pub mod store;
pub mod upstream;
pub mod workers;

use std::sync::Arc;
use std::time::Duration;

use actix_web::web;
use anyhow::Context as _;
use platform_redis::Role;
use platform_redis::cache::{Cache, CacheSettings};
use platform_redis::pubsub::PubSub;
use platform_service::health::fallback_status;
use platform_service::{Application, connect_context};
use secrecy::SecretString;

use crate::db::catalog::{self as catalog, Catalog};
use crate::db::pricing::Pricing;
use crate::db::sessions::PgSessions;
use crate::domain::checkout::Checkout;
use crate::domain::payments::StripeService;
use crate::domain::sessions::Limits;
use crate::metrics::CheckoutMetrics;
use crate::routes::{Policies, State};
use crate::store::sessions::{RedisSessions, SessionStore};
use crate::store::user_sessions::UserSessions;

pub use config::Settings;

/// The service name in logs, traces and metrics.
pub const SERVICE: &str = "checkout-api";

/// Runs the embedded migrations.
pub async fn migrate(db: &sqlx::PgPool) -> anyhow::Result<()> {
    sqlx::migrate!("./migrations").run(db).await?;
    Ok(())
}

/// Connects the dependencies, migrates, starts the cache invalidation listener and binds the
/// HTTP server (not yet serving).
pub async fn build(settings: Settings) -> anyhow::Result<Application> {
    let mut context = connect_context(SERVICE, &settings.common, Some(&settings.database)).await?;
    let db = context.db.clone().context("checkout-api needs a database")?;
    migrate(&db).await.context("running migrations")?;
    let redis = context.redis.clone();
    let stop = context.shutdown.token();

    let metrics = CheckoutMetrics::default();
    metrics.register(&context.metrics);

    let pricing_settings = &settings.pricing;
    let cache = Cache::new(
        &redis,
        CacheSettings {
            enabled: pricing_settings.cache_enabled,
            l1_max_entries: pricing_settings.l1_max_entries,
            l1_ttl_max: Duration::from_millis(pricing_settings.l1_ttl_max_ms),
            ..CacheSettings::default()
        },
    );
    let pubsub = PubSub::start(&redis).await?;
    cache.listen_for_invalidations(&pubsub).await?;
    tokio::spawn(async move {
        stop.cancelled().await;
        pubsub.stop().await;
    });
    let catalog = Catalog::new(
        db.clone(),
        cache.clone(),
        Duration::from_secs(pricing_settings.product_cache_ttl_secs),
    );
    if settings.demo.seed {
        let added = catalog::seed_demo(&db).await.context("seeding the demo catalog")?;
        for (sku, price_id) in added {
            catalog.invalidate(sku, &[price_id]).await;
        }
    }
    let pricing = Pricing::new(
        db.clone(),
        cache,
        Duration::from_secs(pricing_settings.coupon_cache_ttl_secs),
        Duration::from_secs(pricing_settings.delivery_cache_ttl_secs),
    );

    let ttl = Duration::from_secs(settings.checkout.session_ttl_secs);
    let store = SessionStore::new(
        RedisSessions::new(redis.role(Role::Sessions).clone(), redis.keys().clone(), ttl),
        PgSessions::new(db.clone(), ttl),
        ttl,
        metrics.store_fallback(),
    );
    let limits = Limits {
        max_items: settings.checkout.max_items,
        max_distance_km: settings.checkout.max_distance_km,
    };
    let checkout = Checkout::new(store.clone(), pricing, catalog, limits, metrics.clone());
    let stripe = StripeService::new(&settings.stripe, redis.clone(), Arc::new(checkout.clone()))?;
    workers::stripe_events::spawn(&stripe, context.shutdown.token()).await;
    context.metrics.register_stream_group(
        &redis,
        platform_redis::StreamName::StripeEvents,
        &settings.stripe.events.group,
    );
    let stripe = web::Data::new(stripe);
    let user_sessions = UserSessions::new(
        redis.role(Role::Sessions).clone(),
        redis.keys().clone(),
        settings.user_sessions.clone(),
        metrics.user_session_fallback(),
    );
    context.fallbacks.push(fallback_status("checkoutSessions", move || store.in_fallback()));
    let probe = user_sessions.clone();
    context.fallbacks.push(fallback_status("userSessions", move || probe.in_fallback()));

    let state = web::Data::new(State { checkout, user_sessions, redis, db });
    let policies = Policies {
        limiter: context.rate_limiter.clone(),
        api: settings.checkout.rate_limit_policy.clone(),
        guest: settings.user_sessions.guest_rate_limit_policy.clone(),
    };
    let admin_token: SecretString = settings.common.auth.admin_token.clone();
    Ok(Application::build(
        &settings.common.http,
        admin_token,
        context,
        <routes::ApiDoc as utoipa::OpenApi>::openapi(),
        move |cfg| {
            routes::configure(cfg, state.clone(), stripe.clone(), &policies);
        },
    )?)
}

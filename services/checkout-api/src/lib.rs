//! checkout-api: checkout sessions priced from its product catalog, coupon and delivery caches, user sessions, Stripe checkout with state synced to Redis.
//!
//! `main.rs` loads [`Settings`], starts telemetry and runs the [`Application`] that [`build`]
//! returns; tests call [`build`] with port 0 and real Redis and Postgres.
//!
//! Layout: `routes` (HTTP) → `sessions` (checkout sessions: validation, pricing, status; its
//! `store` holds them in Redis, or Postgres while Redis is down) / `catalog` (products: every unit
//! price, from Postgres through the shared cache) / `pricing` (coupons and delivery bands, the
//! same way) / `user_sessions` (cookie sessions in Redis with an in-memory fallback) / `caller`
//! (service token, user, guest or anonymous: who may do what) / `stripe` (customers, Checkout
//! sessions, the one sync of Stripe state into Redis and the Stripe-stream consumer); `metrics`
//! registers the service's counters.

pub mod caller;
pub mod catalog;
pub mod error;
pub mod fallback;
pub mod metrics;
pub mod pricing;
pub mod routes;
pub mod sessions;
pub mod stripe;
pub mod user_sessions;

use std::sync::Arc;
use std::time::Duration;

use actix_web::web;
use anyhow::Context as _;
use platform_redis::Role;
use platform_redis::cache::{Cache, CacheSettings};
use platform_redis::pubsub::PubSub;
use platform_service::health::fallback_status;
use platform_service::settings::{
    CommonSettings, DatabaseSettings, ServiceSettings, SettingsError,
};
use platform_service::{Application, connect_context};
use secrecy::SecretString;
use serde::Deserialize;

use crate::catalog::Catalog;
use crate::metrics::CheckoutMetrics;
use crate::pricing::Pricing;
use crate::routes::{Policies, State};
use crate::sessions::store::SessionStore;
use crate::sessions::{Checkout, Limits};
use crate::user_sessions::{UserSessionSettings, UserSessions};

/// The service name in logs, traces and metrics.
pub const SERVICE: &str = "checkout-api";

/// This service's configuration.
#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    #[serde(flatten)]
    pub common: CommonSettings,
    pub database: DatabaseSettings,
    #[serde(default)]
    pub checkout: CheckoutSettings,
    #[serde(default)]
    pub stripe: stripe::StripeSettings,
    #[serde(default)]
    pub pricing: PricingSettings,
    #[serde(default)]
    pub user_sessions: UserSessionSettings,
    #[serde(default)]
    pub demo: DemoSettings,
}

/// `[demo]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DemoSettings {
    /// Add the demo products to the catalog at start (those missing; `make run` turns it on).
    pub seed: bool,
}

/// `[checkout]`: checkout sessions.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CheckoutSettings {
    /// Sliding TTL: a session idle this long expires.
    pub session_ttl_secs: u64,
    /// Most items one cart may hold.
    pub max_items: usize,
    /// Largest accepted delivery distance (larger is a 400, not a band lookup).
    pub max_distance_km: f64,
    /// Rate-limit policy of every route except guest session creation.
    pub rate_limit_policy: String,
}

impl Default for CheckoutSettings {
    fn default() -> Self {
        Self {
            session_ttl_secs: 30 * 60,
            max_items: 100,
            max_distance_km: 1_000.0,
            rate_limit_policy: "api".to_owned(),
        }
    }
}

/// `[pricing]`: the coupon, delivery and product caches.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PricingSettings {
    /// false: every lookup reads Postgres.
    pub cache_enabled: bool,
    pub coupon_cache_ttl_secs: u64,
    pub delivery_cache_ttl_secs: u64,
    /// Products by sku and by Stripe price id (unknown ones included).
    pub product_cache_ttl_secs: u64,
    /// Bound of the in-process tier; 0 disables it.
    pub l1_max_entries: usize,
    /// Longest life of an in-process copy.
    pub l1_ttl_max_ms: u64,
}

impl Default for PricingSettings {
    fn default() -> Self {
        Self {
            cache_enabled: true,
            coupon_cache_ttl_secs: 600,
            delivery_cache_ttl_secs: 300,
            product_cache_ttl_secs: 600,
            l1_max_entries: 10_000,
            l1_ttl_max_ms: 30_000,
        }
    }
}

impl ServiceSettings for Settings {
    const DEFAULTS: &'static str = include_str!("../config/default.toml");

    fn validate(&self) -> Result<(), SettingsError> {
        self.common.validate()?;
        self.database.validate()?;
        self.stripe.validate()?;
        let checkout = &self.checkout;
        if checkout.session_ttl_secs == 0 {
            return Err(SettingsError::invalid("checkout.session_ttl_secs", "must be > 0"));
        }
        if !(1..=10_000).contains(&checkout.max_items) {
            return Err(SettingsError::invalid(
                "checkout.max_items",
                "must be between 1 and 10000",
            ));
        }
        if !checkout.max_distance_km.is_finite() || checkout.max_distance_km <= 0.0 {
            return Err(SettingsError::invalid("checkout.max_distance_km", "must be a number > 0"));
        }
        if self.pricing.coupon_cache_ttl_secs == 0 {
            return Err(SettingsError::invalid("pricing.coupon_cache_ttl_secs", "must be > 0"));
        }
        if self.pricing.delivery_cache_ttl_secs == 0 {
            return Err(SettingsError::invalid("pricing.delivery_cache_ttl_secs", "must be > 0"));
        }
        if self.pricing.product_cache_ttl_secs == 0 {
            return Err(SettingsError::invalid("pricing.product_cache_ttl_secs", "must be > 0"));
        }
        let sessions = &self.user_sessions;
        if sessions.ttl_secs == 0 {
            return Err(SettingsError::invalid("user_sessions.ttl_secs", "must be > 0"));
        }
        if sessions.memory_max_entries == 0 {
            return Err(SettingsError::invalid("user_sessions.memory_max_entries", "must be > 0"));
        }
        let cookie_ok = !sessions.cookie_name.is_empty()
            && sessions
                .cookie_name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !cookie_ok {
            return Err(SettingsError::invalid(
                "user_sessions.cookie_name",
                "must be letters, digits, `_` or `-`",
            ));
        }
        let policies = self.common.rate_limit.effective_policies();
        for (key, policy) in [
            ("checkout.rate_limit_policy", &checkout.rate_limit_policy),
            ("user_sessions.guest_rate_limit_policy", &sessions.guest_rate_limit_policy),
        ] {
            if !policies.contains_key(policy) {
                return Err(SettingsError::invalid(
                    key,
                    format!("no rate-limit policy named `{policy}`"),
                ));
            }
        }
        Ok(())
    }
}

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
        let added = catalog::storage::seed_demo(&db).await.context("seeding the demo catalog")?;
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

    let store = SessionStore::new(
        redis.role(Role::Sessions).clone(),
        redis.keys().clone(),
        db.clone(),
        Duration::from_secs(settings.checkout.session_ttl_secs),
        metrics.clone(),
    );
    let limits = Limits {
        max_items: settings.checkout.max_items,
        max_distance_km: settings.checkout.max_distance_km,
    };
    let checkout = Checkout::new(store.clone(), pricing, catalog, limits, metrics.clone());
    let stripe =
        stripe::StripeService::new(&settings.stripe, redis.clone(), Arc::new(checkout.clone()))?;
    stripe.spawn_consumer(context.shutdown.token()).await;
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
        metrics,
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
    Ok(Application::build(&settings.common.http, admin_token, context, move |cfg| {
        routes::configure(cfg, state.clone(), &policies);
        stripe::routes::configure(cfg, stripe.clone(), &policies.limiter);
    })?)
}

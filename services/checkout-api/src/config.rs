//! checkout-api's settings: the shared sections, its database, and `[checkout]`, `[pricing]`,
//! `[user_sessions]`, `[stripe]`, `[demo]` (defaults and comments: `config/default.toml`). The
//! `[stripe]` and `[user_sessions]` blocks are defined next to the code they configure.

use platform_service::settings::{
    CommonSettings, DatabaseSettings, ServiceSettings, SettingsError, require_positive,
};
use serde::Deserialize;

use crate::store::user_sessions::UserSessionSettings;
use crate::upstream::stripe::StripeSettings;

/// This service's configuration.
#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    #[serde(flatten)]
    pub common: CommonSettings,
    pub database: DatabaseSettings,
    pub checkout: CheckoutSettings,
    pub stripe: StripeSettings,
    pub pricing: PricingSettings,
    pub user_sessions: UserSessionSettings,
    pub demo: DemoSettings,
}

/// `[demo]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DemoSettings {
    /// Add the demo products to the catalog at start (those missing; `make run` turns it on).
    pub seed: bool,
}

/// `[checkout]`: checkout sessions.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
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

/// `[pricing]`: the coupon, delivery and product caches.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
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

impl ServiceSettings for Settings {
    const DEFAULTS: &'static str = include_str!("../config/default.toml");

    fn common(&self) -> &CommonSettings {
        &self.common
    }

    fn database(&self) -> Option<&DatabaseSettings> {
        Some(&self.database)
    }

    fn validate(&self) -> Result<(), SettingsError> {
        self.stripe.validate()?;
        let checkout = &self.checkout;
        if !(1..=10_000).contains(&checkout.max_items) {
            return Err(SettingsError::invalid(
                "checkout.max_items",
                "must be between 1 and 10000",
            ));
        }
        if !checkout.max_distance_km.is_finite() || checkout.max_distance_km <= 0.0 {
            return Err(SettingsError::invalid("checkout.max_distance_km", "must be a number > 0"));
        }
        let sessions = &self.user_sessions;
        require_positive(&[
            ("checkout.session_ttl_secs", checkout.session_ttl_secs),
            ("pricing.coupon_cache_ttl_secs", self.pricing.coupon_cache_ttl_secs),
            ("pricing.delivery_cache_ttl_secs", self.pricing.delivery_cache_ttl_secs),
            ("pricing.product_cache_ttl_secs", self.pricing.product_cache_ttl_secs),
            ("user_sessions.ttl_secs", sessions.ttl_secs),
            ("user_sessions.memory_max_entries", sessions.memory_max_entries as u64),
        ])?;
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
        self.common.require_policy("checkout.rate_limit_policy", &checkout.rate_limit_policy)?;
        self.common.require_policy(
            "user_sessions.guest_rate_limit_policy",
            &sessions.guest_rate_limit_policy,
        )
    }
}

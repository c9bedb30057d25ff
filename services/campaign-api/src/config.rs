//! campaign-api's settings: the shared sections, its database, and `[cache]`, `[public]`,
//! `[usage]`, `[live]`, `[stripe_events]`, `[demo]` (defaults and comments: `config/default.toml`).

use platform_redis::keys::StreamName;
use platform_redis::streams::GroupSettings;
use platform_service::settings::{
    CommonSettings, DatabaseSettings, ServiceSettings, SettingsError, require_positive,
};
use serde::Deserialize;

/// This service's configuration.
#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    #[serde(flatten)]
    pub common: CommonSettings,
    pub database: DatabaseSettings,
    pub cache: CampaignCacheSettings,
    pub public: PublicSettings,
    pub usage: UsageSettings,
    pub live: LiveSettings,
    pub stripe_events: GroupSettings,
    pub demo: DemoSettings,
}

/// `[cache]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CampaignCacheSettings {
    /// false: every read goes to Postgres (`X-Cache: MISS`).
    pub enabled: bool,
    /// Life of a cached page in Redis, and the `Cache-Control: max-age`.
    pub ttl_seconds: u64,
    /// Bound of the in-process tier; 0 disables it.
    pub l1_max_entries: usize,
    /// Longest life of an in-process copy.
    pub l1_ttl_max_ms: u64,
    /// XFetch beta of the early refresh (0 = never early).
    pub early_refresh_beta: f64,
}

/// `[usage]`: `api_request` counting (the shared `UsageRecorder`'s tallies).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageSettings {
    /// How often counted requests are appended to the usage stream.
    pub flush_interval_ms: u64,
    /// Most organisations counted between two successful flushes.
    pub max_orgs: usize,
    /// Approximate cap (`MAXLEN ~`) of the usage stream.
    pub stream_max_len: usize,
}

/// `[public]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicSettings {
    /// Rate-limit policy (from `[rate_limit]`) of the public routes, per organisation.
    pub rate_limit_policy: String,
}

/// `[live]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiveSettings {
    /// Seconds between SSE keep-alive comments (also how soon a gone client is noticed).
    pub keep_alive_secs: u64,
    /// How often campaign starts and ends are looked for.
    pub lifecycle_tick_ms: u64,
}

/// `[demo]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DemoSettings {
    /// Create the `demo` organisation with active campaigns at start.
    pub seed: bool,
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
        require_positive(&[
            ("cache.ttl_seconds", self.cache.ttl_seconds),
            ("live.keep_alive_secs", self.live.keep_alive_secs),
            ("live.lifecycle_tick_ms", self.live.lifecycle_tick_ms),
            ("usage.flush_interval_ms", self.usage.flush_interval_ms),
        ])?;
        if self.stripe_events.enabled {
            self.stripe_events
                .consumer(StreamName::StripeEvents)
                .validate()
                .map_err(|e| SettingsError::invalid("stripe_events", e.to_string()))?;
        }
        self.common.require_policy("public.rate_limit_policy", &self.public.rate_limit_policy)
    }
}

//! campaign-api's settings: the shared sections, its database, and `[cache]`, `[public]`,
//! `[usage]`, `[live]`, `[stripe_events]`, `[organisations]`, `[demo]` (defaults and comments: `config/default.toml`).

use std::collections::BTreeMap;
use std::time::Duration;

use platform_redis::keys::StreamName;
use platform_redis::streams::GroupSettings;
use platform_service::relay::RelaySettings;
use platform_service::settings::{
    CommonSettings, DatabaseSettings, ServiceSettings, SettingsError, require_positive,
};
use serde::Deserialize;

use crate::domain::{Tier, TierLimits};

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
    pub organisations: OrganisationSettings,
    pub demo: DemoSettings,
}

/// `[organisations]`: tier limits enforced here and the relay of the organisation outbox.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrganisationSettings {
    /// Campaigns running or scheduled at once, by tier; a tier not listed has no limit.
    pub concurrent_campaigns: BTreeMap<Tier, u32>,
    /// Most outbox rows per relay pass.
    pub relay_batch: usize,
    /// How often the outbox is read when no write of this replica woke the relay.
    pub relay_poll_ms: u64,
    /// How often the consumer groups' checkpoints are stored.
    pub relay_checkpoint_ms: u64,
    /// Approximate cap (`MAXLEN ~`) of the organisation stream.
    pub stream_max_len: usize,
    /// How often every organisation's rate limit is reloaded from Postgres (changes in between
    /// arrive on the organisation stream).
    pub limits_reload_ms: u64,
}

impl OrganisationSettings {
    pub fn limits(&self) -> TierLimits {
        TierLimits { concurrent_campaigns: self.concurrent_campaigns.clone() }
    }

    pub fn relay(&self) -> RelaySettings {
        RelaySettings {
            batch: self.relay_batch,
            poll: Duration::from_millis(self.relay_poll_ms),
            checkpoint_every: Duration::from_millis(self.relay_checkpoint_ms),
            stream_max_len: self.stream_max_len,
        }
    }
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
    /// Seconds after which the server ends an SSE stream (the browser reconnects).
    pub max_stream_secs: u64,
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
            ("live.max_stream_secs", self.live.max_stream_secs),
            ("live.lifecycle_tick_ms", self.live.lifecycle_tick_ms),
            ("usage.flush_interval_ms", self.usage.flush_interval_ms),
            ("organisations.relay_batch", self.organisations.relay_batch as u64),
            ("organisations.relay_poll_ms", self.organisations.relay_poll_ms),
            ("organisations.relay_checkpoint_ms", self.organisations.relay_checkpoint_ms),
            ("organisations.stream_max_len", self.organisations.stream_max_len as u64),
            ("organisations.limits_reload_ms", self.organisations.limits_reload_ms),
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

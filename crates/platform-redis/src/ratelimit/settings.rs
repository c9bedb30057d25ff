//! Rate-limit settings: named policies ([`PolicySettings`], the [`DEFAULT_POLICIES`]), the
//! `[rate_limit]` section ([`RateLimitSettings`]) and its validation.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{RedisError, Result};

/// Largest accepted `limit`; with [`MAX_WINDOW_SECS`] it keeps the script's arithmetic exact.
pub const MAX_LIMIT: u32 = 1_000_000;
/// Largest accepted requests per minute of a tier or an organisation's override: `MAX_LIMIT` per
/// second (a policy's limit is still capped at `MAX_LIMIT`).
pub const MAX_PER_MINUTE: u32 = MAX_LIMIT * 60;
/// Largest accepted `window_secs` (30 days).
pub const MAX_WINDOW_SECS: u64 = 30 * 24 * 3600;

/// One named policy: at most `limit` requests per `window_secs` per identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySettings {
    /// Requests allowed per window (1 to [`MAX_LIMIT`]).
    pub limit: u32,
    /// Window length in seconds (1 to [`MAX_WINDOW_SECS`]).
    pub window_secs: u64,
    /// Tokens a replica takes per Redis round trip and spends locally (0 = exact mode: one
    /// round trip per request). See the module doc for the bound.
    #[serde(default)]
    pub lease: u32,
    /// The limit of an identifier that is a known organisation comes from its tier
    /// ([`RateLimitSettings::tiers`]) or its own override instead of `limit` (see
    /// [`super::RateLimiter::set_organisation`]); other identifiers keep `limit`.
    #[serde(default)]
    pub by_organisation: bool,
}

impl PolicySettings {
    /// `limit` requests per `window_secs`, exact (no lease).
    pub const fn new(limit: u32, window_secs: u64) -> Self {
        Self { limit, window_secs, lease: 0, by_organisation: false }
    }

    /// The same policy spending leases of up to `lease` tokens (0 = exact).
    pub const fn with_lease(self, lease: u32) -> Self {
        Self { lease, ..self }
    }

    /// The window as a duration.
    pub fn window(&self) -> Duration {
        Duration::from_secs(self.window_secs)
    }
}

/// The policies every service gets without configuring anything.
pub const DEFAULT_POLICIES: [(&str, PolicySettings); 7] = [
    ("payment", PolicySettings::new(10, 60)),
    ("webhook", PolicySettings::new(10, 1)),
    ("api", PolicySettings::new(100, 60)),
    ("auth", PolicySettings::new(5, 15 * 60)),
    ("search", PolicySettings::new(30, 60)),
    ("booking", PolicySettings::new(5, 5 * 60)),
    ("guest_checkout", PolicySettings::new(3, 5 * 60)),
];

/// How the in-process fallback behaves while Redis is unreachable.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FallbackSettings {
    /// Identifiers tracked per policy in memory; see the module doc for what happens beyond it.
    #[serde(default = "default_max_identifiers")]
    pub max_identifiers: usize,
    /// While in fallback with a connection that looks up, how often one request probes Redis.
    #[serde(default = "default_probe_interval_ms")]
    pub probe_interval_ms: u64,
}

impl Default for FallbackSettings {
    fn default() -> Self {
        Self {
            max_identifiers: default_max_identifiers(),
            probe_interval_ms: default_probe_interval_ms(),
        }
    }
}

/// The `[rate_limit]` section of a service's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSettings {
    /// When false, [`super::RateLimiter::check`] allows everything without Redis and the middleware
    /// passes requests through without headers.
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    /// Policies by name; these override the [`DEFAULT_POLICIES`] of the same name and add new ones.
    #[serde(default)]
    pub policies: HashMap<String, PolicySettings>,
    #[serde(default)]
    /// The in-process fallback used while Redis is unreachable.
    pub fallback: FallbackSettings,
    /// Denied identifiers remembered per policy (see the module doc).
    #[serde(default = "default_blocked_cache_capacity")]
    pub blocked_cache_capacity: usize,
    /// Whether the middleware's default identifier is the first `X-Forwarded-For` hop rather
    /// than the peer address. Only safe behind a proxy that sets that header itself.
    #[serde(default)]
    pub trust_x_forwarded_for: bool,
    /// Longest time a lease is spent after its last grant before its unspent tokens go back
    /// (policies with `lease`).
    #[serde(default = "default_lease_max_age_ms")]
    pub lease_max_age_ms: u64,
    /// Replicas expected to share the limits: a lease takes at most `room / expected_replicas`.
    #[serde(default = "default_expected_replicas")]
    pub expected_replicas: u32,
    /// Requests per minute by organisation tier, for `by_organisation` policies (scaled to the
    /// policy's window).
    #[serde(default)]
    pub tiers: BTreeMap<String, u32>,
}

fn default_enabled() -> bool {
    true
}
fn default_max_identifiers() -> usize {
    10_000
}
fn default_probe_interval_ms() -> u64 {
    500
}
fn default_blocked_cache_capacity() -> usize {
    10_000
}
fn default_lease_max_age_ms() -> u64 {
    1_000
}
fn default_expected_replicas() -> u32 {
    2
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            policies: HashMap::new(),
            fallback: FallbackSettings::default(),
            blocked_cache_capacity: default_blocked_cache_capacity(),
            trust_x_forwarded_for: false,
            lease_max_age_ms: default_lease_max_age_ms(),
            expected_replicas: default_expected_replicas(),
            tiers: BTreeMap::new(),
        }
    }
}

impl RateLimitSettings {
    /// The defaults overlaid with the configured policies.
    pub fn effective_policies(&self) -> HashMap<String, PolicySettings> {
        let mut policies: HashMap<String, PolicySettings> =
            DEFAULT_POLICIES.iter().map(|(name, policy)| ((*name).to_owned(), *policy)).collect();
        policies.extend(self.policies.iter().map(|(name, policy)| (name.clone(), *policy)));
        policies
    }

    /// Checks what the types cannot; the message names the setting (and the policy).
    pub fn validate(&self) -> Result<()> {
        let mut names: Vec<&String> = self.policies.keys().collect();
        names.sort();
        for name in names {
            let policy = &self.policies[name];
            if name.is_empty() {
                return Err(RedisError::Config(
                    "rate_limit.policies: a policy name is empty".into(),
                ));
            }
            if policy.limit == 0 || policy.limit > MAX_LIMIT {
                return Err(RedisError::Config(format!(
                    "rate_limit.policies.{name}.limit must be between 1 and {MAX_LIMIT} (got {})",
                    policy.limit
                )));
            }
            if policy.window_secs == 0 || policy.window_secs > MAX_WINDOW_SECS {
                return Err(RedisError::Config(format!(
                    "rate_limit.policies.{name}.window_secs must be between 1 and {MAX_WINDOW_SECS} (got {})",
                    policy.window_secs
                )));
            }
            if policy.lease > policy.limit {
                return Err(RedisError::Config(format!(
                    "rate_limit.policies.{name}.lease must be at most its limit {} (got {})",
                    policy.limit, policy.lease
                )));
            }
        }
        for (tier, per_minute) in &self.tiers {
            if *per_minute == 0 || *per_minute > MAX_PER_MINUTE {
                return Err(RedisError::Config(format!(
                    "rate_limit.tiers.{tier} must be between 1 and {MAX_PER_MINUTE} (got {per_minute})"
                )));
            }
        }
        if self.lease_max_age_ms == 0 {
            return Err(RedisError::Config("rate_limit.lease_max_age_ms must be > 0".into()));
        }
        if self.expected_replicas == 0 {
            return Err(RedisError::Config("rate_limit.expected_replicas must be > 0".into()));
        }
        if self.fallback.max_identifiers == 0 {
            return Err(RedisError::Config(
                "rate_limit.fallback.max_identifiers must be > 0".into(),
            ));
        }
        if self.blocked_cache_capacity == 0 {
            return Err(RedisError::Config("rate_limit.blocked_cache_capacity must be > 0".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_policies_override_and_extend_the_seed_defaults() {
        let settings: RateLimitSettings = serde_json::from_value(serde_json::json!({
            "policies": { "api": { "limit": 7, "window_secs": 10 }, "export": { "limit": 1, "window_secs": 3600 } }
        }))
        .expect("settings deserialise");
        let policies = settings.effective_policies();
        assert!(settings.enabled);
        assert_eq!(policies["api"], PolicySettings::new(7, 10));
        assert_eq!(policies["export"], PolicySettings::new(1, 3600));
        assert_eq!(policies["auth"], PolicySettings::new(5, 900));
        assert_eq!(policies["guest_checkout"], PolicySettings::new(3, 300));
        assert_eq!(policies.len(), 8);
    }

    #[test]
    fn validation_names_the_bad_policy() {
        let mut settings = RateLimitSettings::default();
        settings.policies.insert("search".into(), PolicySettings::new(0, 60));
        let message = settings.validate().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains("rate_limit.policies.search.limit"), "{message}");

        settings.policies.insert("search".into(), PolicySettings::new(5, 0));
        let message = settings.validate().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains("rate_limit.policies.search.window_secs"), "{message}");
    }
}

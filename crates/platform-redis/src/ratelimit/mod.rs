//! Rate limiting: named policies, the Redis sliding-window limiter, its in-process blocked cache
//! and fallback, and the actix middleware ([`RateLimit`]) that puts it in front of routes.
//!
//! # Algorithm
//! Sliding window by the weighted two-window approximation: time is cut into fixed windows of the
//! policy's length `W`; one counter per window ([`crate::keys::Keys::rate_limit_window`], the
//! current and the previous share a hash tag), and the count "in the last `W`" is estimated as
//! `previous * (1 - elapsed / W) + current`. One Lua script (loaded once, called with `EVALSHA`,
//! reloaded on `NOSCRIPT`) reads both counters, increments the current one only when the request
//! is allowed and gives it a TTL of two windows, and answers allowed / limit / remaining / reset:
//! one round trip per decision. The exact arithmetic, shared with the fallback, is in `window.rs`.
//!
//! Error bound: the estimate assumes the previous window's requests were spread evenly. With `e`
//! ms elapsed it differs from the true sliding count by at most `previous * max(e, W - e) / W`
//! (so by less than `limit`), and in the adversarial worst case (a full burst at the very end of
//! one window, another at the end of the next) just under `2 * limit` requests pass within one
//! interval of length `W`; a fixed window allows `2 * limit`. On evenly spread traffic it is exact,
//! and no fixed window ever admits more than `limit`.
//!
//! `reset` in a [`Decision`]: while requests remain, the time until the current fixed window
//! ends; once none remain (and on every denial), the time until the estimate has decayed enough
//! for one more request to pass, assuming no other request arrives meanwhile. The window index and
//! elapsed time come from this process's wall clock, so replicas should run NTP.
//!
//! # Leases (per policy, `lease > 0`)
//! Exact mode (`lease = 0`, the default) costs one `EVALSHA` per allowed request. A policy with
//! `lease = N` lets each replica take up to `N` tokens per identifier in one `EVALSHA` (a second
//! script, same keys and arithmetic) and spend them in memory: the grant is
//! `min(N, max(1, room / rate_limit.expected_replicas))`, where `room` is what the exact script
//! would still allow one by one right now, and it is added to the current window's count at once.
//! A lease is spent only in the fixed window it was counted in and for at most
//! `rate_limit.lease_max_age_ms` after its last grant; after that its unspent tokens are given
//! back (subtracted from the count they were added to) by the same `EVALSHA` that takes the next
//! lease.
//!
//! Exactness: every admitted request was counted in Redis, in its own fixed window, before it was
//! admitted, and Redis never grants beyond `room`; so no fixed window ever admits more than
//! `limit` across all replicas, and over any interval of length `W` the bound of exact mode holds
//! (no over-admission is added). What leases cost is the other direction: tokens held unspent by
//! one replica are counted, so another replica can be denied while up to
//! `1.5 × lease × (replicas − 1)` tokens sit elsewhere (one and a half leases each, see below;
//! until they are spent, given back at that replica's next grant, or the window passes).
//! `X-RateLimit-Remaining` on a leased decision is Redis' remaining count at the last grant plus
//! this replica's unspent tokens, i.e. the shared estimate minus what this replica spent since;
//! other replicas' spending shows at the next grant (at most `lease_max_age_ms` later). Denials
//! come from Redis (a grant of 0) and then from the blocked cache, as in exact mode; the fallback
//! is the same in both modes (a live lease is still spent while Redis is down: its tokens are
//! counted there).
//!
//! ## Refills ahead of need
//! A lease that simply ran out would make every request arriving during the next grant's round
//! trip wait for it (and each of them would take a lease of its own). So the request whose token
//! takes a lease down to half of `lease` starts the next `EVALSHA` in the background and is
//! answered at once; the grant adds to the held tokens when it lands. A busy identifier's
//! requests wait on Redis only if half a lease is spent before that grant lands. The price: a
//! replica holds up to one and a half leases. Nothing is asked ahead when Redis had no room left
//! at the last grant, in fallback, or for leases under three tokens. A lease of a past window or
//! past `lease_max_age_ms` is renewed by the request that finds it dead, as before.
//!
//! # Redis calls saved and avoided
//! - Leases: one `EVALSHA` per lease instead of per request (above).
//! - Blocked cache: once an identifier is denied, later checks for it answer from memory until
//!   its reset instant, with no Redis command. Other replicas' requests can only delay the real
//!   reset, never advance it, so the cache never blocks longer than Redis would.
//! - Fallback: when the rate-limit pool is disconnected, or a command fails because Redis cannot be
//!   reached, decisions come from the same algorithm in memory (fail-safe: still limiting, per
//!   process). The switch is logged once (warn) and so is the return (info); [`RateLimiter::mode`]
//!   reports it for the health route. While in fallback on a connection that looks up, only one
//!   probe per `fallback.probe_interval_ms` goes to Redis, so a hung server does not add a command
//!   timeout to every request.

mod middleware;
mod window;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fred::prelude::{Client, ClientLike};
use fred::types::scripts::Script;
use serde::{Deserialize, Serialize};

use crate::client::{RedisClients, Role, RolePool};
use crate::error::{RedisError, Result};
use crate::keys::Keys;

pub use middleware::{Denied, RateLimit, RateLimitMiddleware};

use window::{BlockedCache, LEASE_LUA, Leases, LocalWindows, Outcome, SLIDING_WINDOW_LUA};

/// Largest accepted `limit`; with [`MAX_WINDOW_SECS`] it keeps the script's arithmetic exact.
pub const MAX_LIMIT: u32 = 1_000_000;
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
}

impl PolicySettings {
    /// `limit` requests per `window_secs`, exact (no lease).
    pub const fn new(limit: u32, window_secs: u64) -> Self {
        Self { limit, window_secs, lease: 0 }
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

/// The policies every service gets without configuring anything (seed 001's table).
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
    /// When false, [`RateLimiter::check`] allows everything without Redis and the middleware
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

/// Asked for a policy that is neither a default nor configured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown rate-limit policy `{0}`")]
pub struct UnknownPolicy(pub String);

/// Who answered a [`Decision`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionSource {
    /// The Lua script in Redis.
    Redis,
    /// The in-process cache of identifiers already denied; no Redis command was sent.
    BlockedCache,
    /// A token of a lease this replica holds; no Redis command was sent.
    Lease,
    /// The in-process limiter, because Redis is unreachable.
    Fallback,
    /// Rate limiting is switched off (`rate_limit.enabled = false`).
    Disabled,
}

/// The answer for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// The policy's limit per window.
    pub limit: u32,
    /// Requests still allowed now (after counting this one, if it was allowed).
    pub remaining: u32,
    /// See the module doc for exactly what this measures.
    pub reset_after: Duration,
    /// Set on denials: how long to wait before one more request can pass.
    pub retry_after: Option<Duration>,
    /// Who decided.
    pub source: DecisionSource,
}

/// Whether decisions currently come from Redis or from the in-process fallback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LimiterMode {
    /// Decisions come from the Lua script in Redis.
    Redis,
    /// Redis is unreachable; decisions come from the in-process limiter.
    Fallback,
}

impl LimiterMode {
    /// `redis` or `fallback`, as the health route shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            LimiterMode::Redis => "redis",
            LimiterMode::Fallback => "fallback",
        }
    }
}

/// Counters since start, for metrics and the health route.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RateLimitStats {
    /// Decisions made by a Lua script (one `EVALSHA` each; a lease grant counts once).
    pub redis_decisions: u64,
    /// Requests allowed from a lease held in process, without Redis.
    pub lease_decisions: u64,
    /// Leases taken in the background before the held one ran out (one `EVALSHA` each).
    pub lease_refills_ahead: u64,
    /// Denials answered from the in-process blocked cache, without Redis.
    pub blocked_cache_hits: u64,
    /// Decisions made in process because Redis was unreachable.
    pub fallback_decisions: u64,
    /// Denials from any source.
    pub denied: u64,
}

/// One policy with its in-process state.
#[derive(Debug)]
struct Policy {
    name: String,
    settings: PolicySettings,
    window_ms: u64,
    /// The blocked cache and the leases under one lock: a leased decision reads both, and each
    /// lock is a cache line every worker thread writes on every request.
    known: Mutex<Known>,
    local: Mutex<LocalWindows>,
}

/// What a replica knows of a policy's identifiers without asking Redis.
#[derive(Debug)]
struct Known {
    blocked: BlockedCache,
    leases: Leases,
}

#[derive(Debug, Default)]
struct Counters {
    redis_decisions: AtomicU64,
    lease_decisions: AtomicU64,
    lease_refills_ahead: AtomicU64,
    blocked_cache_hits: AtomicU64,
    fallback_decisions: AtomicU64,
    denied: AtomicU64,
}

struct Inner {
    pool: RolePool,
    keys: Keys,
    script: Script,
    lease_script: Script,
    lease_max_age: Duration,
    expected_replicas: u32,
    enabled: bool,
    trust_x_forwarded_for: bool,
    policies: HashMap<String, Arc<Policy>>,
    in_fallback: AtomicBool,
    /// Milliseconds since `started` of the last Redis probe while in fallback.
    last_probe_ms: AtomicU64,
    probe_interval_ms: u64,
    started: Instant,
    counters: Counters,
}

/// The rate limiter of one process. Cheap to clone (shared state behind an `Arc`).
#[derive(Clone)]
pub struct RateLimiter {
    inner: Arc<Inner>,
}

impl fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiter")
            .field("enabled", &self.inner.enabled)
            .field("mode", &self.mode())
            .field("policies", &self.inner.policies.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl RateLimiter {
    /// Builds the limiter on the `rate_limit()` pool of `clients`. Fails only on invalid settings;
    /// does not talk to Redis (the script is loaded by the first check that needs it).
    pub fn new(clients: &RedisClients, settings: &RateLimitSettings) -> Result<Self> {
        settings.validate()?;
        let policies = settings
            .effective_policies()
            .into_iter()
            .map(|(name, policy)| {
                let state = Policy {
                    name: name.clone(),
                    settings: policy,
                    window_ms: policy.window_secs.saturating_mul(1_000),
                    known: Mutex::new(Known {
                        blocked: BlockedCache::new(settings.blocked_cache_capacity),
                        leases: Leases::new(settings.blocked_cache_capacity, policy.lease / 2),
                    }),
                    local: Mutex::new(LocalWindows::new(settings.fallback.max_identifiers)),
                };
                (name, Arc::new(state))
            })
            .collect();
        Ok(Self {
            inner: Arc::new(Inner {
                pool: clients.role(Role::RateLimit).clone(),
                keys: clients.keys().clone(),
                script: Script::from_lua(SLIDING_WINDOW_LUA),
                lease_script: Script::from_lua(LEASE_LUA),
                lease_max_age: Duration::from_millis(settings.lease_max_age_ms),
                expected_replicas: settings.expected_replicas,
                enabled: settings.enabled,
                trust_x_forwarded_for: settings.trust_x_forwarded_for,
                policies,
                in_fallback: AtomicBool::new(false),
                last_probe_ms: AtomicU64::new(0),
                probe_interval_ms: settings.fallback.probe_interval_ms,
                started: Instant::now(),
                counters: Counters::default(),
            }),
        })
    }

    /// Whether rate limiting is switched on.
    pub fn is_enabled(&self) -> bool {
        self.inner.enabled
    }

    /// The settings of policy `name`, if it exists.
    pub fn policy(&self, name: &str) -> Option<PolicySettings> {
        self.inner.policies.get(name).map(|p| p.settings)
    }

    /// Where decisions come from right now.
    pub fn mode(&self) -> LimiterMode {
        if self.inner.in_fallback.load(Ordering::Relaxed) {
            LimiterMode::Fallback
        } else {
            LimiterMode::Redis
        }
    }

    /// Counters since this limiter was built.
    pub fn stats(&self) -> RateLimitStats {
        let c = &self.inner.counters;
        RateLimitStats {
            redis_decisions: c.redis_decisions.load(Ordering::Relaxed),
            lease_decisions: c.lease_decisions.load(Ordering::Relaxed),
            lease_refills_ahead: c.lease_refills_ahead.load(Ordering::Relaxed),
            blocked_cache_hits: c.blocked_cache_hits.load(Ordering::Relaxed),
            fallback_decisions: c.fallback_decisions.load(Ordering::Relaxed),
            denied: c.denied.load(Ordering::Relaxed),
        }
    }

    /// Counts one request of `identifier` against `policy` and says whether it may proceed.
    /// Never fails because of Redis: see the module doc for the blocked cache and the fallback.
    pub async fn check(&self, policy: &str, identifier: &str) -> Result<Decision, UnknownPolicy> {
        let policy =
            self.inner.policies.get(policy).ok_or_else(|| UnknownPolicy(policy.to_owned()))?;
        Ok(self.check_policy(policy, identifier).await)
    }

    fn trusts_x_forwarded_for(&self) -> bool {
        self.inner.trust_x_forwarded_for
    }

    fn policy_state(&self, name: &str) -> Option<Arc<Policy>> {
        self.inner.policies.get(name).cloned()
    }

    async fn check_policy(&self, policy: &Arc<Policy>, identifier: &str) -> Decision {
        let now = Instant::now();
        match self.local_decision(policy, identifier, now) {
            Some(decision) => decision,
            // Boxed: the Redis path's future is large, and building it for every request that a
            // lease or the blocked cache answers cost more than the decision itself.
            None => Box::pin(self.remote_decision(policy, identifier, now)).await,
        }
    }

    /// A decision that needs no Redis: the limiter is off, the identifier is in the blocked
    /// cache, or this replica's lease has a token left.
    fn local_decision(
        &self,
        policy: &Arc<Policy>,
        identifier: &str,
        now: Instant,
    ) -> Option<Decision> {
        let limit = policy.settings.limit;
        if !self.inner.enabled {
            return Some(Decision {
                allowed: true,
                limit,
                remaining: limit,
                reset_after: Duration::ZERO,
                retry_after: None,
                source: DecisionSource::Disabled,
            });
        }
        // Read before the lock, to keep the critical section short (exact mode wastes it).
        let window_index = unix_ms() / policy.window_ms;
        let mut known = lock(&policy.known);
        if let Some(until) = known.blocked.blocked_until(identifier, now) {
            drop(known);
            self.count(&self.inner.counters.blocked_cache_hits, false);
            let wait = until - now;
            return Some(Decision {
                allowed: false,
                limit,
                remaining: 0,
                reset_after: wait,
                retry_after: Some(wait),
                source: DecisionSource::BlockedCache,
            });
        }
        if policy.settings.lease > 0 {
            let spent = known.leases.spend(identifier, window_index, now)?;
            drop(known);
            self.inner.counters.lease_decisions.fetch_add(1, Ordering::Relaxed);
            if spent.refill && !self.inner.in_fallback.load(Ordering::Relaxed) {
                self.refill_ahead(Arc::clone(policy), identifier.to_owned());
            }
            return Some(Decision {
                allowed: true,
                limit,
                remaining: spent.remaining,
                reset_after: spent.reset_at.saturating_duration_since(now),
                retry_after: None,
                source: DecisionSource::Lease,
            });
        }
        None
    }

    /// The decision [`Self::local_decision`] could not make: a Redis script (a lease or one
    /// request), or the in-process fallback while Redis is unreachable.
    async fn remote_decision(&self, policy: &Policy, identifier: &str, now: Instant) -> Decision {
        let now_ms = unix_ms();
        // The lease ran out or belongs to a past window: its unspent tokens go back with the
        // next grant. (A lease another request took since the check above is given back too,
        // which only costs a refill.)
        let give_back = if policy.settings.lease > 0 {
            lock(&policy.known).leases.take_back(identifier)
        } else {
            None
        };
        let pool = self.inner.pool.pool();
        let client = pool.next_connected();
        if !client.is_connected() {
            self.enter_fallback(&"the rate-limit connection is down");
            return self.fallback_decision(policy, identifier, now_ms, now);
        }
        if self.inner.in_fallback.load(Ordering::Relaxed) && !self.claim_probe() {
            return self.fallback_decision(policy, identifier, now_ms, now);
        }
        if policy.settings.lease > 0 {
            return self.leased_decision(client, policy, identifier, now_ms, now, give_back).await;
        }
        match self.eval(client, policy, identifier, now_ms).await {
            Ok(outcome) => {
                self.leave_fallback();
                self.finish(policy, identifier, outcome, DecisionSource::Redis, now)
            }
            Err(error) if error.is_unavailable() => {
                self.enter_fallback(&error);
                self.fallback_decision(policy, identifier, now_ms, now)
            }
            Err(error) => {
                // Not an outage but a bug or a foreign value under our key: still limit, loudly.
                tracing::error!(%error, policy = %policy.name, "rate-limit script failed; deciding in process");
                self.fallback_decision(policy, identifier, now_ms, now)
            }
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(policy = %policy.name, identifier = %identifier))]
    async fn eval(
        &self,
        client: &Client,
        policy: &Policy,
        identifier: &str,
        now_ms: u64,
    ) -> Result<Outcome> {
        let window_index = now_ms / policy.window_ms;
        let keys = vec![
            self.inner.keys.rate_limit_window(&policy.name, identifier, window_index),
            self.inner.keys.rate_limit_window(
                &policy.name,
                identifier,
                window_index.saturating_sub(1),
            ),
        ];
        let args = vec![
            i64::from(policy.settings.limit),
            to_i64(policy.window_ms),
            to_i64(now_ms % policy.window_ms),
        ];
        let reply = self.run_script(client, &self.inner.script, keys, args).await?;
        match reply.as_slice() {
            [allowed, _limit, remaining, reset] => Ok(Outcome {
                allowed: *allowed == 1,
                remaining: u32::try_from(*remaining).unwrap_or(0),
                reset_ms: u64::try_from(*reset).unwrap_or(0),
            }),
            other => Err(RedisError::Unexpected(format!("rate-limit script returned {other:?}"))),
        }
    }

    /// Takes a lease from Redis (giving back `give_back`, the unspent tokens of this replica's
    /// previous lease) and answers the caller with its first token.
    async fn leased_decision(
        &self,
        client: &Client,
        policy: &Policy,
        identifier: &str,
        now_ms: u64,
        now: Instant,
        give_back: Option<(u64, u32)>,
    ) -> Decision {
        let window_index = now_ms / policy.window_ms;
        // When the lease table is full, one token at a time: exact, and nothing to remember.
        let wanted = if lock(&policy.known).leases.has_room(identifier, now) {
            policy.settings.lease
        } else {
            1
        };
        match self.take_lease(client, policy, identifier, now_ms, wanted, give_back).await {
            Ok((granted, outcome)) => {
                self.leave_fallback();
                if granted == 0 {
                    return self.finish(policy, identifier, outcome, DecisionSource::Redis, now);
                }
                self.inner.counters.redis_decisions.fetch_add(1, Ordering::Relaxed);
                let reset_after = Duration::from_millis(outcome.reset_ms);
                let remaining = if wanted > 1 {
                    lock(&policy.known).leases.grant(
                        identifier,
                        window_index,
                        granted - 1,
                        outcome.remaining,
                        now + self.inner.lease_max_age,
                        now + reset_after,
                    )
                } else {
                    outcome.remaining
                };
                Decision {
                    allowed: true,
                    limit: policy.settings.limit,
                    remaining,
                    reset_after,
                    retry_after: None,
                    source: DecisionSource::Redis,
                }
            }
            Err(error) if error.is_unavailable() => {
                self.enter_fallback(&error);
                self.fallback_decision(policy, identifier, now_ms, now)
            }
            Err(error) => {
                tracing::error!(%error, policy = %policy.name, "rate-limit lease script failed; deciding in process");
                self.fallback_decision(policy, identifier, now_ms, now)
            }
        }
    }

    /// Takes `identifier`'s next lease while the current one still has tokens (see "Refills
    /// ahead of need" in the module doc), on the caller's runtime: on an HTTP worker that is
    /// the worker's own connection. A failure only means the lease runs out first, and the
    /// request that finds it empty takes one itself, deciding about fallback as usual.
    fn refill_ahead(&self, policy: Arc<Policy>, identifier: String) {
        let limiter = self.clone();
        tokio::spawn(async move {
            let now_ms = unix_ms();
            let pool = limiter.inner.pool.pool();
            let client = pool.next_connected();
            if !client.is_connected() {
                return;
            }
            let lease = policy.settings.lease;
            match limiter.take_lease(client, &policy, &identifier, now_ms, lease, None).await {
                Ok((0, _)) => {}
                Ok((granted, outcome)) => {
                    limiter.inner.counters.lease_refills_ahead.fetch_add(1, Ordering::Relaxed);
                    let now = Instant::now();
                    lock(&policy.known).leases.grant(
                        &identifier,
                        now_ms / policy.window_ms,
                        granted,
                        outcome.remaining,
                        now + limiter.inner.lease_max_age,
                        now + Duration::from_millis(outcome.reset_ms),
                    );
                }
                Err(error) => {
                    tracing::debug!(%error, policy = %policy.name, "rate-limit lease refill ahead of need failed");
                }
            }
        });
    }

    #[tracing::instrument(level = "debug", skip_all, fields(policy = %policy.name, identifier = %identifier))]
    async fn take_lease(
        &self,
        client: &Client,
        policy: &Policy,
        identifier: &str,
        now_ms: u64,
        wanted: u32,
        give_back: Option<(u64, u32)>,
    ) -> Result<(u32, Outcome)> {
        let window_index = now_ms / policy.window_ms;
        let keys = vec![
            self.inner.keys.rate_limit_window(&policy.name, identifier, window_index),
            self.inner.keys.rate_limit_window(
                &policy.name,
                identifier,
                window_index.saturating_sub(1),
            ),
        ];
        // Tokens go back to the window they were counted in, if it is still one of the two.
        let (back, slot) = match give_back {
            Some((index, tokens)) if index == window_index => (tokens, 1),
            Some((index, tokens)) if index + 1 == window_index => (tokens, 2),
            _ => (0, 0),
        };
        let args = vec![
            i64::from(policy.settings.limit),
            to_i64(policy.window_ms),
            to_i64(now_ms % policy.window_ms),
            i64::from(wanted.max(1)),
            i64::from(self.inner.expected_replicas),
            i64::from(back),
            slot,
        ];
        let reply = self.run_script(client, &self.inner.lease_script, keys, args).await?;
        match reply.as_slice() {
            [granted, _limit, remaining, reset] => {
                let granted = u32::try_from(*granted).unwrap_or(0);
                Ok((
                    granted,
                    Outcome {
                        allowed: granted > 0,
                        remaining: u32::try_from(*remaining).unwrap_or(0),
                        reset_ms: u64::try_from(*reset).unwrap_or(0),
                    },
                ))
            }
            other => {
                Err(RedisError::Unexpected(format!("rate-limit lease script returned {other:?}")))
            }
        }
    }

    /// Runs `script` on this worker's direct connection when it is up and has the script loaded
    /// (see [`crate::direct`]), else on `client` (which loads it, so the next call can go direct).
    async fn run_script(
        &self,
        client: &Client,
        script: &Script,
        keys: Vec<String>,
        args: Vec<i64>,
    ) -> Result<Vec<i64>> {
        if let Some(direct) = self.inner.pool.direct() {
            let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
            let args: Vec<String> = args.iter().map(i64::to_string).collect();
            let args: Vec<&[u8]> = args.iter().map(String::as_bytes).collect();
            match direct.evalsha(script.sha1(), &keys, &args).await {
                Ok(Some(reply)) => return reply.into_integers(),
                Ok(None) => {}
                // The direct connection's failure is not Redis': the pool may still answer.
                Err(error) if error.is_unavailable() => {}
                Err(error) => return Err(error),
            }
        }
        Ok(script.evalsha_with_reload(client, keys, args).await?)
    }

    fn fallback_decision(
        &self,
        policy: &Policy,
        identifier: &str,
        now_ms: u64,
        now: Instant,
    ) -> Decision {
        let outcome =
            lock(&policy.local).decide(identifier, policy.settings.limit, policy.window_ms, now_ms);
        self.finish(policy, identifier, outcome, DecisionSource::Fallback, now)
    }

    fn finish(
        &self,
        policy: &Policy,
        identifier: &str,
        outcome: Outcome,
        source: DecisionSource,
        now: Instant,
    ) -> Decision {
        let counter = match source {
            DecisionSource::Fallback => &self.inner.counters.fallback_decisions,
            _ => &self.inner.counters.redis_decisions,
        };
        self.count(counter, outcome.allowed);
        let reset_after = Duration::from_millis(outcome.reset_ms);
        if !outcome.allowed {
            lock(&policy.known).blocked.block(identifier, now + reset_after, now);
        }
        Decision {
            allowed: outcome.allowed,
            limit: policy.settings.limit,
            remaining: outcome.remaining,
            reset_after,
            retry_after: (!outcome.allowed).then_some(reset_after),
            source,
        }
    }

    fn count(&self, counter: &AtomicU64, allowed: bool) {
        counter.fetch_add(1, Ordering::Relaxed);
        if !allowed {
            self.inner.counters.denied.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn enter_fallback(&self, reason: &dyn fmt::Display) {
        if !self.inner.in_fallback.swap(true, Ordering::Relaxed) {
            self.inner.last_probe_ms.store(self.elapsed_ms(), Ordering::Relaxed);
            tracing::warn!(%reason, "redis is unreachable; rate limits now decided in process (per replica)");
        }
    }

    fn leave_fallback(&self) {
        if self.inner.in_fallback.swap(false, Ordering::Relaxed) {
            tracing::info!("redis answered again; rate limits decided by redis");
        }
    }

    /// True for the one caller that may probe Redis now (at most one per probe interval).
    fn claim_probe(&self) -> bool {
        let now = self.elapsed_ms();
        let last = self.inner.last_probe_ms.load(Ordering::Relaxed);
        now.saturating_sub(last) >= self.inner.probe_interval_ms
            && self
                .inner
                .last_probe_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.inner.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// A poisoned lock only means another thread panicked mid-update of plain counters; keep going.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// "minute", "15 minutes", "second", … for error messages.
fn describe_window(window_secs: u64) -> String {
    for (unit_secs, unit) in [(86_400, "day"), (3_600, "hour"), (60, "minute")] {
        if window_secs.is_multiple_of(unit_secs) {
            let n = window_secs / unit_secs;
            return if n == 1 { unit.to_owned() } else { format!("{n} {unit}s") };
        }
    }
    if window_secs == 1 { "second".to_owned() } else { format!("{window_secs} seconds") }
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

    #[test]
    fn windows_read_as_words() {
        assert_eq!(describe_window(1), "second");
        assert_eq!(describe_window(60), "minute");
        assert_eq!(describe_window(900), "15 minutes");
        assert_eq!(describe_window(3600), "hour");
        assert_eq!(describe_window(90), "90 seconds");
    }
}

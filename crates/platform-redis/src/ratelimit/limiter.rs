//! The rate limiter: decides each request from what this replica knows (switched off, a blocked
//! caller, a lease's token), else from a Redis script, else in process while Redis is away.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fred::prelude::{Client, ClientLike};

use super::decision::{Counters, Decision, DecisionSource, RateLimitStats, UnknownPolicy};
use super::fallback::{FallbackState, LimiterMode};
use super::organisations::Organisations;
use super::policy::{Asked, Policy, lock};
use super::script::Scripts;
use super::settings::{PolicySettings, RateLimitSettings};
use super::window::Outcome;
use crate::client::{RedisClients, Role};
use crate::error::{RedisError, Result};

struct Inner {
    scripts: Scripts,
    lease_max_age: Duration,
    enabled: bool,
    trust_x_forwarded_for: bool,
    policies: HashMap<String, Arc<Policy>>,
    fallback: FallbackState,
    counters: Counters,
    organisations: Organisations,
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
                let state = Policy::new(name.clone(), policy, settings);
                (name, Arc::new(state))
            })
            .collect();
        Ok(Self {
            inner: Arc::new(Inner {
                scripts: Scripts::new(
                    clients.role(Role::RateLimit).clone(),
                    clients.keys().clone(),
                    settings.expected_replicas,
                ),
                lease_max_age: Duration::from_millis(settings.lease_max_age_ms),
                enabled: settings.enabled,
                trust_x_forwarded_for: settings.trust_x_forwarded_for,
                policies,
                fallback: FallbackState::new(settings.fallback.probe_interval_ms),
                counters: Counters::default(),
                organisations: Organisations::new(settings.tiers.clone()),
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
        self.inner.fallback.mode()
    }

    /// Counters since this limiter was built.
    pub fn stats(&self) -> RateLimitStats {
        self.inner.counters.snapshot()
    }

    /// Records an organisation's tier and its requests-per-minute override for the
    /// `by_organisation` policies, under the identifier those policies see (e.g. `org:<slug>`).
    /// Takes effect on the next request; an unknown tier without an override forgets it.
    pub fn set_organisation(&self, identifier: &str, tier: &str, per_minute: Option<u32>) {
        if !self.inner.organisations.set(identifier, tier, per_minute) {
            return;
        }
        // A denial remembered under the old limit must not outlast it.
        for policy in self.inner.policies.values().filter(|p| p.settings.by_organisation) {
            lock(&policy.known).blocked.unblock(identifier);
        }
    }

    /// The tier and requests per minute of `identifier` when it is a known organisation.
    pub fn organisation(&self, identifier: &str) -> Option<(String, u32)> {
        self.inner.organisations.allowance(identifier)
    }

    /// (tier, requests allowed, requests refused) of known organisations under
    /// `by_organisation` policies, since start.
    pub fn organisation_requests(&self) -> Vec<(String, u64, u64)> {
        self.inner.organisations.requests()
    }

    /// Counts one request of `identifier` against `policy` and says whether it may proceed.
    /// Never fails because of Redis: see the module doc for the blocked cache and the fallback.
    pub async fn check(&self, policy: &str, identifier: &str) -> Result<Decision, UnknownPolicy> {
        let policy =
            self.inner.policies.get(policy).ok_or_else(|| UnknownPolicy(policy.to_owned()))?;
        Ok(self.check_policy(policy, identifier).await)
    }

    pub(super) fn trusts_x_forwarded_for(&self) -> bool {
        self.inner.trust_x_forwarded_for
    }

    pub(super) fn policy_state(&self, name: &str) -> Option<Arc<Policy>> {
        self.inner.policies.get(name).cloned()
    }

    pub(super) async fn check_policy(&self, policy: &Arc<Policy>, identifier: &str) -> Decision {
        let now = Instant::now();
        let organisation = if policy.settings.by_organisation {
            self.inner.organisations.limit(identifier, &policy.settings)
        } else {
            None
        };
        let limit = organisation.map_or(policy.settings.limit, |(limit, _)| limit);
        let decision = match self.local_decision(policy, identifier, limit, now) {
            Some(decision) => decision,
            // Boxed: the Redis path's future is large, and building it for every request that a
            // lease or the blocked cache answers cost more than the decision itself.
            None => Box::pin(self.remote_decision(policy, identifier, limit, now)).await,
        };
        if let Some((_, Some(tier))) = organisation {
            self.inner.organisations.count(tier, decision.allowed);
        }
        decision
    }

    /// A decision that needs no Redis: the limiter is off, the identifier is in the blocked
    /// cache, or this replica's lease has a token left.
    fn local_decision(
        &self,
        policy: &Arc<Policy>,
        identifier: &str,
        limit: u32,
        now: Instant,
    ) -> Option<Decision> {
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
            self.inner.counters.count(&self.inner.counters.blocked_cache_hits, false);
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
            if spent.refill && !self.inner.fallback.is_active() {
                self.refill_ahead(Arc::clone(policy), identifier.to_owned(), limit);
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
    async fn remote_decision(
        &self,
        policy: &Policy,
        identifier: &str,
        limit: u32,
        now: Instant,
    ) -> Decision {
        let now_ms = unix_ms();
        // The lease ran out or belongs to a past window: its unspent tokens go back with the
        // next grant. (A lease another request took since the check above is given back too,
        // which only costs a refill.)
        let give_back = if policy.settings.lease > 0 {
            lock(&policy.known).leases.take_back(identifier)
        } else {
            None
        };
        let pool = self.inner.scripts.pool().pool();
        let client = pool.next_connected();
        if !client.is_connected() {
            self.inner.fallback.enter(&"the rate-limit connection is down");
            return self.fallback_decision(policy, identifier, limit, now_ms, now);
        }
        if self.inner.fallback.is_active() && !self.inner.fallback.claim_probe() {
            return self.fallback_decision(policy, identifier, limit, now_ms, now);
        }
        let asked = Asked { identifier, limit, now_ms, now };
        if policy.settings.lease > 0 {
            return self.leased_decision(client, policy, &asked, give_back).await;
        }
        match self.inner.scripts.eval(client, policy, &asked).await {
            Ok(outcome) => {
                self.inner.fallback.leave();
                self.finish(policy, identifier, limit, outcome, DecisionSource::Redis, now)
            }
            Err(error) => self.script_failed("rate-limit script", &error, policy, &asked),
        }
    }

    /// Takes a lease from Redis (giving back `give_back`, the unspent tokens of this replica's
    /// previous lease) and answers the caller with its first token.
    async fn leased_decision(
        &self,
        client: &Client,
        policy: &Policy,
        asked: &Asked<'_>,
        give_back: Option<(u64, u32)>,
    ) -> Decision {
        let Asked { identifier, limit, now_ms, now } = *asked;
        let window_index = now_ms / policy.window_ms;
        // When the lease table is full, one token at a time: exact, and nothing to remember.
        let wanted = if lock(&policy.known).leases.has_room(identifier, now) {
            policy.settings.lease.min(limit)
        } else {
            1
        };
        let scripts = &self.inner.scripts;
        match scripts.take_lease(client, policy, asked, wanted, give_back).await {
            Ok((granted, outcome)) => {
                self.inner.fallback.leave();
                if granted == 0 {
                    let source = DecisionSource::Redis;
                    return self.finish(policy, identifier, limit, outcome, source, now);
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
                    limit,
                    remaining,
                    reset_after,
                    retry_after: None,
                    source: DecisionSource::Redis,
                }
            }
            Err(error) => self.script_failed("rate-limit lease script", &error, policy, asked),
        }
    }

    /// Takes `identifier`'s next lease while the current one still has tokens (see "Refills
    /// ahead of need" in the module doc), on the caller's runtime: on an HTTP worker that is
    /// the worker's own connection. A failure only means the lease runs out first, and the
    /// request that finds it empty takes one itself, deciding about fallback as usual.
    fn refill_ahead(&self, policy: Arc<Policy>, identifier: String, limit: u32) {
        let limiter = self.clone();
        tokio::spawn(async move {
            let now_ms = unix_ms();
            let pool = limiter.inner.scripts.pool().pool();
            let client = pool.next_connected();
            if !client.is_connected() {
                return;
            }
            let lease = policy.settings.lease.min(limit);
            let scripts = &limiter.inner.scripts;
            let asked = Asked { identifier: &identifier, limit, now_ms, now: Instant::now() };
            match scripts.take_lease(client, &policy, &asked, lease, None).await {
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

    /// The decision after script `what` failed: in process either way, after switching to
    /// fallback when Redis is unreachable; anything else is not an outage but a bug or a foreign
    /// value under our key, so it is logged loudly.
    fn script_failed(
        &self,
        what: &str,
        error: &RedisError,
        policy: &Policy,
        asked: &Asked<'_>,
    ) -> Decision {
        if error.is_unavailable() {
            self.inner.fallback.enter(error);
        } else {
            tracing::error!(%error, policy = %policy.name, "{what} failed; deciding in process");
        }
        self.fallback_decision(policy, asked.identifier, asked.limit, asked.now_ms, asked.now)
    }

    fn fallback_decision(
        &self,
        policy: &Policy,
        identifier: &str,
        limit: u32,
        now_ms: u64,
        now: Instant,
    ) -> Decision {
        let outcome = lock(&policy.local).decide(identifier, limit, policy.window_ms, now_ms);
        self.finish(policy, identifier, limit, outcome, DecisionSource::Fallback, now)
    }

    fn finish(
        &self,
        policy: &Policy,
        identifier: &str,
        limit: u32,
        outcome: Outcome,
        source: DecisionSource,
        now: Instant,
    ) -> Decision {
        let counter = match source {
            DecisionSource::Fallback => &self.inner.counters.fallback_decisions,
            _ => &self.inner.counters.redis_decisions,
        };
        self.inner.counters.count(counter, outcome.allowed);
        let reset_after = Duration::from_millis(outcome.reset_ms);
        if !outcome.allowed {
            lock(&policy.known).blocked.block(identifier, now + reset_after, now);
        }
        Decision {
            allowed: outcome.allowed,
            limit,
            remaining: outcome.remaining,
            reset_after,
            retry_after: (!outcome.allowed).then_some(reset_after),
            source,
        }
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

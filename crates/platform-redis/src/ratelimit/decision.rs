//! What a rate-limit check answers ([`Decision`], who made it, [`UnknownPolicy`]) and what the
//! limiter counts ([`RateLimitStats`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

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

/// The atomics behind [`RateLimitStats`], bumped on every decision.
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) redis_decisions: AtomicU64,
    pub(super) lease_decisions: AtomicU64,
    pub(super) lease_refills_ahead: AtomicU64,
    pub(super) blocked_cache_hits: AtomicU64,
    pub(super) fallback_decisions: AtomicU64,
    pub(super) denied: AtomicU64,
}

impl Counters {
    /// Counts one decision on `counter`, and a denial when it was one.
    pub(super) fn count(&self, counter: &AtomicU64, allowed: bool) {
        counter.fetch_add(1, Ordering::Relaxed);
        if !allowed {
            self.denied.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(super) fn snapshot(&self) -> RateLimitStats {
        RateLimitStats {
            redis_decisions: self.redis_decisions.load(Ordering::Relaxed),
            lease_decisions: self.lease_decisions.load(Ordering::Relaxed),
            lease_refills_ahead: self.lease_refills_ahead.load(Ordering::Relaxed),
            blocked_cache_hits: self.blocked_cache_hits.load(Ordering::Relaxed),
            fallback_decisions: self.fallback_decisions.load(Ordering::Relaxed),
            denied: self.denied.load(Ordering::Relaxed),
        }
    }
}

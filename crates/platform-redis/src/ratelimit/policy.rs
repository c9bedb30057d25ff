//! One policy as the limiter holds it: its settings and what this replica knows of its
//! identifiers without Redis (blocked callers, leases, fallback windows).

use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use super::blocked::BlockedCache;
use super::leases::Leases;
use super::settings::{PolicySettings, RateLimitSettings};
use super::window::LocalWindows;

/// One policy with its in-process state.
#[derive(Debug)]
pub(super) struct Policy {
    pub(super) name: String,
    pub(super) settings: PolicySettings,
    pub(super) window_ms: u64,
    /// The blocked cache and the leases under one lock: a leased decision reads both, and each
    /// lock is a cache line every worker thread writes on every request.
    pub(super) known: Mutex<Known>,
    pub(super) local: Mutex<LocalWindows>,
}

/// What a replica knows of a policy's identifiers without asking Redis.
#[derive(Debug)]
pub(super) struct Known {
    pub(super) blocked: BlockedCache,
    pub(super) leases: Leases,
}

impl Policy {
    /// Policy `name` with empty in-process state, bounded as `limits` says.
    pub(super) fn new(name: String, settings: PolicySettings, limits: &RateLimitSettings) -> Self {
        Self {
            name,
            settings,
            window_ms: settings.window_secs.saturating_mul(1_000),
            known: Mutex::new(Known {
                blocked: BlockedCache::new(limits.blocked_cache_capacity),
                leases: Leases::new(limits.blocked_cache_capacity, settings.lease / 2),
            }),
            local: Mutex::new(LocalWindows::new(limits.fallback.max_identifiers)),
        }
    }
}

/// One request as the Redis paths decide it.
#[derive(Clone, Copy)]
pub(super) struct Asked<'a> {
    pub(super) identifier: &'a str,
    /// The identifier's limit under the policy (its own when it is a known organisation).
    pub(super) limit: u32,
    pub(super) now_ms: u64,
    pub(super) now: Instant,
}

/// A poisoned lock only means another thread panicked mid-update of plain counters; keep going.
pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

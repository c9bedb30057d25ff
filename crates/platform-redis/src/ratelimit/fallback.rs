//! Whether decisions come from Redis or from the in-process fallback: the switch both ways (each
//! logged once) and the one probe per interval that may try Redis while in fallback.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use serde::Serialize;

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

/// The limiter's fallback switch; shared by every worker thread, so plain atomics.
#[derive(Debug)]
pub(super) struct FallbackState {
    active: AtomicBool,
    /// Milliseconds since `started` of the last Redis probe while in fallback.
    last_probe_ms: AtomicU64,
    probe_interval_ms: u64,
    started: Instant,
}

impl FallbackState {
    pub(super) fn new(probe_interval_ms: u64) -> Self {
        Self {
            active: AtomicBool::new(false),
            last_probe_ms: AtomicU64::new(0),
            probe_interval_ms,
            started: Instant::now(),
        }
    }

    pub(super) fn is_active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    pub(super) fn mode(&self) -> LimiterMode {
        if self.is_active() { LimiterMode::Fallback } else { LimiterMode::Redis }
    }

    pub(super) fn enter(&self, reason: &dyn fmt::Display) {
        if !self.active.swap(true, Ordering::Relaxed) {
            self.last_probe_ms.store(self.elapsed_ms(), Ordering::Relaxed);
            tracing::warn!(%reason, "redis is unreachable; rate limits now decided in process (per replica)");
        }
    }

    pub(super) fn leave(&self) {
        if self.active.swap(false, Ordering::Relaxed) {
            tracing::info!("redis answered again; rate limits decided by redis");
        }
    }

    /// True for the one caller that may probe Redis now (at most one per probe interval).
    pub(super) fn claim_probe(&self) -> bool {
        let now = self.elapsed_ms();
        let last = self.last_probe_ms.load(Ordering::Relaxed);
        now.saturating_sub(last) >= self.probe_interval_ms
            && self
                .last_probe_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

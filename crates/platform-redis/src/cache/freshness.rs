//! When a cached value expires and when a read should refresh it early: the timing data stored
//! with every value, and XFetch (Vattani et al., "Optimal probabilistic cache stampede
//! prevention").

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Timing data stored with each value; drives expiry and XFetch.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Meta {
    pub computed_at_ms: u64,
    pub ttl_ms: u64,
    pub compute_ms: u64,
}

impl Meta {
    /// A value computed just now, in `compute_time`, to live `ttl`.
    pub fn now(ttl: Duration, compute_time: Duration) -> Meta {
        Meta {
            computed_at_ms: now_ms(),
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
            compute_ms: u64::try_from(compute_time.as_millis()).unwrap_or(u64::MAX),
        }
    }

    pub fn expires_at_ms(&self) -> u64 {
        self.computed_at_ms.saturating_add(self.ttl_ms)
    }

    /// What is left of the value's life; zero once expired.
    pub fn remaining(&self) -> Duration {
        Duration::from_millis(self.expires_at_ms().saturating_sub(now_ms()))
    }

    /// XFetch with a fresh random draw: whether this read should refresh the value early.
    pub fn refresh_due(&self, beta: f64) -> bool {
        // In (0, 1], so its logarithm is finite.
        let draw = 1.0 - rand::random::<f64>();
        xfetch_due(self, beta, now_ms(), draw)
    }
}

/// XFetch with a uniform `draw` in (0, 1]: refresh when `now - computeMs * beta * ln(draw)`
/// reaches the expiry. A zero or invalid `beta` refreshes only once expired.
fn xfetch_due(meta: &Meta, beta: f64, now_ms: u64, draw: f64) -> bool {
    if beta <= 0.0 || !beta.is_finite() {
        return now_ms >= meta.expires_at_ms();
    }
    let delta = meta.compute_ms.max(1) as f64;
    let head_start = -delta * beta * draw.ln();
    now_ms as f64 + head_start >= meta.expires_at_ms() as f64
}

/// The longest head start [`xfetch_due`] can draw for `meta`: the draw is `1 - rand` with `rand`
/// a multiple of 2^-53 in [0, 1), so `-ln(draw)` is at most 53 ln 2 ≈ 36.74.
pub(super) fn max_head_start(meta: &Meta, beta: f64) -> Duration {
    if beta <= 0.0 || !beta.is_finite() {
        return Duration::ZERO;
    }
    // Saturating float-to-int conversion: an absurd beta means "always possibly due".
    Duration::from_millis((meta.compute_ms.max(1) as f64 * beta * 37.0).ceil() as u64)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_draw_starts_a_refresh_before_the_longest_head_start() {
        let meta = Meta { computed_at_ms: 1_000_000, ttl_ms: 60_000, compute_ms: 100 };
        let head_start = max_head_start(&meta, 1.0).as_millis() as u64;
        let smallest_draw = 2f64.powi(-53);
        let earliest = meta.expires_at_ms() - head_start;
        assert!(!xfetch_due(&meta, 1.0, earliest - 1, smallest_draw));
        assert!(xfetch_due(&meta, 1.0, meta.expires_at_ms() - 3_600, smallest_draw));
        assert_eq!(max_head_start(&meta, 0.0), Duration::ZERO);
    }

    #[test]
    fn xfetch_refreshes_only_near_expiry_and_earlier_for_slow_computes() {
        let meta = Meta { computed_at_ms: 1_000_000, ttl_ms: 60_000, compute_ms: 100 };
        let expiry = meta.expires_at_ms();
        // A typical draw (ln 0.5 = -0.69) starts ~69 ms before expiry for a 100 ms compute.
        assert!(!xfetch_due(&meta, 1.0, expiry - 1_000, 0.5));
        assert!(xfetch_due(&meta, 1.0, expiry - 50, 0.5));
        // An unlucky draw near 0 refreshes much earlier; beta scales the head start.
        assert!(xfetch_due(&meta, 1.0, expiry - 1_000, 1e-6));
        assert!(xfetch_due(&meta, 20.0, expiry - 1_000, 0.5));
        // beta 0: only once expired.
        assert!(!xfetch_due(&meta, 0.0, expiry - 1, 1e-9));
        assert!(xfetch_due(&meta, 0.0, expiry, 0.5));
    }
}

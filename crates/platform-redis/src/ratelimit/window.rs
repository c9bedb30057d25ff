//! The sliding-window arithmetic, once in Lua (for Redis) and once in Rust (for the in-process
//! fallback), its leasing variant, and the bounded fallback windows ([`LocalWindows`]).
//!
//! Both implementations work on integers scaled by the window length `W` (ms), so they agree to
//! the millisecond and Lua's doubles stay exact (settings validation keeps `limit * W < 2^53`).
//! With `e` = ms elapsed in the current fixed window, `p` / `c` = previous / current counts:
//!
//! - estimate `= p * (W - e) / W + c`; a request is allowed iff `estimate + 1 <= limit`, i.e.
//!   `c < limit && p * (W - e) <= (limit - 1 - c) * W`; only then is `c` incremented;
//! - remaining `= floor(limit - estimate)` after the decision, at least 0;
//! - reset, when remaining > 0: ms until the current fixed window ends (`W - e`);
//!   when remaining = 0: ms until the estimate has decayed enough for one more request, assuming
//!   no other request arrives: inside this window if `c < limit`
//!   (`W - floor((limit - 1 - c) * W / p) - e`), else in the next window, where `c` becomes the
//!   previous count (`(W - e) + W - floor((limit - 1) * W / c)`).

use std::collections::HashMap;

/// The end both scripts share: `reset` (ms) from `remaining`, `current` and `previous` after
/// the decision, as the module doc gives it.
macro_rules! reset_lua {
    () => {
        r#"local reset
if remaining > 0 then
  reset = window - elapsed
elseif current >= limit then
  reset = (window - elapsed) + window - math.floor((limit - 1) * window / current)
else
  reset = window - math.floor((limit - 1 - current) * window / previous) - elapsed
end
"#
    };
}

/// The Redis side. `KEYS[1]` = current window counter, `KEYS[2]` = previous window counter
/// (same hash tag); `ARGV` = limit, window ms, ms elapsed in the current window (from the caller's
/// clock, which also chose the window index of the keys). Returns `{allowed, limit, remaining,
/// reset_ms}`. The counter lives two windows: it is read as "previous" during the next one.
pub(crate) const SLIDING_WINDOW_LUA: &str = concat!(
    r#"
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local elapsed = tonumber(ARGV[3])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local previous = tonumber(redis.call('GET', KEYS[2]) or '0')
local prev_weighted = previous * (window - elapsed)
local allowed = 0
if current < limit and prev_weighted <= (limit - 1 - current) * window then
  current = redis.call('INCR', KEYS[1])
  redis.call('PEXPIRE', KEYS[1], 2 * window)
  allowed = 1
end
local remaining = math.floor(((limit - current) * window - prev_weighted) / window)
if remaining < 0 then remaining = 0 end
"#,
    reset_lua!(),
    "return {allowed, limit, remaining, reset}\n"
);

/// The leasing variant of [`SLIDING_WINDOW_LUA`] (same keys, same arithmetic). `ARGV` = limit,
/// window ms, ms elapsed, tokens wanted, expected replicas, tokens given back, and which key they
/// go back to (1 = current window, 2 = previous, 0 = none). First gives back the unspent tokens
/// of this replica's expired lease; then, with `room` = how many single requests would pass one
/// after another right now (the exact script's `remaining` before a request), grants
/// `min(wanted, max(1, room / replicas))` (0 when `room` is 0) by adding them to the current
/// count. Returns `{granted, limit, remaining after the grant, reset_ms}`, `reset_ms` as the exact
/// script computes it for the new count.
pub(crate) const LEASE_LUA: &str = concat!(
    r#"
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local elapsed = tonumber(ARGV[3])
local wanted = tonumber(ARGV[4])
local replicas = tonumber(ARGV[5])
local back = tonumber(ARGV[6])
local slot = tonumber(ARGV[7])
if back > 0 and (slot == 1 or slot == 2) then
  local held = tonumber(redis.call('GET', KEYS[slot]) or '0')
  local returned = math.min(back, held)
  if returned > 0 then redis.call('DECRBY', KEYS[slot], returned) end
end
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local previous = tonumber(redis.call('GET', KEYS[2]) or '0')
local prev_weighted = previous * (window - elapsed)
local room = math.floor(((limit - current) * window - prev_weighted) / window)
if room < 0 then room = 0 end
local granted = 0
if room > 0 then
  granted = math.min(wanted, math.max(1, math.floor(room / replicas)))
  current = redis.call('INCRBY', KEYS[1], granted)
  redis.call('PEXPIRE', KEYS[1], 2 * window)
end
local remaining = room - granted
"#,
    reset_lua!(),
    "return {granted, limit, remaining, reset}\n"
);

/// One decision of the algorithm, before it is dressed as a [`super::Decision`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Outcome {
    pub allowed: bool,
    pub remaining: u32,
    pub reset_ms: u64,
}

/// The Rust twin of [`SLIDING_WINDOW_LUA`]: decides, and increments `current` when allowed.
pub(crate) fn decide(
    limit: u32,
    window_ms: u64,
    elapsed_ms: u64,
    previous: u64,
    current: &mut u64,
) -> Outcome {
    let limit_w = u128::from(limit);
    let w = u128::from(window_ms.max(1));
    let e = u128::from(elapsed_ms.min(window_ms));
    let p = u128::from(previous);
    let prev_weighted = p * (w - e);
    let mut c = u128::from(*current);
    let allowed = c < limit_w && prev_weighted <= (limit_w - 1 - c) * w;
    if allowed {
        c += 1;
        *current += 1;
    }
    let numerator = (limit_w.saturating_sub(c) * w).saturating_sub(prev_weighted);
    let remaining = numerator / w;
    let reset = if remaining > 0 {
        w - e
    } else if c >= limit_w {
        (w - e) + w - (limit_w - 1) * w / c
    } else {
        // remaining = 0 with c < limit means the previous window's weight is what blocks, so p > 0.
        (w - (limit_w - 1 - c) * w / p.max(1)).saturating_sub(e)
    };
    Outcome {
        allowed,
        remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
        reset_ms: u64::try_from(reset).unwrap_or(u64::MAX),
    }
}

/// The two counters of one identifier in the fallback limiter.
#[derive(Debug, Clone, Copy)]
struct Counters {
    window_index: u64,
    current: u64,
    previous: u64,
}

/// In-process sliding windows per identifier, used while Redis is unreachable. Bounded: when
/// full, entries older than the previous window are dropped first; if every entry is still live
/// an arbitrary one is evicted (its identifier starts over), so a flood of distinct identifiers
/// costs flat memory at the price of some counts. Per process: with N replicas the effective
/// limit during an outage is up to N times the policy's.
#[derive(Debug)]
pub(crate) struct LocalWindows {
    counters: HashMap<String, Counters>,
    capacity: usize,
}

impl LocalWindows {
    pub fn new(capacity: usize) -> Self {
        Self { counters: HashMap::new(), capacity }
    }

    pub fn decide(&mut self, identifier: &str, limit: u32, window_ms: u64, now_ms: u64) -> Outcome {
        let window_index = now_ms / window_ms;
        let elapsed = now_ms % window_ms;
        if !self.counters.contains_key(identifier) && self.counters.len() >= self.capacity {
            self.evict(window_index);
        }
        let entry = self.counters.entry(identifier.to_owned()).or_insert(Counters {
            window_index,
            current: 0,
            previous: 0,
        });
        if entry.window_index != window_index {
            let previous = if entry.window_index + 1 == window_index { entry.current } else { 0 };
            *entry = Counters { window_index, current: 0, previous };
        }
        decide(limit, window_ms, elapsed, entry.previous, &mut entry.current)
    }

    fn evict(&mut self, window_index: u64) {
        self.counters.retain(|_, c| c.window_index + 1 >= window_index);
        if self.counters.len() >= self.capacity
            && let Some(key) = self.counters.keys().next().cloned()
        {
            self.counters.remove(&key);
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.counters.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_window_allows_exactly_limit_then_waits_for_one_slot_to_decay() {
        let mut current = 0;
        for n in 1..=5u32 {
            let outcome = decide(5, 60_000, 1_000, 0, &mut current);
            assert!(outcome.allowed);
            assert_eq!(outcome.remaining, 5 - n);
        }
        let denied = decide(5, 60_000, 1_000, 0, &mut current);
        assert!(!denied.allowed);
        assert_eq!(current, 5);
        // Rest of this window (59 s) plus the 12 s it takes 5 requests weighted over 60 s to lose one.
        assert_eq!(denied.reset_ms, 59_000 + 12_000);
    }

    #[test]
    fn the_previous_window_weighs_in_proportion_to_its_overlap() {
        // 10 in the previous window, a quarter into the current one: estimate 7.5, limit 10.
        let mut current = 0;
        let first = decide(10, 1_000, 250, 10, &mut current);
        assert!(first.allowed);
        assert_eq!(first.remaining, 1); // 10 - 8.5
        let second = decide(10, 1_000, 250, 10, &mut current);
        assert!(second.allowed);
        assert_eq!(second.remaining, 0); // 10 - 9.5
        // Needs 10 * (1000 - e) / 1000 + 2 <= 9, i.e. e >= 300.
        assert_eq!(second.reset_ms, 50);
        let third = decide(10, 1_000, 299, 10, &mut current);
        assert!(!third.allowed);
        assert_eq!(third.reset_ms, 1);
        let fourth = decide(10, 1_000, 300, 10, &mut current);
        assert!(fourth.allowed);
    }

    #[test]
    fn a_limit_of_one_waits_until_the_count_has_left_both_windows() {
        let mut current = 0;
        assert!(decide(1, 1_000, 400, 0, &mut current).allowed);
        let denied = decide(1, 1_000, 400, 0, &mut current);
        assert!(!denied.allowed);
        assert_eq!(denied.reset_ms, 600 + 1_000);
    }

    #[test]
    fn local_windows_roll_over_and_stay_bounded() {
        let mut windows = LocalWindows::new(2);
        for _ in 0..3 {
            windows.decide("a", 3, 1_000, 10_100);
        }
        assert!(!windows.decide("a", 3, 1_000, 10_200).allowed);
        // Two windows later nothing of it is left.
        assert!(windows.decide("a", 3, 1_000, 12_100).allowed);
        windows.decide("b", 3, 1_000, 12_100);
        windows.decide("c", 3, 1_000, 12_100);
        assert_eq!(windows.len(), 2);
    }
}

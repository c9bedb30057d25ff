//! The sliding-window arithmetic, once in Lua (for Redis) and once in Rust (for the in-process
//! fallback), its leasing variant, plus the bounded in-process maps: blocked identifiers, leases
//! and fallback windows.
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
use std::time::Instant;

/// The Redis side. `KEYS[1]` = current window counter, `KEYS[2]` = previous window counter
/// (same hash tag); `ARGV` = limit, window ms, ms elapsed in the current window (from the caller's
/// clock, which also chose the window index of the keys). Returns `{allowed, limit, remaining,
/// reset_ms}`. The counter lives two windows: it is read as "previous" during the next one.
pub(crate) const SLIDING_WINDOW_LUA: &str = r#"
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
local reset
if remaining > 0 then
  reset = window - elapsed
elseif current >= limit then
  reset = (window - elapsed) + window - math.floor((limit - 1) * window / current)
else
  reset = window - math.floor((limit - 1 - current) * window / previous) - elapsed
end
return {allowed, limit, remaining, reset}
"#;

/// The leasing variant of [`SLIDING_WINDOW_LUA`] (same keys, same arithmetic). `ARGV` = limit,
/// window ms, ms elapsed, tokens wanted, expected replicas, tokens given back, and which key they
/// go back to (1 = current window, 2 = previous, 0 = none). First gives back the unspent tokens
/// of this replica's expired lease; then, with `room` = how many single requests would pass one
/// after another right now (the exact script's `remaining` before a request), grants
/// `min(wanted, max(1, room / replicas))` (0 when `room` is 0) by adding them to the current
/// count. Returns `{granted, limit, remaining after the grant, reset_ms}`, `reset_ms` as the exact
/// script computes it for the new count.
pub(crate) const LEASE_LUA: &str = r#"
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
local reset
if remaining > 0 then
  reset = window - elapsed
elseif current >= limit then
  reset = (window - elapsed) + window - math.floor((limit - 1) * window / current)
else
  reset = window - math.floor((limit - 1 - current) * window / previous) - elapsed
end
return {granted, limit, remaining, reset}
"#;

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

/// Identifiers denied recently, each until the instant its decision said it may retry. Bounded:
/// when full (after dropping expired entries) a new identifier is simply not remembered, which
/// costs it a Redis round trip per request but never a wrong answer.
#[derive(Debug)]
pub(crate) struct BlockedCache {
    until: HashMap<String, Instant>,
    capacity: usize,
}

impl BlockedCache {
    pub fn new(capacity: usize) -> Self {
        Self { until: HashMap::new(), capacity }
    }

    /// The instant `identifier` is blocked until, if that is still in the future.
    pub fn blocked_until(&mut self, identifier: &str, now: Instant) -> Option<Instant> {
        match self.until.get(identifier) {
            Some(until) if *until > now => Some(*until),
            Some(_) => {
                self.until.remove(identifier);
                None
            }
            None => None,
        }
    }

    pub fn block(&mut self, identifier: &str, until: Instant, now: Instant) {
        if self.until.len() >= self.capacity && !self.until.contains_key(identifier) {
            self.until.retain(|_, u| *u > now);
            if self.until.len() >= self.capacity {
                return;
            }
        }
        self.until.insert(identifier.to_owned(), until);
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.until.len()
    }
}

/// Tokens of one identifier this replica took from Redis and spends locally.
#[derive(Debug, Clone, Copy)]
struct Lease {
    /// The fixed window the tokens were counted in; they are never spent in another.
    window_index: u64,
    /// Tokens not yet spent.
    tokens: u32,
    /// What Redis said remained for everyone right after the grant.
    shared_remaining: u32,
    /// When the lease stops being spent (its unspent tokens are then given back).
    expires: Instant,
    /// The reset instant Redis' answer implied.
    reset_at: Instant,
}

/// A lease answer: the remaining estimate and the reset instant for the headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Spent {
    pub remaining: u32,
    pub reset_at: Instant,
    /// This token took the lease down to its refill mark: the caller should take the next lease
    /// now, in the background, so no request waits for it.
    pub refill: bool,
}

/// Leases held by this replica, per identifier. Bounded: when full (after dropping dead leases)
/// no new lease is remembered, and callers ask Redis for one token at a time (exact mode).
#[derive(Debug)]
pub(crate) struct Leases {
    held: HashMap<String, Lease>,
    capacity: usize,
    /// Spending down to this many tokens asks for the next lease ahead of need (0 = never).
    refill_at: u32,
}

impl Leases {
    pub fn new(capacity: usize, refill_at: u32) -> Self {
        Self { held: HashMap::new(), capacity, refill_at }
    }

    /// Spends one token of a live lease of `identifier` in `window_index`, if there is one.
    pub fn spend(&mut self, identifier: &str, window_index: u64, now: Instant) -> Option<Spent> {
        let lease = self.held.get_mut(identifier)?;
        if lease.window_index != window_index || lease.expires <= now || lease.tokens == 0 {
            return None;
        }
        lease.tokens -= 1;
        // Only the token that reaches the mark asks (a grant lifts the count above it again, so
        // at most one refill per lease is in flight), and only while Redis had room to give.
        let refill =
            self.refill_at > 0 && lease.tokens == self.refill_at && lease.shared_remaining > 0;
        Some(Spent {
            remaining: lease.shared_remaining.saturating_add(lease.tokens),
            reset_at: lease.reset_at,
            refill,
        })
    }

    /// Removes the dead lease of `identifier` (expired, of another window or empty) and returns
    /// its unspent tokens with their window, to be given back to Redis with the next grant.
    pub fn take_back(&mut self, identifier: &str) -> Option<(u64, u32)> {
        let lease = self.held.remove(identifier)?;
        (lease.tokens > 0).then_some((lease.window_index, lease.tokens))
    }

    /// Whether a new identifier's lease could be remembered now.
    pub fn has_room(&mut self, identifier: &str, now: Instant) -> bool {
        if self.held.len() < self.capacity || self.held.contains_key(identifier) {
            return true;
        }
        self.held.retain(|_, lease| lease.expires > now && lease.tokens > 0);
        self.held.len() < self.capacity
    }

    /// Records `tokens` granted in `window_index` and not spent yet, and returns the remaining
    /// estimate. A grant for the same window as the held lease (a refill ahead of need, or a
    /// concurrent one) adds to its tokens.
    pub fn grant(
        &mut self,
        identifier: &str,
        window_index: u64,
        tokens: u32,
        shared_remaining: u32,
        expires: Instant,
        reset_at: Instant,
    ) -> u32 {
        let lease = self.held.entry(identifier.to_owned()).or_insert(Lease {
            window_index,
            tokens: 0,
            shared_remaining,
            expires,
            reset_at,
        });
        if lease.window_index > window_index {
            // A grant that was in flight while the window turned: the newer lease stays. (Its
            // tokens were counted in a window that is over; the sliding estimate weighs them less
            // every millisecond.)
            return shared_remaining;
        }
        if lease.window_index < window_index {
            // A lease of an older window still here (a concurrent refill): its tokens are dead.
            lease.tokens = 0;
            lease.window_index = window_index;
        }
        lease.tokens = lease.tokens.saturating_add(tokens);
        lease.shared_remaining = shared_remaining;
        lease.expires = expires;
        lease.reset_at = reset_at;
        shared_remaining.saturating_add(lease.tokens)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.held.len()
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
    use std::time::Duration;

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

    #[test]
    fn a_lease_is_spent_in_its_window_only_and_gives_back_what_is_left() {
        let now = Instant::now();
        let later = now + Duration::from_secs(1);
        let mut leases = Leases::new(1, 0);
        // 5 granted, one taken by the caller; Redis had 20 left for everyone after the grant.
        assert_eq!(leases.grant("a", 7, 4, 20, later, later), 24);
        assert_eq!(leases.spend("a", 7, now).map(|s| s.remaining), Some(23));
        // Another window, or past expiry: not spent.
        assert_eq!(leases.spend("a", 8, now), None);
        assert_eq!(leases.spend("a", 7, later), None);
        assert!(!leases.has_room("b", now));
        assert_eq!(leases.take_back("a"), Some((7, 3)));
        assert_eq!(leases.len(), 0);
        assert!(leases.has_room("b", now));
    }

    #[test]
    fn the_token_that_reaches_the_refill_mark_asks_for_the_next_lease_once() {
        let now = Instant::now();
        let later = now + Duration::from_secs(1);
        let mut leases = Leases::new(1, 2);
        leases.grant("a", 7, 4, 20, later, later);
        let asks = |leases: &mut Leases| leases.spend("a", 7, now).map(|s| s.refill);
        // 4 → 3: above the mark; 3 → 2: the mark; 2 → 1, 1 → 0: a refill is already asked for.
        assert_eq!(asks(&mut leases), Some(false));
        assert_eq!(asks(&mut leases), Some(true));
        assert_eq!(asks(&mut leases), Some(false));
        // The refill lands: its tokens add up, and spending down asks again at the mark.
        assert_eq!(leases.grant("a", 7, 4, 16, later, later), 21);
        let refills: Vec<_> = (0..5).filter_map(|_| asks(&mut leases)).collect();
        assert_eq!(refills, vec![false, false, true, false, false]);
        // Redis had no room left at the last grant: nothing to ask for.
        leases.grant("a", 7, 3, 0, later, later);
        let refills: Vec<_> = (0..3).filter_map(|_| asks(&mut leases)).collect();
        assert_eq!(refills, vec![false, false, false]);
    }

    #[test]
    fn a_grant_that_lands_after_the_window_turned_leaves_the_newer_lease_alone() {
        let now = Instant::now();
        let later = now + Duration::from_secs(1);
        let mut leases = Leases::new(1, 0);
        leases.grant("a", 8, 5, 50, later, later);
        // A refill sent in window 7 answers late: window 8's lease keeps its tokens.
        assert_eq!(leases.grant("a", 7, 9, 40, later, later), 40);
        assert_eq!(leases.spend("a", 8, now).map(|s| s.remaining), Some(54));
        // The other way round, the older lease's tokens are dead.
        leases.grant("a", 9, 2, 30, later, later);
        assert_eq!(leases.take_back("a"), Some((9, 2)));
    }

    #[test]
    fn the_blocked_cache_forgets_expired_entries_and_never_grows_past_its_bound() {
        let now = Instant::now();
        let mut cache = BlockedCache::new(1);
        cache.block("a", now + Duration::from_secs(1), now);
        cache.block("b", now + Duration::from_secs(1), now);
        assert_eq!(cache.len(), 1);
        assert!(cache.blocked_until("a", now).is_some());
        assert!(cache.blocked_until("b", now).is_none());
        let later = now + Duration::from_secs(2);
        assert!(cache.blocked_until("a", later).is_none());
        cache.block("b", later + Duration::from_secs(1), later);
        assert!(cache.blocked_until("b", later).is_some());
    }
}

//! The leases a replica holds: tokens per identifier taken from Redis in one grant and spent in
//! memory, in the fixed window they were counted in, until they expire or run out.

use std::collections::HashMap;
use std::time::Instant;

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
}

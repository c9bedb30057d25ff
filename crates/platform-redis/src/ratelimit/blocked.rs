//! The blocked-caller cache: identifiers a decision denied, answered from memory until their
//! reset instant with no Redis command (other replicas can only delay a reset, never advance it).

use std::collections::HashMap;
use std::time::Instant;

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

    /// Forgets `identifier` (its limit changed, so its reset instant may have).
    pub fn unblock(&mut self, identifier: &str) {
        self.until.remove(identifier);
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.until.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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

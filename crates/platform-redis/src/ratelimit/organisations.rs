//! Per-organisation limits of `by_organisation` policies: each known organisation's tier and
//! override, held in process (no Redis round trip per request) and set by the service whenever it
//! learns a change.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, RwLock};

use super::settings::{MAX_LIMIT, PolicySettings};

/// What one organisation is allowed, per minute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Allowance {
    pub(super) tier: String,
    pub(super) per_minute: u32,
}

/// The organisations known to this process, by rate-limit identifier.
#[derive(Debug, Default)]
pub(super) struct Organisations {
    /// Requests per minute by tier.
    tiers: BTreeMap<String, u32>,
    known: RwLock<HashMap<String, Allowance>>,
    /// Requests of known organisations refused, by tier.
    denied: Mutex<BTreeMap<String, u64>>,
}

impl Organisations {
    pub(super) fn new(tiers: BTreeMap<String, u32>) -> Self {
        Self { tiers, known: RwLock::default(), denied: Mutex::default() }
    }

    /// Records `identifier`'s tier and override; an unknown tier without an override forgets it
    /// (the policy's own limit applies). Returns whether its allowance changed.
    pub(super) fn set(&self, identifier: &str, tier: &str, per_minute: Option<u32>) -> bool {
        let per_minute = per_minute.or_else(|| self.tiers.get(tier).copied());
        let allowance =
            per_minute.map(|per_minute| Allowance { tier: tier.to_owned(), per_minute });
        if self.known.read().unwrap_or_else(|p| p.into_inner()).get(identifier)
            == allowance.as_ref()
        {
            return false;
        }
        let mut known = self.known.write().unwrap_or_else(|p| p.into_inner());
        match allowance {
            Some(allowance) => known.insert(identifier.to_owned(), allowance),
            None => known.remove(identifier),
        };
        true
    }

    /// `identifier`'s limit under `policy`: its allowance scaled to the policy's window, or
    /// `None` when it is not a known organisation.
    pub(super) fn limit(&self, identifier: &str, policy: &PolicySettings) -> Option<u32> {
        let known = self.known.read().unwrap_or_else(|p| p.into_inner());
        let per_minute = known.get(identifier)?.per_minute;
        let scaled = (u64::from(per_minute) * policy.window_secs).div_ceil(60);
        Some(u32::try_from(scaled).unwrap_or(MAX_LIMIT).clamp(1, MAX_LIMIT))
    }

    /// Counts a refused request of `identifier` under its tier, when it is a known organisation.
    pub(super) fn count_denied(&self, identifier: &str) {
        let Some((tier, _)) = self.allowance(identifier) else { return };
        *self.denied.lock().unwrap_or_else(|p| p.into_inner()).entry(tier).or_default() += 1;
    }

    /// Refused requests of known organisations by tier, since start.
    pub(super) fn denied(&self) -> Vec<(String, u64)> {
        let denied = self.denied.lock().unwrap_or_else(|p| p.into_inner());
        denied.iter().map(|(tier, count)| (tier.clone(), *count)).collect()
    }

    /// `identifier`'s tier and requests per minute, when it is a known organisation.
    pub(super) fn allowance(&self, identifier: &str) -> Option<(String, u32)> {
        let known = self.known.read().unwrap_or_else(|p| p.into_inner());
        known.get(identifier).map(|allowance| (allowance.tier.clone(), allowance.per_minute))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn organisations_get_their_tier_or_override_scaled_to_the_window() {
        let organisations =
            Organisations::new(BTreeMap::from([("free".into(), 100), ("growth".into(), 1_000)]));
        organisations.set("org:a", "free", None);
        organisations.set("org:b", "growth", Some(250));
        organisations.set("org:c", "platinum", None);
        let minute = PolicySettings::new(5, 60);
        let ten_seconds = PolicySettings::new(5, 10);
        assert_eq!(organisations.limit("org:a", &minute), Some(100));
        assert_eq!(organisations.limit("org:a", &ten_seconds), Some(17));
        assert_eq!(organisations.limit("org:b", &minute), Some(250));
        assert_eq!(organisations.limit("org:c", &minute), None, "unknown tier: the policy's limit");
        assert_eq!(organisations.allowance("org:b"), Some(("growth".to_owned(), 250)));
        organisations.count_denied("org:b");
        organisations.count_denied("org:unknown");
        assert_eq!(organisations.denied(), [("growth".to_owned(), 1)]);
        organisations.set("org:b", "growth", None);
        assert_eq!(organisations.limit("org:b", &minute), Some(1_000), "override removed");
    }
}

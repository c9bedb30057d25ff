//! Per-organisation limits of `by_organisation` policies: each known organisation's tier and
//! override, held in process (no Redis round trip per request) and set by the service whenever it
//! learns a change.

use std::collections::{BTreeMap, HashMap};
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

use super::settings::{MAX_LIMIT, PolicySettings};

/// What one organisation is allowed, per minute, and the tier its requests count under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Allowance {
    pub(super) tier: String,
    /// Its place in [`Organisations::tiers`] (`None`: a tier not configured, with an override).
    tier_index: Option<usize>,
    pub(super) per_minute: u32,
}

/// A configured tier and its requests since start.
#[derive(Debug)]
struct Tier {
    name: String,
    per_minute: u32,
    allowed: AtomicU64,
    denied: AtomicU64,
}

/// The organisations known to this process, by rate-limit identifier.
#[derive(Debug, Default)]
pub(super) struct Organisations {
    /// The configured tiers, by name; fixed at start, so counting needs no lock.
    tiers: Vec<Tier>,
    known: RwLock<HashMap<String, Allowance>>,
}

impl Organisations {
    pub(super) fn new(tiers: BTreeMap<String, u32>) -> Self {
        let tiers = tiers
            .into_iter()
            .map(|(name, per_minute)| Tier {
                name,
                per_minute,
                allowed: AtomicU64::new(0),
                denied: AtomicU64::new(0),
            })
            .collect();
        Self { tiers, known: RwLock::default() }
    }

    /// Records `identifier`'s tier and override; an unknown tier without an override forgets it
    /// (the policy's own limit applies). Returns whether its allowance changed.
    pub(super) fn set(&self, identifier: &str, tier: &str, per_minute: Option<u32>) -> bool {
        let tier_index = self.tiers.iter().position(|t| t.name == tier);
        let per_minute = per_minute.or_else(|| tier_index.map(|i| self.tiers[i].per_minute));
        let allowance = per_minute.map(|per_minute| Allowance {
            tier: tier.to_owned(),
            tier_index,
            per_minute,
        });
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

    /// `identifier`'s limit under `policy` (its allowance scaled to the policy's window) and its
    /// tier's place for [`Organisations::count`], or `None` when it is not a known organisation.
    pub(super) fn limit(
        &self,
        identifier: &str,
        policy: &PolicySettings,
    ) -> Option<(u32, Option<usize>)> {
        let known = self.known.read().unwrap_or_else(|p| p.into_inner());
        let allowance = known.get(identifier)?;
        let scaled = (u64::from(allowance.per_minute) * policy.window_secs).div_ceil(60);
        let limit = u32::try_from(scaled).unwrap_or(MAX_LIMIT).clamp(1, MAX_LIMIT);
        Some((limit, allowance.tier_index))
    }

    /// Counts one decision under the tier at `tier_index`.
    pub(super) fn count(&self, tier_index: usize, allowed: bool) {
        if let Some(tier) = self.tiers.get(tier_index) {
            let counter = if allowed { &tier.allowed } else { &tier.denied };
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// (tier, requests allowed, requests refused) of known organisations since start.
    pub(super) fn requests(&self) -> Vec<(String, u64, u64)> {
        self.tiers
            .iter()
            .map(|t| {
                let count = |c: &AtomicU64| c.load(Ordering::Relaxed);
                (t.name.clone(), count(&t.allowed), count(&t.denied))
            })
            .collect()
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
        let limit =
            |id: &str, policy: &PolicySettings| organisations.limit(id, policy).map(|l| l.0);
        assert_eq!(limit("org:a", &minute), Some(100));
        assert_eq!(limit("org:a", &ten_seconds), Some(17));
        assert_eq!(limit("org:b", &minute), Some(250));
        assert_eq!(limit("org:c", &minute), None, "unknown tier: the policy's limit");
        assert_eq!(organisations.allowance("org:b"), Some(("growth".to_owned(), 250)));
        let growth = organisations.limit("org:b", &minute).and_then(|l| l.1);
        organisations.count(growth.unwrap_or(usize::MAX), false);
        organisations.count(growth.unwrap_or(usize::MAX), true);
        assert_eq!(
            organisations.requests(),
            [("free".to_owned(), 0, 0), ("growth".to_owned(), 1, 1)]
        );
        organisations.set("org:b", "growth", None);
        assert_eq!(limit("org:b", &minute), Some(1_000), "override removed");
    }
}

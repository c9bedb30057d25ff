//! The organisations' plans: which tier and overrides bill and limit an organisation. campaign-api
//! owns them and publishes every change on the organisation stream; usage-meter keeps what it
//! learned in Postgres ([`crate::db::organisations`]).
//!
//! A bill uses the plan in force at the end of its month: a change during a month applies to the
//! whole month (an upgrade bills the new tier's price and allowances for that month, a downgrade
//! too). Quota checks use the newest plan, through [`Directory`], an in-process copy kept for
//! `ttl`, so a check costs no Postgres round trip and every replica follows a change within `ttl`
//! (at once on the replica that applied it). An organisation campaign-api never published is
//! billed by `[billing.org_tiers]`, else `[billing] default_tier`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use moka::future::Cache;
use sqlx::PgPool;

use crate::db::organisations::{self, PlanRow};
use crate::domain::pricing::{BillingSettings, TierSettings};
use crate::domain::usage::{Month, OrgId};

/// An organisation's tier and its overrides of the tier's included quantities.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub tier: String,
    pub included: BTreeMap<String, i64>,
}

impl From<PlanRow> for Plan {
    fn from(row: PlanRow) -> Self {
        Plan { tier: row.tier, included: row.included.0 }
    }
}

/// The tier an organisation is priced and limited by, with its overrides applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Priced {
    pub tier_key: String,
    pub tier: TierSettings,
    /// Whether campaign-api published the organisation (else the configuration decided).
    pub learned: bool,
}

impl BillingSettings {
    /// `explicit` (a `?tier=` what-if) wins, then the learned plan, then `[billing.org_tiers]`,
    /// then `default_tier`.
    pub fn price(
        &self,
        org: &OrgId,
        explicit: Option<&str>,
        learned: Option<&Plan>,
    ) -> Result<Priced, String> {
        let plan = if explicit.is_some() { None } else { learned };
        let (tier_key, tier) =
            self.tier_of(org, explicit.or(plan.map(|plan| plan.tier.as_str())))?;
        let mut tier = tier.clone();
        if let Some(plan) = plan {
            tier.limits
                .extend(plan.included.iter().map(|(metric, value)| (metric.clone(), *value)));
        }
        Ok(Priced { tier_key: tier_key.to_owned(), tier, learned: plan.is_some() })
    }
}

/// The plan of `org` for the bill of `month`.
pub async fn plan_for_month(
    db: &PgPool,
    org: &OrgId,
    month: Month,
) -> Result<Option<Plan>, sqlx::Error> {
    Ok(organisations::in_force_before(db, org.as_str(), month.end()).await?.map(Plan::from))
}

/// The newest plans, cached in process for a bounded time. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Directory {
    db: PgPool,
    plans: Cache<String, Option<Arc<Plan>>>,
}

impl Directory {
    pub fn new(db: PgPool, ttl: Duration) -> Self {
        Self { db, plans: Cache::builder().max_capacity(100_000).time_to_live(ttl).build() }
    }

    /// The newest plan of `org`, `None` when campaign-api never published it.
    pub async fn plan(&self, org: &OrgId) -> Result<Option<Arc<Plan>>, Arc<sqlx::Error>> {
        let db = self.db.clone();
        let id = org.as_str().to_owned();
        self.plans
            .try_get_with(id.clone(), async move {
                Ok(organisations::current(&db, &id).await?.map(|row| Arc::new(Plan::from(row))))
            })
            .await
    }

    /// Drops the copy of `org` (this replica just stored a new version of it).
    pub async fn forget(&self, org: &str) {
        self.plans.invalidate(org).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn billing() -> BillingSettings {
        let tier = |name: &str, sms: i64| TierSettings {
            name: name.into(),
            base_price_cents: 0,
            custom_pricing: false,
            limits: BTreeMap::from([("sms_sent".to_owned(), sms)]),
            overage_millicents: BTreeMap::new(),
        };
        BillingSettings {
            default_tier: "free".into(),
            org_tiers: [("configured".to_owned(), "starter".to_owned())].into(),
            tiers: [
                ("free".to_owned(), tier("Free", 0)),
                ("starter".to_owned(), tier("Starter", 100)),
            ]
            .into(),
        }
    }

    fn org(id: &str) -> OrgId {
        OrgId::parse(id).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn the_learned_plan_wins_over_configuration_and_a_what_if_tier_over_both() {
        let billing = billing();
        let learned =
            Plan { tier: "free".into(), included: BTreeMap::from([("sms_sent".into(), 7)]) };
        let priced = billing.price(&org("configured"), None, Some(&learned));
        let priced = priced.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((priced.tier_key.as_str(), priced.tier.limit("sms_sent")), ("free", Some(7)));
        let unknown =
            billing.price(&org("configured"), None, None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((unknown.tier_key.as_str(), unknown.learned), ("starter", false));
        let what_if = billing
            .price(&org("configured"), Some("starter"), Some(&learned))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(what_if.tier.limit("sms_sent"), Some(100), "overrides go with the learned tier");
    }
}

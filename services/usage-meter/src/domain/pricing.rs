//! Pricing tiers (`[billing]` settings) and the monthly bill: integer money only, cents for
//! prices and totals, millicents (1/1000 cent) for per-unit overage rates.
//!
//! Rounding: each line's amount is `overage × rate` millicents, rounded half up to whole cents;
//! the total is the base price plus the rounded lines, so the lines always add up to the total.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::domain::usage::{Metric, Month, OrgId, is_usage_field};

/// `[billing]`.
#[derive(Debug, Clone, Deserialize)]
pub struct BillingSettings {
    /// Tier of organisations not listed in `org_tiers`.
    pub default_tier: String,
    /// Organisation id → tier name.
    #[serde(default)]
    pub org_tiers: HashMap<String, String>,
    /// Tier name → its price, limits and overage rates.
    pub tiers: BTreeMap<String, TierSettings>,
}

/// `[billing.tiers.<name>]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct TierSettings {
    /// Display name.
    pub name: String,
    pub base_price_cents: i64,
    /// Enterprise: priced by contract; the bill still shows base price and usage.
    #[serde(default)]
    pub custom_pricing: bool,
    /// Metric → included quantity per month; a metric not listed is unlimited.
    #[serde(default)]
    pub limits: BTreeMap<String, i64>,
    /// Metric → price of one unit beyond the limit, in millicents; none = overage not billed.
    #[serde(default)]
    pub overage_millicents: BTreeMap<String, i64>,
}

impl TierSettings {
    /// The included quantity of `metric`, `None` when unlimited.
    pub fn limit(&self, metric: &str) -> Option<i64> {
        self.limits.get(metric).copied()
    }
}

impl BillingSettings {
    /// Checks names and signs; the message names the setting at fault.
    pub fn validate(&self) -> Result<(), String> {
        if !self.tiers.contains_key(&self.default_tier) {
            return Err(format!("billing.default_tier {:?} is not a tier", self.default_tier));
        }
        for (org, tier) in &self.org_tiers {
            if !self.tiers.contains_key(tier) {
                return Err(format!("billing.org_tiers.{org} names unknown tier {tier:?}"));
            }
        }
        for (name, tier) in &self.tiers {
            if tier.base_price_cents < 0 {
                return Err(format!("billing.tiers.{name}.base_price_cents is negative"));
            }
            for (table, map) in
                [("limits", &tier.limits), ("overage_millicents", &tier.overage_millicents)]
            {
                for (metric, value) in map {
                    if !is_usage_field(metric) {
                        return Err(format!(
                            "billing.tiers.{name}.{table}.{metric} is not a metric"
                        ));
                    }
                    if *value < 0 {
                        return Err(format!("billing.tiers.{name}.{table}.{metric} is negative"));
                    }
                }
            }
        }
        Ok(())
    }

    /// The tier name of `org`: the explicit one if given, else the configured or default one.
    pub fn tier_of<'a>(
        &'a self,
        org: &OrgId,
        explicit: Option<&'a str>,
    ) -> Result<(&'a str, &'a TierSettings), String> {
        let name = explicit
            .or_else(|| self.org_tiers.get(org.as_str()).map(String::as_str))
            .unwrap_or(&self.default_tier);
        self.tiers
            .get_key_value(name)
            .map(|(k, v)| (k.as_str(), v))
            .ok_or_else(|| format!("unknown tier {name:?}"))
    }
}

/// One metered metric on a bill.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LineItem {
    pub metric: String,
    pub used: i64,
    /// Included quantity; `null` when unlimited.
    pub included: Option<i64>,
    pub unlimited: bool,
    pub overage: i64,
    /// Price of one unit beyond the limit, millicents; 0 when overage is not billed.
    pub unit_rate_millicents: i64,
    pub amount_millicents: i64,
    pub amount_cents: i64,
}

/// A month's bill. `source` is set by the caller (where the usage came from).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Bill {
    pub org_id: String,
    pub month: String,
    pub tier: String,
    pub tier_name: String,
    pub currency: String,
    pub base_price_cents: i64,
    pub overage_cents: i64,
    pub total_cents: i64,
    pub custom_pricing: bool,
    pub line_items: Vec<LineItem>,
    pub usage: BTreeMap<String, i64>,
}

fn clamp(value: i128) -> i64 {
    i64::try_from(value).unwrap_or(if value < 0 { i64::MIN } else { i64::MAX })
}

/// Prices `usage` (counter name → value) on `tier`.
pub fn compute_bill(
    org: &OrgId,
    month: Month,
    tier_key: &str,
    tier: &TierSettings,
    usage: &BTreeMap<String, i64>,
) -> Bill {
    let mut line_items = Vec::with_capacity(Metric::ALL.len());
    let mut overage_cents: i128 = 0;
    for metric in Metric::ALL.into_iter().filter(|m| m.is_billed()) {
        let name = metric.as_str();
        let used = usage.get(name).copied().unwrap_or(0);
        let included = tier.limit(name);
        let overage = included.map_or(0, |limit| used.saturating_sub(limit).max(0));
        let rate = tier.overage_millicents.get(name).copied().unwrap_or(0);
        let millicents = i128::from(overage) * i128::from(rate);
        // Half up to whole cents.
        let cents = (millicents + 500) / 1000;
        overage_cents += cents;
        line_items.push(LineItem {
            metric: name.to_owned(),
            used,
            included,
            unlimited: included.is_none(),
            overage,
            unit_rate_millicents: rate,
            amount_millicents: clamp(millicents),
            amount_cents: clamp(cents),
        });
    }
    let overage_cents = clamp(overage_cents);
    Bill {
        org_id: org.to_string(),
        month: month.to_string(),
        tier: tier_key.to_owned(),
        tier_name: tier.name.clone(),
        currency: "usd".into(),
        base_price_cents: tier.base_price_cents,
        overage_cents,
        total_cents: tier.base_price_cents.saturating_add(overage_cents),
        custom_pricing: tier.custom_pricing,
        line_items,
        usage: usage.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn growth() -> TierSettings {
        TierSettings {
            name: "Growth".into(),
            base_price_cents: 9900,
            custom_pricing: false,
            limits: [("api_request".to_owned(), 200_000)].into(),
            overage_millicents: [("api_request".to_owned(), 10)].into(),
        }
    }

    fn bill_for(api_requests: i64) -> Bill {
        let org = OrgId::parse("o").unwrap_or_else(|_| unreachable!());
        let usage = [("api_request".to_owned(), api_requests)].into();
        let month = "2026-11".parse().unwrap_or_else(|_| unreachable!());
        compute_bill(&org, month, "growth", &growth(), &usage)
    }

    #[test]
    fn line_amounts_round_half_up_to_whole_cents_and_add_up_to_the_total() {
        // 49 requests over = 490 millicents → 0 cents; 50 over = 500 millicents → 1 cent.
        assert_eq!(bill_for(200_049).overage_cents, 0);
        assert_eq!(bill_for(200_050).overage_cents, 1);
        assert_eq!(bill_for(199_000).total_cents, 9900);
        let bill = bill_for(250_000);
        assert_eq!(bill.line_items[0].amount_millicents, 500_000);
        assert_eq!(bill.total_cents, 9900 + 500);
        let lines: i64 = bill.line_items.iter().map(|l| l.amount_cents).sum();
        assert_eq!(bill.base_price_cents + lines, bill.total_cents);
    }

    #[test]
    fn rate_limit_hits_are_reported_as_usage_but_never_billed() {
        let org = OrgId::parse("o").unwrap_or_else(|_| unreachable!());
        let usage = [("api_request".to_owned(), 10), ("rate_limited".to_owned(), 5_000_000)].into();
        let month = "2026-11".parse().unwrap_or_else(|_| unreachable!());

        let bill = compute_bill(&org, month, "growth", &growth(), &usage);

        assert!(bill.line_items.iter().all(|l| l.metric != "rate_limited"));
        assert_eq!(bill.usage.get("rate_limited"), Some(&5_000_000));
        assert_eq!(bill.total_cents, 9900);
    }
}

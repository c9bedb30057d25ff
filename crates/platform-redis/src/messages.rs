//! Message types carried on pub/sub channels and streams (serde, versioned, traced).
//!
//! Every message travels inside an [`Envelope`]: a schema version `v` (readers reject versions
//! they do not know instead of misreading them), the W3C `traceparent` of the span that produced
//! it (so one trace follows an event across services), and the body. Bodies use `camelCase` JSON
//! like the HTTP APIs.

use serde::{Deserialize, Serialize};

/// Current version of every message body defined here.
pub const MESSAGE_VERSION: u32 = 1;

/// A message with its version and trace context.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<T> {
    pub v: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    pub body: T,
}

impl<T> Envelope<T> {
    /// Wraps `body` with the current version and the current span's trace context.
    pub fn new(body: T) -> Self {
        Self { v: MESSAGE_VERSION, traceparent: crate::trace::current_traceparent(), body }
    }
}

/// Tells every replica to drop in-process cache entries. Published on
/// [`crate::keys::Keys::invalidation_channel`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Invalidation {
    /// These entry keys (as built by [`crate::keys::Keys::cache_entry`]).
    Keys { keys: Vec<String> },
    /// Every entry of this group.
    Group { group: String },
}

/// A live update of one campaign, published on
/// [`crate::keys::Keys::campaign_updates_channel`] and relayed to browsers as SSE.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CampaignUpdate {
    #[serde(rename_all = "camelCase")]
    NewDonation { campaign_id: String, amount_cents: i64, raised_cents: i64, donation_count: i64 },
    #[serde(rename_all = "camelCase")]
    GoalReached { campaign_id: String, goal_cents: i64, raised_cents: i64 },
    #[serde(rename_all = "camelCase")]
    CampaignEnded { campaign_id: String },
}

/// A verified Stripe event as handed from webhook-ingest to the Stripe event stream. The raw JSON
/// is kept whole: consumers parse what they need, and events of any API version pass through.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StripeEventMessage {
    pub event_id: String,
    pub event_type: String,
    /// Unix seconds, from the event's `created`.
    pub created: i64,
    pub livemode: bool,
    #[serde(default)]
    pub api_version: Option<String>,
    /// `data.object.id`.
    #[serde(default)]
    pub object_id: Option<String>,
    /// `data.object.customer` where the object has one.
    #[serde(default)]
    pub customer_id: Option<String>,
    /// The event exactly as Stripe sent it.
    pub raw: String,
}

/// One usage event for usage-meter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageEvent {
    pub org_id: String,
    /// `api_request`, `donation_processed`, `email_sent`, `sms_sent`, `storage_used`,
    /// `campaign_created`; usage-meter validates and dead-letters unknown ones.
    pub metric: String,
    pub value: i64,
    /// RFC 3339; usage-meter uses its own clock when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub occurred_at: Option<String>,
    /// Producer-chosen key: an event whose key was seen before is not counted again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
}

/// An entry of [`crate::keys::StreamName::OrganisationEvents`], from campaign-api's outbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OrganisationEvent {
    /// An organisation was created or changed: its whole state at `version`.
    OrganisationChanged(OrganisationState),
    /// A campaign was created (counted once as `campaign_created` usage).
    #[serde(rename_all = "camelCase")]
    CampaignCreated { org_id: String, campaign_id: String, created_at: String },
    /// The organisation's campaigns running now (started, not ended, disabled or deleted), as
    /// counted at `at` (RFC 3339) after a change that may have moved it; the latest `at` wins.
    #[serde(rename_all = "camelCase")]
    ActiveCampaigns { org_id: String, count: i64, at: String },
}

/// One organisation as campaign-api knows it at one version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrganisationState {
    pub org_id: String,
    pub slug: String,
    pub name: String,
    /// `free`, `starter`, `growth` or `enterprise`.
    pub tier: String,
    /// Grows by one with every change: readers keep the highest they saw.
    pub version: i64,
    /// RFC 3339: when this version was written (the tier applies from then on).
    pub changed_at: String,
    #[serde(default)]
    pub overrides: OrganisationOverrides,
}

/// Per-organisation exceptions to its tier.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrganisationOverrides {
    /// Requests per minute of the `api` rate-limit policy instead of the tier's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_requests_per_minute: Option<u32>,
    /// Metric → included quantity per month instead of the tier's.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub included: std::collections::BTreeMap<String, i64>,
}

impl OrganisationOverrides {
    /// The metrics whose included quantity an override may set (the billed ones).
    pub const INCLUDED_METRICS: [&'static str; 6] = [
        "api_request",
        "donation_processed",
        "email_sent",
        "sms_sent",
        "storage_used",
        "campaign_created",
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn campaign_update_serialises_with_snake_case_type_tag() {
        let update = CampaignUpdate::GoalReached {
            campaign_id: "7".into(),
            goal_cents: 100,
            raised_cents: 120,
        };
        let json = serde_json::to_value(&update).unwrap_or_default();
        assert_eq!(json["type"], "goal_reached");
        assert_eq!(json["campaignId"], "7");
    }

    #[test]
    fn envelope_round_trips() {
        let message = Envelope {
            v: MESSAGE_VERSION,
            traceparent: None,
            body: Invalidation::Group { group: "org:1".into() },
        };
        let text = serde_json::to_string(&message).unwrap_or_default();
        let back: Envelope<Invalidation> = serde_json::from_str(&text).unwrap_or_else(|_| {
            panic!("{text} does not parse back");
        });
        assert_eq!(back, message);
    }
}

//! Organisations: their tier and per-organisation overrides, validated from admin input, the
//! tier limits campaign-api enforces itself, and the event every change publishes.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use platform_redis::messages::{OrganisationEvent, OrganisationOverrides, OrganisationState};
use serde::{Deserialize, Deserializer, Serialize};
use sqlx::types::Json;
use utoipa::ToSchema;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, Schema, Type};
use uuid::Uuid;

use super::{NAME_MAX, Slug, text};
use crate::error::ApiError;

/// Most requests per minute an override may grant.
pub const API_REQUESTS_PER_MINUTE_MAX: u32 = 1_000_000;
/// Largest included quantity an override may set (storage bytes are the largest metric).
pub const INCLUDED_MAX: i64 = 1 << 50;

/// Pricing tier of an organisation (usage-meter bills by it, the rate limiter sizes by it).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    Default,
    ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    #[default]
    Free,
    Starter,
    Growth,
    Enterprise,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Free => "free",
            Tier::Starter => "starter",
            Tier::Growth => "growth",
            Tier::Enterprise => "enterprise",
        }
    }

    pub fn parse(raw: &str) -> Result<Tier, ApiError> {
        match raw {
            "free" => Ok(Tier::Free),
            "starter" => Ok(Tier::Starter),
            "growth" => Ok(Tier::Growth),
            "enterprise" => Ok(Tier::Enterprise),
            _ => Err(ApiError::invalid("tier", "must be one of free, starter, growth, enterprise")),
        }
    }
}

/// What campaign-api itself limits by tier (`[organisations]`).
#[derive(Debug, Clone, Default)]
pub struct TierLimits {
    /// Campaigns running or scheduled at once (not ended, not disabled, not deleted); a tier not
    /// listed has no limit.
    pub concurrent_campaigns: BTreeMap<Tier, u32>,
}

impl TierLimits {
    pub fn concurrent_campaigns(&self, tier: &str) -> Option<u32> {
        Tier::parse(tier).ok().and_then(|tier| self.concurrent_campaigns.get(&tier).copied())
    }
}

/// `POST /api/admin/organisations` body, as sent.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewOrganisationRequest {
    /// 1-63 of `a-z`, `0-9`, `-`, not starting or ending with `-`.
    #[schema(pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")]
    pub slug: String,
    /// 1-200 characters once trimmed; no control characters other than tab, CR and LF.
    #[schema(min_length = 1)]
    pub name: String,
    /// Default `free`.
    #[serde(default)]
    #[schema(value_type = Option<Tier>)]
    pub tier: Option<String>,
    /// Requests per minute on the public routes instead of the tier's.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub api_requests_per_minute: Option<u32>,
    #[serde(default)]
    #[schema(schema_with = included_overrides)]
    pub included: Option<BTreeMap<String, i64>>,
}

/// A validated new organisation.
#[derive(Debug, Clone)]
pub struct NewOrganisation {
    pub slug: Slug,
    pub name: String,
    pub tier: Tier,
    pub overrides: OrganisationOverrides,
}

impl TryFrom<NewOrganisationRequest> for NewOrganisation {
    type Error = ApiError;

    fn try_from(request: NewOrganisationRequest) -> Result<Self, ApiError> {
        let slug = Slug::parse(&request.slug).map_err(|_| {
            ApiError::invalid(
                "slug",
                "must be 1-63 characters of a-z, 0-9 and '-', not starting or ending with '-'",
            )
        })?;
        let name = text("name", &request.name, 1, NAME_MAX)?;
        let tier = request.tier.as_deref().map(Tier::parse).transpose()?.unwrap_or_default();
        let overrides = OrganisationOverrides {
            api_requests_per_minute: api_requests_per_minute(request.api_requests_per_minute)?,
            included: included(request.included.unwrap_or_default())?,
        };
        Ok(NewOrganisation { slug, name, tier, overrides })
    }
}

/// `PATCH /api/admin/organisations/{orgSlug}` body: every field optional;
/// `apiRequestsPerMinute: null` removes the override, `included` replaces the included overrides.
/// At least one field must be set (`null` sets none, except for `apiRequestsPerMinute`).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OrganisationPatch {
    /// 1-200 characters once trimmed; no control characters other than tab, CR and LF.
    #[schema(min_length = 1)]
    pub name: Option<String>,
    #[schema(value_type = Option<Tier>)]
    pub tier: Option<String>,
    /// Requests per minute on the public routes instead of the tier's; `null` removes it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u32>, minimum = 1, maximum = 1_000_000)]
    pub api_requests_per_minute: Option<Option<u32>>,
    #[schema(schema_with = included_overrides)]
    pub included: Option<BTreeMap<String, i64>>,
}

/// The schema of `included` in admin writes: only the billed metrics, each 0 to
/// [`INCLUDED_MAX`] (a map in Rust, so its keys need a hand-built schema). `null` leaves it out.
fn included_overrides() -> RefOr<Schema> {
    let mut object = ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::SchemaType::from_iter([Type::Object, Type::Null]))
        .description(Some(
            "Metric → included quantity per month instead of the tier's (replaces them all)",
        ))
        .additional_properties(Some(AdditionalProperties::FreeForm(false)));
    for metric in OrganisationOverrides::INCLUDED_METRICS {
        object = object.property(
            metric,
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                    utoipa::openapi::KnownFormat::Int64,
                )))
                .minimum(Some(0))
                .maximum(Some(INCLUDED_MAX as f64)),
        );
    }
    RefOr::T(Schema::Object(object.build()))
}

/// A field that is present, possibly `null` (absent stays `None` through `#[serde(default)]`).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(deserializer).map(Some)
}

impl OrganisationPatch {
    /// The organisation's new name, tier and overrides, validated; `EmptyPatch` when nothing is set.
    pub fn apply(
        self,
        current: &Organisation,
    ) -> Result<(String, Tier, OrganisationOverrides), ApiError> {
        if self.name.is_none()
            && self.tier.is_none()
            && self.api_requests_per_minute.is_none()
            && self.included.is_none()
        {
            return Err(ApiError::EmptyPatch);
        }
        let name = match self.name {
            Some(name) => text("name", &name, 1, NAME_MAX)?,
            None => current.name.clone(),
        };
        let tier = Tier::parse(self.tier.as_deref().unwrap_or(&current.tier))?;
        let overrides = OrganisationOverrides {
            api_requests_per_minute: match self.api_requests_per_minute {
                Some(value) => api_requests_per_minute(value)?,
                None => current.api_requests_per_minute.and_then(|v| u32::try_from(v).ok()),
            },
            included: match self.included {
                Some(map) => included(map)?,
                None => current.included.0.clone(),
            },
        };
        Ok((name, tier, overrides))
    }
}

fn api_requests_per_minute(value: Option<u32>) -> Result<Option<u32>, ApiError> {
    match value {
        Some(v) if v == 0 || v > API_REQUESTS_PER_MINUTE_MAX => Err(ApiError::invalid(
            "apiRequestsPerMinute",
            format!("must be between 1 and {API_REQUESTS_PER_MINUTE_MAX}"),
        )),
        other => Ok(other),
    }
}

fn included(map: BTreeMap<String, i64>) -> Result<BTreeMap<String, i64>, ApiError> {
    for (metric, value) in &map {
        if !OrganisationOverrides::INCLUDED_METRICS.contains(&metric.as_str()) {
            return Err(ApiError::invalid(
                "included",
                format!(
                    "{metric:?} is not a metered metric (one of {})",
                    OrganisationOverrides::INCLUDED_METRICS.join(", ")
                ),
            ));
        }
        if !(0..=INCLUDED_MAX).contains(value) {
            return Err(ApiError::invalid(
                "included",
                format!("{metric} must be between 0 and {INCLUDED_MAX}"),
            ));
        }
    }
    Ok(map)
}

/// An organisation as stored and as the admin API returns it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, sqlx::FromRow, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Organisation {
    pub id: Uuid,
    pub slug: String,
    pub name: String,
    #[schema(value_type = Tier)]
    pub tier: String,
    /// The requests-per-minute override; `null` when the tier's applies.
    pub api_requests_per_minute: Option<i32>,
    /// Metric → included quantity per month overriding the tier's.
    #[schema(value_type = BTreeMap<String, i64>)]
    pub included: Json<BTreeMap<String, i64>>,
    /// Grows by one with every change.
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Organisation {
    /// The event that publishes this version.
    pub fn event(&self) -> OrganisationEvent {
        OrganisationEvent::OrganisationChanged(OrganisationState {
            org_id: self.id.to_string(),
            slug: self.slug.clone(),
            name: self.name.clone(),
            tier: self.tier.clone(),
            version: self.version,
            changed_at: self.updated_at.to_rfc3339_opts(SecondsFormat::Micros, true),
            overrides: OrganisationOverrides {
                api_requests_per_minute: self
                    .api_requests_per_minute
                    .and_then(|v| u32::try_from(v).ok()),
                included: self.included.0.clone(),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(body: serde_json::Value) -> Result<NewOrganisation, ApiError> {
        let request: NewOrganisationRequest =
            serde_json::from_value(body).map_err(|e| ApiError::invalid("body", e.to_string()))?;
        NewOrganisation::try_from(request)
    }

    #[test]
    fn new_organisations_take_a_known_tier_and_valid_overrides() {
        let org = request(serde_json::json!({"slug": "st-ann", "name": "St Ann", "tier": "growth",
            "apiRequestsPerMinute": 500, "included": {"email_sent": 9000}}));
        let org = org.unwrap_or_else(|e| panic!("refused: {e}"));
        assert_eq!(org.tier, Tier::Growth);
        assert_eq!(org.overrides.api_requests_per_minute, Some(500));
        assert_eq!(org.overrides.included.get("email_sent"), Some(&9000));
        for bad in [
            serde_json::json!({"slug": "a", "name": "A", "tier": "gold"}),
            serde_json::json!({"slug": "a", "name": "A", "apiRequestsPerMinute": 0}),
            serde_json::json!({"slug": "a", "name": "A", "included": {"beer": 1}}),
            serde_json::json!({"slug": "a", "name": "A", "included": {"sms_sent": -1}}),
        ] {
            assert!(request(bad.clone()).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn a_patch_with_null_removes_the_rate_override_and_absent_fields_stay() {
        let now = Utc::now();
        let current = Organisation {
            id: Uuid::nil(),
            slug: "a".into(),
            name: "A".into(),
            tier: "free".into(),
            api_requests_per_minute: Some(300),
            included: Json(BTreeMap::from([("sms_sent".to_owned(), 5)])),
            version: 3,
            created_at: now,
            updated_at: now,
        };
        let patch: OrganisationPatch =
            serde_json::from_str(r#"{"tier":"starter","apiRequestsPerMinute":null}"#)
                .unwrap_or_default();
        let (name, tier, overrides) =
            patch.apply(&current).unwrap_or_else(|e| panic!("refused: {e}"));
        assert_eq!((name.as_str(), tier), ("A", Tier::Starter));
        assert_eq!(overrides.api_requests_per_minute, None);
        assert_eq!(overrides.included.get("sms_sent"), Some(&5));
        let empty: OrganisationPatch = serde_json::from_str("{}").unwrap_or_default();
        assert!(matches!(empty.apply(&current), Err(ApiError::EmptyPatch)));
    }
}

//! Domain types of campaign-api: validated input (slugs, campaign writes; organisations in
//! [`organisations`]) and the views the API returns. Parsing happens here, at the edge; nothing
//! below sees raw input.

pub mod organisations;

pub use organisations::{
    NewOrganisation, NewOrganisationRequest, Organisation, OrganisationPatch, Tier, TierLimits,
};

use chrono::{DateTime, Utc};
use platform_redis::cache::JsonBytes;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::ApiError;

/// Longest organisation slug (a DNS label).
pub const SLUG_MAX: usize = 63;
/// Longest organisation or campaign name, in characters.
pub const NAME_MAX: usize = 200;
/// Longest campaign description, in characters.
pub const DESCRIPTION_MAX: usize = 5_000;
/// Largest accepted goal: ten billion dollars in cents, far from `i64` overflow when summed.
pub const GOAL_MAX_CENTS: i64 = 1_000_000_000_000;
/// Campaign dates lie in years 1970 to 9999: inside Postgres' range, and four-digit as RFC 3339
/// needs them.
pub const YEARS: std::ops::RangeInclusive<i32> = 1970..=9999;

/// An organisation slug: 1–63 of `a-z`, `0-9`, `-`, not starting or ending with `-`.
/// (`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`, as the OpenAPI annotations and the table's check
/// spell it: keep them in step.)
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Slug(String);

impl Slug {
    pub fn parse(raw: &str) -> Result<Slug, ApiError> {
        let valid = !raw.is_empty()
            && raw.len() <= SLUG_MAX
            && raw.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !raw.starts_with('-')
            && !raw.ends_with('-');
        if valid { Ok(Slug(raw.to_owned())) } else { Err(ApiError::InvalidSlug) }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `POST /api/admin/organisations/{orgSlug}/campaigns` body, as sent.
// Text limits are stated in descriptions rather than as `maxLength` (here and in the other
// bodies): they apply after trimming, so a schema bound would refuse padded names we accept.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewCampaignRequest {
    /// 1-200 characters once trimmed; no control characters other than tab, CR and LF.
    #[schema(min_length = 1)]
    pub name: String,
    /// At most 5000 characters once trimmed (default empty); same characters as `name`.
    #[serde(default)]
    pub description: Option<String>,
    #[schema(minimum = 1, maximum = 1_000_000_000_000_i64)]
    pub goal_cents: i64,
    /// In the years 1970 to 9999.
    pub starts_at: DateTime<Utc>,
    /// After `startsAt`, in the years 1970 to 9999.
    pub ends_at: DateTime<Utc>,
    /// Default false.
    #[serde(default)]
    pub disabled: Option<bool>,
}

/// A validated campaign: used for creation, and as the result of applying a patch.
#[derive(Debug, Clone, PartialEq)]
pub struct CampaignFields {
    pub name: String,
    pub description: String,
    pub goal_cents: i64,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub disabled: bool,
}

impl CampaignFields {
    /// The fields as one string: an Idempotency-Key may only be reused with the same one.
    pub fn fingerprint(&self) -> String {
        serde_json::json!([
            self.name,
            self.description,
            self.goal_cents,
            self.starts_at,
            self.ends_at,
            self.disabled
        ])
        .to_string()
    }

    /// Checks every rule that spans fields or bounds a value.
    pub fn validated(self) -> Result<CampaignFields, ApiError> {
        let name = text("name", &self.name, 1, NAME_MAX)?;
        let description = text("description", &self.description, 0, DESCRIPTION_MAX)?;
        if self.goal_cents <= 0 || self.goal_cents > GOAL_MAX_CENTS {
            return Err(ApiError::invalid(
                "goalCents",
                format!("must be between 1 and {GOAL_MAX_CENTS}"),
            ));
        }
        for (field, at) in [("startsAt", self.starts_at), ("endsAt", self.ends_at)] {
            if !YEARS.contains(&chrono::Datelike::year(&at)) {
                return Err(ApiError::invalid(field, "must lie in the years 1970 to 9999"));
            }
        }
        if self.ends_at <= self.starts_at {
            return Err(ApiError::invalid("endsAt", "must be after startsAt"));
        }
        Ok(CampaignFields { name, description, ..self })
    }
}

impl TryFrom<NewCampaignRequest> for CampaignFields {
    type Error = ApiError;

    fn try_from(request: NewCampaignRequest) -> Result<Self, ApiError> {
        CampaignFields {
            name: request.name,
            description: request.description.unwrap_or_default(),
            goal_cents: request.goal_cents,
            starts_at: request.starts_at,
            ends_at: request.ends_at,
            disabled: request.disabled.unwrap_or(false),
        }
        .validated()
    }
}

/// `PATCH /api/admin/campaigns/{id}` body: every field optional (`null` is the same as absent);
/// at least one must be set, and the campaign after the patch must be valid as a whole.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CampaignPatch {
    /// 1-200 characters once trimmed; no control characters other than tab, CR and LF.
    #[schema(min_length = 1)]
    pub name: Option<String>,
    /// At most 5000 characters once trimmed; same characters as `name`.
    pub description: Option<String>,
    #[schema(minimum = 1, maximum = 1_000_000_000_000_i64)]
    pub goal_cents: Option<i64>,
    pub starts_at: Option<DateTime<Utc>>,
    /// Must be after `startsAt` (the stored one when the patch does not set it).
    pub ends_at: Option<DateTime<Utc>>,
    pub disabled: Option<bool>,
}

impl CampaignPatch {
    pub fn is_empty(&self) -> bool {
        self.name.is_none()
            && self.description.is_none()
            && self.goal_cents.is_none()
            && self.starts_at.is_none()
            && self.ends_at.is_none()
            && self.disabled.is_none()
    }

    /// The campaign after the patch, validated as a whole (so `endsAt` is checked against the
    /// stored `startsAt` when only one of them changes).
    pub fn apply(self, current: &CampaignRow) -> Result<CampaignFields, ApiError> {
        CampaignFields {
            name: self.name.unwrap_or_else(|| current.name.clone()),
            description: self.description.unwrap_or_else(|| current.description.clone()),
            goal_cents: self.goal_cents.unwrap_or(current.goal_cents),
            starts_at: self.starts_at.unwrap_or(current.starts_at),
            ends_at: self.ends_at.unwrap_or(current.ends_at),
            disabled: self.disabled.unwrap_or(current.disabled),
        }
        .validated()
    }
}

/// A campaign as stored.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct CampaignRow {
    pub id: Uuid,
    pub org_id: Uuid,
    pub org_slug: String,
    pub name: String,
    pub description: String,
    pub goal_cents: i64,
    pub raised_cents: i64,
    pub donation_count: i64,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub disabled: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl CampaignRow {
    /// Started, not ended, not disabled (deleted rows are never loaded).
    pub fn is_active_at(&self, now: DateTime<Utc>) -> bool {
        !self.disabled && self.starts_at <= now && now < self.ends_at
    }
}

/// One campaign in the public list, as `GET /api/public/campaigns/{orgSlug}/active` returns it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CampaignView {
    pub id: Uuid,
    pub org_id: Uuid,
    pub name: String,
    pub description: String,
    pub goal_cents: i64,
    pub raised_cents: i64,
    pub donation_count: i64,
    /// Percent of the goal raised, one decimal, not capped at 100.
    pub progress: f64,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
}

impl From<&CampaignRow> for CampaignView {
    fn from(row: &CampaignRow) -> Self {
        CampaignView {
            id: row.id,
            org_id: row.org_id,
            name: row.name.clone(),
            description: row.description.clone(),
            goal_cents: row.goal_cents,
            raised_cents: row.raised_cents,
            donation_count: row.donation_count,
            progress: progress(row.raised_cents, row.goal_cents),
            starts_at: row.starts_at,
            ends_at: row.ends_at,
        }
    }
}

/// A campaign as the admin API returns it: the public view plus its state.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdminCampaign {
    #[serde(flatten)]
    pub view: CampaignView,
    pub org_slug: String,
    pub disabled: bool,
    /// Started, not ended and not disabled, now.
    pub active: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<&CampaignRow> for AdminCampaign {
    fn from(row: &CampaignRow) -> Self {
        AdminCampaign {
            view: CampaignView::from(row),
            org_slug: row.org_slug.clone(),
            disabled: row.disabled,
            active: row.is_active_at(Utc::now()),
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

/// What the public list caches per organisation slug: `None` org means the slug is unknown
/// (cached too, so random slugs do not reach Postgres; creating the organisation invalidates it).
/// `campaigns` is the response body (a JSON array of [`CampaignView`]) serialised once, so a
/// cache hit sends bytes without serialising them again.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ActivePage {
    pub org_id: Option<Uuid>,
    pub campaigns: JsonBytes,
}

impl ActivePage {
    /// A copy sharing nothing with the cached page (see [`JsonBytes::copied`]).
    pub fn copied(&self) -> ActivePage {
        ActivePage { org_id: self.org_id, campaigns: self.campaigns.copied() }
    }
}

/// `GET /api/campaigns/{id}/stats`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CampaignStats {
    pub campaign_id: Uuid,
    pub org_id: Uuid,
    pub goal_cents: i64,
    pub raised_cents: i64,
    pub donation_count: i64,
    /// Percent of the goal raised, one decimal, not capped at 100.
    pub progress: f64,
    pub goal_reached: bool,
    pub active: bool,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<&CampaignRow> for CampaignStats {
    fn from(row: &CampaignRow) -> Self {
        CampaignStats {
            campaign_id: row.id,
            org_id: row.org_id,
            goal_cents: row.goal_cents,
            raised_cents: row.raised_cents,
            donation_count: row.donation_count,
            progress: progress(row.raised_cents, row.goal_cents),
            goal_reached: row.raised_cents >= row.goal_cents,
            active: row.is_active_at(Utc::now()),
            starts_at: row.starts_at,
            ends_at: row.ends_at,
            updated_at: row.updated_at,
        }
    }
}

/// Percent raised with one decimal; integer arithmetic first so 1/3 is 33.3, not 33.299….
pub fn progress(raised_cents: i64, goal_cents: i64) -> f64 {
    if goal_cents <= 0 {
        return 0.0;
    }
    let tenths = i128::from(raised_cents) * 1000 / i128::from(goal_cents);
    tenths as f64 / 10.0
}

/// Trims `raw` and checks its length in characters and that it has no control characters (NUL
/// is refused by Postgres; the others break the HTML page and logs). Newlines and tabs are fine.
pub(crate) fn text(
    field: &'static str,
    raw: &str,
    min: usize,
    max: usize,
) -> Result<String, ApiError> {
    let trimmed = raw.trim();
    let length = trimmed.chars().count();
    if length < min || length > max {
        return Err(ApiError::invalid(
            field,
            format!("must be between {min} and {max} characters long"),
        ));
    }
    if trimmed.chars().any(|c| c.is_control() && c != '\n' && c != '\t' && c != '\r') {
        return Err(ApiError::invalid(field, "must not contain control characters"));
    }
    Ok(trimmed.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_lowercase_dns_labels() {
        assert!(Slug::parse("demo").is_ok());
        assert!(Slug::parse("st-mary-42").is_ok());
        for bad in ["", "-a", "a-", "Demo", "a_b", "a b", "é", &"a".repeat(64)] {
            assert!(Slug::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn progress_is_a_percentage_with_one_decimal() {
        assert!((progress(1, 10_000) - 0.0).abs() < f64::EPSILON);
        assert!((progress(100, 300) - 33.3).abs() < 1e-9);
        assert!((progress(150, 100) - 150.0).abs() < 1e-9);
    }

    #[test]
    fn campaign_fields_reject_bad_goal_dates_and_names() {
        let now = Utc::now();
        let good = CampaignFields {
            name: " Roof ".into(),
            description: String::new(),
            goal_cents: 100,
            starts_at: now,
            ends_at: now + chrono::Duration::days(1),
            disabled: false,
        };
        assert_eq!(good.clone().validated().map(|f| f.name).ok(), Some("Roof".to_owned()));
        assert!(CampaignFields { goal_cents: 0, ..good.clone() }.validated().is_err());
        assert!(CampaignFields { ends_at: now, ..good.clone() }.validated().is_err());
        assert!(CampaignFields { name: "  ".into(), ..good.clone() }.validated().is_err());
        assert!(CampaignFields { name: "a\0b".into(), ..good.clone() }.validated().is_err());
        // Postgres cannot store year -5000: refused here, not a 500 at the insert.
        let year = |y| chrono::TimeZone::with_ymd_and_hms(&Utc, y, 1, 1, 0, 0, 0).unwrap();
        assert!(CampaignFields { starts_at: year(-5000), ..good.clone() }.validated().is_err());
        assert!(CampaignFields { ends_at: year(10_000), ..good }.validated().is_err());
    }
}

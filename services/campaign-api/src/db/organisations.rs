//! Organisations, campaign creation and the organisation outbox: every organisation change and
//! every campaign created writes its event to `organisation_outbox` in the same transaction, so
//! the relay publishes exactly what was committed ([`crate::workers::relay`]).

use chrono::{SecondsFormat, Utc};
use platform_redis::messages::{OrganisationEvent, OrganisationOverrides};
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::campaign;
use crate::domain::{
    CampaignFields, CampaignRow, NewOrganisation, Organisation, Slug, Tier, TierLimits,
};
use crate::error::ApiError;

/// The columns an `Organisation` reads, for every query that returns one (the demo seed's too).
pub(crate) const ORGANISATION_COLUMNS: &str =
    "id, slug, name, tier, api_requests_per_minute, included, version, created_at, updated_at";

/// Appends `event` to the outbox inside the caller's transaction. The transaction has written
/// before (so it holds its id ahead of the `seq`: the relay's gap rule).
pub(crate) async fn append_event(
    tx: &mut PgConnection,
    event: &OrganisationEvent,
) -> Result<(), sqlx::Error> {
    let data = serde_json::to_string(event).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    sqlx::query(
        "INSERT INTO organisation_outbox (seq, data, traceparent)
         VALUES (CASE WHEN pg_current_xact_id() IS NOT NULL
                      THEN nextval('organisation_outbox_seq') END, $1, $2)",
    )
    .bind(data)
    .bind(platform_redis::trace::current_traceparent())
    .execute(tx)
    .await?;
    Ok(())
}

/// Appends the organisation's count of running campaigns, under its row lock so counts of
/// concurrent changes are appended in the order they were taken.
pub(crate) async fn append_active_count(
    tx: &mut PgConnection,
    org_id: Uuid,
) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1 FROM organisations WHERE id = $1 FOR UPDATE")
        .bind(org_id)
        .execute(&mut *tx)
        .await?;
    let (count, at): (i64, chrono::DateTime<Utc>) = sqlx::query_as(
        "SELECT count(*), clock_timestamp() FROM campaigns
         WHERE org_id = $1 AND deleted_at IS NULL AND NOT disabled
           AND starts_at <= now() AND ends_at > now()",
    )
    .bind(org_id)
    .fetch_one(&mut *tx)
    .await?;
    let event = OrganisationEvent::ActiveCampaigns {
        org_id: org_id.to_string(),
        count,
        at: at.to_rfc3339_opts(SecondsFormat::Micros, true),
    };
    append_event(tx, &event).await
}

/// The organisation with this slug.
#[tracing::instrument(skip(pool))]
pub async fn organisation(pool: &PgPool, slug: &Slug) -> Result<Option<Organisation>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ORGANISATION_COLUMNS} FROM organisations WHERE slug = $1"
    )))
    .bind(slug.as_str())
    .fetch_optional(pool)
    .await
}

/// Every organisation's slug, tier and requests-per-minute override (the rate limiter's view).
pub async fn limits(pool: &PgPool) -> Result<Vec<(String, String, Option<u32>)>, sqlx::Error> {
    let rows: Vec<(String, String, Option<i32>)> =
        sqlx::query_as("SELECT slug, tier, api_requests_per_minute FROM organisations")
            .fetch_all(pool)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(slug, tier, rate)| (slug, tier, rate.and_then(|r| u32::try_from(r).ok())))
        .collect())
}

/// Inserts the organisation and its event; [`ApiError::SlugTaken`] when the slug exists.
#[tracing::instrument(skip(pool, org), fields(slug = org.slug.as_str()))]
pub async fn create_organisation(
    pool: &PgPool,
    org: &NewOrganisation,
) -> Result<Organisation, ApiError> {
    let mut tx = pool.begin().await?;
    let created: Option<Organisation> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO organisations (id, slug, name, tier, api_requests_per_minute, included)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (slug) DO NOTHING
         RETURNING {ORGANISATION_COLUMNS}"
    )))
    .bind(Uuid::new_v4())
    .bind(org.slug.as_str())
    .bind(&org.name)
    .bind(org.tier.as_str())
    .bind(rate(&org.overrides))
    .bind(Json(&org.overrides.included))
    .fetch_optional(&mut *tx)
    .await?;
    let created = created.ok_or(ApiError::SlugTaken)?;
    append_event(&mut tx, &created.event()).await?;
    tx.commit().await?;
    Ok(created)
}

/// Applies a change to the organisation (a new version) and writes its event, under the row's
/// lock so concurrent changes get consecutive versions. `None` when the slug is unknown.
#[tracing::instrument(skip(pool, change))]
pub async fn update_organisation<F>(
    pool: &PgPool,
    slug: &Slug,
    change: F,
) -> Result<Option<Organisation>, ApiError>
where
    F: FnOnce(&Organisation) -> Result<(String, Tier, OrganisationOverrides), ApiError>,
{
    let mut tx = pool.begin().await?;
    let current: Option<Organisation> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ORGANISATION_COLUMNS} FROM organisations WHERE slug = $1 FOR UPDATE"
    )))
    .bind(slug.as_str())
    .fetch_optional(&mut *tx)
    .await?;
    let Some(current) = current else { return Ok(None) };
    let (name, tier, overrides) = change(&current)?;
    let updated: Organisation = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE organisations SET name = $2, tier = $3, api_requests_per_minute = $4,
           included = $5, version = version + 1, updated_at = now()
         WHERE id = $1 RETURNING {ORGANISATION_COLUMNS}"
    )))
    .bind(current.id)
    .bind(&name)
    .bind(tier.as_str())
    .bind(rate(&overrides))
    .bind(Json(&overrides.included))
    .fetch_one(&mut *tx)
    .await?;
    append_event(&mut tx, &updated.event()).await?;
    tx.commit().await?;
    Ok(Some(updated))
}

fn rate(overrides: &OrganisationOverrides) -> Option<i32> {
    overrides.api_requests_per_minute.and_then(|v| i32::try_from(v).ok())
}

/// What a campaign creation did.
#[derive(Debug)]
pub struct CreatedCampaign {
    pub row: CampaignRow,
    /// An earlier request with the same Idempotency-Key created it; nothing was written now.
    pub replayed: bool,
}

/// Creates a campaign and its `campaign_created` event in one transaction, under the
/// organisation's row lock, so the tier's concurrent-campaign limit and the Idempotency-Key hold
/// against concurrent requests. A key seen before with the same fields returns that campaign.
#[tracing::instrument(skip(pool, fields, limits))]
pub async fn create_campaign(
    pool: &PgPool,
    slug: &Slug,
    fields: &CampaignFields,
    idempotency_key: Option<&str>,
    limits: &TierLimits,
) -> Result<CreatedCampaign, ApiError> {
    let mut tx = pool.begin().await?;
    let org: Option<(Uuid, String)> =
        sqlx::query_as("SELECT id, tier FROM organisations WHERE slug = $1 FOR UPDATE")
            .bind(slug.as_str())
            .fetch_optional(&mut *tx)
            .await?;
    let (org_id, tier) = org.ok_or(ApiError::OrganisationNotFound)?;
    let fingerprint = fields.fingerprint();
    if let Some(key) = idempotency_key {
        let earlier: Option<(Uuid, Option<String>)> = sqlx::query_as(
            "SELECT id, request_fingerprint FROM campaigns WHERE org_id = $1 AND idempotency_key = $2",
        )
        .bind(org_id)
        .bind(key)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some((id, earlier_fingerprint)) = earlier {
            tx.rollback().await?;
            if earlier_fingerprint.as_deref() != Some(fingerprint.as_str()) {
                return Err(ApiError::IdempotencyKeyReused);
            }
            // A deleted campaign is still what that request created.
            let row = campaign_any(pool, id).await?.ok_or(ApiError::CampaignNotFound)?;
            return Ok(CreatedCampaign { row, replayed: true });
        }
    }
    if let (Some(limit), false) = (limits.concurrent_campaigns(&tier), fields.disabled) {
        let running: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM campaigns
             WHERE org_id = $1 AND deleted_at IS NULL AND NOT disabled AND ends_at > now()",
        )
        .bind(org_id)
        .fetch_one(&mut *tx)
        .await?;
        if running >= i64::from(limit) {
            return Err(ApiError::CampaignLimit { tier, limit });
        }
    }
    let id = Uuid::new_v4();
    let created_at: chrono::DateTime<Utc> = sqlx::query_scalar(
        "INSERT INTO campaigns (id, org_id, name, description, goal_cents, starts_at, ends_at, \
           disabled, start_announced, end_announced, idempotency_key, request_fingerprint) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $6 <= now(), $7 <= now(), $9, $10) \
         RETURNING created_at",
    )
    .bind(id)
    .bind(org_id)
    .bind(&fields.name)
    .bind(&fields.description)
    .bind(fields.goal_cents)
    .bind(fields.starts_at)
    .bind(fields.ends_at)
    .bind(fields.disabled)
    .bind(idempotency_key)
    .bind(idempotency_key.map(|_| fingerprint.as_str()))
    .fetch_one(&mut *tx)
    .await?;
    append_event(&mut tx, &campaign_created(org_id, id, created_at)).await?;
    append_active_count(&mut tx, org_id).await?;
    tx.commit().await?;
    let row = campaign(pool, id).await?.ok_or(ApiError::CampaignNotFound)?;
    Ok(CreatedCampaign { row, replayed: false })
}

/// The event of one campaign created.
pub(crate) fn campaign_created(
    org_id: Uuid,
    campaign_id: Uuid,
    created_at: chrono::DateTime<Utc>,
) -> OrganisationEvent {
    OrganisationEvent::CampaignCreated {
        org_id: org_id.to_string(),
        campaign_id: campaign_id.to_string(),
        created_at: created_at.to_rfc3339_opts(SecondsFormat::Micros, true),
    }
}

/// A campaign, deleted or not.
async fn campaign_any(pool: &PgPool, id: Uuid) -> Result<Option<CampaignRow>, sqlx::Error> {
    sqlx::query_as::<_, CampaignRow>(select_campaigns!("WHERE c.id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await
}

//! The organisations learned from the organisation stream: the newest version of each
//! (`organisations`) and every version with the time it took effect (`organisation_versions`).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use platform_redis::messages::OrganisationState;
use sqlx::PgPool;
use sqlx::types::Json;

/// One organisation's plan at one version: its tier and the overrides that came with it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct PlanRow {
    pub tier: String,
    pub included: Json<BTreeMap<String, i64>>,
    pub version: i64,
}

/// Stores one version; a version seen before, or older than the stored one, changes nothing.
/// Returns whether the organisation's current version moved.
#[tracing::instrument(name = "organisations.apply", skip(db, state), fields(org_id = %state.org_id, version = state.version))]
pub async fn apply(
    db: &PgPool,
    state: &OrganisationState,
    changed_at: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    let included = Json(&state.overrides.included);
    let rate = state.overrides.api_requests_per_minute.and_then(|v| i32::try_from(v).ok());
    let mut tx = db.begin().await?;
    sqlx::query(
        "INSERT INTO organisation_versions (org_id, version, tier, included, changed_at)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (org_id, version) DO NOTHING",
    )
    .bind(&state.org_id)
    .bind(state.version)
    .bind(&state.tier)
    .bind(included)
    .bind(changed_at)
    .execute(&mut *tx)
    .await?;
    let moved = sqlx::query(
        "INSERT INTO organisations
             (org_id, slug, name, tier, api_requests_per_minute, included, version, changed_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (org_id) DO UPDATE SET slug = EXCLUDED.slug, name = EXCLUDED.name,
             tier = EXCLUDED.tier, api_requests_per_minute = EXCLUDED.api_requests_per_minute,
             included = EXCLUDED.included, version = EXCLUDED.version,
             changed_at = EXCLUDED.changed_at, learned_at = now()
         WHERE organisations.version < EXCLUDED.version",
    )
    .bind(&state.org_id)
    .bind(&state.slug)
    .bind(&state.name)
    .bind(&state.tier)
    .bind(rate)
    .bind(included)
    .bind(state.version)
    .bind(changed_at)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    tx.commit().await?;
    Ok(moved)
}

/// Stores the organisation's count of running campaigns unless a later count is there already.
#[tracing::instrument(name = "organisations.set_active_campaigns", skip(db))]
pub async fn set_active_campaigns(
    db: &PgPool,
    org_id: &str,
    count: i64,
    at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE organisations SET active_campaigns = $2, active_campaigns_at = $3
         WHERE org_id = $1 AND (active_campaigns_at IS NULL OR active_campaigns_at < $3)",
    )
    .bind(org_id)
    .bind(count)
    .bind(at)
    .execute(db)
    .await?;
    Ok(())
}

/// The organisation's count of running campaigns, when campaign-api published one.
#[tracing::instrument(name = "organisations.active_campaigns", skip(db))]
pub async fn active_campaigns(db: &PgPool, org_id: &str) -> Result<Option<i64>, sqlx::Error> {
    let count: Option<Option<i64>> =
        sqlx::query_scalar("SELECT active_campaigns FROM organisations WHERE org_id = $1")
            .bind(org_id)
            .fetch_optional(db)
            .await?;
    Ok(count.flatten())
}

/// The organisation's newest version.
#[tracing::instrument(name = "organisations.current", skip(db))]
pub async fn current(db: &PgPool, org_id: &str) -> Result<Option<PlanRow>, sqlx::Error> {
    sqlx::query_as("SELECT tier, included, version FROM organisations WHERE org_id = $1")
        .bind(org_id)
        .fetch_optional(db)
        .await
}

/// The version in force just before `end` (the newest that took effect before it), or, for an
/// organisation that did not exist yet, its first.
#[tracing::instrument(name = "organisations.in_force_before", skip(db))]
pub async fn in_force_before(
    db: &PgPool,
    org_id: &str,
    end: DateTime<Utc>,
) -> Result<Option<PlanRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT tier, included, version FROM organisation_versions WHERE org_id = $1
         ORDER BY (changed_at < $2) DESC,
                  CASE WHEN changed_at < $2 THEN version END DESC NULLS LAST, version
         LIMIT 1",
    )
    .bind(org_id)
    .bind(end)
    .fetch_optional(db)
    .await
}

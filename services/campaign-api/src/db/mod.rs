//! Postgres I/O of campaign-api: campaigns and donations here, organisations, campaign creation
//! and their outbox in [`organisations`]. Runtime queries only.

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::domain::{CampaignFields, CampaignRow, Slug};

/// `SELECT` of [`CampaignRow`] from `campaigns c JOIN organisations o`, then `$rest` (a literal,
/// so the query stays a static string).
macro_rules! select_campaigns {
    ($rest:literal) => {
        concat!(
            "SELECT c.id, c.org_id, o.slug AS org_slug, c.name, c.description, c.goal_cents, ",
            "c.raised_cents, c.donation_count, c.starts_at, c.ends_at, c.disabled, c.created_at, ",
            "c.updated_at FROM campaigns c JOIN organisations o ON o.id = c.org_id ",
            $rest
        )
    };
}

pub mod organisations;

pub use organisations::{create_campaign, create_organisation, organisation, update_organisation};

/// Runs the embedded migrations.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::migrate!("./migrations").run(pool).await?;
    Ok(())
}

#[tracing::instrument(skip(pool))]
pub async fn organisation_id(pool: &PgPool, slug: &Slug) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM organisations WHERE slug = $1")
        .bind(slug.as_str())
        .fetch_optional(pool)
        .await
}

/// Active campaigns of an organisation, newest start first.
#[tracing::instrument(skip(pool))]
pub async fn active_campaigns(
    pool: &PgPool,
    org_id: Uuid,
    now: DateTime<Utc>,
) -> Result<Vec<CampaignRow>, sqlx::Error> {
    sqlx::query_as::<_, CampaignRow>(select_campaigns!(
        "WHERE c.org_id = $1 AND c.deleted_at IS NULL AND NOT c.disabled \
           AND c.starts_at <= $2 AND c.ends_at > $2 \
         ORDER BY c.starts_at DESC, c.created_at DESC, c.id"
    ))
    .bind(org_id)
    .bind(now)
    .fetch_all(pool)
    .await
}

/// A campaign that is not deleted.
#[tracing::instrument(skip(pool))]
pub async fn campaign(pool: &PgPool, id: Uuid) -> Result<Option<CampaignRow>, sqlx::Error> {
    sqlx::query_as::<_, CampaignRow>(select_campaigns!("WHERE c.id = $1 AND c.deleted_at IS NULL"))
        .bind(id)
        .fetch_optional(pool)
        .await
}

/// The slug of a campaign's organisation, deleted campaigns included (the cache group of its
/// stats never changes).
#[tracing::instrument(skip(pool))]
pub async fn campaign_org_slug(pool: &PgPool, id: Uuid) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT o.slug FROM campaigns c JOIN organisations o ON o.id = c.org_id WHERE c.id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// Replaces a campaign's editable fields. A changed start or end is handed (again) to the
/// lifecycle ticker unless it is already past. Returns `None` when the campaign does not exist.
#[tracing::instrument(skip(pool, fields))]
pub async fn update_campaign(
    pool: &PgPool,
    id: Uuid,
    fields: &CampaignFields,
) -> Result<Option<CampaignRow>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let org_id: Option<Uuid> = sqlx::query_scalar(
        "UPDATE campaigns SET name = $2, description = $3, goal_cents = $4, \
           start_announced = CASE WHEN starts_at = $5 THEN start_announced ELSE $5 <= now() END, \
           end_announced = CASE WHEN ends_at = $6 THEN end_announced ELSE $6 <= now() END, \
           starts_at = $5, ends_at = $6, disabled = $7, updated_at = now() \
         WHERE id = $1 AND deleted_at IS NULL RETURNING org_id",
    )
    .bind(id)
    .bind(&fields.name)
    .bind(&fields.description)
    .bind(fields.goal_cents)
    .bind(fields.starts_at)
    .bind(fields.ends_at)
    .bind(fields.disabled)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(org_id) = org_id else { return Ok(None) };
    organisations::append_active_count(&mut tx, org_id).await?;
    tx.commit().await?;
    campaign(pool, id).await
}

/// Soft-deletes a campaign; returns its organisation's slug, or `None` when it did not exist.
#[tracing::instrument(skip(pool))]
pub async fn delete_campaign(pool: &PgPool, id: Uuid) -> Result<Option<String>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let deleted: Option<(String, Uuid)> = sqlx::query_as(
        "UPDATE campaigns c SET deleted_at = now(), updated_at = now() FROM organisations o \
         WHERE c.id = $1 AND c.deleted_at IS NULL AND o.id = c.org_id RETURNING o.slug, o.id",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((slug, org_id)) = deleted else { return Ok(None) };
    organisations::append_active_count(&mut tx, org_id).await?;
    tx.commit().await?;
    Ok(Some(slug))
}

/// A campaign start or end the lifecycle ticker claimed.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Transition {
    pub id: Uuid,
    pub org_id: Uuid,
    pub org_slug: String,
}

/// Claims campaigns that started since the last tick (each once, across replicas).
pub async fn claim_started(pool: &PgPool) -> Result<Vec<Transition>, sqlx::Error> {
    claim(
        pool,
        "UPDATE campaigns c SET start_announced = true FROM organisations o \
         WHERE NOT c.start_announced AND c.starts_at <= now() AND o.id = c.org_id \
         RETURNING c.id, c.org_id, o.slug AS org_slug",
    )
    .await
}

/// Claims campaigns that ended since the last tick (each once, across replicas).
pub async fn claim_ended(pool: &PgPool) -> Result<Vec<Transition>, sqlx::Error> {
    claim(
        pool,
        "UPDATE campaigns c SET end_announced = true FROM organisations o \
         WHERE NOT c.end_announced AND c.ends_at <= now() AND o.id = c.org_id \
         RETURNING c.id, c.org_id, o.slug AS org_slug",
    )
    .await
}

/// Runs one claim and publishes each affected organisation's new count of running campaigns in
/// the same transaction.
async fn claim(pool: &PgPool, query: &'static str) -> Result<Vec<Transition>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let claimed: Vec<Transition> = sqlx::query_as(query).fetch_all(&mut *tx).await?;
    let mut orgs: Vec<Uuid> = claimed.iter().map(|t| t.org_id).collect();
    orgs.sort_unstable();
    orgs.dedup();
    for org_id in orgs {
        organisations::append_active_count(&mut tx, org_id).await?;
    }
    tx.commit().await?;
    Ok(claimed)
}

/// A donation as recorded (on its first delivery, or as found on a redelivery).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Donation {
    pub payment_intent_id: String,
    pub campaign_id: Uuid,
    pub org_id: Uuid,
    pub org_slug: String,
    pub amount_cents: i64,
    pub currency: String,
    pub goal_cents: i64,
    pub raised_after_cents: i64,
    pub count_after: i64,
    pub goal_crossed: bool,
}

/// A donation to record.
#[derive(Debug, Clone)]
pub struct NewDonation<'a> {
    pub payment_intent_id: &'a str,
    pub stripe_event_id: &'a str,
    pub org_id: Uuid,
    pub campaign_id: Uuid,
    pub amount_cents: i64,
    pub currency: &'a str,
}

/// Why a donation cannot be recorded, ever (the event is poison).
#[derive(Debug, thiserror::Error)]
pub enum DonationRejected {
    #[error("campaign {0} does not exist")]
    UnknownCampaign(Uuid),
    #[error("campaign {campaign} belongs to organisation {actual}, not {claimed}")]
    WrongOrganisation { campaign: Uuid, claimed: Uuid, actual: Uuid },
    #[error(
        "campaign {campaign}: adding {amount_cents} cents to its {raised_cents} raised (or one \
         more donation to its {count}) would overflow the total"
    )]
    TotalsOverflow { campaign: Uuid, raised_cents: i64, amount_cents: i64, count: i64 },
}

/// Records a donation exactly once: the insert is keyed on the payment intent id, and the
/// campaign's totals move in the same transaction only when the insert happened. The campaign row
/// is locked first, so concurrent donations see each other's totals and only one can cross the
/// goal. Totals are added with checked arithmetic, in Rust and again in SQL (Postgres' `bigint`
/// `+` fails rather than wraps): a donation that would overflow them is rejected, never
/// saturated, so the totals always equal the sum of the donations. A donation already stored is
/// returned as it is, whatever the totals now. Returns the stored donation and whether this call
/// inserted it.
#[tracing::instrument(skip(pool, donation), fields(payment_intent = donation.payment_intent_id))]
pub async fn record_donation(
    pool: &PgPool,
    donation: &NewDonation<'_>,
) -> Result<Result<(Donation, bool), DonationRejected>, sqlx::Error> {
    let mut tx: Transaction<'_, Postgres> = pool.begin().await?;
    let campaign: Option<(Uuid, i64, i64, i64)> = sqlx::query_as(
        "SELECT org_id, goal_cents, raised_cents, donation_count FROM campaigns \
         WHERE id = $1 FOR UPDATE",
    )
    .bind(donation.campaign_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((org_id, goal, raised, count)) = campaign else {
        return Ok(Err(DonationRejected::UnknownCampaign(donation.campaign_id)));
    };
    if org_id != donation.org_id {
        return Ok(Err(DonationRejected::WrongOrganisation {
            campaign: donation.campaign_id,
            claimed: donation.org_id,
            actual: org_id,
        }));
    }
    let totals = raised.checked_add(donation.amount_cents).zip(count.checked_add(1));
    let inserted =
        match totals {
            Some((raised_after, count_after)) => sqlx::query(
                "INSERT INTO donations (payment_intent_id, campaign_id, amount_cents, currency, \
                   raised_after_cents, count_after, goal_crossed, stripe_event_id) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                 ON CONFLICT (payment_intent_id) DO NOTHING",
            )
            .bind(donation.payment_intent_id)
            .bind(donation.campaign_id)
            .bind(donation.amount_cents)
            .bind(donation.currency)
            .bind(raised_after)
            .bind(count_after)
            .bind(raised < goal && raised_after >= goal)
            .bind(donation.stripe_event_id)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1,
            // Not insertable; it may still be stored already (a redelivery).
            None => false,
        };
    if inserted {
        sqlx::query(
            "UPDATE campaigns SET raised_cents = raised_cents + $2, \
               donation_count = donation_count + 1, updated_at = now() \
             WHERE id = $1",
        )
        .bind(donation.campaign_id)
        .bind(donation.amount_cents)
        .execute(&mut *tx)
        .await?;
    }
    let stored = sqlx::query_as::<_, Donation>(
        "SELECT d.payment_intent_id, d.campaign_id, c.org_id, o.slug AS org_slug, \
           d.amount_cents, d.currency, c.goal_cents, d.raised_after_cents, d.count_after, \
           d.goal_crossed \
         FROM donations d JOIN campaigns c ON c.id = d.campaign_id \
           JOIN organisations o ON o.id = c.org_id \
         WHERE d.payment_intent_id = $1",
    )
    .bind(donation.payment_intent_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(stored) = stored else {
        // Nothing stored and nothing inserted: only an overflow gets here.
        return match totals {
            None => Ok(Err(DonationRejected::TotalsOverflow {
                campaign: donation.campaign_id,
                raised_cents: raised,
                amount_cents: donation.amount_cents,
                count,
            })),
            Some(_) => Err(sqlx::Error::RowNotFound),
        };
    };
    tx.commit().await?;
    Ok(Ok((stored, inserted)))
}

/// Creates the `demo` organisation and gives it a few active campaigns when it has none.
pub async fn seed_demo(pool: &PgPool) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let created: Option<crate::domain::Organisation> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "INSERT INTO organisations (id, slug, name, tier) VALUES ($1, 'demo', 'Demo Church', \
         'starter') ON CONFLICT (slug) DO NOTHING RETURNING {}",
            organisations::ORGANISATION_COLUMNS
        )))
        .bind(Uuid::new_v4())
        .fetch_optional(&mut *tx)
        .await?;
    if let Some(org) = created {
        organisations::append_event(&mut tx, &org.event()).await?;
    }
    let org_id: Uuid = sqlx::query_scalar("SELECT id FROM organisations WHERE slug = 'demo'")
        .fetch_one(&mut *tx)
        .await?;
    let existing: i64 = sqlx::query_scalar("SELECT count(*) FROM campaigns WHERE org_id = $1")
        .bind(org_id)
        .fetch_one(&mut *tx)
        .await?;
    if existing == 0 {
        let campaigns = [
            (
                "New Roof Fund",
                "Replace the leaking sanctuary roof before winter.",
                2_500_000,
                1_240_000,
                48,
            ),
            (
                "Youth Mission Trip",
                "Send twelve students on a summer service trip.",
                800_000,
                655_000,
                31,
            ),
            (
                "Community Food Pantry",
                "Stock the pantry shelves for the coming months.",
                300_000,
                45_000,
                9,
            ),
        ];
        for (name, description, goal, raised, count) in campaigns {
            let id = Uuid::new_v4();
            let created_at: DateTime<Utc> = sqlx::query_scalar(
                "INSERT INTO campaigns (id, org_id, name, description, goal_cents, raised_cents, \
                   donation_count, starts_at, ends_at, start_announced) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, now() - interval '7 days', \
                   now() + interval '90 days', true) RETURNING created_at",
            )
            .bind(id)
            .bind(org_id)
            .bind(name)
            .bind(description)
            .bind(goal)
            .bind(raised)
            .bind(count)
            .fetch_one(&mut *tx)
            .await?;
            let event = organisations::campaign_created(org_id, id, created_at);
            organisations::append_event(&mut tx, &event).await?;
        }
        organisations::append_active_count(&mut tx, org_id).await?;
        tracing::info!(org_id = %org_id, "seeded the demo organisation with 3 campaigns");
    }
    tx.commit().await
}

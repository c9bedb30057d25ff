//! The organisation-stream handler: stores each organisation version campaign-api published
//! (Postgres, idempotent on the version) and its latest count of running campaigns, and counts
//! each campaign created once as `campaign_created` (queued on the consumer's transaction like the
//! usage stream's events, with the campaign id as idempotency key).

use chrono::{DateTime, Utc};
use platform_redis::Keys;
use platform_redis::fred::clients::Transaction;
use platform_redis::messages::{OrganisationEvent, OrganisationState, UsageEvent};
use platform_redis::streams::{HandlerError, Outcome, StreamEntry, StreamHandler};
use platform_service::database::permanent_error;
use sqlx::PgPool;

use crate::db::organisations;
use crate::domain::organisations::Directory;
use crate::domain::usage::{EventRules, Metric, OrgId, validate};
use crate::store::{self, Fence, Retention};

/// Handles batches of [`OrganisationEvent`]s from
/// [`platform_redis::StreamName::OrganisationEvents`].
#[derive(Debug, Clone)]
pub struct OrganisationHandler {
    pub db: PgPool,
    pub directory: Directory,
    pub keys: Keys,
    pub retention: Retention,
    pub rules: EventRules,
    pub fence: Fence,
}

impl OrganisationHandler {
    /// Stores one organisation version (a version seen before changes nothing).
    async fn changed(&self, state: &OrganisationState) -> Outcome {
        let changed_at = OrgId::parse(&state.org_id).and_then(|_| {
            DateTime::parse_from_rfc3339(&state.changed_at)
                .map(|at| at.to_utc())
                .map_err(|e| format!("changedAt {:?}: {e}", state.changed_at))
        });
        let changed_at = match changed_at {
            Ok(at) => at,
            Err(reason) => return Outcome::DeadLetter(reason),
        };
        let applied = organisations::apply(&self.db, state, changed_at).await;
        if applied.as_ref().is_ok_and(|moved| *moved) {
            self.directory.forget(&state.org_id).await;
            tracing::info!(org_id = %state.org_id, version = state.version, tier = %state.tier, "organisation plan learned");
        }
        stored_outcome(applied.map(|_| ()))
    }

    /// Stores an organisation's count of running campaigns (the latest `at` wins).
    async fn active(&self, org_id: &str, count: i64, at: &str) -> Outcome {
        match DateTime::parse_from_rfc3339(at) {
            Err(e) => Outcome::DeadLetter(format!("at {at:?}: {e}")),
            Ok(at) => stored_outcome(
                organisations::set_active_campaigns(&self.db, org_id, count, at.to_utc()).await,
            ),
        }
    }
}

impl StreamHandler for OrganisationHandler {
    type Body = OrganisationEvent;

    async fn handle(
        &self,
        batch: &[StreamEntry<OrganisationEvent>],
        tx: &Transaction,
    ) -> Result<Vec<Outcome>, HandlerError> {
        let now = Utc::now();
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut created = Vec::new();
        for entry in batch {
            let outcome = match &entry.body {
                OrganisationEvent::OrganisationChanged(state) => self.changed(state).await,
                OrganisationEvent::ActiveCampaigns { org_id, count, at } => {
                    self.active(org_id, *count, at).await
                }
                OrganisationEvent::CampaignCreated { org_id, campaign_id, created_at } => {
                    let event = UsageEvent {
                        org_id: org_id.clone(),
                        metric: Metric::CampaignCreated.as_str().to_owned(),
                        value: 1,
                        occurred_at: Some(created_at.clone()),
                        idempotency_key: Some(format!("campaign:{campaign_id}")),
                        metadata: Some(serde_json::json!({ "campaignId": campaign_id })),
                    };
                    match validate(&event, now, &self.rules) {
                        Ok(valid) => {
                            created.push(valid);
                            Outcome::Ack
                        }
                        Err(reason) => Outcome::DeadLetter(reason),
                    }
                }
            };
            outcomes.push(outcome);
        }
        let refs: Vec<_> = created.iter().collect();
        store::queue_record(tx, &self.keys, &self.retention, &self.fence, &refs).await?;
        Ok(outcomes)
    }
}

/// A Postgres write's outcome: refused data is dead-lettered, anything else retried.
fn stored_outcome(stored: Result<(), sqlx::Error>) -> Outcome {
    match stored {
        Ok(()) => Outcome::Ack,
        Err(error) => match permanent_error(&error) {
            Some(reason) => Outcome::DeadLetter(reason),
            None => {
                tracing::warn!(%error, "postgres unavailable for an organisation event; retrying");
                Outcome::Unavailable
            }
        },
    }
}

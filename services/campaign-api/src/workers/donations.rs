//! The consumer of the Stripe event stream: `payment_intent.succeeded` with `org_id` and
//! `campaign_id` metadata becomes a donation, recorded exactly once.
//!
//! Per entry: (1) Postgres, idempotent: insert keyed on the payment intent id, totals moved in the
//! same transaction only when inserted (`db::record_donation`); (2) invalidation of the
//! organisation's cache group (idempotent, done at once so readers see the new totals before the
//! live update arrives); (3) the once-only Redis effects — `new_donation` (and `goal_reached` when
//! this donation crossed the goal) on the campaign's channel, and the `donation_processed` usage
//! event — as one [`OnceEffects`] script guarded by a marker per payment intent, queued on the
//! consumer's transaction so it commits with the `XACK`.
//!
//! Step (3) is queued on every delivery, not only when (1) inserted: if the process died after the
//! Postgres commit and before `EXEC`, the redelivery finds the donation already stored and still
//! applies the effects, once, from the stored row (which keeps the totals as of that donation).
//! Duplicated events (same payment intent, any event id) and reordered ones therefore change
//! nothing twice. Events without the metadata are someone else's payments and are acked as is.
//!
//! Data errors are not outages. An event that can never be recorded is dead-lettered at once with
//! the reason: a campaign that does not exist or belongs to another organisation, an amount that
//! would overflow the campaign's totals, a value Postgres refuses (SQLSTATE class 22 or 23, e.g. a
//! NUL character in the currency; `platform_service::database::permanent_error`). Any other
//! Postgres error means Postgres is unavailable: the entry is left pending
//! ([`Outcome::Unavailable`], retried after `claim_idle` without counting towards
//! `max_deliveries`), and so are the batch's remaining donations, without another try.

use std::time::Duration;

use chrono::{SecondsFormat, TimeZone, Utc};
use platform_redis::RedisClients;
use platform_redis::fred::clients::Transaction;
use platform_redis::keys::{Keys, StreamName};
use platform_redis::messages::{CampaignUpdate, StripeEventMessage, UsageEvent};
use platform_redis::once::OnceEffects;
use platform_redis::streams::{
    GroupSettings, HandlerError, Outcome, StartFrom, StreamConsumer, StreamEntry, StreamHandler,
};
use platform_redis::stripe_event;
use platform_service::database::permanent_error;
use platform_service::metrics::Metrics;
use prometheus_client::metrics::counter::Counter;
use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::db::{self, Donation, NewDonation};
use crate::store::pages::Pages;

/// How long the "effects applied" marker of a payment intent lives: far beyond any redelivery.
const MARKER_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// Starts the consumer of the Stripe event stream (read from its beginning) with `handler`, and
/// exports its group's backlog on `metrics`. The group is created before this returns, that is
/// before the server serves, so events appended from then on are read by it.
pub async fn spawn(
    redis: &RedisClients,
    settings: &GroupSettings,
    handler: DonationHandler,
    metrics: &Metrics,
    stop: CancellationToken,
) {
    let mut consumer_settings = settings.consumer(StreamName::StripeEvents);
    consumer_settings.start_from = StartFrom::Beginning;
    let consumer = StreamConsumer::new(redis, consumer_settings, stop);
    metrics.register_stream_group(redis, StreamName::StripeEvents, &consumer.settings().group);
    // Before serving, so events appended from now on are read by this group.
    if let Err(error) = consumer.ensure_group().await {
        tracing::warn!(%error, "stripe event consumer group not created yet; the worker retries");
    }
    tokio::spawn(async move {
        if let Err(error) = consumer.run(&handler).await {
            tracing::error!(%error, "stripe event consumer stopped");
        }
    });
}

/// The stream handler. Cheap to clone.
#[derive(Debug, Clone)]
pub struct DonationHandler {
    pub db: PgPool,
    pub pages: Pages,
    pub keys: Keys,
    pub usage_stream_max_len: usize,
    pub recorded: Counter,
}

/// What one entry turned out to be.
enum Parsed {
    /// Not a donation: ack without effects.
    Ignore(&'static str),
    /// A donation to record.
    Donation(DonationEvent),
}

struct DonationEvent {
    payment_intent_id: String,
    org_id: Uuid,
    campaign_id: Uuid,
    amount_cents: i64,
    currency: String,
    payment_method: Option<String>,
}

impl StreamHandler for DonationHandler {
    type Body = StripeEventMessage;

    async fn handle(
        &self,
        batch: &[StreamEntry<StripeEventMessage>],
        tx: &Transaction,
    ) -> Result<Vec<Outcome>, HandlerError> {
        let mut outcomes = Vec::with_capacity(batch.len());
        // Once Postgres is found unavailable, the batch's other donations wait too.
        let mut postgres_down = false;
        for entry in batch {
            let outcome = self
                .handle_one(&entry.body, tx, postgres_down)
                .instrument(entry.span.clone())
                .await?;
            postgres_down |= outcome == Outcome::Unavailable;
            outcomes.push(outcome);
        }
        Ok(outcomes)
    }
}

impl DonationHandler {
    async fn handle_one(
        &self,
        message: &StripeEventMessage,
        tx: &Transaction,
        postgres_down: bool,
    ) -> Result<Outcome, HandlerError> {
        let event = match parse(message) {
            Ok(Parsed::Ignore(why)) => {
                tracing::debug!(event_id = %message.event_id, why, "stripe event ignored");
                return Ok(Outcome::Ack);
            }
            Ok(Parsed::Donation(event)) => event,
            Err(reason) => {
                tracing::warn!(event_id = %message.event_id, reason, "stripe event dead-lettered");
                return Ok(Outcome::DeadLetter(reason));
            }
        };
        if postgres_down {
            return Ok(Outcome::Unavailable);
        }
        let new = NewDonation {
            payment_intent_id: &event.payment_intent_id,
            stripe_event_id: &message.event_id,
            org_id: event.org_id,
            campaign_id: event.campaign_id,
            amount_cents: event.amount_cents,
            currency: &event.currency,
        };
        let (donation, inserted) = match db::record_donation(&self.db, &new).await {
            Ok(Ok(recorded)) => recorded,
            Ok(Err(rejected)) => {
                tracing::warn!(event_id = %message.event_id, reason = %rejected, "donation dead-lettered");
                return Ok(Outcome::DeadLetter(rejected.to_string()));
            }
            Err(error) => match permanent_error(&error) {
                Some(reason) => {
                    tracing::warn!(event_id = %message.event_id, reason, "donation dead-lettered");
                    return Ok(Outcome::DeadLetter(format!("donation not recordable: {reason}")));
                }
                // Postgres is unavailable: the entry stays pending, retried after claim_idle.
                None => {
                    tracing::warn!(event_id = %message.event_id, %error, detail = ?error, "donation not recorded; postgres unavailable, retrying later");
                    return Ok(Outcome::Unavailable);
                }
            },
        };
        if inserted {
            self.recorded.inc();
            tracing::info!(
                payment_intent = %donation.payment_intent_id,
                campaign_id = %donation.campaign_id,
                amount_cents = donation.amount_cents,
                raised_cents = donation.raised_after_cents,
                goal_crossed = donation.goal_crossed,
                "donation recorded"
            );
        } else {
            tracing::info!(payment_intent = %donation.payment_intent_id, "donation already recorded; effects applied at most once");
        }
        self.pages.invalidate_org(&donation.org_slug).await;
        let effects = self.effects(&donation, &event, message)?;
        effects.queue(tx).await?;
        Ok(Outcome::Ack)
    }

    fn effects(
        &self,
        donation: &Donation,
        event: &DonationEvent,
        message: &StripeEventMessage,
    ) -> Result<OnceEffects, HandlerError> {
        let campaign_id = donation.campaign_id.to_string();
        let channel = self.keys.campaign_updates_channel(&campaign_id);
        let mut effects = OnceEffects::new(
            self.keys.effects_marker("donation", &donation.payment_intent_id),
            MARKER_TTL,
        );
        effects.publish(
            channel.clone(),
            &CampaignUpdate::NewDonation {
                campaign_id: campaign_id.clone(),
                amount_cents: donation.amount_cents,
                raised_cents: donation.raised_after_cents,
                donation_count: donation.count_after,
            },
        )?;
        if donation.goal_crossed {
            effects.publish(
                channel,
                &CampaignUpdate::GoalReached {
                    campaign_id: campaign_id.clone(),
                    goal_cents: donation.goal_cents,
                    raised_cents: donation.raised_after_cents,
                },
            )?;
        }
        let occurred_at = Utc
            .timestamp_opt(message.created, 0)
            .single()
            .unwrap_or_else(Utc::now)
            .to_rfc3339_opts(SecondsFormat::Secs, true);
        let usage = UsageEvent {
            org_id: donation.org_id.to_string(),
            metric: "donation_processed".to_owned(),
            value: donation.amount_cents,
            occurred_at: Some(occurred_at),
            idempotency_key: Some(format!("donation:{}", donation.payment_intent_id)),
            metadata: Some(json!({
                "count": 1,
                "amountCents": donation.amount_cents,
                "currency": donation.currency,
                "campaignId": campaign_id,
                "paymentIntentId": donation.payment_intent_id,
                "paymentMethod": event.payment_method,
                "stripeEventId": message.event_id,
            })),
        };
        effects.append(
            self.keys.stream(StreamName::UsageEvents),
            self.usage_stream_max_len,
            &usage,
        )?;
        Ok(effects)
    }
}

/// Reads the donation out of the raw Stripe event. `Err` is a reason to dead-letter.
fn parse(message: &StripeEventMessage) -> Result<Parsed, String> {
    if message.event_type != "payment_intent.succeeded" {
        return Ok(Parsed::Ignore("not payment_intent.succeeded"));
    }
    // The contract webhook-ingest checked the event with: an entry it let through parses here.
    let event = stripe_event::parse(message.raw.as_bytes())
        .map_err(|rejected| format!("raw event breaks the event contract: {}", rejected.reason))?;
    let object = event.object;
    let (Some(org), Some(campaign)) =
        (object.metadata.get("org_id"), object.metadata.get("campaign_id"))
    else {
        return Ok(Parsed::Ignore("no org_id / campaign_id metadata"));
    };
    let org_id =
        Uuid::parse_str(org).map_err(|_| format!("metadata.org_id `{org}` is not a UUID"))?;
    let campaign_id = Uuid::parse_str(campaign)
        .map_err(|_| format!("metadata.campaign_id `{campaign}` is not a UUID"))?;
    let payment_intent_id = object
        .id
        .filter(|id| id.starts_with("pi_"))
        .ok_or("data.object.id is not a payment intent id")?;
    let amount_cents = object
        .amount_received
        .filter(|amount| *amount > 0)
        .or(object.amount)
        .filter(|amount| *amount > 0)
        .ok_or("payment intent has no positive amount")?;
    Ok(Parsed::Donation(DonationEvent {
        payment_intent_id,
        org_id,
        campaign_id,
        amount_cents,
        currency: object.currency.unwrap_or_else(|| "usd".to_owned()),
        payment_method: object.payment_method_types.into_iter().next(),
    }))
}

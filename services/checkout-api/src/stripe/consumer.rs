//! checkout-api's consumer of the Stripe event stream: the events of seed 003's list trigger
//! `sync_stripe_data_to_redis` for their customer; every other event is acked and skipped.
//!
//! The event only names the customer (webhook-ingest's `customerId`, or `data.object.customer` of
//! the raw event); the state comes from Stripe. Stripe or Redis unavailable → the entry is left
//! pending ([`Outcome::Retry`]) and redelivered after `claim_idle`, until `max_deliveries` sends it
//! to the dead-letter stream. A customer named by several entries of one batch is synced once.
//!
//! Unlike other handlers this one queues nothing on the consumer's transaction: the sync writes
//! its record itself, under the customer's lock and fence. That is safe at least once: a
//! redelivered event syncs again and writes Stripe's then-current state, which is what the record
//! should say anyway.

use std::collections::HashMap;

use platform_redis::fred::clients::Transaction;
use platform_redis::messages::StripeEventMessage;
use platform_redis::streams::{HandlerError, Outcome, StreamEntry, StreamHandler};
use tracing::Instrument as _;

use crate::error::CheckoutError;
use crate::stripe::StripeService;

/// The events whose customer is synced (seed 003 and the stripe-recommendations list it cites).
pub const SYNC_EVENTS: &[&str] = &[
    "checkout.session.completed",
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    "customer.subscription.paused",
    "customer.subscription.resumed",
    "customer.subscription.pending_update_applied",
    "customer.subscription.pending_update_expired",
    "customer.subscription.trial_will_end",
    "invoice.paid",
    "invoice.payment_failed",
    "invoice.payment_action_required",
    "invoice.upcoming",
    "invoice.marked_uncollectible",
    "invoice.payment_succeeded",
    "payment_intent.succeeded",
    "payment_intent.payment_failed",
    "payment_intent.canceled",
];

/// The stream handler.
#[derive(Debug, Clone)]
pub struct SyncOnEvent {
    pub stripe: StripeService,
}

/// The customer an event is about: webhook-ingest's field, else `data.object.customer` (an id or
/// an expanded object) of the raw event.
pub fn customer_of(message: &StripeEventMessage) -> Option<String> {
    if let Some(id) = message.customer_id.as_deref().filter(|id| !id.is_empty()) {
        return Some(id.to_owned());
    }
    let raw: serde_json::Value = serde_json::from_str(&message.raw).ok()?;
    let customer = &raw["data"]["object"]["customer"];
    customer.as_str().or_else(|| customer["id"].as_str()).map(str::to_owned)
}

impl StreamHandler for SyncOnEvent {
    type Body = StripeEventMessage;

    async fn handle(
        &self,
        batch: &[StreamEntry<StripeEventMessage>],
        _tx: &Transaction,
    ) -> Result<Vec<Outcome>, HandlerError> {
        // One sync per customer per batch: its result answers every entry naming that customer.
        let mut synced: HashMap<String, Outcome> = HashMap::new();
        let mut outcomes = Vec::with_capacity(batch.len());
        for entry in batch {
            let message = &entry.body;
            if !SYNC_EVENTS.contains(&message.event_type.as_str()) {
                tracing::debug!(event_id = %message.event_id, event_type = %message.event_type, "stripe event not for checkout-api; skipped");
                outcomes.push(Outcome::Ack);
                continue;
            }
            let Some(customer_id) = customer_of(message) else {
                tracing::info!(event_id = %message.event_id, event_type = %message.event_type, "stripe event names no customer; nothing to sync");
                outcomes.push(Outcome::Ack);
                continue;
            };
            if let Some(outcome) = synced.get(&customer_id) {
                outcomes.push(outcome.clone());
                continue;
            }
            let outcome = self.sync(message, &customer_id).instrument(entry.span.clone()).await;
            synced.insert(customer_id, outcome.clone());
            outcomes.push(outcome);
        }
        Ok(outcomes)
    }
}

impl SyncOnEvent {
    async fn sync(&self, message: &StripeEventMessage, customer_id: &str) -> Outcome {
        match self.stripe.sync_stripe_data_to_redis(customer_id).await {
            Ok(_) => Outcome::Ack,
            Err(
                error @ (CheckoutError::StripeUnavailable(_)
                | CheckoutError::SyncBusy
                | CheckoutError::Unavailable(_)),
            ) => {
                tracing::warn!(event_id = %message.event_id, customer_id, error = %platform_service::error::error_chain(&error), "stripe sync failed; event left pending for a retry");
                Outcome::Retry
            }
            Err(error) => {
                let reason = platform_service::error::error_chain(&error);
                tracing::error!(event_id = %message.event_id, customer_id, error = %reason, "stripe sync refused; event dead-lettered");
                Outcome::DeadLetter(reason)
            }
        }
    }
}

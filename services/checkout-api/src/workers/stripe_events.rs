//! The worker consuming the Stripe event stream: the events of [`SYNC_EVENTS`] trigger
//! `sync_stripe_data_to_redis` for their customer; a Checkout session event re-fetches the
//! session from Stripe and completes (paid) or fails (expired, delayed payment failed) the
//! checkout session it was created from; every other event is acked and skipped.
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
use platform_redis::keys::StreamName;
use platform_redis::messages::StripeEventMessage;
use platform_redis::streams::{
    HandlerError, Outcome, StartFrom, StreamConsumer, StreamEntry, StreamHandler,
};
use platform_redis::stripe_event::{self, EventObject};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::domain::payments::StripeService;
use crate::error::CheckoutError;

/// Starts the consumer of the Stripe event stream (when Stripe is configured and the consumer
/// enabled); it stops when `stop` is cancelled.
pub async fn spawn(stripe: &StripeService, stop: CancellationToken) {
    let events = &stripe.settings().events;
    if !stripe.is_configured() || !events.enabled {
        tracing::info!(
            configured = stripe.is_configured(),
            enabled = events.enabled,
            "stripe event consumer not started"
        );
        return;
    }
    let mut consumer_settings = events.consumer(StreamName::StripeEvents);
    // Events stored before the first start still describe customers worth syncing.
    consumer_settings.start_from = StartFrom::Beginning;
    let consumer = StreamConsumer::new(stripe.redis(), consumer_settings, stop);
    // Before serving, so events appended from now on are read by this group.
    if let Err(error) = consumer.ensure_group().await {
        tracing::warn!(%error, "stripe event consumer group not created yet; the worker retries");
    }
    let handler = SyncOnEvent { stripe: stripe.clone() };
    tokio::spawn(async move {
        if let Err(error) = consumer.run(&handler).await {
            tracing::error!(%error, "stripe event consumer stopped");
        }
    });
}

/// The events whose customer is synced: every event that can change a customer's subscription
/// or payment state.
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

/// The events whose Checkout session may settle a checkout session (completed or failed).
pub const SETTLE_EVENTS: &[&str] = &[
    "checkout.session.completed",
    "checkout.session.async_payment_succeeded",
    "checkout.session.async_payment_failed",
    "checkout.session.expired",
];

/// The stream handler.
#[derive(Debug, Clone)]
pub struct SyncOnEvent {
    pub stripe: StripeService,
}

/// The Stripe Checkout session an event is about: webhook-ingest's `objectId`, else
/// `data.object.id` of the raw event; only `cs_…` ids.
pub fn checkout_session_of(message: &StripeEventMessage) -> Option<String> {
    let id = match message.object_id.as_deref().filter(|id| !id.is_empty()) {
        Some(id) => id.to_owned(),
        None => object_of(message)?.id?,
    };
    id.starts_with("cs_").then_some(id)
}

/// The customer an event is about: webhook-ingest's field, else `data.object.customer` (an id or
/// an expanded object's) of the raw event.
pub fn customer_of(message: &StripeEventMessage) -> Option<String> {
    match message.customer_id.as_deref().filter(|id| !id.is_empty()) {
        Some(id) => Some(id.to_owned()),
        None => object_of(message)?.customer,
    }
}

/// `data.object` of the raw event, read with the event contract webhook-ingest checked it with.
fn object_of(message: &StripeEventMessage) -> Option<EventObject> {
    stripe_event::parse(message.raw.as_bytes()).ok().map(|event| event.object)
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
            if SETTLE_EVENTS.contains(&message.event_type.as_str())
                && let Some(session_id) = checkout_session_of(message)
            {
                let settled =
                    self.settle(message, &session_id).instrument(entry.span.clone()).await;
                if settled != Outcome::Ack {
                    outcomes.push(settled);
                    continue;
                }
            }
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
    /// Settles the checkout session behind a Stripe Checkout session as Stripe says.
    async fn settle(&self, message: &StripeEventMessage, session_id: &str) -> Outcome {
        let result = match self.stripe.retrieve_checkout(session_id).await {
            Ok(session) => self.stripe.settle_checkout(&session).await,
            // Not ours (another account's test data) or deleted: nothing to complete.
            Err(CheckoutError::StripeSessionNotFound) => Ok(()),
            Err(error) => Err(error),
        };
        self.outcome(message, session_id, result, "stripe checkout session settled")
    }

    async fn sync(&self, message: &StripeEventMessage, customer_id: &str) -> Outcome {
        let result = self.stripe.sync_stripe_data_to_redis(customer_id).await.map(drop);
        self.outcome(message, customer_id, result, "stripe sync")
    }

    /// Retry what may pass later (Stripe, Redis or a lock unavailable), dead-letter the rest.
    fn outcome(
        &self,
        message: &StripeEventMessage,
        subject: &str,
        result: Result<(), CheckoutError>,
        what: &'static str,
    ) -> Outcome {
        match result {
            Ok(()) => Outcome::Ack,
            Err(
                error @ (CheckoutError::StripeUnavailable(_)
                | CheckoutError::SyncBusy
                | CheckoutError::Unavailable(_)),
            ) => {
                tracing::warn!(event_id = %message.event_id, subject, what, error = %platform_service::error::error_chain(&error), "stripe event failed; left pending for a retry");
                Outcome::Retry
            }
            Err(error) => {
                let reason = platform_service::error::error_chain(&error);
                tracing::error!(event_id = %message.event_id, subject, what, error = %reason, "stripe event refused; dead-lettered");
                Outcome::DeadLetter(reason)
            }
        }
    }
}

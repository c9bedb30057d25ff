//! Stripe in checkout-api: customers cached per user, Checkout sessions, and the one function that
//! syncs a customer's subscription and payment state from Stripe into Redis.
//!
//! Layout: `settings` (`[stripe]`), `client` (async-stripe with retries and error classes),
//! `customers` (user → customer, created once under a lock), `checkout` (validated checkout
//! requests → Stripe Checkout sessions), `sync` (`sync_stripe_data_to_redis` and the state record),
//! `consumer` (the Stripe event stream → sync), `routes` (HTTP).
//!
//! The rule from seed 003 (the "stay sane with Stripe" pattern): Stripe is the source of truth,
//! Redis holds one record per customer, and that record is only ever written by the sync, which
//! re-fetches from Stripe. Webhook payloads only say *which* customer to sync.

pub mod checkout;
pub mod client;
pub mod consumer;
pub mod customers;
pub mod routes;
pub mod settings;
pub mod sync;

use std::sync::Arc;

use platform_redis::RedisClients;
use platform_redis::keys::StreamName;
use platform_redis::streams::{StartFrom, StreamConsumer};
use tokio_util::sync::CancellationToken;

pub use checkout::{CartSource, NoCarts};
pub use settings::StripeSettings;
pub use sync::StripeState;

use crate::error::CheckoutError;
use crate::stripe::client::StripeApi;

/// What the Stripe routes and the consumer share. Cheap to clone.
#[derive(Debug, Clone)]
pub struct StripeService {
    /// `None` when no secret key is configured.
    api: Option<StripeApi>,
    redis: RedisClients,
    settings: Arc<StripeSettings>,
    carts: Arc<dyn CartSource>,
}

impl StripeService {
    /// A service for `settings`; `carts` resolves `checkoutSessionId` of checkout requests.
    pub fn new(
        settings: &StripeSettings,
        redis: RedisClients,
        carts: Arc<dyn CartSource>,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            api: StripeApi::from_settings(settings)?,
            redis,
            settings: Arc::new(settings.clone()),
            carts,
        })
    }

    /// The checkout sessions Stripe Checkout sessions are created from.
    pub fn carts(&self) -> &dyn CartSource {
        self.carts.as_ref()
    }

    fn api(&self) -> Result<&StripeApi, CheckoutError> {
        self.api.as_ref().ok_or(CheckoutError::StripeNotConfigured)
    }

    pub fn settings(&self) -> &StripeSettings {
        &self.settings
    }

    pub fn redis(&self) -> &RedisClients {
        &self.redis
    }

    /// Starts the consumer of the Stripe event stream (when Stripe is configured and the consumer
    /// enabled); it stops when `stop` is cancelled.
    pub async fn spawn_consumer(&self, stop: CancellationToken) {
        let events = &self.settings.events;
        if self.api.is_none() || !events.enabled {
            tracing::info!(
                configured = self.api.is_some(),
                enabled = events.enabled,
                "stripe event consumer not started"
            );
            return;
        }
        let mut consumer_settings = events.consumer(StreamName::StripeEvents);
        // Events stored before the first start still describe customers worth syncing.
        consumer_settings.start_from = StartFrom::Beginning;
        let consumer = StreamConsumer::new(&self.redis, consumer_settings, stop);
        // Before serving, so events appended from now on are read by this group.
        if let Err(error) = consumer.ensure_group().await {
            tracing::warn!(%error, "stripe event consumer group not created yet; the worker retries");
        }
        let handler = consumer::SyncOnEvent { stripe: self.clone() };
        tokio::spawn(async move {
            if let Err(error) = consumer.run(&handler).await {
                tracing::error!(%error, "stripe event consumer stopped");
            }
        });
    }
}

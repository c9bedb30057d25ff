//! `sync_stripe_data_to_redis`: the one writer of a customer's Stripe state record.
//!
//! It fetches the customer's latest subscription (`status=all`, `limit=1`, default payment method
//! expanded) and recent payment intents from Stripe, and writes one JSON record
//! ([`platform_redis::keys::Keys::stripe_state`]); `{"status":"none"}` when there is no
//! subscription. Nothing else writes that record, and nothing from a webhook payload goes into it.
//!
//! Ordering: two syncs of one customer may run at once (the success page and an event, two
//! events, two replicas). Whichever *fetched* last must be the one whose record stays. So a sync
//! holds the customer's lock ([`platform_redis::keys::stripe_sync_lock`]) from before the fetch to
//! after the write, and the write is a script that stores the record only while the lock's fencing
//! number is still this sync's: a sync that was so slow that its lease expired and a newer sync
//! took the lock (and fetched newer state) finds a larger fence and its older data is dropped.

use std::sync::LazyLock;
use std::time::Duration;

use chrono::{SecondsFormat, TimeZone as _, Utc};
use platform_redis::fred::prelude::*;
use platform_redis::fred::types::scripts::Script;
use platform_redis::keys::stripe_sync_lock;
use platform_redis::lock::Lock;
use serde::{Deserialize, Serialize};
use stripe::StripeRequest as _;
use stripe_billing::subscription::{ListSubscription, ListSubscriptionStatus};
use stripe_core::payment_intent::ListPaymentIntent;

use crate::error::CheckoutError;
use crate::stripe::StripeService;

/// `SET KEYS[2] ARGV[2]` only while the fence counter `KEYS[1]` still equals `ARGV[1]`.
static FENCED_WRITE: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[2], ARGV[2])
  return 1
end
return 0
",
    )
});

/// The default payment method's card.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentMethodView {
    pub brand: String,
    pub last4: String,
}

/// The newest payment intent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentView {
    pub id: String,
    pub status: String,
    pub amount: i64,
    pub currency: String,
    pub created: i64,
}

/// One customer's record in Redis (JSON, camelCase). Without a subscription only `customerId`,
/// `status: "none"`, `lastPayment` and `syncedAt` are present.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StripeState {
    pub customer_id: String,
    /// The subscription's status (`active`, `trialing`, `past_due`, `canceled`, …) or `none`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price_id: Option<String>,
    /// Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_period_start: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_period_end: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel_at_period_end: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_method: Option<PaymentMethodView>,
    #[serde(default)]
    pub last_payment: Option<PaymentView>,
    /// RFC 3339, when this record was fetched.
    pub synced_at: String,
}

/// What a sync did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncOutcome {
    /// The fetched state was written.
    Written(StripeState),
    /// A newer sync overtook this one; its record (if readable) stands.
    Superseded(Option<StripeState>),
}

impl SyncOutcome {
    /// The record as it stands after this sync.
    pub fn state(&self) -> Option<&StripeState> {
        match self {
            SyncOutcome::Written(state) => Some(state),
            SyncOutcome::Superseded(state) => state.as_ref(),
        }
    }
}

fn rfc3339(secs: i64) -> String {
    Utc.timestamp_opt(secs, 0)
        .single()
        .unwrap_or_else(Utc::now)
        .to_rfc3339_opts(SecondsFormat::Secs, true)
}

impl StripeService {
    /// The recorded state of `customer_id`, if any (no Stripe call).
    pub async fn stored_state(
        &self,
        customer_id: &str,
    ) -> Result<Option<StripeState>, CheckoutError> {
        let key = self.redis.keys().stripe_state(customer_id);
        let text: Option<String> = self.redis.primary().get(&key).await?;
        let Some(text) = text else { return Ok(None) };
        serde_json::from_str(&text).map(Some).map_err(|error| {
            CheckoutError::Internal(
                anyhow::Error::new(error).context("stored stripe state unreadable"),
            )
        })
    }

    /// Fetches the customer's current state from Stripe and writes it to Redis (see the module
    /// doc for the ordering guarantee). The one way the record is ever written.
    #[tracing::instrument(name = "stripe.sync", skip(self))]
    pub async fn sync_stripe_data_to_redis(
        &self,
        customer_id: &str,
    ) -> Result<SyncOutcome, CheckoutError> {
        self.api()?;
        let settings = &self.settings;
        let lock_name = stripe_sync_lock(customer_id);
        let guard = Lock::acquire_with_wait(
            &self.redis,
            &lock_name,
            Duration::from_millis(settings.sync_lock_ttl_ms),
            Duration::from_millis(settings.sync_lock_wait_ms),
        )
        .await?
        .ok_or(CheckoutError::SyncBusy)?;
        let state = self.fetch_state(customer_id).await?;
        let keys = self.redis.keys();
        let text =
            serde_json::to_string(&state).map_err(|error| CheckoutError::Internal(error.into()))?;
        let written: i64 = FENCED_WRITE
            .evalsha_with_reload(
                self.redis.primary().next(),
                vec![keys.lock_fence(&lock_name), keys.stripe_state(customer_id)],
                vec![guard.fence().to_string(), text],
            )
            .await
            .map_err(CheckoutError::from)?;
        let fence = guard.fence();
        let _ = guard.release().await;
        if written == 1 {
            tracing::info!(customer_id, status = %state.status, "stripe state synced");
            Ok(SyncOutcome::Written(state))
        } else {
            tracing::warn!(
                customer_id,
                fence,
                "stripe sync overtaken by a newer one; its older data dropped"
            );
            Ok(SyncOutcome::Superseded(self.stored_state(customer_id).await?))
        }
    }

    /// The customer's state as Stripe has it now.
    async fn fetch_state(&self, customer_id: &str) -> Result<StripeState, CheckoutError> {
        let api = self.api()?;
        let subscriptions = ListSubscription::new()
            .customer(customer_id)
            .status(ListSubscriptionStatus::All)
            .limit(1)
            .expand(vec!["data.default_payment_method".to_owned()]);
        let payments = ListPaymentIntent::new()
            .customer(customer_id)
            .limit(i64::from(self.settings.recent_payments));
        let (subscriptions, payments) = futures::try_join!(
            api.call("list subscriptions", None, |client, strategy| {
                let request = subscriptions.customize().request_strategy(strategy);
                async move { request.send(&client).await }
            }),
            api.call("list payment intents", None, |client, strategy| {
                let request = payments.customize().request_strategy(strategy);
                async move { request.send(&client).await }
            }),
        )?;
        let last_payment = payments.data.iter().max_by_key(|p| p.created).map(|p| PaymentView {
            id: p.id.as_str().to_owned(),
            status: p.status.as_str().to_owned(),
            amount: p.amount,
            currency: p.currency.to_string(),
            created: p.created,
        });
        let synced_at = Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true);
        let Some(subscription) = subscriptions.data.first() else {
            return Ok(StripeState {
                customer_id: customer_id.to_owned(),
                status: "none".to_owned(),
                subscription_id: None,
                price_id: None,
                current_period_start: None,
                current_period_end: None,
                cancel_at_period_end: None,
                payment_method: None,
                last_payment,
                synced_at,
            });
        };
        let item = subscription.items.data.first();
        let payment_method = subscription
            .default_payment_method
            .as_ref()
            .and_then(|method| method.as_object())
            .and_then(|method| method.card.as_ref())
            .map(|card| PaymentMethodView { brand: card.brand.clone(), last4: card.last4.clone() });
        Ok(StripeState {
            customer_id: customer_id.to_owned(),
            status: subscription.status.as_str().to_owned(),
            subscription_id: Some(subscription.id.as_str().to_owned()),
            price_id: item.map(|item| item.price.id.as_str().to_owned()),
            current_period_start: item.map(|item| item.current_period_start),
            current_period_end: item.map(|item| item.current_period_end),
            cancel_at_period_end: Some(subscription.cancel_at_period_end),
            payment_method,
            last_payment,
            synced_at,
        })
    }
}

/// Period bounds as RFC 3339, for the HTML page.
pub fn period_end_text(state: &StripeState) -> Option<String> {
    state.current_period_end.map(rfc3339)
}

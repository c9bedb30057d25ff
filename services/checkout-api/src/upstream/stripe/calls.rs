//! The Stripe calls of checkout-api, each through [`StripeApi::call`] (retries, idempotency).

use std::collections::HashMap;
use std::str::FromStr as _;

use chrono::{SecondsFormat, Utc};
use stripe::StripeRequest as _;
use stripe_billing::subscription::{ListSubscription, ListSubscriptionStatus};
use stripe_checkout::checkout_session::{
    CreateCheckoutSession, CreateCheckoutSessionLineItems, CreateCheckoutSessionLineItemsPriceData,
    CreateCheckoutSessionLineItemsPriceDataRecurring,
    CreateCheckoutSessionLineItemsPriceDataRecurringInterval, ProductData, RetrieveCheckoutSession,
};
use stripe_checkout::{CheckoutSession, CheckoutSessionMode};
use stripe_core::customer::CreateCustomer;
use stripe_core::payment_intent::ListPaymentIntent;

use super::StripeSettings;
use super::{StripeApi, StripeCallError};
use crate::domain::stripe::{Cart, CartLine, Mode, PaymentMethodView, PaymentView, StripeState};

/// The calls. Writes carry an idempotency key, so a retried attempt gets the first one's result.
impl StripeApi {
    /// Creates the customer of `user_id` (`metadata.userId`); its id. The key is derived from the
    /// user id, so a second create within Stripe's 24 hours of keys returns the same customer.
    pub async fn create_customer(
        &self,
        user_id: &str,
        email: Option<&str>,
    ) -> Result<String, StripeCallError> {
        let mut create = CreateCustomer::new()
            .metadata(HashMap::from([("userId".to_owned(), user_id.to_owned())]));
        if let Some(email) = email {
            create = create.email(email);
        }
        let idempotency_key = format!("{}-customer-{user_id}", crate::SERVICE);
        let customer = self
            .call("create customer", Some(&idempotency_key), |client, strategy| {
                let request = create.customize().request_strategy(strategy);
                async move { request.send(&client).await }
            })
            .await?;
        Ok(customer.id.as_str().to_owned())
    }

    /// The Checkout session `session_id` as Stripe has it now.
    pub async fn retrieve_checkout_session(
        &self,
        session_id: &str,
    ) -> Result<CheckoutSession, StripeCallError> {
        let retrieve = RetrieveCheckoutSession::new(session_id);
        self.call("retrieve checkout session", None, |client, strategy| {
            let request = retrieve.customize().request_strategy(strategy);
            async move { request.send(&client).await }
        })
        .await
    }

    /// Creates the Checkout session of `cart`, for `customer_id` when the cart has a user.
    pub async fn create_checkout_session(
        &self,
        cart: &Cart,
        customer_id: Option<&str>,
        settings: &StripeSettings,
    ) -> Result<CheckoutSession, StripeCallError> {
        let currency = stripe_types::Currency::from_str(&settings.currency)
            .unwrap_or(stripe_types::Currency::USD);
        let lines: Vec<CreateCheckoutSessionLineItems> = cart
            .lines
            .iter()
            .map(|line| {
                let mut item = CreateCheckoutSessionLineItems::new();
                match line {
                    CartLine::Inline { name, unit_amount_cents, quantity } => {
                        let mut price =
                            CreateCheckoutSessionLineItemsPriceData::new(currency.clone());
                        price.product_data = Some(ProductData::new(name.clone()));
                        price.unit_amount = Some(*unit_amount_cents);
                        if cart.mode == Mode::Subscription {
                            price.recurring =
                                Some(CreateCheckoutSessionLineItemsPriceDataRecurring::new(
                                    CreateCheckoutSessionLineItemsPriceDataRecurringInterval::Month,
                                ));
                        }
                        item.price_data = Some(price);
                        item.quantity = Some(*quantity);
                    }
                    CartLine::Price { price_id, quantity } => {
                        item.price = Some(price_id.clone());
                        item.quantity = Some(*quantity);
                    }
                }
                item
            })
            .collect();
        let mut metadata = HashMap::new();
        if let Some(user_id) = &cart.user_id {
            metadata.insert("userId".to_owned(), user_id.clone());
        }
        if let Some(id) = &cart.checkout_session_id {
            metadata.insert("checkoutSessionId".to_owned(), id.clone());
        }
        let mode = match cart.mode {
            Mode::Payment => CheckoutSessionMode::Payment,
            Mode::Subscription => CheckoutSessionMode::Subscription,
        };
        let mut create = CreateCheckoutSession::new()
            .mode(mode)
            .line_items(lines)
            .success_url(settings.success_url.as_str())
            .cancel_url(settings.cancel_url.as_str())
            .metadata(metadata);
        match (customer_id, &cart.user_id) {
            (Some(customer_id), Some(user_id)) => {
                create = create.customer(customer_id).client_reference_id(user_id.as_str());
            }
            _ => {
                if let Some(email) = &cart.email {
                    create = create.customer_email(email.as_str());
                }
            }
        }
        // One key for all attempts of this request: a retried create returns the same session.
        let idempotency_key = format!("{}-checkout-{}", crate::SERVICE, uuid::Uuid::new_v4());
        self.call("create checkout session", Some(&idempotency_key), |client, strategy| {
            let request = create.customize().request_strategy(strategy);
            async move { request.send(&client).await }
        })
        .await
    }

    /// The customer's state as Stripe has it now: the latest subscription (`status=all`,
    /// `limit=1`, default payment method expanded) and the newest of its `recent_payments`
    /// payment intents; `status: "none"` without a subscription.
    pub async fn fetch_state(
        &self,
        customer_id: &str,
        recent_payments: u32,
    ) -> Result<StripeState, StripeCallError> {
        let subscriptions = ListSubscription::new()
            .customer(customer_id)
            .status(ListSubscriptionStatus::All)
            .limit(1)
            .expand(vec!["data.default_payment_method".to_owned()]);
        let payments =
            ListPaymentIntent::new().customer(customer_id).limit(i64::from(recent_payments));
        let (subscriptions, payments) = futures::try_join!(
            self.call("list subscriptions", None, |client, strategy| {
                let request = subscriptions.customize().request_strategy(strategy);
                async move { request.send(&client).await }
            }),
            self.call("list payment intents", None, |client, strategy| {
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

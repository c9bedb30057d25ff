//! Checkout requests (a stored checkout session, or catalog items, or a catalog price) → validated
//! carts → Stripe Checkout sessions, for the acting user's Stripe customer or, for guests, none.
//!
//! Nothing a client sends sets a price: items are priced by the catalog, a `priceId` must be one
//! the catalog lists, and a stored checkout session is repriced before it is paid. The user is the
//! caller's ([`Caller`]): a service caller's `userId`, a signed-in user's session, else a guest.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr as _;

use serde::{Deserialize, Serialize};
use stripe::StripeRequest as _;
use stripe_checkout::checkout_session::{
    CreateCheckoutSession, CreateCheckoutSessionLineItems, CreateCheckoutSessionLineItemsPriceData,
    CreateCheckoutSessionLineItemsPriceDataRecurring,
    CreateCheckoutSessionLineItemsPriceDataRecurringInterval, ProductData, RetrieveCheckoutSession,
};
use stripe_checkout::{CheckoutSession, CheckoutSessionMode};

use crate::caller::Caller;
use crate::catalog::{ItemRequest, MAX_QUANTITY, valid_price_id};
use crate::error::CheckoutError;
use crate::stripe::StripeService;
use crate::stripe::customers::validate_user_id;

/// Body of `POST /api/stripe/checkout`: either `checkoutSessionId`, or `items` or `priceId`.
/// `userId` counts only for a service-token caller.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CheckoutRequest {
    pub checkout_session_id: Option<String>,
    pub user_id: Option<String>,
    pub email: Option<String>,
    pub items: Option<Vec<ItemRequest>>,
    pub price_id: Option<String>,
    pub quantity: Option<u64>,
    /// `payment` (default for items) or `subscription` (default for a price).
    pub mode: Option<String>,
}

/// What one Stripe Checkout line charges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CartLine {
    /// A product priced here (Stripe creates the price inline).
    Inline { name: String, unit_amount_cents: i64, quantity: u64 },
    /// A price configured in Stripe.
    Price { price_id: String, quantity: u64 },
}

/// Whether the Checkout session charges once or starts a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Payment,
    Subscription,
}

/// A validated cart, ready for Stripe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cart {
    /// `None`: a guest checkout, without a Stripe customer of ours.
    pub user_id: Option<String>,
    pub email: Option<String>,
    pub lines: Vec<CartLine>,
    pub mode: Mode,
    /// The checkout session this cart came from, recorded in the Stripe session's metadata.
    pub checkout_session_id: Option<String>,
}

/// The checkout sessions and the catalog behind Stripe Checkout: [`crate::sessions::Checkout`]
/// implements it.
pub trait CartSource: fmt::Debug + Send + Sync {
    /// The cart of `checkout_session_id`; `None` when no such session exists (or it expired).
    fn load<'a>(
        &'a self,
        checkout_session_id: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Option<Cart>, CheckoutError>> + Send + 'a>>;

    /// Marks `checkout_session_id` completed because Stripe says its payment went through. Safe
    /// to repeat: a session already completed (or gone) is left as it is.
    fn paid<'a>(
        &'a self,
        checkout_session_id: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<(), CheckoutError>> + Send + 'a>>;

    /// Marks `checkout_session_id` failed because Stripe says its payment will not happen (the
    /// Checkout session expired, or its delayed payment failed). Safe to repeat: a session
    /// already settled (or gone) is left as it is.
    fn payment_failed<'a>(
        &'a self,
        checkout_session_id: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<(), CheckoutError>> + Send + 'a>>;

    /// `items` priced by the catalog, as Stripe lines (400 `unknown_product`, `price_mismatch`,
    /// `invalid_quantity`).
    fn price_items<'a>(
        &'a self,
        items: &'a [ItemRequest],
    ) -> Pin<Box<dyn Future<Output = Result<Vec<CartLine>, CheckoutError>> + Send + 'a>>;

    /// Ok when the catalog lists `price_id` (an active product's Stripe price), else 400
    /// `unknown_price`.
    fn listed_price<'a>(
        &'a self,
        price_id: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<(), CheckoutError>> + Send + 'a>>;
}

fn unknown_price(price_id: &str) -> CheckoutError {
    CheckoutError::invalid(
        "unknown_price",
        format!(
            "priceId `{}` is not a price of the catalog",
            price_id.chars().take(64).collect::<String>()
        ),
    )
}

/// A [`CartSource`] with no checkout session and an empty catalog (library-level uses that only
/// sync Stripe state).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoCarts;

impl CartSource for NoCarts {
    fn load<'a>(
        &'a self,
        _checkout_session_id: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Option<Cart>, CheckoutError>> + Send + 'a>> {
        Box::pin(async { Ok(None) })
    }

    fn paid<'a>(
        &'a self,
        _checkout_session_id: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<(), CheckoutError>> + Send + 'a>> {
        Box::pin(async { Ok(()) })
    }

    fn payment_failed<'a>(
        &'a self,
        _checkout_session_id: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<(), CheckoutError>> + Send + 'a>> {
        Box::pin(async { Ok(()) })
    }

    fn price_items<'a>(
        &'a self,
        _items: &'a [ItemRequest],
    ) -> Pin<Box<dyn Future<Output = Result<Vec<CartLine>, CheckoutError>> + Send + 'a>> {
        Box::pin(async { Err(CheckoutError::invalid("unknown_product", "the catalog is empty")) })
    }

    fn listed_price<'a>(
        &'a self,
        price_id: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<(), CheckoutError>> + Send + 'a>> {
        Box::pin(async move { Err(unknown_price(price_id)) })
    }
}

/// The checkout session (`metadata.checkoutSessionId`) a Stripe Checkout session was created from.
pub fn checkout_session_of(session: &CheckoutSession) -> Option<String> {
    session.metadata.as_ref().and_then(|m| m.get("checkoutSessionId")).cloned()
}

/// The answer of `POST /api/stripe/checkout`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckoutCreated {
    pub url: String,
    pub session_id: String,
    /// `null` for a guest checkout.
    pub customer_id: Option<String>,
}

fn parse_mode(mode: Option<&str>, default: Mode) -> Result<Mode, CheckoutError> {
    match mode {
        None => Ok(default),
        Some("payment") => Ok(Mode::Payment),
        Some("subscription") => Ok(Mode::Subscription),
        Some(_) => Err(CheckoutError::invalid_field("mode", "must be `payment` or `subscription`")),
    }
}

fn validate_quantity(field: &'static str, quantity: u64) -> Result<u64, CheckoutError> {
    if (1..=MAX_QUANTITY.unsigned_abs()).contains(&quantity) {
        Ok(quantity)
    } else {
        Err(CheckoutError::invalid_field(field, format!("must be between 1 and {MAX_QUANTITY}")))
    }
}

fn validate_price_id(price_id: &str) -> Result<(), CheckoutError> {
    if valid_price_id(price_id) {
        Ok(())
    } else {
        Err(CheckoutError::invalid_field("priceId", "must be a Stripe price id (price_…)"))
    }
}

fn validate_email(email: &str) -> Result<(), CheckoutError> {
    let ok = email.len() <= 254
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && domain.contains('.') && !email.chars().any(char::is_whitespace)
        });
    if ok { Ok(()) } else { Err(CheckoutError::invalid_field("email", "must be an email address")) }
}

impl StripeService {
    /// Validates a direct checkout request (the `items` or `priceId` form) for `user_id` into a
    /// cart priced by the catalog.
    async fn cart_from_request(
        &self,
        request: &CheckoutRequest,
        user_id: Option<String>,
    ) -> Result<Cart, CheckoutError> {
        let max_line_items = self.settings.max_line_items;
        let (lines, default_mode) = match (&request.items, request.price_id.as_deref()) {
            (Some(_), Some(_)) => {
                return Err(CheckoutError::invalid_field(
                    "items",
                    "give either items or priceId, not both",
                ));
            }
            (Some(items), None) => {
                if items.is_empty() {
                    return Err(CheckoutError::invalid_field("items", "must not be empty"));
                }
                if items.len() > max_line_items {
                    return Err(CheckoutError::invalid_field(
                        "items",
                        format!("at most {max_line_items} items per checkout"),
                    ));
                }
                (self.carts.price_items(items).await?, Mode::Payment)
            }
            (None, Some(price_id)) => {
                validate_price_id(price_id)?;
                self.carts.listed_price(price_id).await?;
                let quantity = validate_quantity("quantity", request.quantity.unwrap_or(1))?;
                (
                    vec![CartLine::Price { price_id: price_id.to_owned(), quantity }],
                    Mode::Subscription,
                )
            }
            (None, None) => {
                // The configured default is the operator's choice, not a client's.
                let Some(price_id) = self.settings.default_price_id.as_deref() else {
                    return Err(CheckoutError::invalid_field("items", "give items or priceId"));
                };
                let quantity = validate_quantity("quantity", request.quantity.unwrap_or(1))?;
                (
                    vec![CartLine::Price { price_id: price_id.to_owned(), quantity }],
                    Mode::Subscription,
                )
            }
        };
        Ok(Cart {
            user_id,
            email: request.email.clone(),
            lines,
            mode: parse_mode(request.mode.as_deref(), default_mode)?,
            checkout_session_id: None,
        })
    }

    /// The cart a checkout request describes for `caller`: loaded by `checkoutSessionId`, or
    /// built from its items or price. A non-service caller may pay only a session that is theirs
    /// (no user, or their own); its body `userId` is ignored.
    pub async fn cart_for(
        &self,
        request: &CheckoutRequest,
        caller: &Caller,
    ) -> Result<Cart, CheckoutError> {
        if let Some(email) = &request.email {
            validate_email(email)?;
        }
        let body_user = if caller.is_service() {
            if let Some(user_id) = &request.user_id {
                validate_user_id(user_id)?;
            }
            request.user_id.as_deref()
        } else {
            if request.user_id.is_some() {
                tracing::debug!("userId in the body of a non-service caller ignored");
            }
            None
        };
        let user_id = caller.acting_user(body_user);
        let Some(id) = request.checkout_session_id.as_deref() else {
            return self.cart_from_request(request, user_id).await;
        };
        if request.items.is_some() || request.price_id.is_some() {
            return Err(CheckoutError::invalid_field(
                "checkoutSessionId",
                "give either checkoutSessionId or items/priceId, not both",
            ));
        }
        if id.is_empty() || id.len() > 128 {
            return Err(CheckoutError::invalid_field(
                "checkoutSessionId",
                "must be 1–128 characters",
            ));
        }
        let mut cart = self.carts.load(id).await?.ok_or(CheckoutError::CheckoutSessionNotFound)?;
        if caller.is_service() {
            if user_id.is_some() {
                cart.user_id = user_id;
            }
        } else {
            if cart.user_id.is_some() && cart.user_id != user_id {
                return Err(CheckoutError::Forbidden(
                    "This checkout session belongs to another user",
                ));
            }
            cart.user_id = user_id;
        }
        cart.checkout_session_id = Some(id.to_owned());
        if cart.email.is_none() {
            cart.email.clone_from(&request.email);
        }
        cart.mode = parse_mode(request.mode.as_deref(), cart.mode)?;
        Ok(cart)
    }

    /// The Stripe Checkout session `session_id` as Stripe has it now (404
    /// `stripe_session_not_found`).
    pub async fn retrieve_checkout(
        &self,
        session_id: &str,
    ) -> Result<CheckoutSession, CheckoutError> {
        let api = self.api()?;
        let retrieve = RetrieveCheckoutSession::new(session_id);
        api.call("retrieve checkout session", None, |client, strategy| {
            let request = retrieve.customize().request_strategy(strategy);
            async move { request.send(&client).await }
        })
        .await
        .map_err(|error| {
            if error.is_not_found() { CheckoutError::StripeSessionNotFound } else { error.into() }
        })
    }

    /// Settles the checkout session a Stripe Checkout session was created from, as Stripe says
    /// (a session fetched from Stripe, never a webhook payload): completed when paid, failed when
    /// the Checkout session expired or finished unpaid (a delayed payment that failed); left
    /// open otherwise. Safe to repeat.
    pub async fn settle_checkout(&self, session: &CheckoutSession) -> Result<(), CheckoutError> {
        let Some(id) = checkout_session_of(session) else { return Ok(()) };
        let status = session.status.as_ref().map(|s| s.as_str());
        match (status, session.payment_status.as_str()) {
            (_, "paid") => self.carts.paid(&id).await,
            (Some("expired"), _) | (Some("complete"), "unpaid") => {
                self.carts.payment_failed(&id).await
            }
            _ => Ok(()),
        }
    }

    /// Finds or creates the user's customer, then creates the Stripe Checkout session.
    /// A guest cart gets no customer of ours (Stripe collects the buyer's details; `email`
    /// prefills them).
    #[tracing::instrument(name = "stripe.create_checkout", skip(self, cart), fields(user_id = cart.user_id.as_deref().unwrap_or("guest"), lines = cart.lines.len()))]
    pub async fn create_checkout(&self, cart: &Cart) -> Result<CheckoutCreated, CheckoutError> {
        let api = self.api()?;
        let customer_id = match &cart.user_id {
            Some(user_id) => Some(self.customer_for_user(user_id, cart.email.as_deref()).await?),
            None => None,
        };
        let settings = &self.settings;
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
        match (&customer_id, &cart.user_id) {
            (Some(customer_id), Some(user_id)) => {
                create =
                    create.customer(customer_id.as_str()).client_reference_id(user_id.as_str());
            }
            _ => {
                if let Some(email) = &cart.email {
                    create = create.customer_email(email.as_str());
                }
            }
        }
        // One key for all attempts of this request: a retried create returns the same session.
        let idempotency_key = format!("{}-checkout-{}", crate::SERVICE, uuid::Uuid::new_v4());
        let session = api
            .call("create checkout session", Some(&idempotency_key), |client, strategy| {
                let request = create.customize().request_strategy(strategy);
                async move { request.send(&client).await }
            })
            .await?;
        let url = session.url.clone().ok_or_else(|| {
            CheckoutError::Internal(anyhow::anyhow!(
                "stripe returned a checkout session without url"
            ))
        })?;
        tracing::info!(session_id = %session.id.as_str(), customer_id = customer_id.as_deref().unwrap_or("none"), "stripe checkout session created");
        Ok(CheckoutCreated { url, session_id: session.id.as_str().to_owned(), customer_id })
    }
}

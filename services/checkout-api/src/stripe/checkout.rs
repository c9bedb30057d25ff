//! Checkout requests (a stored checkout session, or a user with items or a price) → validated
//! carts → Stripe Checkout sessions for the user's Stripe customer.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr as _;

use serde::{Deserialize, Serialize};
use stripe::StripeRequest as _;
use stripe_checkout::CheckoutSessionMode;
use stripe_checkout::checkout_session::{
    CreateCheckoutSession, CreateCheckoutSessionLineItems, CreateCheckoutSessionLineItemsPriceData,
    CreateCheckoutSessionLineItemsPriceDataRecurring,
    CreateCheckoutSessionLineItemsPriceDataRecurringInterval, ProductData,
};

use crate::error::CheckoutError;
use crate::stripe::StripeService;
use crate::stripe::customers::validate_user_id;

/// Largest unit amount accepted, in cents (Stripe's own limit for most currencies).
pub const MAX_UNIT_AMOUNT_CENTS: i64 = 99_999_999;
/// Largest quantity per line.
pub const MAX_QUANTITY: u64 = 10_000;

/// Body of `POST /api/stripe/checkout`: either `checkoutSessionId`, or `userId` with `items` or
/// `priceId`.
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

/// One line of a checkout request, priced in integer cents.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ItemRequest {
    pub name: String,
    pub unit_amount_cents: i64,
    pub quantity: u64,
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
    pub user_id: String,
    pub email: Option<String>,
    pub lines: Vec<CartLine>,
    pub mode: Mode,
    /// The checkout session this cart came from, recorded in the Stripe session's metadata.
    pub checkout_session_id: Option<String>,
}

/// The checkout sessions behind Stripe Checkout: the checkout-session store implements it.
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
}

/// A [`CartSource`] that knows no checkout session (until the session store is wired in).
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
}

/// The answer of `POST /api/stripe/checkout`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckoutCreated {
    pub url: String,
    pub session_id: String,
    pub customer_id: String,
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
    if (1..=MAX_QUANTITY).contains(&quantity) {
        Ok(quantity)
    } else {
        Err(CheckoutError::invalid_field(field, format!("must be between 1 and {MAX_QUANTITY}")))
    }
}

fn validate_price_id(price_id: &str) -> Result<(), CheckoutError> {
    let ok = price_id.len() <= 255
        && price_id.strip_prefix("price_").is_some_and(|rest| {
            !rest.is_empty() && rest.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        });
    if ok {
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

/// Validates a direct checkout request (the `userId` form) into a cart.
pub fn cart_from_request(
    request: &CheckoutRequest,
    default_price_id: Option<&str>,
    max_line_items: usize,
) -> Result<Cart, CheckoutError> {
    let Some(user_id) = request.user_id.as_deref() else {
        return Err(CheckoutError::invalid_field(
            "userId",
            "is required (or give checkoutSessionId)",
        ));
    };
    validate_user_id(user_id)?;
    if let Some(email) = &request.email {
        validate_email(email)?;
    }
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
            let mut lines = Vec::with_capacity(items.len());
            for item in items {
                let name = item.name.trim();
                if name.is_empty() || name.chars().count() > 200 {
                    return Err(CheckoutError::invalid_field(
                        "items.name",
                        "must be 1–200 characters",
                    ));
                }
                if !(0..=MAX_UNIT_AMOUNT_CENTS).contains(&item.unit_amount_cents) {
                    return Err(CheckoutError::invalid_field(
                        "items.unitAmountCents",
                        format!("must be between 0 and {MAX_UNIT_AMOUNT_CENTS} cents"),
                    ));
                }
                lines.push(CartLine::Inline {
                    name: name.to_owned(),
                    unit_amount_cents: item.unit_amount_cents,
                    quantity: validate_quantity("items.quantity", item.quantity)?,
                });
            }
            (lines, Mode::Payment)
        }
        (None, price) => {
            let Some(price_id) = price.or(default_price_id) else {
                return Err(CheckoutError::invalid_field("items", "give items or priceId"));
            };
            validate_price_id(price_id)?;
            let quantity = validate_quantity("quantity", request.quantity.unwrap_or(1))?;
            (vec![CartLine::Price { price_id: price_id.to_owned(), quantity }], Mode::Subscription)
        }
    };
    Ok(Cart {
        user_id: user_id.to_owned(),
        email: request.email.clone(),
        lines,
        mode: parse_mode(request.mode.as_deref(), default_mode)?,
        checkout_session_id: None,
    })
}

impl StripeService {
    /// The cart a checkout request describes: loaded by `checkoutSessionId`, or built from it.
    pub async fn cart_for(&self, request: &CheckoutRequest) -> Result<Cart, CheckoutError> {
        let Some(id) = request.checkout_session_id.as_deref() else {
            return cart_from_request(
                request,
                self.settings.default_price_id.as_deref(),
                self.settings.max_line_items,
            );
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
        if let Some(user_id) = &request.user_id {
            validate_user_id(user_id)?;
            cart.user_id.clone_from(user_id);
        }
        if cart.user_id.is_empty() {
            return Err(CheckoutError::invalid_field(
                "userId",
                "the checkout session has no user; give userId",
            ));
        }
        cart.checkout_session_id = Some(id.to_owned());
        if cart.email.is_none() {
            cart.email.clone_from(&request.email);
        }
        cart.mode = parse_mode(request.mode.as_deref(), cart.mode)?;
        Ok(cart)
    }

    /// Finds or creates the user's customer, then creates the Stripe Checkout session.
    #[tracing::instrument(name = "stripe.create_checkout", skip(self, cart), fields(user_id = %cart.user_id, lines = cart.lines.len()))]
    pub async fn create_checkout(&self, cart: &Cart) -> Result<CheckoutCreated, CheckoutError> {
        let api = self.api()?;
        let customer_id = self.customer_for_user(&cart.user_id, cart.email.as_deref()).await?;
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
        let mut metadata = HashMap::from([("userId".to_owned(), cart.user_id.clone())]);
        if let Some(id) = &cart.checkout_session_id {
            metadata.insert("checkoutSessionId".to_owned(), id.clone());
        }
        let mode = match cart.mode {
            Mode::Payment => CheckoutSessionMode::Payment,
            Mode::Subscription => CheckoutSessionMode::Subscription,
        };
        let create = CreateCheckoutSession::new()
            .customer(customer_id.as_str())
            .mode(mode)
            .line_items(lines)
            .success_url(settings.success_url.as_str())
            .cancel_url(settings.cancel_url.as_str())
            .client_reference_id(cart.user_id.as_str())
            .metadata(metadata);
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
        tracing::info!(session_id = %session.id.as_str(), customer_id, "stripe checkout session created");
        Ok(CheckoutCreated { url, session_id: session.id.as_str().to_owned(), customer_id })
    }
}

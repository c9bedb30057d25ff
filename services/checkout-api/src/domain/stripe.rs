//! Stripe payments as data: checkout requests (a stored checkout session, or catalog items, or a
//! catalog price), the validated carts sent to Stripe Checkout, the source of those carts
//! ([`CartSource`]), and the one record of a customer's Stripe state that the sync writes.
//!
//! Nothing a client sends sets a price: items are priced by the catalog, a `priceId` must be one
//! the catalog lists, and a stored checkout session is repriced before it is paid.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use chrono::{SecondsFormat, TimeZone as _, Utc};
use serde::{Deserialize, Serialize};
use stripe_checkout::CheckoutSession;
use utoipa::ToSchema;

use crate::domain::catalog::{ItemRequest, MAX_QUANTITY, valid_price_id};
use crate::error::CheckoutError;

/// Body of `POST /api/stripe/checkout`: either `checkoutSessionId`, or `items` or `priceId`.
/// `userId` counts only for a service-token caller.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CheckoutRequest {
    /// An open checkout session to pay (not together with `items` or `priceId`).
    #[schema(min_length = 1, max_length = 128)]
    pub checkout_session_id: Option<String>,
    /// Read only from a service-token caller (1–128 of letters, digits, `_ - . : @`), ignored
    /// otherwise.
    pub user_id: Option<String>,
    #[schema(max_length = 254)]
    pub email: Option<String>,
    /// Catalog items (1 to `stripe.max_line_items`), not together with `priceId`.
    pub items: Option<Vec<ItemRequest>>,
    /// A Stripe price the catalog lists; without `items` or `priceId`, the configured default.
    #[schema(pattern = "^price_[A-Za-z0-9_]+$", max_length = 255)]
    pub price_id: Option<String>,
    /// Of the `priceId` line (1 to 10 000; default 1); unused with `items`.
    pub quantity: Option<u64>,
    /// `payment` (default for items) or `subscription` (default for a price).
    #[schema(pattern = "^(payment|subscription)$")]
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

/// The checkout sessions and the catalog behind Stripe Checkout: [`crate::domain::checkout::Checkout`]
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
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckoutCreated {
    pub url: String,
    pub session_id: String,
    /// `null` for a guest checkout.
    pub customer_id: Option<String>,
}

pub fn parse_mode(mode: Option<&str>, default: Mode) -> Result<Mode, CheckoutError> {
    match mode {
        None => Ok(default),
        Some("payment") => Ok(Mode::Payment),
        Some("subscription") => Ok(Mode::Subscription),
        Some(_) => Err(CheckoutError::invalid_field("mode", "must be `payment` or `subscription`")),
    }
}

pub fn validate_quantity(field: &'static str, quantity: u64) -> Result<u64, CheckoutError> {
    if (1..=MAX_QUANTITY.unsigned_abs()).contains(&quantity) {
        Ok(quantity)
    } else {
        Err(CheckoutError::invalid_field(field, format!("must be between 1 and {MAX_QUANTITY}")))
    }
}

pub fn validate_price_id(price_id: &str) -> Result<(), CheckoutError> {
    if valid_price_id(price_id) {
        Ok(())
    } else {
        Err(CheckoutError::invalid_field("priceId", "must be a Stripe price id (price_…)"))
    }
}

pub fn validate_email(email: &str) -> Result<(), CheckoutError> {
    let ok = email.len() <= 254
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && domain.contains('.') && !email.chars().any(char::is_whitespace)
        });
    if ok { Ok(()) } else { Err(CheckoutError::invalid_field("email", "must be an email address")) }
}

/// Longest accepted user id.
pub const MAX_USER_ID_LEN: usize = 128;

/// Checks a user id from a request: 1–128 characters of `A–Z a–z 0–9 _ - . : @`.
pub fn validate_user_id(user_id: &str) -> Result<(), CheckoutError> {
    let ok = !user_id.is_empty()
        && user_id.len() <= MAX_USER_ID_LEN
        && user_id.chars().all(|c| c.is_ascii_alphanumeric() || "_-.:@".contains(c));
    if ok {
        Ok(())
    } else {
        Err(CheckoutError::invalid_field(
            "userId",
            format!("must be 1–{MAX_USER_ID_LEN} characters of letters, digits, _ - . : @"),
        ))
    }
}

/// Checks a Stripe customer id from a request path.
pub fn validate_customer_id(customer_id: &str) -> Result<(), CheckoutError> {
    let ok = customer_id.len() <= 255
        && customer_id.strip_prefix("cus_").is_some_and(|rest| {
            !rest.is_empty() && rest.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        });
    if ok {
        Ok(())
    } else {
        Err(CheckoutError::invalid_field("customerId", "must be a Stripe customer id (cus_…)"))
    }
}

/// The default payment method's card.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PaymentMethodView {
    pub brand: String,
    pub last4: String,
}

/// The newest payment intent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
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

/// Period bounds as RFC 3339, for the HTML page.
pub fn period_end_text(state: &StripeState) -> Option<String> {
    state.current_period_end.map(rfc3339)
}

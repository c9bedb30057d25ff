//! The one error type of checkout-api (`CheckoutError`) and its mapping onto the `{error, code}`
//! JSON contract.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use platform_redis::RedisError;
use platform_service::database::{INVALID_VALUE, is_invalid_value, is_unavailable};
use platform_service::error::error_chain;
use platform_service::{error_response, server_error};

use crate::upstream::stripe::StripeCallError;

/// Everything a request can fail with. 4xx explain themselves; 5xx are logged and opaque.
#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    /// A field of the request is unusable; `code` says which rule failed.
    #[error("{message}")]
    Invalid { code: &'static str, message: String },
    #[error("Unknown coupon code")]
    UnknownCoupon,
    #[error("Coupon is not active")]
    CouponInactive,
    #[error("Coupon has expired")]
    CouponExpired,
    #[error("Order subtotal is below the coupon's minimum of {min_order_cents} cents")]
    CouponMinimumNotMet { min_order_cents: i64 },
    #[error("No delivery to {distance_km} km: the farthest delivery band ends at {max_km} km")]
    DeliveryOutOfRange { distance_km: f64, max_km: f64 },
    #[error("Invalid checkout session id: expected a UUID")]
    InvalidSessionId,
    #[error("Checkout session not found or expired")]
    SessionNotFound,
    #[error("Checkout session is {status}; only open sessions can be {action}")]
    InvalidTransition { status: &'static str, action: &'static str },
    #[error("Checkout session was changed concurrently; retry the request")]
    Conflict,
    #[error("Coupon not found")]
    CouponNotFound,
    #[error("A coupon with this code already exists")]
    CouponExists,
    #[error("Unknown action `{0}`: expected cleanup_expired, get_stats or get_all_sessions")]
    UnknownAction(String),
    #[error("No session: the session cookie is missing, invalid or expired")]
    NoSession,
    /// A bearer token was sent and is not the service token.
    #[error("Invalid bearer token")]
    Unauthorized,
    /// The caller is known but this is not theirs (another user's state, another user's cart).
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("Product not found")]
    ProductNotFound,
    #[error("A product with this sku already exists")]
    ProductExists,
    #[error("Another product is already sold as this priceId")]
    PriceIdInUse,
    #[error("Checkout session not found")]
    CheckoutSessionNotFound,
    #[error("Stripe Checkout session not found")]
    StripeSessionNotFound,
    #[error("No Stripe state recorded for this customer")]
    StripeStateNotFound,
    #[error("No Stripe customer for this user")]
    StripeCustomerNotFound,
    /// `[stripe] secret_key` is not set: the Stripe routes are off.
    #[error("Payments are not configured on this server")]
    StripeNotConfigured,
    /// Stripe could not be reached, timed out or answered 5xx/429 after the retries: 503.
    #[error("stripe unavailable")]
    StripeUnavailable(#[source] StripeCallError),
    /// Stripe refused a request or answered something unreadable: 502, logged.
    #[error("stripe request failed")]
    StripeFailed(#[source] StripeCallError),
    /// Another sync of this customer held the lock for longer than we wait: 503.
    #[error("stripe state sync busy")]
    SyncBusy,
    /// Neither Redis nor Postgres could serve the request: 503 so callers retry.
    #[error("storage unavailable")]
    Unavailable(#[source] anyhow::Error),
    /// Any other failure: 500.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl CheckoutError {
    /// A 400 with `code` and a sentence naming the field.
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        CheckoutError::Invalid { code, message: message.into() }
    }

    /// A 400 `invalid_input` naming `field` and the rule it broke.
    pub fn invalid_field(field: &'static str, reason: impl Into<String>) -> Self {
        CheckoutError::Invalid {
            code: "invalid_input",
            message: format!("Invalid `{field}`: {}", reason.into()),
        }
    }

    /// The `code` of the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            CheckoutError::Invalid { code, .. } => code,
            CheckoutError::UnknownCoupon => "unknown_coupon",
            CheckoutError::CouponInactive => "coupon_inactive",
            CheckoutError::CouponExpired => "coupon_expired",
            CheckoutError::CouponMinimumNotMet { .. } => "coupon_minimum_not_met",
            CheckoutError::DeliveryOutOfRange { .. } => "delivery_out_of_range",
            CheckoutError::InvalidSessionId => "invalid_session_id",
            CheckoutError::SessionNotFound => "session_not_found",
            CheckoutError::InvalidTransition { .. } => "invalid_transition",
            CheckoutError::Conflict => "conflict",
            CheckoutError::CouponNotFound => "coupon_not_found",
            CheckoutError::CouponExists => "coupon_exists",
            CheckoutError::UnknownAction(_) => "unknown_action",
            CheckoutError::NoSession => "no_session",
            CheckoutError::Unauthorized => "unauthorized",
            CheckoutError::Forbidden(_) => "forbidden",
            CheckoutError::ProductNotFound => "product_not_found",
            CheckoutError::ProductExists => "product_exists",
            CheckoutError::PriceIdInUse => "price_id_in_use",
            CheckoutError::CheckoutSessionNotFound => "checkout_session_not_found",
            CheckoutError::StripeSessionNotFound => "stripe_session_not_found",
            CheckoutError::StripeStateNotFound => "stripe_state_not_found",
            CheckoutError::StripeCustomerNotFound => "stripe_customer_not_found",
            CheckoutError::StripeNotConfigured => "stripe_not_configured",
            CheckoutError::StripeUnavailable(_) => "stripe_unavailable",
            CheckoutError::StripeFailed(_) => "stripe_error",
            CheckoutError::SyncBusy => "stripe_sync_busy",
            CheckoutError::Unavailable(_) => "unavailable",
            CheckoutError::Internal(_) => "internal_error",
        }
    }
}

impl From<sqlx::Error> for CheckoutError {
    fn from(error: sqlx::Error) -> Self {
        if is_unavailable(&error) {
            CheckoutError::Unavailable(error.into())
        } else if is_invalid_value(&error) {
            CheckoutError::invalid("invalid_input", INVALID_VALUE)
        } else {
            CheckoutError::Internal(error.into())
        }
    }
}

impl From<RedisError> for CheckoutError {
    fn from(error: RedisError) -> Self {
        if error.is_unavailable() {
            CheckoutError::Unavailable(error.into())
        } else {
            CheckoutError::Internal(error.into())
        }
    }
}

impl From<platform_redis::fred::error::Error> for CheckoutError {
    fn from(error: platform_redis::fred::error::Error) -> Self {
        RedisError::from(error).into()
    }
}

impl From<StripeCallError> for CheckoutError {
    fn from(error: StripeCallError) -> Self {
        if error.is_transient() {
            CheckoutError::StripeUnavailable(error)
        } else {
            CheckoutError::StripeFailed(error)
        }
    }
}

impl From<serde_json::Error> for CheckoutError {
    fn from(error: serde_json::Error) -> Self {
        CheckoutError::Internal(error.into())
    }
}

impl ResponseError for CheckoutError {
    fn status_code(&self) -> StatusCode {
        match self {
            CheckoutError::Invalid { .. }
            | CheckoutError::UnknownCoupon
            | CheckoutError::CouponInactive
            | CheckoutError::CouponExpired
            | CheckoutError::CouponMinimumNotMet { .. }
            | CheckoutError::DeliveryOutOfRange { .. }
            | CheckoutError::InvalidSessionId
            | CheckoutError::UnknownAction(_) => StatusCode::BAD_REQUEST,
            CheckoutError::NoSession | CheckoutError::Unauthorized => StatusCode::UNAUTHORIZED,
            CheckoutError::Forbidden(_) => StatusCode::FORBIDDEN,
            CheckoutError::SessionNotFound
            | CheckoutError::CouponNotFound
            | CheckoutError::ProductNotFound
            | CheckoutError::CheckoutSessionNotFound
            | CheckoutError::StripeSessionNotFound
            | CheckoutError::StripeStateNotFound
            | CheckoutError::StripeCustomerNotFound => StatusCode::NOT_FOUND,
            CheckoutError::InvalidTransition { .. }
            | CheckoutError::Conflict
            | CheckoutError::CouponExists
            | CheckoutError::ProductExists
            | CheckoutError::PriceIdInUse => StatusCode::CONFLICT,
            CheckoutError::Unavailable(_)
            | CheckoutError::StripeNotConfigured
            | CheckoutError::StripeUnavailable(_)
            | CheckoutError::SyncBusy => StatusCode::SERVICE_UNAVAILABLE,
            CheckoutError::StripeFailed(_) => StatusCode::BAD_GATEWAY,
            CheckoutError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        match self {
            // Upstream failures keep a specific code so callers (and the storefront) can tell
            // "payments are down, retry" from a bug; the cause is logged, never shown.
            CheckoutError::StripeUnavailable(_)
            | CheckoutError::StripeFailed(_)
            | CheckoutError::SyncBusy => {
                tracing::error!(status = status.as_u16(), code = self.code(), error = %error_chain(self), "stripe request failed");
                let message = if status == StatusCode::BAD_GATEWAY {
                    "The payment provider rejected the request; try again later"
                } else {
                    "The payment provider is unavailable; retry later"
                };
                error_response(status, self.code(), message)
            }
            // Configuration, not a fault: say so to the caller.
            CheckoutError::StripeNotConfigured => {
                error_response(status, self.code(), self.to_string())
            }
            _ if status.is_server_error() => server_error(status, self),
            _ => error_response(status, self.code(), self.to_string()),
        }
    }
}

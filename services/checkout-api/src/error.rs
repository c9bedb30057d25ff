//! The one error type of checkout-api and its mapping onto the `{error, code}` JSON contract.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use platform_service::error::error_chain;
use platform_service::{error_response, server_error};

use crate::stripe::client::StripeCallError;

/// Everything a request can fail with. 4xx explain themselves; 5xx are logged and opaque.
#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    #[error("Invalid `{field}`: {reason}")]
    Invalid { field: &'static str, reason: String },
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
    /// Redis could not be reached: 503.
    #[error("redis unavailable")]
    RedisUnavailable(#[source] platform_redis::RedisError),
    /// Any other failure: 500.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl CheckoutError {
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        CheckoutError::Invalid { field, reason: reason.into() }
    }

    fn code(&self) -> &'static str {
        match self {
            CheckoutError::Invalid { .. } => "invalid_input",
            CheckoutError::CheckoutSessionNotFound => "checkout_session_not_found",
            CheckoutError::StripeSessionNotFound => "stripe_session_not_found",
            CheckoutError::StripeStateNotFound => "stripe_state_not_found",
            CheckoutError::StripeCustomerNotFound => "stripe_customer_not_found",
            CheckoutError::StripeNotConfigured => "stripe_not_configured",
            CheckoutError::StripeUnavailable(_) => "stripe_unavailable",
            CheckoutError::StripeFailed(_) => "stripe_error",
            CheckoutError::SyncBusy => "stripe_sync_busy",
            CheckoutError::RedisUnavailable(_) => "unavailable",
            CheckoutError::Internal(_) => "internal_error",
        }
    }
}

impl From<platform_redis::RedisError> for CheckoutError {
    fn from(error: platform_redis::RedisError) -> Self {
        CheckoutError::RedisUnavailable(error)
    }
}

impl From<platform_redis::fred::error::Error> for CheckoutError {
    fn from(error: platform_redis::fred::error::Error) -> Self {
        CheckoutError::RedisUnavailable(error.into())
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

impl ResponseError for CheckoutError {
    fn status_code(&self) -> StatusCode {
        match self {
            CheckoutError::Invalid { .. } => StatusCode::BAD_REQUEST,
            CheckoutError::CheckoutSessionNotFound
            | CheckoutError::StripeSessionNotFound
            | CheckoutError::StripeStateNotFound
            | CheckoutError::StripeCustomerNotFound => StatusCode::NOT_FOUND,
            CheckoutError::StripeNotConfigured
            | CheckoutError::StripeUnavailable(_)
            | CheckoutError::SyncBusy
            | CheckoutError::RedisUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
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
            _ if status.is_server_error()
                && !matches!(self, CheckoutError::StripeNotConfigured) =>
            {
                server_error(status, self)
            }
            _ => error_response(status, self.code(), self.to_string()),
        }
    }
}

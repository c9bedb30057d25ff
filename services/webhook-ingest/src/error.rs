//! The service's one error enum and its HTTP mapping (`{"error", "code"}` contract), and the
//! reasons a signature check fails ([`SignatureError`]).
//!
//! Unauthentic deliveries are 400 with a code naming the check that failed, so a misconfigured endpoint
//! secret is obvious in Stripe's dashboard; dependency failures are an opaque 503 so Stripe
//! retries; nothing answers 500 for bad input.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use platform_service::database::{INVALID_VALUE, is_invalid_value};
use platform_service::{error_response, server_error};

use crate::db::batch::SubmitError;

/// Why a signature was rejected; each maps to a stable error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("Missing Stripe-Signature header")]
    Missing,
    #[error("Malformed Stripe-Signature header: no timestamp `t`")]
    NoTimestamp,
    #[error("Malformed Stripe-Signature header: no v1 signature")]
    NoV1Signature,
    #[error("Malformed Stripe-Signature header: it is not comma-separated key=value pairs")]
    Malformed,
    #[error("No v1 signature matches the payload for any configured secret")]
    Mismatch,
    #[error("Timestamp is outside the allowed tolerance")]
    OutsideTolerance,
}

impl SignatureError {
    /// The stable `code` of the JSON error.
    pub fn code(self) -> &'static str {
        match self {
            Self::Missing => "missing_signature",
            Self::NoTimestamp | Self::NoV1Signature | Self::Malformed => "malformed_signature",
            Self::Mismatch => "signature_mismatch",
            Self::OutsideTolerance => "timestamp_out_of_tolerance",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error(transparent)]
    Signature(#[from] SignatureError),
    #[error("Request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("Could not read the request body: {0}")]
    Body(String),
    #[error("Event {0} is unprocessable; replaying it cannot help")]
    Unprocessable(String),
    #[error("No event {0} in the ledger")]
    NotFound(String),
    #[error("{0}")]
    InvalidQuery(String),
    #[error("{INVALID_VALUE}")]
    InvalidValue,
    #[error("the ledger database is unavailable")]
    Database(#[source] sqlx::Error),
    #[error("the ledger database is unavailable")]
    LedgerBatch(#[from] SubmitError),
    #[error("the ledger is not configured")]
    NoDatabase,
}

impl WebhookError {
    /// The `reason` label of `webhook_rejected_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Signature(e) => e.code(),
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::Body(_) => "invalid_body",
            Self::Unprocessable(_) => "unprocessable_event",
            Self::NotFound(_) => "event_not_found",
            Self::InvalidQuery(_) => "invalid_query",
            Self::InvalidValue => "invalid_input",
            Self::Database(_) | Self::LedgerBatch(_) | Self::NoDatabase => "unavailable",
        }
    }
}

/// Every other ledger failure answers 503, so Stripe retries: an outage passes, and a retry of a
/// statement that failed for another reason costs nothing.
impl From<sqlx::Error> for WebhookError {
    fn from(error: sqlx::Error) -> Self {
        if is_invalid_value(&error) { Self::InvalidValue } else { Self::Database(error) }
    }
}

impl ResponseError for WebhookError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::Signature(_) | Self::Body(_) | Self::InvalidQuery(_) | Self::InvalidValue => {
                StatusCode::BAD_REQUEST
            }
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unprocessable(_) => StatusCode::CONFLICT,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Database(_) | Self::LedgerBatch(_) | Self::NoDatabase => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        if status.is_server_error() {
            return server_error(status, self);
        }
        error_response(status, self.reason(), self.to_string())
    }
}

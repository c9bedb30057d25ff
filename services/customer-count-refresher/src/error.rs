//! The service's error enum and its HTTP mapping (JSON `{error, code}`).

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use platform_redis::RedisError;
use platform_service::error::error_chain;
use platform_service::{error_response, server_error};

use crate::upstream::walk::WalkError;

/// Why a refresh did not store a new count.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    /// Some replica (maybe this one) holds the refresh lock.
    #[error("a refresh is already running")]
    InProgress,
    /// The lease was lost during the walk (renewal failed or was overtaken); the result is dropped.
    #[error("the refresh lock was lost during the walk")]
    LockLost,
    /// A newer lock holder exists; the fenced write refused this result.
    #[error("a newer refresh superseded this one")]
    Superseded,
    #[error("the invoice walk failed")]
    Walk(#[from] WalkError),
    #[error("redis failed")]
    Storage(#[from] RedisError),
    #[error("the simPRO client could not be built")]
    Client(#[from] reqwest::Error),
    #[error("invalid refresh schedule")]
    Schedule(#[from] cron::error::Error),
    #[error("the refresh task ended abnormally")]
    Task(#[from] tokio::task::JoinError),
}

impl RefreshError {
    /// A short, secret-free sentence for the status route and the shared status record.
    pub fn summary(&self) -> String {
        error_chain(self)
    }
}

impl ResponseError for RefreshError {
    fn status_code(&self) -> StatusCode {
        match self {
            RefreshError::InProgress | RefreshError::LockLost | RefreshError::Superseded => {
                StatusCode::CONFLICT
            }
            RefreshError::Walk(_) => StatusCode::BAD_GATEWAY,
            RefreshError::Storage(_) => StatusCode::SERVICE_UNAVAILABLE,
            RefreshError::Client(_) | RefreshError::Schedule(_) | RefreshError::Task(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        match self {
            RefreshError::InProgress => error_response(
                status,
                "refresh_in_progress",
                "A customer-count refresh is already running; try again when it has finished",
            ),
            RefreshError::LockLost => error_response(
                status,
                "refresh_lock_lost",
                "The refresh lost its lock during the walk and was abandoned; the previous count is still served",
            ),
            RefreshError::Superseded => error_response(
                status,
                "refresh_superseded",
                "A newer refresh took over; its result is kept",
            ),
            RefreshError::Walk(_) => {
                tracing::error!(error = %error_chain(self), "refresh failed");
                error_response(
                    status,
                    "upstream_unavailable",
                    "simPRO could not be read completely; the previous count is still served",
                )
            }
            RefreshError::Storage(_)
            | RefreshError::Client(_)
            | RefreshError::Schedule(_)
            | RefreshError::Task(_) => server_error(status, self),
        }
    }
}

/// Why a real-time intake stored nothing.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    #[error("the real-time mode is disabled")]
    Disabled,
    #[error("{got} invoices in one request; at most {max} are accepted")]
    TooManyInvoices { got: usize, max: usize },
    /// Nothing is acknowledged that was not stored: the caller retries (the intake is idempotent).
    #[error("redis failed")]
    Storage(#[from] RedisError),
}

impl ResponseError for IntakeError {
    fn status_code(&self) -> StatusCode {
        match self {
            IntakeError::Disabled => StatusCode::NOT_FOUND,
            IntakeError::TooManyInvoices { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            IntakeError::Storage(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        match self {
            IntakeError::Disabled => error_response(
                status,
                "realtime_disabled",
                "The real-time customer count is disabled (realtime.enabled = false)",
            ),
            IntakeError::TooManyInvoices { .. } => {
                error_response(status, "too_many_invoices", format!("{self}; split the batch"))
            }
            IntakeError::Storage(_) => server_error(status, self),
        }
    }
}

//! The service's error types: the HTTP API's, with its mapping onto the shared JSON error
//! contract, and the flush's ([`FlushError`]).

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use platform_redis::RedisError;
use platform_service::{error_response, server_error};
use serde::Serialize;

use crate::store::RecordError;

#[derive(Debug, thiserror::Error)]
pub enum FlushError {
    #[error("reading counters from redis failed")]
    Redis(#[from] RedisError),
    #[error("writing counters to postgres failed")]
    Database(#[from] sqlx::Error),
}

/// One refused event of a batch.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Rejection {
    /// The event's position in `events`, from 0.
    pub index: usize,
    /// Why it was refused (a sentence).
    pub reason: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidMonth(String),
    #[error("{0}")]
    InvalidOrg(String),
    #[error("{0}")]
    InvalidMetric(String),
    #[error("{0}")]
    UnknownTier(String),
    #[error("{0}")]
    InvalidQuery(String),
    #[error("{} of the events are invalid; none was stored", .0.len())]
    InvalidEvents(Vec<Rejection>),
    #[error("at most {0} events per request")]
    TooManyEvents(usize),
    #[error("redis command failed")]
    Redis(#[from] RedisError),
    #[error("postgres query failed")]
    Database(#[from] sqlx::Error),
    #[error("usage storage is unavailable")]
    Unavailable,
    #[error("flush failed")]
    Flush(#[from] FlushError),
    #[error("this replica has no database configured")]
    NoDatabase,
    #[error("usage counters are being restored after a redis data loss; retry shortly")]
    Restoring,
}

impl From<RecordError> for ApiError {
    fn from(error: RecordError) -> Self {
        match error {
            RecordError::Redis(e) => ApiError::Redis(e),
            RecordError::Restoring => ApiError::Restoring,
        }
    }
}

/// The 400 of a refused event batch: the error body plus every refused event. The schema also
/// describes the intake's other 400s (plain error bodies), hence `rejected` is not required.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct InvalidEventsBody<'a> {
    /// A sentence for people.
    error: String,
    /// `invalid_events` (with `rejected`), `too_many_events`, or the edge's code for a body that is
    /// not `{"events": [...]}`.
    code: &'static str,
    /// Present when `code` is `invalid_events`.
    #[schema(required = false)]
    rejected: &'a [Rejection],
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::InvalidMonth(_)
            | ApiError::InvalidOrg(_)
            | ApiError::InvalidMetric(_)
            | ApiError::UnknownTier(_)
            | ApiError::InvalidQuery(_)
            | ApiError::InvalidEvents(_)
            | ApiError::TooManyEvents(_) => StatusCode::BAD_REQUEST,
            ApiError::Redis(e) if !e.is_unavailable() => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Redis(_)
            | ApiError::Database(_)
            | ApiError::Unavailable
            | ApiError::Flush(_)
            | ApiError::NoDatabase
            | ApiError::Restoring => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        let code = match self {
            ApiError::InvalidMonth(_) => "invalid_month",
            ApiError::InvalidOrg(_) => "invalid_org",
            ApiError::InvalidMetric(_) => "invalid_metric",
            ApiError::UnknownTier(_) => "unknown_tier",
            ApiError::InvalidQuery(_) => "invalid_query",
            ApiError::TooManyEvents(_) => "too_many_events",
            ApiError::Restoring => {
                let mut response = error_response(status, "restoring", self.to_string());
                response.headers_mut().insert(
                    actix_web::http::header::RETRY_AFTER,
                    actix_web::http::header::HeaderValue::from_static("1"),
                );
                return response;
            }
            ApiError::InvalidEvents(rejected) => {
                return HttpResponse::BadRequest().json(InvalidEventsBody {
                    error: self.to_string(),
                    code: "invalid_events",
                    rejected,
                });
            }
            _ => return server_error(status, self),
        };
        error_response(status, code, self.to_string())
    }
}

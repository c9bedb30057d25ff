//! The one error type of campaign-api and its mapping onto the `{error, code}` JSON contract.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use platform_service::database::{INVALID_VALUE, is_invalid_value, is_unavailable};
use platform_service::{error_response, server_error};

/// Everything a request can fail with. 4xx explain themselves; 5xx are logged and opaque.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("Invalid organization slug")]
    InvalidSlug,
    #[error("Organization not found")]
    OrganisationNotFound,
    #[error("Campaign not found")]
    CampaignNotFound,
    #[error("Invalid campaign id: expected a UUID")]
    InvalidCampaignId,
    #[error("Invalid `{field}`: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("{INVALID_VALUE}")]
    InvalidValue,
    #[error("An organization with this slug already exists")]
    SlugTaken,
    #[error("Nothing to update: the body names no field")]
    EmptyPatch,
    #[error("The {tier} tier allows {limit} concurrent campaigns; end or disable one first")]
    CampaignLimit { tier: String, limit: u32 },
    #[error("This Idempotency-Key was used for a different request")]
    IdempotencyKeyReused,
    #[error("Tenant tokens are not configured here (tenant_auth.hs256_secrets is empty)")]
    TenantTokensDisabled,
    /// Postgres could not be reached (pool timeout, I/O): 503 so callers retry.
    #[error("database unavailable")]
    Unavailable(#[source] sqlx::Error),
    /// Live updates are stopping (the replica drains): 503, the client reconnects elsewhere.
    #[error("live updates are stopping")]
    LiveUpdatesStopped(#[source] platform_redis::RedisError),
    /// Any other failure: 500.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        ApiError::Invalid { field, reason: reason.into() }
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidSlug => "invalid_slug",
            ApiError::OrganisationNotFound => "organization_not_found",
            ApiError::CampaignNotFound => "campaign_not_found",
            ApiError::InvalidCampaignId => "invalid_campaign_id",
            ApiError::Invalid { .. } | ApiError::InvalidValue => "invalid_input",
            ApiError::SlugTaken => "slug_taken",
            ApiError::EmptyPatch => "empty_update",
            ApiError::CampaignLimit { .. } => "campaign_limit_reached",
            ApiError::IdempotencyKeyReused => "idempotency_key_reused",
            ApiError::TenantTokensDisabled => "tenant_tokens_disabled",
            ApiError::Unavailable(_) | ApiError::LiveUpdatesStopped(_) => "unavailable",
            ApiError::Internal(_) => "internal_error",
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        if is_unavailable(&error) {
            ApiError::Unavailable(error)
        } else if is_invalid_value(&error) {
            ApiError::InvalidValue
        } else {
            ApiError::Internal(error.into())
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::InvalidSlug
            | ApiError::InvalidCampaignId
            | ApiError::Invalid { .. }
            | ApiError::InvalidValue
            | ApiError::EmptyPatch => StatusCode::BAD_REQUEST,
            ApiError::OrganisationNotFound
            | ApiError::CampaignNotFound
            | ApiError::TenantTokensDisabled => StatusCode::NOT_FOUND,
            ApiError::SlugTaken | ApiError::CampaignLimit { .. } => StatusCode::CONFLICT,
            // As the IETF Idempotency-Key draft answers a key reused with another payload.
            ApiError::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unavailable(_) | ApiError::LiveUpdatesStopped(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        if status.is_server_error() {
            server_error(status, self)
        } else {
            error_response(status, self.code(), self.to_string())
        }
    }
}

//! The JSON error contract shared by every service: `{"error": "<sentence>", "code": "<snake_case>"}`.
//!
//! Each service has its own error enum (`thiserror`) whose `ResponseError` impl calls
//! [`error_response`]. 4xx bodies explain themselves; for 5xx, [`server_error`] logs the cause chain
//! and the caller only sees an opaque sentence. [`configure_extractors`] makes actix's own
//! extractor failures (bad JSON, bad path or query) follow the same contract instead of plain text.

use actix_web::http::StatusCode;
use actix_web::web::{self, JsonConfig, PathConfig, QueryConfig};
use actix_web::{HttpResponse, error::InternalError};
use serde::{Deserialize, Serialize};

/// The body of every error response.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    pub error: String,
    pub code: String,
}

/// A JSON error response.
pub fn error_response(status: StatusCode, code: &str, message: impl Into<String>) -> HttpResponse {
    HttpResponse::build(status).json(ErrorBody { error: message.into(), code: code.to_owned() })
}

/// Logs `error` with its whole cause chain and answers an opaque 500 (or `status`, e.g. 503).
pub fn server_error(status: StatusCode, error: &(dyn std::error::Error + 'static)) -> HttpResponse {
    let chain = error_chain(error);
    tracing::error!(status = status.as_u16(), error = %chain, "request failed");
    let (code, message) = if status == StatusCode::SERVICE_UNAVAILABLE {
        ("unavailable", "A dependency is unavailable; retry later")
    } else {
        ("internal_error", "Internal server error")
    };
    error_response(status, code, message)
}

/// `error: cause: cause…`: the whole chain on one line, for logs and operator-facing reports.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Registers JSON / path / query extractor settings whose failures answer 400 (413 for an
/// oversized body) with the JSON contract.
pub fn configure_extractors(body_limit: usize) -> impl Fn(&mut web::ServiceConfig) + Clone {
    move |cfg: &mut web::ServiceConfig| {
        cfg.app_data(JsonConfig::default().limit(body_limit).error_handler(|err, _req| {
            use actix_web::error::JsonPayloadError;
            let response = match &err {
                JsonPayloadError::Overflow { .. }
                | JsonPayloadError::OverflowKnownLength { .. } => error_response(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    "Request body is too large",
                ),
                JsonPayloadError::ContentType => error_response(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    "Expected Content-Type: application/json",
                ),
                other => error_response(
                    StatusCode::BAD_REQUEST,
                    "invalid_json",
                    format!("Invalid JSON body: {other}"),
                ),
            };
            InternalError::from_response(err, response).into()
        }))
        .app_data(PathConfig::default().error_handler(|err, _req| {
            let response = error_response(
                StatusCode::BAD_REQUEST,
                "invalid_path",
                format!("Invalid path parameter: {err}"),
            );
            InternalError::from_response(err, response).into()
        }))
        .app_data(QueryConfig::default().error_handler(|err, _req| {
            let response = error_response(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                format!("Invalid query string: {err}"),
            );
            InternalError::from_response(err, response).into()
        }));
    }
}

/// Answers unknown routes with a JSON 404.
pub async fn not_found() -> HttpResponse {
    error_response(StatusCode::NOT_FOUND, "not_found", "No such route")
}

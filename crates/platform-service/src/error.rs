//! The JSON error contract shared by every service: `{"error": "<sentence>", "code": "<snake_case>"}`.
//!
//! Each service has its own error enum (`thiserror`) whose `ResponseError` impl calls
//! [`error_response`]. 4xx bodies explain themselves; for 5xx, [`server_error`] logs the cause chain
//! and the caller only sees an opaque sentence. [`configure_extractors`] makes actix's own
//! extractor failures (bad JSON, bad path or query) follow the same contract instead of plain text;
//! [`no_route`] answers unknown paths (404) and known paths with another method (405), and
//! [`json_errors`] gives every other error actix itself produces (a resource's 405, a payload
//! error) the JSON body, keeping its status and headers (`Allow`).

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::ServiceResponse;
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::middleware::{ErrorHandlerResponse, ErrorHandlers};
use actix_web::web::{self, JsonConfig, PathConfig, QueryConfig};
use actix_web::{HttpRequest, HttpResponse, error::InternalError};
use serde::{Deserialize, Serialize};

/// The body of every error response.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[schema(example = json!({"error": "No such route", "code": "not_found"}))]
pub struct ErrorBody {
    /// A sentence for people; opaque for 5xx.
    pub error: String,
    /// Stable, snake_case: what code should branch on.
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

/// The app's default service: 404 for a path no route has, 405 for a path that has routes but
/// none for this method (routes registered with `cfg.route(path, web::post()...)` fall through to
/// here on another method; `web::resource` routes answer 405 with `Allow` themselves). The 405's
/// `Allow` (RFC 9110 §15.5.6) lists the methods the service's OpenAPI document gives the path.
pub async fn no_route(req: HttpRequest) -> HttpResponse {
    if req.resource_map().has_resource(req.path()) {
        let mut response = error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("Method {} is not allowed on this route", req.method()),
        );
        let document = req.app_data::<web::Data<crate::openapi::ServedDocument>>();
        if let Some(allow) = document.and_then(|doc| doc.allow(req.path())) {
            response.headers_mut().insert(header::ALLOW, allow.clone());
        }
        response
    } else {
        error_response(StatusCode::NOT_FOUND, "not_found", "No such route")
    }
}

/// Middleware turning every 4xx/5xx response whose body is not JSON into the JSON contract,
/// keeping status and headers. Responses that are JSON already pass untouched.
pub fn json_errors<B: MessageBody + 'static>() -> ErrorHandlers<B> {
    ErrorHandlers::new().default_handler(to_json_error)
}

fn to_json_error<B: MessageBody + 'static>(
    res: ServiceResponse<B>,
) -> actix_web::Result<ErrorHandlerResponse<B>> {
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json") || v.contains("+json"));
    if is_json {
        return Ok(ErrorHandlerResponse::Response(res.map_into_left_body()));
    }
    let status = res.status();
    let (code, message) = describe(&res, status);
    if status.is_server_error() {
        let cause = res.response().error().map(ToString::to_string).unwrap_or_default();
        tracing::error!(status = status.as_u16(), error = %cause, "request failed");
    }
    let body = serde_json::to_string(&ErrorBody { error: message, code: code.into_owned() })
        .unwrap_or_else(|_| r#"{"error":"Error","code":"error"}"#.to_owned());
    let (req, res) = res.into_parts();
    let mut res = res.set_body(BoxBody::new(body));
    res.headers_mut().remove(header::CONTENT_LENGTH);
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(ErrorHandlerResponse::Response(ServiceResponse::new(req, res).map_into_right_body()))
}

/// The `code` and sentence of an error response actix produced without a JSON body.
fn describe<B>(
    res: &ServiceResponse<B>,
    status: StatusCode,
) -> (std::borrow::Cow<'static, str>, String) {
    use std::borrow::Cow;
    match status {
        StatusCode::METHOD_NOT_ALLOWED => {
            let allowed = res.headers().get(header::ALLOW).and_then(|v| v.to_str().ok());
            let mut text =
                format!("Method {} is not allowed on this route", res.request().method());
            if let Some(allowed) = allowed {
                text.push_str(&format!(" (allowed: {allowed})"));
            }
            (Cow::Borrowed("method_not_allowed"), text)
        }
        StatusCode::SERVICE_UNAVAILABLE => {
            (Cow::Borrowed("unavailable"), "A dependency is unavailable; retry later".to_owned())
        }
        s if s.is_server_error() => {
            (Cow::Borrowed("internal_error"), "Internal server error".to_owned())
        }
        s => {
            let reason = s.canonical_reason().unwrap_or("Error");
            let code = reason.to_ascii_lowercase().replace([' ', '-'], "_");
            let text =
                res.response().error().map_or_else(|| reason.to_owned(), ToString::to_string);
            (Cow::Owned(code), text)
        }
    }
}

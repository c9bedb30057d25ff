//! CORS for the browser-facing routes (`http.cors_allowed_origins`, `http.cors_paths`), built on
//! `actix-cors`.
//!
//! Only a listed origin calling a listed path gets `Access-Control-Allow-*` headers, credentials
//! (cookies) included; any other request is served as usual without them, and a preflight for it
//! is refused with 400. With no origin listed the middleware is not installed at all.

use std::sync::Arc;

use actix_cors::Cors;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderName};
use actix_web::http::{Method, header::HeaderValue};
use actix_web::middleware::Next;

use crate::settings::HttpSettings;

/// How long a browser may cache a preflight answer.
const PREFLIGHT_MAX_AGE_SECS: usize = 600;

/// Response headers a browser script may read: the cache and rate-limit headers.
const EXPOSED: [&str; 5] =
    ["x-cache", "retry-after", "x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"];

/// The allow-list, shared by the workers; each builds its own [`Cors`] from it.
#[derive(Debug, Clone)]
pub struct CorsPolicy {
    origins: Arc<[String]>,
    paths: Arc<[String]>,
}

impl CorsPolicy {
    pub fn new(http: &HttpSettings) -> Self {
        Self {
            origins: http.cors_allowed_origins.iter().map(|o| o.to_ascii_lowercase()).collect(),
            paths: http.cors_paths.iter().cloned().collect(),
        }
    }

    /// False when no origin is listed: no CORS headers at all.
    pub fn enabled(&self) -> bool {
        !self.origins.is_empty() && !self.paths.is_empty()
    }

    /// Whether `origin` may call `path`.
    pub fn allows(&self, origin: &HeaderValue, path: &str) -> bool {
        let Ok(origin) = origin.to_str() else { return false };
        self.origins.iter().any(|o| o.eq_ignore_ascii_case(origin))
            && self.paths.iter().any(|p| covers(p, path))
    }

    /// The middleware for one worker.
    pub fn middleware(&self) -> Cors {
        if !self.enabled() {
            return Cors::default();
        }
        let policy = self.clone();
        Cors::default()
            .allowed_origin_fn(move |origin, head| policy.allows(origin, head.uri.path()))
            .allowed_methods([
                Method::GET,
                Method::HEAD,
                Method::POST,
                Method::PUT,
                Method::PATCH,
                Method::DELETE,
            ])
            .allowed_headers([
                header::CONTENT_TYPE,
                header::ACCEPT,
                HeaderName::from_static("last-event-id"),
            ])
            .expose_headers(EXPOSED)
            .supports_credentials()
            .max_age(PREFLIGHT_MAX_AGE_SECS)
    }
}

/// `prefix/` covers everything below it; any other entry exactly that path.
fn covers(entry: &str, path: &str) -> bool {
    if entry.ends_with('/') { path.starts_with(entry) } else { path == entry }
}

/// `actix-cors` adds `Access-Control-Allow-Credentials` and `-Expose-Headers` to every response,
/// also to origins it did not allow; without `Access-Control-Allow-Origin` they are removed, so
/// only listed origins ever see a credentials grant.
pub async fn only_for_allowed_origins(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let mut response = next.call(req).await?;
    let headers = response.headers_mut();
    if !headers.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN) {
        headers.remove(header::ACCESS_CONTROL_ALLOW_CREDENTIALS);
        headers.remove(header::ACCESS_CONTROL_EXPOSE_HEADERS);
    }
    Ok(response)
}

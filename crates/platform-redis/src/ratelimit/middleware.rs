//! The actix middleware that applies one rate-limit policy to the routes it wraps.

use std::fmt;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use actix_web::middleware::Next;
use actix_web::{Error, HttpResponse};
use futures::future::{Ready, ready};

use super::decision::Decision;
use super::limiter::RateLimiter;
use super::policy::Policy;
use crate::middleware::{self, FnService};

type KeyFn = Arc<dyn Fn(&ServiceRequest) -> Option<String> + Send + Sync>;

/// Marks a response this middleware refused (in its extensions), so outer middleware such as
/// [`crate::usage::TrackUsage`] can tell a rate-limit refusal from any other 429.
#[derive(Debug, Clone, Copy)]
pub struct Denied;

const LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// Rate-limits the wrapped app, scope or resource with one named policy.
///
/// The identifier is, by default, the client IP: the peer address, or the first
/// `X-Forwarded-For` hop when `rate_limit.trust_x_forwarded_for` is set (or
/// [`RateLimit::trust_x_forwarded_for`] says so). [`RateLimit::with_key`] replaces it, e.g. with
/// an organisation slug from the path (wrap the resource or scope, so path parameters are
/// matched when the key is read); when the key function returns `None` the client IP is used.
///
/// Every response gets `X-RateLimit-Limit` (the identifier's own limit under a `by_organisation`
/// policy), `X-RateLimit-Remaining` and `X-RateLimit-Reset`
/// (whole seconds, rounded up). A denied request is answered `429` with `Retry-After` (seconds,
/// rounded up) and `{"error": "Too many requests: limit of N per <window> exceeded", "code":
/// "rate_limited"}` without reaching the service, marked [`Denied`] in its extensions. Errors returned by inner services pass through
/// untouched. With `rate_limit.enabled = false` requests pass through without headers. An unknown
/// policy makes the app fail to start (the transform's init error), after logging its name.
#[derive(Clone)]
pub struct RateLimit {
    limiter: RateLimiter,
    policy: String,
    key: Option<KeyFn>,
    trust_x_forwarded_for: bool,
}

impl fmt::Debug for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("policy", &self.policy)
            .field("custom_key", &self.key.is_some())
            .field("trust_x_forwarded_for", &self.trust_x_forwarded_for)
            .finish_non_exhaustive()
    }
}

impl RateLimit {
    /// Applies `policy` (a name known to `limiter`) per client IP.
    pub fn new(limiter: RateLimiter, policy: impl Into<String>) -> Self {
        let trust_x_forwarded_for = limiter.trusts_x_forwarded_for();
        Self { limiter, policy: policy.into(), key: None, trust_x_forwarded_for }
    }

    /// Uses `key` to find the identifier; `None` falls back to the client IP.
    pub fn with_key<F>(mut self, key: F) -> Self
    where
        F: Fn(&ServiceRequest) -> Option<String> + Send + Sync + 'static,
    {
        self.key = Some(Arc::new(key));
        self
    }

    /// Overrides `rate_limit.trust_x_forwarded_for` for this middleware.
    pub fn trust_x_forwarded_for(mut self, trust: bool) -> Self {
        self.trust_x_forwarded_for = trust;
        self
    }
}

impl<S, B> Transform<S, ServiceRequest> for RateLimit
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = Error;
    type Transform = FnService<EitherBody<B>>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        let Some(policy) = self.limiter.policy_state(&self.policy) else {
            tracing::error!(policy = %self.policy, "rate-limit middleware names an unknown policy; not starting");
            return ready(Err(()));
        };
        let config = Rc::new(Config {
            limiter: self.limiter.clone(),
            window: describe_window(policy.settings.window_secs),
            policy,
            key: self.key.clone(),
            trust_x_forwarded_for: self.trust_x_forwarded_for,
        });
        ready(middleware::wrap(service, move |req, next| {
            Box::pin(limit(Rc::clone(&config), req, next))
        }))
    }
}

/// One request through the policy: the inner service when allowed, a 429 when not, and the
/// `X-RateLimit-*` headers on either.
async fn limit<B: MessageBody>(
    config: Rc<Config>,
    req: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<EitherBody<B>>, Error> {
    if !config.limiter.is_enabled() {
        return Ok(next.call(req).await?.map_into_left_body());
    }
    let identifier = config.identifier(&req);
    let decision = config.limiter.check_policy(&config.policy, &identifier).await;
    let mut response = if decision.allowed {
        next.call(req).await?.map_into_left_body()
    } else {
        let retry_after = decision.retry_after.unwrap_or(decision.reset_after);
        let message = format!(
            "Too many requests: limit of {} per {} exceeded",
            decision.limit, config.window
        );
        let body = serde_json::json!({ "error": message, "code": "rate_limited" });
        let mut denied = HttpResponse::TooManyRequests()
            .insert_header((RETRY_AFTER, HeaderValue::from(ceil_secs(retry_after))))
            .json(body);
        denied.extensions_mut().insert(Denied);
        req.into_response(denied).map_into_right_body()
    };
    set_headers(response.headers_mut(), &decision);
    Ok(response)
}

/// What [`RateLimit`] resolved when the worker started: one worker's copy.
struct Config {
    limiter: RateLimiter,
    /// The policy's window in words, for the 429 message.
    window: String,
    policy: Arc<Policy>,
    key: Option<KeyFn>,
    trust_x_forwarded_for: bool,
}

impl Config {
    fn identifier(&self, req: &ServiceRequest) -> String {
        if let Some(id) = self.key.as_ref().and_then(|key| key(req)) {
            return id;
        }
        let forwarded = || {
            req.headers()
                .get("x-forwarded-for")?
                .to_str()
                .ok()?
                .split(',')
                .next()?
                .trim()
                .parse::<IpAddr>()
                .ok()
        };
        let ip = if self.trust_x_forwarded_for { forwarded() } else { None };
        match ip.or_else(|| req.peer_addr().map(|addr| addr.ip())) {
            Some(ip) => ip.to_string(),
            // No peer address (e.g. a Unix socket or a test request): all such callers share one bucket.
            None => "unknown".to_owned(),
        }
    }
}

fn set_headers(headers: &mut HeaderMap, decision: &Decision) {
    headers.insert(LIMIT, HeaderValue::from(decision.limit));
    headers.insert(REMAINING, HeaderValue::from(decision.remaining));
    headers.insert(RESET, HeaderValue::from(ceil_secs(decision.reset_after)));
}

fn ceil_secs(duration: Duration) -> u64 {
    duration.as_millis().div_ceil(1_000).try_into().unwrap_or(u64::MAX)
}

/// "minute", "15 minutes", "second", … for error messages.
fn describe_window(window_secs: u64) -> String {
    for (unit_secs, unit) in [(86_400, "day"), (3_600, "hour"), (60, "minute")] {
        if window_secs.is_multiple_of(unit_secs) {
            let n = window_secs / unit_secs;
            return if n == 1 { unit.to_owned() } else { format!("{n} {unit}s") };
        }
    }
    if window_secs == 1 { "second".to_owned() } else { format!("{window_secs} seconds") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_read_as_words() {
        assert_eq!(describe_window(1), "second");
        assert_eq!(describe_window(60), "minute");
        assert_eq!(describe_window(900), "15 minutes");
        assert_eq!(describe_window(3600), "hour");
        assert_eq!(describe_window(90), "90 seconds");
    }
}

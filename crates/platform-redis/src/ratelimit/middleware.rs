//! The actix middleware that applies one rate-limit policy to the routes it wraps.

use std::fmt;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;

use actix_web::body::EitherBody;
use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform, forward_ready};
use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use actix_web::{Error, HttpResponse};
use futures::future::{LocalBoxFuture, Ready, ready};

use super::{Decision, Policy, RateLimiter, describe_window};

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
/// Every response gets `X-RateLimit-Limit`, `X-RateLimit-Remaining` and `X-RateLimit-Reset`
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
    B: 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = Error;
    type Transform = RateLimitMiddleware<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        let Some(policy) = self.limiter.policy_state(&self.policy) else {
            tracing::error!(policy = %self.policy, "rate-limit middleware names an unknown policy; not starting");
            return ready(Err(()));
        };
        let message = format!(
            "Too many requests: limit of {} per {} exceeded",
            policy.settings.limit,
            describe_window(policy.settings.window_secs)
        );
        ready(Ok(RateLimitMiddleware {
            service: Rc::new(service),
            config: Rc::new(Config {
                limiter: self.limiter.clone(),
                limit: HeaderValue::from(policy.settings.limit),
                policy,
                key: self.key.clone(),
                trust_x_forwarded_for: self.trust_x_forwarded_for,
                message,
            }),
        }))
    }
}

struct Config {
    limiter: RateLimiter,
    /// `X-RateLimit-Limit`, the same on every response; this worker's own copy.
    limit: HeaderValue,
    policy: Arc<Policy>,
    key: Option<KeyFn>,
    trust_x_forwarded_for: bool,
    message: String,
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

/// The per-worker service built by [`RateLimit`].
pub struct RateLimitMiddleware<S> {
    service: Rc<S>,
    config: Rc<Config>,
}

impl<S> fmt::Debug for RateLimitMiddleware<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitMiddleware")
            .field("policy", &self.config.policy.name)
            .finish_non_exhaustive()
    }
}

impl<S, B> Service<ServiceRequest> for RateLimitMiddleware<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    B: 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = Error;
    type Future = LocalBoxFuture<'static, Result<Self::Response, Self::Error>>;

    forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        let service = Rc::clone(&self.service);
        let config = Rc::clone(&self.config);
        Box::pin(async move {
            if !config.limiter.is_enabled() {
                return Ok(service.call(req).await?.map_into_left_body());
            }
            let identifier = config.identifier(&req);
            let decision = config.limiter.check_policy(&config.policy, &identifier).await;
            let mut response = if decision.allowed {
                service.call(req).await?.map_into_left_body()
            } else {
                let retry_after = decision.retry_after.unwrap_or(decision.reset_after);
                let body = serde_json::json!({ "error": config.message, "code": "rate_limited" });
                let mut denied = HttpResponse::TooManyRequests()
                    .insert_header((RETRY_AFTER, HeaderValue::from(ceil_secs(retry_after))))
                    .json(body);
                denied.extensions_mut().insert(Denied);
                req.into_response(denied).map_into_right_body()
            };
            set_headers(response.headers_mut(), &config.limit, &decision);
            Ok(response)
        })
    }
}

fn set_headers(headers: &mut HeaderMap, limit: &HeaderValue, decision: &Decision) {
    headers.insert(LIMIT, limit.clone());
    headers.insert(REMAINING, HeaderValue::from(decision.remaining));
    headers.insert(RESET, HeaderValue::from(ceil_secs(decision.reset_after)));
}

fn ceil_secs(duration: std::time::Duration) -> u64 {
    duration.as_millis().div_ceil(1_000).try_into().unwrap_or(u64::MAX)
}

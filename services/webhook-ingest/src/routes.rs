//! HTTP routes: the Stripe webhook endpoint and the admin ledger routes. Handlers read and check
//! input at the edge, then call the signature check and the ingest.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix_web::middleware::Condition;
use actix_web::{HttpRequest, HttpResponse, web};
use futures::StreamExt;
use platform_redis::ratelimit::{RateLimit, RateLimiter};
use platform_service::RequireAdmin;
use platform_service::openapi::{RateLimited, Unauthorized, Unavailable};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::db::ledger;
use crate::db::ledger::{LedgerEvent, Status};
use crate::domain::ingest::{Accepted, Ingest};
use crate::domain::signature;
use crate::error::{SignatureError, WebhookError};
use crate::metrics::WebhookMetrics;

/// What the handlers share (one per process).
#[derive(Debug)]
pub struct WebhookState {
    pub ingest: Ingest,
    pub db: sqlx::PgPool,
    pub secrets: Vec<SecretString>,
    pub tolerance: Duration,
    pub body_limit: usize,
    pub metrics: WebhookMetrics,
}

/// Rate limiting of the webhook route: off, or this policy per source IP.
#[derive(Debug, Clone)]
pub struct RouteLimit {
    pub enabled: bool,
    pub limiter: RateLimiter,
    pub policy: String,
}

/// The routes' OpenAPI description (`platform_service::openapi` adds the common ones).
#[derive(Debug, OpenApi)]
#[openapi(paths(receive, list_events, replay))]
pub struct ApiDoc;

/// Registers the routes.
pub fn configure(
    state: web::Data<WebhookState>,
    limit: RouteLimit,
) -> impl Fn(&mut web::ServiceConfig) + Clone {
    move |cfg: &mut web::ServiceConfig| {
        let rate_limit = RateLimit::new(limit.limiter.clone(), limit.policy.clone());
        cfg.app_data(state.clone())
            .service(
                web::resource("/api/webhooks/stripe")
                    .wrap(Condition::new(limit.enabled, rate_limit))
                    .route(web::post().to(receive)),
            )
            .route("/api/admin/webhooks/events", web::get().to(list_events))
            .route("/api/admin/webhooks/events/{id}/replay", web::post().to(replay));
    }
}

/// `POST /api/webhooks/stripe`: verify, record; 200 only once the event is stored.
///
/// The body is the event exactly as Stripe signed it; a delivery that fails the signature check
/// answers 400 with a code naming the check. A 503 stores nothing, so Stripe retries.
#[utoipa::path(
    post,
    path = "/api/webhooks/stripe",
    tag = "webhooks",
    params(("Stripe-Signature" = String, Header, description = "`t=<unix seconds>,v1=<hex HMAC-SHA256>`")),
    request_body(content = Object, content_type = "application/json", description = "A Stripe event"),
    responses(
        (status = 200, description = "Stored (or a duplicate of a stored event)", body = Receipt),
        (status = 400, description = "Signature missing, malformed, not matching or outside the tolerance; or the body could not be read", body = platform_service::ErrorBody),
        (status = 413, description = "The body is larger than `http.body_limit_bytes`", body = platform_service::ErrorBody),
        RateLimited,
        Unavailable,
    )
)]
async fn receive(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<WebhookState>,
) -> Result<HttpResponse, WebhookError> {
    let started = Instant::now();
    state.metrics.received.inc();
    let result = verify_and_accept(&req, payload, &state).await;
    state.metrics.latency.observe(started.elapsed().as_secs_f64());
    match result {
        Ok(Accepted { event_id, recorded }) => {
            let stream_id = match (recorded.status, recorded.seq) {
                (Status::Received, Some(seq)) => {
                    Some(platform_redis::outbox::entry_id(seq.max(0) as u64))
                }
                _ => None,
            };
            let receipt = Receipt {
                received: true,
                duplicate: !recorded.inserted,
                event_id: &event_id,
                status: recorded.status.as_str(),
                stream_id: stream_id.as_deref(),
                reason: recorded.reason.as_deref(),
            };
            Ok(HttpResponse::Ok().json(receipt))
        }
        Err(error) => {
            state.metrics.reject(error.reason());
            if !actix_web::ResponseError::status_code(&error).is_server_error() {
                tracing::info!(reason = error.reason(), "webhook delivery rejected");
            }
            Err(error)
        }
    }
}

/// The 200 body of a delivery (a struct rather than `json!`: no map built per response).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct Receipt<'a> {
    received: bool,
    duplicate: bool,
    event_id: &'a str,
    /// The ledger status: `received` (to be streamed as `streamId`), `ignored`, `unprocessable`.
    #[schema(pattern = "^(received|ignored|unprocessable)$")]
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
}

async fn verify_and_accept(
    req: &HttpRequest,
    payload: web::Payload,
    state: &WebhookState,
) -> Result<Accepted, WebhookError> {
    let body = read_body(req, payload, state.body_limit).await?;
    let header = match req.headers().get("stripe-signature") {
        None => None,
        Some(value) => Some(value.to_str().map_err(|_| SignatureError::Malformed)?),
    };
    signature::verify(header, &body, &state.secrets, state.tolerance, unix_now())?;
    state.metrics.verified.inc();
    state.ingest.accept(&body).await
}

/// The raw body, refusing more than `limit` bytes (by `Content-Length` first, then while reading).
async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<web::Bytes, WebhookError> {
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(WebhookError::PayloadTooLarge { limit });
    }
    let mut body = web::BytesMut::with_capacity(declared.unwrap_or(0).min(limit));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| WebhookError::Body(e.to_string()))?;
        if body.len() + chunk.len() > limit {
            return Err(WebhookError::PayloadTooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// How many rows, 1 to 500 (default 50).
    limit: Option<i64>,
    /// Only events of this Stripe type.
    #[serde(rename = "type")]
    #[param(rename = "type")]
    event_type: Option<String>,
    /// Only events in this ledger status.
    status: Option<String>,
}

/// The ledger listing.
#[derive(Debug, Serialize, ToSchema)]
struct EventList {
    events: Vec<LedgerEvent>,
}

/// `GET /api/admin/webhooks/events?limit=&type=&status=`: newest ledger rows first.
#[utoipa::path(
    get,
    path = "/api/admin/webhooks/events",
    tag = "admin",
    params(ListQuery),
    security(("serviceToken" = [])),
    responses(
        (status = 200, description = "Newest first", body = EventList),
        (status = 400, description = "`limit` is outside 1..=500, or the query is malformed", body = platform_service::ErrorBody),
        Unauthorized,
        Unavailable,
    )
)]
async fn list_events(
    _admin: RequireAdmin,
    query: web::Query<ListQuery>,
    state: web::Data<WebhookState>,
) -> Result<HttpResponse, WebhookError> {
    let limit = query.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(WebhookError::InvalidQuery("limit must be between 1 and 500".into()));
    }
    let event_type = query.event_type.as_deref().filter(|t| !t.is_empty());
    let status = query.status.as_deref().filter(|s| !s.is_empty());
    let stream = platform_redis::StreamName::StripeEvents.as_str();
    let events = ledger::recent(&state.db, limit, event_type, status, stream).await?;
    Ok(HttpResponse::Ok().json(EventList { events }))
}

/// A replay's answer.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct Replayed {
    event_id: String,
    /// The entry id the event is appended under.
    stream_id: String,
    replayed: bool,
}

/// `POST /api/admin/webhooks/events/{id}/replay`: queues one event for the stream again.
#[utoipa::path(
    post,
    path = "/api/admin/webhooks/events/{id}/replay",
    tag = "admin",
    params(("id" = String, Path, description = "The Stripe event id")),
    security(("serviceToken" = [])),
    responses(
        (status = 200, description = "Queued for the stream again", body = Replayed),
        (status = 404, description = "No such event in the ledger", body = platform_service::ErrorBody),
        (status = 409, description = "The event is unprocessable; replaying cannot help", body = platform_service::ErrorBody),
        Unauthorized,
        Unavailable,
    )
)]
async fn replay(
    _admin: RequireAdmin,
    path: web::Path<String>,
    state: web::Data<WebhookState>,
) -> Result<HttpResponse, WebhookError> {
    let event_id = path.into_inner();
    let seq = state.ingest.replay(&event_id).await?;
    let stream_id = platform_redis::outbox::entry_id(seq.max(0) as u64);
    Ok(HttpResponse::Ok().json(Replayed { event_id, stream_id, replayed: true }))
}

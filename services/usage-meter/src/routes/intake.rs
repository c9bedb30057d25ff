//! The service-token routes under `/internal`: event intake, the flush trigger and quota checks.

use actix_web::{HttpResponse, web};
use chrono::Utc;
use platform_redis::messages::UsageEvent;
use platform_service::RequireAdmin;
use platform_service::openapi::{Unauthorized, Unavailable};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{State, parse_org};
use crate::domain::recovery::RestoreReport;
use crate::domain::usage::{Month, is_usage_field, validate};
use crate::error::{ApiError, InvalidEventsBody, Rejection};
use crate::store;

/// A batch of usage events. Each item is checked on its own, so the items are read as any JSON
/// and a malformed one becomes a per-index rejection instead of failing the whole body.
#[derive(Debug, Deserialize, ToSchema)]
pub(super) struct EventBatch {
    /// At most `usage.max_http_events` (default 1000). Besides the shape, each event must name a
    /// known `metric` (`api_request`, `donation_processed`, `email_sent`, `sms_sent`,
    /// `storage_used`, `campaign_created`, `rate_limited`), an `orgId` of 1 to 64 characters of
    /// `[A-Za-z0-9_.-]`, a `value` from 0 to 10^15, an RFC 3339 `occurredAt` within
    /// `usage.max_event_age_days` in the past and `usage.max_future_skew_secs` in the future, an
    /// `idempotencyKey` of 1 to 200 bytes and `metadata` of at most 4 KiB once stored.
    #[schema(value_type = Vec<UsageEvent>)]
    events: Vec<serde_json::Value>,
}

/// The 200 of an event batch.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct EventsAccepted {
    /// Events in the batch (all valid).
    accepted: usize,
    /// Events counted now.
    counted: usize,
    /// Events not counted again: an idempotency key seen before (or earlier in the batch).
    duplicates: usize,
}

/// `POST /internal/usage/events`: records a batch of usage events.
///
/// All or nothing: any invalid event answers 400 with every rejected index and reason and
/// stores nothing, so a producer fixes and resends the batch; a 200 means every event is
/// recorded (or was a duplicate). Redis failure → 503 with nothing acknowledged.
#[utoipa::path(
    post,
    path = "/internal/usage/events",
    tag = "intake",
    request_body = EventBatch,
    security(("serviceToken" = [])),
    responses(
        (status = 200, description = "Every event is recorded (or was a duplicate)", body = EventsAccepted),
        (status = 400, description = "Nothing stored: some events are invalid (`invalid_events`, each listed in `rejected`), the batch is larger than `usage.max_http_events` (`too_many_events`), or the body is not `{\"events\": [...]}`", body = InvalidEventsBody),
        Unauthorized,
        (status = 503, description = "Nothing stored: Redis is unavailable (`unavailable`), or its counters are being restored after a data loss (`restoring`, with `Retry-After`)", body = platform_service::ErrorBody,
            headers(("Retry-After" = u32, description = "Seconds to wait (`restoring` only)"))),
    )
)]
#[tracing::instrument(skip_all, fields(events = body.events.len()))]
pub(super) async fn post_events(
    _admin: RequireAdmin,
    state: web::Data<State>,
    body: web::Json<EventBatch>,
) -> Result<HttpResponse, ApiError> {
    let EventBatch { events } = body.into_inner();
    if events.len() > state.max_http_events {
        return Err(ApiError::TooManyEvents(state.max_http_events));
    }
    let now = Utc::now();
    let mut valid = Vec::with_capacity(events.len());
    let mut rejected = Vec::new();
    for (index, raw) in events.into_iter().enumerate() {
        let checked = serde_json::from_value::<UsageEvent>(raw)
            .map_err(|e| format!("not a usage event: {e}"))
            .and_then(|event| validate(&event, now, &state.rules));
        match checked {
            Ok(event) => valid.push(event),
            Err(reason) => rejected.push(Rejection { index, reason }),
        }
    }
    if !rejected.is_empty() {
        state.metrics.http_events(0, 0, rejected.len());
        return Err(ApiError::InvalidEvents(rejected));
    }
    let refs: Vec<_> = valid.iter().collect();
    let counted = store::record(&state.redis, &state.retention, &state.fence, &refs).await?;
    let counted_n = counted.iter().filter(|c| **c).count();
    let duplicates = counted.len() - counted_n;
    state.metrics.http_events(counted_n, duplicates, 0);
    Ok(HttpResponse::Ok().json(EventsAccepted {
        accepted: valid.len(),
        counted: counted_n,
        duplicates,
    }))
}

/// What one flush tick did.
#[derive(Debug, Serialize, ToSchema)]
struct FlushAnswer {
    /// Counter rows copied to Postgres.
    rows: usize,
    /// What this call restored; `null` unless it restored Redis from Postgres.
    restored: Option<RestoreReport>,
    /// Another replica is restoring, or this restore was interrupted: nothing was copied.
    waiting: bool,
}

/// `POST /internal/usage/flush`: one tick of the flusher now.
///
/// Restores Redis from Postgres if it lost data, then copies what changed. `restored` is null
/// unless this call restored; `waiting` means another replica is restoring (nothing copied).
#[utoipa::path(
    post,
    path = "/internal/usage/flush",
    tag = "intake",
    security(("serviceToken" = [])),
    responses(
        (status = 200, description = "The tick ran", body = FlushAnswer),
        Unauthorized,
        Unavailable,
    )
)]
pub(super) async fn post_flush(
    _admin: RequireAdmin,
    state: web::Data<State>,
) -> Result<HttpResponse, ApiError> {
    let flusher = state.flusher.as_ref().ok_or(ApiError::NoDatabase)?;
    let tick = flusher.tick().await?;
    Ok(HttpResponse::Ok().json(FlushAnswer {
        rows: tick.rows,
        restored: tick.restored,
        waiting: tick.waiting,
    }))
}

/// A quota check: may `orgId` use `amount` more of `metric` this month?
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct QuotaRequest {
    #[schema(pattern = r"^[A-Za-z0-9_.-]{1,64}$")]
    org_id: String,
    /// A usage counter name.
    #[schema(
        pattern = "^(api_request|donation_processed|donation_volume_cents|email_sent|sms_sent|storage_used|campaign_created|rate_limited)$"
    )]
    metric: String,
    /// How much the caller is about to use.
    #[serde(default = "one")]
    #[schema(minimum = 0, default = 1)]
    amount: i64,
}

fn one() -> i64 {
    1
}

/// A quota check's answer.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct QuotaAnswer<'a> {
    /// `used + amount <= limit` (always when unlimited).
    allowed: bool,
    /// This month's counter before this request.
    used: i64,
    /// The included quantity; `null` = unlimited.
    limit: Option<i64>,
    /// What is left before this request (never negative); `null` = unlimited.
    remaining: Option<i64>,
    org_id: &'a str,
    metric: &'a str,
    /// The current month, `YYYY-MM` (UTC).
    month: String,
    /// The tier the limit comes from.
    tier: &'a str,
}

/// `POST /internal/quota/check`: one Redis round trip (`HGET`).
///
/// The limit comes from the organisation's plan and the tier settings in memory
/// ([`crate::domain::organisations::Directory`]). Allowed when `used + amount <= limit`;
/// `remaining` is what is left before this request.
#[utoipa::path(
    post,
    path = "/internal/quota/check",
    tag = "intake",
    request_body = QuotaRequest,
    security(("serviceToken" = [])),
    responses(
        (status = 200, description = "The check's answer (a refusal is `allowed: false`, not an error)", body = QuotaAnswer),
        (status = 400, description = "`invalid_org`, `invalid_metric`, `invalid_query` (negative amount), `unknown_tier` (the organisation's plan names a tier not configured), or the body is not a quota request", body = platform_service::ErrorBody),
        Unauthorized,
        Unavailable,
    )
)]
#[tracing::instrument(skip_all)]
pub(super) async fn quota_check(
    _admin: RequireAdmin,
    state: web::Data<State>,
    body: web::Json<QuotaRequest>,
) -> Result<HttpResponse, ApiError> {
    let org = parse_org(&body.org_id)?;
    if !is_usage_field(&body.metric) {
        return Err(ApiError::InvalidMetric(format!("unknown metric {:?}", body.metric)));
    }
    if body.amount < 0 {
        return Err(ApiError::InvalidQuery("amount must not be negative".into()));
    }
    let learned = match &state.directory {
        Some(directory) => directory.plan(&org).await.map_err(|error| {
            tracing::warn!(%error, "organisation plan unavailable for a quota check");
            ApiError::Unavailable
        })?,
        None => None,
    };
    let priced =
        state.billing.price(&org, None, learned.as_deref()).map_err(ApiError::UnknownTier)?;
    let month = Month::current();
    let used = store::counter(&state.redis, &org, month, &body.metric).await?;
    let limit = priced.tier.limit(&body.metric);
    let allowed = limit.is_none_or(|limit| used.saturating_add(body.amount) <= limit);
    Ok(HttpResponse::Ok().json(QuotaAnswer {
        allowed,
        used,
        limit,
        remaining: limit.map(|limit| limit.saturating_sub(used).max(0)),
        org_id: org.as_str(),
        metric: &body.metric,
        month: month.to_string(),
        tier: &priced.tier_key,
    }))
}

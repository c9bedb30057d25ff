//! HTTP routes (the count read, the refresh trigger and status, `/api/init` and the real-time
//! intake): parse, call the refresher, shape the JSON answers.
//!
//! Each answer is a small `Serialize` struct rather than `json!`, so the OpenAPI document
//! (`ApiDoc`) describes exactly the JSON sent.

use std::sync::Arc;

use actix_web::{HttpResponse, web};
use chrono::{DateTime, SecondsFormat, Utc};
use platform_service::RequireAdmin;
use platform_service::openapi::{Unauthorized, Unavailable};
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

use crate::domain::intake::IntakeBody;
use crate::domain::refresh::{Refresher, Snapshot, Source};
use crate::error::{IntakeError, RefreshError};
use crate::store::count::Reconciled;

/// The routes' OpenAPI description (`platform_service::openapi` adds the common ones).
#[derive(Debug, OpenApi)]
#[openapi(paths(customers, refresh, refresh_status, init, intake))]
pub struct ApiDoc;

/// Registers the routes; `refresher` is shared by every worker.
pub fn configure(refresher: Arc<Refresher>) -> impl Fn(&mut web::ServiceConfig) + Clone + Send {
    let data = web::Data::from(refresher);
    move |cfg: &mut web::ServiceConfig| {
        cfg.app_data(data.clone())
            .route("/api/simpro/customers", web::get().to(customers))
            .route("/api/simpro/customers/refresh", web::post().to(refresh))
            .route("/api/simpro/customers/refresh", web::get().to(refresh_status))
            .route("/api/init", web::get().to(init))
            .route("/internal/simpro/invoices", web::post().to(intake));
    }
}

fn iso(ms: Option<i64>) -> Option<String> {
    ms.and_then(DateTime::from_timestamp_millis)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
}

fn iso_time(time: Option<DateTime<Utc>>) -> Option<String> {
    time.map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
}

/// The count read's answer. Every key is always present; "no value" is `null`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct CustomerCount<'a> {
    /// The unique-customer count: the live set's size or the last walk's (`countBasis`).
    count: Option<u64>,
    count_basis: Option<CountBasis>,
    /// The last full walk's count.
    walked_count: Option<u64>,
    /// Whether a walked count is stored (in Redis or in this replica's memory).
    cached: bool,
    /// Seconds since the walked count was made.
    #[schema(minimum = 0)]
    cache_age: Option<i64>,
    /// Where the count was read from: `redis`, or `memory` when Redis is unreachable or empty.
    source: Source,
    /// When the walked count was made, in milliseconds since the epoch.
    last_updated: Option<i64>,
    /// The count outlived its TTL, or the latest refresh failed after it was made.
    stale: bool,
    is_refreshing: bool,
    /// The latest refresh failure, only while `stale`.
    last_error: Option<&'a str>,
}

/// What `count` is.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
enum CountBasis {
    /// The real-time live set's size.
    Live,
    /// The last full walk's count.
    Walk,
}

/// `GET /api/simpro/customers`: the count from Redis, else memory; empty starts a refresh.
///
/// Never fails on Redis: the in-memory fallback answers with the same headers and fields
/// (`source: memory`, `count` then the walked count).
#[utoipa::path(
    get,
    path = "/api/simpro/customers",
    tag = "customers",
    responses(
        (status = 200, description = "The count (`null`s and `source: none` before the first walk, which such a read starts when `refresh.refresh_when_empty`)", body = CustomerCount,
            headers(("Cache-Control" = String, description = "`no-store`"))),
    )
)]
#[tracing::instrument(name = "customers.read", skip_all)]
async fn customers(refresher: web::Data<Refresher>) -> HttpResponse {
    let snapshot = refresher.snapshot().await;
    let mut refreshing = snapshot.is_refreshing;
    if snapshot.record.is_none() && !refreshing && refresher.settings().refresh_when_empty {
        refresher.clone().into_inner().spawn_refresh();
        refreshing = true;
    }
    let record = snapshot.record.as_ref();
    let age = record.map(|r| (Utc::now().timestamp_millis() - r.last_updated_ms).max(0) / 1000);
    HttpResponse::Ok().insert_header(("Cache-Control", "no-store")).json(CustomerCount {
        count: snapshot.live_count.or(record.map(|r| r.count)),
        count_basis: count_basis(&snapshot),
        walked_count: record.map(|r| r.count),
        cached: record.is_some(),
        cache_age: age,
        source: snapshot.source,
        last_updated: record.map(|r| r.last_updated_ms),
        stale: snapshot.stale,
        is_refreshing: refreshing,
        last_error: if snapshot.stale { snapshot.status.last_error.as_deref() } else { None },
    })
}

/// A manual refresh's answer.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct Refreshed {
    /// Always `true` (failures answer an error).
    success: bool,
    count: u64,
    total_invoices: u64,
    /// Seconds the walk took.
    #[schema(minimum = 0)]
    duration: f64,
    /// `refresh.ttl_secs`: seconds the count stays fresh.
    ttl: u64,
    /// The next scheduled refresh, or when this count expires if the schedule is off.
    #[schema(format = DateTime)]
    next_refresh: Option<String>,
    /// `redis`, or `memory` when Redis could not store it (this replica serves it alone).
    storage: Source,
    pages: u64,
    /// Upstream requests retried during the walk.
    retries: u64,
    #[schema(format = DateTime)]
    last_updated: Option<String>,
    /// Real-time mode: the live set's size after this walk replaced it.
    live_count: Option<u64>,
    /// Real-time mode: how this walk reconciled the live set.
    reconciled: Option<Reconciled>,
}

/// `POST /api/simpro/customers/refresh` (admin): a full walk now; 409 while one runs anywhere.
#[utoipa::path(
    post,
    path = "/api/simpro/customers/refresh",
    tag = "admin",
    security(("serviceToken" = [])),
    responses(
        (status = 200, description = "Walked and stored; answers once the walk is done", body = Refreshed),
        (status = 409, description = "A refresh is already running (`refresh_in_progress`), or this one lost its lock (`refresh_lock_lost`) or was overtaken (`refresh_superseded`)", body = platform_service::ErrorBody),
        (status = 502, description = "simPRO could not be read completely (`upstream_unavailable`); the previous count is still served", body = platform_service::ErrorBody),
        Unauthorized,
        Unavailable,
    )
)]
#[tracing::instrument(name = "customers.refresh", skip_all)]
async fn refresh(
    _admin: RequireAdmin,
    refresher: web::Data<Refresher>,
) -> Result<HttpResponse, RefreshError> {
    // On its own task, so a client that hangs up does not abandon a half-done walk.
    let report = refresher.clone().into_inner().spawn_refresh().await??;
    let record = &report.record;
    Ok(HttpResponse::Ok().json(Refreshed {
        success: true,
        count: record.count,
        total_invoices: record.total_invoices,
        duration: record.duration_ms as f64 / 1000.0,
        ttl: refresher.settings().ttl_secs,
        next_refresh: iso_time(refresher.next_refresh(Some(record))),
        storage: report.storage,
        pages: record.pages,
        retries: report.retries,
        last_updated: iso(Some(record.last_updated_ms)),
        live_count: report.live_count,
        reconciled: report.reconciled,
    }))
}

/// `live` when `count` is the real-time set's size, `walk` when it is the last full walk's,
/// `null` when there is no count.
fn count_basis(snapshot: &Snapshot) -> Option<CountBasis> {
    match (snapshot.live_count, &snapshot.record) {
        (Some(_), _) => Some(CountBasis::Live),
        (None, Some(_)) => Some(CountBasis::Walk),
        (None, None) => None,
    }
}

/// `POST /internal/simpro/invoices` (admin/service token): the real-time intake. Takes simPRO
/// invoice rows (`{"invoices": [{"ID": 1, "Customer": {"ID": 7}}, …]}`, other fields ignored), as
/// a webhook forwarder or poller sends them, and adds their customer ids to the live set. 200 only
/// once Redis stored them; the call is idempotent, so a caller retries on 503.
#[utoipa::path(
    post,
    path = "/internal/simpro/invoices",
    tag = "intake",
    request_body(content = IntakeBody, content_type = "application/json", description = "simPRO invoice rows; only `ID` and `Customer.ID` are read"),
    security(("serviceToken" = [])),
    responses(
        (status = 200, description = "The customer ids are stored in the live set", body = IntakeAccepted),
        (status = 404, description = "The real-time mode is disabled (`realtime_disabled`)", body = platform_service::ErrorBody),
        (status = 422, description = "More invoices than `realtime.max_batch` (`too_many_invoices`)", body = platform_service::ErrorBody),
        Unauthorized,
        Unavailable,
    )
)]
#[tracing::instrument(name = "customers.intake", skip_all)]
async fn intake(
    _admin: RequireAdmin,
    refresher: web::Data<Refresher>,
    body: web::Json<IntakeBody>,
) -> Result<HttpResponse, IntakeError> {
    let outcome = refresher.intake(&body).await?;
    Ok(HttpResponse::Ok().json(IntakeAccepted {
        accepted: body.invoices.len(),
        customer_ids: body.customer_ids().len(),
        added: outcome.added,
        live_count: outcome.live_count,
        live: outcome.seeded,
    }))
}

/// An intake's answer.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct IntakeAccepted {
    /// Invoices in the request.
    accepted: usize,
    /// Distinct customer ids among them.
    customer_ids: usize,
    /// Ids that were not in the live set yet.
    added: u64,
    /// The live set's size afterwards.
    live_count: u64,
    /// A walk has reconciled the live set, so `liveCount` is the count reads report.
    live: bool,
}

/// The refresh status route's answer. Every key is always present; "no value" is `null`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct RefreshState<'a> {
    /// The walked count.
    count: Option<u64>,
    total_invoices: Option<u64>,
    /// Real-time mode: the live set's size, once a walk has reconciled it.
    live_count: Option<u64>,
    /// Whether the real-time mode is on (`realtime.enabled`).
    realtime: bool,
    #[schema(format = DateTime)]
    last_updated: Option<String>,
    /// Seconds left before the count goes stale (0 when it is).
    ttl: u64,
    #[schema(format = DateTime)]
    next_refresh: Option<String>,
    is_refreshing: bool,
    /// Where the count was read from (`memory` when Redis is unreachable or empty).
    storage: Source,
    stale: bool,
    /// `null` before any attempt finished.
    last_refresh_succeeded: Option<bool>,
    #[schema(format = DateTime)]
    last_attempt_at: Option<String>,
    #[schema(format = DateTime)]
    last_success_at: Option<String>,
    #[schema(format = DateTime)]
    last_failure_at: Option<String>,
    last_error: Option<&'a str>,
    consecutive_failures: u64,
}

/// `GET /api/simpro/customers/refresh` (admin): cache and refresh status, failures included.
///
/// Never fails on Redis: the in-memory fallback answers with the same headers and fields.
#[utoipa::path(
    get,
    path = "/api/simpro/customers/refresh",
    tag = "admin",
    security(("serviceToken" = [])),
    responses(
        (status = 200, description = "The cache and the latest attempts", body = RefreshState,
            headers(("Cache-Control" = String, description = "`no-store`"))),
        Unauthorized,
    )
)]
#[tracing::instrument(name = "customers.refresh_status", skip_all)]
async fn refresh_status(_admin: RequireAdmin, refresher: web::Data<Refresher>) -> HttpResponse {
    let snapshot = refresher.snapshot().await;
    let record = snapshot.record.as_ref();
    let status = &snapshot.status;
    let last_succeeded = match (status.last_success_ms, status.last_failure_ms) {
        (_, None) => status.last_success_ms.map(|_| true),
        (None, Some(_)) => Some(false),
        (Some(success), Some(failure)) => Some(success >= failure),
    };
    HttpResponse::Ok().insert_header(("Cache-Control", "no-store")).json(RefreshState {
        count: record.map(|r| r.count),
        total_invoices: record.map(|r| r.total_invoices),
        live_count: snapshot.live_count,
        realtime: refresher.realtime().enabled,
        last_updated: iso(record.map(|r| r.last_updated_ms)),
        ttl: snapshot.ttl.as_secs(),
        next_refresh: iso_time(refresher.next_refresh(record)),
        is_refreshing: snapshot.is_refreshing,
        storage: snapshot.source,
        stale: snapshot.stale,
        last_refresh_succeeded: last_succeeded,
        last_attempt_at: iso(status.last_attempt_ms),
        last_success_at: iso(status.last_success_ms),
        last_failure_at: iso(status.last_failure_ms),
        last_error: status.last_error.as_deref(),
        consecutive_failures: status.consecutive_failures,
    })
}

/// `/api/init`'s answer.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct Initialized {
    /// Always `true`.
    success: bool,
    message: &'static str,
    /// Whether this call started a background refresh (nothing was stored and none was running).
    refresh_started: bool,
    #[schema(format = DateTime)]
    timestamp: String,
}

/// `GET /api/init`: starts a background refresh when nothing is stored.
#[utoipa::path(
    get,
    path = "/api/init",
    tag = "customers",
    responses((status = 200, description = "Initialised (a refresh may have started in the background)", body = Initialized))
)]
#[tracing::instrument(name = "customers.init", skip_all)]
async fn init(refresher: web::Data<Refresher>) -> HttpResponse {
    let started = refresher.clone().into_inner().refresh_if_empty().await;
    let message = if started {
        "Initialization completed; customer count refresh started in the background"
    } else {
        "Initialization completed"
    };
    HttpResponse::Ok().json(Initialized {
        success: true,
        message,
        refresh_started: started,
        timestamp: Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
    })
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Redis => "redis",
            Source::Memory => "memory",
            Source::None => "none",
        }
    }
}

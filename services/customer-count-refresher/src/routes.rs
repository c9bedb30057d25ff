//! HTTP routes (the count read, the refresh trigger and status, `/api/init` and the real-time
//! intake): parse, call the refresher, shape the JSON answers.

use std::sync::Arc;

use actix_web::{HttpResponse, web};
use chrono::{DateTime, SecondsFormat, Utc};
use platform_service::RequireAdmin;
use serde_json::json;

use crate::domain::intake::IntakeBody;
use crate::domain::refresh::{Refresher, Snapshot, Source};
use crate::error::{IntakeError, RefreshError};

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

/// `GET /api/simpro/customers`: the count from Redis, else memory; empty starts a refresh.
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
    HttpResponse::Ok().insert_header(("Cache-Control", "no-store")).json(json!({
        "count": snapshot.live_count.or(record.map(|r| r.count)),
        "countBasis": count_basis(&snapshot),
        "walkedCount": record.map(|r| r.count),
        "cached": record.is_some(),
        "cacheAge": age,
        "source": snapshot.source,
        "lastUpdated": record.map(|r| r.last_updated_ms),
        "stale": snapshot.stale,
        "isRefreshing": refreshing,
        "lastError": if snapshot.stale { snapshot.status.last_error.clone() } else { None },
    }))
}

/// `POST /api/simpro/customers/refresh` (admin): a full walk now; 409 while one runs anywhere.
#[tracing::instrument(name = "customers.refresh", skip_all)]
async fn refresh(
    _admin: RequireAdmin,
    refresher: web::Data<Refresher>,
) -> Result<HttpResponse, RefreshError> {
    // On its own task, so a client that hangs up does not abandon a half-done walk.
    let report = refresher.clone().into_inner().spawn_refresh().await??;
    let record = &report.record;
    Ok(HttpResponse::Ok().json(json!({
        "success": true,
        "count": record.count,
        "totalInvoices": record.total_invoices,
        "duration": record.duration_ms as f64 / 1000.0,
        "ttl": refresher.settings().ttl_secs,
        "nextRefresh": iso_time(refresher.next_refresh(Some(record))),
        "storage": report.storage,
        "pages": record.pages,
        "retries": report.retries,
        "lastUpdated": iso(Some(record.last_updated_ms)),
        "liveCount": report.live_count,
        "reconciled": report.reconciled,
    })))
}

/// `live` when `count` is the real-time set's size, `walk` when it is the last full walk's,
/// `null` when there is no count.
fn count_basis(snapshot: &Snapshot) -> Option<&'static str> {
    match (snapshot.live_count, &snapshot.record) {
        (Some(_), _) => Some("live"),
        (None, Some(_)) => Some("walk"),
        (None, None) => None,
    }
}

/// `POST /internal/simpro/invoices` (admin/service token): the real-time intake. Takes simPRO
/// invoice rows (`{"invoices": [{"ID": 1, "Customer": {"ID": 7}}, …]}`, other fields ignored), as
/// a webhook forwarder or poller sends them, and adds their customer ids to the live set. 200 only
/// once Redis stored them; the call is idempotent, so a caller retries on 503.
#[tracing::instrument(name = "customers.intake", skip_all)]
async fn intake(
    _admin: RequireAdmin,
    refresher: web::Data<Refresher>,
    body: web::Json<IntakeBody>,
) -> Result<HttpResponse, IntakeError> {
    let outcome = refresher.intake(&body).await?;
    Ok(HttpResponse::Ok().json(json!({
        "accepted": body.invoices.len(),
        "customerIds": body.customer_ids().len(),
        "added": outcome.added,
        "liveCount": outcome.live_count,
        "live": outcome.seeded,
    })))
}

/// `GET /api/simpro/customers/refresh` (admin): cache and refresh status, failures included.
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
    HttpResponse::Ok().insert_header(("Cache-Control", "no-store")).json(json!({
        "count": record.map(|r| r.count),
        "totalInvoices": record.map(|r| r.total_invoices),
        "liveCount": snapshot.live_count,
        "realtime": refresher.realtime().enabled,
        "lastUpdated": iso(record.map(|r| r.last_updated_ms)),
        "ttl": snapshot.ttl.as_secs(),
        "nextRefresh": iso_time(refresher.next_refresh(record)),
        "isRefreshing": snapshot.is_refreshing,
        "storage": snapshot.source,
        "stale": snapshot.stale,
        "lastRefreshSucceeded": last_succeeded,
        "lastAttemptAt": iso(status.last_attempt_ms),
        "lastSuccessAt": iso(status.last_success_ms),
        "lastFailureAt": iso(status.last_failure_ms),
        "lastError": status.last_error,
        "consecutiveFailures": status.consecutive_failures,
    }))
}

/// `GET /api/init`: starts a background refresh when nothing is stored.
#[tracing::instrument(name = "customers.init", skip_all)]
async fn init(refresher: web::Data<Refresher>) -> HttpResponse {
    let started = refresher.clone().into_inner().refresh_if_empty().await;
    let message = if started {
        "Initialization completed; customer count refresh started in the background"
    } else {
        "Initialization completed"
    };
    HttpResponse::Ok().json(json!({
        "success": true,
        "message": message,
        "refreshStarted": started,
        "timestamp": Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
    }))
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

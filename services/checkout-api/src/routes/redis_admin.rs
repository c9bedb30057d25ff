//! The Redis monitoring and management routes: `GET /api/redis/health` (its JSON shape, with
//! `redis.userSessionStore` added) and `POST /api/redis/cleanup` (admin token) with the actions
//! `cleanup_expired`, `get_stats` and `get_all_sessions`.

use std::time::Duration;

use actix_web::{HttpResponse, web};
use platform_service::RequireAdmin;
use platform_service::openapi::{RateLimited, Unauthorized, Unavailable};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Policies, State};
use crate::domain::session_store::{CleanupReport, ListedSession, Stats};
use crate::error::CheckoutError;

/// Page size of `get_all_sessions` when none is given, and its bound.
const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 500;
/// How long health waits for each dependency.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

pub fn configure(cfg: &mut web::ServiceConfig, policies: &Policies) {
    cfg.service(
        web::resource("/api/redis/health").wrap(policies.api()).route(web::get().to(health)),
    )
    .service(
        web::resource("/api/redis/cleanup").wrap(policies.api()).route(web::post().to(cleanup)),
    );
}

/// The health report (`redis.userSessionStore` added to the shape this route always had).
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct StoreHealth {
    /// RFC 3339, milliseconds, UTC.
    timestamp: String,
    environment: Environment,
    redis: RedisStatus,
    database: DatabaseStatus,
    sessions: SessionCounts,
    #[schema(pattern = "^(healthy|degraded|unhealthy)$")]
    status: &'static str,
}

/// Settings are validated at start (the service does not run with bad ones): always configured,
/// no errors.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Environment {
    configured: bool,
    errors: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct RedisStatus {
    connected: bool,
    /// Checkout sessions are written to Redis (not the Postgres fallback).
    checkout_store: bool,
    /// User sessions are written to Redis (not the in-memory fallback).
    user_session_store: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct DatabaseStatus {
    connected: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct SessionCounts {
    /// Live checkout sessions in both tiers.
    count: u64,
    stats: SessionTotals,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct SessionTotals {
    total_created: i64,
    total_completed: i64,
    total_failed: i64,
}

/// `GET /api/redis/health`: `healthy`: Redis and Postgres answer and both session stores use
/// Redis. `degraded`: one of them is down but checkout still works (Postgres or memory fallback,
/// or no Postgres while Redis serves). `unhealthy` (503): neither answers.
#[utoipa::path(
    get,
    path = "/api/redis/health",
    tag = "redis",
    responses(
        (status = 200, description = "`healthy` or `degraded`", body = StoreHealth),
        (status = 503, description = "`unhealthy`: neither Redis nor Postgres answers (the same report)", body = StoreHealth),
        RateLimited,
    )
)]
#[tracing::instrument(name = "redis_health", skip_all)]
pub(super) async fn health(state: web::Data<State>) -> HttpResponse {
    let redis_up =
        matches!(tokio::time::timeout(PROBE_TIMEOUT, state.redis.ping()).await, Ok(Ok(_)));
    let db_up = matches!(
        tokio::time::timeout(PROBE_TIMEOUT, sqlx::query("SELECT 1").execute(&state.db)).await,
        Ok(Ok(_))
    );
    let checkout_store = !state.checkout.store.in_fallback();
    let user_session_store = !state.user_sessions.in_fallback();
    let (count, stats) = tokio::join!(state.checkout.store.live_count(), async {
        tokio::time::timeout(PROBE_TIMEOUT, state.checkout.store.stats()).await
    });
    let stats = match stats {
        Ok(Ok(stats)) => stats,
        _ => Default::default(),
    };
    let status = if redis_up && db_up && checkout_store && user_session_store {
        "healthy"
    } else if redis_up || db_up {
        "degraded"
    } else {
        "unhealthy"
    };
    let body = StoreHealth {
        timestamp: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        environment: Environment { configured: true, errors: Vec::new() },
        redis: RedisStatus { connected: redis_up, checkout_store, user_session_store },
        database: DatabaseStatus { connected: db_up },
        sessions: SessionCounts {
            count,
            stats: SessionTotals {
                total_created: stats.total_created,
                total_completed: stats.total_completed,
                total_failed: stats.total_failed,
            },
        },
        status,
    };
    if status == "unhealthy" {
        HttpResponse::ServiceUnavailable().json(body)
    } else {
        HttpResponse::Ok().json(body)
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CleanupRequest {
    #[schema(pattern = "^(cleanup_expired|get_stats|get_all_sessions)$")]
    action: String,
    /// `get_all_sessions`: the `nextCursor` of the previous page.
    #[serde(default)]
    cursor: Option<String>,
    /// `get_all_sessions`: the page size, 1 to 500 (default 50); ignored by the other actions.
    #[serde(default)]
    limit: Option<usize>,
}

/// The answer of each action (untagged: the fields tell them apart).
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub(super) enum CleanupResponse {
    CleanupExpired(CleanedUp),
    GetStats(SessionStats),
    GetAllSessions(SessionListing),
}

/// `cleanup_expired`: what was removed.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct CleanedUp {
    success: bool,
    #[schema(pattern = "^cleanup_expired$")]
    action: String,
    result: CleanupReport,
}

/// `get_stats`: the counters of both tiers and the live sessions.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct SessionStats {
    success: bool,
    #[schema(pattern = "^get_stats$")]
    action: String,
    stats: Stats,
    active_sessions: u64,
}

/// `get_all_sessions`: one page of live sessions.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct SessionListing {
    success: bool,
    #[schema(pattern = "^get_all_sessions$")]
    action: String,
    count: usize,
    sessions: Vec<ListedSession>,
    /// Pass back as `cursor` for the next page; `null` at the end.
    next_cursor: Option<String>,
}

/// `POST /api/redis/cleanup` (service token): `cleanup_expired`, `get_stats` or
/// `get_all_sessions`.
#[utoipa::path(
    post,
    path = "/api/redis/cleanup",
    tag = "redis",
    request_body = CleanupRequest,
    security(("serviceToken" = [])),
    responses(
        (status = 200, description = "The action's result", body = CleanupResponse),
        (status = 400, description = "An unknown action (`unknown_action`), a `limit` outside 1..=500 (`invalid_limit`) or a `cursor` not returned as `nextCursor` (`invalid_cursor`) of `get_all_sessions`, or the body is not the expected JSON", body = platform_service::ErrorBody),
        Unauthorized,
        RateLimited,
        Unavailable,
    )
)]
#[tracing::instrument(name = "redis_cleanup", skip_all, fields(action = %body.action))]
pub(super) async fn cleanup(
    _admin: RequireAdmin,
    state: web::Data<State>,
    body: web::Json<CleanupRequest>,
) -> Result<HttpResponse, CheckoutError> {
    let body = body.into_inner();
    let store = &state.checkout.store;
    let response = match body.action.as_str() {
        "cleanup_expired" => {
            let report = store.cleanup_expired().await?;
            CleanupResponse::CleanupExpired(CleanedUp {
                success: true,
                action: body.action,
                result: report,
            })
        }
        "get_stats" => {
            let stats = store.stats().await?;
            let active = store.live_count().await;
            CleanupResponse::GetStats(SessionStats {
                success: true,
                action: body.action,
                stats,
                active_sessions: active,
            })
        }
        "get_all_sessions" => {
            let limit = body.limit.unwrap_or(DEFAULT_LIMIT);
            if !(1..=MAX_LIMIT).contains(&limit) {
                return Err(CheckoutError::invalid(
                    "invalid_limit",
                    format!("limit must be between 1 and {MAX_LIMIT}"),
                ));
            }
            let page = store.list(body.cursor.as_deref(), limit).await?;
            CleanupResponse::GetAllSessions(SessionListing {
                success: true,
                action: body.action,
                count: page.sessions.len(),
                sessions: page.sessions,
                next_cursor: page.next_cursor,
            })
        }
        _ => return Err(CheckoutError::UnknownAction(body.action)),
    };
    Ok(HttpResponse::Ok().json(response))
}

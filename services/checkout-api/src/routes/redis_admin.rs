//! The Redis monitoring and management routes: `GET /api/redis/health` (its JSON shape, with
//! `redis.userSessionStore` added) and `POST /api/redis/cleanup` (admin token) with the actions
//! `cleanup_expired`, `get_stats` and `get_all_sessions`.

use std::time::Duration;

use actix_web::{HttpResponse, web};
use platform_service::RequireAdmin;
use serde::Deserialize;
use serde_json::json;

use super::{Policies, State};
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

/// `healthy`: Redis and Postgres answer and both session stores use Redis. `degraded`: one of
/// them is down but checkout still works (Postgres or memory fallback, or no Postgres while Redis
/// serves). `unhealthy` (503): neither answers.
#[tracing::instrument(name = "redis_health", skip_all)]
async fn health(state: web::Data<State>) -> HttpResponse {
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
    let body = json!({
        "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        // Settings are validated at start (the service does not run with bad ones).
        "environment": { "configured": true, "errors": [] },
        "redis": {
            "connected": redis_up,
            "checkoutStore": checkout_store,
            "userSessionStore": user_session_store,
        },
        "database": { "connected": db_up },
        "sessions": {
            "count": count,
            "stats": {
                "totalCreated": stats.total_created,
                "totalCompleted": stats.total_completed,
                "totalFailed": stats.total_failed,
            },
        },
        "status": status,
    });
    if status == "unhealthy" {
        HttpResponse::ServiceUnavailable().json(body)
    } else {
        HttpResponse::Ok().json(body)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CleanupRequest {
    action: String,
    #[serde(default)]
    cursor: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
}

#[tracing::instrument(name = "redis_cleanup", skip_all, fields(action = %body.action))]
async fn cleanup(
    _admin: RequireAdmin,
    state: web::Data<State>,
    body: web::Json<CleanupRequest>,
) -> Result<HttpResponse, CheckoutError> {
    let body = body.into_inner();
    let store = &state.checkout.store;
    let response = match body.action.as_str() {
        "cleanup_expired" => {
            let report = store.cleanup_expired().await?;
            json!({ "success": true, "action": body.action, "result": report })
        }
        "get_stats" => {
            let stats = store.stats().await?;
            let active = store.live_count().await;
            json!({ "success": true, "action": body.action, "stats": stats, "activeSessions": active })
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
            json!({
                "success": true,
                "action": body.action,
                "count": page.sessions.len(),
                "sessions": page.sessions,
                "nextCursor": page.next_cursor,
            })
        }
        _ => return Err(CheckoutError::UnknownAction(body.action)),
    };
    Ok(HttpResponse::Ok().json(response))
}

//! The routes every service serves: `/healthz`, `/readyz`, `/metrics`, `/api/health/redis`.
//!
//! `/healthz` says the process is alive and never touches a dependency (a liveness probe must not
//! restart pods because Redis is down). `/readyz` checks Redis and, where the service has one,
//! Postgres, and is 503 while draining after SIGTERM or while a dependency the service cannot
//! serve without (`http.ready_requires`) does not answer; a service that serves on a fallback
//! stays ready, so Kubernetes keeps routing to it, and the body still shows the failed check. `/api/health/redis` is the
//! Redis report: connected, latency, memory, and `mode: redis | fallback` with the components
//! currently running on their in-process fallback.

use std::time::Duration;

use actix_web::{HttpResponse, web};
use fred::prelude::*;
use serde::Serialize;
use serde_json::json;

use crate::context::AppContext;
pub use crate::context::{FallbackStatus, fallback_status};
use crate::error::error_chain;
use crate::metrics::Metrics;

/// Registers the common routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics))
        .route("/api/health/redis", web::get().to(redis_health));
}

async fn healthz(ctx: web::Data<AppContext>) -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok", "service": ctx.service }))
}

#[derive(Serialize)]
struct Check {
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

async fn readyz(ctx: web::Data<AppContext>) -> HttpResponse {
    let draining = ctx.shutdown.is_draining();
    let redis = match tokio::time::timeout(Duration::from_secs(2), ctx.redis.ping()).await {
        Ok(Ok(_)) => Check { ok: true, error: None },
        Ok(Err(e)) => Check { ok: false, error: Some(error_chain(&e)) },
        Err(_) => Check { ok: false, error: Some("timed out".into()) },
    };
    let postgres = match &ctx.db {
        None => None,
        Some(pool) => Some(match sqlx::query("SELECT 1").execute(pool).await {
            Ok(_) => Check { ok: true, error: None },
            Err(e) => Check { ok: false, error: Some(error_chain(&e)) },
        }),
    };
    let required = |dependency: &str| ctx.ready_requires.iter().any(|d| d == dependency);
    let ready = !draining
        && (redis.ok || !required("redis"))
        && postgres.as_ref().is_none_or(|c| c.ok || !required("postgres"));
    let degraded = !redis.ok || postgres.as_ref().is_some_and(|c| !c.ok);
    let status = match (draining, ready, degraded) {
        (true, _, _) => "draining",
        (false, false, _) => "not_ready",
        (false, true, true) => "degraded",
        (false, true, false) => "ready",
    };
    let body = json!({
        "status": status,
        "service": ctx.service,
        "requires": ctx.ready_requires,
        "checks": { "redis": redis, "postgres": postgres },
    });
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

async fn metrics(metrics: web::Data<Metrics>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(metrics.scrape().await)
}

async fn redis_health(ctx: web::Data<AppContext>) -> HttpResponse {
    let ping = tokio::time::timeout(Duration::from_secs(2), ctx.redis.ping()).await;
    let latency_ms = match &ping {
        Ok(Ok(rtt)) => Some(rtt.as_secs_f64() * 1000.0),
        _ => None,
    };
    let connected = latency_ms.is_some();
    let memory = if connected { memory_info(&ctx).await } else { None };
    let fallbacks: serde_json::Map<String, serde_json::Value> =
        ctx.fallbacks.iter().map(|f| (f.component().to_owned(), f.in_fallback().into())).collect();
    let any_fallback = !connected || fallbacks.values().any(|v| *v == true);
    HttpResponse::Ok().json(json!({
        "status": if connected { "healthy" } else { "degraded" },
        "connected": connected,
        "latency": latency_ms,
        "memory": memory,
        "mode": if any_fallback { "fallback" } else { "redis" },
        "fallbacks": fallbacks,
        "keyPrefix": ctx.redis.keys().root(),
        "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    }))
}

async fn memory_info(ctx: &AppContext) -> Option<serde_json::Value> {
    let info: String = ctx.redis.primary().info(Some(fred::types::InfoKind::Memory)).await.ok()?;
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(':')))
            .map(|v| v.trim().to_owned())
    };
    Some(json!({
        "usedBytes": field("used_memory").and_then(|v| v.parse::<u64>().ok()),
        "usedHuman": field("used_memory_human"),
        "maxBytes": field("maxmemory").and_then(|v| v.parse::<u64>().ok()),
        "policy": field("maxmemory_policy"),
    }))
}

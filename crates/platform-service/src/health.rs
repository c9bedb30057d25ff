//! The routes every service serves: `/healthz`, `/readyz`, `/metrics`, `/api/health/redis` (and
//! `/openapi.json`, [`crate::openapi`]).
//!
//! `/healthz` says the process is alive and never touches a dependency (a liveness probe must not
//! restart pods because Redis is down). `/readyz` checks Redis and, where the service has one,
//! Postgres, and is 503 while draining after SIGTERM or while a dependency the service cannot
//! serve without (`http.ready_requires`) does not answer; a service that serves on a fallback
//! stays ready, so Kubernetes keeps routing to it, and the body still shows the failed check. `/api/health/redis` is the
//! Redis report: connected, latency, memory, and `mode: redis | fallback` with the components
//! currently running on their in-process fallback.

use std::collections::BTreeMap;
use std::time::Duration;

use actix_web::{HttpResponse, web};
use fred::prelude::*;
use platform_redis::info_field;
use serde::Serialize;
use utoipa::ToSchema;

use crate::context::AppContext;
pub use crate::context::{FallbackStatus, fallback_status};
use crate::error::error_chain;
use crate::metrics::Metrics;

/// Registers the common routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics))
        .route("/api/health/redis", web::get().to(redis_health))
        .route("/openapi.json", web::get().to(crate::openapi::openapi_json));
}

/// `/healthz`: the process answers.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Alive {
    /// Always `ok`.
    status: &'static str,
    service: &'static str,
}

/// Liveness: never touches a dependency.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses((status = 200, description = "The process is alive", body = Alive))
)]
pub(crate) async fn healthz(ctx: web::Data<AppContext>) -> HttpResponse {
    HttpResponse::Ok().json(Alive { status: "ok", service: ctx.service })
}

/// One dependency's check.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Check {
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// The dependency checks of `/readyz`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Checks {
    redis: Check,
    /// `null` for a service without a database.
    postgres: Option<Check>,
}

/// `/readyz`: whether to route traffic here.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Readiness {
    #[schema(pattern = "^(ready|degraded|not_ready|draining)$")]
    status: &'static str,
    service: &'static str,
    /// The dependencies without which it is not ready (`http.ready_requires`).
    requires: Vec<String>,
    checks: Checks,
}

/// Readiness: Redis and, where the service has one, Postgres; 503 while draining or while a
/// required dependency does not answer.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Ready (`ready`), or serving on a fallback (`degraded`)", body = Readiness),
        (status = 503, description = "Draining, or a required dependency does not answer", body = Readiness),
    )
)]
pub(crate) async fn readyz(ctx: web::Data<AppContext>) -> HttpResponse {
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
    let body = Readiness {
        status,
        service: ctx.service,
        requires: ctx.ready_requires.clone(),
        checks: Checks { redis, postgres },
    };
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// Prometheus / OpenMetrics scrape.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((status = 200, description = "OpenMetrics text", content_type = "application/openmetrics-text", body = String))
)]
pub(crate) async fn metrics(metrics: web::Data<Metrics>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(metrics.scrape().await)
}

/// Redis as this service sees it (`/api/health/redis`).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RedisHealth {
    #[schema(pattern = "^(healthy|degraded)$")]
    status: &'static str,
    connected: bool,
    /// Round trip of a PING in milliseconds; `null` when it failed.
    latency: Option<f64>,
    memory: Option<RedisMemory>,
    /// `fallback` when Redis does not answer or a component serves on its in-process fallback.
    #[schema(pattern = "^(redis|fallback)$")]
    mode: &'static str,
    /// Each component with a fallback: whether it is on it now.
    fallbacks: BTreeMap<String, bool>,
    key_prefix: String,
    #[schema(format = DateTime)]
    timestamp: String,
}

/// Redis `INFO memory`, as far as it answered.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RedisMemory {
    used_bytes: Option<u64>,
    used_human: Option<String>,
    max_bytes: Option<u64>,
    policy: Option<String>,
}

/// The Redis report: connected, latency, memory, and whether anything serves on a fallback.
#[utoipa::path(
    get,
    path = "/api/health/redis",
    tag = "operations",
    responses((status = 200, description = "The report (also while Redis is down)", body = RedisHealth))
)]
pub(crate) async fn redis_health(ctx: web::Data<AppContext>) -> HttpResponse {
    let ping = tokio::time::timeout(Duration::from_secs(2), ctx.redis.ping()).await;
    let latency = match &ping {
        Ok(Ok(rtt)) => Some(rtt.as_secs_f64() * 1000.0),
        _ => None,
    };
    let connected = latency.is_some();
    let memory = if connected { memory_info(&ctx).await } else { None };
    let fallbacks: BTreeMap<String, bool> =
        ctx.fallbacks.iter().map(|f| (f.component().to_owned(), f.in_fallback())).collect();
    let any_fallback = !connected || fallbacks.values().any(|on| *on);
    HttpResponse::Ok().json(RedisHealth {
        status: if connected { "healthy" } else { "degraded" },
        connected,
        latency,
        memory,
        mode: if any_fallback { "fallback" } else { "redis" },
        fallbacks,
        key_prefix: ctx.redis.keys().root().to_owned(),
        timestamp: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    })
}

async fn memory_info(ctx: &AppContext) -> Option<RedisMemory> {
    let info: String = ctx.redis.primary().info(Some(fred::types::InfoKind::Memory)).await.ok()?;
    let field = |name: &str| info_field(&info, name);
    Some(RedisMemory {
        used_bytes: field("used_memory").and_then(|v| v.parse().ok()),
        used_human: field("used_memory_human"),
        max_bytes: field("maxmemory").and_then(|v| v.parse().ok()),
        policy: field("maxmemory_policy"),
    })
}

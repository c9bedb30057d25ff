//! HTTP routes: event intake, usage and top-consumer reads, bills, quota checks, the flush
//! trigger and the dashboard page. Handlers parse input into domain types, then call storage.
//!
//! Who may call what: intake, quota checks, the flush and the cross-tenant top list need the
//! service token; one organisation's usage, detail events and bill take its tenant token or the
//! service token ([`TenantAccess`]); the dashboard page is a public shell that reads its token
//! from the URL fragment and calls the API with it.

use std::collections::BTreeMap;

use actix_web::{HttpResponse, web};
use chrono::Utc;
use platform_redis::RedisClients;
use platform_redis::messages::UsageEvent;
use platform_redis::ratelimit::{RateLimit, RateLimiter};
use platform_service::RequireAdmin;
use platform_service::tenant::{ServiceOnly, TenantAccess, TenantAuth};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use crate::db;
use crate::domain::flush::Flusher;
use crate::domain::organisations::{Directory, plan_for_month};
use crate::domain::pricing::{BillingSettings, compute_bill};
use crate::domain::usage::{EventRules, Month, OrgId, USAGE_FIELDS, is_usage_field, validate};
use crate::error::{ApiError, Rejection};
use crate::metrics::UsageMetrics;
use crate::store::{self, Fence, Retention};

/// What the handlers share.
#[derive(Debug)]
pub struct State {
    pub redis: RedisClients,
    pub db: Option<PgPool>,
    pub billing: BillingSettings,
    pub retention: Retention,
    pub rules: EventRules,
    pub max_http_events: usize,
    pub metrics: UsageMetrics,
    /// The restore fence recording calls pass to the script.
    pub fence: Fence,
    /// The check-restore-flush cycle (`None` without a database).
    pub flusher: Option<Flusher>,
    /// The organisations' newest plans (`None` without a database).
    pub directory: Option<Directory>,
}

const DASHBOARD: &str = include_str!("../static/dashboard.html");

/// Registers the routes; the `/api` reads go through the `api` rate-limit policy and `tenant_auth`
/// checks their tokens.
pub fn configure(
    state: web::Data<State>,
    limiter: RateLimiter,
    tenant_auth: web::Data<TenantAuth>,
) -> impl Fn(&mut web::ServiceConfig) + Clone + Send + 'static {
    move |cfg: &mut web::ServiceConfig| {
        cfg.app_data(state.clone())
            .app_data(tenant_auth.clone())
            .route("/internal/usage/events", web::post().to(post_events))
            .route("/internal/usage/flush", web::post().to(post_flush))
            .route("/internal/quota/check", web::post().to(quota_check))
            .route("/dashboard/{org_id}", web::get().to(dashboard))
            .service(
                web::scope("/api")
                    .wrap(RateLimit::new(limiter.clone(), "api"))
                    .route("/usage/top", web::get().to(top))
                    .route("/usage/{org_id}", web::get().to(usage))
                    .route("/usage/{org_id}/events", web::get().to(recent_events))
                    .route("/billing/{org_id}", web::get().to(billing)),
            );
    }
}

fn parse_org(raw: &str) -> Result<OrgId, ApiError> {
    OrgId::parse(raw).map_err(ApiError::InvalidOrg)
}

fn parse_month(raw: Option<&str>) -> Result<Month, ApiError> {
    match raw {
        None | Some("") => Ok(Month::current()),
        Some(text) => text.parse().map_err(ApiError::InvalidMonth),
    }
}

#[derive(Debug, Deserialize)]
struct EventBatch {
    events: Vec<serde_json::Value>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct EventsAccepted {
    accepted: usize,
    counted: usize,
    duplicates: usize,
}

/// All or nothing: any invalid event answers 400 with every rejected index and reason and
/// stores nothing, so a producer fixes and resends the batch; a 200 means every event is
/// recorded (or was a duplicate). Redis failure → 503 with nothing acknowledged.
#[tracing::instrument(skip_all, fields(events = body.events.len()))]
async fn post_events(
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

/// One tick of the flusher now: restores Redis from Postgres if it lost data, then copies
/// what changed. `restored` is null unless this call restored; `waiting` means another replica
/// is restoring (nothing copied).
async fn post_flush(
    _admin: RequireAdmin,
    state: web::Data<State>,
) -> Result<HttpResponse, ApiError> {
    let flusher = state.flusher.as_ref().ok_or(ApiError::NoDatabase)?;
    let tick = flusher.tick().await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "rows": tick.rows,
        "restored": tick.restored,
        "waiting": tick.waiting,
    })))
}

/// Where a month's usage came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Redis has the month (the durable copy agrees or is older).
    Redis,
    /// Redis no longer has it (expired or lost): the durable copy.
    Postgres,
    /// Redis has the month, but the durable copy had larger counters (Redis lost data).
    RedisAndPostgres,
    /// Neither has any usage for this month.
    None,
}

/// Reads Redis and the durable copy and merges them: counters take the larger value (both only
/// grow), the gauge takes Redis' when it has one. Either store alone is enough to answer, as long
/// as it has data or the other one answered too.
pub async fn load_usage(
    state: &State,
    org: &OrgId,
    month: Month,
) -> Result<(BTreeMap<String, i64>, Source), ApiError> {
    let month_text = month.to_string();
    let redis = store::usage(&state.redis, org, month).await;
    let durable = match &state.db {
        Some(pool) => Some(db::usage(pool, org.as_str(), &month_text).await),
        None => None,
    };
    let (redis, durable) = match (redis, durable) {
        (Ok(r), Some(Ok(p))) => (r, p),
        (Ok(r), None) => (r, BTreeMap::new()),
        (Ok(r), Some(Err(error))) if !r.is_empty() => {
            tracing::warn!(%error, org = %org, month = %month_text, "postgres unavailable; usage from redis only");
            (r, BTreeMap::new())
        }
        (Err(error), Some(Ok(p))) => {
            tracing::warn!(%error, org = %org, month = %month_text, "redis unavailable; usage from postgres");
            let source = if p.is_empty() { Source::None } else { Source::Postgres };
            return Ok((with_all_fields(p), source));
        }
        (Ok(_), Some(Err(error))) => return Err(error.into()),
        (Err(error), _) => return Err(error.into()),
    };
    let source = match (redis.is_empty(), durable.is_empty()) {
        (true, true) => Source::None,
        (true, false) => Source::Postgres,
        (false, _) => {
            let durable_ahead = durable.iter().any(|(metric, value)| {
                metric != "storage_used" && redis.get(metric).copied().unwrap_or(0) < *value
            });
            if durable_ahead { Source::RedisAndPostgres } else { Source::Redis }
        }
    };
    let mut merged = durable;
    for (metric, value) in redis {
        let entry = merged.entry(metric.clone()).or_insert(value);
        *entry = if metric == "storage_used" { value } else { (*entry).max(value) };
    }
    Ok((with_all_fields(merged), source))
}

fn with_all_fields(mut usage: BTreeMap<String, i64>) -> BTreeMap<String, i64> {
    for field in USAGE_FIELDS {
        usage.entry(field.to_owned()).or_insert(0);
    }
    usage
}

#[derive(Debug, Deserialize)]
struct MonthQuery {
    month: Option<String>,
    tier: Option<String>,
}

#[tracing::instrument(skip(_access, state, query))]
async fn usage(
    _access: TenantAccess,
    state: web::Data<State>,
    org_id: web::Path<String>,
    query: web::Query<MonthQuery>,
) -> Result<HttpResponse, ApiError> {
    let org = parse_org(&org_id)?;
    let month = parse_month(query.month.as_deref())?;
    let (usage, source) = load_usage(&state, &org, month).await?;
    // Campaigns running now (not per month), as campaign-api last published the count.
    // Usage reads work without Postgres: the count is then left out.
    let active_campaigns = match &state.db {
        Some(db) => {
            db::organisations::active_campaigns(db, org.as_str()).await.unwrap_or_else(|error| {
                tracing::warn!(%error, "postgres unavailable for the active campaign count");
                None
            })
        }
        None => None,
    };
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "orgId": org,
        "month": month.to_string(),
        "usage": usage,
        "activeCampaigns": active_campaigns,
        "source": source,
    })))
}

#[tracing::instrument(skip(_access, state, query))]
async fn billing(
    _access: TenantAccess,
    state: web::Data<State>,
    org_id: web::Path<String>,
    query: web::Query<MonthQuery>,
) -> Result<HttpResponse, ApiError> {
    let org = parse_org(&org_id)?;
    let month = parse_month(query.month.as_deref())?;
    let learned = match (&state.db, query.tier.as_deref()) {
        (Some(db), None) => plan_for_month(db, &org, month).await?,
        _ => None,
    };
    let priced = state
        .billing
        .price(&org, query.tier.as_deref(), learned.as_ref())
        .map_err(ApiError::UnknownTier)?;
    let (usage, source) = load_usage(&state, &org, month).await?;
    let bill = compute_bill(&org, month, &priced.tier_key, &priced.tier, &usage);
    let mut body = serde_json::to_value(&bill).unwrap_or_default();
    body["source"] = serde_json::to_value(source).unwrap_or_default();
    Ok(HttpResponse::Ok().json(body))
}

#[derive(Debug, Deserialize)]
struct TopQuery {
    month: Option<String>,
    metric: Option<String>,
    limit: Option<usize>,
}

/// Every organisation's id and volume: the service token only.
#[tracing::instrument(skip(_service, state, query))]
async fn top(
    _service: ServiceOnly,
    state: web::Data<State>,
    query: web::Query<TopQuery>,
) -> Result<HttpResponse, ApiError> {
    let month = parse_month(query.month.as_deref())?;
    let metric = query.metric.as_deref().unwrap_or("api_request");
    if !is_usage_field(metric) {
        return Err(ApiError::InvalidMetric(format!("unknown metric {metric:?}")));
    }
    let limit = query.limit.unwrap_or(10);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::InvalidQuery("limit must be between 1 and 100".into()));
    }
    let mut source = Source::Redis;
    let mut top = store::top(&state.redis, metric, month, limit).await;
    let from_redis_empty = top.as_ref().is_ok_and(Vec::is_empty) || top.is_err();
    if from_redis_empty && let Some(pool) = &state.db {
        match db::top(pool, metric, &month.to_string(), limit as i64).await {
            Ok(rows) => {
                source = if rows.is_empty() { Source::None } else { Source::Postgres };
                top = Ok(rows);
            }
            Err(error) if top.is_ok() => {
                tracing::warn!(%error, "postgres unavailable for top consumers")
            }
            Err(error) => return Err(error.into()),
        }
    }
    let top: Vec<_> = top?
        .into_iter()
        .map(|(org, value)| serde_json::json!({ "orgId": org, "value": value }))
        .collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "month": month.to_string(),
        "metric": metric,
        "top": top,
        "source": source,
    })))
}

#[derive(Debug, Deserialize)]
struct LimitQuery {
    limit: Option<usize>,
}

async fn recent_events(
    _access: TenantAccess,
    state: web::Data<State>,
    org_id: web::Path<String>,
    query: web::Query<LimitQuery>,
) -> Result<HttpResponse, ApiError> {
    let org = parse_org(&org_id)?;
    let limit = query.limit.unwrap_or(50);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::InvalidQuery("limit must be between 1 and 1000".into()));
    }
    let events = store::recent_events(&state.redis, &org, limit).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "orgId": org, "events": events })))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct QuotaRequest {
    org_id: String,
    metric: String,
    #[serde(default = "one")]
    amount: i64,
}

fn one() -> i64 {
    1
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct QuotaAnswer<'a> {
    allowed: bool,
    used: i64,
    /// `null` = unlimited.
    limit: Option<i64>,
    remaining: Option<i64>,
    org_id: &'a str,
    metric: &'a str,
    month: String,
    tier: &'a str,
}

/// One Redis round trip (`HGET`); the limit comes from the organisation's plan and the tier
/// settings in memory ([`Directory`]). Allowed when `used + amount <= limit`; `remaining` is what
/// is left before this request.
#[tracing::instrument(skip_all)]
async fn quota_check(
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

/// The same public page for every organisation: it holds no data, and its script calls the API
/// with the token from the URL fragment (which browsers never send to the server).
async fn dashboard(org_id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    parse_org(&org_id)?;
    Ok(HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((actix_web::http::header::REFERRER_POLICY, "no-referrer"))
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"))
        .body(DASHBOARD))
}

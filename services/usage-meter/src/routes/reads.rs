//! The `/api` reads (one organisation's usage, detail events and bill; the cross-tenant top list)
//! and the dashboard page that calls them.

use std::collections::BTreeMap;

use actix_web::{HttpResponse, web};
use platform_service::openapi::{RateLimited, Unauthorized, Unavailable};
use platform_service::tenant::{ServiceOnly, TenantAccess};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{State, parse_month, parse_org};
use crate::db;
use crate::domain::organisations::plan_for_month;
use crate::domain::pricing::{Bill, compute_bill};
use crate::domain::usage::{Month, OrgId, USAGE_FIELDS, is_usage_field};
use crate::error::ApiError;
use crate::store;

const DASHBOARD: &str = include_str!("../../static/dashboard.html");

/// Where a month's usage came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
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

/// `?month=` of the usage read.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct MonthQuery {
    /// `YYYY-MM` (UTC, 2000-01 to 9999-12); absent or empty: the current month. (The month's
    /// digits are read as a number, so `+1` is January too.)
    #[param(pattern = r"^([2-9][0-9]{3}-(0[1-9]|1[0-2]|\+[1-9]))?$")]
    month: Option<String>,
}

/// One organisation's usage in a month.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct UsageAnswer<'a> {
    org_id: &'a str,
    /// `YYYY-MM`.
    month: String,
    /// Counter name → value: every counter (`api_request`, `donation_processed`,
    /// `donation_volume_cents`, `email_sent`, `sms_sent`, `storage_used`, `campaign_created`,
    /// `rate_limited`), 0 when none.
    usage: BTreeMap<String, i64>,
    /// Campaigns running now (not per month), as campaign-api last published the count; `null`
    /// when unknown or Postgres is unavailable.
    active_campaigns: Option<i64>,
    source: Source,
}

/// `GET /api/usage/{org_id}?month=`: the organisation's counters in a month.
#[utoipa::path(
    get,
    path = "/api/usage/{org_id}",
    tag = "usage",
    params(
        ("org_id" = String, Path, description = "The organisation id (`top` is the top-consumer list, not an organisation)", pattern = r"^(?!top$)[A-Za-z0-9_.-]{1,64}$"),
        MonthQuery,
    ),
    security(("tenantToken" = []), ("serviceToken" = [])),
    responses(
        (status = 200, description = "The month's counters", body = UsageAnswer),
        (status = 400, description = "`invalid_org` or `invalid_month`", body = platform_service::ErrorBody),
        Unauthorized,
        (status = 403, description = "A tenant token of another organisation", body = platform_service::ErrorBody),
        RateLimited,
        Unavailable,
    )
)]
#[tracing::instrument(skip(_access, state, query))]
pub(super) async fn usage(
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
    Ok(HttpResponse::Ok().json(UsageAnswer {
        org_id: org.as_str(),
        month: month.to_string(),
        usage,
        active_campaigns,
        source,
    }))
}

/// `?month=&tier=` of the bill.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct BillQuery {
    /// `YYYY-MM` (UTC, 2000-01 to 9999-12); absent or empty: the current month. (The month's
    /// digits are read as a number, so `+1` is January too.)
    #[param(pattern = r"^([2-9][0-9]{3}-(0[1-9]|1[0-2]|\+[1-9]))?$")]
    month: Option<String>,
    /// A configured tier to price the month on instead of the organisation's plan (a what-if);
    /// any other name answers 400 `unknown_tier`.
    tier: Option<String>,
}

/// A month's bill and where its usage came from.
#[derive(Debug, Serialize, ToSchema)]
struct BillAnswer {
    #[serde(flatten)]
    bill: Bill,
    source: Source,
}

/// `GET /api/billing/{org_id}?month=&tier=`: the month's bill on the plan in force at its end.
#[utoipa::path(
    get,
    path = "/api/billing/{org_id}",
    tag = "usage",
    params(
        ("org_id" = String, Path, description = "The organisation id", pattern = r"^[A-Za-z0-9_.-]{1,64}$"),
        BillQuery,
    ),
    security(("tenantToken" = []), ("serviceToken" = [])),
    responses(
        (status = 200, description = "The bill", body = BillAnswer),
        (status = 400, description = "`invalid_org`, `invalid_month` or `unknown_tier`", body = platform_service::ErrorBody),
        Unauthorized,
        (status = 403, description = "A tenant token of another organisation", body = platform_service::ErrorBody),
        RateLimited,
        Unavailable,
    )
)]
#[tracing::instrument(skip(_access, state, query))]
pub(super) async fn billing(
    _access: TenantAccess,
    state: web::Data<State>,
    org_id: web::Path<String>,
    query: web::Query<BillQuery>,
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
    Ok(HttpResponse::Ok().json(BillAnswer { bill, source }))
}

/// `?month=&metric=&limit=` of the top list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct TopQuery {
    /// `YYYY-MM` (UTC, 2000-01 to 9999-12); absent or empty: the current month. (The month's
    /// digits are read as a number, so `+1` is January too.)
    #[param(pattern = r"^([2-9][0-9]{3}-(0[1-9]|1[0-2]|\+[1-9]))?$")]
    month: Option<String>,
    /// The counter to rank by (default `api_request`).
    #[param(
        pattern = "^(api_request|donation_processed|donation_volume_cents|email_sent|sms_sent|storage_used|campaign_created|rate_limited)$"
    )]
    metric: Option<String>,
    /// How many organisations, 1 to 100 (default 10).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<usize>,
}

/// One organisation of the top list.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct TopEntry {
    org_id: String,
    value: i64,
}

/// The top consumers of a metric in a month.
#[derive(Debug, Serialize, ToSchema)]
struct TopAnswer<'a> {
    /// `YYYY-MM`.
    month: String,
    metric: &'a str,
    /// Largest value first.
    top: Vec<TopEntry>,
    /// `redis`, else `postgres` (or `none`) when Redis has no list for the month.
    source: Source,
}

/// `GET /api/usage/top?month=&metric=&limit=`: every organisation's id and volume, so the
/// service token only.
#[utoipa::path(
    get,
    path = "/api/usage/top",
    tag = "usage",
    params(TopQuery),
    security(("serviceToken" = [])),
    responses(
        (status = 200, description = "The top consumers", body = TopAnswer),
        (status = 400, description = "`invalid_month`, `invalid_metric` or `invalid_query` (limit)", body = platform_service::ErrorBody),
        Unauthorized,
        (status = 403, description = "A tenant token: this list spans organisations", body = platform_service::ErrorBody),
        RateLimited,
        Unavailable,
    )
)]
#[tracing::instrument(skip(_service, state, query))]
pub(super) async fn top(
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
    let top = top?.into_iter().map(|(org_id, value)| TopEntry { org_id, value }).collect();
    Ok(HttpResponse::Ok().json(TopAnswer { month: month.to_string(), metric, top, source }))
}

/// `?limit=` of the detail events.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct LimitQuery {
    /// How many events, 1 to 1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

/// The newest detail events of an organisation.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct RecentEvents<'a> {
    org_id: &'a str,
    /// Newest first; only events that carried `metadata`. Each is `{metric, value, timestamp
    /// (RFC 3339), idempotencyKey (or null), metadata}`.
    #[schema(value_type = Vec<Object>)]
    events: Vec<serde_json::Value>,
}

/// `GET /api/usage/{org_id}/events?limit=`: the organisation's newest detail events.
#[utoipa::path(
    get,
    path = "/api/usage/{org_id}/events",
    tag = "usage",
    params(
        ("org_id" = String, Path, description = "The organisation id", pattern = r"^[A-Za-z0-9_.-]{1,64}$"),
        LimitQuery,
    ),
    security(("tenantToken" = []), ("serviceToken" = [])),
    responses(
        (status = 200, description = "The newest detail events", body = RecentEvents),
        (status = 400, description = "`invalid_org` or `invalid_query` (limit)", body = platform_service::ErrorBody),
        Unauthorized,
        (status = 403, description = "A tenant token of another organisation", body = platform_service::ErrorBody),
        RateLimited,
        Unavailable,
    )
)]
pub(super) async fn recent_events(
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
    Ok(HttpResponse::Ok().json(RecentEvents { org_id: org.as_str(), events }))
}

/// `GET /dashboard/{org_id}`: the same public page for every organisation.
///
/// It holds no data, and its script calls the API with the token from the URL fragment (which
/// browsers never send to the server).
#[utoipa::path(
    get,
    path = "/dashboard/{org_id}",
    tag = "dashboard",
    params(
        ("org_id" = String, Path, description = "The organisation id", pattern = r"^[A-Za-z0-9_.-]{1,64}$"),
    ),
    responses(
        (status = 200, description = "The dashboard page", content_type = "text/html", body = String,
            headers(
                ("Referrer-Policy" = String, description = "`no-referrer`"),
                ("Cache-Control" = String, description = "`no-store`"),
            )),
        (status = 400, description = "`invalid_org`", body = platform_service::ErrorBody),
    )
)]
pub(super) async fn dashboard(org_id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    parse_org(&org_id)?;
    Ok(HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((actix_web::http::header::REFERRER_POLICY, "no-referrer"))
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"))
        .body(DASHBOARD))
}

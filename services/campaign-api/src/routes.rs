//! HTTP routes of campaign-api: the public cached reads, live updates, the admin writes and the
//! campaign page. Handlers parse input into domain types, call pages/storage, and shape responses.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderName, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::Utc;
use platform_redis::RedisClients;
use platform_redis::cache::CacheStatus;
use platform_redis::pubsub::PubSub;
use platform_redis::ratelimit::{RateLimit, RateLimiter};
use platform_redis::usage::{TrackUsage, UsageOrg, UsageRecorder};
use platform_service::RequireAdmin;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::domain::{
    AdminCampaign, CampaignFields, CampaignPatch, NewCampaignRequest, NewOrganisation,
    NewOrganisationRequest, Slug,
};
use crate::error::ApiError;
use crate::live;
use crate::pages::Pages;
use crate::storage;

const CAMPAIGN_PAGE: &str = include_str!("../static/campaigns.html");
const X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// Labels of `campaign_cache_reads`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    pub route: &'static str,
    pub status: &'static str,
}

/// The cached routes, as `campaign_cache_reads` labels them.
#[derive(Debug, Clone, Copy)]
enum CachedRoute {
    Active,
    Stats,
}

impl CachedRoute {
    const ALL: [CachedRoute; 2] = [CachedRoute::Active, CachedRoute::Stats];

    fn label(self) -> &'static str {
        match self {
            CachedRoute::Active => "active",
            CachedRoute::Stats => "stats",
        }
    }
}

const STATUSES: [CacheStatus; 3] = [CacheStatus::Hit, CacheStatus::Miss, CacheStatus::Stale];

/// The service's own metrics.
#[derive(Debug, Clone)]
pub struct ServiceMetrics {
    /// Cached reads by route and `X-Cache` status (hit rate = HIT / all).
    pub cache_reads: Family<CacheLabels, Counter>,
    /// `cache_reads`' counters by route and status, looked up once: the family's lock and label
    /// hashing cost more than the increment on a hot read.
    cache_read_counters: [[Counter; 3]; 2],
    /// Open SSE connections.
    pub sse_clients: Gauge,
    /// Donations recorded (first deliveries only).
    pub donations_recorded: Counter,
}

impl Default for ServiceMetrics {
    fn default() -> Self {
        let cache_reads = Family::<CacheLabels, Counter>::default();
        let cache_read_counters = CachedRoute::ALL.map(|route| {
            STATUSES.map(|status| {
                let labels = CacheLabels { route: route.label(), status: status.as_header() };
                cache_reads.get_or_create(&labels).clone()
            })
        });
        Self {
            cache_reads,
            cache_read_counters,
            sse_clients: Gauge::default(),
            donations_recorded: Counter::default(),
        }
    }
}

impl ServiceMetrics {
    fn cache_read(&self, route: CachedRoute, status: CacheStatus) {
        let status = match status {
            CacheStatus::Hit => 0,
            CacheStatus::Miss => 1,
            CacheStatus::Stale => 2,
        };
        self.cache_read_counters[route as usize][status].inc();
    }
}

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct State {
    pub db: PgPool,
    pub redis: RedisClients,
    pub pages: Pages,
    pub pubsub: PubSub,
    pub metrics: ServiceMetrics,
    pub keep_alive: Duration,
    pub stop: CancellationToken,
}

/// Registers the routes; `policy` is the rate-limit policy of the public routes; `usage` counts
/// their `api_request`s.
pub fn configure(
    cfg: &mut web::ServiceConfig,
    state: web::Data<State>,
    limiter: &RateLimiter,
    policy: &str,
    usage: &UsageRecorder,
) {
    // Per organisation: the slug from the path is the identifier (the middleware wraps the
    // resource, so the path is matched when it reads it).
    let per_org = RateLimit::new(limiter.clone(), policy)
        .with_key(|req| req.match_info().get("orgSlug").map(|slug| ["org:", slug].concat()));
    // Counted in memory, billed to the organisation id the handler found in the cached page
    // (unknown slugs carry none, so they are not metered). Refused requests never reach the
    // handler: they count as `rate_limited` for the organisation this replica has cached.
    let pages = state.pages.clone();
    let metered =
        TrackUsage::from_response(usage.clone()).aggregated().org_when_denied(move |req| {
            let slug = req.match_info().get("orgSlug")?;
            pages.cached_org_id(slug).map(|id| id.to_string())
        });
    cfg.app_data(state)
        .service(
            web::resource("/api/public/campaigns/{orgSlug}/active")
                .wrap(per_org)
                .wrap(metered)
                .route(web::get().to(active_campaigns)),
        )
        .service(
            web::resource("/api/campaigns/{id}/stats")
                .wrap(RateLimit::new(limiter.clone(), policy))
                .route(web::get().to(campaign_stats)),
        )
        .service(
            web::resource("/api/campaigns/{id}/events")
                .wrap(RateLimit::new(limiter.clone(), policy))
                .route(web::get().to(campaign_events)),
        )
        .route("/campaigns/{orgSlug}", web::get().to(campaign_page))
        .route("/api/admin/organisations", web::post().to(create_organisation))
        .route("/api/admin/organisations/{orgSlug}/campaigns", web::post().to(create_campaign))
        .route("/api/admin/campaigns/{id}", web::get().to(get_campaign))
        .route("/api/admin/campaigns/{id}", web::patch().to(update_campaign))
        .route("/api/admin/campaigns/{id}", web::delete().to(delete_campaign));
}

fn cached_response(status: CacheStatus, pages: &Pages) -> actix_web::HttpResponseBuilder {
    let mut response = HttpResponse::Ok();
    response
        .insert_header((X_CACHE, HeaderValue::from_static(status.as_header())))
        .insert_header((CACHE_CONTROL, pages.cache_control()));
    response
}

fn campaign_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::InvalidCampaignId)
}

/// The hottest route: it borrows the state and the slug from the request rather than extracting
/// owned copies (`web::Data` is an `Arc` both worker threads would count up and down per read).
#[tracing::instrument(name = "active_campaigns", skip_all, fields(slug = req.match_info().get("orgSlug")))]
async fn active_campaigns(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let state = state(&req)?;
    let slug = Slug::parse(req.match_info().get("orgSlug").unwrap_or_default())?;
    let cached = state.pages.active(&slug).await?;
    state.metrics.cache_read(CachedRoute::Active, cached.status);
    let org_id = cached.value.org_id.ok_or(ApiError::OrganisationNotFound)?;
    let mut response = cached_response(cached.status, &state.pages)
        .insert_header((CONTENT_TYPE, HeaderValue::from_static("application/json")))
        .body(cached.value.campaigns.into_bytes());
    let mut org = [0u8; uuid::fmt::Hyphenated::LENGTH];
    response
        .extensions_mut()
        .insert(UsageOrg(org_id.hyphenated().encode_lower(&mut org).to_owned()));
    Ok(response)
}

fn state(req: &HttpRequest) -> Result<&State, ApiError> {
    req.app_data::<web::Data<State>>()
        .map(|data| &***data)
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("campaign-api state is not registered")))
}

#[tracing::instrument(name = "campaign_stats", skip(state))]
async fn campaign_stats(
    state: web::Data<State>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = campaign_id(&path)?;
    let cached = state.pages.stats(id).await?;
    state.metrics.cache_read(CachedRoute::Stats, cached.status);
    Ok(cached_response(cached.status, &state.pages).json(&cached.value))
}

#[tracing::instrument(name = "campaign_events", skip(state))]
async fn campaign_events(
    state: web::Data<State>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = campaign_id(&path)?;
    // 404 for campaigns that do not exist (cached, so cheap and Postgres-independent when warm).
    state.pages.stats(id).await?;
    live::event_stream(
        &state.pubsub,
        state.redis.keys(),
        id,
        state.keep_alive,
        state.stop.clone(),
        state.metrics.sse_clients.clone(),
    )
    .await
}

async fn campaign_page(path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    Slug::parse(&path)?;
    Ok(HttpResponse::Ok().content_type("text/html; charset=utf-8").body(CAMPAIGN_PAGE))
}

#[tracing::instrument(name = "create_organisation", skip_all)]
async fn create_organisation(
    _admin: RequireAdmin,
    state: web::Data<State>,
    body: web::Json<NewOrganisationRequest>,
) -> Result<HttpResponse, ApiError> {
    let org = NewOrganisation::try_from(body.into_inner())?;
    let created = storage::create_organisation(&state.db, &org).await?;
    // A cached "no such organisation" for this slug must go.
    state.pages.invalidate_org(&created.slug).await;
    tracing::info!(org_id = %created.id, slug = %created.slug, "organisation created");
    Ok(HttpResponse::Created().json(created))
}

#[tracing::instrument(name = "create_campaign", skip(_admin, state, body))]
async fn create_campaign(
    _admin: RequireAdmin,
    state: web::Data<State>,
    path: web::Path<String>,
    body: web::Json<NewCampaignRequest>,
) -> Result<HttpResponse, ApiError> {
    let slug = Slug::parse(&path)?;
    let fields = CampaignFields::try_from(body.into_inner())?;
    let row = storage::create_campaign(&state.db, &slug, &fields).await?;
    state.pages.invalidate_org(slug.as_str()).await;
    tracing::info!(campaign_id = %row.id, slug = slug.as_str(), "campaign created");
    Ok(HttpResponse::Created().json(AdminCampaign::from(&row)))
}

#[tracing::instrument(name = "get_campaign", skip(_admin, state))]
async fn get_campaign(
    _admin: RequireAdmin,
    state: web::Data<State>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = campaign_id(&path)?;
    let row = storage::campaign(&state.db, id).await?.ok_or(ApiError::CampaignNotFound)?;
    Ok(HttpResponse::Ok().json(AdminCampaign::from(&row)))
}

#[tracing::instrument(name = "update_campaign", skip(_admin, state, body))]
async fn update_campaign(
    _admin: RequireAdmin,
    state: web::Data<State>,
    path: web::Path<String>,
    body: web::Json<CampaignPatch>,
) -> Result<HttpResponse, ApiError> {
    let id = campaign_id(&path)?;
    let patch = body.into_inner();
    if patch.is_empty() {
        return Err(ApiError::EmptyPatch);
    }
    let current = storage::campaign(&state.db, id).await?.ok_or(ApiError::CampaignNotFound)?;
    let fields = patch.apply(&current)?;
    let row = storage::update_campaign(&state.db, id, &fields)
        .await?
        .ok_or(ApiError::CampaignNotFound)?;
    state.pages.invalidate_org(&row.org_slug).await;
    let now = Utc::now();
    if current.is_active_at(now) && !row.is_active_at(now) && row.starts_at <= now {
        // Disabled or ended by this edit: viewers learn it now, not at the next tick.
        live::announce_ended(&state.redis, id).await;
    }
    tracing::info!(campaign_id = %id, "campaign updated");
    Ok(HttpResponse::Ok().json(AdminCampaign::from(&row)))
}

#[tracing::instrument(name = "delete_campaign", skip(_admin, state))]
async fn delete_campaign(
    _admin: RequireAdmin,
    state: web::Data<State>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = campaign_id(&path)?;
    let slug = storage::delete_campaign(&state.db, id).await?.ok_or(ApiError::CampaignNotFound)?;
    state.pages.invalidate_org(&slug).await;
    live::announce_ended(&state.redis, id).await;
    tracing::info!(campaign_id = %id, "campaign deleted");
    Ok(HttpResponse::build(StatusCode::NO_CONTENT).finish())
}

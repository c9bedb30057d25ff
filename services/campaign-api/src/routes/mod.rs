//! HTTP routes of campaign-api: the public cached reads and the campaign page (here), live
//! updates over SSE ([`events`]), the admin writes ([`admin`]) and tenant token minting
//! ([`tokens`]). Handlers parse input into domain types, call `store` (the cached pages, live
//! updates) and `db`, and shape responses.

pub mod admin;
pub mod events;
pub mod tokens;

use std::sync::Arc;

use actix_web::http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderName, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};
use platform_redis::RedisClients;
use platform_redis::cache::CacheStatus;
use platform_redis::pubsub::PubSub;
use platform_redis::ratelimit::{RateLimit, RateLimiter};
use platform_redis::usage::{TrackUsage, UsageOrg, UsageRecorder};
use platform_service::openapi::{RateLimited, Unavailable};
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use utoipa::OpenApi;
use uuid::Uuid;

use crate::domain::{CampaignStats, CampaignView, Slug, TierLimits};
use crate::error::ApiError;
use crate::metrics::{CachedRoute, ServiceMetrics};
use crate::store::pages::Pages;

const CAMPAIGN_PAGE: &str = include_str!("../../static/campaigns.html");
const X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct State {
    pub db: PgPool,
    pub redis: RedisClients,
    pub pages: Pages,
    pub pubsub: PubSub,
    pub metrics: ServiceMetrics,
    pub live: events::StreamTimes,
    pub stop: CancellationToken,
    /// What this service limits by tier.
    pub limits: TierLimits,
    /// Wakes the outbox relay after a write committed an event.
    pub relay_wake: Arc<Notify>,
}

/// The routes' OpenAPI description, [`tokens`]' included (`platform_service::openapi` adds the
/// common ones). `CampaignUpdate` is listed because only the SSE route's description names it.
#[derive(Debug, OpenApi)]
#[openapi(
    paths(
        active_campaigns,
        campaign_stats,
        events::campaign_events,
        campaign_page,
        admin::create_organisation,
        admin::get_organisation,
        admin::update_organisation,
        admin::create_campaign,
        admin::get_campaign,
        admin::update_campaign,
        admin::delete_campaign,
        tokens::mint_token
    ),
    components(schemas(platform_redis::messages::CampaignUpdate))
)]
pub struct ApiDoc;

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
        .with_key(|req| req.match_info().get("orgSlug").map(crate::workers::limits::identifier));
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
                .route(web::get().to(events::campaign_events)),
        )
        .route("/campaigns/{orgSlug}", web::get().to(campaign_page))
        .route("/api/admin/organisations", web::post().to(admin::create_organisation))
        .route("/api/admin/organisations/{orgSlug}", web::get().to(admin::get_organisation))
        .route("/api/admin/organisations/{orgSlug}", web::patch().to(admin::update_organisation))
        .route(
            "/api/admin/organisations/{orgSlug}/campaigns",
            web::post().to(admin::create_campaign),
        )
        .route("/api/admin/campaigns/{id}", web::get().to(admin::get_campaign))
        .route("/api/admin/campaigns/{id}", web::patch().to(admin::update_campaign))
        .route("/api/admin/campaigns/{id}", web::delete().to(admin::delete_campaign));
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

/// `GET /api/public/campaigns/{orgSlug}/active`: the organisation's running campaigns, cached.
///
/// Rate limited per organisation (the slug), so an invalid or unknown slug can meet 429 too.
#[utoipa::path(
    get,
    path = "/api/public/campaigns/{orgSlug}/active",
    tag = "public",
    params(("orgSlug" = String, Path, description = "The organisation's slug", pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")),
    responses(
        (status = 200, description = "Started, not ended, not disabled campaigns", body = [CampaignView], headers(
            ("X-Cache" = String, description = "`HIT`, `MISS` or `STALE`"),
            ("Cache-Control" = String, description = "`public, max-age=<cache.ttl_seconds>`"),
        )),
        (status = 400, description = "The slug is not a valid slug (`invalid_slug`)", body = platform_service::ErrorBody),
        (status = 404, description = "No such organisation (`organization_not_found`)", body = platform_service::ErrorBody),
        RateLimited,
        Unavailable,
    )
)]
// The hottest route: it borrows the state and the slug from the request rather than extracting
// owned copies (`web::Data` is an `Arc` both worker threads would count up and down per read).
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

/// `GET /api/campaigns/{id}/stats`: a campaign's totals, cached.
#[utoipa::path(
    get,
    path = "/api/campaigns/{id}/stats",
    tag = "public",
    params(("id" = Uuid, Path, description = "The campaign id")),
    responses(
        (status = 200, description = "The campaign's totals", body = CampaignStats, headers(
            ("X-Cache" = String, description = "`HIT`, `MISS` or `STALE`"),
            ("Cache-Control" = String, description = "`public, max-age=<cache.ttl_seconds>`"),
        )),
        (status = 400, description = "The id is not a UUID (`invalid_campaign_id`)", body = platform_service::ErrorBody),
        (status = 404, description = "No such campaign, or deleted (`campaign_not_found`)", body = platform_service::ErrorBody),
        RateLimited,
        Unavailable,
    )
)]
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

/// `GET /campaigns/{orgSlug}`: the campaign page (static HTML; its script calls the public
/// routes), for any valid slug, known or not.
#[utoipa::path(
    get,
    path = "/campaigns/{orgSlug}",
    tag = "pages",
    params(("orgSlug" = String, Path, description = "The organisation's slug", pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")),
    responses(
        (status = 200, description = "The campaign page", content_type = "text/html", body = String),
        (status = 400, description = "The slug is not a valid slug (`invalid_slug`)", body = platform_service::ErrorBody),
    )
)]
async fn campaign_page(path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    Slug::parse(&path)?;
    Ok(HttpResponse::Ok().content_type("text/html; charset=utf-8").body(CAMPAIGN_PAGE))
}

//! HTTP routes: event intake, usage and top-consumer reads, bills, quota checks, the flush
//! trigger and the dashboard page. Handlers parse input into domain types, then call storage.
//!
//! Who may call what: intake, quota checks, the flush and the cross-tenant top list need the
//! service token; one organisation's usage, detail events and bill take its tenant token or the
//! service token ([`TenantAccess`](platform_service::tenant::TenantAccess)); the dashboard page is
//! a public shell that reads its token from the URL fragment and calls the API with it.
//!
//! Layout: [`intake`] holds the service-token routes under `/internal` (events, flush, quota
//! checks), [`reads`] the `/api` reads and the dashboard page. Answers are small `Serialize`
//! structs rather than `json!`, so [`ApiDoc`] describes exactly the JSON sent.

mod intake;
mod reads;

use actix_web::web;
use platform_redis::RedisClients;
use platform_redis::ratelimit::{RateLimit, RateLimiter};
use platform_service::tenant::TenantAuth;
use sqlx::PgPool;
use utoipa::OpenApi;

use crate::domain::flush::Flusher;
use crate::domain::organisations::Directory;
use crate::domain::pricing::BillingSettings;
use crate::domain::usage::{EventRules, Month, OrgId};
use crate::error::ApiError;
use crate::metrics::UsageMetrics;
use crate::store::{Fence, Retention};

pub use reads::{Source, load_usage};

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

/// The routes' OpenAPI description (`platform_service::openapi` adds the common ones).
#[derive(Debug, OpenApi)]
#[openapi(paths(
    intake::post_events,
    intake::post_flush,
    intake::quota_check,
    reads::top,
    reads::usage,
    reads::recent_events,
    reads::billing,
    reads::dashboard
))]
pub struct ApiDoc;

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
            .route("/internal/usage/events", web::post().to(intake::post_events))
            .route("/internal/usage/flush", web::post().to(intake::post_flush))
            .route("/internal/quota/check", web::post().to(intake::quota_check))
            .route("/dashboard/{org_id}", web::get().to(reads::dashboard))
            .service(
                web::scope("/api")
                    .wrap(RateLimit::new(limiter.clone(), "api"))
                    // Before `/usage/{org_id}`, which would otherwise take `top` as an organisation.
                    .route("/usage/top", web::get().to(reads::top))
                    .route("/usage/{org_id}", web::get().to(reads::usage))
                    .route("/usage/{org_id}/events", web::get().to(reads::recent_events))
                    .route("/billing/{org_id}", web::get().to(reads::billing)),
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

//! Admin routes of campaign-api: organisations and campaigns created, read, edited and deleted.
//! Every write invalidates the organisation's cached pages; a campaign ended by an edit or a
//! deletion is announced to its live viewers at once; organisation changes and campaign
//! creations are published through the outbox (the relay is woken at once).

use actix_web::http::StatusCode;
use actix_web::http::header::HeaderName;
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::Utc;
use platform_service::RequireAdmin;

use super::{State, campaign_id};
use crate::db;
use crate::domain::{
    AdminCampaign, CampaignFields, CampaignPatch, NewCampaignRequest, NewOrganisation,
    NewOrganisationRequest, OrganisationPatch, Slug,
};
use crate::error::ApiError;
use crate::store::updates;

#[tracing::instrument(name = "create_organisation", skip_all)]
pub(super) async fn create_organisation(
    _admin: RequireAdmin,
    state: web::Data<State>,
    body: web::Json<NewOrganisationRequest>,
) -> Result<HttpResponse, ApiError> {
    let org = NewOrganisation::try_from(body.into_inner())?;
    let created = db::create_organisation(&state.db, &org).await?;
    state.relay_wake.notify_one();
    // A cached "no such organisation" for this slug must go.
    state.pages.invalidate_org(&created.slug).await;
    tracing::info!(org_id = %created.id, slug = %created.slug, tier = %created.tier, "organisation created");
    Ok(HttpResponse::Created().json(created))
}

#[tracing::instrument(name = "get_organisation", skip(_admin, state))]
pub(super) async fn get_organisation(
    _admin: RequireAdmin,
    state: web::Data<State>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let slug = Slug::parse(&path)?;
    let org = db::organisation(&state.db, &slug).await?.ok_or(ApiError::OrganisationNotFound)?;
    Ok(HttpResponse::Ok().json(org))
}

/// A new tier, name or overrides: a new version, published to the services that bill and limit.
#[tracing::instrument(name = "update_organisation", skip(_admin, state, body))]
pub(super) async fn update_organisation(
    _admin: RequireAdmin,
    state: web::Data<State>,
    path: web::Path<String>,
    body: web::Json<OrganisationPatch>,
) -> Result<HttpResponse, ApiError> {
    let slug = Slug::parse(&path)?;
    let patch = body.into_inner();
    let updated = db::update_organisation(&state.db, &slug, |current| patch.apply(current))
        .await?
        .ok_or(ApiError::OrganisationNotFound)?;
    state.relay_wake.notify_one();
    tracing::info!(org_id = %updated.id, version = updated.version, tier = %updated.tier, "organisation updated");
    Ok(HttpResponse::Ok().json(updated))
}

const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// The request's `Idempotency-Key`: 1–255 visible ASCII characters.
fn idempotency_key(req: &HttpRequest) -> Result<Option<&str>, ApiError> {
    let Some(value) = req.headers().get(IDEMPOTENCY_KEY) else { return Ok(None) };
    let key = value
        .to_str()
        .ok()
        .filter(|key| (1..=255).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic()));
    key.map(Some).ok_or_else(|| {
        ApiError::invalid("Idempotency-Key", "must be 1-255 visible ASCII characters")
    })
}

/// Creates a campaign (and counts `campaign_created` once through the outbox). A retry with the
/// same `Idempotency-Key` and body answers the first campaign again, with `Idempotent-Replayed`.
#[tracing::instrument(name = "create_campaign", skip(_admin, state, req, body))]
pub(super) async fn create_campaign(
    _admin: RequireAdmin,
    state: web::Data<State>,
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Json<NewCampaignRequest>,
) -> Result<HttpResponse, ApiError> {
    let slug = Slug::parse(&path)?;
    let key = idempotency_key(&req)?;
    let fields = CampaignFields::try_from(body.into_inner())?;
    let created = db::create_campaign(&state.db, &slug, &fields, key, &state.limits).await?;
    let mut response = HttpResponse::Created();
    if created.replayed {
        response.insert_header((IDEMPOTENT_REPLAYED, "true"));
    } else {
        state.relay_wake.notify_one();
        state.pages.invalidate_org(slug.as_str()).await;
        tracing::info!(campaign_id = %created.row.id, slug = slug.as_str(), "campaign created");
    }
    Ok(response.json(AdminCampaign::from(&created.row)))
}

#[tracing::instrument(name = "get_campaign", skip(_admin, state))]
pub(super) async fn get_campaign(
    _admin: RequireAdmin,
    state: web::Data<State>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = campaign_id(&path)?;
    let row = db::campaign(&state.db, id).await?.ok_or(ApiError::CampaignNotFound)?;
    Ok(HttpResponse::Ok().json(AdminCampaign::from(&row)))
}

#[tracing::instrument(name = "update_campaign", skip(_admin, state, body))]
pub(super) async fn update_campaign(
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
    let current = db::campaign(&state.db, id).await?.ok_or(ApiError::CampaignNotFound)?;
    let fields = patch.apply(&current)?;
    let row =
        db::update_campaign(&state.db, id, &fields).await?.ok_or(ApiError::CampaignNotFound)?;
    state.pages.invalidate_org(&row.org_slug).await;
    let now = Utc::now();
    if current.is_active_at(now) && !row.is_active_at(now) && row.starts_at <= now {
        // Disabled or ended by this edit: viewers learn it now, not at the next tick.
        updates::announce_ended(&state.redis, id).await;
    }
    tracing::info!(campaign_id = %id, "campaign updated");
    Ok(HttpResponse::Ok().json(AdminCampaign::from(&row)))
}

#[tracing::instrument(name = "delete_campaign", skip(_admin, state))]
pub(super) async fn delete_campaign(
    _admin: RequireAdmin,
    state: web::Data<State>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = campaign_id(&path)?;
    let slug = db::delete_campaign(&state.db, id).await?.ok_or(ApiError::CampaignNotFound)?;
    state.pages.invalidate_org(&slug).await;
    updates::announce_ended(&state.redis, id).await;
    tracing::info!(campaign_id = %id, "campaign deleted");
    Ok(HttpResponse::build(StatusCode::NO_CONTENT).finish())
}

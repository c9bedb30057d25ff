//! Admin routes of campaign-api: organisations and campaigns created, read, edited and deleted.
//! Every write invalidates the organisation's cached pages; a campaign ended by an edit or a
//! deletion is announced to its live viewers at once; organisation changes and campaign
//! creations are published through the outbox (the relay is woken at once).

use actix_web::http::StatusCode;
use actix_web::http::header::HeaderName;
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::Utc;
use platform_service::RequireAdmin;
use platform_service::openapi::{Unauthorized, Unavailable};

use super::{State, campaign_id};
use crate::db;
use crate::domain::{
    AdminCampaign, CampaignFields, CampaignPatch, NewCampaignRequest, NewOrganisation,
    NewOrganisationRequest, Organisation, OrganisationPatch, Slug,
};
use crate::error::ApiError;
use crate::store::updates;

/// `POST /api/admin/organisations`: a new organisation (version 1), published through the outbox.
#[utoipa::path(
    post,
    path = "/api/admin/organisations",
    tag = "admin",
    request_body = NewOrganisationRequest,
    security(("serviceToken" = [])),
    responses(
        (status = 201, description = "Created", body = Organisation),
        (status = 400, description = "A field is invalid (`invalid_input`), or the body is not JSON of this shape", body = platform_service::ErrorBody),
        (status = 409, description = "The slug is taken (`slug_taken`)", body = platform_service::ErrorBody),
        Unauthorized,
        Unavailable,
    )
)]
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

/// `GET /api/admin/organisations/{orgSlug}`.
#[utoipa::path(
    get,
    path = "/api/admin/organisations/{orgSlug}",
    tag = "admin",
    params(("orgSlug" = String, Path, description = "The organisation's slug", pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")),
    security(("serviceToken" = [])),
    responses(
        (status = 200, description = "The organisation", body = Organisation),
        (status = 400, description = "The slug is not a valid slug (`invalid_slug`)", body = platform_service::ErrorBody),
        (status = 404, description = "No such organisation (`organization_not_found`)", body = platform_service::ErrorBody),
        Unauthorized,
        Unavailable,
    )
)]
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

/// `PATCH /api/admin/organisations/{orgSlug}`: a new version of the organisation.
///
/// A new tier, name or overrides: a new version, published to the services that bill and limit.
#[utoipa::path(
    patch,
    path = "/api/admin/organisations/{orgSlug}",
    tag = "admin",
    params(("orgSlug" = String, Path, description = "The organisation's slug", pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")),
    request_body = OrganisationPatch,
    security(("serviceToken" = [])),
    responses(
        (status = 200, description = "The organisation's new version", body = Organisation),
        (status = 400, description = "The slug is not a valid slug (`invalid_slug`), a field is invalid (`invalid_input`), \
            the body sets no field (`empty_update`), or the body is not JSON of this shape", body = platform_service::ErrorBody),
        (status = 404, description = "No such organisation (`organization_not_found`)", body = platform_service::ErrorBody),
        Unauthorized,
        Unavailable,
    )
)]
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

/// `POST /api/admin/organisations/{orgSlug}/campaigns`: a new campaign.
///
/// Creates a campaign (and counts `campaign_created` once through the outbox). A retry with the
/// same `Idempotency-Key` and body answers the first campaign again, with `Idempotent-Replayed`.
#[utoipa::path(
    post,
    path = "/api/admin/organisations/{orgSlug}/campaigns",
    tag = "admin",
    params(
        ("orgSlug" = String, Path, description = "The organisation's slug", pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"),
        ("Idempotency-Key" = Option<String>, Header, description = "1-255 visible ASCII characters; a retry with the same key \
            and body answers the campaign the first request created", pattern = "^[!-~]{1,255}$", nullable = false),
    ),
    request_body = NewCampaignRequest,
    security(("serviceToken" = [])),
    responses(
        (status = 201, description = "Created, or created before under this `Idempotency-Key`", body = AdminCampaign, headers(
            ("Idempotent-Replayed" = String, description = "`true` when the campaign was created by an earlier request \
                with this `Idempotency-Key` (absent otherwise)"),
        )),
        (status = 400, description = "The slug is not a valid slug (`invalid_slug`), the `Idempotency-Key` or a field is invalid \
            (`invalid_input`), or the body is not JSON of this shape", body = platform_service::ErrorBody),
        (status = 404, description = "No such organisation (`organization_not_found`); or, for a replayed `Idempotency-Key`, \
            the campaign it created is gone (`campaign_not_found`)", body = platform_service::ErrorBody),
        (status = 409, description = "The organisation's tier allows no more running or scheduled campaigns (`campaign_limit_reached`)", body = platform_service::ErrorBody),
        (status = 422, description = "The `Idempotency-Key` was used with a different body (`idempotency_key_reused`)", body = platform_service::ErrorBody),
        Unauthorized,
        Unavailable,
    )
)]
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

/// `GET /api/admin/campaigns/{id}`.
#[utoipa::path(
    get,
    path = "/api/admin/campaigns/{id}",
    tag = "admin",
    params(("id" = Uuid, Path, description = "The campaign id")),
    security(("serviceToken" = [])),
    responses(
        (status = 200, description = "The campaign", body = AdminCampaign),
        (status = 400, description = "The id is not a UUID (`invalid_campaign_id`)", body = platform_service::ErrorBody),
        (status = 404, description = "No such campaign, or deleted (`campaign_not_found`)", body = platform_service::ErrorBody),
        Unauthorized,
        Unavailable,
    )
)]
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

/// `PATCH /api/admin/campaigns/{id}`: a campaign disabled or ended by the edit is announced to
/// its live viewers at once.
#[utoipa::path(
    patch,
    path = "/api/admin/campaigns/{id}",
    tag = "admin",
    params(("id" = Uuid, Path, description = "The campaign id")),
    request_body = CampaignPatch,
    security(("serviceToken" = [])),
    responses(
        (status = 200, description = "The campaign after the edit", body = AdminCampaign),
        (status = 400, description = "The id is not a UUID (`invalid_campaign_id`), the body sets no field (`empty_update`), \
            the campaign after the edit is invalid (`invalid_input`), or the body is not JSON of this shape", body = platform_service::ErrorBody),
        (status = 404, description = "No such campaign, or deleted (`campaign_not_found`)", body = platform_service::ErrorBody),
        Unauthorized,
        Unavailable,
    )
)]
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

/// `DELETE /api/admin/campaigns/{id}`: a soft delete (donations keep their campaign), announced
/// to live viewers as `campaign_ended`.
#[utoipa::path(
    delete,
    path = "/api/admin/campaigns/{id}",
    tag = "admin",
    params(("id" = Uuid, Path, description = "The campaign id")),
    security(("serviceToken" = [])),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "The id is not a UUID (`invalid_campaign_id`)", body = platform_service::ErrorBody),
        (status = 404, description = "No such campaign, or deleted (`campaign_not_found`)", body = platform_service::ErrorBody),
        Unauthorized,
        Unavailable,
    )
)]
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

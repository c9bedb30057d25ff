//! Tenant tokens minted for operators and local use: `POST /api/admin/organisations/{slug}/tokens`
//! answers a short-lived HS256 token naming the organisation's id, which usage-meter accepts for
//! that organisation's usage, detail events and bill (`platform_service::tenant`).

use actix_web::http::header::CACHE_CONTROL;
use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use platform_service::openapi::{Unauthorized, Unavailable};
use platform_service::{RequireAdmin, TenantTokenSigner};
use serde::Serialize;
use utoipa::ToSchema;

use crate::db;
use crate::domain::Slug;
use crate::error::ApiError;
use crate::routes::State;

/// Registers the route; `signer` is `None` when no HS256 secret is configured (it then answers
/// `tenant_tokens_disabled`).
pub fn configure(cfg: &mut web::ServiceConfig, signer: Option<TenantTokenSigner>) {
    cfg.app_data(web::Data::new(signer))
        .route("/api/admin/organisations/{orgSlug}/tokens", web::post().to(mint_token));
}

/// A minted tenant token.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct MintedBody {
    /// The HS256 JWT, for `Authorization: Bearer`.
    token: String,
    expires_at: DateTime<Utc>,
    /// The id the token names (the one usage-meter's `/api/usage/{orgId}` routes take).
    #[schema(format = Uuid)]
    org_id: String,
}

/// `POST /api/admin/organisations/{orgSlug}/tokens`: a tenant token for the organisation.
#[utoipa::path(
    post,
    path = "/api/admin/organisations/{orgSlug}/tokens",
    tag = "admin",
    params(("orgSlug" = String, Path, description = "The organisation's slug", pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")),
    security(("serviceToken" = [])),
    responses(
        (status = 200, description = "A short-lived token naming the organisation", body = MintedBody, headers(
            ("Cache-Control" = String, description = "`no-store`: a credential"),
        )),
        (status = 400, description = "The slug is not a valid slug (`invalid_slug`)", body = platform_service::ErrorBody),
        (status = 404, description = "No such organisation (`organization_not_found`), or no HS256 secret is configured \
            (`tenant_tokens_disabled`, answered before the slug is checked)", body = platform_service::ErrorBody),
        Unauthorized,
        Unavailable,
    )
)]
#[tracing::instrument(name = "mint_tenant_token", skip(_admin, state, signer))]
async fn mint_token(
    _admin: RequireAdmin,
    state: web::Data<State>,
    signer: web::Data<Option<TenantTokenSigner>>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let signer = signer.as_ref().as_ref().ok_or(ApiError::TenantTokensDisabled)?;
    let slug = Slug::parse(&path)?;
    let org_id =
        db::organisation_id(&state.db, &slug).await?.ok_or(ApiError::OrganisationNotFound)?;
    let org_id = org_id.to_string();
    let minted = signer.mint(&org_id).map_err(|e| ApiError::Internal(e.into()))?;
    tracing::info!(org_id = %org_id, expires_at = %minted.expires_at, "tenant token minted");
    // A credential: no cache may keep it (RFC 6749 §5.1).
    Ok(HttpResponse::Ok().insert_header((CACHE_CONTROL, "no-store")).json(MintedBody {
        token: minted.token,
        expires_at: minted.expires_at,
        org_id,
    }))
}

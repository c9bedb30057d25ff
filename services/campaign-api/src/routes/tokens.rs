//! Tenant tokens minted for operators and local use: `POST /api/admin/organisations/{slug}/tokens`
//! answers a short-lived HS256 token naming the organisation's id, which usage-meter accepts for
//! that organisation's usage, detail events and bill (`platform_service::tenant`).

use actix_web::http::header::CACHE_CONTROL;
use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use platform_service::{RequireAdmin, TenantTokenSigner};
use serde::Serialize;

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

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct MintedBody {
    token: String,
    expires_at: DateTime<Utc>,
    /// The id the token names (the one usage-meter's `/api/usage/{orgId}` routes take).
    org_id: String,
}

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

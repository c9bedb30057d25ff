//! `/api/sessions/...`: guest sessions, login (id rotation), the current session, logout.

use actix_web::http::header::SET_COOKIE;
use actix_web::{HttpRequest, HttpResponse, web};
use platform_service::RequireAdmin;
use serde::Deserialize;

use super::{Policies, State};
use crate::error::CheckoutError;
use crate::user_sessions::{SessionKind, check_user_id};

pub fn configure(cfg: &mut web::ServiceConfig, policies: &Policies) {
    cfg.service(
        web::resource("/api/sessions/guest")
            .wrap(policies.guest())
            .route(web::post().to(create_guest)),
    )
    .service(web::resource("/api/sessions/login").wrap(policies.api()).route(web::post().to(login)))
    .service(
        web::resource("/api/sessions/current").wrap(policies.api()).route(web::get().to(current)),
    )
    .service(
        web::resource("/api/sessions/logout").wrap(policies.api()).route(web::post().to(logout)),
    );
}

/// Starts a guest session (replacing the caller's previous one, if any).
#[tracing::instrument(name = "create_guest_session", skip_all)]
async fn create_guest(
    state: web::Data<State>,
    request: HttpRequest,
) -> Result<HttpResponse, CheckoutError> {
    let sessions = &state.user_sessions;
    if let Some(old) = sessions.id_from(&request) {
        sessions.delete(&old).await?;
    }
    let (id, view) = sessions.create(SessionKind::Guest, None).await?;
    Ok(HttpResponse::Created().insert_header((SET_COOKIE, sessions.cookie(&id))).json(view))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LoginRequest {
    user_id: String,
}

/// Called by the trusted front end (admin / service token) once it authenticated the user: the
/// browser's previous session id (cookie forwarded) is invalidated and a new one issued.
#[tracing::instrument(name = "login", skip_all)]
async fn login(
    _admin: RequireAdmin,
    state: web::Data<State>,
    request: HttpRequest,
    body: web::Json<LoginRequest>,
) -> Result<HttpResponse, CheckoutError> {
    let user_id = body.into_inner().user_id;
    check_user_id(&user_id)?;
    let sessions = &state.user_sessions;
    if let Some(old) = sessions.id_from(&request) {
        sessions.delete(&old).await?;
    }
    let (id, view) = sessions.create(SessionKind::User, Some(user_id)).await?;
    tracing::info!(store = ?view.store, "user session started; session id rotated");
    Ok(HttpResponse::Ok().insert_header((SET_COOKIE, sessions.cookie(&id))).json(view))
}

async fn current(
    state: web::Data<State>,
    request: HttpRequest,
) -> Result<HttpResponse, CheckoutError> {
    let sessions = &state.user_sessions;
    let id = sessions.id_from(&request).ok_or(CheckoutError::NoSession)?;
    let view = sessions.get(&id).await?.ok_or(CheckoutError::NoSession)?;
    Ok(HttpResponse::Ok().json(view))
}

/// Ends the session (idempotent) and clears the cookie.
async fn logout(
    state: web::Data<State>,
    request: HttpRequest,
) -> Result<HttpResponse, CheckoutError> {
    let sessions = &state.user_sessions;
    if let Some(id) = sessions.id_from(&request) {
        sessions.delete(&id).await?;
    }
    Ok(HttpResponse::NoContent().insert_header((SET_COOKIE, sessions.clearing_cookie())).finish())
}

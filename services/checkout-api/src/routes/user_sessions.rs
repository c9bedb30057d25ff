//! `/api/sessions/...`: guest sessions, login (id rotation), the current session, logout; the
//! session cookie, and who a request's caller is (service token, user or guest session, nobody).

use actix_web::http::header::{AUTHORIZATION, COOKIE, SET_COOKIE};
use actix_web::{FromRequest as _, HttpRequest, HttpResponse, web};
use platform_service::RequireAdmin;
use platform_service::openapi::{RateLimited, Unauthorized};
use serde::Deserialize;
use utoipa::ToSchema;

use super::{Policies, State};
use crate::domain::caller::Caller;
use crate::domain::user_sessions::{SessionKind, UserSessionView, check_user_id};
use crate::error::CheckoutError;
use crate::store::user_sessions::{UserSessionSettings, UserSessions};

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

/// `POST /api/sessions/guest`: starts a guest session (replacing the caller's previous one, if
/// any).
///
/// No 503: while Redis is unreachable the session is kept in this replica's memory
/// (`store: memory`).
#[utoipa::path(
    post,
    path = "/api/sessions/guest",
    tag = "sessions",
    security(("sessionCookie" = []), ()),
    responses(
        (status = 201, description = "Started; the cookie carries its id", body = UserSessionView,
            headers(("Set-Cookie" = String, description = "The session cookie (`HttpOnly; SameSite=Lax; Path=/`)"))),
        RateLimited,
    )
)]
#[tracing::instrument(name = "create_guest_session", skip_all)]
pub(super) async fn create_guest(
    state: web::Data<State>,
    request: HttpRequest,
) -> Result<HttpResponse, CheckoutError> {
    let (set_cookie, view) =
        replace_session(&state.user_sessions, &request, SessionKind::Guest, None).await?;
    Ok(HttpResponse::Created().insert_header((SET_COOKIE, set_cookie)).json(view))
}

/// Deletes the request's session, if any, and starts a new one; its `Set-Cookie` value and body.
/// A new id every time, so an id fixed before login is worthless after it.
async fn replace_session(
    sessions: &UserSessions,
    request: &HttpRequest,
    kind: SessionKind,
    user_id: Option<String>,
) -> Result<(String, UserSessionView), CheckoutError> {
    if let Some(old) = session_id(request, sessions.settings()) {
        sessions.delete(&old).await?;
    }
    let (id, view) = sessions.create(kind, user_id).await?;
    Ok((cookie(sessions.settings(), &id), view))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct LoginRequest {
    /// 1 to 200 bytes, not only whitespace, without control characters.
    #[schema(min_length = 1, max_length = 200)]
    user_id: String,
}

/// `POST /api/sessions/login`: a user session for the user the trusted front end authenticated.
///
/// Called by the trusted front end (admin / service token) once it authenticated the user: the
/// browser's previous session id (cookie forwarded) is invalidated and a new one issued.
#[utoipa::path(
    post,
    path = "/api/sessions/login",
    tag = "sessions",
    request_body = LoginRequest,
    security(("serviceToken" = [], "sessionCookie" = []), ("serviceToken" = [])),
    responses(
        (status = 200, description = "Started; the cookie carries the new id", body = UserSessionView,
            headers(("Set-Cookie" = String, description = "The session cookie (`HttpOnly; SameSite=Lax; Path=/`)"))),
        (status = 400, description = "A malformed `userId` (`invalid_user_id`), or the body is not the expected JSON", body = platform_service::ErrorBody),
        Unauthorized,
        RateLimited,
    )
)]
#[tracing::instrument(name = "login", skip_all)]
pub(super) async fn login(
    _admin: RequireAdmin,
    state: web::Data<State>,
    request: HttpRequest,
    body: web::Json<LoginRequest>,
) -> Result<HttpResponse, CheckoutError> {
    let user_id = body.into_inner().user_id;
    check_user_id(&user_id)?;
    let (set_cookie, view) =
        replace_session(&state.user_sessions, &request, SessionKind::User, Some(user_id)).await?;
    tracing::info!(store = ?view.store, "user session started; session id rotated");
    Ok(HttpResponse::Ok().insert_header((SET_COOKIE, set_cookie)).json(view))
}

/// `GET /api/sessions/current`: the session of the caller's cookie.
#[utoipa::path(
    get,
    path = "/api/sessions/current",
    tag = "sessions",
    security(("sessionCookie" = [])),
    responses(
        (status = 200, description = "The session", body = UserSessionView),
        (status = 401, description = "No session cookie, or its session is unknown or expired (`no_session`)", body = platform_service::ErrorBody),
        RateLimited,
    )
)]
pub(super) async fn current(
    state: web::Data<State>,
    request: HttpRequest,
) -> Result<HttpResponse, CheckoutError> {
    let sessions = &state.user_sessions;
    let id = session_id(&request, sessions.settings()).ok_or(CheckoutError::NoSession)?;
    let view = sessions.get(&id).await?.ok_or(CheckoutError::NoSession)?;
    Ok(HttpResponse::Ok().json(view))
}

/// `POST /api/sessions/logout`: ends the session (idempotent) and clears the cookie.
#[utoipa::path(
    post,
    path = "/api/sessions/logout",
    tag = "sessions",
    security(("sessionCookie" = []), ()),
    responses(
        (status = 204, description = "Ended (or there was none)",
            headers(("Set-Cookie" = String, description = "Clears the session cookie (`Max-Age=0`)"))),
        RateLimited,
    )
)]
pub(super) async fn logout(
    state: web::Data<State>,
    request: HttpRequest,
) -> Result<HttpResponse, CheckoutError> {
    let sessions = &state.user_sessions;
    if let Some(id) = session_id(&request, sessions.settings()) {
        sessions.delete(&id).await?;
    }
    Ok(HttpResponse::NoContent()
        .insert_header((SET_COOKIE, clearing_cookie(sessions.settings())))
        .finish())
}

/// Resolves the caller: an `Authorization` header must carry the service token (anything else is
/// 401 `unauthorized`, not a silent downgrade); otherwise the session cookie decides.
pub async fn caller(
    request: &HttpRequest,
    sessions: &UserSessions,
) -> Result<Caller, CheckoutError> {
    if request.headers().contains_key(AUTHORIZATION) {
        return match RequireAdmin::extract(request).await {
            Ok(RequireAdmin) => Ok(Caller::Service),
            Err(_) => Err(CheckoutError::Unauthorized),
        };
    }
    let Some(id) = session_id(request, sessions.settings()) else { return Ok(Caller::Anonymous) };
    let Some(view) = sessions.get(&id).await? else { return Ok(Caller::Anonymous) };
    Ok(match (view.session.kind, view.session.user_id) {
        (SessionKind::User, Some(user_id)) => Caller::User(user_id),
        _ => Caller::Guest,
    })
}

/// The session id from the request's cookie, if any.
fn session_id(request: &HttpRequest, settings: &UserSessionSettings) -> Option<String> {
    let name = &settings.cookie_name;
    request
        .headers()
        .get_all(COOKIE)
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.trim().to_owned())
}

/// `Set-Cookie` value carrying `id`.
fn cookie(settings: &UserSessionSettings, id: &str) -> String {
    let secure = if settings.cookie_secure { "; Secure" } else { "" };
    format!(
        "{}={id}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}{secure}",
        settings.cookie_name, settings.ttl_secs
    )
}

/// `Set-Cookie` value that removes the cookie.
fn clearing_cookie(settings: &UserSessionSettings) -> String {
    let secure = if settings.cookie_secure { "; Secure" } else { "" };
    format!("{}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0{secure}", settings.cookie_name)
}

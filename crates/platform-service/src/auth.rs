//! Bearer-token guard for admin and service-to-service routes.
//!
//! Handlers that need it take a [`RequireAdmin`] argument; the extractor answers 401 with the JSON
//! error contract when the `Authorization: Bearer <token>` header is missing or wrong. Tokens are
//! compared in constant time so response timing does not reveal how much of a guess was right.

use std::future::{Ready, ready};

use actix_web::http::StatusCode;
use actix_web::http::header::AUTHORIZATION;
use actix_web::{FromRequest, HttpRequest, dev::Payload, error::InternalError, web};
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;

use crate::error::error_response;

/// The expected token, registered as app data by `Application::build`.
#[derive(Debug, Clone)]
pub struct AdminToken(pub SecretString);

/// Proof that the request carried the admin token.
#[derive(Debug, Clone, Copy)]
pub struct RequireAdmin;

impl FromRequest for RequireAdmin {
    type Error = actix_web::Error;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(check(req))
    }
}

fn check(req: &HttpRequest) -> Result<RequireAdmin, actix_web::Error> {
    let reject = |message: &str| -> actix_web::Error {
        let response = error_response(StatusCode::UNAUTHORIZED, "unauthorized", message);
        InternalError::from_response(message.to_owned(), response).into()
    };
    if req.app_data::<web::Data<AdminToken>>().is_none() {
        tracing::error!("admin token is not registered; refusing admin request");
        return Err(reject("Admin routes are not configured"));
    }
    let presented = bearer(req).ok_or_else(|| reject("Missing bearer token"))?;
    if is_admin_token(req, presented) {
        Ok(RequireAdmin)
    } else {
        Err(reject("Invalid bearer token"))
    }
}

/// The token of an `Authorization: Bearer <token>` header, trimmed.
pub(crate) fn bearer(req: &HttpRequest) -> Option<&str> {
    req.headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|token| !token.is_empty())
}

/// Whether `presented` is the admin token (false when none is registered).
pub(crate) fn is_admin_token(req: &HttpRequest, presented: &str) -> bool {
    req.app_data::<web::Data<AdminToken>>().is_some_and(|expected| {
        bool::from(presented.as_bytes().ct_eq(expected.0.expose_secret().as_bytes()))
    })
}

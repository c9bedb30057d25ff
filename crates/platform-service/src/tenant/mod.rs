//! Tenant tokens: bearer JWTs that let one organisation read its own data, beside the service token.
//!
//! [`TenantAuth`] checks them. A token is accepted when its signature verifies with a configured
//! key (HS256 secrets, RS256 / ES256 public keys from JWKS files or URLs, several at once so keys
//! rotate without downtime), `exp` is in the future, `iss` / `aud` match when configured, and the
//! organisation claim (a JSON pointer: each identity provider puts it somewhere else) names the
//! organisation of the route, by its own id or by an external id an [`OrgDirectory`] knows for it.
//! The service token (`auth.admin_token`) keeps working for internal callers.
//!
//! Handlers take a [`TenantAccess`] (tenant-scoped routes, organisation in the `{org_id}` path
//! segment) or a [`ServiceOnly`] (cross-tenant routes). Refusals follow the JSON error contract:
//! 401 for a missing, expired or invalid token, 403 for a valid token of another organisation.
//! [`TenantTokenSigner`] mints short-lived HS256 tokens with the first configured secret.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use actix_web::dev::Payload;
use actix_web::http::StatusCode;
use actix_web::http::header::{HeaderValue, WWW_AUTHENTICATE};
use actix_web::{FromRequest, HttpRequest, HttpResponse, ResponseError, web};
use futures::future::{BoxFuture, LocalBoxFuture};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use secrecy::ExposeSecret;
use serde_json::Value;

use crate::auth;
use crate::error::{error_response, server_error};
use crate::settings::TenantAuthSettings;

mod jwks;
mod signer;

use jwks::{FetchState, PublicKey, RemoteKeys, matching, parse_jwks};
pub use signer::{MintedToken, TenantTokenSigner};

/// The path segment tenant-scoped routes name the organisation with: `/api/usage/{org_id}`.
pub const ORG_PATH_PARAM: &str = "org_id";

/// Who is calling a tenant-scoped route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The service token: an internal caller, any organisation.
    Service,
    /// A tenant token of this organisation.
    Tenant { org_id: String },
}

/// Why a request was refused.
#[derive(Debug, thiserror::Error)]
pub enum TenantAuthError {
    #[error("Missing bearer token")]
    Missing,
    #[error("The token has expired")]
    Expired,
    #[error("Invalid token: {0}")]
    Invalid(&'static str),
    #[error("The token names no organisation")]
    NoOrganisation,
    #[error("The token does not give access to this organisation")]
    WrongOrganisation,
    #[error("This route needs the service token")]
    ServiceOnly,
    /// Keys (a JWKS URL) or external ids could not be looked up: the caller may retry.
    #[error("token keys or organisation ids are unavailable")]
    Unavailable(#[source] anyhow::Error),
    /// A route uses the extractors without [`TenantAuth`] registered: a wiring bug.
    #[error("tenant authentication is not configured: {0}")]
    Misconfigured(&'static str),
}

impl TenantAuthError {
    fn code(&self) -> &'static str {
        match self {
            TenantAuthError::Missing => "unauthorized",
            TenantAuthError::Expired => "token_expired",
            TenantAuthError::Invalid(_) => "invalid_token",
            TenantAuthError::NoOrganisation
            | TenantAuthError::WrongOrganisation
            | TenantAuthError::ServiceOnly => "forbidden",
            TenantAuthError::Unavailable(_) => "unavailable",
            TenantAuthError::Misconfigured(_) => "internal_error",
        }
    }
}

impl ResponseError for TenantAuthError {
    fn status_code(&self) -> StatusCode {
        match self {
            TenantAuthError::Missing | TenantAuthError::Expired | TenantAuthError::Invalid(_) => {
                StatusCode::UNAUTHORIZED
            }
            TenantAuthError::NoOrganisation
            | TenantAuthError::WrongOrganisation
            | TenantAuthError::ServiceOnly => StatusCode::FORBIDDEN,
            TenantAuthError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            TenantAuthError::Misconfigured(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        if status.is_server_error() {
            return server_error(status, self);
        }
        let mut response = error_response(status, self.code(), self.to_string());
        if status == StatusCode::UNAUTHORIZED {
            // RFC 6750 §3: tells clients which scheme to retry with.
            let challenge = match self {
                TenantAuthError::Missing => "Bearer",
                _ => "Bearer error=\"invalid_token\"",
            };
            response.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        }
        response
    }
}

/// The external (identity-provider) ids recorded for an organisation. A token naming one of
/// them is as good as one naming the organisation's own id.
pub trait OrgDirectory: Send + Sync + 'static {
    fn external_ids<'a>(&'a self, org_id: &'a str) -> BoxFuture<'a, anyhow::Result<Vec<String>>>;
}

/// No external ids known: a token must name the organisation's own id.
#[derive(Debug, Clone, Copy, Default)]
pub struct OwnIdOnly;

impl OrgDirectory for OwnIdOnly {
    fn external_ids<'a>(&'a self, _: &'a str) -> BoxFuture<'a, anyhow::Result<Vec<String>>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}

/// Why [`TenantAuth::from_settings`] failed: a JWKS file is unreadable or holds no usable key.
#[derive(Debug, thiserror::Error)]
pub enum TenantAuthSetupError {
    #[error("tenant_auth.jwks_files: cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("tenant_auth.jwks_files: {path}: {reason}")]
    Jwks { path: String, reason: String },
    #[error("tenant_auth.hs256_secrets: {0}")]
    Secret(#[source] jsonwebtoken::errors::Error),
    #[error("tenant_auth.jwks_urls: cannot build the HTTP client")]
    Client(#[source] reqwest::Error),
}

/// The checker of tenant tokens; register it as `web::Data<TenantAuth>` on the app.
#[derive(Clone)]
pub struct TenantAuth {
    inner: Arc<Inner>,
}

struct Inner {
    org_claim: String,
    validation: Validation,
    hmac: Vec<DecodingKey>,
    files: Vec<PublicKey>,
    remote: Option<RemoteKeys>,
    directory: Arc<dyn OrgDirectory>,
}

impl std::fmt::Debug for TenantAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantAuth")
            .field("org_claim", &self.inner.org_claim)
            .field("hs256_secrets", &self.inner.hmac.len())
            .field("file_keys", &self.inner.files.len())
            .field("jwks_urls", &self.inner.remote.as_ref().map_or(0, |r| r.urls.len()))
            .finish_non_exhaustive()
    }
}

impl TenantAuth {
    /// Reads the JWKS files now (a bad one stops the start); JWKS URLs are fetched on first use.
    pub fn from_settings(settings: &TenantAuthSettings) -> Result<Self, TenantAuthSetupError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp"]);
        validation.leeway = settings.leeway_secs;
        validation.validate_nbf = true;
        // Configured iss / aud are required, not only checked when present.
        if !settings.issuers.is_empty() {
            validation.set_issuer(&settings.issuers);
            validation.required_spec_claims.insert("iss".to_owned());
        }
        if settings.audiences.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&settings.audiences);
            validation.required_spec_claims.insert("aud".to_owned());
        }
        let hmac = settings
            .hs256_secrets
            .iter()
            .map(|secret| DecodingKey::from_secret(secret.expose_secret().as_bytes()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(TenantAuthSetupError::Secret)?;
        let mut files = Vec::new();
        for path in &settings.jwks_files {
            let text = std::fs::read_to_string(path)
                .map_err(|source| TenantAuthSetupError::Read { path: path.clone(), source })?;
            let keys = parse_jwks(&text)
                .map_err(|reason| TenantAuthSetupError::Jwks { path: path.clone(), reason })?;
            if keys.is_empty() {
                return Err(TenantAuthSetupError::Jwks {
                    path: path.clone(),
                    reason: "no RS256 or ES256 signing key in it".to_owned(),
                });
            }
            files.extend(keys);
        }
        let remote = if settings.jwks_urls.is_empty() {
            None
        } else {
            // reqwest's rustls needs the process crypto provider (idempotent).
            crate::telemetry::install_crypto_provider();
            let http = reqwest::Client::builder()
                .timeout(Duration::from_millis(settings.jwks_timeout_ms))
                .build()
                .map_err(TenantAuthSetupError::Client)?;
            Some(RemoteKeys {
                urls: settings.jwks_urls.clone(),
                http,
                keys: RwLock::new(vec![Vec::new(); settings.jwks_urls.len()]),
                state: std::sync::Mutex::new(FetchState::default()),
                fetching: tokio::sync::Mutex::new(()),
                min_interval: Duration::from_millis(settings.jwks_refetch_min_interval_ms),
                max_age: Duration::from_secs(settings.jwks_max_age_secs),
            })
        };
        Ok(Self {
            inner: Arc::new(Inner {
                org_claim: settings.org_claim.clone(),
                validation,
                hmac,
                files,
                remote,
                directory: Arc::new(OwnIdOnly),
            }),
        })
    }

    /// Uses `directory` for the external ids of organisations (default: [`OwnIdOnly`]).
    pub fn with_directory(self, directory: Arc<dyn OrgDirectory>) -> Self {
        let inner = &self.inner;
        Self {
            inner: Arc::new(Inner {
                org_claim: inner.org_claim.clone(),
                validation: inner.validation.clone(),
                hmac: inner.hmac.clone(),
                files: inner.files.clone(),
                remote: inner.remote.as_ref().map(RemoteKeys::fresh_copy),
                directory,
            }),
        }
    }

    /// May the request's caller read `org_id`'s data? The service token may; a tenant token may
    /// when its organisation claim is `org_id` or an external id recorded for it.
    pub async fn authorize(
        &self,
        req: &HttpRequest,
        org_id: &str,
    ) -> Result<Caller, TenantAuthError> {
        let token = auth::bearer(req).ok_or(TenantAuthError::Missing)?;
        if auth::is_admin_token(req, token) {
            return Ok(Caller::Service);
        }
        let claimed = self.verify(token).await?;
        if claimed.iter().any(|c| c == org_id) {
            return Ok(Caller::Tenant { org_id: org_id.to_owned() });
        }
        let external = self
            .inner
            .directory
            .external_ids(org_id)
            .await
            .map_err(TenantAuthError::Unavailable)?;
        if claimed.iter().any(|c| external.contains(c)) {
            Ok(Caller::Tenant { org_id: org_id.to_owned() })
        } else {
            tracing::debug!(org_id, "tenant token of another organisation refused");
            Err(TenantAuthError::WrongOrganisation)
        }
    }

    /// Only the service token passes; a valid tenant token is refused with 403, anything else 401.
    pub async fn require_service(&self, req: &HttpRequest) -> Result<(), TenantAuthError> {
        let token = auth::bearer(req).ok_or(TenantAuthError::Missing)?;
        if auth::is_admin_token(req, token) {
            return Ok(());
        }
        self.verify(token).await?;
        Err(TenantAuthError::ServiceOnly)
    }

    /// Checks a token's signature and claims; returns the organisations its claim names.
    pub async fn verify(&self, token: &str) -> Result<Vec<String>, TenantAuthError> {
        let result = self.verify_inner(token).await;
        if let Err(error) = &result {
            tracing::debug!(code = error.code(), reason = %error, "tenant token refused");
        }
        result
    }

    async fn verify_inner(&self, token: &str) -> Result<Vec<String>, TenantAuthError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| TenantAuthError::Invalid("not a JWT"))?;
        let mut validation = self.inner.validation.clone();
        validation.algorithms = vec![header.alg];
        let claims = match header.alg {
            Algorithm::HS256 => first_verified(token, self.inner.hmac.iter(), &validation)?,
            Algorithm::RS256 | Algorithm::ES256 => {
                let keys = self.public_keys(header.kid.as_deref(), header.alg).await?;
                first_verified(token, keys.iter().map(|k| &k.key), &validation)?
            }
            _ => return Err(TenantAuthError::Invalid("unsupported algorithm")),
        };
        let claimed = organisations(claims.pointer(&self.inner.org_claim));
        if claimed.is_empty() {
            return Err(TenantAuthError::NoOrganisation);
        }
        Ok(claimed)
    }

    /// The configured public keys that may have signed a token with this `kid` and `alg`; a
    /// `kid` nobody knows makes the JWKS URLs be fetched again (at most every min interval).
    async fn public_keys(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<Vec<PublicKey>, TenantAuthError> {
        let mut keys = matching(&self.inner.files, kid, alg);
        if let Some(remote) = &self.inner.remote {
            let known = !keys.is_empty();
            keys.extend(remote.matching(kid, alg, known).await?);
        }
        Ok(keys)
    }
}

/// Tries each key; the first whose signature verifies decides (its claim checks included).
fn first_verified<'a>(
    token: &str,
    keys: impl Iterator<Item = &'a DecodingKey>,
    validation: &Validation,
) -> Result<Value, TenantAuthError> {
    for key in keys {
        match jsonwebtoken::decode::<Value>(token, key, validation) {
            Ok(data) => return Ok(data.claims),
            Err(error) => match error.kind() {
                ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm => continue,
                ErrorKind::ExpiredSignature => return Err(TenantAuthError::Expired),
                ErrorKind::InvalidIssuer => return Err(TenantAuthError::Invalid("wrong issuer")),
                ErrorKind::InvalidAudience => {
                    return Err(TenantAuthError::Invalid("wrong audience"));
                }
                ErrorKind::ImmatureSignature => {
                    return Err(TenantAuthError::Invalid("not valid yet"));
                }
                ErrorKind::MissingRequiredClaim(_) | ErrorKind::InvalidClaimFormat(_) => {
                    return Err(TenantAuthError::Invalid(
                        "a required claim is missing or malformed",
                    ));
                }
                _ => return Err(TenantAuthError::Invalid("malformed token")),
            },
        }
    }
    Err(TenantAuthError::Invalid("the signature matches no configured key"))
}

/// A claim naming organisations: a string, a number, a list of them, or an object whose keys
/// are organisations (as Keycloak's `organization` claim with attributes).
fn organisations(claim: Option<&Value>) -> Vec<String> {
    let one = |value: &Value| match value {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    match claim {
        Some(Value::Array(items)) => items.iter().filter_map(one).collect(),
        Some(Value::Object(map)) => map.keys().cloned().collect(),
        Some(value) => one(value).into_iter().collect(),
        None => Vec::new(),
    }
}

/// Extractor of tenant-scoped routes: the caller may read the organisation named by the route's
/// `{org_id}` segment ([`TenantAuth::authorize`]).
#[derive(Debug, Clone)]
pub struct TenantAccess {
    pub caller: Caller,
}

impl FromRequest for TenantAccess {
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            let auth = registered(&req)?;
            let org_id = req
                .match_info()
                .get(ORG_PATH_PARAM)
                .ok_or(TenantAuthError::Misconfigured("the route has no {org_id} segment"))?;
            let caller = auth.authorize(&req, org_id).await?;
            Ok(TenantAccess { caller })
        })
    }
}

/// Extractor of cross-tenant routes: the service token only ([`TenantAuth::require_service`]).
#[derive(Debug, Clone, Copy)]
pub struct ServiceOnly;

impl FromRequest for ServiceOnly {
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            registered(&req)?.require_service(&req).await?;
            Ok(ServiceOnly)
        })
    }
}

fn registered(req: &HttpRequest) -> Result<web::Data<TenantAuth>, TenantAuthError> {
    req.app_data::<web::Data<TenantAuth>>()
        .cloned()
        .ok_or(TenantAuthError::Misconfigured("TenantAuth is not registered as app data"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn claims_name_organisations_as_a_string_a_list_or_object_keys() {
        let claims = serde_json::json!({
            "org_id": "o1",
            "orgs": ["o2", 3],
            "organization": { "o4": { "id": "x" } },
            "empty": "",
        });
        assert_eq!(organisations(claims.pointer("/org_id")), ["o1"]);
        assert_eq!(organisations(claims.pointer("/orgs")), ["o2", "3"]);
        assert_eq!(organisations(claims.pointer("/organization")), ["o4"]);
        assert!(organisations(claims.pointer("/empty")).is_empty());
        assert!(organisations(claims.pointer("/missing")).is_empty());
    }
}

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
use std::time::{Duration, Instant};

use actix_web::dev::Payload;
use actix_web::http::StatusCode;
use actix_web::http::header::{HeaderValue, WWW_AUTHENTICATE};
use actix_web::{FromRequest, HttpRequest, HttpResponse, ResponseError, web};
use chrono::{DateTime, Utc};
use futures::future::{BoxFuture, LocalBoxFuture};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::ExposeSecret;
use serde_json::{Map, Value};

use crate::auth;
use crate::error::{error_response, server_error};
use crate::settings::TenantAuthSettings;

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

/// A public key of a JWKS, with what it may verify.
#[derive(Clone)]
struct PublicKey {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
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

fn matching(keys: &[PublicKey], kid: Option<&str>, alg: Algorithm) -> Vec<PublicKey> {
    keys.iter()
        .filter(|k| k.alg == alg && (kid.is_none() || k.kid.as_deref() == kid))
        .cloned()
        .collect()
}

/// The RS256 / ES256 signing keys of a JWKS document; keys of other kinds or uses are skipped
/// (one the crate cannot read does not hide the others).
fn parse_jwks(text: &str) -> Result<Vec<PublicKey>, String> {
    let document: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let Some(entries) = document.get("keys").and_then(Value::as_array) else {
        return Err("not a JWKS document (no \"keys\" array)".to_owned());
    };
    let mut keys = Vec::new();
    for entry in entries {
        let Ok(jwk) = serde_json::from_value::<Jwk>(entry.clone()) else {
            continue;
        };
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            continue;
        }
        let alg = match (&jwk.common.key_algorithm, &jwk.algorithm) {
            (Some(KeyAlgorithm::RS256), AlgorithmParameters::RSA(_))
            | (None, AlgorithmParameters::RSA(_)) => Algorithm::RS256,
            (Some(KeyAlgorithm::ES256), AlgorithmParameters::EllipticCurve(ec))
            | (None, AlgorithmParameters::EllipticCurve(ec))
                if ec.curve == EllipticCurve::P256 =>
            {
                Algorithm::ES256
            }
            _ => continue,
        };
        let Ok(key) = DecodingKey::from_jwk(&jwk) else {
            continue;
        };
        keys.push(PublicKey { kid: jwk.common.key_id.clone(), alg, key });
    }
    Ok(keys)
}

#[derive(Debug, Default)]
struct FetchState {
    /// Last attempt, successful or not: unknown `kid`s refetch at most every `min_interval`.
    attempted: Option<Instant>,
    /// Last time every URL answered: keys older than `max_age` are fetched again.
    succeeded: Option<Instant>,
}

/// Keys from JWKS URLs, one list per URL (a URL that fails keeps its last keys).
struct RemoteKeys {
    urls: Vec<String>,
    http: reqwest::Client,
    keys: RwLock<Vec<Vec<PublicKey>>>,
    state: std::sync::Mutex<FetchState>,
    /// Held while fetching: one fetch at a time.
    fetching: tokio::sync::Mutex<()>,
    min_interval: Duration,
    max_age: Duration,
}

impl RemoteKeys {
    fn fresh_copy(&self) -> Self {
        Self {
            urls: self.urls.clone(),
            http: self.http.clone(),
            keys: RwLock::new(vec![Vec::new(); self.urls.len()]),
            state: std::sync::Mutex::new(FetchState::default()),
            fetching: tokio::sync::Mutex::new(()),
            min_interval: self.min_interval,
            max_age: self.max_age,
        }
    }

    fn lookup(&self, kid: Option<&str>, alg: Algorithm) -> Vec<PublicKey> {
        let keys = self.keys.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        keys.iter().flat_map(|list| matching(list, kid, alg)).collect()
    }

    /// Matching keys; fetches first when never fetched, when the keys are older than `max_age`,
    /// or when nothing matches a named `kid` (`known_elsewhere`: a file key does). One fetch at
    /// a time; a request that waited for it looks again before fetching itself.
    async fn matching(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
        known_elsewhere: bool,
    ) -> Result<Vec<PublicKey>, TenantAuthError> {
        let keys = self.lookup(kid, alg);
        let unknown_kid = kid.is_some() && keys.is_empty() && !known_elsewhere;
        if !self.should_fetch(unknown_kid) {
            return Ok(keys);
        }
        let _one_fetch = self.fetching.lock().await;
        let keys = self.lookup(kid, alg);
        let unknown_kid = kid.is_some() && keys.is_empty() && !known_elsewhere;
        if !self.should_fetch(unknown_kid) {
            return Ok(keys);
        }
        let now = Instant::now();
        self.state().attempted = Some(now);
        let mut first_error = None;
        for (index, url) in self.urls.iter().enumerate() {
            match self.fetch(url).await {
                Ok(fetched) => {
                    let mut keys =
                        self.keys.write().unwrap_or_else(std::sync::PoisonError::into_inner);
                    if let Some(slot) = keys.get_mut(index) {
                        *slot = fetched;
                    }
                }
                Err(error) => {
                    let chain = crate::error::error_chain(error.as_ref());
                    tracing::warn!(url = %url, error = %chain, "JWKS fetch failed; keeping its last keys");
                    first_error.get_or_insert(error);
                }
            }
        }
        if first_error.is_none() {
            self.state().succeeded = Some(now);
        }
        let keys = self.lookup(kid, alg);
        let have_any = self
            .keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .any(|list| !list.is_empty());
        match first_error {
            // No key at all to judge the token by: a retry may succeed, so not a 401.
            Some(error) if !have_any && !known_elsewhere => {
                Err(TenantAuthError::Unavailable(anyhow::anyhow!(error)))
            }
            _ => Ok(keys),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, FetchState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Never fetched, older than `max_age`, or an unknown `kid`; and not attempted within
    /// `min_interval` (so tokens with made-up `kid`s cannot make this service hammer the URL).
    fn should_fetch(&self, unknown_kid: bool) -> bool {
        let state = self.state();
        let now = Instant::now();
        let stale = state.succeeded.is_none_or(|at| now.duration_since(at) >= self.max_age);
        let may_retry =
            state.attempted.is_none_or(|at| now.duration_since(at) >= self.min_interval);
        (stale || unknown_kid) && may_retry
    }

    #[tracing::instrument(name = "jwks.fetch", skip(self))]
    async fn fetch(
        &self,
        url: &str,
    ) -> Result<Vec<PublicKey>, Box<dyn std::error::Error + Send + Sync + 'static>> {
        let response = self.http.get(url).send().await?.error_for_status()?;
        let text = response.text().await?;
        let keys = parse_jwks(&text)?;
        tracing::info!(keys = keys.len(), "JWKS fetched");
        Ok(keys)
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

/// Mints HS256 tenant tokens with the first configured secret, the organisation at the
/// configured claim pointer, and `iss` / `aud` when configured.
#[derive(Clone)]
pub struct TenantTokenSigner {
    key: EncodingKey,
    org_claim: String,
    issuer: Option<String>,
    audience: Option<String>,
    ttl_secs: i64,
}

impl std::fmt::Debug for TenantTokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantTokenSigner")
            .field("org_claim", &self.org_claim)
            .field("ttl_secs", &self.ttl_secs)
            .finish_non_exhaustive()
    }
}

/// A minted token and when it expires.
#[derive(Clone)]
pub struct MintedToken {
    pub token: String,
    pub expires_at: DateTime<Utc>,
}

impl std::fmt::Debug for MintedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MintedToken")
            .field("token", &"[REDACTED]")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

impl TenantTokenSigner {
    /// `None` when no HS256 secret is configured (this service then mints nothing).
    pub fn from_settings(
        settings: &TenantAuthSettings,
    ) -> Result<Option<Self>, TenantAuthSetupError> {
        let Some(secret) = settings.hs256_secrets.first() else {
            return Ok(None);
        };
        let key = EncodingKey::from_secret(secret.expose_secret().as_bytes())
            .map_err(TenantAuthSetupError::Secret)?;
        Ok(Some(Self {
            key,
            org_claim: settings.org_claim.clone(),
            issuer: settings.issuers.first().cloned(),
            audience: settings.audiences.first().cloned(),
            // Validated to 1..=86400.
            ttl_secs: i64::try_from(settings.mint_ttl_secs).unwrap_or(900),
        }))
    }

    /// A token for `org_id`, valid for `tenant_auth.mint_ttl_secs` from now.
    pub fn mint(&self, org_id: &str) -> Result<MintedToken, jsonwebtoken::errors::Error> {
        let now = Utc::now().timestamp();
        let exp = now.saturating_add(self.ttl_secs);
        let mut claims = Map::new();
        claims.insert("iat".to_owned(), now.into());
        claims.insert("exp".to_owned(), exp.into());
        if let Some(issuer) = &self.issuer {
            claims.insert("iss".to_owned(), issuer.clone().into());
        }
        if let Some(audience) = &self.audience {
            claims.insert("aud".to_owned(), audience.clone().into());
        }
        insert_at_pointer(&mut claims, &self.org_claim, Value::String(org_id.to_owned()));
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.key)?;
        let expires_at = DateTime::from_timestamp(exp, 0).unwrap_or_else(Utc::now);
        Ok(MintedToken { token, expires_at })
    }
}

/// Puts `value` at a JSON pointer, creating the objects on the way (`/o/id` → `{"o":{"id":…}}`).
fn insert_at_pointer(claims: &mut Map<String, Value>, pointer: &str, value: Value) {
    let parts: Vec<String> =
        pointer.split('/').skip(1).map(|p| p.replace("~1", "/").replace("~0", "~")).collect();
    let Some((last, path)) = parts.split_last() else {
        return;
    };
    let mut node = claims;
    for part in path {
        let entry = node.entry(part.clone()).or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        let Value::Object(next) = entry else {
            return;
        };
        node = next;
    }
    node.insert(last.clone(), value);
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

    #[test]
    fn a_minted_claim_lands_at_its_pointer_with_escapes() {
        let mut claims = Map::new();
        insert_at_pointer(&mut claims, "/o/id", "a".into());
        insert_at_pointer(&mut claims, "/https:~1~1example.com~1org", "b".into());
        let claims = Value::Object(claims);
        assert_eq!(claims.pointer("/o/id"), Some(&Value::from("a")));
        assert_eq!(claims["https://example.com/org"], "b");
    }
}

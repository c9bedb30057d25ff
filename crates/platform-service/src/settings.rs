//! Layered configuration: embedded commented defaults, then an environment file, then `APP__…` variables.
//!
//! Order (later wins):
//! 1. [`COMMON_DEFAULTS`] (`config/common.toml` of this crate): the sections every service shares;
//! 2. the service's `config/default.toml`: its own sections and the shared values it sets
//!    differently (both compiled into the binary, so it runs from any directory);
//! 3. the file named by `APP_CONFIG_FILE`, or else `config/<APP_ENVIRONMENT>.toml` when it exists;
//! 4. environment variables `APP__<SECTION>__<KEY>` (e.g. `APP__REDIS__URL`, `APP__HTTP__PORT`).
//!
//! Defaults are written once, in those TOML files: the settings structs of this crate and of the
//! services have no `Default` or serde defaults of their own, so a key missing from every layer is
//! an error naming it. The files are commented for operators, and the deployment checks read the
//! keys from them. (platform-redis's settings types keep code defaults: that library is also used
//! without any configuration file.)
//!
//! Secrets are [`SecretString`]s: their `Debug` prints `[REDACTED]`, so logging a settings struct
//! never leaks them. Every service validates its settings right after loading; the error names the
//! setting at fault.

use std::collections::HashMap;

use config::{Config, Environment, File, FileFormat};
use platform_redis::RedisSettings;
use platform_redis::ratelimit::RateLimitSettings;
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

/// Why settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// A source could not be read or a value has the wrong type; `config` names the key.
    #[error("configuration error: {0}")]
    Load(#[from] config::ConfigError),
    /// A value is present but unusable.
    #[error("invalid setting `{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
}

impl SettingsError {
    pub fn invalid(key: &'static str, reason: impl Into<String>) -> Self {
        Self::Invalid { key, reason: reason.into() }
    }
}

/// Fails on the first of `settings` (name, value) whose value is 0, naming it.
pub fn require_positive(settings: &[(&'static str, u64)]) -> Result<(), SettingsError> {
    match settings.iter().find(|(_, value)| *value == 0) {
        Some((key, _)) => Err(SettingsError::invalid(key, "must be > 0")),
        None => Ok(()),
    }
}

/// The shared sections' defaults, layered under every service's own file.
pub const COMMON_DEFAULTS: &str = include_str!("../config/common.toml");

/// Loads `T` from the layers described in the module doc. `defaults` is the service's embedded
/// `config/default.toml`.
pub fn load<T: DeserializeOwned>(defaults: &str) -> Result<T, SettingsError> {
    let file = std::env::var("APP_CONFIG_FILE")
        .map(|path| (path, true))
        .or_else(|_| std::env::var("APP_ENVIRONMENT").map(|env| (format!("config/{env}"), false)))
        .ok();
    load_from(defaults, file, None)
}

/// [`load`] with its inputs explicit: the service's defaults (layered over [`COMMON_DEFAULTS`]), the
/// optional file (path, required) and, instead of the process environment, a map of `APP__…`
/// variables (for tests).
pub fn load_from<T: DeserializeOwned>(
    defaults: &str,
    file: Option<(String, bool)>,
    env: Option<HashMap<String, String>>,
) -> Result<T, SettingsError> {
    let mut builder = Config::builder()
        .add_source(File::from_str(COMMON_DEFAULTS, FileFormat::Toml))
        .add_source(File::from_str(defaults, FileFormat::Toml));
    if let Some((path, required)) = file {
        builder = builder.add_source(File::with_name(&path).required(required));
    }
    let settings = builder
        .add_source(
            Environment::with_prefix("APP")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .source(env),
        )
        .build()?;
    Ok(settings.try_deserialize()?)
}

/// `[http]`: where the service listens and how it stops.
#[derive(Debug, Clone, Deserialize)]
pub struct HttpSettings {
    pub host: String,
    pub port: u16,
    /// Worker threads; 0 means one per core.
    pub workers: usize,
    /// After SIGTERM, how long `/readyz` says "draining" before the listener closes, so load
    /// balancers stop sending traffic first (Kubernetes: keep below terminationGracePeriodSeconds).
    pub drain_delay_ms: u64,
    /// How long in-flight requests get to finish once the listener closed.
    pub shutdown_timeout_secs: u64,
    /// Largest accepted request body.
    pub body_limit_bytes: usize,
    /// Dependencies `/readyz` requires (`redis`, `postgres`). A service that keeps serving on a
    /// fallback without one leaves it out, so Kubernetes keeps routing to it during that outage
    /// (the checks are reported either way).
    #[serde(deserialize_with = "string_list")]
    pub ready_requires: Vec<String>,
    /// Longest time a request body may take to arrive, counted from when its headers were read;
    /// past it the request is answered 408 and the connection closed (slow senders cannot hold
    /// connections open).
    pub body_timeout_ms: u64,
    /// Longest time the request line and headers may take to arrive (a slower client gets 408
    /// from the HTTP layer and is disconnected).
    pub header_timeout_ms: u64,
    /// Concurrent connections each worker thread serves; further ones wait in the listen backlog.
    pub max_connections_per_worker: usize,
    /// Browser origins (`https://shop.example.com`) allowed to call the routes in `cors_paths`
    /// with credentials. Empty: no CORS headers at all.
    #[serde(deserialize_with = "string_list")]
    pub cors_allowed_origins: Vec<String>,
    /// Paths CORS applies to: an entry ending in `/` covers everything below it, any other entry
    /// that exact path. Each service lists its public read, live and checkout routes.
    #[serde(deserialize_with = "string_list")]
    pub cors_paths: Vec<String>,
}

/// What `/readyz` may require.
pub const READY_DEPENDENCIES: [&str; 2] = ["redis", "postgres"];

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// A TOML list, or one comma-separated string (what an `APP__…` variable can carry); items
/// trimmed, empty ones dropped (so `""` is the empty list).
pub fn string_list<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    let items = match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(text) => text.split(',').map(str::to_owned).collect(),
        OneOrMany::Many(items) => items,
    };
    Ok(items.into_iter().map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect())
}

/// `[database]`: the service's own Postgres database.
#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseSettings {
    pub url: SecretString,
    pub max_connections: u32,
    pub acquire_timeout_ms: u64,
}

/// `[auth]`: the bearer token of admin and service-to-service routes.
#[derive(Debug, Clone, Deserialize)]
pub struct AuthSettings {
    pub admin_token: SecretString,
}

/// `[tenant_auth]`: tenant tokens, the bearer JWTs that let one organisation read its own data
/// (checked by `TenantAuth`, minted by `TenantTokenSigner`, both in the `tenant` module).
/// With no key configured no tenant token is accepted and only the service token works.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantAuthSettings {
    /// Where the organisation is in the claims, as a JSON pointer (`/org_id`, `/o/id`, …): each
    /// identity provider puts it somewhere else. A string, a list of strings, or an object whose
    /// keys are organisations.
    pub org_claim: String,
    /// Accepted `iss` values; empty: not checked.
    #[serde(deserialize_with = "string_list")]
    pub issuers: Vec<String>,
    /// Accepted `aud` values (the token must name one); empty: not checked.
    #[serde(deserialize_with = "string_list")]
    pub audiences: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway_secs: u64,
    /// HS256 secrets, each accepted; the first signs the tokens this service mints. List the
    /// new one first and keep the old one until its tokens expired to rotate without downtime.
    #[serde(deserialize_with = "secret_list")]
    pub hs256_secrets: Vec<SecretString>,
    /// JWKS documents (RS256 / ES256 public keys) read at start.
    #[serde(deserialize_with = "string_list")]
    pub jwks_files: Vec<String>,
    /// JWKS documents fetched over HTTP(S) on first use, again when a token names an unknown
    /// `kid` (at most every `jwks_refetch_min_interval_ms`) and once older than `jwks_max_age_secs`.
    #[serde(deserialize_with = "string_list")]
    pub jwks_urls: Vec<String>,
    pub jwks_refetch_min_interval_ms: u64,
    pub jwks_max_age_secs: u64,
    pub jwks_timeout_ms: u64,
    /// Life of the tokens this service mints.
    pub mint_ttl_secs: u64,
}

/// Shortest accepted HS256 secret: the hash's own size (RFC 7518 §3.2).
pub const MIN_HS256_SECRET_BYTES: usize = 32;

impl TenantAuthSettings {
    /// Checks what the types cannot; the error names the setting.
    pub fn validate(&self) -> Result<(), SettingsError> {
        if !self.org_claim.starts_with('/') {
            return Err(SettingsError::invalid(
                "tenant_auth.org_claim",
                "must be a JSON pointer such as \"/org_id\"",
            ));
        }
        if self.hs256_secrets.iter().any(|s| s.expose_secret().len() < MIN_HS256_SECRET_BYTES) {
            return Err(SettingsError::invalid(
                "tenant_auth.hs256_secrets",
                format!("each secret must be at least {MIN_HS256_SECRET_BYTES} bytes"),
            ));
        }
        if self.jwks_urls.iter().any(|u| !(u.starts_with("http://") || u.starts_with("https://"))) {
            return Err(SettingsError::invalid(
                "tenant_auth.jwks_urls",
                "must be http:// or https:// URLs",
            ));
        }
        if self.jwks_timeout_ms == 0 {
            return Err(SettingsError::invalid("tenant_auth.jwks_timeout_ms", "must be > 0"));
        }
        if !(1..=86_400).contains(&self.mint_ttl_secs) {
            return Err(SettingsError::invalid("tenant_auth.mint_ttl_secs", "must be 1..=86400"));
        }
        Ok(())
    }
}

/// [`string_list`] of secrets: one comma-separated `APP__…` value can carry several.
pub fn secret_list<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<SecretString>, D::Error> {
    Ok(string_list(deserializer)?.into_iter().map(SecretString::from).collect())
}

/// Log output format.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object a line (containers, log shippers).
    Json,
    /// Human-readable lines (a terminal).
    Pretty,
}

/// `[telemetry]`: logs and traces.
#[derive(Debug, Clone, Deserialize)]
pub struct TelemetrySettings {
    pub format: LogFormat,
    /// `EnvFilter` directives; `RUST_LOG` wins when set.
    pub filter: String,
    /// OTLP/HTTP endpoint (e.g. `http://otel-collector:4318`); traces are exported only when set.
    pub otlp_endpoint: Option<String>,
}

/// Sections every service has. Services embed it with `#[serde(flatten)]`.
#[derive(Debug, Clone, Deserialize)]
pub struct CommonSettings {
    pub http: HttpSettings,
    pub redis: RedisSettings,
    pub auth: AuthSettings,
    pub telemetry: TelemetrySettings,
    /// Named rate-limit policies (defaults in `common.toml`; entries here override or add).
    pub rate_limit: RateLimitSettings,
    /// Tenant tokens (accepted only where keys are configured).
    pub tenant_auth: TenantAuthSettings,
}

impl CommonSettings {
    /// Checks what the types cannot; the error names the setting.
    pub fn validate(&self) -> Result<(), SettingsError> {
        if self.http.host.trim().is_empty() {
            return Err(SettingsError::invalid("http.host", "must not be empty"));
        }
        require_positive(&[
            ("http.body_limit_bytes", self.http.body_limit_bytes as u64),
            ("http.body_timeout_ms", self.http.body_timeout_ms),
            ("http.header_timeout_ms", self.http.header_timeout_ms),
            ("http.max_connections_per_worker", self.http.max_connections_per_worker as u64),
        ])?;
        if let Some(bad) = self.http.cors_allowed_origins.iter().find(|o| !is_origin(o)) {
            return Err(SettingsError::invalid(
                "http.cors_allowed_origins",
                format!("{bad:?} is not an origin (scheme://host[:port], http or https, no path)"),
            ));
        }
        if let Some(bad) = self.http.cors_paths.iter().find(|p| !p.starts_with('/')) {
            return Err(SettingsError::invalid(
                "http.cors_paths",
                format!("{bad:?} must start with /"),
            ));
        }
        if let Some(unknown) =
            self.http.ready_requires.iter().find(|d| !READY_DEPENDENCIES.contains(&d.as_str()))
        {
            return Err(SettingsError::invalid(
                "http.ready_requires",
                format!("unknown dependency {unknown:?} (known: redis, postgres)"),
            ));
        }
        if self.auth.admin_token.expose_secret().len() < 8 {
            return Err(SettingsError::invalid(
                "auth.admin_token",
                "must be at least 8 characters (set APP__AUTH__ADMIN_TOKEN)",
            ));
        }
        if let Some(endpoint) = &self.telemetry.otlp_endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            return Err(SettingsError::invalid(
                "telemetry.otlp_endpoint",
                "must be an http:// or https:// URL",
            ));
        }
        self.tenant_auth.validate()?;
        self.rate_limit
            .validate()
            .map_err(|e| SettingsError::invalid("rate_limit", e.to_string()))?;
        self.redis.validate().map_err(|e| SettingsError::invalid("redis", e.to_string()))
    }

    /// Checks that setting `key` names a rate-limit policy that exists.
    pub fn require_policy(&self, key: &'static str, policy: &str) -> Result<(), SettingsError> {
        if self.rate_limit.effective_policies().contains_key(policy) {
            Ok(())
        } else {
            Err(SettingsError::invalid(key, format!("no rate-limit policy named `{policy}`")))
        }
    }
}

/// `scheme://host[:port]` with scheme http or https, as a browser sends it in `Origin`: no path,
/// no trailing slash, no wildcard (IPv6 literals are not accepted).
fn is_origin(origin: &str) -> bool {
    let Some(rest) = origin.strip_prefix("https://").or_else(|| origin.strip_prefix("http://"))
    else {
        return false;
    };
    let (host, port) = rest.split_once(':').map_or((rest, None), |(host, port)| (host, Some(port)));
    !host.is_empty()
        && host.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        && port.is_none_or(|p| p.parse::<u16>().is_ok())
}

impl DatabaseSettings {
    pub fn validate(&self) -> Result<(), SettingsError> {
        let url = self.url.expose_secret();
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(SettingsError::invalid(
                "database.url",
                "must be a postgres:// URL (set APP__DATABASE__URL)",
            ));
        }
        if self.max_connections == 0 {
            return Err(SettingsError::invalid("database.max_connections", "must be > 0"));
        }
        Ok(())
    }
}

/// What a service's settings struct implements to get [`load`]-based constructors.
pub trait ServiceSettings: DeserializeOwned + Sized {
    /// The service's embedded `config/default.toml`.
    const DEFAULTS: &'static str;

    /// The shared sections (telemetry, http, …) of these settings.
    fn common(&self) -> &CommonSettings;

    /// `[database]`, for a service that has one.
    fn database(&self) -> Option<&DatabaseSettings> {
        None
    }

    /// Checks what the types cannot in the service's own sections; the error names the setting.
    /// The shared sections and the database are checked before, by [`ServiceSettings::check`].
    fn validate(&self) -> Result<(), SettingsError>;

    /// Every check: the shared sections, the database, then the service's own.
    fn check(&self) -> Result<(), SettingsError> {
        self.common().validate()?;
        if let Some(database) = self.database() {
            database.validate()?;
        }
        self.validate()
    }

    /// Loads the layered configuration (module doc) and checks it.
    fn load() -> Result<Self, SettingsError> {
        let settings: Self = load(Self::DEFAULTS)?;
        settings.check()?;
        Ok(settings)
    }

    /// Defaults plus `APP__…` overrides from `vars` instead of the process environment (tests).
    fn from_overrides(vars: HashMap<String, String>) -> Result<Self, SettingsError> {
        let settings: Self = load_from(Self::DEFAULTS, None, Some(vars))?;
        settings.check()?;
        Ok(settings)
    }
}

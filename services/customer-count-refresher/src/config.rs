//! customer-count-refresher's settings: the shared sections and its own `[simpro]` (the upstream
//! and the walk), `[refresh]` (storage, lock, schedule) and `[realtime]` (the live id set);
//! defaults and comments: `config/default.toml`.

use std::time::Duration;

use platform_service::settings::{CommonSettings, ServiceSettings, SettingsError};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::domain::schedule::CronSchedule;

/// This service's configuration.
#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    #[serde(flatten)]
    pub common: CommonSettings,
    pub simpro: SimproSettings,
    pub refresh: RefreshSettings,
    pub realtime: RealtimeSettings,
}

impl ServiceSettings for Settings {
    const DEFAULTS: &'static str = include_str!("../config/default.toml");

    fn common(&self) -> &CommonSettings {
        &self.common
    }

    fn validate(&self) -> Result<(), SettingsError> {
        self.simpro.validate()?;
        self.refresh.validate()?;
        self.realtime.validate()
    }
}

/// Where simPRO is and how hard the walk may push it.
#[derive(Debug, Clone, Deserialize)]
pub struct SimproSettings {
    /// Tenant base URL, e.g. `https://acme.simprosuite.com` (no path).
    pub base_url: String,
    /// `companyID` of the invoice route; 0 on single-company builds.
    pub company_id: u64,
    /// OAuth2 bearer token. Secret: never logged.
    pub token: SecretString,
    /// Invoices per page; simPRO caps it at 250.
    pub page_size: u64,
    /// simPRO's `columns` list parameter: only these invoice fields are sent (`ID,Customer`: the
    /// count needs no more). Empty = the parameter is not sent (every field comes back).
    pub columns: String,
    /// Pages in flight at once.
    pub concurrency: usize,
    /// One request (connect + headers + body) may take this long, then it is retried.
    pub request_timeout_ms: u64,
    pub connect_timeout_ms: u64,
    /// Tries per page (first try included) on 5xx, 408, 429, timeouts and dropped connections.
    pub max_attempts: u32,
    /// Exponential backoff: `min(max, base * 2^(try-1))`, jittered to [half, full].
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    /// A `Retry-After` longer than this is capped (a broken header must not park the walk).
    pub max_retry_after_secs: u64,
    /// The whole walk (all pages, all retries) must finish within this.
    pub run_deadline_secs: u64,
}

impl SimproSettings {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
    pub fn run_deadline(&self) -> Duration {
        Duration::from_secs(self.run_deadline_secs)
    }

    fn validate(&self) -> Result<(), SettingsError> {
        if !(self.base_url.starts_with("http://") || self.base_url.starts_with("https://")) {
            return Err(SettingsError::invalid("simpro.base_url", "must be an http(s):// URL"));
        }
        if self.token.expose_secret().is_empty() {
            return Err(SettingsError::invalid("simpro.token", "must not be empty"));
        }
        if !self.columns.chars().all(|c| c.is_ascii_alphanumeric() || c == ',') {
            return Err(SettingsError::invalid(
                "simpro.columns",
                "must be a comma-separated list of field names, e.g. ID,Customer",
            ));
        }
        if !self.columns.is_empty() && !self.columns.split(',').any(|c| c == "Customer") {
            return Err(SettingsError::invalid(
                "simpro.columns",
                "must include Customer (the count reads Customer.ID)",
            ));
        }
        if !(1..=250).contains(&self.page_size) {
            return Err(SettingsError::invalid("simpro.page_size", "must be between 1 and 250"));
        }
        if !(1..=256).contains(&self.concurrency) {
            return Err(SettingsError::invalid("simpro.concurrency", "must be between 1 and 256"));
        }
        if self.max_attempts == 0 {
            return Err(SettingsError::invalid("simpro.max_attempts", "must be >= 1"));
        }
        if self.request_timeout_ms == 0 || self.run_deadline_secs == 0 {
            return Err(SettingsError::invalid(
                "simpro.request_timeout_ms / run_deadline_secs",
                "must be > 0",
            ));
        }
        if self.backoff_base_ms == 0 || self.backoff_max_ms < self.backoff_base_ms {
            return Err(SettingsError::invalid(
                "simpro.backoff_base_ms",
                "must be > 0 and <= simpro.backoff_max_ms",
            ));
        }
        Ok(())
    }
}

/// Storage, lock and schedule of the refresh.
#[derive(Debug, Clone, Deserialize)]
pub struct RefreshSettings {
    /// TTL of the fresh count in Redis.
    pub ttl_secs: u64,
    /// How long the last good count is kept to be served as stale when refreshes fail.
    pub retention_secs: u64,
    /// Cron expression (5 fields, UTC; a 6th leading seconds field is accepted).
    pub schedule: String,
    /// false = no in-process schedule (e.g. a Kubernetes CronJob runs `refresh-once`).
    pub schedule_enabled: bool,
    /// Each replica waits a random 0..=jitter after each cron tick, so replicas do not race
    /// for the lock at the same instant (the lock still decides who runs).
    pub schedule_jitter_secs: u64,
    /// Start a background refresh when no count is stored: at start-up, on `GET /api/init` and
    /// on a read that finds nothing.
    pub refresh_when_empty: bool,
    /// Lease of the refresh lock; renewed every third of it while the walk runs.
    pub lock_ttl_ms: u64,
}

impl RefreshSettings {
    pub fn ttl(&self) -> Duration {
        Duration::from_secs(self.ttl_secs)
    }
    pub fn retention(&self) -> Duration {
        Duration::from_secs(self.retention_secs)
    }
    pub fn lock_ttl(&self) -> Duration {
        Duration::from_millis(self.lock_ttl_ms)
    }

    fn validate(&self) -> Result<(), SettingsError> {
        if self.ttl_secs == 0 {
            return Err(SettingsError::invalid("refresh.ttl_secs", "must be > 0"));
        }
        if self.retention_secs < self.ttl_secs {
            return Err(SettingsError::invalid(
                "refresh.retention_secs",
                "must be >= refresh.ttl_secs",
            ));
        }
        if self.lock_ttl_ms < 300 {
            return Err(SettingsError::invalid("refresh.lock_ttl_ms", "must be >= 300"));
        }
        CronSchedule::parse(&self.schedule)
            .map_err(|e| SettingsError::invalid("refresh.schedule", e.to_string()))?;
        Ok(())
    }
}

/// The optional real-time mode: customer ids of new invoices `SADD`ed to a live set, `SCARD` for
/// the count, the set replaced by each full walk's exact ids.
#[derive(Debug, Clone, Deserialize)]
pub struct RealtimeSettings {
    /// Off by default: the intake route answers 404 and reads report the walked count.
    pub enabled: bool,
    /// Most invoices one intake request may carry (one Redis script call per request).
    pub max_batch: usize,
    /// Ids per `SADD` when a walk writes its exact set to Redis before the swap.
    pub stage_chunk: usize,
}

impl RealtimeSettings {
    fn validate(&self) -> Result<(), SettingsError> {
        // The intake script passes the ids as one argument list (Lua's unpack limit is ~8000).
        if !(1..=5000).contains(&self.max_batch) {
            return Err(SettingsError::invalid("realtime.max_batch", "must be between 1 and 5000"));
        }
        if !(1..=100_000).contains(&self.stage_chunk) {
            return Err(SettingsError::invalid(
                "realtime.stage_chunk",
                "must be between 1 and 100000",
            ));
        }
        Ok(())
    }
}

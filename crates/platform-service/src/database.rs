//! The Postgres pool: created lazily so a service starts (and reports not-ready) while Postgres is down.

use std::str::FromStr;
use std::time::Duration;

use secrecy::ExposeSecret;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::settings::{DatabaseSettings, SettingsError};

/// A pool that connects on first use; queries fail after `acquire_timeout_ms` while Postgres is down.
pub fn connect_lazy(settings: &DatabaseSettings) -> Result<PgPool, SettingsError> {
    let options = PgConnectOptions::from_str(settings.url.expose_secret())
        .map_err(|e| SettingsError::invalid("database.url", e.to_string()))?
        .application_name("platform");
    Ok(PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(Duration::from_millis(settings.acquire_timeout_ms))
        .connect_lazy_with(options))
}

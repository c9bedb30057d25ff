//! The Postgres pool (created lazily so a service starts, and reports not-ready, while Postgres is
//! down) and the split of Postgres errors into permanent ones and outages.

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

/// The reason Postgres (or sqlx, before sending) refused a statement for good, or `None` when
/// the error may pass with time and the work should be retried.
///
/// Permanent: SQLSTATE class `22` (data exception: a value out of range, a NUL character in
/// text, an invalid encoding) and `23` (integrity constraint violation), and a value sqlx could
/// not encode. The same statement gets the same answer on every retry, so a stream consumer
/// dead-letters the entry with this reason at once. Everything else (I/O, TLS, pool timeout or
/// closed, server shutting down, serialization failure, deadlock, out of resources, a
/// protocol or decoding problem) is treated as an outage.
pub fn permanent_error(error: &sqlx::Error) -> Option<String> {
    match error {
        sqlx::Error::Database(db) => {
            let code = db.code()?;
            (code.starts_with("22") || code.starts_with("23"))
                .then(|| format!("postgres refused it ({code}): {}", db.message()))
        }
        sqlx::Error::Encode(why) => Some(format!("value cannot be sent to postgres: {why}")),
        _ => None,
    }
}

/// Whether Postgres refused a value the request carried (SQLSTATE class `22`: a NUL character in
/// text, a date or number out of range), or sqlx could not encode it: the caller's input, a 400,
/// not an outage or a bug. Routes check their input first; this keeps anything they miss a 4xx.
pub fn is_invalid_value(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => db.code().is_some_and(|code| code.starts_with("22")),
        sqlx::Error::Encode(_) => true,
        _ => false,
    }
}

/// The message of a 400 for [`is_invalid_value`].
pub const INVALID_VALUE: &str = "The request holds a value that cannot be stored (a NUL character, a date or number out of range)";

/// Whether a database error means "Postgres is not reachable" rather than "this query is wrong".
pub fn is_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_) => true,
        // A server going down tells sessions it ends them (57P01 admin shutdown, 57P02 crash
        // shutdown, 57P03 cannot connect now) or fails them as connection exceptions (08xxx):
        // an outage, not a bug in the query.
        sqlx::Error::Database(db) => {
            db.code().is_some_and(|code| code.starts_with("57P") || code.starts_with("08"))
        }
        _ => false,
    }
}

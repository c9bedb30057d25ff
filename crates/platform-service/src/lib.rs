//! Service plumbing shared by the five binaries: configuration, telemetry, the JSON error
//! contract, health / readiness / metrics routes, the admin bearer-token guard, and the
//! `Application` that binds, serves and shuts down gracefully, and the scrape-time metrics of the
//! stream consumer groups (`stream_metrics`).

pub mod app;
pub mod auth;
pub mod database;
pub mod error;
pub mod health;
pub mod metrics;
pub mod settings;
pub mod stream_metrics;
pub mod telemetry;

pub use app::{AppContext, Application, Shutdown, connect_context};
pub use auth::RequireAdmin;
pub use error::{ErrorBody, error_response, server_error};
pub use settings::{CommonSettings, DatabaseSettings, SettingsError};
pub use telemetry::{TelemetryGuard, init_telemetry};

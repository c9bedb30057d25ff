//! Service plumbing shared by the five binaries: configuration, telemetry, the JSON error
//! contract, health / readiness / metrics routes (with the scrape-time metrics of the stream
//! consumer groups, `stream_metrics`), the admin bearer-token guard, tenant tokens, the HTTP edge
//! (body deadline, CORS), the `Application` that binds, serves and shuts down gracefully, the
//! `run` every `main` calls, the OpenAPI document (`openapi`), and the outbox relay (`relay`) of the services that publish from
//! Postgres.

pub mod app;
pub mod auth;
pub mod body_timeout;
pub mod context;
pub mod cors;
pub mod database;
pub mod error;
pub mod health;
pub mod metrics;
pub mod openapi;
pub mod relay;
pub mod runner;
pub mod settings;
pub mod stream_metrics;
pub mod telemetry;
pub mod tenant;

pub use app::Application;
pub use auth::RequireAdmin;
pub use context::{AppContext, Shutdown, connect_context};
pub use error::{ErrorBody, error_response, server_error};
pub use runner::{Serve, run, start};
pub use settings::{CommonSettings, DatabaseSettings, SettingsError};
pub use telemetry::{TelemetryGuard, init_telemetry};
pub use tenant::{Caller, ServiceOnly, TenantAccess, TenantAuth, TenantTokenSigner};

//! customer-count-refresher: the exact unique-customer count over all simPRO invoices, refreshed in the background.
//!
//! `main.rs` loads [`Settings`], starts telemetry and runs the [`Application`] that [`build`]
//! returns; tests call [`build`] with port 0 and real Redis and Postgres.

use platform_service::settings::{CommonSettings, ServiceSettings, SettingsError};
use platform_service::{Application, connect_context};
use secrecy::SecretString;
use serde::Deserialize;

/// The service name in logs, traces and metrics.
pub const SERVICE: &str = "customer-count-refresher";

/// This service's configuration.
#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    #[serde(flatten)]
    pub common: CommonSettings,
}

impl ServiceSettings for Settings {
    const DEFAULTS: &'static str = include_str!("../config/default.toml");

    fn validate(&self) -> Result<(), SettingsError> {
        self.common.validate()?;
        Ok(())
    }
}

/// Connects the dependencies and binds the HTTP server (not yet serving).
pub async fn build(settings: Settings) -> anyhow::Result<Application> {
    let context = connect_context(SERVICE, &settings.common, None).await?;
    let admin_token: SecretString = settings.common.auth.admin_token.clone();
    Ok(Application::build(&settings.common.http, admin_token, context, |_cfg| {})?)
}

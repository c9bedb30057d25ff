//! webhook-ingest's settings: the shared sections, its database (the ledger) and `[webhook]`
//! (signing secrets, the event contract, the group commit, the relay); defaults and comments:
//! `config/default.toml`.

use platform_service::settings::{
    CommonSettings, DatabaseSettings, ServiceSettings, SettingsError, require_positive,
    secret_list, string_list,
};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// This service's configuration.
#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    #[serde(flatten)]
    pub common: CommonSettings,
    pub database: DatabaseSettings,
    pub webhook: WebhookSettings,
}

/// `[webhook]`: see `config/default.toml` for each key.
#[derive(Debug, Clone, Deserialize)]
pub struct WebhookSettings {
    #[serde(deserialize_with = "secret_list")]
    pub secrets: Vec<SecretString>,
    pub tolerance_secs: u64,
    #[serde(deserialize_with = "string_list")]
    pub stream_event_types: Vec<String>,
    pub stream_max_len: usize,
    pub rate_limit: bool,
    pub rate_limit_policy: String,
    pub ledger_batch_max_rows: usize,
    pub ledger_batch_linger_ms: u64,
    pub ledger_batch_committers: usize,
    pub relay_batch: usize,
    pub relay_poll_ms: u64,
    pub relay_checkpoint_ms: u64,
}

impl WebhookSettings {
    fn validate(&self) -> Result<(), SettingsError> {
        if self.secrets.is_empty() || self.secrets.iter().any(|s| s.expose_secret().is_empty()) {
            return Err(SettingsError::invalid(
                "webhook.secrets",
                "at least one non-empty signing secret is required (set APP__WEBHOOK__SECRETS)",
            ));
        }
        require_positive(&[
            ("webhook.tolerance_secs", self.tolerance_secs),
            ("webhook.stream_max_len", self.stream_max_len as u64),
        ])?;
        if !(1..=10_000).contains(&self.relay_batch) {
            return Err(SettingsError::invalid(
                "webhook.relay_batch",
                "must be between 1 and 10000",
            ));
        }
        if !(1..=60_000).contains(&self.relay_poll_ms) {
            return Err(SettingsError::invalid(
                "webhook.relay_poll_ms",
                "must be between 1 and 60000",
            ));
        }
        if !(100..=600_000).contains(&self.relay_checkpoint_ms) {
            return Err(SettingsError::invalid(
                "webhook.relay_checkpoint_ms",
                "must be between 100 and 600000",
            ));
        }
        if !(1..=1000).contains(&self.ledger_batch_max_rows) {
            return Err(SettingsError::invalid(
                "webhook.ledger_batch_max_rows",
                "must be between 1 and 1000",
            ));
        }
        if self.ledger_batch_linger_ms > 1000 {
            return Err(SettingsError::invalid(
                "webhook.ledger_batch_linger_ms",
                "must be at most 1000 (every delivery may wait this long)",
            ));
        }
        if !(1..=16).contains(&self.ledger_batch_committers) {
            return Err(SettingsError::invalid(
                "webhook.ledger_batch_committers",
                "must be between 1 and 16",
            ));
        }
        if self.rate_limit_policy.is_empty() {
            return Err(SettingsError::invalid("webhook.rate_limit_policy", "must not be empty"));
        }
        Ok(())
    }
}

impl ServiceSettings for Settings {
    const DEFAULTS: &'static str = include_str!("../config/default.toml");

    fn common(&self) -> &CommonSettings {
        &self.common
    }

    fn database(&self) -> Option<&DatabaseSettings> {
        Some(&self.database)
    }

    fn validate(&self) -> Result<(), SettingsError> {
        self.webhook.validate()?;
        // The committers may each hold a connection, the relay holds its leader lock on one and
        // reads with another; the rest of the pool serves the admin routes.
        if self.webhook.ledger_batch_committers + 2 >= self.database.max_connections as usize {
            return Err(SettingsError::invalid(
                "webhook.ledger_batch_committers",
                "ledger_batch_committers + 2 must stay below database.max_connections",
            ));
        }
        Ok(())
    }
}

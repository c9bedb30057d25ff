//! checkout-api: checkout sessions, coupon and delivery caches, user sessions, Stripe checkout with state synced to Redis.
//!
//! `main.rs` loads [`Settings`], starts telemetry and runs the [`Application`] that [`build`]
//! returns; tests call [`build`] with port 0 and real Redis and Postgres.

pub mod error;
pub mod stripe;

use std::sync::Arc;

use actix_web::web;
use platform_service::settings::{
    CommonSettings, DatabaseSettings, ServiceSettings, SettingsError,
};
use platform_service::{Application, connect_context};
use secrecy::SecretString;
use serde::Deserialize;

/// The service name in logs, traces and metrics.
pub const SERVICE: &str = "checkout-api";

/// This service's configuration.
#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    #[serde(flatten)]
    pub common: CommonSettings,
    pub database: DatabaseSettings,
    #[serde(default)]
    pub stripe: stripe::StripeSettings,
}

impl ServiceSettings for Settings {
    const DEFAULTS: &'static str = include_str!("../config/default.toml");

    fn validate(&self) -> Result<(), SettingsError> {
        self.common.validate()?;
        self.database.validate()?;
        self.stripe.validate()?;
        Ok(())
    }
}

/// Connects the dependencies and binds the HTTP server (not yet serving).
pub async fn build(settings: Settings) -> anyhow::Result<Application> {
    let context = connect_context(SERVICE, &settings.common, Some(&settings.database)).await?;
    let stripe = stripe::StripeService::new(
        &settings.stripe,
        context.redis.clone(),
        Arc::new(stripe::NoCarts),
    )?;
    stripe.spawn_consumer(context.shutdown.token()).await;
    let stripe = web::Data::new(stripe);
    let limiter = context.rate_limiter.clone();
    let admin_token: SecretString = settings.common.auth.admin_token.clone();
    Ok(Application::build(&settings.common.http, admin_token, context, move |cfg| {
        stripe::routes::configure(cfg, stripe.clone(), &limiter);
    })?)
}

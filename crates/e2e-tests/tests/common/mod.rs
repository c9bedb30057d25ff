//! What every cross-service test needs: each service as the shared harness starts it, on the
//! test's Redis, key prefix and database, and the [`Stack`] of services that work together.
#![allow(dead_code)]

use actix_web::web;
use platform_redis::{RedisClients, RedisSettings};
use platform_service::{AppContext, Application};
use platform_testing::{
    PostgresServer, RedisServer, TestApp, TestAppBuilder, TestService, unique_prefix,
};

/// The admin / service token of the default settings.
pub const ADMIN_TOKEN: &str = "dev-admin-token";
/// The endpoint secret webhook-ingest checks deliveries against in a [`Stack`].
pub const WEBHOOK_SECRET: &str = "whsec_e2e";

/// A unit type per service, implementing [`TestService`] with the service's `build`.
macro_rules! service {
    ($name:ident, $krate:ident, $app:ty, $database:expr, $vars:expr) => {
        pub struct $name;

        impl TestService for $name {
            type Settings = $krate::Settings;
            type App = $app;
            const DATABASE: bool = $database;
            const VARS: &'static [(&'static str, &'static str)] = $vars;

            async fn build(settings: $krate::Settings) -> anyhow::Result<$app> {
                $krate::build(settings).await
            }
            fn port(app: &$app) -> u16 {
                app.port()
            }
            fn context(app: &$app) -> web::Data<AppContext> {
                app.context()
            }
            async fn serve(app: $app) -> std::io::Result<()> {
                app.run_until_stopped().await
            }
        }
    };
}

service!(CampaignApi, campaign_api, Application, true, &[]);
service!(CheckoutApi, checkout_api, Application, true, &[]);
// No schedule and no refresh at start: only the wiring is checked.
service!(
    Refresher,
    customer_count_refresher,
    Application,
    false,
    &[("APP__REFRESH__SCHEDULE_ENABLED", "false"), ("APP__REFRESH__REFRESH_WHEN_EMPTY", "false")]
);
service!(UsageMeter, usage_meter, usage_meter::UsageMeter, true, &[]);
service!(WebhookIngest, webhook_ingest, Application, true, &[]);

/// An app on the given Redis, key prefix and database, with one worker and no rate limits, then
/// `extra` on top.
pub fn app(
    redis_url: &str,
    prefix: &str,
    database_url: &str,
    extra: &[(&str, &str)],
) -> TestAppBuilder {
    TestApp::builder(prefix)
        .redis_url(redis_url)
        .prefix(prefix)
        .database_url(database_url)
        .vars(&[("APP__HTTP__WORKERS", "1"), ("APP__RATE_LIMIT__ENABLED", "false")])
        .vars(extra)
}

/// Services working together: one private Redis and key prefix they share, and each service's
/// own database. Each spawner reads its streams and checkpoints quickly.
pub struct Stack {
    pub redis: RedisServer,
    pub prefix: String,
    pub webhook_db: String,
    pub campaign_db: String,
    pub usage_db: String,
    pub http: reqwest::Client,
}

impl Stack {
    pub async fn new(test: &str) -> Self {
        platform_service::telemetry::install_crypto_provider();
        let postgres = PostgresServer::shared();
        Self {
            redis: RedisServer::start().unwrap(),
            prefix: unique_prefix(test),
            webhook_db: postgres.create_database().await.unwrap().url,
            campaign_db: postgres.create_database().await.unwrap().url,
            usage_db: postgres.create_database().await.unwrap().url,
            http: reqwest::Client::new(),
        }
    }

    pub fn app(&self, database: &str, extra: &[(&str, &str)]) -> TestAppBuilder {
        app(&self.redis.url(), &self.prefix, database, extra)
    }

    pub async fn webhook_ingest(&self) -> TestApp {
        let quick = [
            ("APP__WEBHOOK__SECRETS", WEBHOOK_SECRET),
            ("APP__WEBHOOK__RELAY_CHECKPOINT_MS", "200"),
        ];
        self.app(&self.webhook_db, &quick).spawn::<WebhookIngest>().await
    }

    pub async fn campaign_api(&self) -> TestApp {
        let quick = [
            ("APP__STRIPE_EVENTS__BLOCK_MS", "100"),
            ("APP__ORGANISATIONS__RELAY_CHECKPOINT_MS", "200"),
        ];
        self.app(&self.campaign_db, &quick).spawn::<CampaignApi>().await
    }

    pub async fn usage_meter(&self) -> TestApp {
        let quick = [
            ("APP__USAGE__BLOCK_MS", "100"),
            ("APP__ORGANISATION_EVENTS__BLOCK_MS", "100"),
            ("APP__USAGE__FLUSH_INTERVAL_MS", "100"),
        ];
        self.app(&self.usage_db, &quick).spawn::<UsageMeter>().await
    }

    /// Clients of the stack's Redis, under its prefix.
    pub async fn redis(&self) -> RedisClients {
        RedisClients::connect(&RedisSettings::for_url(&self.redis.url(), &self.prefix))
            .await
            .unwrap()
    }
}

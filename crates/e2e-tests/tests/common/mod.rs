//! What every cross-service test needs: each service as the shared harness starts it, on the
//! test's Redis, key prefix and database.
#![allow(dead_code)]

use actix_web::web;
use platform_service::{AppContext, Application};
use platform_testing::{TestApp, TestAppBuilder, TestService};

/// The admin / service token of the default settings.
pub const ADMIN_TOKEN: &str = "dev-admin-token";

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

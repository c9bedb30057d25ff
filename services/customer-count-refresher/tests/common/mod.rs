//! Test support shared by the integration tests: the real app on port 0 against real Redis and the fake simPRO.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use actix_web::web;
use customer_count_refresher::{Settings, build};
use platform_redis::{RedisClients, RedisSettings};
use platform_service::{AppContext, Application};
use platform_testing::{FakeSimpro, TestService};
use serde_json::Value;

pub const ADMIN: &str = "dev-admin-token";

/// The refresher as the shared harness starts it: no database, short Redis and simPRO timings.
pub struct Refresher;

impl TestService for Refresher {
    type Settings = Settings;
    type App = Application;
    const DATABASE: bool = false;
    const VARS: &'static [(&'static str, &'static str)] = &[
        ("APP__REDIS__COMMAND_TIMEOUT_MS", "300"),
        ("APP__RATE_LIMIT__ENABLED", "false"),
        ("APP__REDIS__RECONNECT_MAX_DELAY_MS", "200"),
        ("APP__SIMPRO__BACKOFF_BASE_MS", "10"),
        ("APP__SIMPRO__BACKOFF_MAX_MS", "100"),
        ("APP__SIMPRO__REQUEST_TIMEOUT_MS", "5000"),
        ("APP__REFRESH__SCHEDULE_ENABLED", "false"),
        ("APP__REFRESH__REFRESH_WHEN_EMPTY", "false"),
    ];

    async fn build(settings: Settings) -> anyhow::Result<Application> {
        build(settings).await
    }
    fn port(app: &Application) -> u16 {
        app.port()
    }
    fn context(app: &Application) -> web::Data<AppContext> {
        app.context()
    }
    async fn serve(app: Application) -> std::io::Result<()> {
        app.run_until_stopped().await
    }
}

pub struct TestApp(platform_testing::TestApp);

impl std::ops::Deref for TestApp {
    type Target = platform_testing::TestApp;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl TestApp {
    pub async fn spawn(
        redis_url: &str,
        prefix: &str,
        fake: &FakeSimpro,
        extra: &[(&str, &str)],
    ) -> Self {
        let app = platform_testing::TestApp::builder(prefix)
            .redis_url(redis_url)
            .prefix(prefix)
            .var("APP__SIMPRO__BASE_URL", fake.base_url())
            .var("APP__SIMPRO__TOKEN", fake.token().unwrap())
            .var("APP__SIMPRO__COMPANY_ID", fake.company_id().to_string())
            .vars(extra)
            .spawn::<Refresher>()
            .await;
        Self(app)
    }

    pub async fn refresh(&self) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}/api/simpro/customers/refresh", self.base))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response =
            self.http.get(format!("{}{path}", self.base)).bearer_auth(ADMIN).send().await.unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(ADMIN)
            .json(body)
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    pub async fn metrics(&self) -> String {
        self.http.get(format!("{}/metrics", self.base)).send().await.unwrap().text().await.unwrap()
    }
}

pub async fn redis_for(url: &str, prefix: &str) -> RedisClients {
    RedisClients::connect(&RedisSettings::for_url(url, prefix)).await.unwrap()
}

//! Shared test harness: the real service on port 0 against real Redis and Postgres, each test
//! with its own key prefix and database.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

pub mod tokens;

use actix_web::web;
use platform_service::AppContext;
use platform_testing::TestService;
use usage_meter::{Settings, UsageMeter, build};

pub const TOKEN: &str = "dev-admin-token";

/// The usage meter as the shared harness starts it.
pub struct Meter;

impl TestService for Meter {
    type Settings = Settings;
    type App = UsageMeter;
    const VARS: &'static [(&'static str, &'static str)] = &[("APP__RATE_LIMIT__ENABLED", "false")];

    async fn build(settings: Settings) -> anyhow::Result<UsageMeter> {
        build(settings).await
    }
    fn port(app: &UsageMeter) -> u16 {
        app.port()
    }
    fn context(app: &UsageMeter) -> web::Data<AppContext> {
        app.context()
    }
    async fn serve(app: UsageMeter) -> std::io::Result<()> {
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
    /// Starts the service; `extra` are `APP__…` overrides.
    pub async fn spawn(test: &str, extra: &[(&str, &str)]) -> Self {
        Self(platform_testing::TestApp::builder(test).vars(extra).spawn::<Meter>().await)
    }

    pub async fn post(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// GET with the service token (the tenant-scoped and cross-tenant reads accept it).
    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        self.get_as(path, Some(TOKEN)).await
    }

    /// GET with `token` as the bearer token, or none.
    pub async fn get_as(&self, path: &str, token: Option<&str>) -> (u16, serde_json::Value) {
        let mut request = self.http.get(format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// Stops the service and waits for its final flush.
    pub async fn stop(self) {
        self.0.stop_and_join().await.unwrap();
    }
}

/// `n` events of one metric for one org as JSON.
pub fn event(org: &str, metric: &str, value: i64) -> serde_json::Value {
    serde_json::json!({ "orgId": org, "metric": metric, "value": value })
}

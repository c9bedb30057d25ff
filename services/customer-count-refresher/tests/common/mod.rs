//! Test support shared by the integration tests: the real app on port 0 against real Redis and the fake simPRO.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;

use customer_count_refresher::{Settings, build};
use platform_redis::{RedisClients, RedisSettings};
use platform_service::Shutdown;
use platform_service::settings::ServiceSettings;
use platform_testing::FakeSimpro;
use serde_json::Value;

pub const ADMIN: &str = "dev-admin-token";

pub struct TestApp {
    pub base: String,
    pub shutdown: Shutdown,
    pub http: reqwest::Client,
}

impl TestApp {
    pub async fn spawn(
        redis_url: &str,
        prefix: &str,
        fake: &FakeSimpro,
        extra: &[(&str, &str)],
    ) -> Self {
        let mut vars = HashMap::from([
            ("APP__HTTP__PORT".to_owned(), "0".to_owned()),
            ("APP__HTTP__WORKERS".to_owned(), "2".to_owned()),
            ("APP__REDIS__URL".to_owned(), redis_url.to_owned()),
            ("APP__REDIS__KEY_PREFIX".to_owned(), prefix.to_owned()),
            ("APP__REDIS__COMMAND_TIMEOUT_MS".to_owned(), "300".to_owned()),
            ("APP__REDIS__RECONNECT_MAX_DELAY_MS".to_owned(), "200".to_owned()),
            ("APP__RATE_LIMIT__ENABLED".to_owned(), "false".to_owned()),
            ("APP__SIMPRO__BASE_URL".to_owned(), fake.base_url()),
            ("APP__SIMPRO__TOKEN".to_owned(), fake.token().unwrap().to_owned()),
            ("APP__SIMPRO__COMPANY_ID".to_owned(), fake.company_id().to_string()),
            ("APP__SIMPRO__BACKOFF_BASE_MS".to_owned(), "10".to_owned()),
            ("APP__SIMPRO__BACKOFF_MAX_MS".to_owned(), "100".to_owned()),
            ("APP__SIMPRO__REQUEST_TIMEOUT_MS".to_owned(), "5000".to_owned()),
            ("APP__REFRESH__SCHEDULE_ENABLED".to_owned(), "false".to_owned()),
            ("APP__REFRESH__REFRESH_WHEN_EMPTY".to_owned(), "false".to_owned()),
        ]);
        for (key, value) in extra {
            vars.insert((*key).to_owned(), (*value).to_owned());
        }
        let settings = Settings::from_overrides(vars).unwrap();
        let app = build(settings).await.unwrap();
        let base = format!("http://127.0.0.1:{}", app.port());
        let shutdown = app.context().shutdown.clone();
        tokio::spawn(app.run_until_stopped());
        Self { base, shutdown, http: reqwest::Client::new() }
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

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

pub async fn redis_for(url: &str, prefix: &str) -> RedisClients {
    RedisClients::connect(&RedisSettings::for_url(url, prefix)).await.unwrap()
}

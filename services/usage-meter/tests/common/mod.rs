//! Shared test harness: the real service on port 0 against real Redis and Postgres, each test
//! with its own key prefix and database.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

pub mod tokens;

use std::collections::HashMap;

use platform_redis::{RedisClients, RedisSettings};
use platform_service::settings::ServiceSettings;
use platform_testing::{PostgresServer, RedisServer, unique_prefix};
use usage_meter::{Settings, build};

pub const TOKEN: &str = "dev-admin-token";

pub struct TestApp {
    pub base: String,
    pub prefix: String,
    pub database_url: String,
    pub redis: RedisClients,
    pub http: reqwest::Client,
    shutdown: platform_service::Shutdown,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl TestApp {
    /// Starts the service; `extra` are `APP__…` overrides.
    pub async fn spawn(test: &str, extra: &[(&str, &str)]) -> Self {
        let prefix = unique_prefix(test);
        let database = PostgresServer::shared().create_database().await.unwrap();
        let mut vars = HashMap::from([
            ("APP__HTTP__PORT".to_owned(), "0".to_owned()),
            ("APP__HTTP__WORKERS".to_owned(), "2".to_owned()),
            ("APP__REDIS__URL".to_owned(), RedisServer::shared().url()),
            ("APP__REDIS__KEY_PREFIX".to_owned(), prefix.clone()),
            ("APP__DATABASE__URL".to_owned(), database.url.clone()),
            ("APP__RATE_LIMIT__ENABLED".to_owned(), "false".to_owned()),
        ]);
        for (k, v) in extra {
            vars.insert((*k).to_owned(), (*v).to_owned());
        }
        // The test's own clients go where the service goes (`extra` may point it at a cluster).
        let redis_url = vars["APP__REDIS__URL"].clone();
        let settings = Settings::from_overrides(vars).unwrap();
        let app = build(settings).await.unwrap();
        let base = format!("http://127.0.0.1:{}", app.port());
        let shutdown = app.context().shutdown.clone();
        let server = tokio::spawn(app.run_until_stopped());
        let redis =
            RedisClients::connect(&RedisSettings::for_url(&redis_url, &prefix)).await.unwrap();
        Self {
            base,
            prefix,
            database_url: database.url,
            redis,
            http: reqwest::Client::new(),
            shutdown,
            server,
        }
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
        self.shutdown.trigger();
        self.server.await.unwrap().unwrap();
    }
}

/// `n` events of one metric for one org as JSON.
pub fn event(org: &str, metric: &str, value: i64) -> serde_json::Value {
    serde_json::json!({ "orgId": org, "metric": metric, "value": value })
}

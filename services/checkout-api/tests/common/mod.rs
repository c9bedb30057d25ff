//! Shared test support: runs the real checkout-api on port 0 against real Redis and Postgres.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::collections::HashMap;
use std::time::Duration;

use actix_web::web;
use checkout_api::{Settings, build};
use platform_redis::{RedisClients, RedisSettings};
use platform_service::AppContext;
use platform_service::settings::ServiceSettings;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

pub const TOKEN: &str = "dev-admin-token";

/// Where one app instance keeps its state.
#[derive(Debug, Clone)]
pub struct Backends {
    pub redis_url: String,
    pub prefix: String,
    pub database_url: String,
}

impl Backends {
    pub async fn new(redis_url: String, test: &str) -> Backends {
        let database = platform_testing::PostgresServer::shared().create_database().await.unwrap();
        Backends {
            redis_url,
            prefix: platform_testing::unique_prefix(test),
            database_url: database.url,
        }
    }

    /// Direct Redis clients under the test's prefix.
    pub async fn redis(&self) -> RedisClients {
        RedisClients::connect(&RedisSettings::for_url(&self.redis_url, &self.prefix)).await.unwrap()
    }
}

pub struct TestApp {
    pub base: String,
    pub http: reqwest::Client,
    pub context: web::Data<AppContext>,
    server: Option<JoinHandle<std::io::Result<()>>>,
}

/// A response's status and JSON body (`Null` when there is none).
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl TestApp {
    pub async fn spawn(backends: &Backends, extra: &[(&str, &str)]) -> TestApp {
        let mut vars = HashMap::from([
            ("APP__HTTP__PORT".to_owned(), "0".to_owned()),
            ("APP__HTTP__WORKERS".to_owned(), "2".to_owned()),
            ("APP__REDIS__URL".to_owned(), backends.redis_url.clone()),
            ("APP__REDIS__KEY_PREFIX".to_owned(), backends.prefix.clone()),
            ("APP__DATABASE__URL".to_owned(), backends.database_url.clone()),
            // Tests send many requests from one IP.
            ("APP__RATE_LIMIT__POLICIES__API__LIMIT".to_owned(), "100000".to_owned()),
            ("APP__RATE_LIMIT__POLICIES__API__WINDOW_SECS".to_owned(), "60".to_owned()),
        ]);
        for (key, value) in extra {
            vars.insert((*key).to_owned(), (*value).to_owned());
        }
        let settings = Settings::from_overrides(vars).unwrap();
        let app = build(settings).await.unwrap();
        let base = format!("http://127.0.0.1:{}", app.port());
        let context = app.context();
        let server = tokio::spawn(app.run_until_stopped());
        TestApp { base, http: reqwest::Client::new(), context, server: Some(server) }
    }

    /// Sends a request; `token` adds the admin bearer token, `cookie` a Cookie header.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        token: bool,
        cookie: Option<&str>,
    ) -> Reply {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if token {
            request = request.bearer_auth(TOKEN);
        }
        if let Some(cookie) = cookie {
            request = request.header("Cookie", cookie);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Reply { status, headers, body }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(Method::GET, path, None, false, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.send(Method::POST, path, Some(body), false, None).await
    }

    pub async fn patch(&self, path: &str, body: Value) -> Reply {
        self.send(Method::PATCH, path, Some(body), false, None).await
    }

    pub async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> Reply {
        self.send(method, path, body, true, None).await
    }

    /// Creates a session from `body`; asserts 201 and returns the body.
    pub async fn create_session(&self, body: Value) -> Value {
        let reply = self.post("/api/checkout/sessions", body).await;
        assert_eq!(reply.status, 201, "{}", reply.body);
        reply.body
    }

    pub async fn cleanup(&self, body: Value) -> Reply {
        self.admin(Method::POST, "/api/redis/cleanup", Some(body)).await
    }

    /// The value of one metric line starting with `prefix` (e.g. `checkout_sessions_completed_total`).
    pub async fn metric(&self, prefix: &str) -> Option<f64> {
        let text = self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find(|line| line.starts_with(prefix))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|value| value.parse().ok())
    }

    pub async fn stop(mut self) {
        self.context.shutdown.trigger();
        if let Some(server) = self.server.take() {
            let _ = tokio::time::timeout(Duration::from_secs(30), server).await;
        }
    }
}

/// A cart of `n` lines of 2 × 500 cents.
pub fn cart(n: usize) -> Value {
    let items: Vec<Value> = (0..n)
        .map(|i| json!({"sku": format!("sku-{i}"), "name": format!("Item {i}"), "unitAmountCents": 500, "quantity": 2}))
        .collect();
    json!({ "items": items })
}

/// The `name=value` pair of the reply's `Set-Cookie`, and the whole header.
pub fn set_cookie(reply: &Reply) -> (String, String) {
    let header =
        reply.headers.get("set-cookie").expect("a Set-Cookie header").to_str().unwrap().to_owned();
    let pair = header.split(';').next().unwrap().trim().to_owned();
    (pair, header)
}

/// Polls `check` every 100 ms, at most `tries` times; true once it held.
pub async fn eventually<F, Fut>(tries: usize, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..tries {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

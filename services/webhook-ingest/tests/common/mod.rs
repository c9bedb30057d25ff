//! The webhook-ingest test harness: the service on port 0 against real Redis and Postgres, signed
//! deliveries, and readers of the stream and the ledger.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use actix_web::web;
use platform_redis::StreamName;
use platform_redis::fred::prelude::*;
use platform_service::{AppContext, Application};
use platform_testing::{RedisServer, TestService};
use serde_json::Value;
use webhook_ingest::domain::signature::sign_header;
use webhook_ingest::{Settings, build};

pub const SECRET: &str = "whsec_test_secret";
pub const ADMIN: &str = "test-admin-token";

/// webhook-ingest as the shared harness starts it: its admin token, an old and the current
/// signing secret, and a quick relay checkpoint.
pub struct WebhookIngest;

impl TestService for WebhookIngest {
    type Settings = Settings;
    type App = Application;
    const VARS: &'static [(&'static str, &'static str)] = &[
        ("APP__AUTH__ADMIN_TOKEN", ADMIN),
        // An old secret first, then [`SECRET`]: a signature by either is accepted.
        ("APP__WEBHOOK__SECRETS", "whsec_old_one,whsec_test_secret"),
        ("APP__WEBHOOK__RELAY_CHECKPOINT_MS", "200"),
        ("APP__RATE_LIMIT__ENABLED", "false"),
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
    /// A service on its own database and key prefix.
    pub async fn start(redis_url: &str, extra: &[(&str, &str)]) -> Self {
        let app = platform_testing::TestApp::builder("webhook").redis_url(redis_url).vars(extra);
        Self(app.spawn::<WebhookIngest>().await)
    }

    /// A service on the given database and prefix (a second replica of another app).
    pub async fn start_on(
        redis_url: &str,
        database_url: &str,
        prefix: &str,
        extra: &[(&str, &str)],
    ) -> Self {
        let app = platform_testing::TestApp::builder("webhook")
            .redis_url(redis_url)
            .database_url(database_url)
            .prefix(prefix)
            .vars(extra);
        Self(app.spawn::<WebhookIngest>().await)
    }

    pub async fn shared(extra: &[(&str, &str)]) -> Self {
        Self::start(&RedisServer::shared().url(), extra).await
    }

    /// POSTs `body` with `header` as Stripe-Signature (none when `None`); status and JSON body.
    pub async fn deliver_with(&self, body: &str, header: Option<&str>) -> (u16, Value) {
        let mut request = self
            .http
            .post(format!("{}/api/webhooks/stripe", self.base))
            .header("content-type", "application/json")
            .body(body.to_owned());
        if let Some(header) = header {
            request = request.header("Stripe-Signature", header);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// Signs `body` as Stripe would now and delivers it.
    pub async fn deliver(&self, body: &str) -> (u16, Value) {
        self.deliver_with(body, Some(&sign_header(SECRET, now(), body.as_bytes()))).await
    }

    pub fn stream_key(&self) -> String {
        self.redis.keys().stream(StreamName::StripeEvents)
    }

    /// Every entry of the Stripe stream: (entry id, fields); empty while Redis does not answer.
    pub async fn stream(&self) -> Vec<(String, HashMap<String, String>)> {
        self.redis.primary().xrange(self.stream_key(), "-", "+", None).await.unwrap_or_default()
    }

    /// The event ids on the stream, in stream order.
    pub async fn streamed_ids(&self) -> Vec<String> {
        self.stream()
            .await
            .into_iter()
            .map(|(_, fields)| {
                let data: Value = serde_json::from_str(&fields["data"]).unwrap();
                data["eventId"].as_str().unwrap().to_owned()
            })
            .collect()
    }

    /// Waits until the stream holds exactly `n` entries.
    pub async fn stream_has(&self, n: usize) {
        platform_testing::eventually(&format!("the stream holds {n} entries"), || async {
            self.stream().await.len() == n
        })
        .await;
    }

    /// (status, reason, seq) of a ledger row.
    pub async fn ledger_row(
        &self,
        event_id: &str,
    ) -> Option<(String, Option<String>, Option<i64>)> {
        sqlx::query_as("SELECT status, reason, seq FROM webhook_events WHERE event_id = $1")
            .bind(event_id)
            .fetch_optional(self.db())
            .await
            .unwrap()
    }

    pub async fn admin(&self, method: reqwest::Method, path: &str) -> (u16, Value) {
        let response = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    pub async fn metrics(&self) -> String {
        self.http.get(format!("{}/metrics", self.base)).send().await.unwrap().text().await.unwrap()
    }
}

pub fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

pub fn fixture(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/stripe/events")
        .join(format!("{name}.json"));
    std::fs::read_to_string(path).unwrap()
}

/// The fixture with its shared anonymised id replaced by `id` (text replace: the bytes stay
/// Stripe's pretty-printed layout).
pub fn event_with_id(name: &str, id: &str) -> String {
    let body = fixture(name);
    assert!(body.contains("\"evt_000000000000000000000000\""));
    body.replacen("\"evt_000000000000000000000000\"", &format!("\"{id}\""), 1)
}

pub fn unique_event_id() -> String {
    format!("evt_test_{}", uuid::Uuid::new_v4().simple())
}

/// A small payment_intent.succeeded event with `object` as its `data.object` JSON.
pub fn payment_event(id: &str, object: &str) -> String {
    format!(
        r#"{{"id":"{id}","object":"event","type":"payment_intent.succeeded","created":1700000000,"livemode":false,"data":{{"object":{object}}}}}"#
    )
}

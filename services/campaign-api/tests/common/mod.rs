//! Shared test support: runs the real campaign-api on port 0 against real Redis and Postgres, in
//! this process ([`TestApp`]) or as the real binary in a child process ([`ProcessApp`]).
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use actix_web::web;
use campaign_api::{Settings, build};
use platform_redis::messages::StripeEventMessage;
use platform_redis::{RedisClients, RedisSettings, StreamName};
use platform_service::{AppContext, Application};
use platform_testing::{TestAppBuilder, TestService, holds_within};
use serde_json::{Value, json};

pub const TOKEN: &str = "dev-admin-token";

/// campaign-api as the shared harness starts it: quick live-update, usage and consumer timings.
pub struct CampaignApi;

impl TestService for CampaignApi {
    type Settings = Settings;
    type App = Application;
    const VARS: &'static [(&'static str, &'static str)] = &[
        ("APP__LIVE__KEEP_ALIVE_SECS", "1"),
        ("APP__LIVE__LIFECYCLE_TICK_MS", "200"),
        ("APP__USAGE__FLUSH_INTERVAL_MS", "100"),
        ("APP__STRIPE_EVENTS__BLOCK_MS", "200"),
        ("APP__STRIPE_EVENTS__CLAIM_IDLE_MS", "2000"),
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

/// Where one app instance (or several sharing them) keeps its state.
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

    /// Direct Redis clients under the test's prefix (to inspect streams, publish, …).
    pub async fn redis(&self) -> RedisClients {
        RedisClients::connect(&RedisSettings::for_url(&self.redis_url, &self.prefix)).await.unwrap()
    }

    /// An app on these backends, `extra` winning. Each app gets a consumer name of its own, as
    /// replicas sharing a host must be configured.
    pub fn app(&self, extra: &[(&str, &str)]) -> TestAppBuilder {
        static REPLICAS: AtomicUsize = AtomicUsize::new(0);
        let replica = REPLICAS.fetch_add(1, Ordering::Relaxed) + 1;
        platform_testing::TestApp::builder(&self.prefix)
            .redis_url(&self.redis_url)
            .prefix(&self.prefix)
            .database_url(&self.database_url)
            .var("APP__STRIPE_EVENTS__CONSUMER", format!("test-replica-{replica}"))
            .vars(extra)
    }
}

/// HTTP access to one running app (in this process or a child process).
#[derive(Debug, Clone)]
pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
}

pub struct TestApp {
    pub api: Api,
    pub context: web::Data<AppContext>,
    app: platform_testing::TestApp,
}

impl std::ops::Deref for TestApp {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.api
    }
}

impl TestApp {
    pub async fn spawn(backends: &Backends, extra: &[(&str, &str)]) -> TestApp {
        let app = backends.app(extra).spawn::<CampaignApi>().await;
        let api = Api { base: app.base.clone(), http: app.http.clone() };
        TestApp { api, context: app.context.clone(), app }
    }

    pub async fn stop(self) {
        self.app.stop().await;
    }
}

/// The real `campaign-api` binary as a child process, killed (SIGKILL) when dropped.
pub struct ProcessApp {
    pub api: Api,
    child: std::process::Child,
}

impl std::ops::Deref for ProcessApp {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.api
    }
}

impl ProcessApp {
    /// Starts the binary with the test settings on a free port and waits until it is ready.
    pub async fn start(backends: &Backends, extra: &[(&str, &str)]) -> ProcessApp {
        // reqwest needs the process-wide TLS provider (an in-process app would have set it).
        platform_service::telemetry::install_crypto_provider();
        let http = platform_testing::http_client().build().unwrap();
        let port = platform_testing::free_port().to_string();
        let mut vars = backends.app(extra).env::<CampaignApi>().await;
        vars.insert("APP__HTTP__PORT".to_owned(), port.clone());
        vars.insert("APP__TELEMETRY__FILTER".to_owned(), "warn".to_owned());
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_campaign-api"))
            .envs(vars)
            .env_remove("RUST_LOG")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start the campaign-api binary");
        let app = ProcessApp { api: Api { base: format!("http://127.0.0.1:{port}"), http }, child };
        let ready = holds_within(Duration::from_secs(30), || async {
            let response = app.http.get(format!("{}/readyz", app.base)).send().await;
            response.is_ok_and(|r| r.status() == 200)
        })
        .await;
        assert!(ready, "the campaign-api process did not become ready");
        app
    }

    /// `kill -9`: no shutdown, no drain, nothing acked.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ProcessApp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Api {
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http.get(format!("{}{path}", self.base)).send().await.unwrap()
    }

    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> reqwest::Response {
        let mut request =
            self.http.request(method, format!("{}{path}", self.base)).bearer_auth(TOKEN);
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.unwrap()
    }

    /// Creates an organisation; returns its id.
    pub async fn create_org(&self, slug: &str) -> String {
        let response = self
            .admin(
                reqwest::Method::POST,
                "/api/admin/organisations",
                Some(json!({"slug": slug, "name": format!("Org {slug}")})),
            )
            .await;
        assert_eq!(response.status(), 201);
        let body: Value = response.json().await.unwrap();
        body["id"].as_str().unwrap().to_owned()
    }

    /// Creates an active campaign (started an hour ago, ends in a week); returns its id.
    pub async fn create_campaign(&self, slug: &str, name: &str, goal_cents: i64) -> String {
        let now = chrono::Utc::now();
        let response = self
            .admin(
                reqwest::Method::POST,
                &format!("/api/admin/organisations/{slug}/campaigns"),
                Some(json!({
                    "name": name,
                    "description": "A test campaign",
                    "goalCents": goal_cents,
                    "startsAt": (now - chrono::Duration::hours(1)).to_rfc3339(),
                    "endsAt": (now + chrono::Duration::days(7)).to_rfc3339(),
                })),
            )
            .await;
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, 201, "{body}");
        body["id"].as_str().unwrap().to_owned()
    }
}

/// The Stripe fixture event as a payment for `campaign_id` of `org_id`.
pub fn donation_event(
    event_id: &str,
    payment_intent: &str,
    org_id: &str,
    campaign_id: &str,
    amount: i64,
) -> StripeEventMessage {
    let text = include_str!("../fixtures/payment_intent.succeeded.json");
    let mut raw: Value = serde_json::from_str(text).unwrap();
    raw["id"] = json!(event_id);
    raw["data"]["object"]["id"] = json!(payment_intent);
    raw["data"]["object"]["amount"] = json!(amount);
    raw["data"]["object"]["amount_received"] = json!(amount);
    raw["data"]["object"]["metadata"] = json!({"org_id": org_id, "campaign_id": campaign_id});
    StripeEventMessage {
        event_id: event_id.to_owned(),
        event_type: "payment_intent.succeeded".to_owned(),
        created: raw["created"].as_i64().unwrap(),
        livemode: false,
        api_version: raw["api_version"].as_str().map(str::to_owned),
        object_id: Some(payment_intent.to_owned()),
        customer_id: None,
        raw: raw.to_string(),
    }
}

/// Every body on the usage stream.
pub async fn usage_events(redis: &RedisClients) -> Vec<Value> {
    use platform_redis::fred::prelude::*;
    let key = redis.keys().stream(StreamName::UsageEvents);
    let entries: Vec<(String, HashMap<String, String>)> =
        redis.primary().xrange(&key, "-", "+", None).await.unwrap();
    entries.into_iter().map(|(_, fields)| serde_json::from_str(&fields["data"]).unwrap()).collect()
}

/// Reads an SSE response until `done` says so or `max_chunks` chunks were read; returns the text.
pub async fn read_sse(
    response: &mut reqwest::Response,
    max_chunks: usize,
    done: impl Fn(&str) -> bool,
) -> String {
    let mut text = String::new();
    for _ in 0..max_chunks {
        match tokio::time::timeout(Duration::from_secs(10), response.chunk()).await {
            Ok(Ok(Some(chunk))) => text.push_str(&String::from_utf8_lossy(&chunk)),
            _ => break,
        }
        if done(&text) {
            break;
        }
    }
    text
}

/// The campaign-api group's dead-letter entries, oldest first, as field maps.
pub async fn dead_letters(redis: &RedisClients) -> Vec<HashMap<String, String>> {
    use platform_redis::fred::prelude::*;
    let key = redis.keys().dead_letter_stream(StreamName::StripeEvents, "campaign-api");
    let entries: Vec<(String, HashMap<String, String>)> =
        redis.primary().xrange(&key, "-", "+", None).await.unwrap();
    entries.into_iter().map(|(_, fields)| fields).collect()
}

/// Entries of the Stripe stream pending in the campaign-api group: (entry id, consumer,
/// deliveries).
pub async fn pending_stripe_entries(redis: &RedisClients) -> Vec<(String, String, u64)> {
    use platform_redis::fred::prelude::*;
    use platform_redis::fred::types::Value as RedisValue;
    let key = redis.keys().stream(StreamName::StripeEvents);
    let rows: RedisValue = redis
        .primary()
        .xpending(&key, "campaign-api", ("-", "+", 100u64))
        .await
        .unwrap_or(RedisValue::Null);
    let rows = match rows {
        RedisValue::Null => Vec::new(),
        rows => rows.into_array(),
    };
    // One row may come back unwrapped.
    let rows = if rows.first().is_some_and(|first| !first.is_array()) {
        vec![RedisValue::Array(rows)]
    } else {
        rows
    };
    rows.into_iter()
        .filter_map(|row| {
            let row = row.into_array();
            Some((row.first()?.as_string()?, row.get(1)?.as_string()?, row.get(3)?.as_u64()?))
        })
        .collect()
}

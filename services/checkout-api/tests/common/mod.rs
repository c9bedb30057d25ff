//! Shared test support: runs the real checkout-api on port 0 against real Redis, Postgres and a
//! local fake Stripe (the real async-stripe client talks to it over loopback).
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::sync::Arc;

use actix_web::web;
use checkout_api::domain::payments::StripeService;
use checkout_api::domain::stripe::NoCarts;
use checkout_api::upstream::stripe::StripeSettings;
use checkout_api::{Settings, build};
use platform_redis::messages::StripeEventMessage;
use platform_redis::{RedisClients, RedisSettings};
use platform_service::settings::ServiceSettings;
use platform_service::{AppContext, Application};
use platform_testing::{
    FakeStripe, FakeStripeConfig, PostgresServer, RedisServer, TestAppBuilder, TestService,
    unique_prefix,
};
use reqwest::Method;
use serde_json::{Value, json};

pub const TOKEN: &str = "dev-admin-token";

/// checkout-api as the shared harness starts it: short Stripe timings, rate limits no test trips
/// by accident, and the demo catalog.
pub struct Checkout;

impl TestService for Checkout {
    type Settings = Settings;
    type App = Application;
    const VARS: &'static [(&'static str, &'static str)] = &[
        ("APP__STRIPE__RETRY_BACKOFF_MS", "10"),
        ("APP__STRIPE__REQUEST_TIMEOUT_MS", "5000"),
        ("APP__STRIPE__EVENTS__BLOCK_MS", "100"),
        ("APP__STRIPE__EVENTS__CLAIM_IDLE_MS", "500"),
        ("APP__RATE_LIMIT__POLICIES__PAYMENT__LIMIT", "1000"),
        ("APP__RATE_LIMIT__POLICIES__PAYMENT__WINDOW_SECS", "60"),
        // Tests send many requests from one IP.
        ("APP__RATE_LIMIT__POLICIES__API__LIMIT", "100000"),
        ("APP__RATE_LIMIT__POLICIES__API__WINDOW_SECS", "60"),
        // The demo catalog (tea 1250, mug 500, tee 1000, plan-basic/price_basic 1000,
        // plan-pro/price_pro 2000): what the tests' carts and checkouts buy.
        ("APP__DEMO__SEED", "true"),
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

/// A fake Stripe, the Redis prefix and database of one test.
pub struct Backends {
    pub stripe: FakeStripe,
    pub redis_url: String,
    pub prefix: String,
    pub database_url: String,
}

impl Backends {
    pub async fn new(test: &str) -> Backends {
        Self::with_redis(test, RedisServer::shared().url()).await
    }

    /// Like [`Backends::new`] with Redis at `redis_url` (e.g. a `redis-cluster://` one).
    pub async fn with_redis(test: &str, redis_url: String) -> Backends {
        let database = PostgresServer::shared().create_database().await.unwrap();
        Backends {
            stripe: FakeStripe::start(FakeStripeConfig::default()).unwrap(),
            redis_url,
            prefix: unique_prefix(test),
            database_url: database.url,
        }
    }

    /// Direct Redis clients under the test's prefix.
    pub async fn redis(&self) -> RedisClients {
        RedisClients::connect(&RedisSettings::for_url(&self.redis_url, &self.prefix)).await.unwrap()
    }

    /// An app on these backends (apps of one test share them, as replicas do).
    pub fn app(&self) -> TestAppBuilder {
        platform_testing::TestApp::builder(&self.prefix)
            .redis_url(&self.redis_url)
            .prefix(&self.prefix)
            .database_url(&self.database_url)
            .var("APP__STRIPE__SECRET_KEY", self.stripe.secret_key())
            .var("APP__STRIPE__API_BASE_URL", self.stripe.base_url())
    }

    /// A Stripe service of its own (same Redis prefix, same fake) for library-level calls.
    pub async fn stripe_service(&self, extra: &[(&str, &str)]) -> StripeService {
        platform_service::telemetry::install_crypto_provider();
        let vars = self.app().vars(extra).env::<Checkout>().await;
        let settings: StripeSettings = Settings::from_overrides(vars).unwrap().stripe;
        StripeService::new(&settings, self.redis().await, Arc::new(NoCarts)).unwrap()
    }
}

pub struct TestApp(platform_testing::TestApp);

impl std::ops::Deref for TestApp {
    type Target = platform_testing::TestApp;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

/// A response's status and JSON body (`Null` when there is none).
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl TestApp {
    pub async fn spawn(backends: &Backends, extra: &[(&str, &str)]) -> TestApp {
        // Redirects are answers to assert on (the fake's pay page), not to follow.
        let http = platform_testing::http_client().redirect(reqwest::redirect::Policy::none());
        TestApp(backends.app().vars(extra).http(http).spawn::<Checkout>().await)
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

    /// Creates a session from `body` as a service-token caller (its `userId` counts); asserts 201
    /// and returns the body.
    pub async fn service_create_session(&self, body: Value) -> Value {
        let reply = self.admin(Method::POST, "/api/checkout/sessions", Some(body)).await;
        assert_eq!(reply.status, 201, "{}", reply.body);
        reply.body
    }

    /// `POST /api/checkout/sessions/{id}/{action}` (`complete` or `fail`) with the service token.
    pub async fn finish(&self, id: &str, action: &str) -> Reply {
        self.admin(Method::POST, &format!("/api/checkout/sessions/{id}/{action}"), None).await
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

    /// A GET whose raw response the test inspects (headers, HTML, status).
    pub async fn get_raw(&self, path: &str) -> reqwest::Response {
        self.http.get(format!("{}{path}", self.base)).send().await.unwrap()
    }

    /// `POST /api/stripe/checkout` with `body` as a service-token caller (its `userId` counts);
    /// returns status and JSON body.
    pub async fn checkout(&self, body: &Value) -> (u16, Value) {
        let reply =
            self.send(Method::POST, "/api/stripe/checkout", Some(body.clone()), true, None).await;
        (reply.status, reply.body)
    }

    /// `POST /api/stripe/checkout` without a token, with the session `cookie` if any.
    pub async fn checkout_as(&self, body: &Value, cookie: Option<&str>) -> (u16, Value) {
        let reply = self
            .send(Method::POST, "/api/stripe/checkout", Some(body.clone()), false, cookie)
            .await;
        (reply.status, reply.body)
    }

    /// A GET with the service token, answered as JSON.
    pub async fn service_get(&self, path: &str) -> Reply {
        self.send(Method::GET, path, None, true, None).await
    }

    /// The `name=value` cookie of a new session of `user_id` (logged in by the service).
    pub async fn login(&self, user_id: &str) -> String {
        let reply = self
            .send(Method::POST, "/api/sessions/login", Some(json!({"userId": user_id})), true, None)
            .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        set_cookie(&reply).0
    }

    /// The `name=value` cookie of a new guest session.
    pub async fn guest(&self) -> String {
        let reply = self.send(Method::POST, "/api/sessions/guest", None, false, None).await;
        assert_eq!(reply.status, 201, "{}", reply.body);
        set_cookie(&reply).0
    }

    pub async fn stop(self) {
        self.0.stop().await;
    }
}

/// A subscription checkout body for `user_id`.
pub fn subscription_checkout(user_id: &str, price_id: &str) -> Value {
    json!({"userId": user_id, "priceId": price_id})
}

/// A Stripe event of `event_type` about `customer_id`, shaped like the fixture envelope, as
/// webhook-ingest puts it on the stream. Its payload deliberately carries a stale status, which
/// the consumer must not trust.
pub fn subscription_event(
    event_id: &str,
    event_type: &str,
    customer_id: &str,
    created: i64,
) -> StripeEventMessage {
    let text = include_str!("../fixtures/customer.subscription.updated.json");
    let mut raw: Value = serde_json::from_str(text).unwrap();
    raw["id"] = json!(event_id);
    raw["type"] = json!(event_type);
    raw["created"] = json!(created);
    raw["data"]["object"]["customer"] = json!(customer_id);
    raw["data"]["object"]["status"] = json!("incomplete");
    StripeEventMessage {
        event_id: event_id.to_owned(),
        event_type: event_type.to_owned(),
        created,
        livemode: false,
        api_version: raw["api_version"].as_str().map(str::to_owned),
        object_id: raw["data"]["object"]["id"].as_str().map(str::to_owned),
        customer_id: Some(customer_id.to_owned()),
        raw: raw.to_string(),
    }
}

/// A cart of `n` lines of 2 demo mugs (2 × 500 cents from the catalog).
pub fn cart(n: usize) -> Value {
    let items: Vec<Value> = (0..n).map(|_| json!({"sku": "mug", "quantity": 2})).collect();
    json!({ "items": items })
}

/// The `name=value` pair of the reply's `Set-Cookie`, and the whole header.
pub fn set_cookie(reply: &Reply) -> (String, String) {
    let header =
        reply.headers.get("set-cookie").expect("a Set-Cookie header").to_str().unwrap().to_owned();
    let pair = header.split(';').next().unwrap().trim().to_owned();
    (pair, header)
}

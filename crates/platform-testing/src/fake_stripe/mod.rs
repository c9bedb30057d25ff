//! A local fake of the Stripe API (customers, Checkout sessions, subscriptions, payment intents)
//! speaking Stripe's wire format, with test controls and fault injection.
//!
//! Requests are what the real client sends: `Authorization: Bearer <secret key>` (anything else
//! gets Stripe's 401 error body), form-encoded bodies with nested keys
//! (`metadata[userId]=…`, `line_items[0][price_data][unit_amount]=…`, `expand[]=…`) and an optional
//! `Idempotency-Key` (a repeated key replays the first answer, as Stripe does). Responses are the
//! objects of this crate's `fixtures/stripe/` with ids and state filled in; errors are Stripe's
//! `{"error":{"type","message",…}}`.
//!
//! Endpoints: `POST /v1/customers`, `GET /v1/customers/{id}`, `GET /v1/customers?email=`,
//! `POST /v1/checkout/sessions`, `GET /v1/checkout/sessions/{id}` (`expand[]=subscription` /
//! `payment_intent`), `GET /v1/subscriptions?customer=&status=&limit=&expand[]=data.default_payment_method`,
//! `GET /v1/payment_intents?customer=&limit=`, and `GET /c/pay/{id}`: the "hosted payment page",
//! which completes the session (like [`FakeStripe::complete_checkout_session`]) and redirects to
//! its success URL, so `make run` can walk through a checkout in a browser.
//!
//! Test controls: counters (customers created, requests per route), the subscription state of a
//! customer, completion of a Checkout session (creating its subscription or payment intent),
//! queued faults per route (a status, or a delay applied *after* the answer was computed, so a
//! delayed response carries the state as it was when the request arrived), a fixed latency, and
//! [`FakeStripe::stop`] (connections refused: an outage). The server runs on its own thread and
//! actix system ([`crate::serve`]), so it keeps serving whatever the test's runtime does.
//!
//! Parts: `state` (the objects and counters), `wire` (Stripe's formats), `routes` (the requests).

mod routes;
mod state;
mod wire;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::web;
use serde_json::{Map, Value, json};

use state::subscription_object;
use state::{Inner, Shared, add_payment_intent, complete_session, insert_customer, now_secs};
pub use wire::nest_form;

use crate::serve::Served;

/// The secret key the fake accepts unless configured otherwise (also `make run`'s default).
pub const DEV_SECRET_KEY: &str = "sk_test_fake_stripe";

/// Route names used by the counters and by [`FakeStripe::inject`].
pub mod route {
    pub const CREATE_CUSTOMER: &str = "POST /v1/customers";
    pub const RETRIEVE_CUSTOMER: &str = "GET /v1/customers/{id}";
    pub const LIST_CUSTOMERS: &str = "GET /v1/customers";
    pub const CREATE_CHECKOUT_SESSION: &str = "POST /v1/checkout/sessions";
    pub const RETRIEVE_CHECKOUT_SESSION: &str = "GET /v1/checkout/sessions/{id}";
    pub const LIST_SUBSCRIPTIONS: &str = "GET /v1/subscriptions";
    pub const LIST_PAYMENT_INTENTS: &str = "GET /v1/payment_intents";
    /// Matches every route in [`super::FakeStripe::inject`].
    pub const ANY: &str = "*";
}

/// One injected misbehaviour, consumed by one request of its route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StripeFault {
    /// Answer this status with Stripe's `api_error` body (e.g. 500, 503; 429 → `rate_limit_error`).
    Status(u16),
    /// Compute the answer, wait this long, then send it.
    Delay(Duration),
}

/// How the fake behaves.
#[derive(Debug, Clone)]
pub struct FakeStripeConfig {
    /// 0 picks a free port.
    pub port: u16,
    /// The only accepted `Authorization: Bearer` value.
    pub secret_key: String,
    /// Added to every response.
    pub latency: Duration,
}

impl Default for FakeStripeConfig {
    fn default() -> Self {
        Self { port: 0, secret_key: DEV_SECRET_KEY.to_owned(), latency: Duration::ZERO }
    }
}

/// The subscription state a test gives a customer ([`FakeStripe::set_subscription`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionState {
    /// `active`, `trialing`, `past_due`, `canceled`, `unpaid`, `paused`, `incomplete`, …
    pub status: String,
    pub price_id: String,
    pub unit_amount: i64,
    pub current_period_start: i64,
    pub current_period_end: i64,
    pub cancel_at_period_end: bool,
    /// `(brand, last4)` of the default payment method, if any.
    pub card: Option<(String, String)>,
}

impl SubscriptionState {
    /// An active monthly subscription to `price_id` paid by a Visa ending 4242.
    pub fn active(price_id: &str) -> Self {
        let now = now_secs();
        Self {
            status: "active".to_owned(),
            price_id: price_id.to_owned(),
            unit_amount: 2_000,
            current_period_start: now,
            current_period_end: now + 30 * 24 * 3600,
            cancel_at_period_end: false,
            card: Some(("visa".to_owned(), "4242".to_owned())),
        }
    }
}

/// A running fake Stripe. Dropping it stops the server.
#[derive(Debug)]
pub struct FakeStripe {
    served: Served,
    shared: Arc<Shared>,
}

impl FakeStripe {
    /// Binds `127.0.0.1:<port>` and serves on a thread of its own until [`FakeStripe::stop`].
    pub fn start(config: FakeStripeConfig) -> anyhow::Result<Self> {
        // Bound first: Checkout sessions carry the fake's own address in their `url`.
        let listener = Served::bind(config.port)?;
        let shared = Arc::new(Shared {
            base_url: format!("http://{}", listener.local_addr()?),
            config,
            inner: Mutex::new(Inner::default()),
        });
        let data = web::Data::new(shared.clone());
        let served = Served::start_on("fake-stripe", listener, 1, move |config| {
            config
                .app_data(data.clone())
                .app_data(web::PayloadConfig::new(1 << 20))
                .default_service(web::to(routes::dispatch));
        })?;
        Ok(Self { served, shared })
    }

    /// `http://127.0.0.1:<port>`: the API base URL a client is configured with.
    pub fn base_url(&self) -> String {
        self.shared.base_url.clone()
    }

    pub fn port(&self) -> u16 {
        self.served.addr().port()
    }

    /// The accepted secret key.
    pub fn secret_key(&self) -> &str {
        &self.shared.config.secret_key
    }

    /// Customers created through `POST /v1/customers` (idempotent replays not counted).
    pub fn customers_created(&self) -> u64 {
        self.shared.lock().customers_created
    }

    /// Requests received for `route` (see [`route`]), rejected and faulty ones included.
    pub fn requests(&self, route: &str) -> u64 {
        self.shared.lock().requests.get(route).copied().unwrap_or(0)
    }

    /// A stored customer object.
    pub fn customer(&self, id: &str) -> Option<Value> {
        self.shared.lock().customers.get(id).cloned()
    }

    /// A stored Checkout session object.
    pub fn checkout_session(&self, id: &str) -> Option<Value> {
        self.shared.lock().sessions.get(id).cloned()
    }

    /// Creates a customer directly (not counted as created through the API).
    pub fn create_customer(&self, metadata: &[(&str, &str)]) -> String {
        let mut inner = self.shared.lock();
        let metadata: Map<String, Value> =
            metadata.iter().map(|(k, v)| ((*k).to_owned(), json!(v))).collect();
        insert_customer(&mut inner, None, Value::Object(metadata))
    }

    /// Makes `state` the customer's latest subscription: updates the latest one in place (same
    /// id), or creates one when the customer has none.
    pub fn set_subscription(&self, customer_id: &str, state: &SubscriptionState) -> String {
        let mut inner = self.shared.lock();
        let existing = inner
            .subscriptions
            .get(customer_id)
            .and_then(|subs| subs.first())
            .and_then(|sub| sub["id"].as_str())
            .map(str::to_owned);
        let id = existing.unwrap_or_else(|| inner.id("sub"));
        let subscription = subscription_object(&mut inner, &id, customer_id, state);
        let subs = inner.subscriptions.entry(customer_id.to_owned()).or_default();
        if subs.first().is_some_and(|sub| sub["id"] == json!(id)) {
            subs[0] = subscription;
        } else {
            subs.insert(0, subscription);
        }
        id
    }

    /// Records a payment intent of the customer (newest first); returns its id.
    pub fn add_payment_intent(&self, customer_id: &str, amount: i64, status: &str) -> String {
        let mut inner = self.shared.lock();
        add_payment_intent(&mut inner, customer_id, amount, "usd", status)
    }

    /// What the hosted payment page does when the buyer pays: the session becomes `complete` /
    /// `paid`, and gets an active subscription (mode `subscription`, to the price of its first
    /// line item) or a succeeded payment intent (mode `payment`, for its total). Returns false for
    /// an unknown session.
    pub fn complete_checkout_session(&self, session_id: &str) -> bool {
        let mut inner = self.shared.lock();
        complete_session(&mut inner, session_id)
    }

    /// What Stripe does to a session nobody paid in time (or whose delayed payment failed): it
    /// becomes `expired` / `unpaid`. Returns false for an unknown session.
    pub fn expire_checkout_session(&self, session_id: &str) -> bool {
        let mut inner = self.shared.lock();
        let Some(session) = inner.sessions.get_mut(session_id) else { return false };
        session["status"] = json!("expired");
        session["payment_status"] = json!("unpaid");
        true
    }

    /// Queues `faults` for `route` (a [`route`] name, or [`route::ANY`]); each request of that
    /// route consumes the next one.
    pub fn inject(&self, route: &str, faults: impl IntoIterator<Item = StripeFault>) {
        self.shared.lock().faults.entry(route.to_owned()).or_default().extend(faults);
    }

    /// Faults not consumed yet.
    pub fn pending_faults(&self) -> usize {
        self.shared.lock().faults.values().map(VecDeque::len).sum()
    }

    /// Stops serving: from now on connections are refused. Idempotent.
    pub fn stop(&mut self) {
        self.served.stop();
    }
}

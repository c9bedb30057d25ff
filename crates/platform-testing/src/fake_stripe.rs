//! A local fake of the Stripe API (customers, Checkout sessions, subscriptions, payment intents)
//! speaking Stripe's wire format, with test controls and fault injection.
//!
//! Requests are what the real client sends: `Authorization: Bearer <secret key>` (anything else
//! gets Stripe's 401 error body), form-encoded bodies with nested keys
//! (`metadata[userId]=…`, `line_items[0][price_data][unit_amount]=…`, `expand[]=…`) and an optional
//! `Idempotency-Key` (a repeated key replays the first answer, as Stripe does). Responses are the
//! objects of `shared/fixtures/stripe/objects/` (copied into `fixtures/stripe/` of this crate so
//! tests do not depend on `../shared`) with ids and state filled in; errors are Stripe's
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
//! actix system, so it keeps serving whatever the test's runtime does.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Map, Value, json};

const CUSTOMER: &str = include_str!("../fixtures/stripe/customer.json");
const CHECKOUT_SESSION: &str = include_str!("../fixtures/stripe/checkout_session.json");
const SUBSCRIPTION: &str = include_str!("../fixtures/stripe/subscription.json");
const PAYMENT_INTENT: &str = include_str!("../fixtures/stripe/payment_intent.json");

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

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    customers: HashMap<String, Value>,
    /// Creation order, for `GET /v1/customers`.
    customer_order: Vec<String>,
    sessions: HashMap<String, Value>,
    /// Per customer, newest first.
    subscriptions: HashMap<String, Vec<Value>>,
    payment_intents: HashMap<String, Vec<Value>>,
    payment_methods: HashMap<String, Value>,
    /// Idempotency key → (status, body) of the first answer.
    idempotency: HashMap<String, (u16, String)>,
    requests: HashMap<&'static str, u64>,
    customers_created: u64,
    faults: HashMap<String, VecDeque<StripeFault>>,
}

impl Inner {
    fn id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}_fake{:010}", self.next_id)
    }
}

#[derive(Debug)]
struct Shared {
    config: FakeStripeConfig,
    base_url: String,
    inner: Mutex<Inner>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running fake Stripe. Dropping it stops the server.
#[derive(Debug)]
pub struct FakeStripe {
    addr: SocketAddr,
    shared: Arc<Shared>,
    handle: Option<actix_web::dev::ServerHandle>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeStripe {
    /// Binds `127.0.0.1:<port>` and serves on a thread of its own until [`FakeStripe::stop`].
    pub fn start(config: FakeStripeConfig) -> anyhow::Result<Self> {
        let listener = std::net::TcpListener::bind(("127.0.0.1", config.port))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            config,
            base_url: format!("http://{addr}"),
            inner: Mutex::new(Inner::default()),
        });
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let served = shared.clone();
        let thread = std::thread::Builder::new().name("fake-stripe".into()).spawn(move || {
            let system = actix_web::rt::System::new();
            let result = system.block_on(async move {
                let data = web::Data::new(served);
                let server = actix_web::HttpServer::new(move || {
                    actix_web::App::new()
                        .app_data(data.clone())
                        .app_data(web::PayloadConfig::new(1 << 20))
                        .default_service(web::to(dispatch))
                })
                .workers(1)
                .disable_signals()
                .shutdown_timeout(0)
                .listen(listener)?
                .run();
                let _ = handle_tx.send(server.handle());
                server.await
            });
            if let Err(error) = result {
                tracing::error!(%error, "fake Stripe stopped with an error");
            }
        })?;
        let handle = handle_rx.recv_timeout(Duration::from_secs(10))?;
        Ok(Self { addr, shared, handle: Some(handle), thread: Some(thread) })
    }

    /// `http://127.0.0.1:<port>`: the API base URL a client is configured with.
    pub fn base_url(&self) -> String {
        self.shared.base_url.clone()
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
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
        if let Some(handle) = self.handle.take() {
            // `stop` returns a future that resolves once the server stopped; the server thread
            // ends with it, so joining the thread is the wait.
            drop(handle.stop(false));
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for FakeStripe {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Standard base64 with padding (for the Basic credentials of `curl -u key:`).
fn base64(text: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in text.as_bytes().chunks(3) {
        let bytes = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(bytes[0]) << 16) | (u32::from(bytes[1]) << 8) | u32::from(bytes[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn template(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::Null)
}

/// A Stripe error response.
fn stripe_error(status: u16, kind: &str, message: &str) -> (u16, String) {
    let body = json!({"error": {"type": kind, "message": message}});
    (status, body.to_string())
}

fn not_found(what: &str, id: &str) -> (u16, String) {
    let body = json!({"error": {
        "type": "invalid_request_error",
        "code": "resource_missing",
        "message": format!("No such {what}: '{id}'"),
        "param": "id",
    }});
    (404, body.to_string())
}

fn ok(value: &Value) -> (u16, String) {
    (200, value.to_string())
}

fn list(url: &str, data: Vec<Value>, has_more: bool) -> (u16, String) {
    ok(&json!({"object": "list", "data": data, "has_more": has_more, "url": url}))
}

/// Form pairs (`a[b][0][c]=v`, `expand[]=x`) as nested JSON: objects whose keys are all indices
/// become arrays; values stay strings, as Stripe receives them.
pub fn nest_form(pairs: &[(String, String)]) -> Value {
    let mut root = Value::Object(Map::new());
    for (key, value) in pairs {
        insert_path(&mut root, &key_segments(key), value);
    }
    arrays_from_indices(root)
}

/// `a[b][0][]` → `["a", "b", "0", ""]`.
fn key_segments(key: &str) -> Vec<String> {
    let (head, mut rest) = match key.find('[') {
        Some(i) => (&key[..i], &key[i..]),
        None => (key, ""),
    };
    let mut segments = vec![head.to_owned()];
    while let Some(open) = rest.strip_prefix('[') {
        let Some(end) = open.find(']') else { break };
        segments.push(open[..end].to_owned());
        rest = &open[end + 1..];
    }
    segments
}

fn insert_path(node: &mut Value, segments: &[String], value: &str) {
    let Some((first, rest)) = segments.split_first() else { return };
    let Value::Object(map) = node else { return };
    if first.is_empty() {
        // `x[]=v`: append under the next free index.
        let index = map.len().to_string();
        map.insert(index, json!(value));
        return;
    }
    if rest.is_empty() {
        map.insert(first.clone(), json!(value));
        return;
    }
    let child = map.entry(first.clone()).or_insert_with(|| Value::Object(Map::new()));
    if !child.is_object() {
        *child = Value::Object(Map::new());
    }
    insert_path(child, rest, value);
}

fn arrays_from_indices(node: Value) -> Value {
    match node {
        Value::Object(map) => {
            let all_indices = !map.is_empty() && map.keys().all(|k| k.parse::<usize>().is_ok());
            if all_indices {
                let mut items: Vec<(usize, Value)> = map
                    .into_iter()
                    .filter_map(|(k, v)| k.parse().ok().map(|i| (i, arrays_from_indices(v))))
                    .collect();
                items.sort_by_key(|(i, _)| *i);
                Value::Array(items.into_iter().map(|(_, v)| v).collect())
            } else {
                Value::Object(map.into_iter().map(|(k, v)| (k, arrays_from_indices(v))).collect())
            }
        }
        other => other,
    }
}

fn pairs(text: &str) -> Vec<(String, String)> {
    web::Query::<Vec<(String, String)>>::from_query(text)
        .map(|q| q.into_inner())
        .unwrap_or_default()
}

fn param<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn expands(pairs: &[(String, String)]) -> Vec<&str> {
    pairs
        .iter()
        .filter(|(k, _)| k == "expand[]" || k.starts_with("expand["))
        .map(|(_, v)| v.as_str())
        .collect()
}

fn insert_customer(inner: &mut Inner, email: Option<&str>, metadata: Value) -> String {
    let id = inner.id("cus");
    let mut customer = template(CUSTOMER);
    customer["id"] = json!(id);
    customer["created"] = json!(now_secs());
    customer["email"] = json!(email);
    customer["metadata"] = if metadata.is_object() { metadata } else { json!({}) };
    // A new customer has no discount (the fixture shows one with synthetic values).
    customer["discount"] = Value::Null;
    customer["invoice_prefix"] = json!(id.trim_start_matches("cus_fake").to_uppercase());
    inner.customers.insert(id.clone(), customer);
    inner.customer_order.push(id.clone());
    id
}

fn payment_method_object(inner: &mut Inner, customer_id: &str, brand: &str, last4: &str) -> Value {
    let id = inner.id("pm");
    let method = json!({
        "id": id,
        "object": "payment_method",
        "allow_redisplay": "unspecified",
        "billing_details": {
            "address": {"city": null, "country": null, "line1": null, "line2": null,
                        "postal_code": null, "state": null},
            "email": null, "name": null, "phone": null, "tax_id": null
        },
        "card": {
            "brand": brand,
            "checks": {"address_line1_check": null, "address_postal_code_check": null,
                       "cvc_check": "pass"},
            "country": "US",
            "display_brand": brand,
            "exp_month": 12,
            "exp_year": 2034,
            "fingerprint": format!("fp{last4}"),
            "funding": "credit",
            "generated_from": null,
            "last4": last4,
            "networks": {"available": [brand], "preferred": null},
            "regulated_status": "unregulated",
            "three_d_secure_usage": {"supported": true},
            "wallet": null
        },
        "created": now_secs(),
        "customer": customer_id,
        "livemode": false,
        "metadata": {},
        "type": "card"
    });
    inner.payment_methods.insert(id, method.clone());
    method
}

fn subscription_object(
    inner: &mut Inner,
    id: &str,
    customer_id: &str,
    state: &SubscriptionState,
) -> Value {
    let now = now_secs();
    let mut sub = template(SUBSCRIPTION);
    sub["id"] = json!(id);
    sub["customer"] = json!(customer_id);
    sub["status"] = json!(state.status);
    sub["created"] = json!(state.current_period_start);
    sub["start_date"] = json!(state.current_period_start);
    sub["billing_cycle_anchor"] = json!(state.current_period_start);
    sub["cancel_at_period_end"] = json!(state.cancel_at_period_end);
    sub["cancel_at"] =
        if state.cancel_at_period_end { json!(state.current_period_end) } else { Value::Null };
    let ended = matches!(state.status.as_str(), "canceled" | "incomplete_expired");
    sub["canceled_at"] = if ended { json!(now) } else { Value::Null };
    sub["ended_at"] = if ended { json!(now) } else { Value::Null };
    sub["default_payment_method"] = match &state.card {
        Some((brand, last4)) => {
            let method = payment_method_object(inner, customer_id, brand, last4);
            method["id"].clone()
        }
        None => Value::Null,
    };
    // Fields the fixture fills with synthetic values that a plain subscription does not have.
    for field in [
        "trial_start",
        "trial_end",
        "pending_update",
        "transfer_data",
        "next_pending_invoice_item_invoice",
        "pending_invoice_item_interval",
        "billing_cycle_anchor_config",
        "pause_collection",
    ] {
        sub[field] = Value::Null;
    }
    sub["billing_schedules"] = json!([]);
    sub["items"]["url"] = json!(format!("/v1/subscription_items?subscription={id}"));
    if let Some(item) = sub["items"]["data"].get_mut(0) {
        item["id"] = json!(format!("si_{}", id.trim_start_matches("sub_")));
        item["subscription"] = json!(id);
        item["created"] = json!(state.current_period_start);
        item["current_period_start"] = json!(state.current_period_start);
        item["current_period_end"] = json!(state.current_period_end);
        item["price"]["id"] = json!(state.price_id);
        item["price"]["unit_amount"] = json!(state.unit_amount);
        item["price"]["unit_amount_decimal"] = json!(state.unit_amount.to_string());
        item["price"]["transform_quantity"] = Value::Null;
        // The legacy plan view of the same price (the fixture's has synthetic values).
        let product = item["price"]["product"].clone();
        let plan = &mut item["plan"];
        plan["id"] = json!(state.price_id);
        plan["amount"] = json!(state.unit_amount);
        plan["amount_decimal"] = json!(state.unit_amount.to_string());
        plan["billing_scheme"] = json!("per_unit");
        plan["currency"] = json!("usd");
        plan["interval_count"] = json!(1);
        plan["livemode"] = json!(false);
        plan["metadata"] = json!({});
        plan["product"] = product;
        plan["transform_usage"] = Value::Null;
        item["billing_thresholds"] = Value::Null;
    }
    sub
}

fn add_payment_intent(
    inner: &mut Inner,
    customer_id: &str,
    amount: i64,
    currency: &str,
    status: &str,
) -> String {
    let id = inner.id("pi");
    let mut intent = template(PAYMENT_INTENT);
    intent["id"] = json!(id);
    intent["customer"] = json!(customer_id);
    intent["amount"] = json!(amount);
    intent["amount_received"] = json!(if status == "succeeded" { amount } else { 0 });
    intent["currency"] = json!(currency);
    intent["status"] = json!(status);
    intent["created"] = json!(now_secs());
    intent["client_secret"] = json!(format!("{id}_secret_fake"));
    for field in ["canceled_at", "last_payment_error", "next_action", "processing", "transfer_data"]
    {
        intent[field] = Value::Null;
    }
    inner.payment_intents.entry(customer_id.to_owned()).or_default().insert(0, intent);
    id
}

fn complete_session(inner: &mut Inner, session_id: &str) -> bool {
    let Some(session) = inner.sessions.get(session_id).cloned() else { return false };
    if session["status"] == "complete" {
        return true;
    }
    let customer = session["customer"].as_str().unwrap_or_default().to_owned();
    let mut session = session;
    session["status"] = json!("complete");
    session["payment_status"] = json!("paid");
    if session["mode"] == "subscription" {
        let line = &session["_line_items"][0];
        let price_id = line["price"].as_str().unwrap_or("price_fake_default").to_owned();
        let unit_amount = line["price_data"]["unit_amount"]
            .as_str()
            .and_then(|v| v.parse().ok())
            .or_else(|| session["amount_total"].as_i64())
            .unwrap_or(0);
        let state = SubscriptionState { unit_amount, ..SubscriptionState::active(&price_id) };
        let id = inner.id("sub");
        let subscription = subscription_object(inner, &id, &customer, &state);
        inner.subscriptions.entry(customer.clone()).or_default().insert(0, subscription);
        session["subscription"] = json!(id);
    } else {
        let amount = session["amount_total"].as_i64().unwrap_or(0);
        let currency = session["currency"].as_str().unwrap_or("usd").to_owned();
        let id = add_payment_intent(inner, &customer, amount, &currency, "succeeded");
        session["payment_intent"] = json!(id);
    }
    inner.sessions.insert(session_id.to_owned(), session);
    true
}

/// The session as served: without the private `_line_items`, with expansions applied.
fn public_session(inner: &Inner, session: &Value, expand: &[&str]) -> Value {
    let mut session = session.clone();
    if let Some(map) = session.as_object_mut() {
        map.remove("_line_items");
    }
    if expand.contains(&"subscription")
        && let Some(id) = session["subscription"].as_str()
    {
        let customer = session["customer"].as_str().unwrap_or_default();
        if let Some(sub) = inner
            .subscriptions
            .get(customer)
            .and_then(|subs| subs.iter().find(|s| s["id"] == json!(id)))
        {
            session["subscription"] = sub.clone();
        }
    }
    if expand.contains(&"payment_intent")
        && let Some(id) = session["payment_intent"].as_str()
    {
        let customer = session["customer"].as_str().unwrap_or_default();
        if let Some(intent) = inner
            .payment_intents
            .get(customer)
            .and_then(|list| list.iter().find(|p| p["id"] == json!(id)))
        {
            session["payment_intent"] = intent.clone();
        }
    }
    session
}

fn create_checkout_session(inner: &mut Inner, base_url: &str, form: &Value) -> (u16, String) {
    let mode = form["mode"].as_str().unwrap_or("payment");
    if !matches!(mode, "payment" | "subscription" | "setup") {
        return stripe_error(400, "invalid_request_error", "Invalid mode");
    }
    let Some(success_url) = form["success_url"].as_str() else {
        return stripe_error(400, "invalid_request_error", "Missing required param: success_url.");
    };
    let empty = Vec::new();
    let lines = form["line_items"].as_array().unwrap_or(&empty);
    if lines.is_empty() {
        return stripe_error(400, "invalid_request_error", "Missing required param: line_items.");
    }
    let mut total: i64 = 0;
    let mut currency = "usd".to_owned();
    for line in lines {
        let quantity: i64 = line["quantity"].as_str().and_then(|q| q.parse().ok()).unwrap_or(1);
        if let Some(amount) = line["price_data"]["unit_amount"].as_str() {
            let Ok(amount) = amount.parse::<i64>() else {
                return stripe_error(400, "invalid_request_error", "Invalid integer: unit_amount");
            };
            total += amount * quantity;
            if let Some(c) = line["price_data"]["currency"].as_str() {
                currency = c.to_owned();
            }
        } else if line["price"].is_string() {
            // A price id of the account: the fake prices every one at 2000.
            total += 2_000 * quantity;
        } else {
            return stripe_error(
                400,
                "invalid_request_error",
                "You must specify either `price` or `price_data` for each line item.",
            );
        }
    }
    let customer = form["customer"].as_str().map(str::to_owned);
    if let Some(customer) = &customer
        && !inner.customers.contains_key(customer)
    {
        return not_found("customer", customer);
    }
    let id = format!("cs_test_{}", inner.id("fake").trim_start_matches("fake_"));
    let mut session = template(CHECKOUT_SESSION);
    let now = now_secs();
    session["id"] = json!(id);
    session["object"] = json!("checkout.session");
    session["created"] = json!(now);
    session["expires_at"] = json!(now + 24 * 3600);
    session["mode"] = json!(mode);
    session["status"] = json!("open");
    session["payment_status"] = json!("unpaid");
    session["customer"] = json!(customer);
    session["customer_details"] = Value::Null;
    session["client_reference_id"] = form["client_reference_id"].clone();
    session["metadata"] =
        if form["metadata"].is_object() { form["metadata"].clone() } else { json!({}) };
    session["success_url"] = json!(success_url);
    session["cancel_url"] = form["cancel_url"].clone();
    session["amount_subtotal"] = json!(total);
    session["amount_total"] = json!(total);
    session["currency"] = json!(currency);
    session["payment_intent"] = Value::Null;
    session["subscription"] = Value::Null;
    session["url"] = json!(format!("{base_url}/c/pay/{id}"));
    for field in ["shipping_cost", "currency_conversion", "shipping_address_collection"] {
        session[field] = Value::Null;
    }
    session["total_details"] = json!({"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0});
    session["_line_items"] = Value::Array(lines.clone());
    let served = public_session(inner, &session, &[]);
    inner.sessions.insert(id, session);
    ok(&served)
}

/// One API request, answered under the state lock (so idempotent replays and counters are exact).
fn handle_api(
    shared: &Shared,
    method: &str,
    path: &str,
    query: &[(String, String)],
    form: &[(String, String)],
    authorization: Option<&str>,
    idempotency_key: Option<&str>,
) -> (u16, String, Option<Duration>) {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let route: &'static str = match (method, segments.as_slice()) {
        ("POST", ["v1", "customers"]) => route::CREATE_CUSTOMER,
        ("GET", ["v1", "customers"]) => route::LIST_CUSTOMERS,
        ("GET", ["v1", "customers", _]) => route::RETRIEVE_CUSTOMER,
        ("POST", ["v1", "checkout", "sessions"]) => route::CREATE_CHECKOUT_SESSION,
        ("GET", ["v1", "checkout", "sessions", _]) => route::RETRIEVE_CHECKOUT_SESSION,
        ("GET", ["v1", "subscriptions"]) => route::LIST_SUBSCRIPTIONS,
        ("GET", ["v1", "payment_intents"]) => route::LIST_PAYMENT_INTENTS,
        _ => {
            let message = format!("Unrecognized request URL ({method}: {path}).");
            let (status, body) = stripe_error(404, "invalid_request_error", &message);
            return (status, body, None);
        }
    };
    let mut inner = shared.lock();
    *inner.requests.entry(route).or_insert(0) += 1;
    // Bearer (the client libraries) or Basic with the key as user name (Stripe's curl examples).
    let key = &shared.config.secret_key;
    let accepted = [format!("Bearer {key}"), format!("Basic {}", base64(&format!("{key}:")))];
    if !authorization.is_some_and(|given| accepted.iter().any(|a| a == given)) {
        let (status, body) = stripe_error(
            401,
            "invalid_request_error",
            "Invalid API Key provided. You can find your API keys in the Dashboard.",
        );
        return (status, body, None);
    }
    let fault = [route, route::ANY]
        .iter()
        .find_map(|name| inner.faults.get_mut(*name).and_then(VecDeque::pop_front));
    let delay = match fault {
        Some(StripeFault::Status(status)) => {
            let kind = if status == 429 { "rate_limit_error" } else { "api_error" };
            let (status, body) = stripe_error(status, kind, "Injected failure of the fake Stripe");
            return (status, body, None);
        }
        Some(StripeFault::Delay(delay)) => Some(delay),
        None => None,
    };
    if let Some(key) = idempotency_key
        && let Some((status, body)) = inner.idempotency.get(key)
    {
        return (*status, body.clone(), delay);
    }
    let nested = nest_form(form);
    let (status, body) = match route {
        route::CREATE_CUSTOMER => {
            let id =
                insert_customer(&mut inner, nested["email"].as_str(), nested["metadata"].clone());
            inner.customers_created += 1;
            let name = nested["name"].as_str().map(str::to_owned);
            let customer = inner.customers.get_mut(&id).map(|c| {
                c["name"] = json!(name);
                c.clone()
            });
            ok(&customer.unwrap_or(Value::Null))
        }
        route::RETRIEVE_CUSTOMER => match inner.customers.get(segments[2]) {
            Some(customer) => ok(customer),
            None => not_found("customer", segments[2]),
        },
        route::LIST_CUSTOMERS => {
            let email = param(query, "email");
            let limit = param(query, "limit").and_then(|l| l.parse().ok()).unwrap_or(10usize);
            let data: Vec<Value> = inner
                .customer_order
                .iter()
                .rev()
                .filter_map(|id| inner.customers.get(id))
                .filter(|c| email.is_none_or(|e| c["email"].as_str() == Some(e)))
                .cloned()
                .collect();
            let more = data.len() > limit;
            list("/v1/customers", data.into_iter().take(limit).collect(), more)
        }
        route::CREATE_CHECKOUT_SESSION => {
            create_checkout_session(&mut inner, &shared.base_url, &nested)
        }
        route::RETRIEVE_CHECKOUT_SESSION => match inner.sessions.get(segments[3]) {
            Some(session) => ok(&public_session(&inner, session, &expands(query))),
            None => not_found("checkout.session", segments[3]),
        },
        route::LIST_SUBSCRIPTIONS => {
            let customer = param(query, "customer").unwrap_or_default();
            let status = param(query, "status");
            let limit = param(query, "limit").and_then(|l| l.parse().ok()).unwrap_or(10usize);
            let expand_pm = expands(query).contains(&"data.default_payment_method");
            let all = inner.subscriptions.get(customer).cloned().unwrap_or_default();
            let matching: Vec<Value> = all
                .into_iter()
                .filter(|s| match status {
                    None => s["status"] != "canceled",
                    Some("all") => true,
                    Some(wanted) => s["status"] == json!(wanted),
                })
                .collect();
            let more = matching.len() > limit;
            let data = matching
                .into_iter()
                .take(limit)
                .map(|mut s| {
                    if expand_pm
                        && let Some(pm) = s["default_payment_method"].as_str()
                        && let Some(method) = inner.payment_methods.get(pm)
                    {
                        s["default_payment_method"] = method.clone();
                    }
                    s
                })
                .collect();
            list("/v1/subscriptions", data, more)
        }
        route::LIST_PAYMENT_INTENTS => {
            let customer = param(query, "customer").unwrap_or_default();
            let limit = param(query, "limit").and_then(|l| l.parse().ok()).unwrap_or(10usize);
            let all = inner.payment_intents.get(customer).cloned().unwrap_or_default();
            let more = all.len() > limit;
            list("/v1/payment_intents", all.into_iter().take(limit).collect(), more)
        }
        _ => stripe_error(404, "invalid_request_error", "Unrecognized request URL."),
    };
    if let Some(key) = idempotency_key
        && method == "POST"
        && status < 500
    {
        inner.idempotency.insert(key.to_owned(), (status, body.clone()));
    }
    (status, body, delay)
}

async fn dispatch(
    request: HttpRequest,
    body: web::Bytes,
    shared: web::Data<Arc<Shared>>,
) -> HttpResponse {
    let path = request.path().to_owned();
    if let Some(session_id) = path.strip_prefix("/c/pay/") {
        return hosted_payment_page(&shared, session_id);
    }
    let header =
        |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let query = pairs(request.query_string());
    let form = pairs(std::str::from_utf8(&body).unwrap_or_default());
    let (status, body, delay) = handle_api(
        &shared,
        request.method().as_str(),
        &path,
        &query,
        &form,
        header("authorization").as_deref(),
        header("idempotency-key").as_deref(),
    );
    let wait = shared.config.latency + delay.unwrap_or_default();
    if !wait.is_zero() {
        actix_web::rt::time::sleep(wait).await;
    }
    HttpResponse::build(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .insert_header(("Request-Id", "req_fake"))
        .content_type("application/json")
        .body(body)
}

fn hosted_payment_page(shared: &Shared, session_id: &str) -> HttpResponse {
    let mut inner = shared.lock();
    if !complete_session(&mut inner, session_id) {
        return HttpResponse::NotFound()
            .content_type("text/plain")
            .body("No such checkout session");
    }
    let target = inner
        .sessions
        .get(session_id)
        .and_then(|s| s["success_url"].as_str())
        .map(|url| url.replace("{CHECKOUT_SESSION_ID}", session_id))
        .unwrap_or_default();
    HttpResponse::SeeOther().insert_header(("Location", target)).finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(k: &str, v: &str) -> (String, String) {
        (k.to_owned(), v.to_owned())
    }

    #[test]
    fn base64_matches_the_standard_alphabet_and_padding() {
        assert_eq!(base64("sk_test_x:"), "c2tfdGVzdF94Og==");
        assert_eq!(base64("abc"), "YWJj");
        assert_eq!(base64("ab"), "YWI=");
    }

    #[test]
    fn nested_form_keys_become_objects_and_arrays() {
        let form = [
            pair("metadata[userId]", "u1"),
            pair("line_items[0][price_data][unit_amount]", "500"),
            pair("line_items[0][quantity]", "2"),
            pair("line_items[1][price]", "price_1"),
            pair("expand[]", "a"),
            pair("expand[]", "b"),
            pair("mode", "payment"),
        ];
        let nested = nest_form(&form);
        assert_eq!(nested["metadata"]["userId"], "u1");
        assert_eq!(nested["line_items"][0]["price_data"]["unit_amount"], "500");
        assert_eq!(nested["line_items"][0]["quantity"], "2");
        assert_eq!(nested["line_items"][1]["price"], "price_1");
        assert_eq!(nested["expand"], json!(["a", "b"]));
        assert_eq!(nested["mode"], "payment");
    }
}

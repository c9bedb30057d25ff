//! The fake Stripe's state: its objects (customers, Checkout sessions, subscriptions, payment
//! methods and intents) built from the fixtures, idempotent replies, counters and queued faults.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

use serde_json::{Value, json};

use super::wire::{not_found, ok, stripe_error};
use super::{FakeStripeConfig, StripeFault, SubscriptionState};

const CUSTOMER: &str = include_str!("../../fixtures/stripe/customer.json");
const CHECKOUT_SESSION: &str = include_str!("../../fixtures/stripe/checkout_session.json");
const SUBSCRIPTION: &str = include_str!("../../fixtures/stripe/subscription.json");
const PAYMENT_INTENT: &str = include_str!("../../fixtures/stripe/payment_intent.json");

#[derive(Debug, Default)]
pub(super) struct Inner {
    pub(super) next_id: u64,
    pub(super) customers: HashMap<String, Value>,
    /// Creation order, for `GET /v1/customers`.
    pub(super) customer_order: Vec<String>,
    pub(super) sessions: HashMap<String, Value>,
    /// Per customer, newest first.
    pub(super) subscriptions: HashMap<String, Vec<Value>>,
    pub(super) payment_intents: HashMap<String, Vec<Value>>,
    pub(super) payment_methods: HashMap<String, Value>,
    /// Idempotency key → (status, body) of the first answer.
    pub(super) idempotency: HashMap<String, (u16, String)>,
    pub(super) requests: HashMap<&'static str, u64>,
    pub(super) customers_created: u64,
    pub(super) faults: HashMap<String, VecDeque<StripeFault>>,
}

impl Inner {
    pub(super) fn id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}_fake{:010}", self.next_id)
    }
}

#[derive(Debug)]
pub(super) struct Shared {
    pub(super) config: FakeStripeConfig,
    pub(super) base_url: String,
    pub(super) inner: Mutex<Inner>,
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub(super) fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

pub(super) fn template(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::Null)
}

pub(super) fn insert_customer(inner: &mut Inner, email: Option<&str>, metadata: Value) -> String {
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

pub(super) fn payment_method_object(
    inner: &mut Inner,
    customer_id: &str,
    brand: &str,
    last4: &str,
) -> Value {
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

pub(super) fn subscription_object(
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

pub(super) fn add_payment_intent(
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

pub(super) fn complete_session(inner: &mut Inner, session_id: &str) -> bool {
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
pub(super) fn public_session(inner: &Inner, session: &Value, expand: &[&str]) -> Value {
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

pub(super) fn create_checkout_session(
    inner: &mut Inner,
    base_url: &str,
    form: &Value,
) -> (u16, String) {
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

//! The fake Stripe's routes: one dispatcher that names the route, counts it, checks the key,
//! applies queued faults and idempotent replays, and answers from the state; plus the hosted page.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Value, json};

use super::state::{
    Shared, complete_session, create_checkout_session, insert_customer, public_session,
};
use super::wire::{base64, expands, list, nest_form, not_found, ok, pairs, param, stripe_error};
use super::{StripeFault, route};

/// One API request, answered under the state lock (so idempotent replays and counters are exact).
pub(super) fn handle_api(
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

pub(super) async fn dispatch(
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

pub(super) fn hosted_payment_page(shared: &Shared, session_id: &str) -> HttpResponse {
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

//! HTTP routes of the Stripe flow: create a Checkout session, the success page (eager sync), and
//! reads of the synced state.
//!
//! Who may call: a checkout is for the caller's user (session cookie) or, from a service-token
//! caller, the body's `userId`; anyone else checks out as a guest. The state reads answer only
//! the user's own session cookie or the service token: a caller without a session gets 401, a
//! session of another user 403.

use actix_web::http::header::{self, Accept, Header as _};
use actix_web::{HttpRequest, HttpResponse, web};
use platform_redis::ratelimit::{RateLimit, RateLimiter};
use platform_service::openapi::{RateLimited, Unavailable};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::State;
use super::user_sessions::caller;
use crate::domain::caller::Caller;
use crate::domain::payments::StripeService;
use crate::domain::stripe::{
    CheckoutCreated, CheckoutRequest, StripeState, checkout_session_of, period_end_text,
    validate_customer_id, validate_user_id,
};
use crate::error::CheckoutError;

/// Registers the Stripe routes: `payment` policy on the writes and the success page, `api` on
/// the state reads.
pub fn configure(
    cfg: &mut web::ServiceConfig,
    stripe: web::Data<StripeService>,
    limiter: &RateLimiter,
) {
    cfg.app_data(stripe)
        .service(
            web::resource("/api/stripe/checkout")
                .wrap(RateLimit::new(limiter.clone(), "payment"))
                .route(web::post().to(create_checkout)),
        )
        .service(
            web::resource("/store/checkout/success")
                .wrap(RateLimit::new(limiter.clone(), "payment"))
                .route(web::get().to(checkout_success)),
        )
        .service(
            web::resource("/api/stripe/customers/{customerId}/state")
                .wrap(RateLimit::new(limiter.clone(), "api"))
                .route(web::get().to(customer_state)),
        )
        .service(
            web::resource("/api/stripe/users/{userId}/subscription")
                .wrap(RateLimit::new(limiter.clone(), "api"))
                .route(web::get().to(user_subscription)),
        );
}

/// `POST /api/stripe/checkout`: a Stripe Checkout session for a checkout session, catalog items
/// or a catalog price.
///
/// For the user of the caller's session cookie, a service-token caller's `userId`, or else a
/// guest.
#[utoipa::path(
    post,
    path = "/api/stripe/checkout",
    tag = "stripe",
    request_body = CheckoutRequest,
    security(("serviceToken" = []), ("sessionCookie" = []), ()),
    responses(
        (status = 200, description = "Created: send the buyer to `url`", body = CheckoutCreated),
        (status = 400, description = "A field breaking its rule (`invalid_input`), items the catalog does not price (`unknown_product`, `price_mismatch`, `invalid_quantity`), a price it does not list (`unknown_price`), a checkout session's cart breaking a rule, or the body is not the expected JSON", body = platform_service::ErrorBody),
        (status = 401, description = "An `Authorization` header that is not the service token (`unauthorized`)", body = platform_service::ErrorBody),
        (status = 403, description = "The checkout session belongs to another user (`forbidden`)", body = platform_service::ErrorBody),
        (status = 404, description = "No such checkout session, or it expired (`checkout_session_not_found`)", body = platform_service::ErrorBody),
        (status = 409, description = "The checkout session is no longer open (`invalid_transition`), or concurrent writes kept winning (`conflict`)", body = platform_service::ErrorBody),
        (status = 502, description = "Stripe refused the request (`stripe_error`)", body = platform_service::ErrorBody),
        (status = 503, description = "Payments are not configured (`stripe_not_configured`), Stripe is unavailable (`stripe_unavailable`), another request is creating this user's customer (`stripe_sync_busy`), or storage is unavailable (`unavailable`)", body = platform_service::ErrorBody),
        RateLimited,
    )
)]
#[tracing::instrument(name = "create_stripe_checkout", skip_all)]
pub(super) async fn create_checkout(
    stripe: web::Data<StripeService>,
    state: web::Data<State>,
    request: HttpRequest,
    body: web::Json<CheckoutRequest>,
) -> Result<HttpResponse, CheckoutError> {
    let caller = caller(&request, &state.user_sessions).await?;
    let cart = stripe.cart_for(&body, &caller).await?;
    let created = stripe.create_checkout(&cart).await?;
    Ok(HttpResponse::Ok().json(created))
}

#[derive(Debug, Deserialize)]
pub(super) struct SuccessQuery {
    session_id: Option<String>,
}

/// What the success page reports (JSON, or the HTML page built from it).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct SuccessDetails {
    /// The Stripe Checkout session (`cs_…`).
    session_id: String,
    /// Stripe's `open`, `complete` or `expired`.
    status: Option<String>,
    /// Stripe's `paid`, `unpaid` or `no_payment_required`.
    payment_status: String,
    /// Stripe's `payment`, `subscription` or `setup`.
    mode: String,
    /// In the smallest currency unit.
    amount_total: Option<i64>,
    currency: Option<String>,
    customer_id: Option<String>,
    /// The user the checkout was for (`client_reference_id`).
    user_id: Option<String>,
    /// The checkout session the payment was for.
    checkout_session_id: Option<String>,
    /// The customer's synced Stripe state.
    subscription: Option<StripeState>,
}

fn validate_session_id(id: Option<&str>) -> Result<&str, CheckoutError> {
    let Some(id) = id.filter(|id| !id.is_empty()) else {
        return Err(CheckoutError::invalid_field("session_id", "is required"));
    };
    let ok = id.len() <= 255
        && id.starts_with("cs_")
        && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(id)
    } else {
        Err(CheckoutError::invalid_field(
            "session_id",
            "must be a Stripe Checkout session id (cs_…)",
        ))
    }
}

/// Whether the client ranks HTML above JSON (browsers after Stripe's redirect).
fn prefers_html(request: &HttpRequest) -> bool {
    let Ok(accept) = Accept::parse(request) else { return false };
    accept
        .ranked()
        .into_iter()
        .find(|mime| {
            (mime.type_() == "text" && mime.subtype() == "html")
                || (mime.type_() == "application" && mime.subtype() == "json")
        })
        .is_some_and(|mime| mime.subtype() == "html")
}

/// `GET /store/checkout/success?session_id=`: where Stripe sends the buyer after paying.
///
/// Settles the checkout session and syncs the customer's Stripe state now (not when the webhook
/// arrives). HTML when the client's `Accept` ranks `text/html` above `application/json`
/// (browsers), else JSON.
#[utoipa::path(
    get,
    path = "/store/checkout/success",
    tag = "stripe",
    params(("session_id" = String, Query, pattern = "^cs_[A-Za-z0-9_]*$", max_length = 255, description = "The Stripe Checkout session id Stripe appends")),
    responses(
        (status = 200, description = "The purchase: JSON, or an HTML page for browsers", content(
            (SuccessDetails = "application/json"),
            (String = "text/html"),
        )),
        (status = 400, description = "`session_id` missing or not a Stripe Checkout session id (`invalid_input`)", body = platform_service::ErrorBody),
        (status = 404, description = "Stripe has no such Checkout session (`stripe_session_not_found`)", body = platform_service::ErrorBody),
        (status = 502, description = "Stripe refused the request (`stripe_error`)", body = platform_service::ErrorBody),
        (status = 503, description = "Payments are not configured (`stripe_not_configured`), Stripe is unavailable (`stripe_unavailable`), another sync of this customer is running (`stripe_sync_busy`), or storage is unavailable (`unavailable`)", body = platform_service::ErrorBody),
        RateLimited,
    )
)]
#[tracing::instrument(name = "stripe_checkout_success", skip_all)]
pub(super) async fn checkout_success(
    stripe: web::Data<StripeService>,
    request: HttpRequest,
    query: web::Query<SuccessQuery>,
) -> Result<HttpResponse, CheckoutError> {
    let session_id = validate_session_id(query.session_id.as_deref())?;
    let session = stripe.retrieve_checkout(session_id).await?;
    let customer_id = session.customer.as_ref().map(|c| c.id().as_str().to_owned());
    // The checkout session this payment was for is completed once Stripe says paid; a failure
    // here must not hide the purchase from the buyer (the Stripe event retries it).
    let checkout_session_id = checkout_session_of(&session);
    if let Err(error) = stripe.settle_checkout(&session).await {
        tracing::warn!(checkout_session_id = checkout_session_id.as_deref().unwrap_or_default(), error = %platform_service::error::error_chain(&error), "checkout session not marked completed; its stripe event or the next success page retries");
    }
    // Eager sync: the buyer sees the new state now, not when the webhook arrives.
    let state = match &customer_id {
        Some(id) => stripe.sync_stripe_data_to_redis(id).await?.state().cloned(),
        None => None,
    };
    let details = SuccessDetails {
        session_id: session.id.as_str().to_owned(),
        status: session.status.as_ref().map(|s| s.as_str().to_owned()),
        payment_status: session.payment_status.as_str().to_owned(),
        mode: session.mode.as_str().to_owned(),
        amount_total: session.amount_total,
        currency: session.currency.as_ref().map(ToString::to_string),
        customer_id,
        user_id: session.client_reference_id,
        checkout_session_id,
        subscription: state,
    };
    if prefers_html(&request) {
        return Ok(HttpResponse::Ok()
            .content_type("text/html; charset=utf-8")
            .body(success_page(&details)));
    }
    Ok(HttpResponse::Ok().json(details))
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn success_page(details: &SuccessDetails) -> String {
    let text = |value: Option<&str>| value.map_or_else(|| "–".to_owned(), escape);
    let amount = match (details.amount_total, details.currency.as_deref()) {
        (Some(cents), Some(currency)) => {
            format!("{}.{:02} {}", cents / 100, cents % 100, escape(&currency.to_uppercase()))
        }
        _ => "–".to_owned(),
    };
    let subscription = match &details.subscription {
        Some(state) if state.status != "none" => format!(
            "<p>Subscription: <strong>{}</strong>{}{}</p>",
            escape(&state.status),
            period_end_text(state)
                .map(|end| format!(", renews {}", escape(&end)))
                .unwrap_or_default(),
            state
                .payment_method
                .as_ref()
                .map(|pm| format!(", {} ending {}", escape(&pm.brand), escape(&pm.last4)))
                .unwrap_or_default(),
        ),
        _ => String::new(),
    };
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Thank you</title></head>\n<body>\n<h1>Thank you for your purchase</h1>\n<p>Order {}: {} ({})</p>\n<p>Total: {}</p>\n{}\n</body></html>\n",
        text(Some(&details.session_id)),
        text(details.status.as_deref()),
        text(Some(&details.payment_status)),
        amount,
        subscription,
    )
}

/// The caller's right to `customer_id`'s state: the service, or the user whose customer it is
/// (checked before any lookup of the state, so a 403 says nothing about whether it exists).
async fn may_read_customer(
    caller: &Caller,
    stripe: &StripeService,
    customer_id: &str,
) -> Result<(), CheckoutError> {
    match caller {
        Caller::Service => Ok(()),
        Caller::User(user_id) => {
            let own = stripe.cached_customer_id(user_id).await?;
            if own.as_deref() == Some(customer_id) {
                Ok(())
            } else {
                Err(CheckoutError::Forbidden("This Stripe state belongs to another user"))
            }
        }
        Caller::Guest => Err(CheckoutError::Forbidden("This Stripe state belongs to another user")),
        Caller::Anonymous => Err(CheckoutError::NoSession),
    }
}

/// `GET /api/stripe/customers/{customerId}/state`: the customer's synced Stripe state (its user's
/// own session cookie, or the service token).
#[utoipa::path(
    get,
    path = "/api/stripe/customers/{customerId}/state",
    tag = "stripe",
    params(("customerId" = String, Path, pattern = "^cus_[A-Za-z0-9_]+$", max_length = 255, description = "The Stripe customer id")),
    security(("serviceToken" = []), ("sessionCookie" = [])),
    responses(
        (status = 200, description = "The state as last synced", body = StripeState,
            headers(("Cache-Control" = String, description = "`no-store`"))),
        (status = 400, description = "`customerId` is not a Stripe customer id (`invalid_input`)", body = platform_service::ErrorBody),
        (status = 401, description = "No live session cookie (`no_session`), or an `Authorization` header that is not the service token (`unauthorized`)", body = platform_service::ErrorBody),
        (status = 403, description = "The state belongs to another user, or the caller is a guest (`forbidden`)", body = platform_service::ErrorBody),
        (status = 404, description = "No state recorded for this customer (`stripe_state_not_found`)", body = platform_service::ErrorBody),
        RateLimited,
        Unavailable,
    )
)]
#[tracing::instrument(name = "stripe_customer_state", skip(stripe, state, request))]
pub(super) async fn customer_state(
    stripe: web::Data<StripeService>,
    state: web::Data<State>,
    request: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, CheckoutError> {
    let customer_id = path.into_inner();
    let caller = caller(&request, &state.user_sessions).await?;
    may_read_customer(&caller, &stripe, &customer_id).await?;
    validate_customer_id(&customer_id)?;
    let state =
        stripe.stored_state(&customer_id).await?.ok_or(CheckoutError::StripeStateNotFound)?;
    Ok(HttpResponse::Ok().insert_header((header::CACHE_CONTROL, "no-store")).json(state))
}

/// A user's customer and its synced Stripe state.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct UserSubscription {
    user_id: String,
    customer_id: String,
    subscription: StripeState,
}

/// `GET /api/stripe/users/{userId}/subscription`: the user's Stripe state (the user's own
/// session cookie, or the service token).
#[utoipa::path(
    get,
    path = "/api/stripe/users/{userId}/subscription",
    tag = "stripe",
    params(("userId" = String, Path, pattern = "^[A-Za-z0-9_.:@-]{1,128}$", description = "The user id")),
    security(("serviceToken" = []), ("sessionCookie" = [])),
    responses(
        (status = 200, description = "The user's customer and its state as last synced", body = UserSubscription,
            headers(("Cache-Control" = String, description = "`no-store`"))),
        (status = 400, description = "A malformed `userId` (`invalid_input`)", body = platform_service::ErrorBody),
        (status = 401, description = "No live session cookie (`no_session`), or an `Authorization` header that is not the service token (`unauthorized`)", body = platform_service::ErrorBody),
        (status = 403, description = "Another user's, or the caller is a guest (`forbidden`)", body = platform_service::ErrorBody),
        (status = 404, description = "No Stripe customer for this user (`stripe_customer_not_found`), or no state recorded (`stripe_state_not_found`)", body = platform_service::ErrorBody),
        RateLimited,
        Unavailable,
    )
)]
#[tracing::instrument(name = "stripe_user_subscription", skip(stripe, state, request))]
pub(super) async fn user_subscription(
    stripe: web::Data<StripeService>,
    state: web::Data<State>,
    request: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, CheckoutError> {
    let user_id = path.into_inner();
    let caller = caller(&request, &state.user_sessions).await?;
    caller.may_read_user(&user_id)?;
    validate_user_id(&user_id)?;
    let customer_id =
        stripe.cached_customer_id(&user_id).await?.ok_or(CheckoutError::StripeCustomerNotFound)?;
    let state =
        stripe.stored_state(&customer_id).await?.ok_or(CheckoutError::StripeStateNotFound)?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(UserSubscription { user_id, customer_id, subscription: state }))
}

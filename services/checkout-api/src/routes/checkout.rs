//! `/api/checkout/...`: checkout sessions (create, read, update, complete, fail) and the
//! coupon / delivery lookups a cart page makes before creating one.
//!
//! Who may do what: anyone may create a session (for the user of their session cookie; a body
//! `userId` only from a service-token caller), and whoever holds a session's id may read it and
//! change its cart (prices always come from the catalog). Completing or failing it changes what
//! was paid, so only the payment result (Stripe) or a service-token caller may.

use actix_web::http::header::ContentType;
use actix_web::{HttpRequest, HttpResponse, web};
use platform_redis::cache::CacheStatus;
use platform_service::RequireAdmin;
use serde::Deserialize;
use serde_json::json;

use super::user_sessions::caller;
use super::{Policies, State};
use crate::domain::pricing::{delivery_charge, normalise_code};
use crate::domain::sessions::{
    CreateSessionRequest, Status, UpdateSessionRequest, check_distance, parse_id,
};
use crate::error::CheckoutError;

pub fn configure(cfg: &mut web::ServiceConfig, policies: &Policies) {
    cfg.service(
        web::resource("/api/checkout/sessions")
            .wrap(policies.api())
            .route(web::post().to(create_session)),
    )
    .service(
        web::resource("/api/checkout/sessions/{id}")
            .wrap(policies.api())
            .route(web::get().to(get_session))
            .route(web::patch().to(update_session))
            .route(web::put().to(update_session)),
    )
    .service(
        web::resource("/api/checkout/sessions/{id}/complete")
            .wrap(policies.api())
            .route(web::post().to(complete_session)),
    )
    .service(
        web::resource("/api/checkout/sessions/{id}/fail")
            .wrap(policies.api())
            .route(web::post().to(fail_session)),
    )
    .service(
        web::resource("/api/checkout/coupons/validate")
            .wrap(policies.api())
            .route(web::post().to(validate_coupon)),
    )
    .service(
        web::resource("/api/checkout/delivery")
            .wrap(policies.api())
            .route(web::get().to(delivery_quote)),
    );
}

async fn create_session(
    state: web::Data<State>,
    request: HttpRequest,
    body: web::Json<CreateSessionRequest>,
) -> Result<HttpResponse, CheckoutError> {
    let body = body.into_inner();
    let caller = caller(&request, &state.user_sessions).await?;
    if body.user_id.is_some() && !caller.is_service() {
        tracing::debug!("userId in the body of a non-service caller ignored");
    }
    let user_id = caller.acting_user(body.user_id.as_deref());
    let view = state.checkout.create(body, user_id).await?;
    Ok(HttpResponse::Created().json(view))
}

/// The hot read: borrows the state and the id from the request rather than extracting owned
/// copies (`web::Data` is an `Arc` both worker threads would count up and down per read).
async fn get_session(req: HttpRequest) -> Result<HttpResponse, CheckoutError> {
    let state = req.app_data::<web::Data<State>>().ok_or_else(|| {
        CheckoutError::Internal(anyhow::anyhow!("checkout-api state is not registered"))
    })?;
    let id = parse_id(req.match_info().get("id").unwrap_or_default())?;
    let body = state.checkout.get_json(id).await?;
    Ok(HttpResponse::Ok().content_type(ContentType::json()).body(body))
}

async fn update_session(
    state: web::Data<State>,
    path: web::Path<String>,
    body: web::Json<UpdateSessionRequest>,
) -> Result<HttpResponse, CheckoutError> {
    let id = parse_id(&path)?;
    Ok(HttpResponse::Ok().json(state.checkout.update(id, body.into_inner()).await?))
}

async fn complete_session(
    _service: RequireAdmin,
    state: web::Data<State>,
    path: web::Path<String>,
) -> Result<HttpResponse, CheckoutError> {
    let id = parse_id(&path)?;
    Ok(HttpResponse::Ok().json(state.checkout.transition(id, Status::Completed).await?))
}

async fn fail_session(
    _service: RequireAdmin,
    state: web::Data<State>,
    path: web::Path<String>,
) -> Result<HttpResponse, CheckoutError> {
    let id = parse_id(&path)?;
    Ok(HttpResponse::Ok().json(state.checkout.transition(id, Status::Failed).await?))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ValidateCoupon {
    code: String,
    subtotal_cents: i64,
}

/// `{code, subtotalCents}` → the discount, or 400 with why the coupon does not apply.
#[tracing::instrument(name = "validate_coupon", skip_all)]
async fn validate_coupon(
    state: web::Data<State>,
    body: web::Json<ValidateCoupon>,
) -> Result<HttpResponse, CheckoutError> {
    let body = body.into_inner();
    if body.subtotal_cents < 0 {
        return Err(CheckoutError::invalid("invalid_amount", "subtotalCents must be >= 0"));
    }
    let code = normalise_code(&body.code)?;
    let cached = state.checkout.pricing.coupon(&code).await?;
    let coupon = cached.value.ok_or(CheckoutError::UnknownCoupon)?;
    let discount = coupon.discount(body.subtotal_cents, chrono::Utc::now())?;
    Ok(with_cache_header(cached.status).json(json!({
        "valid": true,
        "code": coupon.code,
        "kind": coupon.kind,
        "value": coupon.value,
        "minOrderCents": coupon.min_order_cents,
        "expiresAt": coupon.expires_at,
        "discountCents": discount,
    })))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeliveryQuery {
    distance_km: f64,
}

/// `?distanceKm=` → the delivery charge.
#[tracing::instrument(name = "delivery_quote", skip_all)]
async fn delivery_quote(
    state: web::Data<State>,
    query: web::Query<DeliveryQuery>,
) -> Result<HttpResponse, CheckoutError> {
    let distance = query.distance_km;
    check_distance(distance, &state.checkout.limits)?;
    let cached = state.checkout.pricing.bands().await?;
    let charge = delivery_charge(&cached.value, distance)?;
    Ok(with_cache_header(cached.status)
        .json(json!({ "distanceKm": distance, "chargeCents": charge })))
}

fn with_cache_header(status: CacheStatus) -> actix_web::HttpResponseBuilder {
    let mut response = HttpResponse::Ok();
    response.insert_header(("X-Cache", status.as_header()));
    response
}

//! `/api/checkout/...`: checkout sessions (create, read, update, complete, fail) and the
//! coupon / delivery lookups a cart page makes before creating one.
//!
//! Who may do what: anyone may create a session (for the user of their session cookie; a body
//! `userId` only from a service-token caller), and whoever holds a session's id may read it and
//! change its cart (prices always come from the catalog). Completing or failing it changes what
//! was paid, so only the payment result (Stripe) or a service-token caller may.

use actix_web::http::header::ContentType;
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Utc};
use platform_redis::cache::CacheStatus;
use platform_service::RequireAdmin;
use platform_service::openapi::{RateLimited, Unauthorized, Unavailable};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::user_sessions::caller;
use super::{Policies, State};
use crate::domain::pricing::{CouponKind, delivery_charge, normalise_code};
use crate::domain::sessions::{
    CreateSessionRequest, SessionView, Status, UpdateSessionRequest, check_distance, parse_id,
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
            .route(web::put().to(replace_session)),
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

/// `POST /api/checkout/sessions`: a new open session, priced from the catalog.
///
/// For the user of the caller's session cookie; a service-token caller may name `userId`.
#[utoipa::path(
    post,
    path = "/api/checkout/sessions",
    tag = "checkout",
    request_body = CreateSessionRequest,
    security(("serviceToken" = []), ("sessionCookie" = []), ()),
    responses(
        (status = 201, description = "Created", body = SessionView),
        (status = 400, description = "The cart breaks a rule (`empty_cart`, `too_many_items`, `invalid_quantity`, `unknown_product`, `price_mismatch`, `invalid_item`, `invalid_coupon_code`, `unknown_coupon`, `coupon_inactive`, `coupon_expired`, `coupon_minimum_not_met`, `invalid_distance`, `delivery_out_of_range`), or the body is not the expected JSON", body = platform_service::ErrorBody),
        (status = 401, description = "An `Authorization` header that is not the service token (`unauthorized`)", body = platform_service::ErrorBody),
        RateLimited,
        Unavailable,
    )
)]
pub(super) async fn create_session(
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

/// `GET /api/checkout/sessions/{id}`: the session, extending its idle expiry.
///
/// The hot read: borrows the state and the id from the request rather than extracting owned
/// copies (`web::Data` is an `Arc` both worker threads would count up and down per read).
#[utoipa::path(
    get,
    path = "/api/checkout/sessions/{id}",
    tag = "checkout",
    params(("id" = String, Path, description = "The session id (a UUID)")),
    responses(
        (status = 200, description = "The session", body = SessionView),
        (status = 400, description = "`id` is not a UUID (`invalid_session_id`)", body = platform_service::ErrorBody),
        (status = 404, description = "No such session, or it expired (`session_not_found`)", body = platform_service::ErrorBody),
        RateLimited,
        Unavailable,
    )
)]
pub(super) async fn get_session(req: HttpRequest) -> Result<HttpResponse, CheckoutError> {
    let state = req.app_data::<web::Data<State>>().ok_or_else(|| {
        CheckoutError::Internal(anyhow::anyhow!("checkout-api state is not registered"))
    })?;
    let id = parse_id(req.match_info().get("id").unwrap_or_default())?;
    let body = state.checkout.get_json(id).await?;
    Ok(HttpResponse::Ok().content_type(ContentType::json()).body(body))
}

/// `PATCH /api/checkout/sessions/{id}`: changes the cart of an open session and reprices it.
#[utoipa::path(
    patch,
    path = "/api/checkout/sessions/{id}",
    tag = "checkout",
    params(("id" = String, Path, description = "The session id (a UUID)")),
    request_body = UpdateSessionRequest,
    responses(
        (status = 200, description = "The updated session", body = SessionView),
        (status = 400, description = "`id` is not a UUID, the body names no field (`empty_update`), or the cart breaks a rule (as on create)", body = platform_service::ErrorBody),
        (status = 404, description = "No such session, or it expired (`session_not_found`)", body = platform_service::ErrorBody),
        (status = 409, description = "The session is no longer open (`invalid_transition`), or concurrent writes kept winning (`conflict`)", body = platform_service::ErrorBody),
        RateLimited,
        Unavailable,
    )
)]
pub(super) async fn update_session(
    state: web::Data<State>,
    path: web::Path<String>,
    body: web::Json<UpdateSessionRequest>,
) -> Result<HttpResponse, CheckoutError> {
    let id = parse_id(&path)?;
    Ok(HttpResponse::Ok().json(state.checkout.update(id, body.into_inner()).await?))
}

/// `PUT /api/checkout/sessions/{id}`: the same as PATCH (a handler of its own only so that the
/// document gives each method its own operation).
#[utoipa::path(
    put,
    path = "/api/checkout/sessions/{id}",
    tag = "checkout",
    params(("id" = String, Path, description = "The session id (a UUID)")),
    request_body = UpdateSessionRequest,
    responses(
        (status = 200, description = "The updated session", body = SessionView),
        (status = 400, description = "`id` is not a UUID, the body names no field (`empty_update`), or the cart breaks a rule (as on create)", body = platform_service::ErrorBody),
        (status = 404, description = "No such session, or it expired (`session_not_found`)", body = platform_service::ErrorBody),
        (status = 409, description = "The session is no longer open (`invalid_transition`), or concurrent writes kept winning (`conflict`)", body = platform_service::ErrorBody),
        RateLimited,
        Unavailable,
    )
)]
pub(super) async fn replace_session(
    state: web::Data<State>,
    path: web::Path<String>,
    body: web::Json<UpdateSessionRequest>,
) -> Result<HttpResponse, CheckoutError> {
    update_session(state, path, body).await
}

/// `POST /api/checkout/sessions/{id}/complete`: marks an open session paid (service token).
#[utoipa::path(
    post,
    path = "/api/checkout/sessions/{id}/complete",
    tag = "checkout",
    params(("id" = String, Path, description = "The session id (a UUID)")),
    security(("serviceToken" = [])),
    responses(
        (status = 200, description = "The completed session", body = SessionView),
        (status = 400, description = "`id` is not a UUID (`invalid_session_id`)", body = platform_service::ErrorBody),
        (status = 404, description = "No such session, or it expired (`session_not_found`)", body = platform_service::ErrorBody),
        (status = 409, description = "The session is no longer open (`invalid_transition`), or concurrent writes kept winning (`conflict`)", body = platform_service::ErrorBody),
        Unauthorized,
        RateLimited,
        Unavailable,
    )
)]
pub(super) async fn complete_session(
    _service: RequireAdmin,
    state: web::Data<State>,
    path: web::Path<String>,
) -> Result<HttpResponse, CheckoutError> {
    let id = parse_id(&path)?;
    Ok(HttpResponse::Ok().json(state.checkout.transition(id, Status::Completed).await?))
}

/// `POST /api/checkout/sessions/{id}/fail`: marks an open session failed (service token).
#[utoipa::path(
    post,
    path = "/api/checkout/sessions/{id}/fail",
    tag = "checkout",
    params(("id" = String, Path, description = "The session id (a UUID)")),
    security(("serviceToken" = [])),
    responses(
        (status = 200, description = "The failed session", body = SessionView),
        (status = 400, description = "`id` is not a UUID (`invalid_session_id`)", body = platform_service::ErrorBody),
        (status = 404, description = "No such session, or it expired (`session_not_found`)", body = platform_service::ErrorBody),
        (status = 409, description = "The session is no longer open (`invalid_transition`), or concurrent writes kept winning (`conflict`)", body = platform_service::ErrorBody),
        Unauthorized,
        RateLimited,
        Unavailable,
    )
)]
pub(super) async fn fail_session(
    _service: RequireAdmin,
    state: web::Data<State>,
    path: web::Path<String>,
) -> Result<HttpResponse, CheckoutError> {
    let id = parse_id(&path)?;
    Ok(HttpResponse::Ok().json(state.checkout.transition(id, Status::Failed).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct ValidateCoupon {
    /// 1 to 32 letters, digits, `_` or `-` (trimmed, case-insensitive).
    code: String,
    #[schema(minimum = 0)]
    subtotal_cents: i64,
}

/// A coupon that applies, and its discount on the subtotal.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct CouponValidation {
    /// Always `true` (a coupon that does not apply answers 400).
    valid: bool,
    code: String,
    kind: CouponKind,
    value: i64,
    min_order_cents: i64,
    expires_at: Option<DateTime<Utc>>,
    discount_cents: i64,
}

/// `POST /api/checkout/coupons/validate`: `{code, subtotalCents}` → the discount, or 400 with
/// why the coupon does not apply.
#[utoipa::path(
    post,
    path = "/api/checkout/coupons/validate",
    tag = "checkout",
    request_body = ValidateCoupon,
    responses(
        (status = 200, description = "The coupon applies", body = CouponValidation,
            headers(("X-Cache" = String, description = "Where the coupon definition came from: `HIT`, `MISS` or `STALE`"))),
        (status = 400, description = "The coupon does not apply (`unknown_coupon`, `coupon_inactive`, `coupon_expired`, `coupon_minimum_not_met`), the code is malformed (`invalid_coupon_code`), `subtotalCents` < 0 (`invalid_amount`), or the body is not the expected JSON", body = platform_service::ErrorBody),
        RateLimited,
        Unavailable,
    )
)]
#[tracing::instrument(name = "validate_coupon", skip_all)]
pub(super) async fn validate_coupon(
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
    let discount = coupon.discount(body.subtotal_cents, Utc::now())?;
    Ok(with_cache_header(cached.status).json(CouponValidation {
        valid: true,
        code: coupon.code,
        kind: coupon.kind,
        value: coupon.value,
        min_order_cents: coupon.min_order_cents,
        expires_at: coupon.expires_at,
        discount_cents: discount,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub(super) struct DeliveryQuery {
    /// Finite, 0 to `checkout.max_distance_km`.
    #[param(minimum = 0)]
    distance_km: f64,
}

/// The delivery charge of a distance.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct DeliveryQuote {
    distance_km: f64,
    charge_cents: i64,
}

/// `GET /api/checkout/delivery?distanceKm=` → the delivery charge.
#[utoipa::path(
    get,
    path = "/api/checkout/delivery",
    tag = "checkout",
    params(DeliveryQuery),
    responses(
        (status = 200, description = "The charge of the band the distance falls in", body = DeliveryQuote,
            headers(("X-Cache" = String, description = "Where the band table came from: `HIT`, `MISS` or `STALE`"))),
        (status = 400, description = "`distanceKm` is missing or not a number (`invalid_query`), negative or above the maximum (`invalid_distance`), or beyond the last band (`delivery_out_of_range`)", body = platform_service::ErrorBody),
        RateLimited,
        Unavailable,
    )
)]
#[tracing::instrument(name = "delivery_quote", skip_all)]
pub(super) async fn delivery_quote(
    state: web::Data<State>,
    query: web::Query<DeliveryQuery>,
) -> Result<HttpResponse, CheckoutError> {
    let distance = query.distance_km;
    check_distance(distance, &state.checkout.limits)?;
    let cached = state.checkout.pricing.bands().await?;
    let charge = delivery_charge(&cached.value, distance)?;
    Ok(with_cache_header(cached.status)
        .json(DeliveryQuote { distance_km: distance, charge_cents: charge }))
}

fn with_cache_header(status: CacheStatus) -> actix_web::HttpResponseBuilder {
    let mut response = HttpResponse::Ok();
    response.insert_header(("X-Cache", status.as_header()));
    response
}

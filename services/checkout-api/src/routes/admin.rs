//! `/api/admin/...` (admin token): coupons and delivery bands. Every write invalidates the
//! cached definitions on every replica before answering, so the next validation sees it.

use actix_web::{HttpResponse, web};
use platform_service::RequireAdmin;
use serde::Deserialize;
use serde_json::json;

use super::{Policies, State};
use crate::error::CheckoutError;
use crate::pricing::{CouponRequest, DeliveryBand, normalise_code, storage, validate_bands};

pub fn configure(cfg: &mut web::ServiceConfig, policies: &Policies) {
    cfg.service(
        web::resource("/api/admin/coupons")
            .wrap(policies.api())
            .route(web::get().to(list_coupons))
            .route(web::post().to(create_coupon)),
    )
    .service(
        web::resource("/api/admin/coupons/{code}")
            .wrap(policies.api())
            .route(web::get().to(get_coupon))
            .route(web::put().to(put_coupon))
            .route(web::delete().to(delete_coupon)),
    )
    .service(
        web::resource("/api/admin/delivery-bands")
            .wrap(policies.api())
            .route(web::get().to(get_bands))
            .route(web::put().to(put_bands)),
    );
}

async fn list_coupons(
    _admin: RequireAdmin,
    state: web::Data<State>,
) -> Result<HttpResponse, CheckoutError> {
    Ok(HttpResponse::Ok().json(storage::coupons(&state.db).await?))
}

#[tracing::instrument(name = "create_coupon", skip_all)]
async fn create_coupon(
    _admin: RequireAdmin,
    state: web::Data<State>,
    body: web::Json<CouponRequest>,
) -> Result<HttpResponse, CheckoutError> {
    let body = body.into_inner();
    let code = body
        .code
        .clone()
        .ok_or_else(|| CheckoutError::invalid("invalid_coupon", "code is required"))?;
    let coupon = body.into_coupon(&code)?;
    if !storage::insert_coupon(&state.db, &coupon).await? {
        return Err(CheckoutError::CouponExists);
    }
    // An "unknown code" may be cached for this code.
    state.checkout.pricing.invalidate_coupon(&coupon.code).await;
    tracing::info!(code = %coupon.code, "coupon created");
    Ok(HttpResponse::Created().json(coupon))
}

async fn get_coupon(
    _admin: RequireAdmin,
    state: web::Data<State>,
    path: web::Path<String>,
) -> Result<HttpResponse, CheckoutError> {
    let code = normalise_code(&path)?;
    let coupon = storage::coupon(&state.db, &code).await?.ok_or(CheckoutError::CouponNotFound)?;
    Ok(HttpResponse::Ok().json(coupon))
}

#[tracing::instrument(name = "put_coupon", skip(_admin, state, body))]
async fn put_coupon(
    _admin: RequireAdmin,
    state: web::Data<State>,
    path: web::Path<String>,
    body: web::Json<CouponRequest>,
) -> Result<HttpResponse, CheckoutError> {
    let body = body.into_inner();
    if let Some(code) = &body.code
        && normalise_code(code)? != normalise_code(&path)?
    {
        return Err(CheckoutError::invalid(
            "invalid_coupon",
            "code in the body differs from the path",
        ));
    }
    let coupon = body.into_coupon(&path)?;
    storage::upsert_coupon(&state.db, &coupon).await?;
    state.checkout.pricing.invalidate_coupon(&coupon.code).await;
    tracing::info!(code = %coupon.code, "coupon replaced");
    Ok(HttpResponse::Ok().json(coupon))
}

#[tracing::instrument(name = "delete_coupon", skip(_admin, state))]
async fn delete_coupon(
    _admin: RequireAdmin,
    state: web::Data<State>,
    path: web::Path<String>,
) -> Result<HttpResponse, CheckoutError> {
    let code = normalise_code(&path)?;
    if !storage::delete_coupon(&state.db, &code).await? {
        return Err(CheckoutError::CouponNotFound);
    }
    state.checkout.pricing.invalidate_coupon(&code).await;
    tracing::info!(code, "coupon deleted");
    Ok(HttpResponse::NoContent().finish())
}

async fn get_bands(
    _admin: RequireAdmin,
    state: web::Data<State>,
) -> Result<HttpResponse, CheckoutError> {
    Ok(HttpResponse::Ok().json(json!({ "bands": storage::bands(&state.db).await? })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BandsRequest {
    bands: Vec<DeliveryBand>,
}

#[tracing::instrument(name = "put_bands", skip_all)]
async fn put_bands(
    _admin: RequireAdmin,
    state: web::Data<State>,
    body: web::Json<BandsRequest>,
) -> Result<HttpResponse, CheckoutError> {
    let bands = validate_bands(body.into_inner().bands)?;
    storage::replace_bands(&state.db, &bands).await?;
    state.checkout.pricing.invalidate_delivery().await;
    tracing::info!(bands = bands.len(), "delivery bands replaced");
    Ok(HttpResponse::Ok().json(json!({ "bands": bands })))
}

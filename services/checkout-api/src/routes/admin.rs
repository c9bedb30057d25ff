//! `/api/admin/...` (admin token): coupons, delivery bands and the product catalog. Every write
//! invalidates the cached definitions on every replica before answering, so the next validation
//! or checkout sees it.

use actix_web::{HttpResponse, web};
use platform_service::RequireAdmin;
use serde::Deserialize;
use serde_json::json;

use super::{Policies, State};
use crate::db::{catalog, pricing as storage};
use crate::domain::catalog::ProductRequest;
use crate::domain::pricing::{CouponRequest, DeliveryBand, normalise_code, validate_bands};
use crate::error::CheckoutError;

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
    )
    .service(
        web::resource("/api/admin/products")
            .wrap(policies.api())
            .route(web::get().to(list_products))
            .route(web::post().to(create_product)),
    )
    .service(
        web::resource("/api/admin/products/{sku}")
            .wrap(policies.api())
            .route(web::get().to(get_product))
            .route(web::put().to(put_product))
            .route(web::delete().to(delete_product)),
    );
}

/// The key a create body must name (`code`, `sku`), or 400 `code`.
fn required(key: Option<String>, code: &'static str, field: &str) -> Result<String, CheckoutError> {
    key.ok_or_else(|| CheckoutError::invalid(code, format!("{field} is required")))
}

/// A replace body may repeat its path's key, not name another one (400 `code`).
fn same_as_path(
    body_key: &str,
    path_key: &str,
    code: &'static str,
    field: &str,
) -> Result<(), CheckoutError> {
    if body_key == path_key {
        Ok(())
    } else {
        Err(CheckoutError::invalid(code, format!("{field} in the body differs from the path")))
    }
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
    let code = required(body.code.clone(), "invalid_coupon", "code")?;
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
    if let Some(code) = &body.code {
        same_as_path(&normalise_code(code)?, &normalise_code(&path)?, "invalid_coupon", "code")?;
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

/// A second product sold as the same Stripe price breaks the table's unique constraint.
fn product_write_error(error: sqlx::Error) -> CheckoutError {
    match &error {
        sqlx::Error::Database(db) if db.is_unique_violation() => CheckoutError::PriceIdInUse,
        _ => error.into(),
    }
}

async fn list_products(
    _admin: RequireAdmin,
    state: web::Data<State>,
) -> Result<HttpResponse, CheckoutError> {
    let products = catalog::products(state.checkout.catalog.db()).await?;
    Ok(HttpResponse::Ok().json(json!({ "products": products })))
}

#[tracing::instrument(name = "create_product", skip_all)]
async fn create_product(
    _admin: RequireAdmin,
    state: web::Data<State>,
    body: web::Json<ProductRequest>,
) -> Result<HttpResponse, CheckoutError> {
    let body = body.into_inner();
    let sku = required(body.sku.clone(), "invalid_product", "sku")?;
    let product = body.into_product(&sku)?;
    let catalog = &state.checkout.catalog;
    if !catalog::insert_product(catalog.db(), &product).await.map_err(product_write_error)? {
        return Err(CheckoutError::ProductExists);
    }
    // "Unknown sku" / "unknown price" may be cached for these.
    catalog.invalidate(&product.sku, &[product.price_id.as_deref()]).await;
    tracing::info!(sku = %product.sku, unit_amount_cents = product.unit_amount_cents, "product created");
    Ok(HttpResponse::Created().json(product))
}

async fn get_product(
    _admin: RequireAdmin,
    state: web::Data<State>,
    path: web::Path<String>,
) -> Result<HttpResponse, CheckoutError> {
    let product = catalog::product(state.checkout.catalog.db(), &path)
        .await?
        .ok_or(CheckoutError::ProductNotFound)?;
    Ok(HttpResponse::Ok().json(product))
}

#[tracing::instrument(name = "put_product", skip(_admin, state, body))]
async fn put_product(
    _admin: RequireAdmin,
    state: web::Data<State>,
    path: web::Path<String>,
    body: web::Json<ProductRequest>,
) -> Result<HttpResponse, CheckoutError> {
    let body = body.into_inner();
    if let Some(sku) = &body.sku {
        same_as_path(sku, &path, "invalid_product", "sku")?;
    }
    let product = body.into_product(&path)?;
    let catalog = &state.checkout.catalog;
    let previous_price =
        catalog::upsert_product(catalog.db(), &product).await.map_err(product_write_error)?;
    catalog
        .invalidate(&product.sku, &[previous_price.as_deref(), product.price_id.as_deref()])
        .await;
    tracing::info!(
        unit_amount_cents = product.unit_amount_cents,
        active = product.active,
        "product replaced"
    );
    Ok(HttpResponse::Ok().json(product))
}

#[tracing::instrument(name = "delete_product", skip(_admin, state))]
async fn delete_product(
    _admin: RequireAdmin,
    state: web::Data<State>,
    path: web::Path<String>,
) -> Result<HttpResponse, CheckoutError> {
    let catalog = &state.checkout.catalog;
    let price_id = catalog::delete_product(catalog.db(), &path)
        .await?
        .ok_or(CheckoutError::ProductNotFound)?;
    catalog.invalidate(&path, &[price_id.as_deref()]).await;
    tracing::info!("product deleted");
    Ok(HttpResponse::NoContent().finish())
}

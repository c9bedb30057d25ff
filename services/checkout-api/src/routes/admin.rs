//! `/api/admin/...` (admin token): coupons, delivery bands and the product catalog. Every write
//! invalidates the cached definitions on every replica before answering, so the next validation
//! or checkout sees it.

use actix_web::{HttpResponse, web};
use platform_service::RequireAdmin;
use platform_service::openapi::{RateLimited, Unauthorized, Unavailable};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Policies, State};
use crate::db::{catalog, pricing as storage};
use crate::domain::catalog::{Product, ProductRequest, valid_sku};
use crate::domain::pricing::{Coupon, CouponRequest, DeliveryBand, normalise_code, validate_bands};
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

/// `GET /api/admin/coupons`: every coupon.
#[utoipa::path(
    get,
    path = "/api/admin/coupons",
    tag = "admin",
    security(("serviceToken" = [])),
    responses(
        (status = 200, description = "Every coupon, by code", body = Vec<Coupon>),
        Unauthorized,
        RateLimited,
        Unavailable,
    )
)]
pub(super) async fn list_coupons(
    _admin: RequireAdmin,
    state: web::Data<State>,
) -> Result<HttpResponse, CheckoutError> {
    Ok(HttpResponse::Ok().json(storage::coupons(&state.db).await?))
}

/// `POST /api/admin/coupons`: a new coupon.
#[utoipa::path(
    post,
    path = "/api/admin/coupons",
    tag = "admin",
    request_body = CouponRequest,
    security(("serviceToken" = [])),
    responses(
        (status = 201, description = "Created (the code stored upper case)", body = Coupon),
        (status = 400, description = "`code` missing or a value out of range (`invalid_coupon`), a malformed code (`invalid_coupon_code`), or the body is not the expected JSON", body = platform_service::ErrorBody),
        (status = 409, description = "A coupon with this code exists (`coupon_exists`)", body = platform_service::ErrorBody),
        Unauthorized,
        RateLimited,
        Unavailable,
    )
)]
#[tracing::instrument(name = "create_coupon", skip_all)]
pub(super) async fn create_coupon(
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

/// `GET /api/admin/coupons/{code}`: one coupon.
#[utoipa::path(
    get,
    path = "/api/admin/coupons/{code}",
    tag = "admin",
    params(("code" = String, Path, description = "1 to 32 letters, digits, `_` or `-` (case-insensitive)")),
    security(("serviceToken" = [])),
    responses(
        (status = 200, description = "The coupon", body = Coupon),
        (status = 400, description = "A malformed code (`invalid_coupon_code`)", body = platform_service::ErrorBody),
        (status = 404, description = "No such coupon (`coupon_not_found`)", body = platform_service::ErrorBody),
        Unauthorized,
        RateLimited,
        Unavailable,
    )
)]
pub(super) async fn get_coupon(
    _admin: RequireAdmin,
    state: web::Data<State>,
    path: web::Path<String>,
) -> Result<HttpResponse, CheckoutError> {
    let code = normalise_code(&path)?;
    let coupon = storage::coupon(&state.db, &code).await?.ok_or(CheckoutError::CouponNotFound)?;
    Ok(HttpResponse::Ok().json(coupon))
}

/// `PUT /api/admin/coupons/{code}`: creates or replaces a coupon.
#[utoipa::path(
    put,
    path = "/api/admin/coupons/{code}",
    tag = "admin",
    params(("code" = String, Path, description = "1 to 32 letters, digits, `_` or `-` (case-insensitive)")),
    request_body = CouponRequest,
    security(("serviceToken" = [])),
    responses(
        (status = 200, description = "Stored (created or replaced)", body = Coupon),
        (status = 400, description = "A value out of range or a body `code` other than the path's (`invalid_coupon`), a malformed code (`invalid_coupon_code`), or the body is not the expected JSON", body = platform_service::ErrorBody),
        Unauthorized,
        RateLimited,
        Unavailable,
    )
)]
#[tracing::instrument(name = "put_coupon", skip(_admin, state, body))]
pub(super) async fn put_coupon(
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

/// `DELETE /api/admin/coupons/{code}`: removes a coupon.
#[utoipa::path(
    delete,
    path = "/api/admin/coupons/{code}",
    tag = "admin",
    params(("code" = String, Path, description = "1 to 32 letters, digits, `_` or `-` (case-insensitive)")),
    security(("serviceToken" = [])),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "A malformed code (`invalid_coupon_code`)", body = platform_service::ErrorBody),
        (status = 404, description = "No such coupon (`coupon_not_found`)", body = platform_service::ErrorBody),
        Unauthorized,
        RateLimited,
        Unavailable,
    )
)]
#[tracing::instrument(name = "delete_coupon", skip(_admin, state))]
pub(super) async fn delete_coupon(
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

/// `GET /api/admin/delivery-bands`: the delivery band table.
#[utoipa::path(
    get,
    path = "/api/admin/delivery-bands",
    tag = "admin",
    security(("serviceToken" = [])),
    responses(
        (status = 200, description = "The bands, by distance", body = BandList),
        Unauthorized,
        RateLimited,
        Unavailable,
    )
)]
pub(super) async fn get_bands(
    _admin: RequireAdmin,
    state: web::Data<State>,
) -> Result<HttpResponse, CheckoutError> {
    Ok(HttpResponse::Ok().json(BandList { bands: storage::bands(&state.db).await? }))
}

/// The delivery band table.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct BandList {
    bands: Vec<DeliveryBand>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct BandsRequest {
    /// The new table: 1 to 100 bands of distinct `upToKm`.
    #[schema(min_items = 1, max_items = 100)]
    bands: Vec<DeliveryBand>,
}

/// `PUT /api/admin/delivery-bands`: replaces the whole band table.
#[utoipa::path(
    put,
    path = "/api/admin/delivery-bands",
    tag = "admin",
    request_body = BandsRequest,
    security(("serviceToken" = [])),
    responses(
        (status = 200, description = "The stored bands, sorted by distance", body = BandList),
        (status = 400, description = "Not 1 to 100 bands, a distance not above 0 or repeated, or a negative charge (`invalid_bands`); or the body is not the expected JSON", body = platform_service::ErrorBody),
        Unauthorized,
        RateLimited,
        Unavailable,
    )
)]
#[tracing::instrument(name = "put_bands", skip_all)]
pub(super) async fn put_bands(
    _admin: RequireAdmin,
    state: web::Data<State>,
    body: web::Json<BandsRequest>,
) -> Result<HttpResponse, CheckoutError> {
    let bands = validate_bands(body.into_inner().bands)?;
    storage::replace_bands(&state.db, &bands).await?;
    state.checkout.pricing.invalidate_delivery().await;
    tracing::info!(bands = bands.len(), "delivery bands replaced");
    Ok(HttpResponse::Ok().json(BandList { bands }))
}

/// A second product sold as the same Stripe price breaks the table's unique constraint.
fn product_write_error(error: sqlx::Error) -> CheckoutError {
    match &error {
        sqlx::Error::Database(db) if db.is_unique_violation() => CheckoutError::PriceIdInUse,
        _ => error.into(),
    }
}

/// `GET /api/admin/products`: the whole catalog, inactive products included.
#[utoipa::path(
    get,
    path = "/api/admin/products",
    tag = "admin",
    security(("serviceToken" = [])),
    responses(
        (status = 200, description = "Every product, by sku", body = ProductList),
        Unauthorized,
        RateLimited,
        Unavailable,
    )
)]
pub(super) async fn list_products(
    _admin: RequireAdmin,
    state: web::Data<State>,
) -> Result<HttpResponse, CheckoutError> {
    let products = catalog::products(state.checkout.catalog.db()).await?;
    Ok(HttpResponse::Ok().json(ProductList { products }))
}

/// The catalog.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct ProductList {
    products: Vec<Product>,
}

/// `POST /api/admin/products`: a new product.
#[utoipa::path(
    post,
    path = "/api/admin/products",
    tag = "admin",
    request_body = ProductRequest,
    security(("serviceToken" = [])),
    responses(
        (status = 201, description = "Created", body = Product),
        (status = 400, description = "`sku` missing or a field breaking its rule (`invalid_product`), or the body is not the expected JSON", body = platform_service::ErrorBody),
        (status = 409, description = "The sku exists (`product_exists`), or another product is sold as this `priceId` (`price_id_in_use`)", body = platform_service::ErrorBody),
        Unauthorized,
        RateLimited,
        Unavailable,
    )
)]
#[tracing::instrument(name = "create_product", skip_all)]
pub(super) async fn create_product(
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

/// `GET /api/admin/products/{sku}`: one product.
#[utoipa::path(
    get,
    path = "/api/admin/products/{sku}",
    tag = "admin",
    params(("sku" = String, Path, description = "The product's sku")),
    security(("serviceToken" = [])),
    responses(
        (status = 200, description = "The product", body = Product),
        (status = 404, description = "No such product (`product_not_found`)", body = platform_service::ErrorBody),
        Unauthorized,
        RateLimited,
        Unavailable,
    )
)]
pub(super) async fn get_product(
    _admin: RequireAdmin,
    state: web::Data<State>,
    path: web::Path<String>,
) -> Result<HttpResponse, CheckoutError> {
    let sku = stored_sku(&path)?;
    let product = catalog::product(state.checkout.catalog.db(), sku)
        .await?
        .ok_or(CheckoutError::ProductNotFound)?;
    Ok(HttpResponse::Ok().json(product))
}

/// `PUT /api/admin/products/{sku}`: creates or replaces a product.
#[utoipa::path(
    put,
    path = "/api/admin/products/{sku}",
    tag = "admin",
    params(("sku" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$", description = "1 to 64 letters, digits, `_`, `.`, `:` or `-`, starting with a letter or digit")),
    request_body = ProductRequest,
    security(("serviceToken" = [])),
    responses(
        (status = 200, description = "Stored (created or replaced)", body = Product),
        (status = 400, description = "A field breaking its rule or a body `sku` other than the path's (`invalid_product`), or the body is not the expected JSON", body = platform_service::ErrorBody),
        (status = 409, description = "Another product is sold as this `priceId` (`price_id_in_use`)", body = platform_service::ErrorBody),
        Unauthorized,
        RateLimited,
        Unavailable,
    )
)]
#[tracing::instrument(name = "put_product", skip(_admin, state, body))]
pub(super) async fn put_product(
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

/// `DELETE /api/admin/products/{sku}`: removes a product.
#[utoipa::path(
    delete,
    path = "/api/admin/products/{sku}",
    tag = "admin",
    params(("sku" = String, Path, description = "The product's sku")),
    security(("serviceToken" = [])),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such product (`product_not_found`)", body = platform_service::ErrorBody),
        Unauthorized,
        RateLimited,
        Unavailable,
    )
)]
#[tracing::instrument(name = "delete_product", skip(_admin, state))]
pub(super) async fn delete_product(
    _admin: RequireAdmin,
    state: web::Data<State>,
    path: web::Path<String>,
) -> Result<HttpResponse, CheckoutError> {
    let sku = stored_sku(&path)?;
    let catalog = &state.checkout.catalog;
    let price_id =
        catalog::delete_product(catalog.db(), sku).await?.ok_or(CheckoutError::ProductNotFound)?;
    catalog.invalidate(sku, &[price_id.as_deref()]).await;
    tracing::info!("product deleted");
    Ok(HttpResponse::NoContent().finish())
}

/// A sku the catalog could hold; any other names no product (and never reaches Postgres, which
/// refuses some bytes, NUL among them, with an error rather than no row).
fn stored_sku(raw: &str) -> Result<&str, CheckoutError> {
    if valid_sku(raw) { Ok(raw) } else { Err(CheckoutError::ProductNotFound) }
}

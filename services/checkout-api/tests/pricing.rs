//! Coupon and delivery lookups: cached, and an admin change is seen by the next lookup.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Backends, TestApp, cart};
use reqwest::Method;
use serde_json::json;

fn x_cache(reply: &common::Reply) -> String {
    reply.headers.get("x-cache").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default()
}

#[tokio::test]
async fn coupon_validation_is_cached_and_an_admin_change_is_seen_immediately() {
    // Arrange
    let backends = Backends::new("ck-coupon").await;
    let app = TestApp::spawn(&backends, &[]).await;
    let validate = || {
        app.post(
            "/api/checkout/coupons/validate",
            json!({"code": "welcome10", "subtotalCents": 5000}),
        )
    };

    // Act: two lookups, then an admin raises the coupon to 25 %.
    let first = validate().await;
    let second = validate().await;
    let changed = app
        .admin(
            Method::PUT,
            "/api/admin/coupons/WELCOME10",
            Some(json!({"kind": "percent", "value": 25})),
        )
        .await;
    let after_change = validate().await;
    let deactivated = app
        .admin(
            Method::PUT,
            "/api/admin/coupons/WELCOME10",
            Some(json!({"kind": "percent", "value": 25, "active": false})),
        )
        .await;
    let after_deactivation = validate().await;
    let deleted = app.admin(Method::DELETE, "/api/admin/coupons/WELCOME10", None).await;
    let after_delete = validate().await;
    let session_after_delete = app
        .post("/api/checkout/sessions", {
            let mut body = cart(1);
            body["couponCode"] = json!("WELCOME10");
            body
        })
        .await;

    // Assert
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(x_cache(&first), "MISS");
    assert_eq!(first.body["discountCents"], 500);
    assert_eq!(x_cache(&second), "HIT");
    assert_eq!(second.body["discountCents"], 500);
    assert_eq!(changed.status, 200, "{}", changed.body);
    assert_eq!(x_cache(&after_change), "MISS", "the admin change invalidated the cached coupon");
    assert_eq!(after_change.body["discountCents"], 1250);
    assert_eq!(deactivated.status, 200);
    assert_eq!(
        (after_deactivation.status, after_deactivation.body["code"].as_str()),
        (400, Some("coupon_inactive"))
    );
    assert_eq!(deleted.status, 204);
    assert_eq!(
        (after_delete.status, after_delete.body["code"].as_str()),
        (400, Some("unknown_coupon"))
    );
    assert_eq!(session_after_delete.body["code"], "unknown_coupon");
    app.stop().await;
}

#[tokio::test]
async fn delivery_charge_is_cached_and_replacing_the_bands_is_seen_immediately() {
    // Arrange
    let backends = Backends::new("ck-delivery").await;
    let app = TestApp::spawn(&backends, &[]).await;

    // Act
    let first = app.get("/api/checkout/delivery?distanceKm=7.5").await;
    let second = app.get("/api/checkout/delivery?distanceKm=20").await;
    let replaced = app
        .admin(
            Method::PUT,
            "/api/admin/delivery-bands",
            Some(json!({"bands": [{"upToKm": 100, "chargeCents": 150}, {"upToKm": 3, "chargeCents": 50}]})),
        )
        .await;
    let after = app.get("/api/checkout/delivery?distanceKm=7.5").await;
    let session = app
        .post("/api/checkout/sessions", {
            let mut body = cart(1);
            body["deliveryDistanceKm"] = json!(80);
            body
        })
        .await;
    let negative = app.get("/api/checkout/delivery?distanceKm=-2").await;
    let not_a_number = app.get("/api/checkout/delivery?distanceKm=far").await;
    let bad_bands = app
        .admin(
            Method::PUT,
            "/api/admin/delivery-bands",
            Some(json!({"bands": [{"upToKm": -1, "chargeCents": 1}]})),
        )
        .await;
    let no_token = app
        .send(Method::PUT, "/api/admin/delivery-bands", Some(json!({"bands": []})), false, None)
        .await;

    // Assert
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(x_cache(&first), "MISS");
    assert_eq!(first.body["chargeCents"], 299);
    assert_eq!(x_cache(&second), "HIT", "one cached band table serves every distance");
    assert_eq!(second.body["chargeCents"], 599);
    assert_eq!(replaced.status, 200, "{}", replaced.body);
    assert_eq!(replaced.body["bands"][0]["upToKm"], 3.0, "bands come back sorted");
    assert_eq!(x_cache(&after), "MISS");
    assert_eq!(after.body["chargeCents"], 150);
    assert_eq!(session.status, 201, "{}", session.body);
    assert_eq!(session.body["deliveryCents"], 150);
    assert_eq!((negative.status, negative.body["code"].as_str()), (400, Some("invalid_distance")));
    assert_eq!(
        (not_a_number.status, not_a_number.body["code"].as_str()),
        (400, Some("invalid_query"))
    );
    assert_eq!((bad_bands.status, bad_bands.body["code"].as_str()), (400, Some("invalid_bands")));
    assert_eq!(no_token.status, 401);
    app.stop().await;
}

#[tokio::test]
async fn admin_figures_out_of_range_and_skus_postgres_cannot_hold_are_settled_at_the_door() {
    // Arrange
    let backends = Backends::new("ck-admin-bounds").await;
    let app = TestApp::spawn(&backends, &[]).await;
    let put =
        |path: &'static str, body: serde_json::Value| app.admin(Method::PUT, path, Some(body));

    // Act
    let huge_charge = put(
        "/api/admin/delivery-bands",
        json!({"bands": [{"upToKm": 5, "chargeCents": i64::MAX}]}),
    )
    .await;
    let huge_coupon =
        put("/api/admin/coupons/HUGE", json!({"kind": "amount", "value": i64::MAX})).await;
    let far_expiry = put(
        "/api/admin/coupons/LATER",
        json!({"kind": "percent", "value": 5, "expiresAt": "+200000-01-01T00:00:00Z"}),
    )
    .await;
    let nul_read = app.admin(Method::GET, "/api/admin/products/a%00b", None).await;
    let nul_delete = app.admin(Method::DELETE, "/api/admin/products/a%00b", None).await;
    let session = app.create_session(cart(1)).await;

    // Assert: 4xx with the contract's body, and checkout keeps working.
    assert_eq!(
        (huge_charge.status, huge_charge.body["code"].as_str()),
        (400, Some("invalid_bands"))
    );
    assert_eq!(
        (huge_coupon.status, huge_coupon.body["code"].as_str()),
        (400, Some("invalid_coupon"))
    );
    assert_eq!(
        (far_expiry.status, far_expiry.body["code"].as_str()),
        (400, Some("invalid_coupon"))
    );
    assert_eq!(nul_read.status, 404, "{}", nul_read.body);
    assert_eq!(nul_delete.status, 404, "{}", nul_delete.body);
    assert_eq!(session["store"], "redis", "{session}");
}

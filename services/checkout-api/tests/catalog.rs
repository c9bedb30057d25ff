//! The product catalog sets every price: checkout sessions and Stripe Checkout charge the
//! catalog's unit prices whatever the client sends, `complete` / `fail` need the service token or
//! the payment, and an admin's price change is seen by the next checkout.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Backends, TestApp};
use platform_testing::fake_stripe::route;
use reqwest::Method;
use serde_json::{Value, json};

/// The lines the fake Stripe received for a Checkout session (form values are strings).
fn stripe_lines(backends: &Backends, session_id: &Value) -> Vec<Value> {
    let session = backends.stripe.checkout_session(session_id.as_str().unwrap()).unwrap();
    session["_line_items"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn a_client_price_of_one_cent_is_refused_on_create_and_patch_and_the_catalog_price_is_charged()
 {
    // Arrange: a session bought at the catalog's prices (tee 1000).
    let backends = Backends::new("cat-one-cent").await;
    let app = TestApp::spawn(&backends, &[]).await;
    let session = app.create_session(json!({"items": [{"sku": "tee", "quantity": 2}]})).await;
    let path = format!("/api/checkout/sessions/{}", session["id"].as_str().unwrap());

    // Act
    let create_one_cent = app
        .post(
            "/api/checkout/sessions",
            json!({"items": [{"sku": "tee", "unitAmountCents": 1, "quantity": 2}]}),
        )
        .await;
    let patch_one_cent = app
        .patch(&path, json!({"items": [{"sku": "tee", "unitAmountCents": 1, "quantity": 2}]}))
        .await;
    let after_patch = app.get(&path).await;
    let (status, paid) = app.checkout(&json!({"checkoutSessionId": session["id"]})).await;

    // Assert
    assert_eq!(session["subtotalCents"], 2000, "{session}");
    assert_eq!(session["items"][0]["unitAmountCents"], 1000);
    assert_eq!(create_one_cent.status, 400, "{}", create_one_cent.body);
    assert_eq!(create_one_cent.body["code"], "price_mismatch");
    assert_eq!(patch_one_cent.status, 400, "{}", patch_one_cent.body);
    assert_eq!(patch_one_cent.body["code"], "price_mismatch");
    assert_eq!(after_patch.body["totalCents"], 2000, "the refused patch changed nothing");
    assert_eq!(after_patch.body["version"], 1);
    assert_eq!(status, 200, "{paid}");
    let lines = stripe_lines(&backends, &paid["sessionId"]);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["price_data"]["unit_amount"], "1000");
    assert_eq!(lines[0]["quantity"], "2");
    assert_eq!(lines[0]["price_data"]["product_data"]["name"], "T-shirt");
    let stripe_session = backends.stripe.checkout_session(paid["sessionId"].as_str().unwrap());
    assert_eq!(stripe_session.unwrap()["amount_total"], 2000);
    app.stop().await;
}

#[tokio::test]
async fn unknown_skus_are_refused_an_extra_name_is_ignored_and_a_matching_price_is_accepted() {
    // Arrange
    let backends = Backends::new("cat-items").await;
    let app = TestApp::spawn(&backends, &[]).await;

    // Act
    let unknown = app
        .post("/api/checkout/sessions", json!({"items": [{"sku": "caviar", "quantity": 1}]}))
        .await;
    let named = app
        .post(
            "/api/checkout/sessions",
            json!({"items": [
                {"sku": "tea", "name": "Free tea", "quantity": 1},
                {"sku": "mug", "name": "Mug", "unitAmountCents": 500, "quantity": 3}
            ]}),
        )
        .await;
    let (direct_status, direct) = app
        .checkout_as(&json!({"items": [{"sku": "tea", "name": "Free tea", "quantity": 2}]}), None)
        .await;
    let (unknown_direct_status, unknown_direct) =
        app.checkout_as(&json!({"items": [{"sku": "caviar", "quantity": 1}]}), None).await;

    // Assert
    assert_eq!(unknown.status, 400, "{}", unknown.body);
    assert_eq!(unknown.body["code"], "unknown_product");
    assert_eq!(named.status, 201, "{}", named.body);
    assert_eq!(named.body["items"][0]["name"], "Tea", "the catalog's name, not the client's");
    assert_eq!(named.body["items"][0]["unitAmountCents"], 1250);
    assert_eq!(named.body["subtotalCents"], 1250 + 3 * 500);
    assert_eq!(direct_status, 200, "{direct}");
    let lines = stripe_lines(&backends, &direct["sessionId"]);
    assert_eq!(lines[0]["price_data"]["product_data"]["name"], "Tea");
    assert_eq!(lines[0]["price_data"]["unit_amount"], "1250");
    assert_eq!(unknown_direct_status, 400, "{unknown_direct}");
    assert_eq!(unknown_direct["code"], "unknown_product");
    app.stop().await;
}

#[tokio::test]
async fn a_direct_stripe_checkout_is_priced_by_the_catalog_and_a_price_id_must_be_listed() {
    // Arrange
    let backends = Backends::new("cat-direct").await;
    let app = TestApp::spawn(&backends, &[]).await;

    // Act
    let (one_cent_status, one_cent) = app
        .checkout(&json!({"userId": "u-d", "items": [{"sku": "tee", "unitAmountCents": 1, "quantity": 5}]}))
        .await;
    let sessions_after_refusal = backends.stripe.requests(route::CREATE_CHECKOUT_SESSION);
    let (unlisted_status, unlisted) =
        app.checkout(&json!({"userId": "u-d", "priceId": "price_free_forever"})).await;
    let (listed_status, listed) =
        app.checkout(&json!({"userId": "u-d", "priceId": "price_pro"})).await;
    let (items_status, items) =
        app.checkout(&json!({"userId": "u-d", "items": [{"sku": "tee", "quantity": 5}]})).await;

    // Assert
    assert_eq!(one_cent_status, 400, "{one_cent}");
    assert_eq!(one_cent["code"], "price_mismatch");
    assert_eq!(sessions_after_refusal, 0, "nothing reached Stripe");
    assert_eq!(unlisted_status, 400, "{unlisted}");
    assert_eq!(unlisted["code"], "unknown_price");
    assert_eq!(listed_status, 200, "{listed}");
    let lines = stripe_lines(&backends, &listed["sessionId"]);
    assert_eq!(lines[0]["price"], "price_pro");
    assert_eq!(items_status, 200, "{items}");
    let lines = stripe_lines(&backends, &items["sessionId"]);
    assert_eq!(lines[0]["price_data"]["unit_amount"], "1000");
    assert_eq!(lines[0]["quantity"], "5");
    assert_eq!(backends.stripe.requests(route::CREATE_CHECKOUT_SESSION), 2);
    app.stop().await;
}

#[tokio::test]
async fn completing_or_failing_a_session_needs_the_service_token() {
    // Arrange
    let backends = Backends::new("cat-complete").await;
    let app = TestApp::spawn(&backends, &[]).await;
    let one = app.create_session(common::cart(1)).await;
    let two = app.create_session(common::cart(1)).await;
    let (one_id, two_id) = (one["id"].as_str().unwrap(), two["id"].as_str().unwrap());
    let user_cookie = app.login("u-c").await;

    // Act
    let anonymous_complete =
        app.post(&format!("/api/checkout/sessions/{one_id}/complete"), json!({})).await;
    let anonymous_fail =
        app.post(&format!("/api/checkout/sessions/{two_id}/fail"), json!({})).await;
    let cookie_complete = app
        .send(
            Method::POST,
            &format!("/api/checkout/sessions/{one_id}/complete"),
            None,
            false,
            Some(&user_cookie),
        )
        .await;
    let wrong_token = app
        .http
        .post(format!("{}/api/checkout/sessions/{one_id}/complete", app.base))
        .bearer_auth("not-the-token")
        .send()
        .await
        .unwrap();
    let still_open = app.get(&format!("/api/checkout/sessions/{one_id}")).await;
    let completed = app.finish(one_id, "complete").await;
    let failed = app.finish(two_id, "fail").await;

    // Assert
    for refused in [&anonymous_complete, &anonymous_fail, &cookie_complete] {
        assert_eq!(refused.status, 401, "{}", refused.body);
        assert_eq!(refused.body["code"], "unauthorized", "{}", refused.body);
        assert!(refused.body["error"].is_string());
    }
    assert_eq!(wrong_token.status(), 401);
    assert_eq!(still_open.body["status"], "open");
    assert_eq!(completed.status, 200, "{}", completed.body);
    assert_eq!(completed.body["status"], "completed");
    assert_eq!(failed.status, 200, "{}", failed.body);
    assert_eq!(failed.body["status"], "failed");
    app.stop().await;
}

#[tokio::test]
async fn admins_manage_products_and_a_price_change_is_seen_by_the_next_checkout() {
    // Arrange: a product, looked up once so its definition is cached.
    let backends = Backends::new("cat-admin").await;
    let app = TestApp::spawn(&backends, &[]).await;
    let product = json!({"sku": "lamp", "name": "Desk lamp", "unitAmountCents": 4500, "priceId": "price_lamp"});
    let created = app.admin(Method::POST, "/api/admin/products", Some(product.clone())).await;
    let first = app.create_session(json!({"items": [{"sku": "lamp", "quantity": 1}]})).await;
    let cart_path = format!("/api/checkout/sessions/{}", first["id"].as_str().unwrap());

    // Act: the price goes up, the Stripe price is replaced; then the product is deleted.
    let duplicate = app.admin(Method::POST, "/api/admin/products", Some(product)).await;
    let no_token = app
        .send(
            Method::POST,
            "/api/admin/products",
            Some(json!({"sku": "x", "name": "X", "unitAmountCents": 1})),
            false,
            None,
        )
        .await;
    let invalid = app
        .admin(
            Method::POST,
            "/api/admin/products",
            Some(json!({"sku": "bad sku", "name": "X", "unitAmountCents": 1})),
        )
        .await;
    let taken_price = app
        .admin(
            Method::PUT,
            "/api/admin/products/tea",
            Some(json!({"name": "Tea", "unitAmountCents": 1250, "priceId": "price_lamp"})),
        )
        .await;
    let changed = app
        .admin(
            Method::PUT,
            "/api/admin/products/lamp",
            Some(json!({"name": "Desk lamp", "unitAmountCents": 5200, "priceId": "price_lamp_v2"})),
        )
        .await;
    let read = app.admin(Method::GET, "/api/admin/products/lamp", None).await;
    let listed = app.admin(Method::GET, "/api/admin/products", None).await;
    let second = app.create_session(json!({"items": [{"sku": "lamp", "quantity": 1}]})).await;
    let stale_client_price = app
        .post(
            "/api/checkout/sessions",
            json!({"items": [{"sku": "lamp", "unitAmountCents": 4500, "quantity": 1}]}),
        )
        .await;
    let (old_price_status, old_price) =
        app.checkout(&json!({"userId": "u-l", "priceId": "price_lamp"})).await;
    let (new_price_status, _) =
        app.checkout(&json!({"userId": "u-l", "priceId": "price_lamp_v2"})).await;
    let (pay_status, paid) = app.checkout(&json!({"checkoutSessionId": first["id"]})).await;
    let first_after_payment_start = app.get(&cart_path).await;
    let deleted = app.admin(Method::DELETE, "/api/admin/products/lamp", None).await;
    let after_delete = app
        .post("/api/checkout/sessions", json!({"items": [{"sku": "lamp", "quantity": 1}]}))
        .await;
    let read_deleted = app.admin(Method::GET, "/api/admin/products/lamp", None).await;

    // Assert
    assert_eq!(created.status, 201, "{}", created.body);
    assert_eq!(first["subtotalCents"], 4500);
    assert_eq!((duplicate.status, duplicate.body["code"].as_str()), (409, Some("product_exists")));
    assert_eq!(no_token.status, 401);
    assert_eq!((invalid.status, invalid.body["code"].as_str()), (400, Some("invalid_product")));
    assert_eq!(
        (taken_price.status, taken_price.body["code"].as_str()),
        (409, Some("price_id_in_use"))
    );
    assert_eq!(changed.status, 200, "{}", changed.body);
    assert_eq!(read.body["unitAmountCents"], 5200);
    assert_eq!(read.body["priceId"], "price_lamp_v2");
    let skus: Vec<&str> = listed.body["products"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["sku"].as_str())
        .collect();
    assert!(skus.contains(&"lamp") && skus.contains(&"tea"), "{skus:?}");
    assert_eq!(second["subtotalCents"], 5200, "the cached 4500 was invalidated");
    assert_eq!(stale_client_price.status, 400);
    assert_eq!(stale_client_price.body["code"], "price_mismatch");
    assert_eq!(old_price_status, 400, "{old_price}");
    assert_eq!(old_price["code"], "unknown_price");
    assert_eq!(new_price_status, 200);
    assert_eq!(pay_status, 200, "{paid}");
    let lines = stripe_lines(&backends, &paid["sessionId"]);
    assert_eq!(lines[0]["price_data"]["unit_amount"], "5200", "paid at today's price");
    assert_eq!(first_after_payment_start.body["subtotalCents"], 5200, "and the cart says so");
    assert_eq!(deleted.status, 204);
    assert_eq!(after_delete.status, 400);
    assert_eq!(after_delete.body["code"], "unknown_product");
    assert_eq!(
        (read_deleted.status, read_deleted.body["code"].as_str()),
        (404, Some("product_not_found"))
    );
    app.stop().await;
}

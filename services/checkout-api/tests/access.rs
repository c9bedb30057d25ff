//! Who may call what: Stripe state reads answer only the user's own session cookie or the service
//! token, a checkout is for the caller's user (never an anonymous body's), and a paid Checkout
//! session on the Stripe stream completes its checkout session.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Backends, TestApp};
use platform_redis::messages::StripeEventMessage;
use platform_testing::{holds_within, put_on_stripe_stream};
use reqwest::Method;
use serde_json::{Value, json};

/// A paid subscription of `user_id`, synced by the success page; returns its customer id.
async fn subscriber(app: &TestApp, backends: &Backends, user_id: &str) -> String {
    let (status, created) = app.checkout(&json!({"userId": user_id, "priceId": "price_pro"})).await;
    assert_eq!(status, 200, "{created}");
    let session_id = created["sessionId"].as_str().unwrap();
    assert!(backends.stripe.complete_checkout_session(session_id));
    let success = app.get(&format!("/store/checkout/success?session_id={session_id}")).await;
    assert_eq!(success.status, 200, "{}", success.body);
    created["customerId"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn stripe_state_reads_answer_only_the_users_own_session_or_the_service_token() {
    // Arrange: two subscribers, a's and b's sessions, a guest.
    let backends = Backends::new("access-state").await;
    let app = TestApp::spawn(&backends, &[]).await;
    let customer_a = subscriber(&app, &backends, "user-a").await;
    subscriber(&app, &backends, "user-b").await;
    let (cookie_a, cookie_b, guest) =
        (app.login("user-a").await, app.login("user-b").await, app.guest().await);
    let paths = [
        "/api/stripe/users/user-a/subscription".to_owned(),
        format!("/api/stripe/customers/{customer_a}/state"),
    ];

    for path in &paths {
        // Act
        let anonymous = app.send(Method::GET, path, None, false, None).await;
        let other_user = app.send(Method::GET, path, None, false, Some(&cookie_b)).await;
        let a_guest = app.send(Method::GET, path, None, false, Some(&guest)).await;
        let own = app.send(Method::GET, path, None, false, Some(&cookie_a)).await;
        let service = app.service_get(path).await;
        let wrong_token =
            app.http.get(format!("{}{path}", app.base)).bearer_auth("nope").send().await.unwrap();

        // Assert
        assert_eq!(
            (anonymous.status, anonymous.body["code"].as_str()),
            (401, Some("no_session")),
            "{path}"
        );
        assert_eq!(
            (other_user.status, other_user.body["code"].as_str()),
            (403, Some("forbidden")),
            "{path}"
        );
        assert_eq!(
            (a_guest.status, a_guest.body["code"].as_str()),
            (403, Some("forbidden")),
            "{path}"
        );
        assert_eq!(own.status, 200, "{path}: {}", own.body);
        assert_eq!(service.status, 200, "{path}: {}", service.body);
        assert_eq!(own.body, service.body, "{path}");
        assert_eq!(wrong_token.status(), 401, "{path}");
    }
    let own_state = app.send(Method::GET, &paths[1], None, false, Some(&cookie_a)).await;
    assert_eq!(own_state.body["customerId"], customer_a.as_str());
    assert_eq!(own_state.body["status"], "active");
    app.stop().await;
}

#[tokio::test]
async fn an_anonymous_body_user_id_is_not_honoured_and_a_checkout_is_for_the_callers_user() {
    // Arrange
    let backends = Backends::new("access-user").await;
    let app = TestApp::spawn(&backends, &[]).await;
    let body = json!({"userId": "victim", "items": [{"sku": "tee", "quantity": 1}]});
    let buyer = app.login("buyer").await;

    // Act
    let (anonymous_status, anonymous) = app.checkout_as(&body, None).await;
    let customers_after_anonymous = backends.stripe.customers_created();
    let (buyer_status, as_buyer) = app.checkout_as(&body, Some(&buyer)).await;
    let anonymous_session = app.create_session(body.clone()).await;
    let buyer_session = app
        .send(Method::POST, "/api/checkout/sessions", Some(body.clone()), false, Some(&buyer))
        .await;
    let victims_cart = app.service_create_session(body.clone()).await;
    let (pay_other_status, pay_other) =
        app.checkout_as(&json!({"checkoutSessionId": victims_cart["id"]}), Some(&buyer)).await;
    let (pay_anonymous_status, _) =
        app.checkout_as(&json!({"checkoutSessionId": victims_cart["id"]}), None).await;
    let (pay_own_status, pay_own) = app
        .checkout_as(&json!({"checkoutSessionId": buyer_session.body["id"]}), Some(&buyer))
        .await;

    // Assert: the anonymous checkout is a guest's: no customer, no user in Stripe.
    assert_eq!(anonymous_status, 200, "{anonymous}");
    assert_eq!(anonymous["customerId"], Value::Null);
    assert_eq!(customers_after_anonymous, 0, "no customer was created for the body's userId");
    let stripe_session =
        backends.stripe.checkout_session(anonymous["sessionId"].as_str().unwrap()).unwrap();
    assert_eq!(stripe_session["customer"], Value::Null);
    assert_eq!(stripe_session["client_reference_id"], Value::Null);
    assert_eq!(stripe_session["metadata"].get("userId"), None, "{stripe_session}");
    // The signed-in buyer checks out as themselves, whatever the body says.
    assert_eq!(buyer_status, 200, "{as_buyer}");
    let customer = backends.stripe.customer(as_buyer["customerId"].as_str().unwrap()).unwrap();
    assert_eq!(customer["metadata"]["userId"], "buyer");
    assert_eq!(anonymous_session["userId"], Value::Null);
    assert_eq!(buyer_session.status, 201, "{}", buyer_session.body);
    assert_eq!(buyer_session.body["userId"], "buyer");
    assert_eq!(victims_cart["userId"], "victim", "a service caller names the user");
    assert_eq!((pay_other_status, pay_other["code"].as_str()), (403, Some("forbidden")));
    assert_eq!(pay_anonymous_status, 403);
    assert_eq!(pay_own_status, 200, "{pay_own}");
    assert_eq!(pay_own["customerId"], as_buyer["customerId"]);
    assert_eq!(backends.stripe.customers_created(), 1);
    app.stop().await;
}

#[tokio::test]
async fn a_paid_checkout_session_on_the_stripe_stream_completes_its_checkout_session() {
    // Arrange: a cart paid in Stripe; the buyer never reaches the success page.
    let backends = Backends::new("access-stream").await;
    let app = TestApp::spawn(&backends, &[]).await;
    let redis = backends.redis().await;
    let cart = app
        .service_create_session(json!({"userId": "u-s", "items": [{"sku": "mug", "quantity": 1}]}))
        .await;
    let cart_path = format!("/api/checkout/sessions/{}", cart["id"].as_str().unwrap());
    let (status, paid) = app.checkout(&json!({"checkoutSessionId": cart["id"]})).await;
    assert_eq!(status, 200, "{paid}");
    let stripe_session = paid["sessionId"].as_str().unwrap().to_owned();
    assert!(backends.stripe.complete_checkout_session(&stripe_session));
    let raw = json!({
        "id": "evt_cs_1",
        "type": "checkout.session.completed",
        // A payload claiming whatever: the consumer fetches the session from Stripe.
        "data": {"object": {"id": stripe_session, "object": "checkout.session", "payment_status": "unpaid"}},
    });
    let event = StripeEventMessage {
        event_id: "evt_cs_1".to_owned(),
        event_type: "checkout.session.completed".to_owned(),
        created: 1_700_000_000,
        livemode: false,
        api_version: None,
        object_id: Some(stripe_session.clone()),
        customer_id: paid["customerId"].as_str().map(str::to_owned),
        raw: raw.to_string(),
    };

    // Act
    put_on_stripe_stream(&redis, &[event]).await;

    // Assert
    let completed = holds_within(Duration::from_secs(20), || async {
        app.get(&cart_path).await.body["status"] == "completed"
    })
    .await;
    assert!(completed, "{}", app.get(&cart_path).await.body);
    app.stop().await;
}

#[tokio::test]
async fn an_expired_checkout_session_on_the_stripe_stream_fails_its_checkout_session() {
    // Arrange: a cart sent to Stripe Checkout, never paid; Stripe expires the session.
    let backends = Backends::new("access-expired").await;
    let app = TestApp::spawn(&backends, &[]).await;
    let redis = backends.redis().await;
    let cart = app
        .service_create_session(json!({"userId": "u-x", "items": [{"sku": "mug", "quantity": 1}]}))
        .await;
    let cart_path = format!("/api/checkout/sessions/{}", cart["id"].as_str().unwrap());
    let (status, created) = app.checkout(&json!({"checkoutSessionId": cart["id"]})).await;
    assert_eq!(status, 200, "{created}");
    let stripe_session = created["sessionId"].as_str().unwrap().to_owned();
    assert!(backends.stripe.expire_checkout_session(&stripe_session));
    let raw = json!({
        "id": "evt_cs_expired",
        "type": "checkout.session.expired",
        "data": {"object": {"id": stripe_session, "object": "checkout.session"}},
    });
    let event = StripeEventMessage {
        event_id: "evt_cs_expired".to_owned(),
        event_type: "checkout.session.expired".to_owned(),
        created: 1_700_000_000,
        livemode: false,
        api_version: None,
        object_id: Some(stripe_session),
        customer_id: created["customerId"].as_str().map(str::to_owned),
        raw: raw.to_string(),
    };

    // Act
    put_on_stripe_stream(&redis, &[event]).await;

    // Assert
    let failed = holds_within(Duration::from_secs(20), || async {
        app.get(&cart_path).await.body["status"] == "failed"
    })
    .await;
    assert!(failed, "{}", app.get(&cart_path).await.body);
    app.stop().await;
}

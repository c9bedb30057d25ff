//! The Stripe flow end to end: real checkout-api, real Redis and Postgres, the real async-stripe
//! client against the local fake Stripe; the sync once against a real Redis Cluster.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use checkout_api::domain::stripe::SyncOutcome;
use common::{Backends, TestApp, subscription_checkout, subscription_event};
use platform_testing::fake_stripe::route;
use platform_testing::{
    RedisCluster, StripeFault, SubscriptionState, holds_within, put_on_stripe_stream,
};
use serde_json::{Value, json};

#[tokio::test]
async fn twenty_concurrent_checkouts_for_a_new_user_create_exactly_one_stripe_customer() {
    // Arrange
    let backends = Backends::new("stripe-concurrent").await;
    let app = TestApp::spawn(&backends, &[]).await;
    let body = json!({"userId": "user-20", "items": [{"sku": "tee", "quantity": 2}]});

    // Act
    let answers = futures::future::join_all((0..20).map(|_| app.checkout(&body))).await;

    // Assert
    assert_eq!(backends.stripe.customers_created(), 1);
    let customer_ids: std::collections::HashSet<&str> =
        answers.iter().map(|(_, body)| body["customerId"].as_str().unwrap_or_default()).collect();
    assert_eq!(customer_ids.len(), 1, "{answers:?}");
    for (status, body) in &answers {
        assert_eq!(*status, 200, "{body}");
        assert!(body["url"].as_str().unwrap().contains("/c/pay/cs_test_"), "{body}");
        assert!(body["sessionId"].as_str().unwrap().starts_with("cs_test_"), "{body}");
    }
    let customer_id = customer_ids.iter().next().unwrap();
    let customer = backends.stripe.customer(customer_id).unwrap();
    assert_eq!(customer["metadata"]["userId"], "user-20");
    let session =
        backends.stripe.checkout_session(answers[0].1["sessionId"].as_str().unwrap()).unwrap();
    assert_eq!(session["amount_total"], 2_000, "2 × the catalog's 1000");
    assert_eq!(session["mode"], "payment");
    assert!(
        session["success_url"]
            .as_str()
            .unwrap()
            .ends_with("/store/checkout/success?session_id={CHECKOUT_SESSION_ID}")
    );
    app.stop().await;
}

#[tokio::test]
async fn a_known_user_is_served_from_redis_without_asking_stripe_for_a_customer() {
    // Arrange
    let backends = Backends::new("stripe-known").await;
    let app = TestApp::spawn(&backends, &[]).await;
    let (status, first) = app.checkout(&subscription_checkout("user-k", "price_basic")).await;
    assert_eq!(status, 200, "{first}");

    // Act
    let (status, second) = app.checkout(&subscription_checkout("user-k", "price_basic")).await;

    // Assert
    assert_eq!(status, 200, "{second}");
    assert_eq!(second["customerId"], first["customerId"]);
    assert_eq!(backends.stripe.requests(route::CREATE_CUSTOMER), 1);
    assert_eq!(backends.stripe.requests(route::CREATE_CHECKOUT_SESSION), 2);
    app.stop().await;
}

#[tokio::test]
async fn success_page_right_after_payment_returns_the_synced_subscription_before_any_webhook() {
    // Arrange: a subscription checkout, paid on the (fake) hosted page; no event is on the stream.
    let backends = Backends::new("stripe-success").await;
    let app = TestApp::spawn(&backends, &[]).await;
    let (status, created) = app.checkout(&subscription_checkout("user-s", "price_pro")).await;
    assert_eq!(status, 200, "{created}");
    let session_id = created["sessionId"].as_str().unwrap();
    let customer_id = created["customerId"].as_str().unwrap();
    assert!(backends.stripe.complete_checkout_session(session_id));

    // Act
    let response = app.get_raw(&format!("/store/checkout/success?session_id={session_id}")).await;
    let status = response.status().as_u16();
    let details: Value = response.json().await.unwrap();

    // Assert
    assert_eq!(status, 200, "{details}");
    assert_eq!(details["sessionId"], session_id);
    assert_eq!(details["status"], "complete");
    assert_eq!(details["paymentStatus"], "paid");
    assert_eq!(details["customerId"], customer_id);
    assert_eq!(details["subscription"]["status"], "active");
    assert_eq!(details["subscription"]["priceId"], "price_pro");
    assert_eq!(details["subscription"]["paymentMethod"]["brand"], "visa");
    assert_eq!(details["subscription"]["paymentMethod"]["last4"], "4242");
    assert!(details["subscription"]["currentPeriodEnd"].as_i64().unwrap() > 0);
    let stored = app.service_get("/api/stripe/users/user-s/subscription").await.body;
    assert_eq!(stored["customerId"], customer_id);
    assert_eq!(stored["subscription"]["status"], "active");
    let html = app
        .http
        .get(format!("{}/store/checkout/success?session_id={session_id}", app.base))
        .header("Accept", "text/html,application/xhtml+xml,*/*;q=0.8")
        .send()
        .await
        .unwrap();
    assert!(html.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    let page = html.text().await.unwrap();
    assert!(page.contains("Thank you"), "{page}");
    assert!(page.contains("visa ending 4242"), "{page}");
    app.stop().await;
}

#[tokio::test]
async fn a_one_off_payment_records_status_none_with_the_last_payment() {
    // Arrange
    let backends = Backends::new("stripe-payment").await;
    let app = TestApp::spawn(&backends, &[]).await;
    let body = json!({"userId": "user-p", "items": [{"sku": "mug", "quantity": 1}]});
    let (_, created) = app.checkout(&body).await;
    let session_id = created["sessionId"].as_str().unwrap();
    assert!(backends.stripe.complete_checkout_session(session_id));

    // Act
    let details: Value = app
        .get_raw(&format!("/store/checkout/success?session_id={session_id}"))
        .await
        .json()
        .await
        .unwrap();

    // Assert
    assert_eq!(details["amountTotal"], 500, "{details}");
    assert_eq!(details["subscription"]["status"], "none");
    assert_eq!(details["subscription"]["lastPayment"]["status"], "succeeded");
    assert_eq!(details["subscription"]["lastPayment"]["amount"], 500);
    assert!(details["subscription"].get("subscriptionId").is_none(), "{details}");
    app.stop().await;
}

#[tokio::test]
async fn a_later_subscription_updated_event_on_the_stream_resyncs_the_state() {
    // Arrange: an active subscriber whose state is synced.
    let backends = Backends::new("stripe-event").await;
    let app = TestApp::spawn(&backends, &[]).await;
    let redis = backends.redis().await;
    let (_, created) = app.checkout(&subscription_checkout("user-e", "price_pro")).await;
    let session_id = created["sessionId"].as_str().unwrap();
    let customer_id = created["customerId"].as_str().unwrap().to_owned();
    backends.stripe.complete_checkout_session(session_id);
    let response = app.get_raw(&format!("/store/checkout/success?session_id={session_id}")).await;
    assert_eq!(response.status(), 200);

    // Act: the customer cancels at period end in Stripe; the event arrives on the stream.
    let mut state = SubscriptionState::active("price_pro");
    state.cancel_at_period_end = true;
    state.status = "past_due".to_owned();
    backends.stripe.set_subscription(&customer_id, &state);
    let event = subscription_event(
        "evt_upd_1",
        "customer.subscription.updated",
        &customer_id,
        1_700_000_000,
    );
    put_on_stripe_stream(&redis, &[event]).await;

    // Assert: Stripe's state (not the payload's "incomplete") is recorded.
    let path = format!("/api/stripe/customers/{customer_id}/state");
    let resynced = holds_within(Duration::from_secs(20), || async {
        let body = app.service_get(&path).await.body;
        body["status"] == "past_due" && body["cancelAtPeriodEnd"] == true
    })
    .await;
    let body = app.service_get(&path).await.body;
    assert!(resynced, "{body}");
    assert_eq!(body["subscriptionId"], created_subscription(&backends, session_id));
    app.stop().await;
}

#[tokio::test]
async fn in_redis_cluster_mode_the_success_page_and_a_stream_event_write_the_synced_state() {
    // Arrange: the fenced write compares the sync lock's fence and writes the state record in one
    // script, so both keys must share a slot.
    let backends = Backends::with_redis("stripe-cluster", RedisCluster::shared().url()).await;
    let app = TestApp::spawn(&backends, &[("APP__REDIS__MODE", "cluster")]).await;
    let redis = backends.redis().await;
    let (status, created) = app.checkout(&subscription_checkout("user-k", "price_pro")).await;
    assert_eq!(status, 200, "{created}");
    let session_id = created["sessionId"].as_str().unwrap();
    let customer_id = created["customerId"].as_str().unwrap().to_owned();
    assert!(backends.stripe.complete_checkout_session(session_id));

    // Act: the eager sync of the success page, then a change in Stripe announced on the stream.
    let success = app.get_raw(&format!("/store/checkout/success?session_id={session_id}")).await;
    let success_status = success.status().as_u16();
    let details: Value = success.json().await.unwrap();
    let mut state = SubscriptionState::active("price_pro");
    state.status = "past_due".to_owned();
    backends.stripe.set_subscription(&customer_id, &state);
    let event =
        subscription_event("evt_k_1", "customer.subscription.updated", &customer_id, 1_700_000_000);
    put_on_stripe_stream(&redis, &[event]).await;
    let path = format!("/api/stripe/customers/{customer_id}/state");
    let resynced = holds_within(Duration::from_secs(20), || async {
        let body = app.service_get(&path).await.body;
        body["status"] == "past_due"
    })
    .await;

    // Assert
    assert_eq!(success_status, 200, "{details}");
    assert_eq!(details["subscription"]["status"], "active");
    assert!(resynced, "the stream consumer's sync wrote Stripe's new state");
    app.stop().await;
}

fn created_subscription(backends: &Backends, session_id: &str) -> Value {
    backends.stripe.checkout_session(session_id).unwrap()["subscription"].clone()
}

#[tokio::test]
async fn events_processed_in_reverse_order_leave_stripes_current_state() {
    // Arrange: Stripe's current state is "canceled"; the events arrive newest first.
    let backends = Backends::new("stripe-order").await;
    let app = TestApp::spawn(&backends, &[]).await;
    let redis = backends.redis().await;
    let customer_id = backends.stripe.create_customer(&[("userId", "user-o")]);
    let mut state = SubscriptionState::active("price_pro");
    backends.stripe.set_subscription(&customer_id, &state);
    state.status = "canceled".to_owned();
    state.card = None;
    backends.stripe.set_subscription(&customer_id, &state);
    let events = [
        subscription_event("evt_o_3", "customer.subscription.deleted", &customer_id, 1_700_000_300),
        subscription_event("evt_o_2", "customer.subscription.updated", &customer_id, 1_700_000_200),
        subscription_event("evt_o_1", "customer.subscription.created", &customer_id, 1_700_000_100),
        subscription_event("evt_o_0", "invoice.paid", &customer_id, 1_700_000_050),
    ];

    // Act: each event on its own, in reverse order, so each triggers its own sync.
    let path = format!("/api/stripe/customers/{customer_id}/state");
    for (index, event) in events.into_iter().enumerate() {
        put_on_stripe_stream(&redis, std::slice::from_ref(&event)).await;
        let requests = index as u64 + 1;
        let synced = holds_within(Duration::from_secs(20), || async {
            backends.stripe.requests(route::LIST_SUBSCRIPTIONS) >= requests
        })
        .await;
        assert!(synced, "event {} was not synced", event.event_id);
    }
    let settled = holds_within(Duration::from_secs(10), || async {
        app.service_get(&path).await.status == 200
    })
    .await;

    // Assert
    assert!(settled);
    let body = app.service_get(&path).await.body;
    assert_eq!(body["status"], "canceled", "{body}");
    assert!(body.get("paymentMethod").is_none(), "{body}");
    app.stop().await;
}

#[tokio::test]
async fn an_older_fetch_delayed_past_its_lock_does_not_overwrite_the_newer_record() {
    // Arrange: a sync whose Stripe answer (state: active) is held back for longer than its lock
    // lease; meanwhile the subscription is canceled and a second sync records that.
    let backends = Backends::new("stripe-fence").await;
    let lease =
        [("APP__STRIPE__SYNC_LOCK_TTL_MS", "200"), ("APP__STRIPE__SYNC_LOCK_WAIT_MS", "10000")];
    let slow = backends.stripe_service(&lease).await;
    let fast = backends.stripe_service(&lease).await;
    let customer_id = backends.stripe.create_customer(&[("userId", "user-f")]);
    let mut state = SubscriptionState::active("price_pro");
    backends.stripe.set_subscription(&customer_id, &state);
    backends
        .stripe
        .inject(route::LIST_SUBSCRIPTIONS, [StripeFault::Delay(Duration::from_millis(1_500))]);

    // Act
    let older = {
        let customer_id = customer_id.clone();
        tokio::spawn(async move { slow.sync_stripe_data_to_redis(&customer_id).await })
    };
    let fetched = holds_within(Duration::from_secs(20), || async {
        backends.stripe.requests(route::LIST_SUBSCRIPTIONS) == 1
    })
    .await;
    assert!(fetched);
    state.status = "canceled".to_owned();
    backends.stripe.set_subscription(&customer_id, &state);
    let newer = fast.sync_stripe_data_to_redis(&customer_id).await.unwrap();
    let older = older.await.unwrap().unwrap();

    // Assert
    assert!(matches!(&newer, SyncOutcome::Written(s) if s.status == "canceled"), "{newer:?}");
    assert!(
        matches!(&older, SyncOutcome::Superseded(Some(s)) if s.status == "canceled"),
        "{older:?}"
    );
    let stored = fast.stored_state(&customer_id).await.unwrap().unwrap();
    assert_eq!(stored.status, "canceled");
}

#[tokio::test]
async fn invalid_checkout_requests_get_400_with_a_clear_code() {
    // Arrange
    let backends = Backends::new("stripe-invalid").await;
    let app = TestApp::spawn(&backends, &[]).await;
    let item = |quantity: i64| json!({"sku": "tee", "quantity": quantity});
    let priced = |amount: i64| json!({"sku": "tee", "unitAmountCents": amount, "quantity": 1});
    let cases = [
        (json!({"userId": "", "items": [item(1)]}), "invalid_input", "userId"),
        (json!({"userId": "bad user!", "items": [item(1)]}), "invalid_input", "userId"),
        (json!({"userId": "u1", "items": []}), "invalid_input", "items"),
        (json!({"userId": "u1", "items": [priced(-5)]}), "price_mismatch", "unitAmountCents"),
        (json!({"userId": "u1", "items": [priced(1)]}), "price_mismatch", "1000"),
        (json!({"userId": "u1", "items": [item(0)]}), "invalid_quantity", "quantity"),
        (json!({"userId": "u1", "items": [item(-1)]}), "invalid_quantity", "quantity"),
        (
            json!({"userId": "u1", "items": [{"sku": "nosuch", "quantity": 1}]}),
            "unknown_product",
            "nosuch",
        ),
        (
            json!({"userId": "u1", "items": [item(1)], "priceId": "price_x"}),
            "invalid_input",
            "either",
        ),
        (json!({"userId": "u1", "priceId": "nope"}), "invalid_input", "priceId"),
        (json!({"userId": "u1", "priceId": "price_unlisted"}), "unknown_price", "price_unlisted"),
        (json!({"userId": "u1", "items": [item(1)], "mode": "setup"}), "invalid_input", "mode"),
        (
            json!({"userId": "u1", "items": [item(1)], "email": "not-an-email"}),
            "invalid_input",
            "email",
        ),
        (json!({"userId": "u1", "items": [item(1)], "extra": true}), "invalid_json", ""),
        (json!({"checkoutSessionId": "cs_unknown"}), "checkout_session_not_found", ""),
    ];

    for (body, code, mentions) in cases {
        // Act
        let (status, answer) = app.checkout(&body).await;

        // Assert
        let expected = if code == "checkout_session_not_found" { 404 } else { 400 };
        assert_eq!(status, expected, "{body} → {answer}");
        assert_eq!(answer["code"], code, "{body} → {answer}");
        assert!(answer["error"].as_str().unwrap().contains(mentions), "{body} → {answer}");
    }
    let raw = app
        .http
        .post(format!("{}/api/stripe/checkout", app.base))
        .header("Content-Type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 400);
    assert_eq!(backends.stripe.customers_created(), 0);
    app.stop().await;
}

#[tokio::test]
async fn success_page_without_or_with_an_unknown_session_id_answers_400_or_404() {
    // Arrange
    let backends = Backends::new("stripe-success-bad").await;
    let app = TestApp::spawn(&backends, &[]).await;

    // Act
    let missing = app.get_raw("/store/checkout/success").await;
    let malformed = app.get_raw("/store/checkout/success?session_id=%3Cscript%3E").await;
    let unknown = app.get_raw("/store/checkout/success?session_id=cs_test_unknown").await;
    let state = app.service_get("/api/stripe/customers/cus_nobody/state").await;
    let bad_customer = app.service_get("/api/stripe/customers/nope/state").await;

    // Assert
    assert_eq!(missing.status(), 400);
    assert_eq!(missing.json::<Value>().await.unwrap()["code"], "invalid_input");
    assert_eq!(malformed.status(), 400);
    assert_eq!(unknown.status(), 404);
    assert_eq!(unknown.json::<Value>().await.unwrap()["code"], "stripe_session_not_found");
    assert_eq!(state.status, 404);
    assert_eq!(state.body["code"], "stripe_state_not_found");
    assert_eq!(bad_customer.status, 400);
    app.stop().await;
}

#[tokio::test]
async fn a_transient_stripe_failure_is_retried_with_the_same_idempotency_key() {
    // Arrange: the first customer create fails with 500 after Stripe stored nothing, then 503s
    // on the session create.
    let backends = Backends::new("stripe-retry").await;
    let app = TestApp::spawn(&backends, &[]).await;
    backends.stripe.inject(route::CREATE_CUSTOMER, [StripeFault::Status(500)]);
    backends.stripe.inject(route::CREATE_CHECKOUT_SESSION, [StripeFault::Status(503)]);

    // Act
    let (status, body) = app.checkout(&subscription_checkout("user-r", "price_pro")).await;

    // Assert
    assert_eq!(status, 200, "{body}");
    assert_eq!(backends.stripe.requests(route::CREATE_CUSTOMER), 2);
    assert_eq!(backends.stripe.requests(route::CREATE_CHECKOUT_SESSION), 2);
    assert_eq!(backends.stripe.customers_created(), 1);
    assert_eq!(backends.stripe.pending_faults(), 0);
    app.stop().await;
}

#[tokio::test]
async fn stripe_down_answers_503_stripe_unavailable_and_the_event_waits_for_stripe() {
    // Arrange: a known subscriber, then Stripe goes away.
    let mut backends = Backends::new("stripe-down").await;
    let app = TestApp::spawn(&backends, &[]).await;
    let redis = backends.redis().await;
    let (_, created) = app.checkout(&subscription_checkout("user-d", "price_pro")).await;
    let customer_id = created["customerId"].as_str().unwrap().to_owned();
    backends.stripe.stop();

    // Act
    let (new_user_status, new_user) =
        app.checkout(&subscription_checkout("user-d2", "price_pro")).await;
    let (known_user_status, known_user) =
        app.checkout(&subscription_checkout("user-d", "price_pro")).await;
    let success = app.get_raw("/store/checkout/success?session_id=cs_test_whatever").await;
    let success_status = success.status().as_u16();
    let success_body: Value = success.json().await.unwrap();
    put_on_stripe_stream(
        &redis,
        &[subscription_event("evt_down", "customer.subscription.updated", &customer_id, 1)],
    )
    .await;
    let pending_key = redis.keys().stream(platform_redis::StreamName::StripeEvents);
    // Redelivered at least once (XPENDING … - + 10 → [[id, consumer, idle ms, deliveries]]).
    let retried = holds_within(Duration::from_secs(20), || async {
        use platform_redis::fred::prelude::*;
        use platform_redis::fred::types::Value as RedisValue;
        let entries: RedisValue = redis
            .primary()
            .xpending(&pending_key, "checkout-api", ("-", "+", 10))
            .await
            .unwrap_or(RedisValue::Null);
        entries.into_array().into_iter().any(|entry| {
            entry.into_array().get(3).and_then(RedisValue::as_i64).is_some_and(|n| n >= 2)
        })
    })
    .await;

    // Assert
    for (status, body) in [
        (new_user_status, &new_user),
        (known_user_status, &known_user),
        (success_status, &success_body),
    ] {
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["code"], "stripe_unavailable", "{body}");
        assert!(!body.to_string().contains("sk_test"), "{body}");
    }
    assert!(retried, "the event was not left pending");
    let state = app.service_get(&format!("/api/stripe/customers/{customer_id}/state")).await;
    assert_eq!(state.status, 404, "nothing may be written while Stripe is down");
    app.stop().await;
}

#[tokio::test]
async fn a_stored_checkout_session_is_paid_through_stripe_for_exactly_its_total() {
    // Arrange: one session without a coupon (itemised lines + delivery), one with a coupon (one
    // line for the discounted total), and one already completed.
    let backends = Backends::new("stripe-from-session").await;
    let app = TestApp::spawn(&backends, &[]).await;
    let items = json!([{"sku": "tee", "quantity": 2}, {"sku": "mug", "quantity": 1}]);
    let plain = app
        .service_create_session(
            json!({"userId": "user-cs", "items": items, "deliveryDistanceKm": 12.0}),
        )
        .await;
    let discounted = app
        .service_create_session(
            json!({"userId": "user-cs", "items": items, "couponCode": "WELCOME10"}),
        )
        .await;
    let done = app.service_create_session(json!({"userId": "user-cs", "items": items})).await;
    let done_id = done["id"].as_str().unwrap();
    let completed = app.finish(done_id, "complete").await;
    assert_eq!(completed.status, 200, "{}", completed.body);

    // Act
    let (plain_status, plain_paid) = app.checkout(&json!({"checkoutSessionId": plain["id"]})).await;
    let (discounted_status, discounted_paid) =
        app.checkout(&json!({"checkoutSessionId": discounted["id"]})).await;
    let (done_status, done_answer) = app.checkout(&json!({"checkoutSessionId": done_id})).await;
    let (unknown_status, unknown) =
        app.checkout(&json!({"checkoutSessionId": "00000000-0000-4000-8000-000000000000"})).await;

    // Assert
    assert_eq!(plain_status, 200, "{plain_paid}");
    assert!(plain["deliveryCents"].as_i64().unwrap() > 0, "{plain}");
    let stripe_plain =
        backends.stripe.checkout_session(plain_paid["sessionId"].as_str().unwrap()).unwrap();
    assert_eq!(stripe_plain["amount_total"], plain["totalCents"]);
    assert_eq!(stripe_plain["metadata"]["checkoutSessionId"], plain["id"]);
    assert_eq!(discounted_status, 200, "{discounted_paid}");
    assert!(discounted["discountCents"].as_i64().unwrap() > 0, "{discounted}");
    let stripe_discounted =
        backends.stripe.checkout_session(discounted_paid["sessionId"].as_str().unwrap()).unwrap();
    assert_eq!(stripe_discounted["amount_total"], discounted["totalCents"]);
    assert!(plain_paid["customerId"].is_string(), "{plain_paid}");
    assert_eq!(plain_paid["customerId"], discounted_paid["customerId"], "one customer per user");
    assert_eq!(done_status, 409, "{done_answer}");
    assert_eq!(done_answer["code"], "invalid_transition");
    assert_eq!(unknown_status, 404, "{unknown}");
    assert_eq!(unknown["code"], "checkout_session_not_found");
    app.stop().await;
}

#[tokio::test]
async fn a_paid_stripe_checkout_completes_its_checkout_session_once() {
    // Arrange
    let backends = Backends::new("stripe-session-paid").await;
    let app = TestApp::spawn(&backends, &[]).await;
    let session = app
        .service_create_session(
            json!({"userId": "user-paid", "items": [{"sku": "tee", "quantity": 1}]}),
        )
        .await;
    let id = session["id"].as_str().unwrap();
    let (status, paid) = app.checkout(&json!({"checkoutSessionId": id})).await;
    assert_eq!(status, 200, "{paid}");
    let stripe_session = paid["sessionId"].as_str().unwrap();
    let success = format!("/store/checkout/success?session_id={stripe_session}");
    let before_payment = app.get(&success).await;
    let status_before =
        app.get(&format!("/api/checkout/sessions/{id}")).await.body["status"].clone();
    assert!(backends.stripe.complete_checkout_session(stripe_session));

    // Act: the success page twice (a reload).
    let first = app.get(&success).await;
    let reload = app.get(&success).await;
    let stats = app.cleanup(json!({"action": "get_stats"})).await;

    // Assert
    assert_eq!(before_payment.status, 200, "{}", before_payment.body);
    assert_eq!(status_before, "open", "not paid yet, not completed");
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.body["checkoutSessionId"], id);
    assert_eq!(reload.status, 200, "{}", reload.body);
    assert_eq!(app.get(&format!("/api/checkout/sessions/{id}")).await.body["status"], "completed");
    assert_eq!(stats.body["stats"]["totalCompleted"], 1, "{}", stats.body);
    app.stop().await;
}

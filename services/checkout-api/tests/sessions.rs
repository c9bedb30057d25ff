//! Checkout sessions: pricing, the sliding TTL, updates and transitions, validation errors,
//! concurrency, statistics and the Redis management actions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Backends, TestApp, cart};
use reqwest::Method;
use serde_json::{Value, json};

async fn app(test: &str, extra: &[(&str, &str)]) -> TestApp {
    let backends = Backends::new(test).await;
    TestApp::spawn(&backends, extra).await
}

#[tokio::test]
async fn session_is_created_priced_in_cents_and_read_back_from_redis() {
    // Arrange
    let app = app("ck-create", &[]).await;

    // Act: 2 × 1250 + 1 × 500 = 3000 (the catalog's prices, which the client's match),
    // WELCOME10 (10 %) = 300 off, 7 km = 299 delivery; a service caller names the user.
    let created = app
        .service_create_session(json!({
            "userId": "user-1",
            "items": [
                {"sku": "tea", "name": "Tea", "unitAmountCents": 1250, "quantity": 2},
                {"sku": "mug", "name": "Mug", "unitAmountCents": 500, "quantity": 1},
            ],
            "couponCode": "welcome10",
            "deliveryDistanceKm": 7.0,
        }))
        .await;
    let id = created["id"].as_str().unwrap();
    let read = app.get(&format!("/api/checkout/sessions/{id}")).await;

    // Assert
    assert_eq!(created["status"], "open");
    assert_eq!(created["subtotalCents"], 3000);
    assert_eq!(created["discountCents"], 300);
    assert_eq!(created["deliveryCents"], 299);
    assert_eq!(created["totalCents"], 2999);
    assert_eq!(created["couponCode"], "WELCOME10");
    assert_eq!(created["userId"], "user-1");
    assert_eq!(created["store"], "redis");
    assert!(created["expiresAt"].is_string());
    assert_eq!(read.status, 200, "{}", read.body);
    assert_eq!(read.body["totalCents"], 2999);
    assert_eq!(read.body["items"][0]["sku"], "tea");
    app.stop().await;
}

#[tokio::test]
async fn session_ttl_slides_on_reads_and_an_idle_session_expires() {
    // Arrange: a 4 s TTL.
    let app = app("ck-ttl", &[("APP__CHECKOUT__SESSION_TTL_SECS", "4")]).await;
    let created = app.create_session(cart(1)).await;
    let path = format!("/api/checkout/sessions/{}", created["id"].as_str().unwrap());

    // Act: read after 2.5 s (restarts the 4 s), then again 2 s later: past the original deadline.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let first = app.get(&path).await;
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    let past_original_deadline = app.get(&path).await;

    // Assert: still alive; then, left idle, it expires (polled, bounded).
    assert_eq!(first.status, 200);
    assert_eq!(past_original_deadline.status, 200, "the read at 2.5 s did not extend the TTL");
    let mut expired = None;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        // Probe without reading the session (a read would extend it): the key's existence.
        let redis = app.context.redis.clone();
        let key = redis.keys().checkout_session(created["id"].as_str().unwrap());
        use platform_redis::fred::prelude::*;
        let exists: i64 = redis.primary().exists(key).await.unwrap();
        if exists == 0 {
            expired = Some(app.get(&path).await);
            break;
        }
    }
    let expired = expired.expect("the idle session never expired");
    assert_eq!(expired.status, 404);
    assert_eq!(expired.body["code"], "session_not_found");
    app.stop().await;
}

#[tokio::test]
async fn update_reprices_and_transitions_follow_open_to_completed_or_failed() {
    // Arrange
    let app = app("ck-update", &[]).await;
    let one = app.create_session(cart(1)).await;
    let two = app.create_session(cart(1)).await;
    let one_path = format!("/api/checkout/sessions/{}", one["id"].as_str().unwrap());
    let two_path = format!("/api/checkout/sessions/{}", two["id"].as_str().unwrap());

    // Act: SAVE5 needs 2000 cents; grow the cart to 4 × 1000 first, add a distance.
    let updated = app
        .patch(
            &one_path,
            json!({
                "items": [{"sku": "tee", "quantity": 4}],
                "couponCode": "SAVE5",
                "deliveryDistanceKm": 12,
            }),
        )
        .await;
    let coupon_removed = app.patch(&one_path, json!({"couponCode": null})).await;
    let completed = app.finish(one["id"].as_str().unwrap(), "complete").await;
    let complete_again = app.finish(one["id"].as_str().unwrap(), "complete").await;
    let update_after = app.patch(&one_path, json!({"deliveryDistanceKm": 1})).await;
    let failed = app.finish(two["id"].as_str().unwrap(), "fail").await;
    let complete_failed = app.finish(two["id"].as_str().unwrap(), "complete").await;
    let empty_patch = app.patch(&two_path, json!({})).await;

    // Assert
    assert_eq!(updated.status, 200, "{}", updated.body);
    assert_eq!(updated.body["subtotalCents"], 4000);
    assert_eq!(updated.body["discountCents"], 500);
    assert_eq!(updated.body["deliveryCents"], 599);
    assert_eq!(updated.body["totalCents"], 4099);
    assert_eq!(updated.body["version"], 2);
    assert_eq!(coupon_removed.body["discountCents"], 0);
    assert_eq!(coupon_removed.body["couponCode"], Value::Null);
    assert_eq!(coupon_removed.body["deliveryCents"], 599, "an absent field stays as it was");
    assert_eq!(completed.status, 200);
    assert_eq!(completed.body["status"], "completed");
    assert_eq!(complete_again.status, 409);
    assert_eq!(complete_again.body["code"], "invalid_transition");
    assert_eq!(update_after.status, 409);
    assert_eq!(failed.body["status"], "failed");
    assert_eq!(complete_failed.status, 409);
    assert_eq!(empty_patch.status, 400);
    assert_eq!(empty_patch.body["code"], "empty_update");
    assert_eq!(app.get(&one_path).await.body["status"], "completed");
    app.stop().await;
}

#[tokio::test]
async fn invalid_carts_coupons_and_distances_answer_400_with_clear_codes() {
    // Arrange: an expired, an inactive coupon; at most 3 items per cart.
    let app = app("ck-invalid", &[("APP__CHECKOUT__MAX_ITEMS", "3")]).await;
    for (code, extra) in
        [("OLD", json!({"expiresAt": "2020-01-01T00:00:00Z"})), ("OFF", json!({"active": false}))]
    {
        let mut body = json!({"code": code, "kind": "percent", "value": 20});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let created = app.admin(Method::POST, "/api/admin/coupons", Some(body)).await;
        assert_eq!(created.status, 201, "{}", created.body);
    }
    let item = |quantity: i64, amount: i64| json!({"sku": "tee", "name": "N", "unitAmountCents": amount, "quantity": quantity});
    let with = |extra: Value| {
        let mut body = cart(1);
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        body
    };
    let cases = [
        (json!({"items": []}), "empty_cart"),
        (json!({"items": [item(0, 1000)]}), "invalid_quantity"),
        (json!({"items": [item(1, -5)]}), "price_mismatch"),
        (cart(4), "too_many_items"),
        (json!({"items": [{"sku": "", "quantity": 1}]}), "unknown_product"),
        (json!({"items": [{"sku": "s", "quantity": 1}]}), "unknown_product"),
        (json!({"items": [{"sku": "tee", "unitAmountCents": 1.5, "quantity": 1}]}), "invalid_json"),
        (with(json!({"deliveryDistanceKm": -1})), "invalid_distance"),
        (with(json!({"deliveryDistanceKm": 5000})), "invalid_distance"),
        (with(json!({"deliveryDistanceKm": 60})), "delivery_out_of_range"),
        (with(json!({"couponCode": "NOPE"})), "unknown_coupon"),
        (with(json!({"couponCode": "OLD"})), "coupon_expired"),
        (with(json!({"couponCode": "OFF"})), "coupon_inactive"),
        (with(json!({"couponCode": "SAVE5"})), "coupon_minimum_not_met"),
        (with(json!({"couponCode": "bad code!"})), "invalid_coupon_code"),
        (json!({"items": [item(1, 1000)], "surprise": true}), "invalid_json"),
    ];

    for (body, code) in cases {
        // Act
        let reply = app.post("/api/checkout/sessions", body.clone()).await;

        // Assert
        assert_eq!(reply.status, 400, "{body} → {}", reply.body);
        assert_eq!(reply.body["code"], code, "{body} → {}", reply.body);
        assert!(reply.body["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    let bad_id = app.get("/api/checkout/sessions/not-a-uuid").await;
    assert_eq!((bad_id.status, bad_id.body["code"].as_str()), (400, Some("invalid_session_id")));
    let unknown = app.get("/api/checkout/sessions/00000000-0000-4000-8000-000000000000").await;
    assert_eq!((unknown.status, unknown.body["code"].as_str()), (404, Some("session_not_found")));
    app.stop().await;
}

#[tokio::test]
async fn concurrent_updates_and_reads_of_one_session_keep_it_consistent() {
    // Arrange
    let app = app("ck-concurrent", &[]).await;
    let created = app.create_session(cart(1)).await;
    let path = format!("/api/checkout/sessions/{}", created["id"].as_str().unwrap());

    // Act: 20 updates (quantity i) and 20 reads at once.
    let updates = (1..=20).map(|quantity| {
        let body = json!({"items": [{"sku": "mug", "quantity": quantity}]});
        app.patch(&path, body)
    });
    let reads = (0..20).map(|_| app.get(&path));
    let (updates, reads) =
        tokio::join!(futures::future::join_all(updates), futures::future::join_all(reads));

    // Assert: every update applied or was refused with 409 (never lost silently); the final
    // record is one of the written ones, whole, and its version counts the applied updates.
    let applied = updates.iter().filter(|r| r.status == 200).count();
    for reply in &updates {
        assert!(
            reply.status == 200 || (reply.status == 409 && reply.body["code"] == "conflict"),
            "{}",
            reply.body
        );
    }
    for reply in &reads {
        assert_eq!(reply.status, 200);
        let item = &reply.body["items"][0];
        let expected =
            item["quantity"].as_i64().unwrap() * item["unitAmountCents"].as_i64().unwrap();
        assert_eq!(reply.body["subtotalCents"].as_i64().unwrap(), expected, "{}", reply.body);
    }
    assert!(applied >= 1);
    let last = app.get(&path).await.body;
    assert_eq!(last["version"].as_u64().unwrap(), 1 + applied as u64);
    let quantity = last["items"][0]["quantity"].as_i64().unwrap();
    assert_eq!(last["subtotalCents"].as_i64().unwrap(), quantity * 500);
    assert_eq!(last["totalCents"], last["subtotalCents"]);
    app.stop().await;
}

#[tokio::test]
async fn stats_cleanup_and_listing_actions_report_honestly() {
    // Arrange: 4 sessions, 1 completed, 1 failed; plus one that expires (1 s TTL app, same data).
    let backends = Backends::new("ck-admin").await;
    let app = TestApp::spawn(&backends, &[]).await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(app.create_session(cart(1)).await["id"].as_str().unwrap().to_owned());
    }
    app.finish(&ids[0], "complete").await;
    app.finish(&ids[1], "fail").await;
    let short = TestApp::spawn(&backends, &[("APP__CHECKOUT__SESSION_TTL_SECS", "1")]).await;
    short.create_session(cart(1)).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    // Act
    let stats = app.cleanup(json!({"action": "get_stats"})).await;
    let cleaned = app.cleanup(json!({"action": "cleanup_expired"})).await;
    let page_one = app.cleanup(json!({"action": "get_all_sessions", "limit": 3})).await;
    let cursor = page_one.body["nextCursor"].as_str().unwrap().to_owned();
    let page_two =
        app.cleanup(json!({"action": "get_all_sessions", "limit": 3, "cursor": cursor})).await;
    let unknown = app.cleanup(json!({"action": "drop_everything"})).await;
    let no_token = app.post("/api/redis/cleanup", json!({"action": "get_stats"})).await;
    let health = app.get("/api/redis/health").await;

    // Assert
    assert_eq!(stats.status, 200, "{}", stats.body);
    assert_eq!(stats.body["stats"]["totalCreated"], 5);
    assert_eq!(stats.body["stats"]["totalCompleted"], 1);
    assert_eq!(stats.body["stats"]["totalFailed"], 1);
    assert_eq!(stats.body["stats"]["conversionRate"], 0.2);
    assert_eq!(stats.body["activeSessions"], 4);
    assert_eq!(cleaned.status, 200);
    assert_eq!(cleaned.body["result"]["redisIndexEntriesRemoved"], 1);
    assert_eq!(page_one.body["count"], 3);
    assert_eq!(page_two.body["count"], 1);
    assert_eq!(page_two.body["nextCursor"], Value::Null);
    let mut listed: Vec<String> = page_one.body["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .chain(page_two.body["sessions"].as_array().unwrap())
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect();
    listed.sort();
    ids.sort();
    assert_eq!(listed, ids);
    assert_eq!((unknown.status, unknown.body["code"].as_str()), (400, Some("unknown_action")));
    assert_eq!(no_token.status, 401);
    assert_eq!(health.status, 200);
    assert_eq!(health.body["status"], "healthy");
    assert_eq!(health.body["environment"], json!({"configured": true, "errors": []}));
    assert_eq!(health.body["redis"]["connected"], true);
    assert_eq!(health.body["redis"]["checkoutStore"], true);
    assert_eq!(health.body["database"]["connected"], true);
    assert_eq!(health.body["sessions"]["count"], 4);
    assert_eq!(
        health.body["sessions"]["stats"],
        json!({"totalCreated": 5, "totalCompleted": 1, "totalFailed": 1})
    );
    assert_eq!(app.metric("checkout_sessions_completed_total").await, Some(1.0));
    assert_eq!(app.metric("checkout_sessions_failed_total").await, Some(1.0));
    short.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn in_redis_cluster_mode_sessions_are_created_read_completed_counted_and_cleaned_up() {
    // Arrange: the session scripts touch a session, the index and the statistics together, so
    // the three keys must share a slot (`{checkout}`); user sessions are single-key.
    let cluster = platform_testing::RedisCluster::shared().url();
    let backends = Backends::with_redis("ck-cluster", cluster).await;
    let app = TestApp::spawn(&backends, &[("APP__REDIS__MODE", "cluster")]).await;

    // Act
    let created = app.create_session(cart(2)).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let read = app.get(&format!("/api/checkout/sessions/{id}")).await;
    let updated = app.patch(&format!("/api/checkout/sessions/{id}"), cart(3)).await;
    let completed = app.finish(&id, "complete").await;
    let stats = app.cleanup(json!({"action": "get_stats"})).await;
    let cleaned = app.cleanup(json!({"action": "cleanup_expired"})).await;
    let guest = app.send(Method::POST, "/api/sessions/guest", None, false, None).await;
    let (pair, _) = common::set_cookie(&guest);
    let current = app.send(Method::GET, "/api/sessions/current", None, false, Some(&pair)).await;

    // Assert
    assert_eq!(created["store"], "redis", "{created}");
    assert_eq!(read.status, 200, "{}", read.body);
    assert_eq!(read.body["store"], "redis");
    assert_eq!(updated.status, 200, "{}", updated.body);
    assert_eq!(updated.body["subtotalCents"], 3_000);
    assert_eq!(completed.body["status"], "completed", "{}", completed.body);
    assert_eq!(stats.body["stats"]["totalCreated"], 1, "{}", stats.body);
    assert_eq!(stats.body["stats"]["totalCompleted"], 1);
    assert_eq!(cleaned.status, 200, "{}", cleaned.body);
    assert_eq!(guest.status, 201, "{}", guest.body);
    assert_eq!(current.status, 200, "{}", current.body);
    app.stop().await;
}

/// The session's index score and its key's remaining TTL, read without touching the session.
async fn index_score_and_pttl(app: &TestApp, id: &str) -> (f64, i64) {
    use platform_redis::fred::prelude::*;
    let redis = app.context.redis.clone();
    let keys = redis.keys().clone();
    let score: f64 = redis.primary().zscore(keys.checkout_index(), id).await.unwrap();
    let pttl: i64 = redis.primary().pttl(keys.checkout_session(id)).await.unwrap();
    (score, pttl)
}

#[tokio::test]
async fn a_read_soon_after_the_index_moved_extends_the_ttl_without_rewriting_the_index() {
    // Arrange: a 30 min TTL, so the index score may lag up to 3 min; creating set it.
    let app = app("ck-read-fresh", &[]).await;
    let created = app.create_session(cart(2)).await;
    let id = created["id"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let (score_before, pttl_before) = index_score_and_pttl(&app, &id).await;

    // Act
    let read = app.get(&format!("/api/checkout/sessions/{id}")).await;

    // Assert: the key's TTL restarted, the index was left alone, and the passed-through body is
    // the same view a decoded record gives (only the read-time expiry moved).
    let (score_after, pttl_after) = index_score_and_pttl(&app, &id).await;
    assert_eq!(read.status, 200, "{}", read.body);
    assert_eq!(read.headers["content-type"], "application/json");
    assert!(
        pttl_after > pttl_before,
        "the read did not extend the TTL: {pttl_before} → {pttl_after}"
    );
    assert_eq!(score_after, score_before, "the read rewrote the index score");
    let mut read_body = read.body.clone();
    let mut created_body = created.clone();
    assert!(read_body.as_object_mut().unwrap().remove("expiresAt").unwrap().is_string());
    created_body.as_object_mut().unwrap().remove("expiresAt");
    assert_eq!(read_body, created_body);
    app.stop().await;
}

#[tokio::test]
async fn a_read_after_a_tenth_of_the_ttl_moves_the_index_score() {
    // Arrange: a 4 s TTL: the index is refreshed by reads more than 0.4 s after it last moved.
    let app = app("ck-read-stale", &[("APP__CHECKOUT__SESSION_TTL_SECS", "4")]).await;
    let created = app.create_session(cart(1)).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let (score_at_create, _) = index_score_and_pttl(&app, &id).await;
    tokio::time::sleep(Duration::from_millis(600)).await;

    // Act
    let read = app.get(&format!("/api/checkout/sessions/{id}")).await;

    // Assert
    let (score_after, pttl_after) = index_score_and_pttl(&app, &id).await;
    assert_eq!(read.status, 200, "{}", read.body);
    assert!(score_after > score_at_create, "the index score did not move");
    assert!(pttl_after > 3_000, "the read did not restart the 4 s TTL (PTTL {pttl_after} ms)");
    app.stop().await;
}

#[tokio::test]
async fn a_session_whose_index_score_lags_is_listed_counted_kept_by_cleanup_and_readable() {
    // Arrange: two live sessions; one's index score is put 1 s in the past, as a score lags
    // after reads that skipped the ZADD (up to a tenth of the TTL).
    let app = app("ck-lagging-index", &[]).await;
    let lagging = app.create_session(cart(1)).await["id"].as_str().unwrap().to_owned();
    let fresh = app.create_session(cart(2)).await["id"].as_str().unwrap().to_owned();
    {
        use platform_redis::fred::prelude::*;
        let redis = app.context.redis.clone();
        let past = chrono::Utc::now().timestamp_millis() - 1_000;
        let () = redis
            .primary()
            .zadd(
                redis.keys().checkout_index(),
                None,
                None,
                false,
                false,
                (past as f64, lagging.as_str()),
            )
            .await
            .unwrap();
    }

    // Act
    let listed = app.cleanup(json!({"action": "get_all_sessions"})).await;
    let health = app.get("/api/redis/health").await;
    let cleaned = app.cleanup(json!({"action": "cleanup_expired"})).await;
    let listed_after_cleanup = app.cleanup(json!({"action": "get_all_sessions"})).await;
    let read = app.get(&format!("/api/checkout/sessions/{lagging}")).await;

    // Assert
    assert_eq!(listed.status, 200, "{}", listed.body);
    let mut ids: Vec<&str> = listed.body["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    let mut expected = vec![lagging.as_str(), fresh.as_str()];
    expected.sort_unstable();
    assert_eq!(ids, expected);
    let lagging_entry = listed.body["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == lagging.as_str())
        .unwrap();
    let expires_at: chrono::DateTime<chrono::Utc> =
        lagging_entry["expiresAt"].as_str().unwrap().parse().unwrap();
    assert!(expires_at > chrono::Utc::now(), "listed expiry {expires_at} is the lagging score");
    assert_eq!(health.body["sessions"]["count"], 2, "{}", health.body);
    assert_eq!(cleaned.body["result"]["redisIndexEntriesRemoved"], 0, "{}", cleaned.body);
    assert_eq!(listed_after_cleanup.body["count"], 2, "{}", listed_after_cleanup.body);
    assert_eq!(read.status, 200, "{}", read.body);
    app.stop().await;
}

//! Redis outages: checkout sessions go to Postgres and user sessions to memory, health says so,
//! and Redis takes new writes again once it is back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Backends, TestApp, cart, set_cookie};
use std::time::Duration;

use platform_testing::{RedisServer, holds_within};
use reqwest::Method;
use serde_json::Value;

const OUTAGE: &[(&str, &str)] =
    &[("APP__REDIS__COMMAND_TIMEOUT_MS", "300"), ("APP__REDIS__CONNECT_TIMEOUT_MS", "500")];

async fn redis_health(app: &TestApp) -> Value {
    app.get("/api/redis/health").await.body
}

#[tokio::test]
async fn with_redis_stopped_sessions_go_to_postgres_and_redis_takes_new_ones_when_back() {
    // Arrange: a private Redis, and a session stored in it.
    let redis = RedisServer::start().unwrap();
    let backends = Backends::with_redis("ck-outage", redis.url()).await;
    let app = TestApp::spawn(&backends, OUTAGE).await;
    let before = app.create_session(cart(1)).await;
    assert_eq!(before["store"], "redis");

    // Act: Redis goes away.
    redis.stop();
    let fell_back = holds_within(Duration::from_secs(10), || async {
        redis_health(&app).await["redis"]["checkoutStore"] == false
    })
    .await;
    assert!(fell_back, "health never reported the Postgres fallback");
    let during = app.create_session(cart(2)).await;
    let during_path = format!("/api/checkout/sessions/{}", during["id"].as_str().unwrap());
    let read_during = app.get(&during_path).await;
    let updated_during =
        app.patch(&during_path, serde_json::json!({"deliveryDistanceKm": 3})).await;
    let health_during = redis_health(&app).await;
    let common_health: Value = app.get("/api/health/redis").await.body;

    // Assert: stored and read in Postgres; health honest.
    assert_eq!(during["store"], "postgres");
    assert_eq!(during["subtotalCents"], 2000);
    assert_eq!(read_during.status, 200, "{}", read_during.body);
    assert_eq!(read_during.body["store"], "postgres");
    assert_eq!(updated_during.status, 200, "{}", updated_during.body);
    assert_eq!(updated_during.body["version"], 2);
    assert_eq!(health_during["status"], "degraded");
    assert_eq!(health_during["redis"]["connected"], false);
    assert_eq!(health_during["database"]["connected"], true);
    assert_eq!(health_during["sessions"]["count"], 1, "only the Postgres session is reachable");
    assert_eq!(
        health_during["sessions"]["stats"]["totalCreated"], 1,
        "Redis' counters are unreadable"
    );
    assert_eq!(common_health["mode"], "fallback");
    assert_eq!(common_health["fallbacks"]["checkoutSessions"], true);
    assert_eq!(app.metric("checkout_session_store_fallback").await, Some(1.0));
    let gauge = app
        .metric(r#"service_fallback{service="checkout-api",component="checkoutSessions"}"#)
        .await;
    assert_eq!(gauge, Some(1.0), "the fallback gauge every service exports");

    // Act: Redis comes back (empty: a restarted process without persistence).
    redis.restart().unwrap();
    let recovered = holds_within(Duration::from_secs(10), || async {
        redis_health(&app).await["status"] == "healthy"
    })
    .await;
    assert!(recovered, "health never recovered");
    let after = app.create_session(cart(1)).await;
    let old_read = app.get(&during_path).await;

    // Assert: new sessions go to Redis again; the outage session is still found in Postgres.
    assert_eq!(after["store"], "redis");
    assert_eq!(old_read.status, 200);
    assert_eq!(old_read.body["store"], "postgres");
    assert_eq!(old_read.body["deliveryCents"], 0);
    app.stop().await;
}

#[tokio::test]
async fn user_sessions_fall_back_to_memory_while_redis_is_down() {
    // Arrange
    let redis = RedisServer::start().unwrap();
    let backends = Backends::with_redis("us-outage", redis.url()).await;
    let app = TestApp::spawn(
        &backends,
        &[
            OUTAGE[0],
            OUTAGE[1],
            ("APP__RATE_LIMIT__POLICIES__GUEST_CHECKOUT__LIMIT", "100"),
            ("APP__RATE_LIMIT__POLICIES__GUEST_CHECKOUT__WINDOW_SECS", "300"),
        ],
    )
    .await;

    // Act
    redis.stop();
    let fell_back = holds_within(Duration::from_secs(10), || async {
        redis_health(&app).await["redis"]["userSessionStore"] == false
    })
    .await;
    assert!(fell_back, "health never reported the memory fallback");
    let created = app.send(Method::POST, "/api/sessions/guest", None, false, None).await;
    let (cookie, _) = set_cookie(&created);
    let current = app.send(Method::GET, "/api/sessions/current", None, false, Some(&cookie)).await;
    let common_health: Value = app.get("/api/health/redis").await.body;
    redis.restart().unwrap();
    let recovered = holds_within(Duration::from_secs(10), || async {
        redis_health(&app).await["redis"]["userSessionStore"] == true
    })
    .await;
    let still_readable =
        app.send(Method::GET, "/api/sessions/current", None, false, Some(&cookie)).await;
    let new_one = app.send(Method::POST, "/api/sessions/guest", None, false, None).await;

    // Assert
    assert_eq!(created.status, 201, "{}", created.body);
    assert_eq!(created.body["store"], "memory");
    assert_eq!(current.status, 200);
    assert_eq!(current.body["store"], "memory");
    assert_eq!(common_health["fallbacks"]["userSessions"], true);
    assert!(recovered);
    assert_eq!(still_readable.status, 200, "a memory session outlives the outage on this replica");
    assert_eq!(new_one.body["store"], "redis");
    app.stop().await;
}

//! User and guest sessions: cookie flags, reading back, id rotation on login, logout, and the
//! guest_checkout rate limit.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Backends, TestApp, set_cookie};
use reqwest::Method;
use serde_json::json;

async fn app(test: &str, extra: &[(&str, &str)]) -> TestApp {
    let backends = Backends::new(test).await;
    TestApp::spawn(&backends, extra).await
}

#[tokio::test]
async fn guest_session_cookie_is_httponly_secure_lax_and_reads_back() {
    // Arrange
    let app = app("us-guest", &[]).await;

    // Act
    let created = app.send(Method::POST, "/api/sessions/guest", None, false, None).await;
    let (pair, header) = set_cookie(&created);
    let current = app.send(Method::GET, "/api/sessions/current", None, false, Some(&pair)).await;
    let without_cookie = app.get("/api/sessions/current").await;

    // Assert
    assert_eq!(created.status, 201, "{}", created.body);
    assert!(pair.starts_with("checkout_sid="));
    for flag in ["HttpOnly", "Secure", "SameSite=Lax", "Path=/", "Max-Age=86400"] {
        assert!(header.contains(flag), "{flag} missing from {header}");
    }
    assert_eq!(created.body["kind"], "guest");
    assert_eq!(created.body["store"], "redis");
    assert!(created.body.get("id").is_none(), "the id stays in the HttpOnly cookie");
    assert_eq!(current.status, 200, "{}", current.body);
    assert_eq!(current.body["kind"], "guest");
    assert_eq!(
        (without_cookie.status, without_cookie.body["code"].as_str()),
        (401, Some("no_session"))
    );
    app.stop().await;
}

#[tokio::test]
async fn secure_flag_is_configurable_for_local_http() {
    // Arrange
    let app = app("us-insecure", &[("APP__USER_SESSIONS__COOKIE_SECURE", "false")]).await;

    // Act
    let created = app.send(Method::POST, "/api/sessions/guest", None, false, None).await;

    // Assert
    let (_, header) = set_cookie(&created);
    assert!(!header.contains("Secure"), "{header}");
    assert!(header.contains("HttpOnly"));
    app.stop().await;
}

#[tokio::test]
async fn login_rotates_the_session_id_and_the_old_one_is_invalid() {
    // Arrange: a guest session.
    let app = app("us-login", &[]).await;
    let guest = app.send(Method::POST, "/api/sessions/guest", None, false, None).await;
    let (guest_cookie, _) = set_cookie(&guest);

    // Act: the front end logs the user in, forwarding the browser's cookie.
    let login = app
        .send(
            Method::POST,
            "/api/sessions/login",
            Some(json!({"userId": "u-42"})),
            true,
            Some(&guest_cookie),
        )
        .await;
    let (user_cookie, _) = set_cookie(&login);
    let old =
        app.send(Method::GET, "/api/sessions/current", None, false, Some(&guest_cookie)).await;
    let new = app.send(Method::GET, "/api/sessions/current", None, false, Some(&user_cookie)).await;
    let without_token = app
        .send(Method::POST, "/api/sessions/login", Some(json!({"userId": "u-42"})), false, None)
        .await;
    let empty_user = app
        .send(Method::POST, "/api/sessions/login", Some(json!({"userId": " "})), true, None)
        .await;
    let logout =
        app.send(Method::POST, "/api/sessions/logout", None, false, Some(&user_cookie)).await;
    let after_logout =
        app.send(Method::GET, "/api/sessions/current", None, false, Some(&user_cookie)).await;

    // Assert
    assert_eq!(login.status, 200, "{}", login.body);
    assert_ne!(user_cookie, guest_cookie, "login issues a new id");
    assert_eq!(old.status, 401, "the pre-login id no longer works");
    assert_eq!(new.status, 200);
    assert_eq!(new.body["kind"], "user");
    assert_eq!(new.body["userId"], "u-42");
    assert_eq!(without_token.status, 401);
    assert_eq!(
        (empty_user.status, empty_user.body["code"].as_str()),
        (400, Some("invalid_user_id"))
    );
    assert_eq!(logout.status, 204);
    assert!(set_cookie(&logout).1.contains("Max-Age=0"));
    assert_eq!(after_logout.status, 401);
    app.stop().await;
}

#[tokio::test]
async fn guest_session_creation_is_limited_by_the_guest_checkout_policy() {
    // Arrange: the default guest_checkout policy, 3 per 5 minutes.
    let app = app("us-limit", &[]).await;

    // Act
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(app.send(Method::POST, "/api/sessions/guest", None, false, None).await);
    }

    // Assert
    let codes: Vec<u16> = statuses.iter().map(|r| r.status).collect();
    assert_eq!(codes, [201, 201, 201, 429]);
    assert_eq!(statuses[3].body["code"], "rate_limited");
    assert_eq!(statuses[0].headers["x-ratelimit-limit"], "3");
    app.stop().await;
}

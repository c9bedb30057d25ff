//! Tenant tokens on the real service: each tenant-scoped read (usage, detail events, bill) answers
//! 401 without a token, for an expired one or one signed by a rotated-out key (HS256 and RS256),
//! 403 for another organisation's token, 200 for the organisation's own token and for the service
//! token; the cross-tenant top list takes the service token only; keys rotate without downtime;
//! the organisation claim, `iss` and `aud` follow the configuration; a JWKS URL is fetched again
//! when a token names a `kid` it does not know.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use actix_web::{App, HttpResponse, HttpServer, web};
use common::tokens::{
    EC, NEW_SECRET, OLD_SECRET, RSA_NEW, RSA_OLD, claims, es256, hs256, jwks, jwks_file, rs256,
};
use common::{TOKEN, TestApp, event};
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};

const ROUTES: [&str; 3] = ["/api/usage/{org}", "/api/usage/{org}/events", "/api/billing/{org}"];

/// Asserts the status and that the body is the JSON error shape with `code` (when not 200).
fn expect(case: &str, route: &str, (status, body): &(u16, Value), want: u16, code: Option<&str>) {
    assert_eq!(*status, want, "{case} on {route}: {body}");
    if let Some(code) = code {
        assert_eq!(body["code"], code, "{case} on {route}: {body}");
        assert!(body["error"].is_string(), "{case} on {route}: JSON error shape, got {body}");
    }
}

#[tokio::test]
async fn each_tenant_scoped_route_answers_by_token_org_expiry_and_key() {
    // Arrange: both key kinds rotated: only the new HS256 secret and the new RSA key (plus an
    // ES256 key) are configured; the old ones signed tokens that are still within their `exp`.
    let keys = jwks_file(&[(RSA_NEW, "rsa-new", Algorithm::RS256), (EC, "ec-1", Algorithm::ES256)]);
    let app = TestApp::spawn(
        "tenant-matrix",
        &[
            ("APP__TENANT_AUTH__HS256_SECRETS", NEW_SECRET),
            ("APP__TENANT_AUTH__JWKS_FILES", keys.path().to_str().unwrap()),
        ],
    )
    .await;
    let (status, body) = app
        .post(
            "/internal/usage/events",
            json!({ "events": [event("t1", "sms_sent", 3), event("t2", "sms_sent", 5)] }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let valid = claims("t1", 600);
    let cases: Vec<(&str, Option<String>, u16, Option<&str>)> = vec![
        ("no token", None, 401, Some("unauthorized")),
        (
            "another org's token",
            Some(hs256(NEW_SECRET, &claims("t2", 600))),
            403,
            Some("forbidden"),
        ),
        ("own HS256 token", Some(hs256(NEW_SECRET, &valid)), 200, None),
        ("service token", Some(TOKEN.to_owned()), 200, None),
        (
            "expired token",
            Some(hs256(NEW_SECRET, &claims("t1", -3600))),
            401,
            Some("token_expired"),
        ),
        ("HS256 rotated-out secret", Some(hs256(OLD_SECRET, &valid)), 401, Some("invalid_token")),
        ("RS256 new key", Some(rs256(RSA_NEW, "rsa-new", &valid)), 200, None),
        (
            "RS256 rotated-out key",
            Some(rs256(RSA_OLD, "rsa-old", &valid)),
            401,
            Some("invalid_token"),
        ),
        (
            "RS256 old key under the new kid",
            Some(rs256(RSA_OLD, "rsa-new", &valid)),
            401,
            Some("invalid_token"),
        ),
        (
            "RS256 expired",
            Some(rs256(RSA_NEW, "rsa-new", &claims("t1", -3600))),
            401,
            Some("token_expired"),
        ),
        (
            "RS256 another org",
            Some(rs256(RSA_NEW, "rsa-new", &claims("t2", 600))),
            403,
            Some("forbidden"),
        ),
        ("ES256 key", Some(es256(EC, "ec-1", &valid)), 200, None),
        ("not a JWT", Some("not-a-token".to_owned()), 401, Some("invalid_token")),
        (
            "no exp claim",
            Some(hs256(NEW_SECRET, &json!({ "org_id": "t1" }))),
            401,
            Some("invalid_token"),
        ),
        (
            "no organisation claim",
            Some(hs256(NEW_SECRET, &json!({ "exp": chrono::Utc::now().timestamp() + 600 }))),
            403,
            Some("forbidden"),
        ),
    ];

    // Act
    let mut answers = Vec::new();
    for route in ROUTES {
        let path = route.replace("{org}", "t1");
        for (case, token, _, _) in &cases {
            answers.push((route, *case, app.get_as(&path, token.as_deref()).await));
        }
    }
    let (_, own_usage) = app.get_as("/api/usage/t1", Some(&hs256(NEW_SECRET, &valid))).await;

    // Assert
    let mut expected = Vec::new();
    for route in ROUTES {
        for (case, _, status, code) in &cases {
            expected.push((route, *case, *status, *code));
        }
    }
    for ((route, case, answer), (_, _, status, code)) in answers.iter().zip(&expected) {
        expect(case, route, answer, *status, *code);
    }
    assert_eq!(own_usage["usage"]["sms_sent"], 3, "the tenant reads its own usage: {own_usage}");
    app.stop().await;
}

#[tokio::test]
async fn while_rotating_tokens_of_the_old_and_the_new_keys_are_both_accepted() {
    // Arrange: the new secret signs, the old one is still listed; the JWKS has both RSA keys.
    let keys = jwks_file(&[
        (RSA_NEW, "rsa-new", Algorithm::RS256),
        (RSA_OLD, "rsa-old", Algorithm::RS256),
    ]);
    let app = TestApp::spawn(
        "tenant-rotation",
        &[
            ("APP__TENANT_AUTH__HS256_SECRETS", &format!("{NEW_SECRET},{OLD_SECRET}")),
            ("APP__TENANT_AUTH__JWKS_FILES", keys.path().to_str().unwrap()),
        ],
    )
    .await;
    let valid = claims("r1", 600);

    // Act
    let mut statuses = Vec::new();
    for token in [
        hs256(NEW_SECRET, &valid),
        hs256(OLD_SECRET, &valid),
        rs256(RSA_NEW, "rsa-new", &valid),
        rs256(RSA_OLD, "rsa-old", &valid),
    ] {
        statuses.push(app.get_as("/api/billing/r1", Some(&token)).await.0);
    }

    // Assert
    assert_eq!(statuses, [200, 200, 200, 200]);
    app.stop().await;
}

#[tokio::test]
async fn the_cross_tenant_top_list_takes_the_service_token_only() {
    // Arrange
    let app = TestApp::spawn("tenant-top", &[]).await;
    app.post("/internal/usage/events", json!({ "events": [event("big", "api_request", 9)] })).await;
    let tenant = hs256(common::tokens::DEV_SECRET, &claims("big", 600));

    // Act
    let none = app.get_as("/api/usage/top", None).await;
    let as_tenant = app.get_as("/api/usage/top", Some(&tenant)).await;
    let wrong = app.get_as("/api/usage/top", Some("not-the-service-token")).await;
    let service = app.get_as("/api/usage/top", Some(TOKEN)).await;

    // Assert
    expect("no token", "top", &none, 401, Some("unauthorized"));
    expect("tenant token", "top", &as_tenant, 403, Some("forbidden"));
    expect("bad token", "top", &wrong, 401, Some("invalid_token"));
    expect("service token", "top", &service, 200, None);
    assert_eq!(service.1["top"][0]["orgId"], "big");
    app.stop().await;
}

#[tokio::test]
async fn the_org_claim_pointer_issuer_and_audience_follow_the_configuration() {
    // Arrange: the organisation where Clerk puts it (`o.id`), issuer and audience required.
    let app = TestApp::spawn(
        "tenant-claims",
        &[
            ("APP__TENANT_AUTH__HS256_SECRETS", NEW_SECRET),
            ("APP__TENANT_AUTH__ORG_CLAIM", "/o/id"),
            ("APP__TENANT_AUTH__ISSUERS", "https://idp.test"),
            ("APP__TENANT_AUTH__AUDIENCES", "usage-meter"),
        ],
    )
    .await;
    let exp = chrono::Utc::now().timestamp() + 600;
    let token = |claims: Value| hs256(NEW_SECRET, &claims);

    // Act
    let right = app
        .get_as(
            "/api/usage/c1",
            Some(&token(json!({ "o": { "id": "c1" }, "iss": "https://idp.test", "aud": "usage-meter", "exp": exp }))),
        )
        .await;
    let top_level_claim = app
        .get_as(
            "/api/usage/c1",
            Some(&token(json!({ "org_id": "c1", "iss": "https://idp.test", "aud": "usage-meter", "exp": exp }))),
        )
        .await;
    let wrong_issuer = app
        .get_as(
            "/api/usage/c1",
            Some(&token(json!({ "o": { "id": "c1" }, "iss": "https://evil.test", "aud": "usage-meter", "exp": exp }))),
        )
        .await;
    let no_audience = app
        .get_as(
            "/api/usage/c1",
            Some(&token(json!({ "o": { "id": "c1" }, "iss": "https://idp.test", "exp": exp }))),
        )
        .await;

    // Assert
    expect("claim at /o/id", "usage", &right, 200, None);
    expect("claim elsewhere", "usage", &top_level_claim, 403, Some("forbidden"));
    expect("wrong issuer", "usage", &wrong_issuer, 401, Some("invalid_token"));
    expect("no audience", "usage", &no_audience, 401, Some("invalid_token"));
    app.stop().await;
}

/// A JWKS endpoint whose document the test swaps; counts its fetches.
struct JwksServer {
    url: String,
    document: Arc<Mutex<Value>>,
    fetches: Arc<AtomicUsize>,
    handle: actix_web::dev::ServerHandle,
}

impl JwksServer {
    async fn start(document: Value) -> Self {
        let document = Arc::new(Mutex::new(document));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (doc, count) = (document.clone(), fetches.clone());
        let server = HttpServer::new(move || {
            let (doc, count) = (doc.clone(), count.clone());
            App::new().route(
                "/.well-known/jwks.json",
                web::get().to(move || {
                    let (doc, count) = (doc.clone(), count.clone());
                    async move {
                        count.fetch_add(1, Ordering::SeqCst);
                        let body = doc.lock().unwrap().clone();
                        HttpResponse::Ok().json(body)
                    }
                }),
            )
        })
        .workers(1)
        .disable_signals()
        .bind(("127.0.0.1", 0))
        .unwrap();
        let port = server.addrs()[0].port();
        let server = server.run();
        let handle = server.handle();
        tokio::spawn(server);
        Self {
            url: format!("http://127.0.0.1:{port}/.well-known/jwks.json"),
            document,
            fetches,
            handle,
        }
    }

    fn serve(&self, document: Value) {
        *self.document.lock().unwrap() = document;
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

#[tokio::test]
async fn a_jwks_url_is_fetched_again_when_a_token_names_an_unknown_kid() {
    // Arrange: the identity provider publishes the old key only.
    let idp = JwksServer::start(jwks(&[(RSA_OLD, "rsa-old", Algorithm::RS256)])).await;
    let app = TestApp::spawn(
        "tenant-jwks-url",
        &[
            ("APP__TENANT_AUTH__JWKS_URLS", &idp.url),
            ("APP__TENANT_AUTH__JWKS_REFETCH_MIN_INTERVAL_MS", "0"),
        ],
    )
    .await;
    let valid = claims("u1", 600);
    let old_token = rs256(RSA_OLD, "rsa-old", &valid);
    let new_token = rs256(RSA_NEW, "rsa-new", &valid);

    // Act: first use fetches; the provider then rotates (new key in, old key out).
    let with_old = app.get_as("/api/usage/u1", Some(&old_token)).await;
    let again_with_old = app.get_as("/api/usage/u1", Some(&old_token)).await;
    let fetches_before_rotation = idp.fetches();
    idp.serve(jwks(&[(RSA_NEW, "rsa-new", Algorithm::RS256)]));
    let with_new = app.get_as("/api/usage/u1", Some(&new_token)).await;
    let fetches_after_new_kid = idp.fetches();
    let old_after_rotation = app.get_as("/api/usage/u1", Some(&old_token)).await;

    // Assert
    expect("old key, first fetch", "usage", &with_old, 200, None);
    expect("old key, cached", "usage", &again_with_old, 200, None);
    assert_eq!(fetches_before_rotation, 1, "a known kid is served from the cached keys");
    expect("new kid after refetch", "usage", &with_new, 200, None);
    assert_eq!(fetches_after_new_kid, 2, "the unknown kid made the service fetch again");
    expect("rotated-out kid", "usage", &old_after_rotation, 401, Some("invalid_token"));
    app.stop().await;
    idp.handle.stop(false).await;
}

#[tokio::test]
async fn unknown_kids_do_not_refetch_a_jwks_url_more_often_than_the_minimum_interval() {
    // Arrange: the default minimum interval (10 s) is far longer than the test.
    let idp = JwksServer::start(jwks(&[(RSA_NEW, "rsa-new", Algorithm::RS256)])).await;
    let app =
        TestApp::spawn("tenant-jwks-interval", &[("APP__TENANT_AUTH__JWKS_URLS", &idp.url)]).await;
    let valid = claims("u2", 600);

    // Act: a valid token, then five with made-up kids.
    let first = app.get_as("/api/usage/u2", Some(&rs256(RSA_NEW, "rsa-new", &valid))).await;
    let mut made_up = Vec::new();
    for n in 0..5 {
        let token = rs256(RSA_NEW, &format!("made-up-{n}"), &valid);
        made_up.push(app.get_as("/api/usage/u2", Some(&token)).await.0);
    }

    // Assert
    expect("known kid", "usage", &first, 200, None);
    assert_eq!(made_up, [401; 5]);
    assert_eq!(idp.fetches(), 1, "made-up kids within the interval fetch nothing");
    app.stop().await;
    idp.handle.stop(false).await;
}

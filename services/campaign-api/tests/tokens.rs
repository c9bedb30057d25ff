//! Tenant tokens minted by the admin API: `POST /api/admin/organisations/{slug}/tokens` answers a
//! short-lived token naming the organisation's id (checked here with the shared verifier and the
//! same settings; usage-meter accepting it is crates/e2e-tests/tests/tenant_tokens.rs), and
//! refuses callers without the service token, unknown organisations, and a service without a
//! signing secret.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use chrono::{DateTime, Utc};
use common::{Backends, TestApp};
use platform_service::settings::ServiceSettings;
use platform_service::tenant::TenantAuth;
use platform_testing::RedisServer;
use serde_json::Value;

#[tokio::test]
async fn an_operator_mints_a_short_lived_token_naming_the_organisation() {
    // Arrange
    let backends = Backends::new(RedisServer::shared().url(), "campaign-tokens").await;
    let app = TestApp::spawn(&backends, &[]).await;
    let org_id = app.create_org("token-church").await;
    let settings = campaign_api::Settings::from_overrides(Default::default()).unwrap();
    let verifier = TenantAuth::from_settings(&settings.common.tenant_auth).unwrap();

    // Act
    let response = app
        .admin(reqwest::Method::POST, "/api/admin/organisations/token-church/tokens", None)
        .await;
    let status = response.status().as_u16();
    let cache_control = response.headers().get("cache-control").cloned();
    let body: Value = response.json().await.unwrap();

    // Assert
    assert_eq!(status, 200, "{body}");
    assert_eq!(cache_control.unwrap(), "no-store");
    assert_eq!(body["orgId"], org_id.as_str());
    let expires_at: DateTime<Utc> = body["expiresAt"].as_str().unwrap().parse().unwrap();
    let life = expires_at - Utc::now();
    assert!(life > chrono::Duration::seconds(850) && life <= chrono::Duration::seconds(900));
    let claimed = verifier.verify(body["token"].as_str().unwrap()).await.unwrap();
    assert_eq!(claimed, [org_id]);
    app.stop().await;
}

#[tokio::test]
async fn minting_needs_the_service_token_a_known_organisation_and_a_secret() {
    // Arrange
    let backends = Backends::new(RedisServer::shared().url(), "campaign-tokens-refused").await;
    let app = TestApp::spawn(&backends, &[]).await;
    app.create_org("known-church").await;
    let no_secret = TestApp::spawn(&backends, &[("APP__TENANT_AUTH__HS256_SECRETS", "")]).await;

    // Act
    let anonymous = app
        .http
        .post(format!("{}/api/admin/organisations/known-church/tokens", app.base))
        .send()
        .await
        .unwrap();
    let unknown =
        app.admin(reqwest::Method::POST, "/api/admin/organisations/no-such/tokens", None).await;
    let disabled = no_secret
        .admin(reqwest::Method::POST, "/api/admin/organisations/known-church/tokens", None)
        .await;

    // Assert
    assert_eq!(anonymous.status(), 401);
    assert_eq!(unknown.status(), 404);
    assert_eq!(unknown.json::<Value>().await.unwrap()["code"], "organization_not_found");
    assert_eq!(disabled.status(), 404);
    assert_eq!(disabled.json::<Value>().await.unwrap()["code"], "tenant_tokens_disabled");
    app.stop().await;
    no_secret.stop().await;
}

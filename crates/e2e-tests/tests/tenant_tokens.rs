//! A tenant token minted by campaign-api's admin API is accepted by usage-meter for that
//! organisation's usage, detail events and bill, and refused (403) for another organisation's;
//! the cross-tenant top list stays closed to it. Both services run in this process with their
//! default tenant-token settings (the shared development secret), as `make run` starts them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{ADMIN_TOKEN, CampaignApi, UsageMeter};
use platform_testing::{PostgresServer, RedisServer, TestAppBuilder, unique_prefix};
use serde_json::{Value, json};

async fn app(prefix: &str) -> TestAppBuilder {
    let database = PostgresServer::shared().create_database().await.unwrap();
    common::app(&RedisServer::shared().url(), prefix, &database.url, &[])
}

async fn create_org(http: &reqwest::Client, campaign_api: &str, slug: &str) -> String {
    let org: Value = http
        .post(format!("{campaign_api}/api/admin/organisations"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({ "slug": slug, "name": slug }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    org["id"].as_str().unwrap_or_else(|| panic!("organisation not created: {org}")).to_owned()
}

#[tokio::test]
async fn a_token_minted_by_campaign_api_opens_usage_meter_for_its_organisation_only() {
    // Arrange
    let prefix = unique_prefix("e2e-tenant-tokens");
    let campaign = app(&prefix).await.spawn::<CampaignApi>().await;
    let usage = app(&prefix).await.spawn::<UsageMeter>().await;
    let http = reqwest::Client::new();
    let own = create_org(&http, &campaign.base, "tenant-church").await;
    let other = create_org(&http, &campaign.base, "other-church").await;

    // Act
    let minted: Value = http
        .post(format!("{}/api/admin/organisations/tenant-church/tokens", campaign.base))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = minted["token"].as_str().unwrap_or_else(|| panic!("no token: {minted}"));
    let mut answers = Vec::new();
    for path in [
        format!("/api/usage/{own}"),
        format!("/api/usage/{own}/events"),
        format!("/api/billing/{own}"),
        format!("/api/usage/{other}"),
        format!("/api/billing/{other}"),
        "/api/usage/top".to_owned(),
    ] {
        let response =
            http.get(format!("{}{path}", usage.base)).bearer_auth(token).send().await.unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        answers.push((path, status, body));
    }
    campaign.stop().await;
    usage.stop().await;

    // Assert
    assert_eq!(minted["orgId"], own.as_str());
    assert!(minted["expiresAt"].is_string(), "{minted}");
    let statuses: Vec<u16> = answers.iter().map(|(_, status, _)| *status).collect();
    assert_eq!(statuses, [200, 200, 200, 403, 403, 403], "{answers:?}");
    assert_eq!(answers[0].2["orgId"], own.as_str());
    assert_eq!(answers[3].2["code"], "forbidden");
}

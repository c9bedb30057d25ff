//! Organisations created and changed in campaign-api reach usage-meter through the organisation
//! stream: bills and quota checks follow the tier campaign-api holds, with no usage-meter
//! configuration, once per version, across a usage-meter restart on a flushed Redis; and every
//! campaign created is counted once as `campaign_created`, with the free tier's concurrent
//! campaign limit enforced at creation, and the count of campaigns running reaches usage-meter's
//! usage read. Both services run in this process on one private Redis.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{ADMIN_TOKEN, Stack};
use platform_redis::StreamName;
use platform_redis::fred::prelude::*;
use platform_redis::messages::{OrganisationEvent, OrganisationOverrides, OrganisationState};
use platform_redis::streams::StreamProducer;
use platform_testing::{TestApp, eventually, found_within, holds_within};
use serde_json::{Value, json};

/// The admin calls of these tests.
impl Stack {
    async fn admin(&self, method: reqwest::Method, url: String, body: Value) -> (u16, Value) {
        let response = self
            .http
            .request(method, url)
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn bill(&self, usage: &TestApp, org_id: &str) -> Value {
        let url = format!("{}/api/billing/{org_id}", usage.base);
        self.http.get(url).bearer_auth(ADMIN_TOKEN).send().await.unwrap().json().await.unwrap()
    }
}

fn campaign(name: &str) -> Value {
    let now = chrono::Utc::now();
    json!({
        "name": name, "goalCents": 100_000,
        "startsAt": (now - chrono::Duration::hours(1)).to_rfc3339(),
        "endsAt": (now + chrono::Duration::days(30)).to_rfc3339(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_meter_bills_and_limits_by_the_tier_campaign_api_holds_once_per_version() {
    // Arrange: a growth organisation with seed 000's example month.
    let stack = Stack::new("e2e-orgs").await;
    let campaign_api = stack.campaign_api().await;
    let usage = stack.usage_meter().await;
    let (status, org) = stack
        .admin(
            reqwest::Method::POST,
            format!("{}/api/admin/organisations", campaign_api.base),
            json!({"slug": "growing-church", "name": "Growing Church", "tier": "growth"}),
        )
        .await;
    assert_eq!(status, 201, "{org}");
    let org_id = org["id"].as_str().unwrap().to_owned();
    let events: Vec<Value> = [("email_sent", 6_000), ("sms_sent", 700), ("api_request", 250_000)]
        .into_iter()
        .map(|(metric, value)| json!({"orgId": org_id, "metric": metric, "value": value}))
        .collect();
    let (status, _) = stack
        .admin(
            reqwest::Method::POST,
            format!("{}/internal/usage/events", usage.base),
            json!({ "events": events }),
        )
        .await;
    assert_eq!(status, 200);

    // Act 1: nothing configured in usage-meter about this organisation.
    let growth_bill = found_within(Duration::from_secs(10), || async {
        let bill = stack.bill(&usage, &org_id).await;
        (bill["tier"] == "growth").then_some(bill)
    })
    .await
    .expect("usage-meter bills the organisation as growth");

    // Act 2: downgraded to starter in campaign-api.
    let (status, changed) = stack
        .admin(
            reqwest::Method::PATCH,
            format!("{}/api/admin/organisations/growing-church", campaign_api.base),
            json!({"tier": "starter"}),
        )
        .await;
    assert_eq!((status, changed["version"].as_i64()), (200, Some(2)), "{changed}");
    eventually("the bill follows the change", || async {
        stack.bill(&usage, &org_id).await["tier"] == "starter"
    })
    .await;
    let (_, sms_quota) = stack
        .admin(
            reqwest::Method::POST,
            format!("{}/internal/quota/check", usage.base),
            json!({"orgId": org_id, "metric": "sms_sent", "amount": 1}),
        )
        .await;

    // Act 3: an old version delivered again (a duplicate or a replay) changes nothing. Appended
    // with automatic ids, as a stray producer would; the flush of act 4 takes them away again.
    let redis = stack.redis().await;
    let stale = OrganisationEvent::OrganisationChanged(OrganisationState {
        org_id: org_id.clone(),
        slug: "growing-church".into(),
        name: "Growing Church".into(),
        tier: "growth".into(),
        version: 1,
        changed_at: org["updatedAt"].as_str().unwrap().to_owned(),
        overrides: OrganisationOverrides::default(),
    });
    StreamProducer::new(&redis, StreamName::OrganisationEvents, 1_000)
        .append_all(&[stale.clone(), stale])
        .await
        .unwrap();
    let stays_starter = holds_within(Duration::from_secs(2), || async {
        stack.bill(&usage, &org_id).await["tier"] == "starter"
    })
    .await;

    // Act 4: usage-meter restarts on a Redis that lost everything.
    usage.stop().await;
    let _: () = redis.primary().flushall(false).await.unwrap();
    let usage = stack.usage_meter().await;
    let after_restart = stack.bill(&usage, &org_id).await;
    let still_starter = holds_within(Duration::from_secs(2), || async {
        stack.bill(&usage, &org_id).await["tier"] == "starter"
    })
    .await;
    usage.stop().await;
    campaign_api.stop().await;

    // Assert
    assert_eq!(growth_bill["totalCents"], 12_400, "seed 000's growth example: {growth_bill}");
    assert_eq!(growth_bill["tierName"], "Growth");
    assert_eq!(
        (&sms_quota["tier"], &sms_quota["limit"], &sms_quota["allowed"]),
        (&json!("starter"), &json!(100), &json!(false)),
        "{sms_quota}"
    );
    assert!(stays_starter, "an old version delivered again moved the tier back");
    assert_eq!(after_restart["tier"], "starter", "{after_restart}");
    assert!(still_starter, "the refilled stream moved the tier back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_campaign_created_is_counted_once_and_a_free_organisations_third_is_refused() {
    // Arrange
    let stack = Stack::new("e2e-orgs").await;
    let campaign_api = stack.campaign_api().await;
    let usage = stack.usage_meter().await;
    let (_, org) = stack
        .admin(
            reqwest::Method::POST,
            format!("{}/api/admin/organisations", campaign_api.base),
            json!({"slug": "small-church", "name": "Small Church"}),
        )
        .await;
    let org_id = org["id"].as_str().unwrap().to_owned();
    let create = |key: Option<&'static str>, body: Value| {
        let url = format!("{}/api/admin/organisations/small-church/campaigns", campaign_api.base);
        let mut request = stack.http.post(url).bearer_auth(ADMIN_TOKEN).json(&body);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        async move {
            let response = request.send().await.unwrap();
            let replayed = response.headers().contains_key("idempotent-replayed");
            let status = response.status().as_u16();
            (status, replayed, response.json::<Value>().await.unwrap_or(Value::Null))
        }
    };

    // Act
    let roof = campaign("Roof");
    let first = create(Some("roof-2026"), roof.clone()).await;
    let retried = create(Some("roof-2026"), roof).await;
    let second = create(None, campaign("Organ")).await;
    let third = create(None, campaign("Bells")).await;
    let reused = create(Some("roof-2026"), campaign("Steeple")).await;
    // (campaign_created this month, campaigns running now) as usage-meter reads them.
    let counted = |org_id: String| {
        let url = format!("{}/api/usage/{org_id}", usage.base);
        let request = stack.http.get(url).bearer_auth(ADMIN_TOKEN);
        async move {
            let body: Value = request.send().await.unwrap().json().await.unwrap();
            (body["usage"]["campaign_created"].as_i64(), body["activeCampaigns"].as_i64())
        }
    };
    eventually("usage-meter counts the campaigns created and running", || async {
        counted(org_id.clone()).await == (Some(2), Some(2))
    })
    .await;
    let stays_two = holds_within(Duration::from_secs(1), || async {
        counted(org_id.clone()).await == (Some(2), Some(2))
    })
    .await;
    // Deleting one leaves one running.
    let first_id = first.2["id"].as_str().unwrap().to_owned();
    let deleted = stack
        .http
        .delete(format!("{}/api/admin/campaigns/{first_id}", campaign_api.base))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status().as_u16(), 204);
    eventually("usage-meter follows the deletion", || async {
        counted(org_id.clone()).await == (Some(2), Some(1))
    })
    .await;
    usage.stop().await;
    campaign_api.stop().await;

    // Assert
    assert_eq!((first.0, first.1), (201, false), "{:?}", first.2);
    assert_eq!((retried.0, retried.1), (201, true), "{:?}", retried.2);
    assert_eq!(retried.2["id"], first.2["id"], "the retry answers the first campaign");
    assert_eq!(second.0, 201, "{:?}", second.2);
    assert_eq!(
        (third.0, &third.2["code"]),
        (409, &json!("campaign_limit_reached")),
        "{:?}",
        third.2
    );
    assert_eq!((reused.0, &reused.2["code"]), (422, &json!("idempotency_key_reused")));
    assert!(stays_two, "campaign_created counted more than once");
}

//! Donations acknowledged by webhook-ingest survive Redis losing its data: everything, or the tail
//! after its last snapshot. webhook-ingest, campaign-api and usage-meter run in this process (see
//! `tests/trace.rs` for why), against one private Redis and their own databases; campaign-api is
//! "stopped" by shutting its app down and "started" by building it again on the same database.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{ADMIN_TOKEN, Stack, WEBHOOK_SECRET};
use platform_redis::fred::prelude::*;
use platform_redis::fred::types::CustomCommand;
use platform_testing::{TestApp, eventually};
use serde_json::{Value, json};
use sqlx::PgPool;

/// What these tests do to the stack.
impl Stack {
    /// Delivers `count` donations of 100 cents, each its own event and payment intent.
    async fn donate(&self, webhook: &TestApp, org_id: &str, campaign_id: &str, count: usize) {
        for _ in 0..count {
            let n = uuid::Uuid::new_v4().simple().to_string();
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
            let body = json!({
                "id": format!("evt_{n}"), "object": "event", "api_version": "2020-08-27",
                "created": now, "livemode": false, "type": "payment_intent.succeeded",
                "data": {"object": {
                    "id": format!("pi_{n}"), "object": "payment_intent", "amount": 100,
                    "amount_received": 100, "currency": "usd", "payment_method_types": ["card"],
                    "metadata": {"org_id": org_id, "campaign_id": campaign_id},
                }},
            })
            .to_string();
            let signature = webhook_ingest::domain::signature::sign_header(
                WEBHOOK_SECRET,
                now,
                body.as_bytes(),
            );
            let response = self
                .http
                .post(format!("{}/api/webhooks/stripe", webhook.base))
                .header("Stripe-Signature", signature)
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status().as_u16(), 200);
        }
    }

    /// (donations recorded, raised cents) of the campaign, from campaign-api's database.
    async fn recorded(&self, campaign_id: &str) -> (i64, i64) {
        let db = PgPool::connect(&self.campaign_db).await.unwrap();
        let totals = sqlx::query_as(
            "SELECT (SELECT count(*) FROM donations WHERE campaign_id = $1::uuid), raised_cents
             FROM campaigns WHERE id = $1::uuid",
        )
        .bind(campaign_id)
        .fetch_one(&db)
        .await
        .unwrap();
        db.close().await;
        totals
    }

    /// usage-meter's donation_processed count for the organisation this month.
    async fn counted(&self, usage: &TestApp, org_id: &str) -> Option<i64> {
        let usage: Value = self
            .http
            .get(format!("{}/api/usage/{org_id}", usage.base))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        usage["usage"]["donation_processed"].as_i64()
    }

    /// Waits until the relay stored campaign-api's group checkpoint (it refills from there).
    async fn checkpointed(&self, group: &str) {
        let db = PgPool::connect(&self.webhook_db).await.unwrap();
        eventually(&format!("the relay checkpointed {group}"), || async {
            sqlx::query_scalar::<_, i64>(
                "SELECT seq FROM stream_group_checkpoints WHERE group_name = $1",
            )
            .bind(group)
            .fetch_optional(&db)
            .await
            .unwrap()
            .is_some()
        })
        .await;
        db.close().await;
    }

    async fn redis_command(&self, command: &'static str) {
        let _: platform_redis::fred::types::Value = self
            .redis()
            .await
            .primary()
            .custom(CustomCommand::new_static(command, None, false), Vec::<String>::new())
            .await
            .unwrap();
    }
}

async fn create_campaign(stack: &Stack, campaign_api: &TestApp) -> (String, String) {
    let org: Value = stack
        .http
        .post(format!("{}/api/admin/organisations", campaign_api.base))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"slug": "durable-church", "name": "Durable Church"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let now = chrono::Utc::now();
    let campaign: Value = stack
        .http
        .post(format!("{}/api/admin/organisations/durable-church/campaigns", campaign_api.base))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({
            "name": "Organ", "description": "", "goalCents": 1_000_000,
            "startsAt": (now - chrono::Duration::hours(1)).to_rfc3339(),
            "endsAt": (now + chrono::Duration::days(7)).to_rfc3339(),
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    (org["id"].as_str().unwrap().to_owned(), campaign["id"].as_str().unwrap().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn donations_acknowledged_while_campaign_api_was_down_survive_redis_losing_everything() {
    // Arrange: the stack runs, campaign-api's group is checkpointed, then campaign-api stops.
    let stack = Stack::new("e2e-durable").await;
    let webhook = stack.webhook_ingest().await;
    let usage = stack.usage_meter().await;
    let campaign_api = stack.campaign_api().await;
    let (org_id, campaign_id) = create_campaign(&stack, &campaign_api).await;
    stack.checkpointed("campaign-api").await;
    campaign_api.stop().await;

    // Act: 30 donations answered 200, Redis loses everything, campaign-api starts again.
    stack.donate(&webhook, &org_id, &campaign_id, 30).await;
    stack.redis_command("FLUSHALL").await;
    let campaign_api = stack.campaign_api().await;

    // Assert: all 30 recorded exactly once with their usage events, without an operator.
    eventually("campaign-api recorded the 30 donations", || async {
        stack.recorded(&campaign_id).await == (30, 3_000)
    })
    .await;
    eventually("usage-meter counted 30 donations", || async {
        stack.counted(&usage, &org_id).await == Some(30)
    })
    .await;
    stack.donate(&webhook, &org_id, &campaign_id, 1).await;
    eventually("a new donation flows end to end", || async {
        stack.recorded(&campaign_id).await == (31, 3_100)
            && stack.counted(&usage, &org_id).await == Some(31)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(stack.recorded(&campaign_id).await, (31, 3_100), "nothing applied twice");
    assert_eq!(stack.counted(&usage, &org_id).await, Some(31), "nothing counted twice");

    campaign_api.stop().await;
    usage.stop().await;
    webhook.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn donations_after_redis_last_snapshot_survive_a_restart_from_that_snapshot() {
    // Arrange: ten donations processed and counted, a snapshot, then campaign-api stops and ten
    // more are acknowledged (on the stream, not in the snapshot).
    let stack = Stack::new("e2e-durable").await;
    let webhook = stack.webhook_ingest().await;
    let usage = stack.usage_meter().await;
    let campaign_api = stack.campaign_api().await;
    let (org_id, campaign_id) = create_campaign(&stack, &campaign_api).await;
    stack.donate(&webhook, &org_id, &campaign_id, 10).await;
    eventually("the first ten are recorded and counted", || async {
        stack.recorded(&campaign_id).await == (10, 1_000)
            && stack.counted(&usage, &org_id).await == Some(10)
    })
    .await;
    stack.checkpointed("campaign-api").await;
    stack.redis_command("SAVE").await;
    campaign_api.stop().await;
    stack.donate(&webhook, &org_id, &campaign_id, 10).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Act: Redis crashes and comes back from the older snapshot; campaign-api starts again.
    stack.redis.restart().unwrap();
    let campaign_api = stack.campaign_api().await;

    // Assert
    eventually("all twenty donations are recorded", || async {
        stack.recorded(&campaign_id).await == (20, 2_000)
    })
    .await;
    eventually("usage-meter counted twenty donations", || async {
        stack.counted(&usage, &org_id).await == Some(20)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(stack.recorded(&campaign_id).await, (20, 2_000), "nothing applied twice");
    assert_eq!(stack.counted(&usage, &org_id).await, Some(20), "nothing counted twice");

    campaign_api.stop().await;
    usage.stop().await;
    webhook.stop().await;
}

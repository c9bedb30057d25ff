//! Donations from the Stripe event stream: recorded once, live updates over SSE, usage events;
//! once against a real Redis Cluster.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Backends, TestApp, donation_event, read_sse, usage_events};
use platform_redis::fred::prelude::*;
use platform_redis::fred::types::{ClusterHash, CustomCommand, Value as RedisValue};
use platform_testing::{RedisCluster, RedisServer, holds_within, put_on_stripe_stream};
use serde_json::Value;

fn count(text: &str, needle: &str) -> usize {
    text.matches(needle).count()
}

#[tokio::test]
async fn a_payment_intent_put_on_the_stream_twice_is_one_donation_one_update_one_usage_event() {
    // Arrange
    let backends = Backends::new(RedisServer::shared().url(), "campaign-dup").await;
    let app = TestApp::spawn(&backends, &[]).await;
    let redis = backends.redis().await;
    let org = app.create_org("grace").await;
    let campaign = app.create_campaign("grace", "Roof", 100_000).await;
    let mut sse = app.get(&format!("/api/campaigns/{campaign}/events")).await;
    assert_eq!(sse.status(), 200);
    assert_eq!(sse.headers()["content-type"], "text/event-stream");
    let stats_before: Value =
        app.get(&format!("/api/campaigns/{campaign}/stats")).await.json().await.unwrap();
    assert_eq!(stats_before["raisedCents"], 0);

    // Act: the same payment intent twice (Stripe retry under a new event id, and a replay of
    // the same event), then a different donation as a marker that the first ones were handled.
    put_on_stripe_stream(
        &redis,
        &[
            donation_event("evt_a", "pi_dup", &org, &campaign, 2_000),
            donation_event("evt_b", "pi_dup", &org, &campaign, 2_000),
            donation_event("evt_a", "pi_dup", &org, &campaign, 2_000),
            donation_event("evt_c", "pi_marker", &org, &campaign, 500),
        ],
    )
    .await;
    let text = read_sse(&mut sse, 200, |text| text.contains("\"amountCents\":500")).await;

    // Assert: exactly one new_donation for pi_dup, then the marker's.
    assert_eq!(count(&text, "event: new_donation"), 2, "{text}");
    assert_eq!(count(&text, "\"amountCents\":2000"), 1, "{text}");
    assert!(text.contains("\"raisedCents\":2000"), "{text}");
    assert!(text.contains("\"raisedCents\":2500"), "{text}");
    assert!(!text.contains("goal_reached"), "{text}");
    let stats: Value =
        app.get(&format!("/api/campaigns/{campaign}/stats")).await.json().await.unwrap();
    assert_eq!(stats["raisedCents"], 2_500, "{stats}");
    assert_eq!(stats["donationCount"], 2);
    let list: Value = app.get("/api/public/campaigns/grace/active").await.json().await.unwrap();
    assert_eq!(list[0]["raisedCents"], 2_500);
    let donations = usage_events(&redis)
        .await
        .into_iter()
        .filter(|e| e["metric"] == "donation_processed")
        .collect::<Vec<_>>();
    assert_eq!(donations.len(), 2, "{donations:?}");
    let dup = donations.iter().find(|e| e["idempotencyKey"] == "donation:pi_dup").unwrap();
    assert_eq!(dup["orgId"], org.as_str());
    assert_eq!(dup["value"], 2_000);
    assert_eq!(dup["metadata"]["campaignId"], campaign.as_str());
    app.stop().await;
}

#[tokio::test]
async fn in_redis_cluster_mode_a_donation_from_the_stream_is_recorded_once_with_its_effects() {
    // Arrange: the consumer's once-only effects (marker, usage append) commit with its XACK, so
    // they must share the Stripe stream's slot.
    let backends = Backends::new(RedisCluster::shared().url(), "campaign-cluster").await;
    let app = TestApp::spawn(&backends, &[("APP__REDIS__MODE", "cluster")]).await;
    let redis = backends.redis().await;
    let org = app.create_org("ada").await;
    let campaign = app.create_campaign("ada", "Well", 100_000).await;
    let mut sse = app.get(&format!("/api/campaigns/{campaign}/events")).await;
    assert_eq!(sse.status(), 200);

    // Act: one payment intent twice, then a marker donation.
    put_on_stripe_stream(
        &redis,
        &[
            donation_event("evt_1", "pi_once", &org, &campaign, 1_500),
            donation_event("evt_2", "pi_once", &org, &campaign, 1_500),
            donation_event("evt_3", "pi_marker", &org, &campaign, 500),
        ],
    )
    .await;
    let text = read_sse(&mut sse, 200, |text| text.contains("\"amountCents\":500")).await;

    // Assert
    assert_eq!(count(&text, "event: new_donation"), 2, "{text}");
    assert_eq!(count(&text, "\"amountCents\":1500"), 1, "{text}");
    let stats: Value =
        app.get(&format!("/api/campaigns/{campaign}/stats")).await.json().await.unwrap();
    assert_eq!(
        (stats["raisedCents"].as_i64(), stats["donationCount"].as_i64()),
        (Some(2_000), Some(2))
    );
    let list: Value = app.get("/api/public/campaigns/ada/active").await.json().await.unwrap();
    assert_eq!(list[0]["raisedCents"], 2_000);
    let donations = usage_events(&redis)
        .await
        .into_iter()
        .filter(|e| e["metric"] == "donation_processed")
        .count();
    assert_eq!(donations, 2);
    app.stop().await;
}

#[tokio::test]
async fn a_redelivery_after_a_crash_between_commit_and_ack_still_applies_the_effects_once() {
    // Arrange: the donation is already in Postgres (as if the consumer died before EXEC).
    let backends = Backends::new(RedisServer::shared().url(), "campaign-crash").await;
    let app = TestApp::spawn(&backends, &[]).await;
    let redis = backends.redis().await;
    let org = app.create_org("peace").await;
    let campaign = app.create_campaign("peace", "Bell", 100_000).await;
    let pool = sqlx::PgPool::connect(&backends.database_url).await.unwrap();
    sqlx::query(
        "INSERT INTO donations (payment_intent_id, campaign_id, amount_cents, currency, \
         raised_after_cents, count_after, goal_crossed, stripe_event_id) \
         VALUES ('pi_crash', $1::uuid, 700, 'usd', 700, 1, false, 'evt_x')",
    )
    .bind(&campaign)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("UPDATE campaigns SET raised_cents = 700, donation_count = 1 WHERE id = $1::uuid")
        .bind(&campaign)
        .execute(&pool)
        .await
        .unwrap();
    let mut sse = app.get(&format!("/api/campaigns/{campaign}/events")).await;

    // Act: the entry is delivered (again), twice.
    put_on_stripe_stream(
        &redis,
        &[
            donation_event("evt_x", "pi_crash", &org, &campaign, 700),
            donation_event("evt_x", "pi_crash", &org, &campaign, 700),
            donation_event("evt_y", "pi_after", &org, &campaign, 300),
        ],
    )
    .await;
    let text = read_sse(&mut sse, 200, |text| text.contains("\"amountCents\":300")).await;

    // Assert: the owed update went out once; totals were not moved again.
    assert_eq!(count(&text, "\"amountCents\":700"), 1, "{text}");
    let stats: Value =
        app.get(&format!("/api/campaigns/{campaign}/stats")).await.json().await.unwrap();
    assert_eq!(stats["raisedCents"], 1_000);
    assert_eq!(stats["donationCount"], 2);
    let usage = usage_events(&redis).await;
    assert_eq!(usage.iter().filter(|e| e["idempotencyKey"] == "donation:pi_crash").count(), 1);
    app.stop().await;
}

#[tokio::test]
async fn crossing_the_goal_publishes_goal_reached_once() {
    // Arrange
    let backends = Backends::new(RedisServer::shared().url(), "campaign-goal").await;
    let app = TestApp::spawn(&backends, &[]).await;
    let redis = backends.redis().await;
    let org = app.create_org("joy").await;
    let campaign = app.create_campaign("joy", "Van", 1_000).await;
    let mut sse = app.get(&format!("/api/campaigns/{campaign}/events")).await;

    // Act: 600 + 600 crosses 1000; 600 more (and a duplicate) stays above it.
    put_on_stripe_stream(
        &redis,
        &[
            donation_event("evt_1", "pi_1", &org, &campaign, 600),
            donation_event("evt_2", "pi_2", &org, &campaign, 600),
            donation_event("evt_2b", "pi_2", &org, &campaign, 600),
            donation_event("evt_3", "pi_3", &org, &campaign, 600),
        ],
    )
    .await;
    let text = read_sse(&mut sse, 200, |text| text.contains("\"raisedCents\":1800")).await;

    // Assert
    assert_eq!(count(&text, "event: new_donation"), 3, "{text}");
    assert_eq!(count(&text, "event: goal_reached"), 1, "{text}");
    assert!(text.contains("event: goal_reached\ndata: {\"type\":\"goal_reached\""), "{text}");
    let stats: Value =
        app.get(&format!("/api/campaigns/{campaign}/stats")).await.json().await.unwrap();
    assert_eq!(stats["goalReached"], true);
    assert_eq!(stats["raisedCents"], 1_800);
    app.stop().await;
}

#[tokio::test]
async fn sse_sends_keep_alives_and_a_client_that_disconnects_frees_its_subscription() {
    // Arrange
    let backends = Backends::new(RedisServer::shared().url(), "campaign-sse").await;
    let app = TestApp::spawn(&backends, &[]).await;
    let redis = backends.redis().await;
    app.create_org("hope").await;
    let campaign = app.create_campaign("hope", "Piano", 1_000).await;
    let channel = redis.keys().campaign_updates_channel(&campaign);
    let subscribers = || async {
        let numsub = CustomCommand::new_static("PUBSUB", ClusterHash::Random, false);
        let reply: Vec<RedisValue> = redis
            .primary()
            .next()
            .custom(numsub, vec!["NUMSUB".to_owned(), channel.clone()])
            .await
            .unwrap();
        reply.get(1).and_then(|n| n.as_i64()).unwrap_or(0)
    };

    // Act
    let mut sse = app.get(&format!("/api/campaigns/{campaign}/events")).await;
    let text = read_sse(&mut sse, 10, |text| text.contains(": keep-alive")).await;
    let subscribed = subscribers().await;
    drop(sse);

    // Assert
    assert!(text.contains(": keep-alive"), "{text}");
    assert_eq!(subscribed, 1);
    let freed = holds_within(Duration::from_secs(10), || async { subscribers().await == 0 }).await;
    assert!(freed, "the channel is still subscribed after the client left");
    let unknown = app.get(&format!("/api/campaigns/{}/events", uuid::Uuid::new_v4())).await;
    assert_eq!(unknown.status(), 404);
    app.stop().await;
}

#[tokio::test]
async fn an_sse_stream_ends_after_its_maximum_duration_and_frees_its_place() {
    // Arrange
    let backends = Backends::new(RedisServer::shared().url(), "campaign-sse-max").await;
    let app = TestApp::spawn(&backends, &[("APP__LIVE__MAX_STREAM_SECS", "1")]).await;
    app.create_org("bell").await;
    let campaign = app.create_campaign("bell", "Tower", 1_000).await;

    // Act: the whole body arrives, as it only can once the server ends the stream.
    let started = std::time::Instant::now();
    let sse = app.get(&format!("/api/campaigns/{campaign}/events")).await;
    let body = tokio::time::timeout(Duration::from_secs(10), sse.text()).await;

    // Assert
    let body = body.expect("the stream did not end").unwrap();
    assert!(body.starts_with("retry: 3000\n: connected"), "{body}");
    assert!(started.elapsed() >= Duration::from_secs(1), "ended before its time");
    let freed = holds_within(Duration::from_secs(5), || async {
        let metrics = app.get("/metrics").await.text().await.unwrap();
        metrics.lines().any(|line| line.starts_with("campaign_sse_clients") && line.ends_with(" 0"))
    })
    .await;
    assert!(freed, "the client is still counted");
    app.stop().await;
}

#[tokio::test]
async fn public_reads_are_counted_as_api_request_usage_events_in_batches() {
    // Arrange
    let backends = Backends::new(RedisServer::shared().url(), "campaign-usage").await;
    let app = TestApp::spawn(&backends, &[]).await;
    let redis = backends.redis().await;
    let org = app.create_org("light").await;

    // Act
    for _ in 0..25 {
        assert_eq!(app.get("/api/public/campaigns/light/active").await.status(), 200);
    }
    app.get("/api/public/campaigns/unknown-org/active").await;

    // Assert: 25 requests for the org arrive on the usage stream, in fewer events than requests.
    let counted = holds_within(Duration::from_secs(10), || async {
        let events = usage_events(&redis).await;
        let total: i64 = events
            .iter()
            .filter(|e| e["metric"] == "api_request" && e["orgId"] == org.as_str())
            .map(|e| e["value"].as_i64().unwrap())
            .sum();
        total == 25
    })
    .await;
    assert!(counted);
    let events = usage_events(&redis).await;
    assert!(events.iter().filter(|e| e["metric"] == "api_request").count() < 25);
    assert!(events.iter().all(|e| e["orgId"] == org.as_str()));
    app.stop().await;
}

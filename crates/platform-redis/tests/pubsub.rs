//! Typed pub/sub against a real Redis: round trip, shared subscriptions, unsubscribe on last drop,
//! bad messages skipped, and subscriptions that survive a Redis restart.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use platform_redis::fred::prelude::*;
use platform_redis::messages::{CampaignUpdate, Envelope, MESSAGE_VERSION};
use platform_redis::pubsub::{self, PubSub, Subscription};
use platform_redis::{RedisClients, RedisSettings};
use platform_testing::{RedisServer, eventually, unique_prefix};

/// Generous bound for things that happen "soon" on a noisy machine; never a timing assertion.
const PATIENCE: Duration = Duration::from_secs(20);

async fn connect(server: &RedisServer, prefix: &str) -> RedisClients {
    RedisClients::connect(&RedisSettings::for_url(&server.url(), prefix)).await.unwrap()
}

fn donation(raised_cents: i64) -> CampaignUpdate {
    CampaignUpdate::NewDonation {
        campaign_id: "7".into(),
        amount_cents: 500,
        raised_cents,
        donation_count: 3,
    }
}

async fn next<T: serde::de::DeserializeOwned>(subscription: &mut Subscription<T>) -> Envelope<T> {
    tokio::time::timeout(PATIENCE, subscription.recv())
        .await
        .expect("a message within the patience bound")
        .expect("the subscription is open")
}

async fn redis_subscribers(clients: &RedisClients, channel: &str) -> i64 {
    let (_, count): (String, i64) = clients.primary().next().pubsub_numsub(channel).await.unwrap();
    count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_messages_arrive_typed_in_an_envelope() {
    // Arrange
    let clients = connect(RedisServer::shared(), &unique_prefix("pubsub-round-trip")).await;
    let pubsub = PubSub::start(&clients).await.unwrap();
    let channel = clients.keys().campaign_updates_channel("7");
    let mut subscription = pubsub.subscribe::<CampaignUpdate>(&channel).await.unwrap();

    // Act
    let receivers = pubsub::publish(&clients.primary(), &channel, &donation(1_500)).await.unwrap();
    let received = next(&mut subscription).await;

    // Assert
    assert_eq!(receivers, 1);
    assert_eq!(received.v, MESSAGE_VERSION);
    assert_eq!(received.body, donation(1_500));
    pubsub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_local_subscribers_share_one_redis_subscription_which_ends_with_the_last_drop() {
    // Arrange
    let clients = connect(RedisServer::shared(), &unique_prefix("pubsub-shared")).await;
    let pubsub = PubSub::start(&clients).await.unwrap();
    let channel = clients.keys().campaign_updates_channel("8");
    let mut first = pubsub.subscribe::<CampaignUpdate>(&channel).await.unwrap();
    let mut second = pubsub.subscribe::<CampaignUpdate>(&channel).await.unwrap();

    // Act
    let receivers = pubsub::publish(&clients.primary(), &channel, &donation(2_000)).await.unwrap();

    // Assert: one Redis subscriber, both local subscriptions got the message
    assert_eq!(receivers, 1);
    assert_eq!(redis_subscribers(&clients, &channel).await, 1);
    assert_eq!(next(&mut first).await.body, donation(2_000));
    assert_eq!(next(&mut second).await.body, donation(2_000));

    // Act: dropping one keeps the Redis subscription, dropping both ends it
    drop(first);
    assert_eq!(pubsub.subscribed_channels(), vec![channel.clone()]);
    drop(second);

    // Assert
    assert!(pubsub.subscribed_channels().is_empty());
    eventually("redis sees no subscriber", || async {
        redis_subscribers(&clients, &channel).await == 0
    })
    .await;
    pubsub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_and_unknown_version_messages_are_skipped() {
    // Arrange
    let clients = connect(RedisServer::shared(), &unique_prefix("pubsub-bad")).await;
    let pubsub = PubSub::start(&clients).await.unwrap();
    let channel = clients.keys().campaign_updates_channel("9");
    let mut subscription = pubsub.subscribe::<CampaignUpdate>(&channel).await.unwrap();
    let raw = clients.primary().next().clone();

    // Act
    let _: i64 = raw.publish(&channel, "not json").await.unwrap();
    let _: i64 =
        raw.publish(&channel, r#"{"v":99,"body":{"type":"from_the_future"}}"#).await.unwrap();
    let _: i64 = raw.publish(&channel, r#"{"v":1,"body":{"type":"unknown_kind"}}"#).await.unwrap();
    pubsub::publish(&clients.primary(), &channel, &donation(3_000)).await.unwrap();

    // Assert: the first message that comes out is the good one
    assert_eq!(next(&mut subscription).await.body, donation(3_000));
    pubsub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_are_restored_after_redis_restarts() {
    // Arrange
    let server = RedisServer::start().unwrap();
    let clients = connect(&server, &unique_prefix("pubsub-restart")).await;
    let pubsub = PubSub::start(&clients).await.unwrap();
    let channel = clients.keys().campaign_updates_channel("10");
    let mut subscription = pubsub.subscribe::<CampaignUpdate>(&channel).await.unwrap();
    pubsub::publish(&clients.primary(), &channel, &donation(1)).await.unwrap();
    assert_eq!(next(&mut subscription).await.body, donation(1));

    // Act: Redis dies and comes back empty (no subscriptions on the server)
    server.stop();
    server.restart().unwrap();
    eventually("the channel is subscribed again", || async {
        let count: Result<(String, i64), _> =
            clients.primary().next().pubsub_numsub(&channel).await;
        matches!(count, Ok((_, 1)))
    })
    .await;
    pubsub::publish(&clients.primary(), &channel, &donation(2)).await.unwrap();

    // Assert
    assert_eq!(next(&mut subscription).await.body, donation(2));
    pubsub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_starts_while_redis_is_down_and_subscribes_when_it_comes_up() {
    // Arrange: Redis is down before anything connects
    let server = RedisServer::start().unwrap();
    server.stop();
    let clients = connect(&server, &unique_prefix("pubsub-late")).await;
    let pubsub = PubSub::start(&clients).await.unwrap();
    let channel = clients.keys().campaign_updates_channel("11");
    let mut subscription = pubsub.subscribe::<CampaignUpdate>(&channel).await.unwrap();

    // Act
    server.restart().unwrap();
    eventually("the channel is subscribed", || async {
        let count: Result<(String, i64), _> =
            clients.primary().next().pubsub_numsub(&channel).await;
        matches!(count, Ok((_, 1)))
    })
    .await;
    pubsub::publish(&clients.primary(), &channel, &donation(5)).await.unwrap();

    // Assert
    assert_eq!(next(&mut subscription).await.body, donation(5));
    pubsub.stop().await;
    assert!(subscription.recv().await.is_none());
}

//! Every multi-key operation of the shared crate against a real three-master Redis Cluster: a
//! centralized Redis accepts keys in any slot, only a cluster answers `CROSSSLOT`, so these tests
//! are what proves the hash tags of `keys.rs`. One cluster for the whole binary, few tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use platform_redis::cache::{Cache, CacheSettings, CacheStatus, Tier};
use platform_redis::fred::clients::Transaction;
use platform_redis::fred::prelude::*;
use platform_redis::fred::types::{ClusterHash, CustomCommand};
use platform_redis::keys::STREAMS_HASH_TAG;
use platform_redis::lock::{Lock, current_fence};
use platform_redis::messages::{CampaignUpdate, UsageEvent};
use platform_redis::once::OnceEffects;
use platform_redis::pubsub::{self, PubSub};
use platform_redis::ratelimit::{DecisionSource, PolicySettings, RateLimitSettings, RateLimiter};
use platform_redis::streams::{
    ConsumerSettings, HandlerError, Outcome, StartFrom, StreamConsumer, StreamEntry, StreamHandler,
    StreamProducer,
};
use platform_redis::usage::{UsageRecorder, UsageRecorderSettings};
use platform_redis::{RedisClients, RedisMode, RedisSettings, StreamName};
use platform_testing::{RedisCluster, eventually, unique_prefix};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// Generous bound for things that happen "soon" on a noisy machine; never a timing assertion.
const PATIENCE: Duration = Duration::from_secs(60);

async fn clients(test: &str) -> RedisClients {
    let cluster = RedisCluster::shared();
    let settings = RedisSettings {
        mode: RedisMode::Cluster,
        ..RedisSettings::for_url(&cluster.url(), &unique_prefix(test))
    };
    RedisClients::connect(&settings).await.expect("connect to the cluster")
}

async fn stream_len(clients: &RedisClients, key: &str) -> u64 {
    clients.primary().xlen(key).await.unwrap()
}

#[tokio::test]
async fn the_cluster_refuses_a_script_whose_keys_are_in_different_slots() {
    // Arrange: two untagged keys in different slots (the fixture is a real cluster).
    let clients = clients("cluster-crossslot").await;
    let root = clients.keys().root().to_owned();
    let (a, b) = (format!("{root}:a"), format!("{root}:b"));
    assert_ne!(
        platform_redis::fred::util::redis_keyslot(a.as_bytes()),
        platform_redis::fred::util::redis_keyslot(b.as_bytes())
    );

    // Act
    let eval = CustomCommand::new_static("EVAL", ClusterHash::Offset(2), false);
    let answer: Result<Value, _> = clients
        .primary()
        .custom(eval, vec!["return redis.call('MGET', KEYS[1], KEYS[2])", "2", &a, &b])
        .await;

    // Assert
    let error = answer.expect_err("a cross-slot script must fail in a cluster");
    assert!(error.details().contains("CROSSSLOT"), "unexpected error: {error:?}");
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Page {
    names: Vec<String>,
}

#[tokio::test]
async fn cache_entries_are_written_read_and_invalidated_by_key_and_by_group() {
    // Arrange: no L1, so every hit is a Redis read.
    let clients = clients("cluster-cache").await;
    let cache =
        Cache::new(&clients, CacheSettings { l1_max_entries: 0, ..CacheSettings::default() });
    let runs = Arc::new(AtomicUsize::new(0));
    let read = |key: &'static str| {
        let runs = Arc::clone(&runs);
        cache.get_or_compute("org:1", key, Duration::from_secs(60), move || async move {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok::<_, std::convert::Infallible>(Page { names: vec![key.to_owned()] })
        })
    };

    // Act
    let first = read("active").await.unwrap();
    let second = read("active").await.unwrap();
    let _ = read("stats").await.unwrap();
    cache.invalidate("org:1", "active").await.unwrap();
    let after_key = read("active").await.unwrap();
    let deleted = cache.invalidate_group("org:1").await.unwrap();
    let stored: Option<String> =
        clients.primary().get(clients.keys().cache_entry("org:1", "stats")).await.unwrap();

    // Assert
    assert_eq!(first.status, CacheStatus::Miss);
    assert_eq!((second.status, second.tier), (CacheStatus::Hit, Tier::L2));
    assert_eq!(after_key.status, CacheStatus::Miss);
    assert_eq!(deleted, 2);
    assert_eq!(stored, None);
    assert_eq!(runs.load(Ordering::SeqCst), 3);
    assert_eq!(cache.stats().errors, 0, "no Redis command of the cache failed");
}

#[tokio::test]
async fn the_rate_limiter_decides_in_redis_and_denies_past_the_limit() {
    // Arrange
    let clients = clients("cluster-ratelimit").await;
    let settings = RateLimitSettings {
        policies: [("api".to_owned(), PolicySettings::new(3, 60_000))].into_iter().collect(),
        ..RateLimitSettings::default()
    };
    let limiter = RateLimiter::new(&clients, &settings).unwrap();

    // Act
    let mut decisions = Vec::new();
    for _ in 0..4 {
        decisions.push(limiter.check("api", "203.0.113.9").await.unwrap());
    }

    // Assert
    assert!(decisions[..3].iter().all(|d| d.allowed && d.source == DecisionSource::Redis));
    assert!(!decisions[3].allowed);
    assert_ne!(decisions[3].source, DecisionSource::Fallback, "Redis answered every check");
}

#[tokio::test]
async fn a_lock_is_acquired_renewed_and_released_with_increasing_fences() {
    // Arrange
    let clients = clients("cluster-lock").await;
    let ttl = Duration::from_secs(10);

    // Act
    let first = Lock::acquire(&clients, "job", ttl).await.unwrap().unwrap();
    let blocked = Lock::acquire(&clients, "job", ttl).await.unwrap();
    let renewed = first.renew(ttl).await.unwrap();
    let first_current = first.is_fence_current().await.unwrap();
    let released = first.release().await.unwrap();
    let second = Lock::acquire(&clients, "job", ttl).await.unwrap().unwrap();

    // Assert
    assert!(blocked.is_none());
    assert!(renewed);
    assert!(first_current);
    assert!(released);
    assert_eq!(second.fence(), 2);
    assert_eq!(current_fence(&clients, "job").await.unwrap(), 2);
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Credit {
    amount: i64,
}

/// Like a service's handler: per acked entry, a counter in the stream slot and once-only effects
/// (publish + append to the other stream) keyed on the amount, all queued on the worker's
/// transaction with the `XACK`. Amount 13 is refused (dead-lettered by the handler).
struct CreditHandler {
    clients: RedisClients,
    counter: String,
}

impl StreamHandler for CreditHandler {
    type Body = Credit;

    async fn handle(
        &self,
        batch: &[StreamEntry<Credit>],
        tx: &Transaction,
    ) -> Result<Vec<Outcome>, HandlerError> {
        let keys = self.clients.keys();
        let mut outcomes = Vec::with_capacity(batch.len());
        for entry in batch {
            let amount = entry.body.amount;
            if amount == 13 {
                outcomes.push(Outcome::DeadLetter("unlucky amount".into()));
                continue;
            }
            let () = tx.incr_by(&self.counter, amount).await?;
            let mut effects = OnceEffects::new(
                keys.effects_marker("credit", &amount.to_string()),
                Duration::from_secs(600),
            );
            effects.publish(
                keys.campaign_updates_channel("c1"),
                &CampaignUpdate::CampaignEnded { campaign_id: amount.to_string() },
            )?;
            effects.append(keys.stream(StreamName::UsageEvents), 1_000, &entry.body)?;
            effects.queue(tx).await?;
            outcomes.push(Outcome::Ack);
        }
        Ok(outcomes)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_group_commits_effects_with_acks_dead_letters_and_reclaims_in_a_cluster() {
    // Arrange: 1..=5 read by a consumer that dies holding them, then 6..=10, a duplicate of 5,
    // an amount the handler refuses and an undecodable entry.
    let clients = clients("cluster-streams").await;
    let keys = clients.keys().clone();
    let pubsub = PubSub::start(&clients).await.unwrap();
    let mut updates =
        pubsub.subscribe::<CampaignUpdate>(&keys.campaign_updates_channel("c1")).await.unwrap();
    let stop = CancellationToken::new();
    let settings = ConsumerSettings {
        consumer: "survivor".into(),
        batch_size: 4,
        block: Duration::from_millis(100),
        claim_idle: Duration::from_millis(300),
        start_from: StartFrom::Beginning,
        ..ConsumerSettings::new(StreamName::StripeEvents, "credits")
    };
    let consumer = StreamConsumer::new(&clients, settings, stop.clone());
    consumer.ensure_group().await.unwrap();
    let producer = StreamProducer::new(&clients, StreamName::StripeEvents, 1_000);
    let first: Vec<Credit> = (1..=5).map(|amount| Credit { amount }).collect();
    producer.append_all(&first).await.unwrap();
    let _: Value = clients
        .primary()
        .xreadgroup("credits", "dead-one", Some(5), None, false, consumer.stream_key(), ">")
        .await
        .unwrap();
    for amount in [6, 7, 8, 9, 10, 5, 13] {
        producer.append(&Credit { amount }).await.unwrap();
    }
    let _: String = clients
        .primary()
        .xadd(consumer.stream_key(), false, None, "*", vec![("v", "1"), ("data", "{not json")])
        .await
        .unwrap();
    let counter = format!("{}:test:{{{STREAMS_HASH_TAG}}}:counter", keys.root());
    let handler = CreditHandler { clients: clients.clone(), counter: counter.clone() };

    // Act
    let running = {
        let consumer = consumer.clone();
        tokio::spawn(async move { consumer.run(&handler).await })
    };
    eventually("every entry is acked or dead-lettered", || async {
        let stats = consumer.stats();
        stats.processed == 11 && stats.dead_lettered == 2
    })
    .await;
    let mut received = 0;
    while received < 10 {
        tokio::time::timeout(PATIENCE, updates.recv()).await.unwrap().unwrap();
        received += 1;
    }
    stop.cancel();
    running.await.unwrap().unwrap();

    // Assert
    let total: i64 = clients.primary().get(&counter).await.unwrap();
    assert_eq!(total, 55 + 5, "every acked entry's effect once, the duplicate included");
    assert_eq!(
        stream_len(&clients, &keys.stream(StreamName::UsageEvents)).await,
        10,
        "once-only effects applied once per amount"
    );
    assert_eq!(stream_len(&clients, consumer.dead_letter_key()).await, 2);
    let pending: Value =
        clients.primary().xpending(consumer.stream_key(), "credits", ()).await.unwrap();
    assert_eq!(pending.into_array().first().and_then(Value::as_u64), Some(0));
    assert!(consumer.stats().reclaimed >= 5, "the dead consumer's entries were reclaimed");
    pubsub.stop().await;
}

#[tokio::test]
async fn once_effects_applied_directly_apply_once() {
    // Arrange
    let clients = clients("cluster-once").await;
    let keys = clients.keys().clone();
    let usage = keys.stream(StreamName::UsageEvents);
    let mut effects =
        OnceEffects::new(keys.effects_marker("donation", "pi_1"), Duration::from_secs(60));
    effects
        .publish(
            keys.campaign_updates_channel("c9"),
            &CampaignUpdate::CampaignEnded { campaign_id: "c9".into() },
        )
        .unwrap();
    effects.append(usage.clone(), 1_000, &Credit { amount: 5 }).unwrap();

    // Act
    let first = effects.apply(clients.primary().next()).await.unwrap();
    let second = effects.apply(clients.primary().next()).await.unwrap();

    // Assert
    assert!(first);
    assert!(!second);
    assert_eq!(stream_len(&clients, &usage).await, 1);
}

#[tokio::test]
async fn the_usage_recorder_appends_its_batches_to_the_usage_stream() {
    // Arrange
    let clients = clients("cluster-usage").await;
    let cancel = CancellationToken::new();
    let settings = UsageRecorderSettings {
        linger: Duration::from_millis(5),
        ..UsageRecorderSettings::default()
    };
    let (recorder, task) = UsageRecorder::start(&clients, settings, cancel.clone());
    let event = |org: &str| UsageEvent {
        org_id: org.to_owned(),
        metric: "sms_sent".into(),
        value: 1,
        occurred_at: None,
        idempotency_key: None,
        metadata: None,
    };

    // Act
    let accepted = ["o1", "o2", "o3"].iter().filter(|org| recorder.record(event(org))).count();
    let key = clients.keys().stream(StreamName::UsageEvents);
    eventually("the events are in the stream", || async { stream_len(&clients, &key).await == 3 })
        .await;
    cancel.cancel();
    task.await.unwrap();

    // Assert
    assert_eq!(accepted, 3);
    assert_eq!(recorder.dropped(), 0);
}

#[tokio::test]
async fn a_message_published_on_any_node_reaches_a_subscriber() {
    // Arrange
    let clients = clients("cluster-pubsub").await;
    let pubsub = PubSub::start(&clients).await.unwrap();
    let channel = clients.keys().campaign_updates_channel("42");
    let mut subscription = pubsub.subscribe::<CampaignUpdate>(&channel).await.unwrap();
    let update = CampaignUpdate::CampaignEnded { campaign_id: "42".into() };

    // Act
    // PUBLISH counts only the receiving node's subscribers; the cluster bus forwards it.
    pubsub::publish(&clients.primary(), &channel, &update).await.unwrap();
    let received = tokio::time::timeout(PATIENCE, subscription.recv()).await.unwrap().unwrap();

    // Assert
    assert_eq!(received.body, update);
    pubsub.stop().await;
}

//! The stream consumer heals what Redis loses under it: a destroyed group or a deleted stream key
//! is recreated at the group's checkpoint, a restarted consumer first finishes its own pending
//! entries, and an outage is retried without using up deliveries.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use platform_redis::fred::clients::Transaction;
use platform_redis::fred::prelude::*;
use platform_redis::streams::{
    ConsumerSettings, HandlerError, Outcome, StartFrom, StreamConsumer, StreamEntry, StreamHandler,
    StreamProducer,
};
use platform_redis::{RedisClients, StreamName};
use platform_testing::eventually;
use tokio_util::sync::CancellationToken;

use common::*;

/// Records the `amount` of every acked entry in a list, inside the worker's transaction: the
/// order and multiplicity in which entries were processed.
struct RecordingHandler {
    list: String,
}

impl StreamHandler for RecordingHandler {
    type Body = Credit;

    async fn handle(
        &self,
        batch: &[StreamEntry<Credit>],
        tx: &Transaction,
    ) -> Result<Vec<Outcome>, HandlerError> {
        let amounts: Vec<i64> = batch.iter().map(|entry| entry.body.amount).collect();
        let () = tx.rpush(&self.list, amounts).await?;
        Ok(vec![Outcome::Ack; batch.len()])
    }
}

fn recording(clients: &RedisClients) -> RecordingHandler {
    RecordingHandler { list: format!("{}:test:processed", clients.keys().root()) }
}

async fn processed(clients: &RedisClients) -> Vec<i64> {
    clients.primary().lrange(recording(clients).list, 0, -1).await.unwrap()
}

/// Appends credits `amounts` with explicit entry ids `<amount>-0`, as the outbox relay does.
async fn append_with_ids(clients: &RedisClients, amounts: impl IntoIterator<Item = i64>) {
    let key = clients.keys().stream(StreamName::UsageEvents);
    for amount in amounts {
        let data = serde_json::to_string(&Credit { amount }).unwrap();
        let _: String = clients
            .primary()
            .xadd(
                &key,
                false,
                None,
                format!("{amount}-0"),
                vec![("v", "1"), ("data", data.as_str())],
            )
            .await
            .unwrap();
    }
}

async fn set_checkpoint(clients: &RedisClients, group: &str, id: &str) {
    let key = clients.keys().stream_group_checkpoints(StreamName::UsageEvents);
    let () = clients.primary().hset(key, (group, id)).await.unwrap();
}

fn spawn_run(
    consumer: &StreamConsumer,
    handler: impl StreamHandler + 'static,
) -> tokio::task::JoinHandle<()> {
    let consumer = consumer.clone();
    tokio::spawn(async move { consumer.run(&handler).await.unwrap() })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_destroyed_under_a_running_consumer_is_recreated_right_after_its_checkpoint() {
    // Arrange: entries 1..=5 processed; the relay's checkpoint says the group acked up to 3.
    let clients = clients("streams-heal-group").await;
    let stop = CancellationToken::new();
    let consumer = StreamConsumer::new(&clients, settings("meter"), stop.clone());
    append_with_ids(&clients, 1..=5).await;
    let running = spawn_run(&consumer, recording(&clients));
    eventually("the first entries are processed", || async {
        processed(&clients).await == vec![1, 2, 3, 4, 5]
    })
    .await;
    set_checkpoint(&clients, "meter", "3-0").await;

    // Act: the group disappears while the consumer runs; then a new entry arrives.
    let () = clients.primary().xgroup_destroy(consumer.stream_key(), "meter").await.unwrap();
    eventually("the group is recreated", || async { consumer.stats().groups_created == 2 }).await;
    append_with_ids(&clients, [6]).await;

    // Assert: it resumed right after the checkpoint: 4 and 5 again (after it), 1..3 not, then 6.
    eventually("the new entry is processed", || async { processed(&clients).await.len() == 8 })
        .await;
    stop.cancel();
    running.await.unwrap();
    assert_eq!(processed(&clients).await, vec![1, 2, 3, 4, 5, 4, 5, 6]);
    assert_eq!(pending(&clients, &consumer).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_key_deleted_under_a_running_consumer_is_recreated_and_new_entries_flow() {
    // Arrange: no checkpoint, a group that starts at new entries.
    let clients = clients("streams-heal-key").await;
    let stop = CancellationToken::new();
    let consumer = StreamConsumer::new(
        &clients,
        ConsumerSettings { start_from: StartFrom::New, ..settings("meter") },
        stop.clone(),
    );
    let running = spawn_run(&consumer, recording(&clients));
    eventually("the group is created", || async { consumer.stats().groups_created == 1 }).await;
    append_with_ids(&clients, [1, 2]).await;
    eventually("the first entries are processed", || async {
        processed(&clients).await == vec![1, 2]
    })
    .await;

    // Act: the whole stream key is lost (Redis restarted empty, a failover lost it).
    let () = clients.primary().del(consumer.stream_key()).await.unwrap();
    eventually("the group is recreated", || async { consumer.stats().groups_created == 2 }).await;
    let producer = StreamProducer::new(&clients, StreamName::UsageEvents, 10_000);
    producer.append(&Credit { amount: 3 }).await.unwrap();

    // Assert: no restart, the new entry is consumed.
    eventually("the new entry is processed", || async {
        processed(&clients).await == vec![1, 2, 3]
    })
    .await;
    stop.cancel();
    running.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_stream_key_is_lost_and_refilled_a_group_resumes_right_after_its_checkpoint() {
    // Arrange: entries 1..=5 processed and checkpointed by the relay; a group that would
    // otherwise start from the beginning.
    let clients = clients("streams-heal-refill").await;
    let stop = CancellationToken::new();
    let consumer = StreamConsumer::new(&clients, settings("meter"), stop.clone());
    append_with_ids(&clients, 1..=5).await;
    let running = spawn_run(&consumer, recording(&clients));
    eventually("the first entries are processed", || async {
        processed(&clients).await == vec![1, 2, 3, 4, 5]
    })
    .await;
    set_checkpoint(&clients, "meter", "5-0").await;

    // Act: the stream key is lost; the relay refills it from its ledger, with newer rows.
    let () = clients.primary().del(consumer.stream_key()).await.unwrap();
    append_with_ids(&clients, 1..=8).await;

    // Assert: neither skipped nor replayed: exactly the entries after the checkpoint.
    eventually("the refilled entries after the checkpoint are processed", || async {
        processed(&clients).await.len() >= 8
    })
    .await;
    stop.cancel();
    running.await.unwrap();
    assert_eq!(processed(&clients).await, vec![1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(consumer.stats().groups_created, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_consumer_first_takes_its_own_pending_entries_then_new_ones() {
    // Arrange: "replica-1" read entries 1..=3 and died holding them; 4 arrived since. The
    // claim idle is far longer than the test: only taking its own entries can finish them.
    let clients = clients("streams-own-pending").await;
    let (consumer, stop) = worker_with_group(
        &clients,
        ConsumerSettings {
            consumer: "replica-1".into(),
            claim_idle: Duration::from_secs(600),
            ..settings("meter")
        },
    )
    .await;
    append_with_ids(&clients, 1..=3).await;
    let _: Value = clients
        .primary()
        .xreadgroup("meter", "replica-1", Some(10), None, false, consumer.stream_key(), ">")
        .await
        .unwrap();
    append_with_ids(&clients, [4]).await;

    // Act: the same consumer name starts again.
    let running = spawn_run(&consumer, recording(&clients));
    let started = std::time::Instant::now();
    eventually("every entry is processed", || async { processed(&clients).await.len() == 4 }).await;
    let took = started.elapsed();
    stop.cancel();
    running.await.unwrap();

    // Assert: its own pending entries first, then the new one; none waited for claim_idle.
    assert_eq!(processed(&clients).await, vec![1, 2, 3, 4]);
    assert!(took < Duration::from_secs(60), "took {took:?}");
    assert_eq!(consumer.stats().reclaimed, 3);
    assert_eq!(pending(&clients, &consumer).await, 0);
}

/// Reports the dependency unavailable for the first `outages` attempts at each entry.
struct FlakyDependency {
    outages: usize,
    attempts: AtomicUsize,
    inner: RecordingHandler,
}

impl StreamHandler for FlakyDependency {
    type Body = Credit;

    async fn handle(
        &self,
        batch: &[StreamEntry<Credit>],
        tx: &Transaction,
    ) -> Result<Vec<Outcome>, HandlerError> {
        if self.attempts.fetch_add(1, Ordering::SeqCst) < self.outages {
            return Ok(vec![Outcome::Unavailable; batch.len()]);
        }
        self.inner.handle(batch, tx).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_held_back_by_an_outage_are_retried_without_counting_towards_max_deliveries() {
    // Arrange: an outage lasting twice as many attempts as max_deliveries allows.
    let clients = clients("streams-outage").await;
    let (consumer, stop) =
        worker_with_group(&clients, ConsumerSettings { max_deliveries: 2, ..settings("meter") })
            .await;
    append_with_ids(&clients, [1, 2]).await;
    let handler =
        FlakyDependency { outages: 4, attempts: AtomicUsize::new(0), inner: recording(&clients) };

    // Act
    let running = spawn_run(&consumer, handler);
    eventually("both entries are processed", || async { processed(&clients).await.len() == 2 })
        .await;
    stop.cancel();
    running.await.unwrap();

    // Assert: retried through the outage, nothing dead-lettered.
    assert_eq!(processed(&clients).await, vec![1, 2]);
    let stats = consumer.stats();
    assert_eq!(stats.dead_lettered, 0);
    assert!(stats.retries >= 8, "retries {}", stats.retries);
    assert!(dead_letters(&clients, &consumer).await.is_empty());
}

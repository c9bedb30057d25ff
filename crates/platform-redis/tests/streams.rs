//! The stream producer and consumer-group worker against a real Redis: effects and acks commit
//! together so a dead consumer's entries are applied exactly once by another, poison entries are
//! dead-lettered without stopping the worker, cancellation stops it gracefully, a lost group is
//! recreated at its checkpoint under a running worker, a restarted consumer first finishes its
//! own pending entries, and outages are retried without using up deliveries.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use platform_redis::fred::clients::Transaction;
use platform_redis::fred::prelude::*;
use platform_redis::streams::{
    ConsumerSettings, ConsumerStats, HandlerError, Outcome, StartFrom, StreamConsumer, StreamEntry,
    StreamHandler, StreamProducer,
};
use platform_redis::{RedisClients, RedisSettings, StreamName};
use platform_testing::{RedisServer, eventually, unique_prefix};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Credit {
    amount: i64,
}

/// Adds each acked entry's amount to a counter, inside the worker's transaction.
struct CountingHandler {
    counter: String,
    /// Entries with these amounts are retried forever (to exhaust `max_deliveries`).
    always_retry: Option<i64>,
    /// Entries with this amount are dead-lettered by the handler's own decision.
    reject: Option<i64>,
    traceparents: Mutex<Vec<String>>,
}

impl CountingHandler {
    fn new(counter: String) -> Self {
        Self { counter, always_retry: None, reject: None, traceparents: Mutex::new(Vec::new()) }
    }
}

impl StreamHandler for CountingHandler {
    type Body = Credit;

    async fn handle(
        &self,
        batch: &[StreamEntry<Credit>],
        tx: &Transaction,
    ) -> Result<Vec<Outcome>, HandlerError> {
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut total = 0;
        for entry in batch {
            if let Some(traceparent) = &entry.traceparent {
                self.traceparents.lock().unwrap().push(traceparent.clone());
            }
            if Some(entry.body.amount) == self.always_retry {
                outcomes.push(Outcome::Retry);
            } else if Some(entry.body.amount) == self.reject {
                outcomes.push(Outcome::DeadLetter("amount rejected by handler".into()));
            } else {
                total += entry.body.amount;
                outcomes.push(Outcome::Ack);
            }
        }
        if total != 0 {
            let () = tx.incr_by(&self.counter, total).await?;
        }
        Ok(outcomes)
    }
}

/// Queues its effects, then fails before the worker could EXEC, and stops its consumer: a
/// consumer that dies in the middle of a batch.
struct DyingHandler {
    counter: String,
    stop: CancellationToken,
    calls: AtomicUsize,
}

impl StreamHandler for DyingHandler {
    type Body = Credit;

    async fn handle(
        &self,
        batch: &[StreamEntry<Credit>],
        tx: &Transaction,
    ) -> Result<Vec<Outcome>, HandlerError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let total: i64 = batch.iter().map(|e| e.body.amount).sum();
        let () = tx.incr_by(&self.counter, total).await?;
        self.stop.cancel();
        Err(HandlerError::msg("process died before EXEC"))
    }
}

async fn clients(test: &str) -> RedisClients {
    let server = RedisServer::shared();
    RedisClients::connect(&RedisSettings::for_url(&server.url(), &unique_prefix(test)))
        .await
        .expect("connect")
}

fn counter_key(clients: &RedisClients) -> String {
    format!("{}:test:counter", clients.keys().root())
}

async fn counter(clients: &RedisClients) -> i64 {
    let value: Option<i64> = clients.primary().get(counter_key(clients)).await.unwrap();
    value.unwrap_or(0)
}

async fn pending(clients: &RedisClients, consumer: &StreamConsumer) -> u64 {
    let summary: Value = clients
        .primary()
        .xpending(consumer.stream_key(), consumer.settings().group.as_str(), ())
        .await
        .unwrap();
    summary.into_array().first().and_then(Value::as_u64).unwrap_or(0)
}

async fn dead_letters(
    clients: &RedisClients,
    consumer: &StreamConsumer,
) -> Vec<Vec<(String, String)>> {
    let entries: Value =
        clients.primary().xrange(consumer.dead_letter_key(), "-", "+", None).await.unwrap();
    entries
        .into_array()
        .into_iter()
        .map(|entry| {
            let mut parts = entry.into_array().into_iter();
            let _id = parts.next();
            let flat = parts.next().unwrap().into_array();
            flat.chunks(2)
                .map(|kv| (kv[0].as_string().unwrap(), kv[1].as_string().unwrap()))
                .collect()
        })
        .collect()
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> &'a str {
    fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).unwrap_or("")
}

fn settings(group: &str) -> ConsumerSettings {
    ConsumerSettings {
        batch_size: 50,
        block: Duration::from_millis(100),
        claim_idle: Duration::from_millis(300),
        start_from: StartFrom::Beginning,
        ..ConsumerSettings::new(StreamName::UsageEvents, group)
    }
}

/// A worker of `settings` and the token that stops it; its group exists.
async fn worker_with_group(
    clients: &RedisClients,
    settings: ConsumerSettings,
) -> (StreamConsumer, CancellationToken) {
    let stop = CancellationToken::new();
    let consumer = StreamConsumer::new(clients, settings, stop.clone());
    consumer.ensure_group().await.unwrap();
    (consumer, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_consumers_entries_are_reclaimed_and_applied_exactly_once() {
    // Arrange: 500 credits, a group, and two consumers that die holding entries.
    let clients = clients("streams-reclaim").await;
    let producer = StreamProducer::new(&clients, StreamName::UsageEvents, 10_000);
    let survivor_stop = CancellationToken::new();
    let survivor = StreamConsumer::new(
        &clients,
        ConsumerSettings { consumer: "survivor".into(), ..settings("meter") },
        survivor_stop.clone(),
    );
    survivor.ensure_group().await.unwrap();
    let credits: Vec<Credit> = (1..=500).map(|amount| Credit { amount }).collect();
    let expected: i64 = credits.iter().map(|c| c.amount).sum();
    producer.append_all(&credits).await.unwrap();

    // One reads 200 entries and crashes before acking (raw XREADGROUP, never acked).
    let _: Value = clients
        .primary()
        .xreadgroup("meter", "dead-one", Some(200), None, false, survivor.stream_key(), ">")
        .await
        .unwrap();
    // Another queues its effects for a batch and dies before EXEC.
    let dying_stop = CancellationToken::new();
    let dying_handler = DyingHandler {
        counter: counter_key(&clients),
        stop: dying_stop.clone(),
        calls: AtomicUsize::new(0),
    };
    let dying = StreamConsumer::new(
        &clients,
        ConsumerSettings {
            consumer: "dying".into(),
            claim_idle: Duration::from_secs(60),
            ..settings("meter")
        },
        dying_stop,
    );
    dying.run(&dying_handler).await.unwrap();
    assert_eq!(dying_handler.calls.load(Ordering::SeqCst), 1);
    assert_eq!(counter(&clients).await, 0, "nothing of the dead batches was applied");
    assert_eq!(pending(&clients, &survivor).await, 250);

    // Act: the survivor reads the rest and reclaims the dead consumers' entries.
    let handler = CountingHandler::new(counter_key(&clients));
    let running = {
        let survivor = survivor.clone();
        tokio::spawn(async move { survivor.run(&handler).await })
    };
    eventually("every entry is acked", || async {
        survivor.stats().processed == 500 && pending(&clients, &survivor).await == 0
    })
    .await;
    survivor_stop.cancel();
    running.await.unwrap().unwrap();

    // Assert
    assert_eq!(counter(&clients).await, expected);
    assert_eq!(pending(&clients, &survivor).await, 0);
    let stats = survivor.stats();
    assert_eq!(stats.processed, 500);
    assert!(stats.reclaimed >= 250, "reclaimed {}", stats.reclaimed);
    assert_eq!(stats.dead_lettered, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_entries_go_to_the_dead_letter_stream_and_the_worker_goes_on() {
    // Arrange: good entries around three kinds of poison.
    let clients = clients("streams-poison").await;
    let (consumer, stop) = worker_with_group(&clients, settings("meter")).await;
    let producer = StreamProducer::new(&clients, StreamName::UsageEvents, 10_000);
    let key = consumer.stream_key().to_owned();
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    producer.append(&Credit { amount: 1 }).await.unwrap();
    let not_json: String = clients
        .primary()
        .xadd(&key, false, None, "*", vec![("v", "1"), ("data", "{not json")])
        .await
        .unwrap();
    let future_version: String = clients
        .primary()
        .xadd(&key, false, None, "*", vec![("v", "99"), ("data", r#"{"amount":1000}"#)])
        .await
        .unwrap();
    let no_data: String =
        clients.primary().xadd(&key, false, None, "*", vec![("v", "1")]).await.unwrap();
    let _: String = clients
        .primary()
        .xadd(
            &key,
            false,
            None,
            "*",
            vec![("v", "1"), ("traceparent", traceparent), ("data", r#"{"amount":10}"#)],
        )
        .await
        .unwrap();
    producer.append(&Credit { amount: 100 }).await.unwrap();
    let handler = CountingHandler::new(counter_key(&clients));

    // Act
    let running = {
        let consumer = consumer.clone();
        tokio::spawn(async move {
            consumer.run(&handler).await.map(|()| handler.traceparents.into_inner().unwrap())
        })
    };
    eventually("good entries are processed", || async {
        consumer.stats().processed == 3 && consumer.stats().dead_lettered == 3
    })
    .await;
    stop.cancel();
    let seen_traceparents = running.await.unwrap().unwrap();

    // Assert
    assert_eq!(counter(&clients).await, 111);
    assert_eq!(pending(&clients, &consumer).await, 0);
    assert_eq!(seen_traceparents, vec![traceparent.to_owned()]);
    let dead = dead_letters(&clients, &consumer).await;
    assert_eq!(dead.len(), 3);
    assert_eq!(field(&dead[0], "original_id"), not_json);
    assert!(field(&dead[0], "reason").contains("not a valid message body"));
    assert_eq!(field(&dead[0], "data"), "{not json");
    assert_eq!(field(&dead[1], "original_id"), future_version);
    assert!(field(&dead[1], "reason").contains("unknown message version 99"));
    assert_eq!(field(&dead[2], "original_id"), no_data);
    assert!(field(&dead[2], "reason").contains("missing field `data`"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_retried_past_max_deliveries_or_rejected_by_the_handler_are_dead_lettered() {
    // Arrange: one entry the handler always retries, one it rejects, two good ones.
    let clients = clients("streams-max-deliveries").await;
    let (consumer, stop) =
        worker_with_group(&clients, ConsumerSettings { max_deliveries: 2, ..settings("meter") })
            .await;
    let producer = StreamProducer::new(&clients, StreamName::UsageEvents, 10_000);
    let ids = producer
        .append_all(&[
            Credit { amount: 1 },
            Credit { amount: -1 },
            Credit { amount: -2 },
            Credit { amount: 2 },
        ])
        .await
        .unwrap();
    let handler = CountingHandler {
        always_retry: Some(-1),
        reject: Some(-2),
        ..CountingHandler::new(counter_key(&clients))
    };

    // Act
    let running = {
        let consumer = consumer.clone();
        tokio::spawn(async move { consumer.run(&handler).await })
    };
    eventually("both bad entries are dead-lettered", || async {
        consumer.stats().dead_lettered == 2 && pending(&clients, &consumer).await == 0
    })
    .await;
    stop.cancel();
    running.await.unwrap().unwrap();

    // Assert
    assert_eq!(counter(&clients).await, 3);
    let stats = consumer.stats();
    assert_eq!(stats.processed, 2);
    assert_eq!(stats.retries, 2, "retried on its first and second delivery");
    let dead = dead_letters(&clients, &consumer).await;
    assert_eq!(dead.len(), 2);
    assert_eq!(field(&dead[0], "original_id"), ids[2]);
    assert_eq!(field(&dead[0], "reason"), "amount rejected by handler");
    assert_eq!(field(&dead[1], "original_id"), ids[1]);
    assert_eq!(field(&dead[1], "reason"), "delivered 3 times (max 2)");
    assert_eq!(field(&dead[1], "deliveries"), "3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_the_token_stops_a_worker_blocked_on_an_empty_stream() {
    // Arrange: default (2 s) block on a stream with nothing in it.
    let clients = clients("streams-stop").await;
    let stop = CancellationToken::new();
    let consumer = StreamConsumer::new(
        &clients,
        ConsumerSettings::new(StreamName::StripeEvents, "campaigns"),
        stop.clone(),
    );
    let handler = CountingHandler::new(counter_key(&clients));
    let running = {
        let consumer = consumer.clone();
        tokio::spawn(async move { consumer.run(&handler).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Act
    stop.cancel();
    let result = tokio::time::timeout(Duration::from_secs(30), running).await;

    // Assert
    assert!(matches!(result, Ok(Ok(Ok(())))), "run returned {result:?}");
    assert_eq!(consumer.stats(), ConsumerStats { groups_created: 1, ..Default::default() });
}

/// Cancels the consumer from inside a batch, then finishes that batch normally.
struct StopMidBatchHandler {
    inner: CountingHandler,
    stop: CancellationToken,
}

impl StreamHandler for StopMidBatchHandler {
    type Body = Credit;

    async fn handle(
        &self,
        batch: &[StreamEntry<Credit>],
        tx: &Transaction,
    ) -> Result<Vec<Outcome>, HandlerError> {
        self.stop.cancel();
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.inner.handle(batch, tx).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_worker_finishes_its_current_batch_before_returning() {
    // Arrange
    let clients = clients("streams-finish-batch").await;
    let (consumer, stop) =
        worker_with_group(&clients, ConsumerSettings { batch_size: 10, ..settings("meter") }).await;
    let producer = StreamProducer::new(&clients, StreamName::UsageEvents, 10_000);
    producer.append_all(&vec![Credit { amount: 1 }; 30]).await.unwrap();
    let handler = StopMidBatchHandler {
        inner: CountingHandler::new(counter_key(&clients)),
        stop: stop.clone(),
    };

    // Act
    tokio::time::timeout(Duration::from_secs(30), consumer.run(&handler))
        .await
        .expect("run returns after cancellation")
        .unwrap();

    // Assert: exactly the one batch in hand was committed; the rest waits for the next worker.
    assert_eq!(counter(&clients).await, 10);
    assert_eq!(consumer.stats().processed, 10);
    assert_eq!(pending(&clients, &consumer).await, 0);
}

/// [`CountingHandler`] declaring overlapped commits; also appends each batch's first entry id to
/// a list in the same transaction (the order in which batches committed), and optionally
/// cancels its consumer from inside the first batch.
struct OverlappingHandler {
    inner: CountingHandler,
    order: String,
    stop_in_first_batch: Option<CancellationToken>,
}

impl StreamHandler for OverlappingHandler {
    type Body = Credit;
    const OVERLAP_COMMITS: bool = true;

    async fn handle(
        &self,
        batch: &[StreamEntry<Credit>],
        tx: &Transaction,
    ) -> Result<Vec<Outcome>, HandlerError> {
        if let Some(stop) = &self.stop_in_first_batch {
            stop.cancel();
        }
        let () = tx.rpush(&self.order, batch[0].id.as_str()).await?;
        self.inner.handle(batch, tx).await
    }
}

async fn commit_order(clients: &RedisClients) -> Vec<String> {
    let key = format!("{}:test:order", clients.keys().root());
    clients.primary().lrange(key, 0, -1).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overlapping_worker_commits_every_batch_once_and_in_stream_order() {
    // Arrange: 40 full batches, so the worker reads ahead and commits in the background.
    let clients = clients("streams-overlap").await;
    let (consumer, stop) = worker_with_group(&clients, settings("meter")).await;
    let producer = StreamProducer::new(&clients, StreamName::UsageEvents, 10_000);
    let credits: Vec<Credit> = (1..=2000).map(|amount| Credit { amount }).collect();
    let ids = producer.append_all(&credits).await.unwrap();
    let handler = OverlappingHandler {
        inner: CountingHandler::new(counter_key(&clients)),
        order: format!("{}:test:order", clients.keys().root()),
        stop_in_first_batch: None,
    };

    // Act
    let running = {
        let consumer = consumer.clone();
        tokio::spawn(async move { consumer.run(&handler).await })
    };
    eventually("every entry is acked", || async {
        consumer.stats().processed == 2000 && pending(&clients, &consumer).await == 0
    })
    .await;
    stop.cancel();
    running.await.unwrap().unwrap();

    // Assert
    assert_eq!(counter(&clients).await, 2000 * 2001 / 2);
    let expected_order: Vec<String> = ids.chunks(50).map(|batch| batch[0].clone()).collect();
    assert_eq!(commit_order(&clients).await, expected_order);
    assert_eq!(consumer.stats().retries, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_overlapping_worker_also_finishes_the_batch_it_read_ahead() {
    // Arrange: three full batches; the handler cancels during the first.
    let clients = clients("streams-overlap-stop").await;
    let (consumer, stop) = worker_with_group(
        &clients,
        // No claim pass falls due during the test (it would run instead of the read-ahead).
        ConsumerSettings {
            batch_size: 10,
            claim_idle: Duration::from_secs(60),
            ..settings("meter")
        },
    )
    .await;
    let producer = StreamProducer::new(&clients, StreamName::UsageEvents, 10_000);
    producer.append_all(&vec![Credit { amount: 1 }; 30]).await.unwrap();
    let handler = OverlappingHandler {
        inner: CountingHandler::new(counter_key(&clients)),
        order: format!("{}:test:order", clients.keys().root()),
        stop_in_first_batch: Some(stop.clone()),
    };

    // Act
    tokio::time::timeout(Duration::from_secs(30), consumer.run(&handler))
        .await
        .expect("run returns after cancellation")
        .unwrap();

    // Assert: the batch in hand and the one read ahead committed; the third was never read.
    assert_eq!(counter(&clients).await, 20);
    assert_eq!(consumer.stats().processed, 20);
    assert_eq!(pending(&clients, &consumer).await, 0);
}

#[tokio::test]
async fn appended_entries_carry_version_and_json_data() {
    // Arrange
    let clients = clients("streams-encoding").await;
    let producer = StreamProducer::new(&clients, StreamName::UsageEvents, 10_000);

    // Act
    let id = producer.append(&Credit { amount: 42 }).await.unwrap();

    // Assert
    let entries: Value = clients.primary().xrange(producer.key(), "-", "+", None).await.unwrap();
    let mut entry = entries.into_array().remove(0).into_array().into_iter();
    assert_eq!(entry.next().unwrap().as_string().unwrap(), id);
    let fields: Vec<String> =
        entry.next().unwrap().into_array().iter().map(|v| v.as_string().unwrap()).collect();
    assert_eq!(fields, vec!["v", "1", "data", r#"{"amount":42}"#]);
}

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

//! The stream producer and consumer-group worker against a real Redis: effects and acks commit
//! together so a dead consumer's entries are applied exactly once by another, poison entries are
//! dead-lettered without stopping the worker, cancellation stops it gracefully, and an overlapping
//! worker commits every batch once and in order. Healing what Redis loses: `stream_recovery.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use platform_redis::fred::clients::Transaction;
use platform_redis::fred::prelude::*;
use platform_redis::streams::{
    ConsumerSettings, ConsumerStats, HandlerError, Outcome, StreamConsumer, StreamEntry,
    StreamHandler, StreamProducer,
};
use platform_redis::{RedisClients, StreamName};
use platform_testing::eventually;
use tokio_util::sync::CancellationToken;

use common::*;

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

//! The consumer-group backlog metrics against a real Redis: read at scrape time, they move with
//! the stream (lag with unconsumed entries, pending and its age with unacknowledged ones, the
//! dead-letter length after a dead-letter).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use platform_redis::fred::clients::Transaction;
use platform_redis::fred::prelude::*;
use platform_redis::streams::{
    ConsumerSettings, HandlerError, Outcome, StartFrom, StreamConsumer, StreamEntry, StreamHandler,
    StreamProducer,
};
use platform_redis::{RedisClients, RedisSettings, StreamName};
use platform_service::metrics::Metrics;
use platform_testing::{RedisServer, eventually, unique_prefix};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

const GROUP: &str = "meter";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Credit {
    amount: i64,
}

/// Acks positive amounts, dead-letters the others.
struct RejectNegative;

impl StreamHandler for RejectNegative {
    type Body = Credit;

    async fn handle(
        &self,
        batch: &[StreamEntry<Credit>],
        _tx: &Transaction,
    ) -> Result<Vec<Outcome>, HandlerError> {
        Ok(batch
            .iter()
            .map(|entry| {
                if entry.body.amount > 0 {
                    Outcome::Ack
                } else {
                    Outcome::DeadLetter("negative amount".into())
                }
            })
            .collect())
    }
}

/// The value of `metric` for this test's group, if the scrape has it.
fn sample(text: &str, metric: &str) -> Option<f64> {
    let labels = format!("group=\"{GROUP}\"");
    text.lines()
        .filter(|line| line.starts_with(&format!("{metric}{{")) && line.contains(&labels))
        .find_map(|line| line.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_backlog_metrics_follow_the_stream_at_scrape_time() {
    // Arrange: a group with nobody consuming yet, registered for metrics.
    let clients = RedisClients::connect(&RedisSettings::for_url(
        &RedisServer::shared().url(),
        &unique_prefix("stream-metrics"),
    ))
    .await
    .unwrap();
    let metrics = Metrics::new("test");
    metrics.register_stream_group(&clients, StreamName::UsageEvents, GROUP);
    assert_eq!(
        sample(&metrics.scrape().await, "stream_group_pending_entries"),
        None,
        "no group yet"
    );
    let stop = CancellationToken::new();
    let consumer = StreamConsumer::new(
        &clients,
        ConsumerSettings {
            consumer: "only".into(),
            block: Duration::from_millis(100),
            start_from: StartFrom::Beginning,
            ..ConsumerSettings::new(StreamName::UsageEvents, GROUP)
        },
        stop.clone(),
    );
    consumer.ensure_group().await.unwrap();
    let producer = StreamProducer::new(&clients, StreamName::UsageEvents, 10_000);

    // Act 1: five entries nobody has read, then two delivered and not acked.
    producer
        .append_all(&(1..=5).map(|amount| Credit { amount }).collect::<Vec<_>>())
        .await
        .unwrap();
    let backlog = metrics.scrape().await;
    let _: Value = clients
        .primary()
        .xreadgroup(GROUP, "crashed", Some(2), None, false, consumer.stream_key(), ">")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let held = metrics.scrape().await;

    // Assert 1
    assert_eq!(sample(&backlog, "stream_group_lag_entries"), Some(5.0), "{backlog}");
    assert_eq!(sample(&backlog, "stream_group_pending_entries"), Some(0.0));
    assert_eq!(sample(&backlog, "stream_group_oldest_pending_age_seconds"), Some(0.0));
    assert_eq!(sample(&backlog, "stream_group_dead_letter_entries"), Some(0.0));
    assert!(backlog.contains(r#"stream="usage-events""#), "{backlog}");
    assert_eq!(sample(&held, "stream_group_lag_entries"), Some(3.0), "{held}");
    assert_eq!(sample(&held, "stream_group_pending_entries"), Some(2.0));
    assert!(sample(&held, "stream_group_oldest_pending_age_seconds").unwrap() >= 0.05, "{held}");

    // Act 2: the crashed consumer's entries are acked by hand, and a worker consumes the rest
    // plus one entry it dead-letters.
    let pending: Vec<Vec<Value>> =
        clients.primary().xpending(consumer.stream_key(), GROUP, ("-", "+", 10u64)).await.unwrap();
    let ids: Vec<String> = pending.iter().filter_map(|row| row[0].as_string()).collect();
    let () = clients.primary().xack(consumer.stream_key(), GROUP, ids).await.unwrap();
    producer.append(&Credit { amount: -1 }).await.unwrap();
    let running = {
        let consumer = consumer.clone();
        tokio::spawn(async move { consumer.run(&RejectNegative).await.unwrap() })
    };
    eventually("the worker has consumed everything", || async {
        let stats = consumer.stats();
        stats.processed == 3 && stats.dead_lettered == 1
    })
    .await;
    stop.cancel();
    running.await.unwrap();
    let drained = metrics.scrape().await;

    // Assert 2
    assert_eq!(sample(&drained, "stream_group_lag_entries"), Some(0.0), "{drained}");
    assert_eq!(sample(&drained, "stream_group_pending_entries"), Some(0.0));
    assert_eq!(sample(&drained, "stream_group_oldest_pending_age_seconds"), Some(0.0));
    assert_eq!(sample(&drained, "stream_group_dead_letter_entries"), Some(1.0));
}

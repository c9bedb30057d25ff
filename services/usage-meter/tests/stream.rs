//! The usage-stream consumer against a real Redis: 100 000 events from 4 producers with 10 %
//! duplicates, consumers killed mid-batch and replaced, several replicas at once → every
//! counter equals the expected sum exactly (and so does the Postgres copy); poison entries are
//! dead-lettered with their reason while valid ones are counted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use platform_redis::fred::clients::Transaction;
use platform_redis::fred::prelude::*;
use platform_redis::messages::UsageEvent;
use platform_redis::streams::{
    ConsumerSettings, HandlerError, Outcome, StartFrom, StreamConsumer, StreamEntry, StreamHandler,
    StreamProducer,
};
use platform_redis::{RedisClients, RedisSettings, StreamName};
use platform_testing::{PostgresServer, RedisServer, unique_prefix};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use usage_meter::domain::usage::{EventRules, Metric, MetricSet, Month, OrgId};
use usage_meter::store::{self, Retention};
use usage_meter::workers::consumer::UsageHandler;

const GROUP: &str = "usage-meter";

fn retention() -> Retention {
    Retention {
        counter_ttl_secs: 90 * 86_400,
        events_ttl_secs: 30 * 86_400,
        events_per_org: 100,
        idempotency_window_secs: 3600,
        durable_marks: MetricSet::of(&[Metric::DonationProcessed]),
    }
}

fn rules() -> EventRules {
    EventRules {
        max_age: chrono::Duration::days(35),
        max_future_skew: chrono::Duration::minutes(5),
    }
}

fn consumer_settings() -> ConsumerSettings {
    let mut settings = ConsumerSettings::new(StreamName::UsageEvents, GROUP);
    settings.batch_size = 500;
    settings.block = Duration::from_millis(200);
    settings.claim_idle = Duration::from_secs(3);
    settings.start_from = StartFrom::Beginning;
    settings
}

/// Handles `after - 1` batches normally, then queues the effects of the next one and hangs
/// before the worker can `EXEC`: the test then kills the task, a consumer dead mid-batch.
struct DiesMidBatch {
    inner: UsageHandler,
    after: usize,
    calls: AtomicUsize,
    reached: Arc<Notify>,
}

impl StreamHandler for DiesMidBatch {
    type Body = UsageEvent;

    // As the service's handler: the worker reads ahead and commits in the background, so the
    // kill may leave a batch read ahead and the previous EXEC in flight.
    const OVERLAP_COMMITS: bool = UsageHandler::OVERLAP_COMMITS;

    async fn handle(
        &self,
        batch: &[StreamEntry<UsageEvent>],
        tx: &Transaction,
    ) -> Result<Vec<Outcome>, HandlerError> {
        let outcomes = self.inner.handle(batch, tx).await?;
        if self.calls.fetch_add(1, Ordering::SeqCst) + 1 == self.after {
            self.reached.notify_one();
            std::future::pending::<()>().await;
        }
        Ok(outcomes)
    }
}

const METRICS: [&str; 6] = [
    "api_request",
    "email_sent",
    "sms_sent",
    "donation_processed",
    "storage_used",
    "campaign_created",
];

/// The events producer `p` sends: every tenth repeats (same key, same body) the one five before.
fn producer_events(p: usize, count: usize, base: DateTime<Utc>) -> Vec<UsageEvent> {
    let original = |i: usize| {
        let metric = METRICS[(i + p) % METRICS.len()];
        let value = match metric {
            "donation_processed" => ((i % 50) as i64 + 1) * 100,
            "storage_used" => (i as i64) * 1000 + p as i64,
            _ => (i % 13) as i64 + 1,
        };
        UsageEvent {
            org_id: format!("org-{}", (i * 7 + p) % 10),
            metric: metric.to_owned(),
            value,
            occurred_at: Some((base + chrono::Duration::milliseconds(i as i64)).to_rfc3339()),
            // Some events carry no key: the stream's exactly-once effect still counts them once.
            idempotency_key: (i % 10 != 7).then(|| format!("p{p}-{i}")),
            metadata: i.is_multiple_of(100).then(|| serde_json::json!({ "producer": p })),
        }
    };
    (0..count).map(|i| if i % 10 == 9 { original(i - 5) } else { original(i) }).collect()
}

type Expected = BTreeMap<(String, String), BTreeMap<String, i64>>;

/// Sums of the distinct events; the gauge keeps the latest time, ties to the larger value.
fn expected(events: &[UsageEvent]) -> Expected {
    let mut seen = std::collections::HashSet::new();
    let mut sums: Expected = BTreeMap::new();
    let mut gauges: HashMap<(String, String), (DateTime<Utc>, i64)> = HashMap::new();
    for event in events {
        if let Some(key) = &event.idempotency_key
            && !seen.insert((event.org_id.clone(), key.clone()))
        {
            continue;
        }
        let at: DateTime<Utc> = event.occurred_at.as_deref().unwrap().parse().unwrap();
        let month = at.format("%Y-%m").to_string();
        let slot = (event.org_id.clone(), month);
        let counters = sums.entry(slot.clone()).or_default();
        match event.metric.as_str() {
            "storage_used" => {
                let g = gauges.entry(slot).or_insert((at, event.value));
                if (at, event.value) > *g {
                    *g = (at, event.value);
                }
            }
            "donation_processed" => {
                *counters.entry("donation_processed".into()).or_default() += 1;
                *counters.entry("donation_volume_cents".into()).or_default() += event.value;
            }
            metric => *counters.entry(metric.into()).or_default() += event.value,
        }
    }
    for (slot, (_, value)) in gauges {
        sums.entry(slot).or_default().insert("storage_used".into(), value);
    }
    sums
}

async fn group_state(clients: &RedisClients) -> (i64, i64) {
    let key = clients.keys().stream(StreamName::UsageEvents);
    let groups: Vec<HashMap<String, Value>> = clients.primary().xinfo_groups(key).await.unwrap();
    let group = groups
        .into_iter()
        .find(|g| g.get("name").and_then(Value::as_string).as_deref() == Some(GROUP));
    let group = group.unwrap_or_default();
    let number = |name: &str| group.get(name).and_then(Value::as_i64).unwrap_or(-1);
    (number("pending"), number("lag"))
}

/// Waits (bounded) until every entry was delivered and acknowledged.
async fn wait_until_drained(clients: &RedisClients) {
    for _ in 0..1200 {
        if group_state(clients).await == (0, 0) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("stream not drained: (pending, lag) = {:?}", group_state(clients).await);
}

fn spawn_consumer<H: StreamHandler + 'static>(
    clients: &RedisClients,
    handler: H,
) -> (StreamConsumer, CancellationToken, tokio::task::JoinHandle<()>) {
    let cancel = CancellationToken::new();
    let consumer = StreamConsumer::new(clients, consumer_settings(), cancel.clone());
    let worker = consumer.clone();
    let task = tokio::spawn(async move { worker.run(&handler).await.unwrap() });
    (consumer, cancel, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hundred_thousand_events_with_duplicates_and_killed_consumers_count_exactly_once() {
    // Arrange
    let prefix = unique_prefix("usage-100k");
    let clients =
        RedisClients::connect(&RedisSettings::for_url(&RedisServer::shared().url(), &prefix))
            .await
            .unwrap();
    let database = PostgresServer::shared().create_database().await.unwrap();
    let pool = sqlx::PgPool::connect(&database.url).await.unwrap();
    usage_meter::db::migrate(&pool).await.unwrap();
    usage_meter::store::sync::open_without_durable_copy(&clients).await.unwrap();
    let handler = || UsageHandler::new(clients.keys().clone(), retention(), rules());
    let base = Utc::now() - chrono::Duration::minutes(2);
    let batches: Vec<Vec<UsageEvent>> = (0..4).map(|p| producer_events(p, 25_000, base)).collect();
    let expected = expected(&batches.concat());
    let reached = Arc::new(Notify::new());
    let dying = DiesMidBatch {
        inner: handler(),
        after: 3,
        calls: AtomicUsize::new(0),
        reached: reached.clone(),
    };

    // Act: consumer A dies inside its third batch; B runs beside it and is killed while events
    // flow; C replaces them.
    let (_a, _a_cancel, a_task) = spawn_consumer(&clients, dying);
    let (b, _b_cancel, b_task) = spawn_consumer(&clients, handler());
    let producers: Vec<_> = batches
        .into_iter()
        .map(|events| {
            let producer = StreamProducer::new(&clients, StreamName::UsageEvents, 1_000_000);
            tokio::spawn(async move {
                for chunk in events.chunks(500) {
                    producer.append_all(chunk).await.unwrap();
                }
            })
        })
        .collect();
    tokio::time::timeout(Duration::from_secs(60), reached.notified())
        .await
        .expect("A reached batch 3");
    a_task.abort();
    for _ in 0..600 {
        if b.stats().processed >= 20_000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    b_task.abort();
    let (c, c_cancel, c_task) = spawn_consumer(&clients, handler());
    for producer in producers {
        producer.await.unwrap();
    }
    wait_until_drained(&clients).await;
    c_cancel.cancel();
    c_task.await.unwrap();
    let rows =
        usage_meter::domain::flush::flush_once(&clients, &pool, &Default::default()).await.unwrap();

    // Assert
    assert!(a_task_was_killed_mid_batch(&c), "C reclaimed the entries A and B left pending");
    let mut actual: Expected = BTreeMap::new();
    for (org, month) in expected.keys() {
        let usage =
            store::usage(&clients, &OrgId::parse(org).unwrap(), month.parse::<Month>().unwrap())
                .await
                .unwrap();
        actual.insert((org.clone(), month.clone()), usage);
    }
    assert_eq!(actual, expected);
    let mut durable: Expected = BTreeMap::new();
    for (org, month) in expected.keys() {
        durable.insert(
            (org.clone(), month.clone()),
            usage_meter::db::usage(&pool, org, month).await.unwrap(),
        );
    }
    assert_eq!(durable, expected, "the Postgres copy equals the counters");
    assert_eq!(rows, expected.values().map(BTreeMap::len).sum::<usize>());
    let dead: i64 = clients
        .primary()
        .xlen(clients.keys().dead_letter_stream(StreamName::UsageEvents, GROUP))
        .await
        .unwrap();
    assert_eq!(dead, 0);
}

fn a_task_was_killed_mid_batch(replacement: &StreamConsumer) -> bool {
    replacement.stats().reclaimed > 0
}

#[tokio::test]
async fn poison_entries_go_to_the_dead_letter_stream_with_their_reason_and_valid_ones_count() {
    // Arrange
    let prefix = unique_prefix("usage-poison");
    let clients =
        RedisClients::connect(&RedisSettings::for_url(&RedisServer::shared().url(), &prefix))
            .await
            .unwrap();
    usage_meter::store::sync::open_without_durable_copy(&clients).await.unwrap();
    let producer = StreamProducer::new(&clients, StreamName::UsageEvents, 10_000);
    let bodies = vec![
        serde_json::json!({ "orgId": "p1", "metric": "sms_sent", "value": 3 }),
        serde_json::json!({ "orgId": "p1", "metric": "telepathy", "value": 1 }),
        serde_json::json!({ "orgId": "p1", "metric": "sms_sent", "value": -2 }),
        serde_json::json!({ "orgId": "p1", "metric": "sms_sent", "value": 1, "occurredAt": "2026-99-01" }),
        serde_json::json!({ "orgId": "p1", "metric": "sms_sent", "value": 1, "occurredAt": "1999-01-01T00:00:00Z" }),
        serde_json::json!({ "metric": "sms_sent", "value": 1 }),
        serde_json::json!({ "orgId": "", "metric": "sms_sent", "value": 1 }),
        serde_json::json!({ "orgId": "p1", "metric": "sms_sent", "value": 4 }),
    ];
    producer.append_all(&bodies).await.unwrap();

    // Act
    let (_consumer, cancel, task) =
        spawn_consumer(&clients, UsageHandler::new(clients.keys().clone(), retention(), rules()));
    wait_until_drained(&clients).await;
    cancel.cancel();
    task.await.unwrap();

    // Assert
    let usage =
        store::usage(&clients, &OrgId::parse("p1").unwrap(), Month::current()).await.unwrap();
    assert_eq!(usage.get("sms_sent"), Some(&7));
    let dead_key = clients.keys().dead_letter_stream(StreamName::UsageEvents, GROUP);
    let dead: Vec<(String, HashMap<String, String>)> =
        clients.primary().xrange(dead_key, "-", "+", None).await.unwrap();
    let reasons: Vec<&str> = dead.iter().map(|(_, f)| f["reason"].as_str()).collect();
    assert_eq!(reasons.len(), 6, "{reasons:?}");
    // Undecodable entries (missing orgId) are dead-lettered before the handler sees the batch,
    // so the order differs from the stream's; each reason must be there.
    for expected in [
        "unknown metric",
        "negative",
        "RFC 3339",
        "older than",
        "missing field `orgId`",
        "orgId is missing or empty",
    ] {
        assert!(
            reasons.iter().any(|r| r.contains(expected)),
            "no reason mentions {expected:?}: {reasons:?}"
        );
    }
}

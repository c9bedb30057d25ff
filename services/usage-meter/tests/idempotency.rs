//! The recording script's idempotency against a real Redis: keys are refused within the window
//! across a rotation of the time buckets and forgotten after them; repeats inside one batch
//! count once, whatever slot they fall into; keys are scoped per organisation.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::{DateTime, TimeZone, Utc};
use platform_redis::messages::UsageEvent;
use platform_redis::{RedisClients, RedisSettings};
use platform_testing::{RedisServer, unique_prefix};
use usage_meter::domain::usage::{
    EventRules, Metric, MetricSet, Month, OrgId, ValidEvent, validate,
};
use usage_meter::store::{self, Fence, Retention};

const WINDOW_SECS: u64 = 100;

fn retention() -> Retention {
    Retention {
        counter_ttl_secs: 86_400,
        events_ttl_secs: 86_400,
        events_per_org: 100,
        idempotency_window_secs: WINDOW_SECS,
        durable_marks: MetricSet::of(&[Metric::DonationProcessed]),
    }
}

async fn clients(test: &str) -> RedisClients {
    let server = RedisServer::shared();
    let clients =
        RedisClients::connect(&RedisSettings::for_url(&server.url(), &unique_prefix(test)))
            .await
            .expect("connect");
    usage_meter::store::sync::open_without_durable_copy(&clients).await.expect("open recording");
    clients
}

fn event(org: &str, metric: &str, value: i64, key: Option<&str>) -> ValidEvent {
    let rules = EventRules {
        max_age: chrono::Duration::days(1),
        max_future_skew: chrono::Duration::minutes(5),
    };
    let raw = UsageEvent {
        org_id: org.into(),
        metric: metric.into(),
        value,
        occurred_at: None,
        idempotency_key: key.map(Into::into),
        metadata: Some(serde_json::json!({ "value": value })),
    };
    validate(&raw, Utc::now(), &rules).unwrap()
}

/// A clock reading `secs` seconds into bucket 10 000 000 of the window.
fn at(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(10_000_000 * WINDOW_SECS as i64 + secs, 0).unwrap()
}

async fn counter(clients: &RedisClients, org: &str, field: &str) -> i64 {
    store::counter(clients, &OrgId::parse(org).unwrap(), Month::current(), field).await.unwrap()
}

#[tokio::test]
async fn a_key_is_refused_within_its_window_across_a_bucket_rotation_and_forgotten_after() {
    // Arrange
    let clients = clients("usage-idem-window").await;
    let first = event("o1", "sms_sent", 5, Some("k"));
    let other_org = event("o2", "sms_sent", 7, Some("k"));

    // Act: counted in the last second of a bucket, repeated 2 s later (the next bucket), then
    // 150 s after the first time (two buckets on: more than a window later).
    let counted_first =
        store::record_at(&clients, &retention(), &Fence::default(), &[&first], at(99))
            .await
            .unwrap();
    let same_bucket =
        store::record_at(&clients, &retention(), &Fence::default(), &[&first], at(99))
            .await
            .unwrap();
    let next_bucket =
        store::record_at(&clients, &retention(), &Fence::default(), &[&first], at(101))
            .await
            .unwrap();
    let elsewhere =
        store::record_at(&clients, &retention(), &Fence::default(), &[&other_org], at(101))
            .await
            .unwrap();
    let two_on = store::record_at(&clients, &retention(), &Fence::default(), &[&first], at(249))
        .await
        .unwrap();

    // Assert
    assert_eq!(counted_first, vec![true]);
    assert_eq!(same_bucket, vec![false], "seen 0 s ago");
    assert_eq!(next_bucket, vec![false], "seen 2 s ago, in the previous bucket");
    assert_eq!(elsewhere, vec![true], "keys are scoped per organisation");
    assert_eq!(two_on, vec![true], "seen 150 s ago: outside the window, may count again");
    assert_eq!(counter(&clients, "o1", "sms_sent").await, 10);
    assert_eq!(counter(&clients, "o2", "sms_sent").await, 7);
}

#[tokio::test]
async fn repeats_within_one_batch_count_once_and_the_rest_of_the_batch_counts() {
    // Arrange: a key repeated in its own slot and in another metric's slot, an unkeyed event,
    // a repeated gauge, and a key already counted by an earlier batch.
    let clients = clients("usage-idem-batch").await;
    let earlier = event("o1", "email_sent", 100, Some("old"));
    store::record_at(&clients, &retention(), &Fence::default(), &[&earlier], at(10)).await.unwrap();
    let batch = [
        event("o1", "sms_sent", 2, Some("k1")),
        event("o1", "sms_sent", 2, Some("k1")),
        event("o1", "email_sent", 3, Some("k2")),
        event("o1", "email_sent", 9, Some("k1")),
        event("o1", "sms_sent", 1, None),
        event("o1", "storage_used", 500, Some("g1")),
        event("o1", "storage_used", 900, Some("g1")),
        event("o1", "email_sent", 40, Some("old")),
        event("o1", "donation_processed", 2500, Some("d1")),
        event("o1", "donation_processed", 2500, Some("d1")),
    ];
    let refs: Vec<&ValidEvent> = batch.iter().collect();

    // Act
    let counted =
        store::record_at(&clients, &retention(), &Fence::default(), &refs, at(20)).await.unwrap();

    // Assert
    assert_eq!(counted, vec![true, false, true, false, true, true, false, false, true, false]);
    assert_eq!(counter(&clients, "o1", "sms_sent").await, 3);
    assert_eq!(counter(&clients, "o1", "email_sent").await, 103);
    assert_eq!(counter(&clients, "o1", "storage_used").await, 500);
    assert_eq!(counter(&clients, "o1", "donation_processed").await, 1);
    assert_eq!(counter(&clients, "o1", "donation_volume_cents").await, 2500);
    let details = store::recent_events(&clients, &OrgId::parse("o1").unwrap(), 100).await.unwrap();
    assert_eq!(details.len(), 6, "one detail event per counted event: {details:?}");
    assert_eq!(details[0]["metric"], "donation_processed", "newest first");
}

#[tokio::test]
async fn keys_counted_by_an_earlier_batch_are_taken_out_of_their_slots_total_wherever_they_sit() {
    // Arrange: an earlier batch counted "a" (sms) and "d1" (a donation); the next batch repeats
    // them in the middle of slots of values with different lengths.
    let clients = clients("usage-idem-subtract").await;
    let earlier = [
        event("o1", "sms_sent", 7, Some("a")),
        event("o1", "donation_processed", 2500, Some("d1")),
    ];
    let earlier_refs: Vec<&ValidEvent> = earlier.iter().collect();
    store::record_at(&clients, &retention(), &Fence::default(), &earlier_refs, at(10))
        .await
        .unwrap();
    let batch = [
        event("o1", "sms_sent", 12, Some("x")),
        event("o1", "sms_sent", 345, Some("a")),
        event("o1", "sms_sent", 6789, Some("y")),
        event("o1", "sms_sent", 1, None),
        event("o1", "donation_processed", 1999, Some("d2")),
        event("o1", "donation_processed", 2500, Some("d1")),
        event("o1", "donation_processed", 30_000, Some("d3")),
    ];
    let refs: Vec<&ValidEvent> = batch.iter().collect();

    // Act
    let counted =
        store::record_at(&clients, &retention(), &Fence::default(), &refs, at(20)).await.unwrap();

    // Assert
    assert_eq!(counted, vec![true, false, true, true, true, false, true]);
    assert_eq!(counter(&clients, "o1", "sms_sent").await, 7 + 12 + 6789 + 1);
    assert_eq!(counter(&clients, "o1", "donation_processed").await, 3);
    assert_eq!(counter(&clients, "o1", "donation_volume_cents").await, 2500 + 1999 + 30_000);
    let top = store::top(&clients, "donation_volume_cents", Month::current(), 10).await.unwrap();
    assert_eq!(top, vec![("o1".to_owned(), 2500 + 1999 + 30_000)]);
}

#[tokio::test]
async fn a_month_changed_after_the_flusher_read_its_mark_stays_dirty() {
    // Arrange: o1 and o2 recorded; the flusher reads the marks; then o1 changes again.
    let clients = clients("usage-dirty-generation").await;
    let first = [event("o1", "sms_sent", 1, Some("a")), event("o2", "sms_sent", 1, Some("b"))];
    let first_refs: Vec<&ValidEvent> = first.iter().collect();
    store::record_at(&clients, &retention(), &Fence::default(), &first_refs, at(10)).await.unwrap();
    let read = store::sync::dirty(&clients).await.unwrap();
    let later = event("o1", "sms_sent", 1, Some("c"));
    store::record_at(&clients, &retention(), &Fence::default(), &[&later], at(11)).await.unwrap();

    // Act: the flusher clears what it read.
    let cleared = usage_meter::store::sync::clear_flushed(&clients, &read, &[]).await.unwrap();

    // Assert: o2's mark is gone; o1's, changed since, is still there.
    assert_eq!(read.len(), 2);
    assert_eq!(cleared, 1);
    let left: Vec<String> =
        store::sync::dirty(&clients).await.unwrap().into_iter().map(|m| m.org).collect();
    assert_eq!(left, vec!["o1".to_owned()]);
}

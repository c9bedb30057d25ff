//! The relay against real Redis and Postgres: acknowledged while Redis is down, refilled after
//! Redis lost everything or its tail, sequence gaps, and two replicas.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{TestApp, event_with_id, unique_event_id};
use platform_redis::StreamName;
use platform_redis::fred::prelude::*;
use platform_redis::fred::types::CustomCommand;
use platform_redis::fred::types::streams::XReadResponse;
use platform_testing::{RedisServer, eventually};
use serde_json::Value;

/// Delivers `n` fresh payment events; returns their ids in delivery order.
async fn deliver_new(app: &TestApp, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..n {
        let id = unique_event_id();
        let (status, answer) = app.deliver(&event_with_id("payment_intent.succeeded", &id)).await;
        assert_eq!(status, 200, "{answer}");
        ids.push(id);
    }
    ids
}

async fn seq_of(app: &TestApp, event_id: &str) -> i64 {
    app.ledger_row(event_id).await.unwrap().2.unwrap()
}

async fn durable_checkpoint(app: &TestApp, group: &str) -> Option<i64> {
    sqlx::query_scalar("SELECT seq FROM stream_group_checkpoints WHERE group_name = $1")
        .bind(group)
        .fetch_optional(app.db())
        .await
        .unwrap()
}

/// Reads what is new for `group` (as consumer `c`); returns the event ids.
async fn read_group(app: &TestApp, group: &str) -> Vec<(String, String)> {
    let reply: XReadResponse<String, String, String, String> = app
        .redis
        .primary()
        .xreadgroup_map(group, "c", Some(100), None, false, app.stream_key(), ">")
        .await
        .unwrap();
    reply
        .into_values()
        .flatten()
        .map(|(entry, fields)| {
            let data: Value = serde_json::from_str(&fields["data"]).unwrap();
            (entry, data["eventId"].as_str().unwrap().to_owned())
        })
        .collect()
}

#[tokio::test]
async fn with_redis_down_deliveries_are_acknowledged_and_reach_the_stream_once_it_is_back() {
    // Arrange
    let redis = RedisServer::start().unwrap();
    let app = TestApp::start(&redis.url(), &[]).await;
    redis.stop();

    // Act
    let ids = deliver_new(&app, 5).await;
    redis.restart().unwrap();

    // Assert
    app.stream_has(5).await;
    assert_eq!(app.streamed_ids().await, ids);
}

#[tokio::test]
async fn after_redis_lost_everything_the_stream_is_refilled_from_the_group_checkpoint_not_the_start()
 {
    // Arrange: a group that acknowledged the first five events, then three more events.
    let redis = RedisServer::start().unwrap();
    let app = TestApp::start(&redis.url(), &[]).await;
    let () = app.redis.primary().xgroup_create(app.stream_key(), "g", "0", true).await.unwrap();
    let acked = deliver_new(&app, 5).await;
    app.stream_has(5).await;
    let read = read_group(&app, "g").await;
    let ids: Vec<&str> = read.iter().map(|(entry, _)| entry.as_str()).collect();
    let _: i64 = app.redis.primary().xack(app.stream_key(), "g", ids).await.unwrap();
    let fifth = seq_of(&app, &acked[4]).await;
    eventually("the group's checkpoint is stored", || async {
        durable_checkpoint(&app, "g").await == Some(fifth)
    })
    .await;
    let pending = deliver_new(&app, 3).await;
    app.stream_has(8).await;

    // Act
    let () = app.redis.primary().flushall(false).await.unwrap();
    app.stream_has(3).await;
    let after_loss = read_group(&app, "g").await;
    let newer = deliver_new(&app, 1).await;
    app.stream_has(4).await;

    // Assert: only what the group had not acknowledged came back, at its own ids, in order.
    let refilled: Vec<String> = after_loss.iter().map(|(_, id)| id.clone()).collect();
    assert_eq!(refilled, pending);
    for (entry, id) in &after_loss {
        assert_eq!(*entry, format!("{}-0", seq_of(&app, id).await));
    }
    assert_eq!(
        read_group(&app, "g").await.into_iter().map(|(_, id)| id).collect::<Vec<_>>(),
        newer
    );
    let checkpoints = app.redis.keys().stream_group_checkpoints(StreamName::StripeEvents);
    eventually("the checkpoint is mirrored into Redis again", || async {
        let mirrored: Option<String> = app.redis.primary().hget(&checkpoints, "g").await.unwrap();
        mirrored.is_some()
    })
    .await;
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(
            "outbox_redriven_total{service=\"webhook-ingest\",stream=\"stripe-events\"} 3"
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_stream_restored_from_an_older_snapshot_gets_its_lost_tail_appended_again() {
    // Arrange: a snapshot after three events, then two more.
    let redis = RedisServer::start().unwrap();
    let app = TestApp::start(&redis.url(), &[]).await;
    let mut ids = deliver_new(&app, 3).await;
    app.stream_has(3).await;
    let saved: String = app
        .redis
        .primary()
        .custom(CustomCommand::new_static("SAVE", None, false), Vec::<String>::new())
        .await
        .unwrap();
    assert_eq!(saved, "OK");
    ids.extend(deliver_new(&app, 2).await);
    app.stream_has(5).await;

    // Act: a crash, and a restart from the older snapshot (as `everysec` or a lagging replica).
    redis.restart().unwrap();

    // Assert
    eventually("the restored stream holds all five events again", || async {
        app.streamed_ids().await == ids
    })
    .await;
}

#[tokio::test]
async fn a_higher_sequence_waits_while_a_lower_one_may_still_commit() {
    // Arrange: a transaction holds the next seq, uncommitted.
    let app = TestApp::shared(&[]).await;
    let hold = |id: String| {
        let db = app.db().clone();
        async move {
            let mut tx = db.begin().await.unwrap();
            sqlx::query("SELECT pg_current_xact_id()").execute(&mut *tx).await.unwrap();
            sqlx::query(
                "INSERT INTO webhook_events (event_id, event_type, created, livemode, status, raw)
                 VALUES ($1, 'payment_intent.succeeded', 1, false, 'received', '{}')",
            )
            .bind(id)
            .execute(&mut *tx)
            .await
            .unwrap();
            tx
        }
    };
    let rolled_back = hold(unique_event_id()).await;

    // Act and assert: nothing passes the open transaction; its rollback leaves a final gap.
    let after_rollback = deliver_new(&app, 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(app.stream().await.is_empty(), "the later row waits");
    rolled_back.rollback().await.unwrap();
    app.stream_has(1).await;
    assert_eq!(app.streamed_ids().await, after_rollback);

    // Act and assert: a committed lower seq is appended before the higher one.
    let committed_id = unique_event_id();
    let committed = hold(committed_id.clone()).await;
    let later = deliver_new(&app, 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.stream().await.len(), 1, "the later row waits again");
    committed.commit().await.unwrap();
    app.stream_has(3).await;
    assert_eq!(app.streamed_ids().await, [after_rollback, vec![committed_id], later].concat());
    let metrics = app.metrics().await;
    assert!(
        metrics.lines().any(|line| line.starts_with("outbox_gaps_skipped_total{")
            && line.contains(r#"stream="stripe-events""#)),
        "{metrics}"
    );
}

#[tokio::test]
async fn two_replicas_relay_every_event_once_in_ledger_order() {
    // Arrange
    let first = TestApp::shared(&[]).await;
    let second =
        TestApp::start_on(&RedisServer::shared().url(), first.database_url(), &first.prefix, &[])
            .await;

    // Act
    let bodies: Vec<String> =
        (0..20).map(|_| event_with_id("payment_intent.succeeded", &unique_event_id())).collect();
    let mut sends = Vec::new();
    for (i, body) in bodies.iter().enumerate() {
        let app = if i % 2 == 0 { &first } else { &second };
        sends.push(app.deliver(body));
    }
    let answers = futures::future::join_all(sends).await;
    first.stream_has(20).await;

    // Assert
    assert!(answers.iter().all(|(status, _)| *status == 200), "{answers:?}");
    let ledger_order: Vec<String> =
        sqlx::query_scalar("SELECT event_id FROM webhook_events ORDER BY seq")
            .fetch_all(first.db())
            .await
            .unwrap();
    assert_eq!(first.streamed_ids().await, ledger_order);
}

#[tokio::test]
async fn a_stream_holding_another_writers_ids_is_refilled_for_its_group_once_deleted() {
    // Arrange: a group that read and acknowledged an entry webhook-ingest never wrote (a
    // time-based id, far above any ledger seq); then two deliveries Redis cannot take after it.
    let redis = RedisServer::start().unwrap();
    let app = TestApp::start(&redis.url(), &[]).await;
    let primary = app.redis.primary();
    let () = primary.xgroup_create(app.stream_key(), "g", "$", true).await.unwrap();
    let _: String = primary.xadd(app.stream_key(), false, None, "*", ("data", "{}")).await.unwrap();
    let foreign: XReadResponse<String, String, String, String> =
        primary.xreadgroup_map("g", "c", None, None, false, app.stream_key(), ">").await.unwrap();
    let foreign_ids: Vec<String> = foreign.into_values().flatten().map(|(id, _)| id).collect();
    let _: i64 = primary.xack(app.stream_key(), "g", foreign_ids).await.unwrap();
    let ids = deliver_new(&app, 2).await;
    eventually("the group's checkpoint is stored", || async {
        durable_checkpoint(&app, "g").await.is_some()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(app.stream().await.len(), 1, "nothing can be appended after the foreign id");

    // Act: the operator deletes the drained stream.
    let _: i64 = primary.del(app.stream_key()).await.unwrap();

    // Assert: the group comes back and gets both events.
    app.stream_has(2).await;
    let read: Vec<String> = read_group(&app, "g").await.into_iter().map(|(_, id)| id).collect();
    assert_eq!(read, ids);
}

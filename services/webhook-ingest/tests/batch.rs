//! Group commit of the ledger (`src/db/batch.rs`) against a real Postgres: one statement and one
//! commit per batch, each waiter's own outcome, failures reaching every waiter or only the bad
//! row's, repeated ids.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use platform_testing::PostgresServer;
use prometheus_client::metrics::histogram::Histogram;
use sqlx::PgPool;
use webhook_ingest::db::batch::{BatchLimits, Batcher, SubmitError};
use webhook_ingest::db::ledger::{InsertBatch, NewRow, Status};

async fn ledger_db() -> PgPool {
    let database = PostgresServer::shared().create_database().await.unwrap();
    let db = PgPool::connect(&database.url).await.unwrap();
    sqlx::migrate!().run(&db).await.unwrap();
    db
}

fn limits(max_rows: usize, linger_ms: u64) -> BatchLimits {
    BatchLimits { max_rows, linger: Duration::from_millis(linger_ms), committers: 1 }
}

fn rows_histogram() -> Histogram {
    Histogram::new([1.0, 2.0, 4.0, 8.0, 16.0])
}

fn row(id: &str) -> NewRow {
    NewRow {
        event_id: id.to_owned(),
        event_type: "payment_intent.succeeded".to_owned(),
        created: 1,
        livemode: false,
        api_version: None,
        object_id: Some("pi_1".to_owned()),
        customer_id: None,
        status: Status::Received,
        reason: None,
        traceparent: None,
        raw: Arc::from(format!(r#"{{"id":"{id}"}}"#)),
    }
}

#[tokio::test]
async fn a_full_batch_is_inserted_in_one_transaction_and_each_waiter_gets_its_own_row() {
    // Arrange: the batch closes only when full (the linger is far longer than the test).
    let db = ledger_db().await;
    let inserts = Batcher::<InsertBatch>::spawn(db.clone(), limits(8, 60_000), rows_histogram());
    let rows: Vec<NewRow> = (0..8).map(|n| row(&format!("evt_batch_{n}"))).collect();

    // Act
    let outcomes = futures::future::join_all(rows.iter().cloned().map(|r| inserts.submit(r))).await;

    // Assert
    let mut seqs = Vec::new();
    for outcome in outcomes {
        let recorded = outcome.unwrap();
        assert!(recorded.inserted);
        assert_eq!(recorded.status, Status::Received);
        seqs.push(recorded.seq.unwrap());
    }
    seqs.dedup();
    assert_eq!(seqs.len(), 8, "each row its own seq");
    let (count, transactions): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT xmin::text) FROM webhook_events")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!((count, transactions), (8, 1), "eight rows, one transaction (one commit)");
}

#[tokio::test]
async fn a_failed_batch_answers_every_waiter_with_the_error_and_writes_nothing() {
    // Arrange: a trigger makes every insert fail.
    let db = ledger_db().await;
    for statement in [
        "CREATE FUNCTION reject_insert() RETURNS trigger LANGUAGE plpgsql AS
             $$ BEGIN RAISE EXCEPTION 'ledger unavailable'; END $$",
        "CREATE TRIGGER reject_insert BEFORE INSERT ON webhook_events
             FOR EACH ROW EXECUTE FUNCTION reject_insert()",
    ] {
        sqlx::query(statement).execute(&db).await.unwrap();
    }
    let inserts = Batcher::<InsertBatch>::spawn(db.clone(), limits(5, 60_000), rows_histogram());

    // Act
    let outcomes =
        futures::future::join_all((0..5).map(|n| inserts.submit(row(&format!("evt_fail_{n}")))))
            .await;

    // Assert
    assert_eq!(outcomes.len(), 5);
    for outcome in outcomes {
        assert!(matches!(outcome, Err(SubmitError::Failed(_))), "{outcome:?}");
    }
    let count: i64 =
        sqlx::query_scalar("SELECT count(*) FROM webhook_events").fetch_one(&db).await.unwrap();
    assert_eq!(count, 0);
}

#[tokio::test]
async fn a_repeated_event_id_goes_to_the_next_batch_and_finds_its_row_there() {
    // Arrange
    let db = ledger_db().await;
    let inserts = Batcher::<InsertBatch>::spawn(db.clone(), limits(3, 50), rows_histogram());

    // Act: the same id twice (a retry racing the first delivery), plus another.
    let (first, second, other) = tokio::join!(
        inserts.submit(row("evt_twice")),
        inserts.submit(row("evt_twice")),
        inserts.submit(row("evt_other")),
    );

    // Assert: no statement met its own row twice; the second finds the first's row.
    let (first, second, other) = (first.unwrap(), second.unwrap(), other.unwrap());
    assert!(first.inserted);
    assert!(!second.inserted);
    assert_eq!(second.seq, first.seq);
    assert!(other.inserted);
}

#[tokio::test]
async fn a_batch_refused_for_one_rows_data_fails_only_that_row() {
    // Arrange: a constraint only one row breaks; the batch closes only when full.
    let db = ledger_db().await;
    sqlx::query("ALTER TABLE webhook_events ADD CONSTRAINT no_bad CHECK (event_id <> 'evt_bad')")
        .execute(&db)
        .await
        .unwrap();
    let inserts = Batcher::<InsertBatch>::spawn(db.clone(), limits(4, 60_000), rows_histogram());

    // Act
    let (a, bad, b, c) = tokio::join!(
        inserts.submit(row("evt_a")),
        inserts.submit(row("evt_bad")),
        inserts.submit(row("evt_b")),
        inserts.submit(row("evt_c")),
    );

    // Assert
    assert!(matches!(bad, Err(SubmitError::Failed(_))), "{bad:?}");
    for good in [a, b, c] {
        assert!(good.unwrap().inserted);
    }
    let count: i64 =
        sqlx::query_scalar("SELECT count(*) FROM webhook_events").fetch_one(&db).await.unwrap();
    assert_eq!(count, 3);
}

#[tokio::test]
async fn a_repeated_event_id_is_answered_even_while_the_other_committer_waits_for_traffic() {
    // Arrange: two committers; when the first carries the repeat over, the second is already
    // holding the queue, waiting for a request that never comes.
    let db = ledger_db().await;
    let limits = BatchLimits { max_rows: 4, linger: Duration::ZERO, committers: 2 };
    let inserts = Batcher::<InsertBatch>::spawn(db.clone(), limits, rows_histogram());

    // Act (bounded, so a stalled repeat fails the test instead of hanging it)
    let both = tokio::time::timeout(Duration::from_secs(30), async {
        tokio::join!(inserts.submit(row("evt_repeat")), inserts.submit(row("evt_repeat")),)
    })
    .await;

    // Assert
    let (first, second) = both.expect("both deliveries of the id were answered");
    let (first, second) = (first.unwrap(), second.unwrap());
    assert_eq!(u8::from(first.inserted) + u8::from(second.inserted), 1, "inserted once");
    assert_eq!(first.seq, second.seq);
}

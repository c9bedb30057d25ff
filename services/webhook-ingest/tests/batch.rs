//! Group commit of the ledger (`src/batch.rs`) against a real Postgres: one statement and one
//! commit per batch, each waiter's own outcome, failures reaching every waiter, repeated ids.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use platform_testing::PostgresServer;
use prometheus_client::metrics::histogram::Histogram;
use sqlx::PgPool;
use webhook_ingest::batch::{BatchLimits, Batcher, SubmitError};
use webhook_ingest::event::StripeEvent;
use webhook_ingest::ledger::{Status, StreamedInsertBatch, StreamedRow, TouchBatch};

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

fn row(id: &str, stream_id: &str) -> StreamedRow {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/stripe/events/payment_intent.succeeded.json");
    let body =
        std::fs::read_to_string(path).unwrap().replacen("evt_000000000000000000000000", id, 1);
    StreamedRow { event: StripeEvent::parse(body.as_bytes()).unwrap(), stream_id: stream_id.into() }
}

#[tokio::test]
async fn a_full_batch_is_inserted_in_one_transaction_and_each_waiter_gets_its_own_row() {
    // Arrange: the batch closes only when full (the linger is far longer than the test).
    let db = ledger_db().await;
    let inserts =
        Batcher::<StreamedInsertBatch>::spawn(db.clone(), limits(8, 60_000), rows_histogram());
    let rows: Vec<StreamedRow> =
        (0..8).map(|n| row(&format!("evt_batch_{n}"), &format!("1-{n}"))).collect();

    // Act
    let outcomes = futures::future::join_all(rows.iter().cloned().map(|r| inserts.submit(r))).await;

    // Assert
    for (n, outcome) in outcomes.into_iter().enumerate() {
        let recorded = outcome.unwrap();
        assert!(recorded.inserted);
        assert_eq!(recorded.status, Status::Streamed);
        assert_eq!(recorded.stream_id, Some(format!("1-{n}")));
    }
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
    let inserts =
        Batcher::<StreamedInsertBatch>::spawn(db.clone(), limits(5, 60_000), rows_histogram());

    // Act
    let outcomes = futures::future::join_all(
        (0..5).map(|n| inserts.submit(row(&format!("evt_fail_{n}"), "1-0"))),
    )
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
    let inserts =
        Batcher::<StreamedInsertBatch>::spawn(db.clone(), limits(3, 50), rows_histogram());

    // Act: the same id twice (as after a lost claim), plus another.
    let (first, second, other) = tokio::join!(
        inserts.submit(row("evt_twice", "1-1")),
        inserts.submit(row("evt_twice", "1-2")),
        inserts.submit(row("evt_other", "1-3")),
    );

    // Assert: no statement met its own row twice; the second keeps the first's stream id.
    let (first, second, other) = (first.unwrap(), second.unwrap(), other.unwrap());
    assert!(first.inserted);
    assert!(!second.inserted);
    assert_eq!(second.stream_id, Some("1-1".to_owned()));
    assert!(other.inserted);
}

#[tokio::test]
async fn a_touch_batch_counts_a_delivery_for_known_ids_and_reports_new_ids_as_absent() {
    // Arrange
    let db = ledger_db().await;
    let inserts = Batcher::<StreamedInsertBatch>::spawn(db.clone(), limits(1, 0), rows_histogram());
    inserts.submit(row("evt_known", "1-1")).await.unwrap();
    let touches = Batcher::<TouchBatch>::spawn(db.clone(), limits(2, 60_000), rows_histogram());

    // Act
    let (known, new) =
        tokio::join!(touches.submit("evt_known".to_owned()), touches.submit("evt_new".to_owned()),);

    // Assert
    let known = known.unwrap().expect("the known id has a row");
    assert_eq!((known.status, known.stream_id), (Status::Streamed, Some("1-1".to_owned())));
    assert_eq!(new.unwrap(), None);
    let deliveries: i32 =
        sqlx::query_scalar("SELECT deliveries FROM webhook_events WHERE event_id = 'evt_known'")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(deliveries, 2);
}

#[tokio::test]
async fn a_repeated_event_id_is_answered_even_while_the_other_committer_waits_for_traffic() {
    // Arrange: two committers; when the first carries the repeat over, the second is already
    // holding the queue, waiting for a request that never comes.
    let db = ledger_db().await;
    let limits = BatchLimits { max_rows: 4, linger: Duration::ZERO, committers: 2 };
    let inserts = Batcher::<StreamedInsertBatch>::spawn(db.clone(), limits, rows_histogram());

    // Act (bounded, so a stalled repeat fails the test instead of hanging it)
    let both = tokio::time::timeout(Duration::from_secs(30), async {
        tokio::join!(
            inserts.submit(row("evt_repeat", "1-1")),
            inserts.submit(row("evt_repeat", "1-2")),
        )
    })
    .await;

    // Assert
    let (first, second) = both.expect("both deliveries of the id were answered");
    let (first, second) = (first.unwrap(), second.unwrap());
    assert_eq!(u8::from(first.inserted) + u8::from(second.inserted), 1, "inserted once");
    assert_eq!(first.stream_id, second.stream_id);
}

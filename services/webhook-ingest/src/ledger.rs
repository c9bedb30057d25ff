//! The Postgres ledger (`webhook_events`): the durable record of every event id ever accepted.
//!
//! One row per event id (primary key), so a second insert of the same id is a no-op that reports
//! the row as it is. Statuses: `streamed` (on the stream as `stream_id`; a new event's row is
//! inserted so, right after the append), `ignored` (type not in the allow-list), `received`
//! (stored, not yet known to be on the stream: written only by earlier versions, which inserted
//! before appending, and still honoured).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{FromRow, PgPool};

use crate::batch::BatchOp;
use crate::event::StripeEvent;

/// Where an event stands in the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Received,
    Streamed,
    Ignored,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Received => "received",
            Self::Streamed => "streamed",
            Self::Ignored => "ignored",
        }
    }

    fn parse(text: &str) -> Result<Self, sqlx::Error> {
        match text {
            "received" => Ok(Self::Received),
            "streamed" => Ok(Self::Streamed),
            "ignored" => Ok(Self::Ignored),
            other => Err(sqlx::Error::Decode(format!("unknown ledger status {other:?}").into())),
        }
    }
}

/// The row as [`record`] left it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// False when the row existed before this call.
    pub inserted: bool,
    pub status: Status,
    pub stream_id: Option<String>,
}

#[derive(FromRow)]
struct RecordedRow {
    inserted: bool,
    status: String,
    stream_id: Option<String>,
}

impl TryFrom<RecordedRow> for Recorded {
    type Error = sqlx::Error;

    fn try_from(row: RecordedRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            inserted: row.inserted,
            status: Status::parse(&row.status)?,
            stream_id: row.stream_id,
        })
    }
}

/// The `ON CONFLICT … DO UPDATE SET` assignments both inserts share: a row still `received` takes
/// the new status, stream id and time; a row already final (`streamed`, `ignored`) keeps its own.
macro_rules! final_state_kept {
    () => {
        "status = CASE WHEN webhook_events.status = 'received' THEN EXCLUDED.status
                       ELSE webhook_events.status END,
         stream_id = CASE WHEN webhook_events.status = 'received' THEN EXCLUDED.stream_id
                          ELSE webhook_events.stream_id END,
         streamed_at = CASE WHEN webhook_events.status = 'received' THEN EXCLUDED.streamed_at
                            ELSE webhook_events.streamed_at END"
    };
}

/// Inserts the event with `status` (and `stream_id` when streamed) unless its id is already
/// there. An existing row still `received` takes the new status and stream id (the repair after a
/// crash); rows in any other state keep theirs. `count_delivery` adds this delivery to an existing
/// row (false when [`TouchBatch`] already counted it). Returns the row's state.
#[tracing::instrument(name = "ledger.record", skip_all, fields(event_id = %event.id, status = status.as_str()))]
pub async fn record(
    db: &PgPool,
    event: &StripeEvent,
    status: Status,
    stream_id: Option<&str>,
    count_delivery: bool,
) -> Result<Recorded, sqlx::Error> {
    // `xmax = 0` is true only for a row this statement inserted (an update sets xmax).
    let row: RecordedRow = sqlx::query_as(concat!(
        "INSERT INTO webhook_events
             (event_id, event_type, created, livemode, api_version, object_id, customer_id, status,
              stream_id, streamed_at, raw)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, CASE WHEN $9::text IS NULL THEN NULL ELSE now() END, $10)
         ON CONFLICT (event_id) DO UPDATE SET
             deliveries = webhook_events.deliveries + CASE WHEN $11 THEN 1 ELSE 0 END,
             ",
        final_state_kept!(),
        "
         RETURNING (xmax = 0) AS inserted, status, stream_id"
        ),
    )
    .bind(&event.id)
    .bind(&event.event_type)
    .bind(event.created)
    .bind(event.livemode)
    .bind(&event.api_version)
    .bind(&event.object_id)
    .bind(&event.customer_id)
    .bind(status.as_str())
    .bind(stream_id)
    .bind(&*event.raw)
    .bind(count_delivery)
    .fetch_one(db)
    .await?;
    Recorded::try_from(row)
}

/// The ledger check before an append, for a batch of event ids in one statement (see
/// [`crate::batch`]): counts one more delivery of each id already in the ledger and returns its
/// row; `None` for a new id (no row matched: nothing written, so no commit to wait for).
#[derive(Debug)]
pub struct TouchBatch;

impl BatchOp for TouchBatch {
    type Req = String;
    type Resp = Option<Recorded>;
    const NAME: &'static str = "ledger.touch";

    fn key(req: &String) -> &str {
        req
    }

    async fn run(db: &PgPool, reqs: &[String]) -> Result<Vec<Option<Recorded>>, sqlx::Error> {
        let rows: Vec<KeyedRow> = sqlx::query_as(
            "UPDATE webhook_events SET deliveries = deliveries + 1 WHERE event_id = ANY($1)
             RETURNING event_id, false AS inserted, status, stream_id",
        )
        .bind(reqs)
        .fetch_all(db)
        .await?;
        let mut found = by_event_id(rows)?;
        Ok(reqs.iter().map(|id| found.remove(id.as_str())).collect())
    }
}

/// A new event's row, inserted `streamed` as `stream_id` right after its append.
#[derive(Debug, Clone)]
pub struct StreamedRow {
    pub event: StripeEvent,
    pub stream_id: String,
}

/// [`record`]`(event, Streamed, Some(stream_id), false)` for a batch of rows in one statement
/// and one commit (see [`crate::batch`]). Same conflict rule: an existing `received` row takes
/// the status and stream id, any other keeps its own.
#[derive(Debug)]
pub struct StreamedInsertBatch;

impl BatchOp for StreamedInsertBatch {
    type Req = StreamedRow;
    type Resp = Recorded;
    const NAME: &'static str = "ledger.record_streamed";

    fn key(req: &StreamedRow) -> &str {
        &req.event.id
    }

    async fn run(db: &PgPool, reqs: &[StreamedRow]) -> Result<Vec<Recorded>, sqlx::Error> {
        let column = |f: fn(&StreamedRow) -> Option<&str>| -> Vec<Option<&str>> {
            reqs.iter().map(f).collect()
        };
        let rows: Vec<KeyedRow> = sqlx::query_as(concat!(
            "INSERT INTO webhook_events
                 (event_id, event_type, created, livemode, api_version, object_id, customer_id,
                  status, stream_id, streamed_at, raw)
             SELECT e.event_id, e.event_type, e.created, e.livemode, e.api_version, e.object_id,
                    e.customer_id, 'streamed', e.stream_id, now(), e.raw
             FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::bool[], $5::text[], $6::text[],
                         $7::text[], $8::text[], $9::text[])
                  AS e(event_id, event_type, created, livemode, api_version, object_id,
                       customer_id, stream_id, raw)
             ON CONFLICT (event_id) DO UPDATE SET
                 ",
            final_state_kept!(),
            "
             RETURNING event_id, (xmax = 0) AS inserted, status, stream_id"
        ))
        .bind(column(|r| Some(r.event.id.as_str())))
        .bind(column(|r| Some(r.event.event_type.as_str())))
        .bind(reqs.iter().map(|r| r.event.created).collect::<Vec<i64>>())
        .bind(reqs.iter().map(|r| r.event.livemode).collect::<Vec<bool>>())
        .bind(column(|r| r.event.api_version.as_deref()))
        .bind(column(|r| r.event.object_id.as_deref()))
        .bind(column(|r| r.event.customer_id.as_deref()))
        .bind(column(|r| Some(r.stream_id.as_str())))
        .bind(column(|r| Some(&*r.event.raw)))
        .fetch_all(db)
        .await?;
        let mut found = by_event_id(rows)?;
        reqs.iter()
            .map(|r| {
                found.remove(r.event.id.as_str()).ok_or_else(|| {
                    sqlx::Error::Protocol(format!(
                        "batched insert returned no row for {}",
                        r.event.id
                    ))
                })
            })
            .collect()
    }
}

#[derive(FromRow)]
struct KeyedRow {
    event_id: String,
    #[sqlx(flatten)]
    row: RecordedRow,
}

fn by_event_id(rows: Vec<KeyedRow>) -> Result<HashMap<String, Recorded>, sqlx::Error> {
    rows.into_iter().map(|r| Ok((r.event_id, Recorded::try_from(r.row)?))).collect()
}

/// Records an admin re-publish of the event as `stream_id`.
#[tracing::instrument(name = "ledger.mark_replayed", skip(db))]
pub async fn mark_replayed(
    db: &PgPool,
    event_id: &str,
    stream_id: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE webhook_events
         SET status = 'streamed', stream_id = $2, streamed_at = now(), replays = replays + 1
         WHERE event_id = $1",
    )
    .bind(event_id)
    .bind(stream_id)
    .execute(db)
    .await?;
    Ok(())
}

/// Records that a `received` event will not be streamed (its type left the allow-list).
pub async fn mark_ignored(db: &PgPool, event_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE webhook_events SET status = 'ignored' WHERE event_id = $1 AND status = 'received'",
    )
    .bind(event_id)
    .execute(db)
    .await?;
    Ok(())
}

/// One ledger row as the admin API shows it.
#[derive(Debug, Clone, Serialize, FromRow)]
#[serde(rename_all = "camelCase")]
pub struct LedgerEvent {
    pub event_id: String,
    pub event_type: String,
    pub created: i64,
    pub livemode: bool,
    pub api_version: Option<String>,
    pub object_id: Option<String>,
    pub customer_id: Option<String>,
    pub status: String,
    pub stream_id: Option<String>,
    pub deliveries: i32,
    pub replays: i32,
    pub received_at: DateTime<Utc>,
    pub streamed_at: Option<DateTime<Utc>>,
}

/// The admin-visible columns (a macro so queries stay static strings, as sqlx requires).
macro_rules! columns {
    () => {
        "event_id, event_type, created, livemode, api_version, object_id, customer_id, status, \
         stream_id, deliveries, replays, received_at, streamed_at"
    };
}

/// The newest `limit` events, optionally of one type.
#[tracing::instrument(name = "ledger.recent", skip(db))]
pub async fn recent(
    db: &PgPool,
    limit: i64,
    event_type: Option<&str>,
) -> Result<Vec<LedgerEvent>, sqlx::Error> {
    let sql = concat!(
        "SELECT ",
        columns!(),
        " FROM webhook_events WHERE ($1::text IS NULL OR event_type = $1) \
         ORDER BY received_at DESC, event_id DESC LIMIT $2"
    );
    sqlx::query_as(sql).bind(event_type).bind(limit).fetch_all(db).await
}

/// One event with its raw body, for replay.
pub async fn find(
    db: &PgPool,
    event_id: &str,
) -> Result<Option<(LedgerEvent, String)>, sqlx::Error> {
    #[derive(FromRow)]
    struct WithRaw {
        #[sqlx(flatten)]
        event: LedgerEvent,
        raw: String,
    }
    let sql = concat!("SELECT ", columns!(), ", raw FROM webhook_events WHERE event_id = $1");
    let row: Option<WithRaw> = sqlx::query_as(sql).bind(event_id).fetch_optional(db).await?;
    Ok(row.map(|r| (r.event, r.raw)))
}

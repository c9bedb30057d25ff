//! The Postgres ledger (`webhook_events`): every event id ever acknowledged, and the outbox of the
//! Stripe stream.
//!
//! One row per event id (primary key: the dedup), inserted before the 200 by group commit
//! ([`crate::db::batch`]). Each row takes the next `seq` in the same transaction, and the relay
//! ([`crate::workers::relay`]) appends rows to the stream in `seq` order as entries `<seq>-0`. Statuses:
//! `received` (to be relayed: it is on the stream once `seq` is at most the relay's
//! `relayed_seq`), `ignored` (type outside the allow-list: kept, never relayed), `unprocessable`
//! (authentic but against the event contract; `reason` says why), and `streamed` (appended by an
//! earlier version before the ledger became the outbox; such rows have no `seq`).

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{FromRow, PgPool};

use platform_service::relay::SNAPSHOT_COLUMNS;

use crate::db::batch::BatchOp;

/// Where an event stands in the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Received,
    Streamed,
    Ignored,
    Unprocessable,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Received => "received",
            Self::Streamed => "streamed",
            Self::Ignored => "ignored",
            Self::Unprocessable => "unprocessable",
        }
    }

    fn parse(text: &str) -> Result<Self, sqlx::Error> {
        match text {
            "received" => Ok(Self::Received),
            "streamed" => Ok(Self::Streamed),
            "ignored" => Ok(Self::Ignored),
            "unprocessable" => Ok(Self::Unprocessable),
            other => Err(sqlx::Error::Decode(format!("unknown ledger status {other:?}").into())),
        }
    }
}

/// A row to insert.
#[derive(Debug, Clone)]
pub struct NewRow {
    pub event_id: String,
    pub event_type: String,
    pub created: i64,
    pub livemode: bool,
    pub api_version: Option<String>,
    pub object_id: Option<String>,
    pub customer_id: Option<String>,
    pub status: Status,
    pub reason: Option<String>,
    pub traceparent: Option<String>,
    /// The body as delivered (escaped where Postgres text cannot hold it, unprocessable rows only).
    pub raw: Arc<str>,
}

/// The row as the insert left it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// False when the event id was there before (a duplicate delivery).
    pub inserted: bool,
    pub status: Status,
    /// Its place in the stream (`None` only for rows of earlier versions).
    pub seq: Option<i64>,
    pub reason: Option<String>,
}

#[derive(FromRow)]
struct RecordedRow {
    event_id: String,
    inserted: bool,
    status: String,
    seq: Option<i64>,
    reason: Option<String>,
}

/// The insert of concurrent deliveries' rows as one statement and one commit (see
/// [`crate::db::batch`]). A duplicate event id counts one more delivery and returns the row as it is.
#[derive(Debug)]
pub struct InsertBatch;

impl BatchOp for InsertBatch {
    type Req = NewRow;
    type Resp = Recorded;
    const NAME: &'static str = "ledger.insert";

    fn key(req: &NewRow) -> &str {
        &req.event_id
    }

    async fn run(db: &PgPool, reqs: &[NewRow]) -> Result<Vec<Recorded>, sqlx::Error> {
        let text =
            |f: fn(&NewRow) -> Option<&str>| -> Vec<Option<&str>> { reqs.iter().map(f).collect() };
        // One statement, one commit. The transaction must take its id before its first `seq`
        // (the relay's gap rule, platform_service::relay): CASE evaluates its condition before its result,
        // so `pg_current_xact_id()` assigns the id ahead of the first `nextval`.
        // `xmax = 0` is true only for a row this statement inserted (the update sets xmax).
        let rows: Vec<RecordedRow> = sqlx::query_as(
            "INSERT INTO webhook_events
                 (seq, event_id, event_type, created, livemode, api_version, object_id,
                  customer_id, status, reason, traceparent, raw)
             SELECT CASE WHEN pg_current_xact_id() IS NOT NULL
                         THEN nextval('webhook_events_seq') END, e.*
             FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::bool[], $5::text[],
                         $6::text[], $7::text[], $8::text[], $9::text[], $10::text[],
                         $11::text[]) AS e
             ON CONFLICT (event_id) DO UPDATE SET deliveries = webhook_events.deliveries + 1
             RETURNING event_id, (xmax = 0) AS inserted, status, seq, reason",
        )
        .bind(text(|r| Some(r.event_id.as_str())))
        .bind(text(|r| Some(r.event_type.as_str())))
        .bind(reqs.iter().map(|r| r.created).collect::<Vec<i64>>())
        .bind(reqs.iter().map(|r| r.livemode).collect::<Vec<bool>>())
        .bind(text(|r| r.api_version.as_deref()))
        .bind(text(|r| r.object_id.as_deref()))
        .bind(text(|r| r.customer_id.as_deref()))
        .bind(text(|r| Some(r.status.as_str())))
        .bind(text(|r| r.reason.as_deref()))
        .bind(text(|r| r.traceparent.as_deref()))
        .bind(text(|r| Some(&*r.raw)))
        .fetch_all(db)
        .await?;
        let mut found: HashMap<String, Recorded> = rows
            .into_iter()
            .map(|r| {
                let status = Status::parse(&r.status)?;
                Ok((
                    r.event_id,
                    Recorded { inserted: r.inserted, status, seq: r.seq, reason: r.reason },
                ))
            })
            .collect::<Result<_, sqlx::Error>>()?;
        reqs.iter()
            .map(|r| {
                found.remove(&r.event_id).ok_or_else(|| {
                    sqlx::Error::Protocol(format!(
                        "ledger insert returned no row for {}",
                        r.event_id
                    ))
                })
            })
            .collect()
    }
}

/// A row the relay appends, with the snapshot it was read in.
#[derive(Debug, Clone, FromRow)]
pub struct LedgerRow {
    pub seq: i64,
    pub status: String,
    pub event_id: String,
    pub event_type: String,
    pub created: i64,
    pub livemode: bool,
    pub api_version: Option<String>,
    pub object_id: Option<String>,
    pub customer_id: Option<String>,
    pub traceparent: Option<String>,
    pub raw: String,
    pub received_at: DateTime<Utc>,
    /// The reading snapshot's xmin: every transaction below it has ended.
    pub snapshot_xmin: i64,
    /// The reading snapshot's xmax: every transaction that had started is below it.
    pub snapshot_xmax: i64,
}

/// Rows after `after` (by `seq`, at most `limit`), each with the statement's snapshot bounds.
#[tracing::instrument(name = "ledger.outbox_after", skip(db))]
pub async fn outbox_after(
    db: &PgPool,
    after: i64,
    limit: i64,
) -> Result<Vec<LedgerRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT seq, status, event_id, event_type, created, livemode, api_version, object_id,
                customer_id, traceparent, raw, received_at, {SNAPSHOT_COLUMNS}
         FROM webhook_events WHERE seq > $1 ORDER BY seq LIMIT $2"
    )))
    .bind(after)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Gives the event the next `seq`, so the relay appends it again (admin replay); an ignored event
/// becomes `received`. `None` when the id is unknown; `Err` of its status when it is
/// unprocessable (replaying cannot help).
#[tracing::instrument(name = "ledger.requeue", skip(db))]
pub async fn requeue(
    db: &PgPool,
    event_id: &str,
) -> Result<Option<Result<i64, Status>>, sqlx::Error> {
    let mut tx = db.begin().await?;
    sqlx::query("SELECT pg_current_xact_id()").execute(&mut *tx).await?;
    let row: Option<(i64,)> = sqlx::query_as(
        "UPDATE webhook_events
         SET seq = nextval('webhook_events_seq'), status = 'received', replays = replays + 1
         WHERE event_id = $1 AND status <> 'unprocessable'
         RETURNING seq",
    )
    .bind(event_id)
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    if let Some((seq,)) = row {
        return Ok(Some(Ok(seq)));
    }
    let exists: Option<bool> =
        sqlx::query_scalar("SELECT true FROM webhook_events WHERE event_id = $1")
            .bind(event_id)
            .fetch_optional(db)
            .await?;
    Ok(exists.map(|_| Err(Status::Unprocessable)))
}

/// One ledger row as the admin API shows it.
#[derive(Debug, Clone, Serialize, FromRow, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LedgerEvent {
    pub event_id: String,
    pub event_type: String,
    pub created: i64,
    pub livemode: bool,
    pub api_version: Option<String>,
    pub object_id: Option<String>,
    pub customer_id: Option<String>,
    /// `received` rows the relay has appended read as `streamed`.
    #[schema(pattern = "^(received|streamed|ignored|unprocessable)$")]
    pub status: String,
    pub reason: Option<String>,
    pub stream_id: Option<String>,
    pub deliveries: i32,
    pub replays: i32,
    pub received_at: DateTime<Utc>,
}

/// The newest `limit` events, optionally of one type or status.
#[tracing::instrument(name = "ledger.recent", skip(db))]
pub async fn recent(
    db: &PgPool,
    limit: i64,
    event_type: Option<&str>,
    status: Option<&str>,
    stream: &str,
) -> Result<Vec<LedgerEvent>, sqlx::Error> {
    sqlx::query_as(
        "WITH relay AS (SELECT COALESCE(MAX(relayed_seq), 0) AS relayed
                        FROM stream_relay WHERE stream = $4),
         shown AS (
             SELECT e.*,
                    CASE WHEN e.status = 'received' AND e.seq <= relay.relayed THEN 'streamed'
                         ELSE e.status END AS shown_status,
                    CASE WHEN e.status = 'received' AND e.seq <= relay.relayed
                         THEN e.seq::text || '-0' ELSE e.stream_id END AS shown_stream_id
             FROM webhook_events e CROSS JOIN relay
             WHERE ($1::text IS NULL OR e.event_type = $1))
         SELECT event_id, event_type, created, livemode, api_version, object_id, customer_id,
                shown_status AS status, reason, shown_stream_id AS stream_id, deliveries, replays,
                received_at
         FROM shown WHERE ($2::text IS NULL OR shown_status = $2)
         ORDER BY received_at DESC, event_id DESC LIMIT $3",
    )
    .bind(event_type)
    .bind(status)
    .bind(limit)
    .bind(stream)
    .fetch_all(db)
    .await
}

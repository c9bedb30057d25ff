//! The organisation outbox as the source of the organisation stream: every row is relayed by the
//! shared relay ([`platform_service::relay`]) as it was written.

use chrono::{DateTime, Utc};
use platform_redis::StreamName;
use platform_redis::outbox::OutboxEntry;
use platform_service::relay::{Outbox, OutboxRow, RelayError, SNAPSHOT_COLUMNS};
use sqlx::PgPool;

/// `organisation_outbox`, relayed onto [`StreamName::OrganisationEvents`].
#[derive(Debug, Clone, Copy)]
pub struct OrganisationOutbox;

#[derive(sqlx::FromRow)]
struct Row {
    seq: i64,
    data: String,
    traceparent: Option<String>,
    recorded_at: DateTime<Utc>,
    snapshot_xmin: i64,
    snapshot_xmax: i64,
}

impl Outbox for OrganisationOutbox {
    const STREAM: StreamName = StreamName::OrganisationEvents;
    const LEADER_LOCK: i64 = 0x4f52_4752_454c_4159;
    const SEQUENCE: &'static str = "organisation_outbox_seq";

    async fn rows_after(
        &self,
        db: &PgPool,
        after: i64,
        limit: i64,
    ) -> Result<Vec<OutboxRow>, RelayError> {
        let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT seq, data, traceparent, recorded_at, {SNAPSHOT_COLUMNS}
             FROM organisation_outbox WHERE seq > $1 ORDER BY seq LIMIT $2"
        )))
        .bind(after)
        .bind(limit)
        .fetch_all(db)
        .await?;
        Ok(rows
            .into_iter()
            .map(|row| OutboxRow {
                seq: row.seq,
                recorded_at: row.recorded_at,
                snapshot_xmin: row.snapshot_xmin,
                snapshot_xmax: row.snapshot_xmax,
                entry: Some(OutboxEntry {
                    seq: u64::try_from(row.seq).unwrap_or(0),
                    traceparent: row.traceparent,
                    data: row.data,
                }),
            })
            .collect())
    }
}

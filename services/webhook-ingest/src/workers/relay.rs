//! The Stripe ledger as the outbox of the Stripe stream: which rows the shared relay
//! ([`platform_service::relay`]) appends, and the entry each becomes. Only `received` rows are
//! relayed; ignored and unprocessable ones hold their `seq` so the relay can tell them from a gap.

use platform_redis::StreamName;
use platform_redis::messages::StripeEventMessage;
use platform_redis::outbox::OutboxEntry;
use platform_service::relay::{Outbox, OutboxRow, RelayError};
use sqlx::PgPool;

use crate::db::ledger::{self, LedgerRow, Status};

/// The ledger (`webhook_events`), relayed onto [`StreamName::StripeEvents`].
#[derive(Debug, Clone, Copy)]
pub struct Ledger;

impl Outbox for Ledger {
    const STREAM: StreamName = StreamName::StripeEvents;
    const LEADER_LOCK: i64 = 0x5757_4852_454c_4159;
    const SEQUENCE: &'static str = "webhook_events_seq";

    async fn rows_after(
        &self,
        db: &PgPool,
        after: i64,
        limit: i64,
    ) -> Result<Vec<OutboxRow>, RelayError> {
        let rows = ledger::outbox_after(db, after, limit).await?;
        rows.into_iter()
            .map(|row| {
                let entry = if row.status == Status::Received.as_str() {
                    Some(entry_of(&row)?)
                } else {
                    None
                };
                Ok(OutboxRow {
                    seq: row.seq,
                    recorded_at: row.received_at,
                    snapshot_xmin: row.snapshot_xmin,
                    snapshot_xmax: row.snapshot_xmax,
                    entry,
                })
            })
            .collect()
    }
}

/// The stream entry of a ledger row.
fn entry_of(row: &LedgerRow) -> Result<OutboxEntry, RelayError> {
    let message = StripeEventMessage {
        event_id: row.event_id.clone(),
        event_type: row.event_type.clone(),
        created: row.created,
        livemode: row.livemode,
        api_version: row.api_version.clone(),
        object_id: row.object_id.clone(),
        customer_id: row.customer_id.clone(),
        raw: row.raw.clone(),
    };
    Ok(OutboxEntry {
        seq: u64::try_from(row.seq).unwrap_or(0),
        traceparent: row.traceparent.clone(),
        data: serde_json::to_string(&message)?,
    })
}

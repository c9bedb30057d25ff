//! The request path of a verified delivery: settle it against the event contract, record it in
//! the ledger, answer.
//!
//! # Why one ledger insert is the whole hand-off
//! The ledger is the outbox of the Stripe stream: a delivery is acknowledged once its row
//! committed (group commit, [`crate::db::batch`]), and the relay ([`crate::workers::relay`]) moves rows onto
//! the stream afterwards, in ledger order, at entry ids taken from the ledger's sequence. So:
//! - nothing acknowledged is lost: the row is durable before the 200, and whatever Redis loses
//!   later is appended again from the ledger;
//! - nothing is appended twice: the event id is the ledger's primary key (a second delivery
//!   counts as a duplicate and writes nothing new), and Redis refuses a stream id it already has;
//! - Redis is not on the request path at all: webhooks are acknowledged while Redis is down and
//!   relayed once it is back.
//!
//! # What is settled at the door
//! The body is parsed with the same contract the consumers use
//! ([`platform_redis::stripe_event`]). An authentic body that breaks it (invalid JSON, not an
//! event, NUL in a stored text field, an amount out of range) can never be processed, and Stripe
//! would retry any 4xx or 5xx for three days: it is recorded `unprocessable` with its reason and
//! answered 200, once. A body without a readable event id is recorded under
//! `unparsed_<sha-256 of the body>`, so its retries are duplicates too. A row Postgres still
//! refuses for its data is recorded again as `unprocessable` with only the parts it can store.

use std::collections::HashSet;
use std::sync::Arc;

use platform_redis::stripe_event::{self, Rejected, StripeEvent};
use tokio::sync::Notify;

use crate::db::batch::{BatchLimits, Batcher, SubmitError, is_data_error};
use crate::db::ledger::{self, InsertBatch, NewRow, Recorded, Status};
use crate::error::WebhookError;
use crate::metrics::WebhookMetrics;

/// Which event types go on the stream.
#[derive(Debug, Clone)]
pub enum AllowList {
    All,
    Only(HashSet<String>),
}

impl AllowList {
    /// `*` anywhere in `types` allows every type.
    pub fn new(types: &[String]) -> Self {
        if types.iter().any(|t| t == "*") {
            Self::All
        } else {
            Self::Only(types.iter().cloned().collect())
        }
    }

    pub fn allows(&self, event_type: &str) -> bool {
        match self {
            Self::All => true,
            Self::Only(types) => types.contains(event_type),
        }
    }
}

/// What a delivery recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub event_id: String,
    pub recorded: Recorded,
}

/// The request path, shared by all workers. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Ingest {
    db: sqlx::PgPool,
    inserts: Batcher<InsertBatch>,
    allow: Arc<AllowList>,
    /// Wakes the relay when a row to append committed.
    relay_wake: Arc<Notify>,
    metrics: WebhookMetrics,
}

impl Ingest {
    /// Also starts the ledger batcher's committer tasks on the current Tokio runtime.
    pub fn new(
        db: sqlx::PgPool,
        allow: AllowList,
        batch: BatchLimits,
        relay_wake: Arc<Notify>,
        metrics: WebhookMetrics,
    ) -> Self {
        let inserts = Batcher::spawn(db.clone(), batch, metrics.insert_batch_rows.clone());
        Self { db, inserts, allow: Arc::new(allow), relay_wake, metrics }
    }

    /// Records a verified body (module doc); answers once its row committed.
    #[tracing::instrument(name = "ingest.accept", skip_all, fields(event_id))]
    pub async fn accept(&self, body: &[u8]) -> Result<Accepted, WebhookError> {
        // This span's context, so the consumers' spans continue the delivery's trace.
        let traceparent = platform_redis::trace::current_traceparent();
        let row = match stripe_event::parse(body) {
            Ok(event) => self.row_of(event, body, traceparent),
            Err(rejected) => unprocessable_row(rejected, body, traceparent),
        };
        tracing::Span::current().record("event_id", row.event_id.as_str());
        let event_id = row.event_id.clone();
        let recorded = match self.inserts.submit(row.clone()).await {
            Ok(recorded) => recorded,
            Err(SubmitError::Failed(error)) if is_data_error(&error) => {
                tracing::warn!(event_id = %escape_nul(&event_id), %error, "ledger refused the row for its data; recording it as unprocessable");
                let reason = format!("unstorable: {error}");
                self.inserts.submit(stripped_row(row, &reason)).await?
            }
            Err(error) => return Err(error.into()),
        };
        if recorded.inserted && recorded.status == Status::Received {
            self.relay_wake.notify_one();
        }
        self.count(&recorded);
        Ok(Accepted { event_id, recorded })
    }

    fn row_of(&self, event: StripeEvent, body: &[u8], traceparent: Option<String>) -> NewRow {
        let status =
            if self.allow.allows(&event.event_type) { Status::Received } else { Status::Ignored };
        NewRow {
            event_id: event.id,
            event_type: event.event_type,
            created: event.created,
            livemode: event.livemode,
            api_version: event.api_version,
            object_id: event.object.id,
            customer_id: event.object.customer,
            status,
            reason: None,
            traceparent,
            // The contract guarantees UTF-8 JSON, which has no raw NUL byte.
            raw: Arc::from(String::from_utf8_lossy(body)),
        }
    }

    fn count(&self, recorded: &Recorded) {
        let m = &self.metrics;
        if !recorded.inserted {
            m.duplicates.inc();
            return;
        }
        match recorded.status {
            Status::Received | Status::Streamed => {
                m.recorded.inc();
            }
            Status::Ignored => {
                m.ignored.inc();
            }
            Status::Unprocessable => {
                let reason = recorded.reason.as_deref().unwrap_or("unknown");
                let code = reason.split(':').next().unwrap_or(reason);
                m.unprocessable(code);
            }
        }
    }

    /// Puts the event at the end of the ledger order, so the relay appends it again (admin): a
    /// deliberate extra entry; consumers are idempotent on the event.
    #[tracing::instrument(name = "ingest.replay", skip(self))]
    pub async fn replay(&self, event_id: &str) -> Result<i64, WebhookError> {
        match ledger::requeue(&self.db, event_id).await? {
            None => Err(WebhookError::NotFound(event_id.to_owned())),
            Some(Err(_)) => Err(WebhookError::Unprocessable(event_id.to_owned())),
            Some(Ok(seq)) => {
                self.relay_wake.notify_one();
                self.metrics.replayed.inc();
                tracing::info!(event_id, seq, "event queued again for the stripe stream");
                Ok(seq)
            }
        }
    }
}

/// The ledger row of an authentic body the contract refuses.
fn unprocessable_row(rejected: Rejected, body: &[u8], traceparent: Option<String>) -> NewRow {
    let event_id = rejected.id.unwrap_or_else(|| {
        let digest = ring::digest::digest(&ring::digest::SHA256, body);
        let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        format!("unparsed_{hex}")
    });
    tracing::info!(event_id = %event_id, reason = rejected.reason.code(), detail = %rejected.reason, "authentic event is unprocessable; recorded and acknowledged");
    NewRow {
        event_id,
        event_type: rejected.event_type.unwrap_or_else(|| "unknown".to_owned()),
        created: rejected.created.unwrap_or(0),
        livemode: false,
        api_version: None,
        object_id: None,
        customer_id: None,
        status: Status::Unprocessable,
        reason: Some(escape_nul(&format!("{}: {}", rejected.reason.code(), rejected.reason))),
        traceparent,
        raw: Arc::from(escape_nul(&String::from_utf8_lossy(body))),
    }
}

/// `row` reduced to what Postgres can store, as unprocessable with `reason`.
fn stripped_row(row: NewRow, reason: &str) -> NewRow {
    NewRow {
        event_id: escape_nul(&row.event_id),
        event_type: escape_nul(&row.event_type),
        api_version: None,
        object_id: None,
        customer_id: None,
        status: Status::Unprocessable,
        reason: Some(escape_nul(reason)),
        raw: Arc::from(escape_nul(&row.raw)),
        ..row
    }
}

/// Postgres `text` cannot hold NUL: it is written as the JSON escape `\u0000`.
fn escape_nul(text: &str) -> String {
    text.replace('\0', "\\u0000")
}

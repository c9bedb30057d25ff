//! The exactly-once hand-off of a verified event: Redis dedup marker, Postgres ledger, stream append.
//!
//! # Write order (and why each crash is harmless)
//! Stores: the dedup marker `webhook_dedup(event id)` in Redis (`processing:<token>` for
//! `claim_ttl`, then `done:<stream entry id>` for `done_ttl` > Stripe's 3-day retry window), the
//! ledger row in Postgres (primary key = event id), and the entry on the Stripe stream.
//!
//! 1. **Claim** the marker (`SET NX PX`, one script that also returns what was there).
//!    `done:…` → duplicate, answered 200 once the ledger has the row (see the crash after 3). `processing:…` → another delivery is in flight: wait up to
//!    `in_flight_wait_ms` for it to finish (then duplicate), else 409 so Stripe retries.
//! 2. **Ledger check** `UPDATE … deliveries+1 RETURNING status`: a row already `streamed` or
//!    `ignored` means a previous delivery finished but its Redis marker is gone (Redis lost data):
//!    duplicate, and the marker is set again. The ledger, being durable, is the final word. A new
//!    id matches no row, writes nothing and costs no commit. An event type outside the allow-list
//!    is inserted `ignored` here and answered.
//! 3. **Append + done, atomically**: one Lua script checks the marker still holds *our* claim,
//!    `XADD`s the event and sets `done:<entry id>`
//!    ([`platform_redis::streams::StreamProducer::append_claimed`]). The entry and the done marker
//!    exist together or not at all (also in the AOF, which logs a script's effects as one unit),
//!    and a delivery whose claim expired cannot append: it gets "claim lost" and answers 409.
//! 4. **Ledger insert** of the row already `streamed` with its entry id: the only commit (and
//!    fsync) of a new delivery. Then 200.
//!
//! The ledger check of step 2 and the insert of step 4 go through group commit
//! ([`crate::batch`]): concurrent deliveries' statements run as one statement each (one commit
//! for all inserts of a batch), and each delivery waits for the batch carrying its row. Nothing
//! above changes: a delivery still answers only after its own row committed, and a failed batch
//! is a failed step for every delivery in it (503, claim released).
//!
//! Crashes (process, Redis or Postgres failure) between steps, and what the retry does — Stripe
//! retries every non-2xx for 3 days, and nothing was answered 2xx before step 4 finished:
//! - after 1 or 2: the claim expires after `claim_ttl` (or is released on a handled error); the
//!   retry claims again and starts over. Nothing was written.
//! - after 3, before 4: the marker says `done:<entry id>`; the retry answers duplicate only after
//!   inserting the ledger row from the marker (it carries the same event). Appended once, ledger
//!   complete before any 2xx.
//! - Redis restarted empty (markers and stream lost together, or not at all if persisted): the
//!   ledger decides — `streamed` rows are duplicates. Rows `received` (written by earlier
//!   versions, which inserted before appending) are appended again.
//!
//! # Why the claim and the append stay two scripts
//! One script doing both (claim, `XADD`, done marker) would save a Redis round trip per delivery
//! (~50 µs of service CPU and one script run in Redis, docs/services/webhook-ingest.md), but the
//! ledger check of step 2 must come before the append, so it would have to move before the
//! claim, where no claim covers it. Another delivery of the same id could then finish between
//! this delivery's check and its script, and if that delivery's done marker were gone by the
//! time this script runs while its entry is still on the stream (a marker evicted under a
//! `volatile-*` maxmemory policy, or deleted by hand; a restart or failover keeps or loses a
//! script's writes together), the script would find no marker and append a second entry. With the claim first, whatever happens to the marker after the check,
//! the append still requires *this* delivery's claim (step 3 answers "claim lost" otherwise), so
//! a second entry is impossible. The round trip is the price of that guarantee.
//!
//! Redis or Postgres unreachable at any step: 503 and the claim is released (compare-and-delete),
//! so the retry does not wait for the TTL. Consumers are still expected to be idempotent on the
//! event id (admin replays re-publish deliberately), as at-least-once stream delivery requires.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use platform_redis::idempotency::{self, Claim, Marker};
use platform_redis::streams::{ClaimedAppend, StreamProducer};
use platform_redis::{RedisClients, StreamName};
use sqlx::PgPool;

use crate::batch::{BatchLimits, Batcher};
use crate::error::WebhookError;
use crate::event::StripeEvent;
use crate::ledger::{self, Status, StreamedInsertBatch, StreamedRow, TouchBatch};
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

/// Timings and caps of the hand-off.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    pub allow: AllowList,
    pub claim_ttl: Duration,
    pub done_ttl: Duration,
    pub in_flight_wait: Duration,
    pub stream_max_len: usize,
    /// Group commit of the two hot-path ledger statements ([`crate::batch`]).
    pub ledger_batch: BatchLimits,
}

/// How a delivery ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    /// Appended to the stream now.
    Streamed { stream_id: String },
    /// Recorded, not streamed (type outside the allow-list).
    Ignored,
    /// This event id was handed off before.
    Duplicate,
}

/// The hand-off, shared by all workers.
#[derive(Debug, Clone)]
pub struct Ingest {
    redis: RedisClients,
    db: PgPool,
    producer: StreamProducer,
    touches: Batcher<TouchBatch>,
    inserts: Batcher<StreamedInsertBatch>,
    config: IngestConfig,
    metrics: WebhookMetrics,
}

impl Ingest {
    /// Also starts the ledger batchers' committer tasks on the current Tokio runtime.
    pub fn new(
        redis: RedisClients,
        db: PgPool,
        config: IngestConfig,
        metrics: WebhookMetrics,
    ) -> Self {
        let producer = StreamProducer::new(&redis, StreamName::StripeEvents, config.stream_max_len);
        let touches =
            Batcher::spawn(db.clone(), config.ledger_batch, metrics.touch_batch_rows.clone());
        let inserts =
            Batcher::spawn(db.clone(), config.ledger_batch, metrics.insert_batch_rows.clone());
        Self { redis, db, producer, touches, inserts, config, metrics }
    }

    /// Hands `event` off exactly once (module doc).
    #[tracing::instrument(name = "ingest.accept", skip_all, fields(event_id = %event.id, event_type = %event.event_type))]
    pub async fn accept(&self, event: &StripeEvent) -> Result<Accepted, WebhookError> {
        let key = self.redis.keys().webhook_dedup(&event.id);
        let deadline = Instant::now() + self.config.in_flight_wait;
        let token = loop {
            match idempotency::claim(&self.redis, &key, self.config.claim_ttl).await? {
                Claim::Claimed { token } => break token,
                Claim::Done(result) => return self.duplicate_of_done(event, &result).await,
                Claim::InProgress => {}
            }
            // Another delivery holds the claim: wait (bounded) for it to finish or give up.
            loop {
                if Instant::now() >= deadline {
                    return Err(WebhookError::InProgress);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                match idempotency::peek(&self.redis, &key).await? {
                    Marker::InProgress => continue,
                    Marker::Done(result) => {
                        return self.duplicate_of_done(event, &result).await;
                    }
                    Marker::Absent => break,
                }
            }
        };
        let outcome = self.hand_off(event, &key, &token).await;
        if outcome.is_err() {
            // Let the retry claim at once; only deletes the marker if it is still our claim.
            if let Err(error) = idempotency::release(&self.redis, &key, &token).await {
                tracing::warn!(%error, event_id = %event.id, "could not release the dedup claim; it expires by itself");
            }
        }
        outcome
    }

    async fn hand_off(
        &self,
        event: &StripeEvent,
        key: &str,
        token: &str,
    ) -> Result<Accepted, WebhookError> {
        let allowed = self.config.allow.allows(&event.event_type);
        match self.touches.submit(event.id.clone()).await? {
            Some(existing) => match existing.status {
                Status::Streamed => {
                    self.mark_done(key, existing.stream_id.as_deref().unwrap_or_default()).await?;
                    return Ok(Accepted::Duplicate);
                }
                Status::Ignored => {
                    self.mark_done(key, "").await?;
                    return Ok(Accepted::Duplicate);
                }
                Status::Received if !allowed => {
                    // Stored while allowed, never streamed, and the allow-list changed since.
                    ledger::mark_ignored(&self.db, &event.id).await?;
                    self.mark_done(key, "").await?;
                    return Ok(Accepted::Ignored);
                }
                // Stored by an earlier version that wrote the row before appending: stream it now.
                Status::Received => {}
            },
            None if !allowed => {
                let recorded =
                    ledger::record(&self.db, event, Status::Ignored, None, false).await?;
                self.mark_done(key, "").await?;
                return Ok(if recorded.inserted { Accepted::Ignored } else { Accepted::Duplicate });
            }
            None => {}
        }
        let message = event.to_message();
        match self.producer.append_claimed(&message, key, token, self.config.done_ttl).await? {
            ClaimedAppend::Appended(stream_id) => {
                // If this fails the answer is 503 and the retry records the row from the done
                // marker (module doc, step 3). Answered only once the batch carrying the row
                // committed.
                let row = StreamedRow { event: event.clone(), stream_id: stream_id.clone() };
                self.inserts.submit(row).await?;
                // debug, not info: one line per event cost 40–110 µs of CPU per webhook (docs,
                // benchmark), and the ledger row already records every event and its stream id.
                tracing::debug!(event_id = %event.id, event_type = %event.event_type, %stream_id, "event appended to the stripe stream");
                Ok(Accepted::Streamed { stream_id })
            }
            ClaimedAppend::AlreadyDone(result) => self.duplicate_of_done(event, &result).await,
            ClaimedAppend::ClaimLost => Err(WebhookError::InProgress),
        }
    }

    /// A marker says done: make sure the ledger has the row as streamed (a crash between the
    /// append and the insert leaves it missing), then answer duplicate.
    async fn duplicate_of_done(
        &self,
        event: &StripeEvent,
        result: &str,
    ) -> Result<Accepted, WebhookError> {
        if !result.is_empty() {
            let recorded =
                ledger::record(&self.db, event, Status::Streamed, Some(result), true).await?;
            if recorded.inserted {
                tracing::warn!(event_id = %event.id, stream_id = result, "ledger row written from the dedup marker (an earlier delivery stopped after the append)");
            }
        }
        Ok(Accepted::Duplicate)
    }

    async fn mark_done(&self, key: &str, result: &str) -> Result<(), WebhookError> {
        idempotency::complete(&self.redis, key, result, self.config.done_ttl).await?;
        Ok(())
    }

    /// Re-publishes a ledger event to the stream (admin). A deliberate extra entry: consumers are
    /// idempotent on the event id.
    #[tracing::instrument(name = "ingest.replay", skip(self))]
    pub async fn replay(&self, event_id: &str) -> Result<String, WebhookError> {
        let Some((_, raw)) = ledger::find(&self.db, event_id).await? else {
            return Err(WebhookError::NotFound(event_id.to_owned()));
        };
        let event = StripeEvent::parse(raw.as_bytes())?;
        let stream_id = self.producer.append(&event.to_message()).await?;
        ledger::mark_replayed(&self.db, event_id, &stream_id).await?;
        let key = self.redis.keys().webhook_dedup(event_id);
        self.mark_done(&key, &stream_id).await?;
        self.metrics.replayed.inc();
        tracing::info!(event_id, %stream_id, "event replayed to the stripe stream");
        Ok(stream_id)
    }
}

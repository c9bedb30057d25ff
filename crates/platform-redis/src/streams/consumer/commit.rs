//! One batch from delivery to `EXEC`: poison dead-lettered, the handler's effects queued with
//! the `XACK` in one `MULTI`, the lease checked, and the `EXEC` sent inline or in the background.

use std::collections::BTreeMap;
use std::time::Instant;

use fred::clients::Transaction;
use fred::prelude::*;
use tracing::Instrument;

use super::{StreamConsumer, add};
use crate::error::{RedisError, Result};
use crate::streams::handler::{Outcome, StreamEntry, StreamHandler};
use crate::streams::wire::{RawEntry, decode};
use crate::streams::{FIELD_DATA, FIELD_TRACEPARENT, FIELD_VERSION};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Delivery {
    /// Read with `>`: delivered for the first time.
    New,
    /// Taken from the pending list: this consumer's own at start, or reclaimed idle ones.
    Pending,
}

impl Delivery {
    fn label(self) -> &'static str {
        match self {
            Delivery::New => "new",
            Delivery::Pending => "pending",
        }
    }
}

/// A batch's `EXEC` sent in the background, and what to count once it answers.
pub(super) struct Commit {
    exec: tokio::task::JoinHandle<std::result::Result<Value, fred::error::Error>>,
    acked: usize,
    dead: usize,
}

impl StreamConsumer {
    pub(super) async fn process<H: StreamHandler>(
        &self,
        handler: &H,
        raw: Vec<RawEntry>,
        delivery: Delivery,
        lease_start: Instant,
        in_flight: &mut Option<Commit>,
    ) -> Result<()> {
        let counts = match delivery {
            Delivery::Pending => Some(self.delivery_counts(&raw).await?),
            Delivery::New => None,
        };
        let max = self.settings.max_deliveries;
        let mut entries = Vec::with_capacity(raw.len());
        let mut originals = Vec::with_capacity(raw.len());
        let mut poison = Vec::new();
        for entry in raw {
            let deliveries = match &counts {
                None => 1,
                Some(counts) => match counts.get(&entry.id) {
                    Some(deliveries) => *deliveries,
                    // Someone claimed it from us in between: theirs now.
                    None => continue,
                },
            };
            if deliveries > max {
                poison.push((
                    entry,
                    format!("delivered {deliveries} times (max {max})"),
                    deliveries,
                ));
                continue;
            }
            match decode::<H::Body>(&entry) {
                Ok(body) => {
                    let traceparent = entry.field(FIELD_TRACEPARENT).map(str::to_owned);
                    let span = tracing::info_span!(
                        "stream.entry",
                        stream = %self.settings.stream,
                        group = %self.settings.group,
                        entry_id = %entry.id,
                        deliveries,
                        outcome = tracing::field::Empty,
                    );
                    crate::trace::set_parent_from(&span, traceparent.as_deref());
                    entries.push(StreamEntry {
                        id: entry.id.clone(),
                        body,
                        traceparent,
                        deliveries,
                        span,
                    });
                    originals.push(entry);
                }
                Err(reason) => poison.push((entry, reason, deliveries)),
            }
        }

        if !poison.is_empty() {
            let tx = self.clients.primary().next().multi();
            let mut ids = Vec::with_capacity(poison.len());
            for (entry, reason, deliveries) in &poison {
                self.queue_dead_letter(&tx, entry, reason, *deliveries).await?;
                ids.push(entry.id.clone());
            }
            let () = tx.xack(&self.key, self.settings.group.as_str(), ids).await?;
            let _: Value = tx.exec(true).await?;
            add(&self.counters.dead_lettered, poison.len());
        }
        if entries.is_empty() {
            return Ok(());
        }

        let batch_span = tracing::info_span!(
            "stream.batch",
            stream = %self.settings.stream,
            group = %self.settings.group,
            size = entries.len(),
            delivery = delivery.label(),
        );
        for entry in &entries {
            crate::trace::link_to(&batch_span, &entry.span);
        }
        let tx = self.clients.primary().next().multi();
        let handled = handler.handle(&entries, &tx).instrument(batch_span.clone()).await;
        let _entered = batch_span.enter();
        let outcomes = match handled {
            Ok(outcomes) if outcomes.len() == entries.len() => outcomes,
            Ok(outcomes) => {
                tracing::error!(
                    expected = entries.len(),
                    got = outcomes.len(),
                    "handler returned the wrong number of outcomes; leaving the batch pending"
                );
                add(&self.counters.retries, entries.len());
                return Ok(());
            }
            Err(error) => {
                tracing::warn!(%error, "handler failed; leaving the batch pending for a retry");
                add(&self.counters.retries, entries.len());
                return Ok(());
            }
        };

        let (mut acked, mut dead, mut retried) = (Vec::new(), 0usize, 0usize);
        // Entries a dependency outage held back, by their delivery count before this delivery.
        let mut uncounted: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        for ((entry, original), outcome) in entries.iter().zip(&originals).zip(&outcomes) {
            entry.span.record("outcome", outcome.label());
            match outcome {
                Outcome::Ack => acked.push(entry.id.clone()),
                Outcome::Retry => retried += 1,
                Outcome::Unavailable => {
                    retried += 1;
                    let before = entry.deliveries.saturating_sub(1);
                    uncounted.entry(before).or_default().push(entry.id.clone());
                }
                Outcome::DeadLetter(reason) => {
                    self.queue_dead_letter(&tx, original, reason, entry.deliveries).await?;
                    acked.push(entry.id.clone());
                    dead += 1;
                }
            }
        }
        add(&self.counters.retries, retried);
        if acked.is_empty() && uncounted.is_empty() {
            return Ok(());
        }
        // Commits stay in batch order: the previous one answers before this one is sent.
        if let Some(previous) = in_flight.take()
            && let Err(error) = self.settle(previous).await
        {
            add(&self.counters.retries, acked.len());
            return Err(error);
        }
        // Past this point a peer may be allowed to claim these entries: do not commit.
        let lease = self.settings.claim_idle - self.settings.claim_idle / 5;
        if lease_start.elapsed() >= lease {
            tracing::warn!(
                elapsed_ms = lease_start.elapsed().as_millis() as u64,
                lease_ms = lease.as_millis() as u64,
                "batch took longer than its lease; abandoning it for a retry"
            );
            add(&self.counters.retries, acked.len());
            return Ok(());
        }
        let acked_count = acked.len();
        if !acked.is_empty() {
            let () = tx.xack(&self.key, self.settings.group.as_str(), acked).await?;
        }
        self.queue_uncount(&tx, uncounted).await?;
        if H::OVERLAP_COMMITS && delivery == Delivery::New {
            // Answered by the next batch (or before the next blocking read or claim pass).
            let exec = tokio::spawn(async move { tx.exec::<Value>(true).await });
            *in_flight = Some(Commit { exec, acked: acked_count, dead });
            return Ok(());
        }
        if let Err(error) = tx.exec::<Value>(true).await {
            add(&self.counters.retries, acked_count);
            return Err(error.into());
        }
        add(&self.counters.processed, acked_count - dead);
        add(&self.counters.dead_lettered, dead);
        Ok(())
    }

    /// Puts back the delivery counts of entries held back by an outage (`XCLAIM` to this
    /// consumer with `RETRYCOUNT`, `JUSTID`: the entry stays pending here and its idle time
    /// restarts, so it is retried after `claim_idle`). Queued with the batch's `XACK`, after the
    /// lease check, so it never takes an entry a peer has reclaimed.
    async fn queue_uncount(
        &self,
        tx: &Transaction,
        uncounted: BTreeMap<u64, Vec<String>>,
    ) -> Result<()> {
        for (deliveries, ids) in uncounted {
            let () = tx
                .xclaim(
                    &self.key,
                    self.settings.group.as_str(),
                    self.settings.consumer.as_str(),
                    0,
                    ids,
                    None,
                    None,
                    Some(deliveries),
                    false,
                    true,
                )
                .await?;
        }
        Ok(())
    }

    async fn queue_dead_letter(
        &self,
        tx: &Transaction,
        entry: &RawEntry,
        reason: &str,
        deliveries: u64,
    ) -> Result<()> {
        tracing::warn!(entry_id = %entry.id, reason, deliveries, stream = %self.settings.stream, group = %self.settings.group, "entry moved to the dead-letter stream");
        let mut fields = vec![
            ("original_id", entry.id.clone()),
            ("reason", reason.to_owned()),
            ("deliveries", deliveries.to_string()),
            ("consumer", self.settings.consumer.clone()),
        ];
        for name in [FIELD_VERSION, FIELD_TRACEPARENT, FIELD_DATA] {
            if let Some(value) = entry.field(name) {
                fields.push((name, value.to_owned()));
            }
        }
        let cap = i64::try_from(self.settings.dead_letter_max_len).unwrap_or(i64::MAX);
        let () = tx.xadd(&self.dead_key, false, ("MAXLEN", "~", cap), "*", fields).await?;
        Ok(())
    }

    /// Waits for a background `EXEC` and counts its batch.
    pub(super) async fn settle(&self, commit: Commit) -> Result<()> {
        let answer = commit
            .exec
            .await
            .map_err(|e| RedisError::Unexpected(format!("commit task failed: {e}")))
            .and_then(|exec| exec.map_err(RedisError::from));
        match answer {
            Ok(_) => {
                add(&self.counters.processed, commit.acked - commit.dead);
                add(&self.counters.dead_lettered, commit.dead);
                Ok(())
            }
            Err(error) => {
                add(&self.counters.retries, commit.acked);
                Err(error)
            }
        }
    }
}

//! Taking pending entries: this consumer's own, page by page, when it starts, and other
//! consumers' idle ones (`XAUTOCLAIM`) on every claim pass; with their delivery counts.

use std::collections::HashMap;
use std::time::Instant;

use fred::prelude::*;

use super::commit::Delivery;
use super::{StreamConsumer, add};
use crate::error::Result;
use crate::streams::handler::StreamHandler;
use crate::streams::wire::{
    RawEntry, flatten_rows, parse_autoclaim_response, parse_read_response, pending_row,
};

impl StreamConsumer {
    /// One page of this consumer's own pending entries (`XREADGROUP … <cursor>`), handled;
    /// returns where the next page starts, or `None` when there are no more. Entries whose data
    /// is gone are acked and counted as trimmed.
    pub(super) async fn take_own_pending<H: StreamHandler>(
        &self,
        handler: &H,
        cursor: &str,
    ) -> Result<Option<String>> {
        let started = Instant::now();
        let value: Value = self
            .clients
            .primary()
            .xreadgroup(
                self.settings.group.as_str(),
                self.settings.consumer.as_str(),
                Some(self.settings.batch_size as u64),
                None,
                false,
                self.key.as_str(),
                cursor,
            )
            .await?;
        let entries = parse_read_response(value)?;
        let Some(last) = entries.last() else {
            return Ok(None);
        };
        let next = last.id.clone();
        let (gone, entries): (Vec<RawEntry>, Vec<RawEntry>) =
            entries.into_iter().partition(RawEntry::is_deleted);
        if !gone.is_empty() {
            let ids: Vec<String> = gone.into_iter().map(|entry| entry.id).collect();
            let count = ids.len();
            let () =
                self.clients.primary().xack(&self.key, self.settings.group.as_str(), ids).await?;
            add(&self.counters.trimmed, count);
            tracing::warn!(trimmed = count, stream = %self.settings.stream, group = %self.settings.group, "own pending entries were trimmed from the stream before being processed");
        }
        if !entries.is_empty() {
            add(&self.counters.reclaimed, entries.len());
            tracing::info!(count = entries.len(), stream = %self.settings.stream, group = %self.settings.group, consumer = %self.settings.consumer, "taking this consumer's own pending entries");
            self.process(handler, entries, Delivery::Pending, started, &mut None).await?;
        }
        Ok(Some(next))
    }

    /// One pass of `XAUTOCLAIM` over the whole pending list, handling what it takes over.
    pub(super) async fn claim_pending<H: StreamHandler>(&self, handler: &H) -> Result<()> {
        let mut cursor = "0-0".to_owned();
        loop {
            let started = Instant::now();
            let value: Value = self
                .clients
                .primary()
                .xautoclaim(
                    &self.key,
                    self.settings.group.as_str(),
                    self.settings.consumer.as_str(),
                    self.settings.claim_idle.as_millis() as u64,
                    cursor.as_str(),
                    Some(self.settings.batch_size as u64),
                    false,
                )
                .await?;
            let (next, entries, trimmed) = parse_autoclaim_response(value)?;
            if trimmed > 0 {
                add(&self.counters.trimmed, trimmed);
                tracing::warn!(trimmed, stream = %self.settings.stream, group = %self.settings.group, "pending entries were trimmed from the stream before being processed");
            }
            if !entries.is_empty() {
                add(&self.counters.reclaimed, entries.len());
                tracing::info!(count = entries.len(), stream = %self.settings.stream, group = %self.settings.group, "reclaimed idle pending entries");
                self.process(handler, entries, Delivery::Pending, started, &mut None).await?;
            }
            if next == "0-0" || self.cancel.is_cancelled() {
                return Ok(());
            }
            cursor = next;
        }
    }

    /// Delivery counts (this delivery included) of entries this consumer just took from the
    /// pending list; entries missing from the answer are no longer pending with this consumer.
    pub(super) async fn delivery_counts(
        &self,
        entries: &[RawEntry],
    ) -> Result<HashMap<String, u64>> {
        let pipeline = self.clients.primary().next().pipeline();
        for entry in entries {
            let args = (entry.id.as_str(), entry.id.as_str(), 1u64);
            let () = pipeline.xpending(&self.key, self.settings.group.as_str(), args).await?;
        }
        let mut counts = HashMap::with_capacity(entries.len());
        for answer in pipeline.try_all::<Value>().await {
            for row in flatten_rows(answer?) {
                let (id, consumer, _idle, deliveries) = pending_row(row)?;
                if consumer == self.settings.consumer {
                    counts.insert(id, deliveries);
                }
            }
        }
        Ok(counts)
    }
}

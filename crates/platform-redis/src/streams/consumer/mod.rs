//! The consumer-group worker: takes its own pending entries, then new ones, reclaims idle ones,
//! commits handlers' effects with the `XACK`, dead-letters poison and recreates a lost group.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fred::clients::Transaction;
use fred::prelude::*;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::handler::{Outcome, StreamEntry, StreamHandler};
use super::settings::{ConsumerSettings, StartFrom, automatic_consumer_name};
use super::wire::{
    RawEntry, decode, error_means_group_lost, flatten_rows, parse_autoclaim_response,
    parse_read_response, pending_row,
};
use super::{FIELD_DATA, FIELD_TRACEPARENT, FIELD_VERSION};
use crate::client::RedisClients;
use crate::error::{RedisError, Result};

/// Counters of one consumer since it was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConsumerStats {
    /// Entries acked with their effects.
    pub processed: u64,
    /// Entries moved to the dead-letter stream.
    pub dead_lettered: u64,
    /// Entries taken from the pending list: this consumer's own at start (what its name held
    /// when the previous process died), other consumers' idle ones, its own retries.
    pub reclaimed: u64,
    /// Entries left pending for a later attempt (handler retry or error, failed or abandoned commit).
    pub retries: u64,
    /// Pending entries that were trimmed from the stream before anyone processed them.
    pub trimmed: u64,
    /// Times this consumer created its group: at start when it was missing, and each time it was
    /// lost (`NOGROUP`) and recreated.
    pub groups_created: u64,
}

#[derive(Debug, Default)]
struct Counters {
    processed: AtomicU64,
    dead_lettered: AtomicU64,
    reclaimed: AtomicU64,
    retries: AtomicU64,
    trimmed: AtomicU64,
    groups_created: AtomicU64,
}

fn add(counter: &AtomicU64, n: usize) {
    counter.fetch_add(n as u64, Ordering::Relaxed);
}

/// A consumer-group worker; see the module doc. Cheap to clone (clones share the counters).
#[derive(Debug, Clone)]
pub struct StreamConsumer {
    clients: RedisClients,
    settings: Arc<ConsumerSettings>,
    cancel: CancellationToken,
    key: String,
    dead_key: String,
    checkpoints_key: String,
    counters: Arc<Counters>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
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

struct LoopState {
    group_ready: bool,
    /// Where the next page of this consumer's own pending entries starts; `None` once they were
    /// all taken (only at start: a recreated group has no pending entries).
    own_pending: Option<String>,
    last_claim: Option<Instant>,
    /// The next batch, read while the current one was handled (overlapping handlers only).
    prefetched: Option<tokio::task::JoinHandle<Result<ReadBatch>>>,
    /// The last batch's `EXEC`, sent and not yet answered (overlapping handlers only).
    in_flight: Option<Commit>,
}

/// Entries of one read and when the read was sent (the start of their lease).
type ReadBatch = (Vec<RawEntry>, Instant);

/// A batch's `EXEC` sent in the background, and what to count once it answers.
struct Commit {
    exec: tokio::task::JoinHandle<std::result::Result<Value, fred::error::Error>>,
    acked: usize,
    dead: usize,
}

impl StreamConsumer {
    /// A worker for `settings`; [`StreamConsumer::run`] returns once `cancel` is cancelled.
    pub fn new(
        clients: &RedisClients,
        settings: ConsumerSettings,
        cancel: CancellationToken,
    ) -> Self {
        let keys = clients.keys();
        let mut settings = settings;
        if settings.consumer.is_empty() {
            settings.consumer = automatic_consumer_name(settings.stream, &settings.group);
        }
        Self {
            key: keys.stream(settings.stream),
            dead_key: keys.dead_letter_stream(settings.stream, &settings.group),
            checkpoints_key: keys.stream_group_checkpoints(settings.stream),
            clients: clients.clone(),
            settings: Arc::new(settings),
            cancel,
            counters: Arc::default(),
        }
    }

    /// The settings this worker runs with (with its consumer name filled in).
    pub fn settings(&self) -> &ConsumerSettings {
        &self.settings
    }

    /// The stream's key.
    pub fn stream_key(&self) -> &str {
        &self.key
    }

    /// The key of this group's dead-letter stream.
    pub fn dead_letter_key(&self) -> &str {
        &self.dead_key
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> ConsumerStats {
        let c = &self.counters;
        ConsumerStats {
            processed: c.processed.load(Ordering::Relaxed),
            dead_lettered: c.dead_lettered.load(Ordering::Relaxed),
            reclaimed: c.reclaimed.load(Ordering::Relaxed),
            retries: c.retries.load(Ordering::Relaxed),
            trimmed: c.trimmed.load(Ordering::Relaxed),
            groups_created: c.groups_created.load(Ordering::Relaxed),
        }
    }

    /// Creates the group (and the stream) if missing, at the group's checkpoint when the
    /// stream's checkpoint hash has one, else where `start_from` says; an existing group is left
    /// as it is.
    pub async fn ensure_group(&self) -> Result<()> {
        let group = self.settings.group.as_str();
        let checkpoint: Option<String> =
            self.clients.primary().hget(&self.checkpoints_key, group).await?;
        let start = match checkpoint {
            Some(id) if is_entry_id(&id) => id,
            other => {
                if let Some(id) = other {
                    tracing::error!(stream = %self.settings.stream, group, checkpoint = %id, "group checkpoint is not an entry id; ignoring it");
                }
                match self.settings.start_from {
                    StartFrom::Beginning => "0".to_owned(),
                    StartFrom::New => "$".to_owned(),
                }
            }
        };
        let created: std::result::Result<(), fred::error::Error> =
            self.clients.primary().xgroup_create(&self.key, group, start.as_str(), true).await;
        match created {
            Ok(()) => {
                add(&self.counters.groups_created, 1);
                tracing::info!(stream = %self.settings.stream, group, start, "consumer group created");
                Ok(())
            }
            Err(error) if error.details().starts_with("BUSYGROUP") => Ok(()),
            Err(error) => Err(error.into()),
        }
    }

    /// Takes this consumer's own pending entries, then reads and handles new batches until the
    /// cancellation token fires: the batch in hand (and one read ahead, if any) is finished, then
    /// it returns. A blocking read in progress is abandoned; anything it delivered stays pending,
    /// taken first by this consumer name's next run or reclaimed by a peer after `claim_idle`.
    /// Redis errors are logged and retried with backoff (a lost group is recreated); only
    /// unusable settings end it with an error.
    pub async fn run<H: StreamHandler>(&self, handler: &H) -> Result<()> {
        self.settings.validate()?;
        // Blocking reads get their own connection so they never hold up a shared pool connection.
        let reader = self.clients.dedicated()?;
        let _connection = reader.connect();
        let mut state = LoopState {
            group_ready: false,
            own_pending: Some("0".to_owned()),
            last_claim: None,
            prefetched: None,
            in_flight: None,
        };
        let mut failures: u32 = 0;
        tracing::info!(stream = %self.settings.stream, group = %self.settings.group, consumer = %self.settings.consumer, "stream consumer started");
        // A batch read ahead is in hand: it is finished too before returning.
        while !self.cancel.is_cancelled() || state.prefetched.is_some() {
            match self.step(&reader, handler, &mut state).await {
                Ok(()) => failures = 0,
                Err(error) => {
                    failures = failures.saturating_add(1);
                    if error_means_group_lost(&error) {
                        tracing::warn!(stream = %self.settings.stream, group = %self.settings.group, %error, "consumer group or stream is gone; recreating the group");
                        state.group_ready = false;
                    }
                    let pause =
                        Duration::from_millis(50u64 << failures.min(6)).min(Duration::from_secs(2));
                    tracing::warn!(%error, detail = ?error, failures, pause_ms = pause.as_millis() as u64, "stream consumer step failed; retrying");
                    tokio::select! {
                        () = self.cancel.cancelled() => {}
                        () = tokio::time::sleep(pause) => {}
                    }
                }
            }
        }
        if let Some(commit) = state.in_flight.take()
            && let Err(error) = self.settle(commit).await
        {
            tracing::warn!(%error, detail = ?error, "last batch's commit failed; its entries stay pending");
        }
        let _ = reader.quit().await;
        tracing::info!(stream = %self.settings.stream, group = %self.settings.group, consumer = %self.settings.consumer, "stream consumer stopped");
        Ok(())
    }

    async fn step<H: StreamHandler>(
        &self,
        reader: &Client,
        handler: &H,
        state: &mut LoopState,
    ) -> Result<()> {
        if !state.group_ready {
            self.ensure_group().await?;
            state.group_ready = true;
        }
        // A restarted process first finishes what its name held, a page per step.
        if let Some(cursor) = &state.own_pending {
            if self.cancel.is_cancelled() {
                return Ok(());
            }
            state.own_pending = self.take_own_pending(handler, cursor).await?;
            return Ok(());
        }
        let claim_every = self.settings.claim_idle / 2;
        let claim_due = state.last_claim.is_none_or(|at| at.elapsed() >= claim_every);
        if claim_due && state.prefetched.is_none() && !self.cancel.is_cancelled() {
            if let Some(commit) = state.in_flight.take() {
                self.settle(commit).await?;
            }
            self.claim_pending(handler).await?;
            state.last_claim = Some(Instant::now());
            if self.cancel.is_cancelled() {
                return Ok(());
            }
        }
        let (entries, read_started) = match state.prefetched.take() {
            Some(read) => read
                .await
                .map_err(|e| RedisError::Unexpected(format!("read-ahead task failed: {e}")))??,
            None => {
                // About to block: let the last commit answer first (stats, errors).
                if let Some(commit) = state.in_flight.take() {
                    self.settle(commit).await?;
                }
                // Never block past the next claim pass.
                let block = self.settings.block.min(claim_every).max(Duration::from_millis(1));
                let read = self.read_new(reader, Some(block));
                tokio::select! {
                    () = self.cancel.cancelled() => return Ok(()),
                    read = read => read?,
                }
            }
        };
        // A full batch: more is probably waiting. Read it now, so Redis serves that read while
        // this batch is handled, and this process decodes it while this batch's EXEC runs.
        // Not when a claim pass is due: it runs between batches, and would never get its turn
        // while full batches keep coming.
        let claim_due = state.last_claim.is_none_or(|at| at.elapsed() >= claim_every);
        if H::OVERLAP_COMMITS
            && entries.len() >= self.settings.batch_size
            && !claim_due
            && !self.cancel.is_cancelled()
        {
            let this = self.clone();
            let reader = reader.clone();
            state.prefetched =
                Some(tokio::spawn(async move { this.read_new(&reader, None).await }));
        }
        if !entries.is_empty() {
            self.process(handler, entries, Delivery::New, read_started, &mut state.in_flight)
                .await?;
        }
        Ok(())
    }

    /// `XREADGROUP … >` on the reader's connection, blocking up to `block` (`None`: answers at
    /// once); returns the entries and when the read was sent (the start of their lease).
    async fn read_new(&self, reader: &Client, block: Option<Duration>) -> Result<ReadBatch> {
        let wait = block.unwrap_or_default();
        let options =
            Options { timeout: Some(wait + Duration::from_secs(5)), ..Options::default() };
        let read_started = Instant::now();
        let value = reader
            .with_options(&options)
            .xreadgroup::<Value, _, _, _, _>(
                self.settings.group.as_str(),
                self.settings.consumer.as_str(),
                Some(self.settings.batch_size as u64),
                block.map(|b| b.as_millis() as u64),
                false,
                self.key.as_str(),
                ">",
            )
            .await?;
        Ok((parse_read_response(value)?, read_started))
    }

    /// Waits for a background `EXEC` and counts its batch.
    async fn settle(&self, commit: Commit) -> Result<()> {
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

    /// One page of this consumer's own pending entries (`XREADGROUP … <cursor>`), handled;
    /// returns where the next page starts, or `None` when there are no more. Entries whose data
    /// is gone are acked and counted as trimmed.
    async fn take_own_pending<H: StreamHandler>(
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
    async fn claim_pending<H: StreamHandler>(&self, handler: &H) -> Result<()> {
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
    async fn delivery_counts(&self, entries: &[RawEntry]) -> Result<HashMap<String, u64>> {
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

    async fn process<H: StreamHandler>(
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
}

/// `<ms>-<seq>`, as entry ids and checkpoints are written.
fn is_entry_id(id: &str) -> bool {
    id.split_once('-')
        .is_some_and(|(ms, seq)| ms.parse::<u64>().is_ok() && seq.parse::<u64>().is_ok())
}

#[cfg(test)]
mod tests {
    use super::is_entry_id;

    #[test]
    fn checkpoints_must_be_entry_ids() {
        assert!(is_entry_id("123-0"));
        assert!(is_entry_id("0-0"));
        assert!(!is_entry_id("123"));
        assert!(!is_entry_id("$"));
        assert!(!is_entry_id("a-1"));
    }
}

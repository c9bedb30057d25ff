//! The worker's loop: one step at a time (group, own pending entries, claim pass, a batch of new
//! entries, possibly one read ahead), pausing with backoff after a failed step, until cancelled.

use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use fred::prelude::*;

use super::StreamConsumer;
use super::commit::{Commit, Delivery};
use crate::error::{RedisError, Result};
use crate::streams::handler::StreamHandler;
use crate::streams::wire::{RawEntry, error_means_group_lost, parse_read_response};

/// The longest pause after a failed step.
const STEP_PAUSE_MAX: Duration = Duration::from_secs(2);

/// Pauses after failed steps (Redis away, the group lost): 100 ms, doubling up to 2 s.
const STEP_BACKOFF: ExponentialBuilder = ExponentialBuilder::new()
    .with_min_delay(Duration::from_millis(100))
    .with_max_delay(STEP_PAUSE_MAX)
    .without_max_times();

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

impl StreamConsumer {
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
        // The pauses of the current run of failures; a step that succeeds starts them over.
        let mut pauses: Option<ExponentialBackoff> = None;
        let mut failures: u32 = 0;
        tracing::info!(stream = %self.settings.stream, group = %self.settings.group, consumer = %self.settings.consumer, "stream consumer started");
        // A batch read ahead is in hand: it is finished too before returning.
        while !self.cancel.is_cancelled() || state.prefetched.is_some() {
            match self.step(&reader, handler, &mut state).await {
                Ok(()) => {
                    failures = 0;
                    pauses = None;
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    if error_means_group_lost(&error) {
                        tracing::warn!(stream = %self.settings.stream, group = %self.settings.group, %error, "consumer group or stream is gone; recreating the group");
                        state.group_ready = false;
                    }
                    let pause = pauses
                        .get_or_insert_with(|| STEP_BACKOFF.build())
                        .next()
                        .unwrap_or(STEP_PAUSE_MAX);
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
}

//! The relay of a Postgres outbox onto a Redis stream: moves rows onto the stream in outbox
//! order, once each, and refills the stream when Redis lost entries. webhook-ingest relays its
//! Stripe ledger with it and campaign-api its organisation outbox; each describes its table with
//! an [`Outbox`].
//!
//! # Shape
//! Each row's `seq` is its stream entry id (`<seq>-0`, [`platform_redis::outbox`]). Every tick
//! reads the stream's last id and its groups' checkpoints (one script), then appends the rows
//! after the last id. Redis refuses an id at or below its last one, so an entry can never be
//! appended twice, by a retry or by a second relay.
//!
//! # When Redis lost entries
//! The relay keeps its position durably (`stream_relay.relayed_seq`: every row up to it was
//! appended once) and, about every second, each group's checkpoint (`stream_group_checkpoints`:
//! everything up to it acknowledged by the group), mirrored into Redis for consumers that must
//! recreate their group ([`position`]). A stream whose last id is below the durable position, or
//! that is gone, lost data: the relay recreates the groups it knows at their checkpoints and
//! appends again from the lowest checkpoint (not from the start of the outbox, which would redo
//! everything ever and overflow the stream's cap), or from the stream's own last id when that is
//! higher. A stream restored from an older snapshot keeps its last id, so appending simply
//! continues after it. Consumers are idempotent on the entry, so what a group gets twice changes
//! nothing.
//!
//! # Sequence gaps
//! `seq` values are taken when rows are inserted but become visible when their transaction
//! commits, so a lower one can appear after a higher one; once a higher id is on the stream, the
//! lower one could never be appended. The relay therefore appends only a gap-free run after its
//! position. At a gap it notes the reading snapshot's `xmax` and waits until a later snapshot's
//! `xmin` reaches it: every transaction that could still hold the missing `seq` has then ended
//! (writers take their transaction id before their `seq`: `pg_current_xact_id()` first), so a
//! row still missing never will appear (a rolled-back insert, a duplicate's spent value).
//!
//! # One relay
//! Replicas compete for a Postgres advisory lock held on a connection of its own; the holder
//! relays, the others wait. Postgres, not Redis, so a Redis that lost everything cannot hand the
//! role to two replicas; and two at once could still not append an entry twice.

pub mod position;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::future::Future;

use chrono::{DateTime, Utc};
use platform_redis::RedisClients;
use platform_redis::StreamName;
use platform_redis::outbox::{self, Appended, GroupPosition, OutboxEntry, StreamState};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use sqlx::postgres::PgConnection;
use sqlx::{Connection, PgPool};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// The columns an [`Outbox::rows_after`] query selects for [`OutboxRow::snapshot_xmin`] and
/// [`OutboxRow::snapshot_xmax`].
pub const SNAPSHOT_COLUMNS: &str =
    "pg_snapshot_xmin(pg_current_snapshot())::text::int8 AS snapshot_xmin,
     pg_snapshot_xmax(pg_current_snapshot())::text::int8 AS snapshot_xmax";

/// One outbox table as the relay sees it.
pub trait Outbox: Send + Sync + 'static {
    /// The stream it feeds.
    const STREAM: StreamName;
    /// Advisory lock key of its relay (any constant unique in the database).
    const LEADER_LOCK: i64;
    /// The Postgres sequence numbering its rows.
    const SEQUENCE: &'static str;

    /// Rows after `after` (by `seq`, at most `limit`), each with the reading snapshot's bounds
    /// ([`SNAPSHOT_COLUMNS`]).
    fn rows_after(
        &self,
        db: &PgPool,
        after: i64,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<OutboxRow>, RelayError>> + Send;
}

/// A row of an outbox, with the snapshot it was read in.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    pub seq: i64,
    /// When the row was written (for the relay lag).
    pub recorded_at: DateTime<Utc>,
    /// The reading snapshot's xmin: every transaction below it has ended.
    pub snapshot_xmin: i64,
    /// The reading snapshot's xmax: every transaction that had started is below it.
    pub snapshot_xmax: i64,
    /// The entry to append; `None` for a row that holds its `seq` but is not relayed.
    pub entry: Option<OutboxEntry>,
}

/// What a relay counts, labelled with its stream. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RelayMetrics {
    /// Rows appended to the stream for the first time.
    pub relayed: Counter,
    /// Rows appended again after Redis lost them.
    pub redriven: Counter,
    /// Sequence gaps found final and passed.
    pub gaps_skipped: Counter,
    /// Time from a row's commit to its stream entry.
    pub relay_lag: Histogram,
}

impl RelayMetrics {
    /// Registers `outbox_relayed_total`, `outbox_redriven_total`, `outbox_gaps_skipped_total` and
    /// `outbox_relay_lag_seconds`, each with `stream="<stream>"`.
    pub fn register(metrics: &Metrics, stream: StreamName) -> Self {
        let this = Self {
            relayed: Counter::default(),
            redriven: Counter::default(),
            gaps_skipped: Counter::default(),
            // 100 µs .. ~3.3 s
            relay_lag: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
        };
        let label = ("stream", stream.as_str());
        for (name, help, counter) in [
            ("outbox_relayed", "Outbox rows appended to their stream", &this.relayed),
            (
                "outbox_redriven",
                "Outbox rows appended again after Redis lost their stream entries",
                &this.redriven,
            ),
            ("outbox_gaps_skipped", "Outbox sequence gaps found final", &this.gaps_skipped),
        ] {
            metrics.register_labelled(label, name, help, counter.clone());
        }
        metrics.register_labelled(
            label,
            "outbox_relay_lag_seconds",
            "Time from an outbox row's commit to its stream entry",
            this.relay_lag.clone(),
        );
        this
    }
}

/// How the relay runs.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// Most rows per tick (one Postgres read, one pipelined Redis round trip).
    pub batch: usize,
    /// How often the outbox is read when nothing woke the relay (rows of other replicas).
    pub poll: Duration,
    /// How often group checkpoints are stored.
    pub checkpoint_every: Duration,
    /// `XADD MAXLEN ~` cap of the stream.
    pub stream_max_len: usize,
}

/// The relay task of one replica.
#[derive(Debug, Clone)]
pub struct Relay<O> {
    outbox: O,
    db: PgPool,
    stream: outbox::Relay,
    name: &'static str,
    settings: RelaySettings,
    wake: Arc<Notify>,
    metrics: RelayMetrics,
}

/// What the leader remembers between ticks.
#[derive(Debug, Default)]
struct Position {
    /// Durable: every row up to it was appended once.
    relayed: i64,
    /// Durable checkpoints of the groups (name → seq).
    groups: BTreeMap<String, i64>,
    last_checkpoint: Option<Instant>,
    /// A gap in `seq` at this value, seen by a snapshot with this `xmax`.
    gap: Option<(i64, i64)>,
    /// Whether the stream's ids were compared with the outbox sequence since leading.
    ids_checked: bool,
}

impl<O: Outbox> Relay<O> {
    /// A relay of `outbox`; `wake` cuts the poll short when a writer committed rows.
    pub fn new(
        outbox: O,
        db: PgPool,
        redis: &RedisClients,
        settings: RelaySettings,
        wake: Arc<Notify>,
        metrics: RelayMetrics,
    ) -> Self {
        let stream = outbox::Relay::new(redis, O::STREAM, settings.stream_max_len);
        Self { outbox, db, stream, name: O::STREAM.as_str(), settings, wake, metrics }
    }

    /// Runs until `stop` fires: waits to lead, then relays while it leads.
    pub async fn run(self, stop: CancellationToken) {
        let mut failures = 0u32;
        while !stop.is_cancelled() {
            let outcome = match self.lead().await {
                Ok(Some(leader)) => self.relay_while_leading(leader, &stop).await,
                Ok(None) => Ok(()),
                Err(error) => Err(error.into()),
            };
            match outcome {
                Ok(()) => failures = 0,
                Err(error) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(stream = self.name, %error, failures, "outbox relay failed; retrying");
                }
            }
            let pause = backoff(failures).max(self.settings.poll.max(Duration::from_millis(500)));
            tokio::select! {
                () = stop.cancelled() => {}
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// A connection holding the leader lock, or `None` when another replica leads.
    async fn lead(&self) -> Result<Option<PgConnection>, sqlx::Error> {
        let mut connection = self.db.acquire().await?.detach();
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(O::LEADER_LOCK)
            .fetch_one(&mut connection)
            .await?;
        if locked {
            tracing::info!(stream = self.name, "this replica relays the outbox to the stream");
            Ok(Some(connection))
        } else {
            let _ = connection.close().await;
            Ok(None)
        }
    }

    async fn relay_while_leading(
        &self,
        mut leader: PgConnection,
        stop: &CancellationToken,
    ) -> Result<(), RelayError> {
        let mut position = Position {
            relayed: position::relayed_seq(&self.db, self.name).await?,
            ..Position::default()
        };
        let mut failures = 0u32;
        let mut last_ping = Instant::now();
        while !stop.is_cancelled() {
            // The lock lives as long as its connection: check it now and then.
            if last_ping.elapsed() >= Duration::from_secs(2) {
                sqlx::query("SELECT 1").execute(&mut leader).await?;
                last_ping = Instant::now();
            }
            let pause = match self.tick(&mut position).await {
                Ok(true) => {
                    failures = 0;
                    continue;
                }
                Ok(false) => {
                    failures = 0;
                    self.settings.poll
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(stream = self.name, %error, failures, "outbox relay tick failed; retrying");
                    backoff(failures)
                }
            };
            tokio::select! {
                () = stop.cancelled() => {}
                () = self.wake.notified() => {}
                () = tokio::time::sleep(pause) => {}
            }
        }
        let _ = leader.close().await;
        Ok(())
    }

    /// One pass; true when it appended or skipped something (more may be waiting).
    async fn tick(&self, position: &mut Position) -> Result<bool, RelayError> {
        let state = self.stream.state().await?;
        self.checkpoint(&state, position).await?;
        let after = self.start(&state, position).await?;
        let rows = self.outbox.rows_after(&self.db, after, self.settings.batch as i64).await?;
        let (run, end) = self.gap_free_run(after, &rows, position);
        if end == after {
            return Ok(false);
        }
        let relayable: Vec<&OutboxRow> = run.iter().filter(|row| row.entry.is_some()).collect();
        let entries: Vec<OutboxEntry> =
            relayable.iter().filter_map(|row| row.entry.clone()).collect();
        let appended = self.stream.append(&entries).await?;
        let now = Utc::now();
        for (row, outcome) in relayable.iter().zip(appended) {
            if outcome != Appended::Now {
                continue;
            }
            if row.seq <= position.relayed {
                self.metrics.redriven.inc();
            } else {
                self.metrics.relayed.inc();
                let lag = (now - row.recorded_at).num_microseconds().unwrap_or(0);
                self.metrics.relay_lag.observe(lag.max(0) as f64 / 1e6);
            }
        }
        if end > position.relayed {
            position.relayed = end;
            position::save_relayed_seq(&self.db, self.name, end).await?;
        }
        Ok(true)
    }

    /// Where this tick appends from; on a loss, heals the groups first.
    async fn start(&self, state: &StreamState, position: &mut Position) -> Result<i64, RelayError> {
        let last = i64::try_from(state.last).unwrap_or(i64::MAX);
        if !position.ids_checked {
            // Entries above anything the outbox numbered (a stream written by another producer)
            // would make Redis refuse every append after them: say so once, loudly.
            let top = position::sequence_top(&self.db, O::SEQUENCE).await?;
            if last > top {
                tracing::error!(
                    stream = self.name,
                    stream_last = last,
                    outbox_top = top,
                    "the stream holds entry ids above every outbox seq; nothing can be appended after them until the stream is drained and deleted"
                );
            }
            position.ids_checked = true;
        }
        if last >= position.relayed && last > 0 {
            return Ok(last);
        }
        // The stream is gone or behind what was appended: Redis lost entries. Refill from the
        // lowest group checkpoint; with no group known, what is left of the stream is the
        // reference (and an empty stream has no reader to refill for).
        let floor = match position.groups.values().min() {
            Some(lowest) => *lowest,
            None if last > 0 => last,
            None => position.relayed,
        };
        let from = last.max(floor.min(position.relayed));
        let mut healed = Vec::new();
        for (group, checkpoint) in &position.groups {
            if !state.groups.iter().any(|g| &g.name == group)
                && self.stream.ensure_group(group, *checkpoint as u64).await?
            {
                healed.push(group.as_str());
            }
        }
        if from < position.relayed {
            tracing::warn!(stream = self.name, stream_last = last, relayed = position.relayed, from, groups_recreated = ?healed, "the stream lost entries; appending them again from the outbox");
        }
        Ok(from)
    }

    /// Stores the groups' checkpoints every `checkpoint_every` and mirrors them into Redis.
    async fn checkpoint(
        &self,
        state: &StreamState,
        position: &mut Position,
    ) -> Result<(), RelayError> {
        let due = position
            .last_checkpoint
            .is_none_or(|at| at.elapsed() >= self.settings.checkpoint_every);
        if !due {
            return Ok(());
        }
        // A group can only have acknowledged entries this relay appended: up to the stream's
        // last id while that is an outbox seq, else (ids of another writer) up to the durable
        // position. Anything past that is clamped, so a refill never skips a row.
        let top = position::sequence_top(&self.db, O::SEQUENCE).await?;
        let last = i64::try_from(state.last).unwrap_or(i64::MAX);
        let ours = if last <= top { position.relayed.max(last) } else { position.relayed };
        let seen: Vec<(String, i64)> = state
            .groups
            .iter()
            .map(|g| (g.name.clone(), i64::try_from(g.checkpoint).unwrap_or(i64::MAX).min(ours)))
            .collect();
        let durable = position::save_checkpoints(&self.db, self.name, &seen).await?;
        position.groups = durable.into_iter().collect();
        let mirror: Vec<GroupPosition> = position
            .groups
            .iter()
            .map(|(name, seq)| GroupPosition {
                name: name.clone(),
                checkpoint: (*seq).max(0) as u64,
            })
            .collect();
        self.stream.publish_checkpoints(&mirror).await?;
        position.last_checkpoint = Some(Instant::now());
        Ok(())
    }

    /// The rows to handle now: the gap-free run after `after`, and the seq it ends at.
    fn gap_free_run<'a>(
        &self,
        after: i64,
        rows: &'a [OutboxRow],
        position: &mut Position,
    ) -> (&'a [OutboxRow], i64) {
        let mut expected = after + 1;
        let mut taken = 0;
        for row in rows {
            if row.seq > expected && expected > position.relayed {
                // A gap the relay has not passed before: final only once every transaction that
                // was running when it was first seen has ended.
                match position.gap {
                    Some((seq, xmax)) if seq == expected && row.snapshot_xmin >= xmax => {
                        self.metrics.gaps_skipped.inc();
                        position.gap = None;
                    }
                    Some((seq, _)) if seq == expected => break,
                    _ => {
                        position.gap = Some((expected, row.snapshot_xmax));
                        break;
                    }
                }
            }
            expected = row.seq + 1;
            taken += 1;
        }
        (&rows[..taken], expected - 1)
    }
}

fn backoff(failures: u32) -> Duration {
    Duration::from_millis(50u64 << failures.min(6)).min(Duration::from_secs(2))
}

/// Why a tick failed (all retried).
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("redis: {0}")]
    Redis(#[from] platform_redis::RedisError),
    #[error("postgres: {0}")]
    Postgres(#[from] sqlx::Error),
    #[error("encode: {0}")]
    Encode(#[from] serde_json::Error),
}

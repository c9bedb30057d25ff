//! The relay: moves ledger rows onto the Stripe stream, in ledger order, and refills the stream
//! when Redis lost entries.
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
//! recreate their group. A stream whose last id is below the durable position, or that is gone,
//! lost data: the relay recreates the groups it knows at their checkpoints and appends again from
//! the lowest checkpoint (not from the start of the ledger, which would redo every Stripe sync
//! ever and overflow the stream's cap), or from the stream's own last id when that is higher.
//! A stream restored from an older snapshot keeps its last id, so appending simply continues
//! after it. Consumers are idempotent on the event, so what a group gets twice changes nothing.
//!
//! # Sequence gaps
//! `seq` values are taken when rows are inserted but become visible when their transaction
//! commits, so a lower one can appear after a higher one; once a higher id is on the stream, the
//! lower one could never be appended. The relay therefore appends only a gap-free run after its
//! position. At a gap it notes the reading snapshot's `xmax` and waits until a later snapshot's
//! `xmin` reaches it: every transaction that could still hold the missing `seq` has then ended
//! (inserts take their transaction id before their `seq`, [`crate::db::ledger::InsertBatch`]), so a
//! row still missing never will appear (a rolled-back batch, a duplicate's spent value).
//!
//! # One relay
//! Replicas compete for a Postgres advisory lock held on a connection of its own; the holder
//! relays, the others wait. Postgres, not Redis, so a Redis that lost everything cannot hand the
//! role to two replicas; and two at once could still not append an entry twice.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use platform_redis::RedisClients;
use platform_redis::StreamName;
use platform_redis::messages::StripeEventMessage;
use platform_redis::outbox::{self, Appended, GroupPosition, OutboxEntry, StreamState};
use sqlx::postgres::PgConnection;
use sqlx::{Connection, PgPool};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::db::ledger::{self, OutboxRow};
use crate::metrics::WebhookMetrics;

/// Advisory lock key of the Stripe stream's relay (any constant unique in the database).
const LEADER_LOCK: i64 = 0x5757_4852_454c_4159;

/// How the relay runs.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// Most rows per tick (one Postgres read, one pipelined Redis round trip).
    pub batch: usize,
    /// How often the ledger is read when nothing woke the relay (rows of other replicas).
    pub poll: Duration,
    /// How often group checkpoints are stored.
    pub checkpoint_every: Duration,
    /// `XADD MAXLEN ~` cap of the stream.
    pub stream_max_len: usize,
}

/// The relay task of one replica.
#[derive(Debug, Clone)]
pub struct Relay {
    db: PgPool,
    stream: outbox::Relay,
    name: &'static str,
    settings: RelaySettings,
    wake: Arc<Notify>,
    metrics: WebhookMetrics,
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
    /// Whether the stream's ids were compared with the ledger's sequence since leading.
    ids_checked: bool,
}

impl Relay {
    pub fn new(
        db: PgPool,
        redis: &RedisClients,
        settings: RelaySettings,
        wake: Arc<Notify>,
        metrics: WebhookMetrics,
    ) -> Self {
        let stream = outbox::Relay::new(redis, StreamName::StripeEvents, settings.stream_max_len);
        Self { db, stream, name: StreamName::StripeEvents.as_str(), settings, wake, metrics }
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
                    tracing::warn!(%error, failures, "stripe stream relay failed; retrying");
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
            .bind(LEADER_LOCK)
            .fetch_one(&mut connection)
            .await?;
        if locked {
            tracing::info!(stream = self.name, "this replica relays the ledger to the stream");
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
            relayed: ledger::relayed_seq(&self.db, self.name).await?,
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
                    tracing::warn!(%error, failures, "stripe stream relay tick failed; retrying");
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
        let rows = ledger::outbox_after(&self.db, after, self.settings.batch as i64).await?;
        let (run, end) = self.gap_free_run(after, &rows, position);
        if end == after {
            return Ok(false);
        }
        let relayable: Vec<&OutboxRow> =
            run.iter().filter(|row| row.status == "received").collect();
        let entries: Vec<OutboxEntry> =
            relayable.iter().map(|row| entry_of(row)).collect::<Result<_, _>>()?;
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
                let lag = (now - row.received_at).num_microseconds().unwrap_or(0);
                self.metrics.relay_lag.observe(lag.max(0) as f64 / 1e6);
            }
        }
        if end > position.relayed {
            position.relayed = end;
            ledger::save_relayed_seq(&self.db, self.name, end).await?;
        }
        Ok(true)
    }

    /// Where this tick appends from; on a loss, heals the groups first.
    async fn start(&self, state: &StreamState, position: &mut Position) -> Result<i64, RelayError> {
        let last = i64::try_from(state.last).unwrap_or(i64::MAX);
        if !position.ids_checked {
            // Entries above anything the ledger numbered (a stream written by another producer)
            // would make Redis refuse every append after them: say so once, loudly.
            let top = ledger::sequence_top(&self.db).await?;
            if last > top {
                tracing::error!(
                    stream = self.name,
                    stream_last = last,
                    ledger_top = top,
                    "the stream holds entry ids above every ledger seq; nothing can be appended after them until the stream is drained and deleted"
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
            tracing::warn!(stream = self.name, stream_last = last, relayed = position.relayed, from, groups_recreated = ?healed, "the stream lost entries; appending them again from the ledger");
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
        // last id while that is a ledger seq, else (ids of another writer) up to the durable
        // position. Anything past that is clamped, so a refill never skips a row.
        let top = ledger::sequence_top(&self.db).await?;
        let last = i64::try_from(state.last).unwrap_or(i64::MAX);
        let ours = if last <= top { position.relayed.max(last) } else { position.relayed };
        let seen: Vec<(String, i64)> = state
            .groups
            .iter()
            .map(|g| (g.name.clone(), i64::try_from(g.checkpoint).unwrap_or(i64::MAX).min(ours)))
            .collect();
        let durable = ledger::save_checkpoints(&self.db, self.name, &seen).await?;
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

/// The stream entry of a ledger row.
fn entry_of(row: &OutboxRow) -> Result<OutboxEntry, RelayError> {
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

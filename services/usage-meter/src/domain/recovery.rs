//! Detects that Redis lost usage data and restores the counters from the Postgres copy at once,
//! so new counts add on top of the restored values and nothing is counted twice.
//!
//! **Detection** (every flusher tick, before the flush): Postgres keeps the largest flush
//! sequence it committed; Redis keeps the sequence of its latest flush read. Redis holding none
//! (`FLUSHALL`, a restart without data) or a smaller one (an older snapshot, a lost AOF tail)
//! has lost data. Recording calls check the same condition inside their script, against the
//! sequence the process last saw committed ([`Fence`]), so they stop counting on a damaged Redis
//! before the tick notices.
//!
//! **Restore** (one replica at a time, a token with a lease in Redis):
//! 1. claim the restore and delete the sequence: every recording call now parks (stream: its
//!    keys and arguments go to a list, committed with the `XACK`) or is refused (HTTP: 503);
//! 2. move Postgres to the next epoch, so a flush read before the loss can no longer commit;
//! 3. put back the counters, gauges and top sets of every month that can still receive events
//!    (Redis takes the larger value; a gauge the later reading), then the idempotency marks of
//!    durable metrics copied within the idempotency window;
//! 4. replay the parked calls in order, then set the sequence to the new epoch (recording
//!    resumes) if nothing was parked meanwhile.
//!
//! Each step is idempotent and checks the token, so a restore cut short (the replica died,
//! Redis lost data again) is simply run again.

use std::time::Duration;

use chrono::{DateTime, Utc};
use platform_redis::RedisClients;
use serde::Serialize;
use sqlx::PgPool;

use crate::db;
use crate::domain::usage::Month;
use crate::error::FlushError;
use crate::store::sync::{self, Begin, Open, RestoreRow};
use crate::store::{self, Fence, Retention};

/// How long a restore claim lives without progress (each step extends it).
pub const LEASE: Duration = Duration::from_secs(30);

/// Rows per Postgres page and per restore script call.
const PAGE: i64 = 1000;

/// What a restore put back (part of the flush trigger's answer).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct RestoreReport {
    /// Counter rows (org, month, metric) restored.
    pub rows: usize,
    /// Idempotency marks restored.
    pub marks: usize,
    /// Recording calls parked during the restore and applied after it.
    pub replayed: usize,
}

/// The outcome of [`recover`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// Redis holds everything Postgres has.
    Intact,
    /// Redis had lost data; this call restored it.
    Restored(RestoreReport),
    /// Another replica is restoring.
    Busy,
    /// The restore lost its claim (Redis lost data again, or the lease passed to another
    /// replica); the next tick checks again.
    Interrupted,
}

/// What a restore needs besides the stores.
#[derive(Debug, Clone, Copy)]
pub struct RestoreScope {
    pub retention: Retention,
    /// The oldest month that can still receive events (older ones are read from Postgres).
    pub from_month: Month,
}

/// Checks Redis against Postgres and restores it when it lost data (see the module doc).
#[tracing::instrument(skip_all)]
pub async fn recover(
    clients: &RedisClients,
    pool: &PgPool,
    fence: &Fence,
    token: &str,
    scope: RestoreScope,
) -> Result<Recovery, FlushError> {
    let durable = db::durable_seq(pool).await?;
    fence.raise(durable);
    match sync::begin_restore(clients, durable, token, LEASE).await? {
        Begin::Intact => return Ok(Recovery::Intact),
        Begin::Busy => return Ok(Recovery::Busy),
        Begin::Begun => {}
    }
    tracing::warn!(
        durable_seq = durable,
        "usage data in redis is missing or older than the postgres copy; restoring it"
    );
    let seq = db::next_epoch(pool, durable).await?;
    let mut report = RestoreReport::default();
    let ttl = scope.retention.counter_ttl_secs;

    let from = scope.from_month.to_string();
    let mut after = (String::new(), String::new(), String::new());
    loop {
        let page = db::rows_from_month(pool, &from, &after, PAGE).await?;
        let Some(last) = page.last() else { break };
        after = (last.month.clone(), last.org.clone(), last.metric.clone());
        let rows: Vec<RestoreRow> = page
            .iter()
            .map(|r| RestoreRow {
                org: r.org.clone(),
                month: r.month.clone(),
                field: r.metric.clone(),
                value: r.value,
                at_ms: r.at_ms,
            })
            .collect();
        if !sync::restore_counters(clients, token, LEASE, ttl, &rows).await? {
            return Ok(interrupted("restoring counters"));
        }
        report.rows += rows.len();
        if page.len() < PAGE as usize {
            break;
        }
    }

    let window = scope.retention.idempotency_window_secs;
    let now: DateTime<Utc> = Utc::now();
    let mut after = (String::new(), String::new());
    loop {
        let page = db::recent_marks(pool, window, &after, PAGE).await?;
        let Some(last) = page.last() else { break };
        after = (last.org.clone(), last.key.clone());
        let members: Vec<String> = page.iter().map(|m| format!("{}|{}", m.org, m.key)).collect();
        if !sync::restore_marks(clients, token, LEASE, window, now.timestamp(), &members).await? {
            return Ok(interrupted("restoring idempotency marks"));
        }
        report.marks += members.len();
        if page.len() < PAGE as usize {
            break;
        }
    }

    loop {
        match store::replay_parked(clients, token, Utc::now()).await? {
            Some(n) => report.replayed += n,
            None => return Ok(interrupted("replaying parked batches")),
        }
        match sync::open(clients, token, seq).await? {
            Open::Opened => break,
            Open::Parked => continue,
            Open::Lost => return Ok(interrupted("reopening recording")),
        }
    }
    fence.raise(seq);
    tracing::warn!(
        rows = report.rows,
        marks = report.marks,
        replayed = report.replayed,
        seq,
        "usage counters restored from postgres; recording resumed"
    );
    Ok(Recovery::Restored(report))
}

fn interrupted(step: &'static str) -> Recovery {
    tracing::warn!(step, "usage restore lost its claim; checking again next tick");
    Recovery::Interrupted
}

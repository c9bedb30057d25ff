//! `api_request` usage events: counted in memory on the request path (no Redis round trip) and
//! appended to the usage stream in batches by a background task, one pipelined round trip each.
//!
//! Counts are aggregated per organisation between flushes: one [`UsageEvent`] per organisation
//! per flush with `value` = requests, so memory is bounded by the number of organisations
//! ([`UsageSettings::max_orgs`]; requests of further organisations are dropped and counted while
//! the table is full). A batch that fails (Redis down) is kept as it is and retried first, with
//! the same idempotency keys, so usage-meter never counts a partly written batch twice; new
//! requests keep accumulating meanwhile and go out once the old batch is through.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use platform_redis::messages::UsageEvent;
use platform_redis::streams::StreamProducer;
use serde::Deserialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// `[usage]` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UsageSettings {
    /// How often counted requests are appended to the usage stream.
    pub flush_interval_ms: u64,
    /// Most organisations counted between two successful flushes.
    pub max_orgs: usize,
    /// Approximate cap (`MAXLEN ~`) of the usage stream.
    pub stream_max_len: usize,
}

impl Default for UsageSettings {
    fn default() -> Self {
        Self { flush_interval_ms: 1_000, max_orgs: 10_000, stream_max_len: 1_000_000 }
    }
}

#[derive(Debug)]
struct Count {
    requests: i64,
    since: DateTime<Utc>,
}

#[derive(Debug, Default)]
struct State {
    counts: HashMap<Uuid, Count>,
    /// A batch whose append failed; retried unchanged before anything new.
    unsent: Vec<UsageEvent>,
}

/// The in-memory buffer. Cheap to clone.
#[derive(Debug, Clone)]
pub struct UsageBuffer {
    state: Arc<Mutex<State>>,
    max_orgs: usize,
    dropped: Arc<AtomicU64>,
    flushed: Arc<AtomicU64>,
    instance: String,
    sequence: Arc<AtomicU64>,
}

impl UsageBuffer {
    pub fn new(max_orgs: usize) -> Self {
        let id = Uuid::new_v4().simple().to_string();
        Self {
            state: Arc::default(),
            max_orgs: max_orgs.max(1),
            dropped: Arc::default(),
            flushed: Arc::default(),
            instance: id[..12].to_owned(),
            sequence: Arc::default(),
        }
    }

    /// Counts one public request of `org_id`. Memory only.
    pub fn record_api_request(&self, org_id: Uuid) {
        let mut state = lock(&self.state);
        let full = state.counts.len() >= self.max_orgs;
        match state.counts.get_mut(&org_id) {
            Some(count) => count.requests += 1,
            None if full => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            None => {
                state.counts.insert(org_id, Count { requests: 1, since: Utc::now() });
            }
        }
    }

    /// Requests dropped because the table was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Events appended so far.
    pub fn flushed(&self) -> u64 {
        self.flushed.load(Ordering::Relaxed)
    }

    /// Appends what is buffered; returns how many events went out. On failure everything stays.
    pub async fn flush(&self, producer: &StreamProducer) -> platform_redis::Result<usize> {
        let batch = {
            let mut state = lock(&self.state);
            if state.unsent.is_empty() && !state.counts.is_empty() {
                let sequence = self.sequence.fetch_add(1, Ordering::Relaxed);
                let counts = std::mem::take(&mut state.counts);
                state.unsent = counts
                    .into_iter()
                    .map(|(org_id, count)| UsageEvent {
                        org_id: org_id.to_string(),
                        metric: "api_request".to_owned(),
                        value: count.requests,
                        occurred_at: Some(count.since.to_rfc3339_opts(SecondsFormat::Millis, true)),
                        idempotency_key: Some(format!(
                            "campaign-api:api_request:{}:{sequence}:{org_id}",
                            self.instance
                        )),
                        metadata: None,
                    })
                    .collect();
            }
            state.unsent.clone()
        };
        if batch.is_empty() {
            return Ok(0);
        }
        producer.append_all(&batch).await?;
        lock(&self.state).unsent.clear();
        self.flushed.fetch_add(batch.len() as u64, Ordering::Relaxed);
        Ok(batch.len())
    }

    /// Flushes every `interval` until `stop`, then once more.
    pub fn spawn_flusher(
        &self,
        producer: StreamProducer,
        interval: Duration,
        stop: CancellationToken,
    ) -> JoinHandle<()> {
        let buffer = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut failing = false;
            loop {
                let stopping = tokio::select! {
                    () = stop.cancelled() => true,
                    _ = tick.tick() => false,
                };
                match buffer.flush(&producer).await {
                    Ok(sent) => {
                        if failing {
                            tracing::info!(sent, "usage events flushed again");
                        }
                        failing = false;
                    }
                    Err(error) => {
                        if !failing {
                            tracing::warn!(%error, "usage events not flushed; kept in memory and retried");
                        }
                        failing = true;
                    }
                }
                if stopping {
                    return;
                }
            }
        })
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

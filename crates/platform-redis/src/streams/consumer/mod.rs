//! The consumer-group worker: takes its own pending entries, then new ones, reclaims idle ones,
//! commits handlers' effects with the `XACK`, dead-letters poison and recreates a lost group.
//!
//! Layout: this module holds the worker and its counters; `run` is its loop (read, pause after
//! failures, read ahead), `take` takes pending entries (its own at start, idle ones by
//! `XAUTOCLAIM`), `commit` turns a batch into one `MULTI`/`EXEC` (decode, dead-letter, handle,
//! `XACK`), `group` creates the group at its checkpoint.

mod commit;
mod group;
mod run;
mod take;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio_util::sync::CancellationToken;

use super::settings::{ConsumerSettings, automatic_consumer_name};
use crate::client::RedisClients;

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
}

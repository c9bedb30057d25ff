//! How a consumer group is read: [`ConsumerSettings`], the config-file form [`GroupSettings`],
//! where a new group starts ([`StartFrom`]) and the default consumer names.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use serde::Deserialize;

use crate::error::{RedisError, Result};
use crate::keys::StreamName;

/// Where a newly created group starts reading.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StartFrom {
    /// Every entry still in the stream (`XGROUP CREATE … 0`).
    Beginning,
    /// Only entries appended after the group was created (`XGROUP CREATE … $`).
    #[default]
    New,
}

/// How a [`super::StreamConsumer`] reads. Build with [`ConsumerSettings::new`] and change fields.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    /// The stream to read.
    pub stream: StreamName,
    /// The consumer group; each service reading a stream has its own.
    pub group: String,
    /// This consumer's name in the group: stable across restarts of the process, distinct from
    /// every other live consumer of the group. Empty (the default): the host name, `-2`, `-3`, …
    /// appended for further consumers of the group in this process (see the module doc).
    pub consumer: String,
    /// Entries per `XREADGROUP` / `XAUTOCLAIM` page, and so per handler call.
    pub batch_size: usize,
    /// How long one `XREADGROUP` waits for new entries.
    pub block: Duration,
    /// Pending entries idle longer than this are reclaimed; also the lease of a delivered batch.
    pub claim_idle: Duration,
    /// An entry delivered more often than this goes to the dead-letter stream.
    pub max_deliveries: u64,
    /// Where the group starts when this consumer creates it and the stream's checkpoint hash
    /// has no entry for it.
    pub start_from: StartFrom,
    /// Approximate cap of the dead-letter stream.
    pub dead_letter_max_len: usize,
}

/// A service's config section for one consumer group (e.g. `[stripe_events]`), in the units a
/// config file uses; [`GroupSettings::consumer`] turns it into [`ConsumerSettings`]. Missing
/// fields take the [`ConsumerSettings::new`] defaults except the group, which has none: the
/// service's default file names it, and [`ConsumerSettings::validate`] rejects an empty one.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GroupSettings {
    /// false: this service does not consume the stream.
    pub enabled: bool,
    /// This service's consumer group.
    pub group: String,
    /// This replica's consumer name; empty: the host name (pod name in Kubernetes). Give each
    /// replica its own when several run on one host.
    pub consumer: String,
    /// Entries per read, and so per handler call.
    pub batch_size: usize,
    /// How long one read blocks.
    pub block_ms: u64,
    /// Pending entries idle this long are reclaimed (also the retry delay of an entry left
    /// pending on a transient failure).
    pub claim_idle_ms: u64,
    /// Deliveries before an entry goes to the dead-letter stream.
    pub max_deliveries: u64,
}

impl Default for GroupSettings {
    fn default() -> Self {
        let defaults = ConsumerSettings::new(StreamName::StripeEvents, "");
        Self {
            enabled: true,
            group: defaults.group,
            consumer: defaults.consumer,
            batch_size: defaults.batch_size,
            block_ms: millis(defaults.block),
            claim_idle_ms: millis(defaults.claim_idle),
            max_deliveries: defaults.max_deliveries,
        }
    }
}

impl GroupSettings {
    /// The consumer settings of this group on `stream` (other fields: [`ConsumerSettings::new`]).
    pub fn consumer(&self, stream: StreamName) -> ConsumerSettings {
        let mut settings = ConsumerSettings::new(stream, self.group.clone());
        settings.consumer.clone_from(&self.consumer);
        settings.batch_size = self.batch_size;
        settings.block = Duration::from_millis(self.block_ms);
        settings.claim_idle = Duration::from_millis(self.claim_idle_ms);
        settings.max_deliveries = self.max_deliveries;
        settings
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl ConsumerSettings {
    /// Defaults: batches of 100, 2 s block, 30 s claim idle, 5 deliveries, new entries only.
    pub fn new(stream: StreamName, group: impl Into<String>) -> Self {
        Self {
            stream,
            group: group.into(),
            consumer: String::new(),
            batch_size: 100,
            block: Duration::from_secs(2),
            claim_idle: Duration::from_secs(30),
            max_deliveries: 5,
            start_from: StartFrom::New,
            dead_letter_max_len: 100_000,
        }
    }

    /// Checks what the types cannot; the message names the setting.
    pub fn validate(&self) -> Result<()> {
        let problem = if self.group.is_empty() {
            "stream consumer group must not be empty"
        } else if self.consumer.trim() != self.consumer {
            "stream consumer name must not start or end with white space"
        } else if self.batch_size == 0 {
            "stream consumer batch_size must be > 0"
        } else if self.block.as_millis() == 0 {
            "stream consumer block must be at least 1 ms (0 would block forever)"
        } else if self.claim_idle < Duration::from_millis(10) {
            "stream consumer claim_idle must be at least 10 ms"
        } else if self.max_deliveries == 0 {
            "stream consumer max_deliveries must be > 0"
        } else {
            return Ok(());
        };
        Err(RedisError::Config(problem.into()))
    }
}

/// The name of a consumer whose settings leave it empty: the host name for the first consumer
/// of `stream`/`group` this process creates, `<host>-<n>` for the n-th. Deterministic across
/// restarts as long as the process creates its consumers in the same order (services create one).
pub(crate) fn automatic_consumer_name(stream: StreamName, group: &str) -> String {
    static CREATED: LazyLock<Mutex<HashMap<(StreamName, String), u32>>> =
        LazyLock::new(Mutex::default);
    let ordinal = {
        let mut created = CREATED.lock().unwrap_or_else(|p| p.into_inner());
        let count = created.entry((stream, group.to_owned())).or_insert(0);
        *count += 1;
        *count
    };
    let host = host_name();
    if ordinal == 1 { host } else { format!("{host}-{ordinal}") }
}

/// `$HOSTNAME`, else the kernel's host name, else `host`.
fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn automatic_names_are_the_host_name_then_numbered_per_group() {
        let host = host_name();
        let first = automatic_consumer_name(StreamName::UsageEvents, "names-test");
        let second = automatic_consumer_name(StreamName::UsageEvents, "names-test");
        let other_group = automatic_consumer_name(StreamName::UsageEvents, "names-test-other");
        assert_eq!(first, host);
        assert_eq!(second, format!("{host}-2"));
        assert_eq!(other_group, host);
    }

    #[test]
    fn a_configured_consumer_name_is_kept() {
        let group = GroupSettings {
            group: "g".into(),
            consumer: "replica-a".into(),
            ..GroupSettings::default()
        };
        let settings = group.consumer(StreamName::StripeEvents);
        assert_eq!(settings.consumer, "replica-a");
        assert!(settings.validate().is_ok());
        let padded = ConsumerSettings { consumer: " a".into(), ..settings };
        assert!(padded.validate().is_err());
    }
}

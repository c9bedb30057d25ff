//! Backlog gauges of the stream consumer groups a service runs, read from Redis at scrape time.
//!
//! Per group, labelled `stream` and `group` only (no tenant ever appears in a label):
//! - `stream_group_lag_entries`: entries not yet delivered to the group (`XINFO GROUPS` `lag`);
//!   absent while Redis cannot tell (see [`GroupLag::undelivered`]);
//! - `stream_group_pending_entries`: delivered and not acknowledged;
//! - `stream_group_oldest_pending_age_seconds`: idle time of the lowest-id pending entry (0 when
//!   none is pending);
//! - `stream_group_dead_letter_entries`: length of the group's dead-letter stream.
//!
//! The values belong to the group, not to the replica: every replica running the group's consumer
//! reports the same numbers, so aggregate with `max`, not `sum`. A group Redis does not know (yet)
//! or cannot be read within [`SCRAPE_TIMEOUT`] has no samples in that scrape.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use platform_redis::streams::{GroupLag, group_lag};
use platform_redis::{RedisClients, StreamName};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;

/// How long one scrape waits for the groups' backlog before it reports without them.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);

/// One watched group.
#[derive(Debug, Clone)]
struct Group {
    redis: RedisClients,
    stream: StreamName,
    name: String,
}

/// The watched groups and what the latest scrape read about them.
#[derive(Debug, Default)]
pub struct StreamGroups {
    groups: Mutex<Vec<Group>>,
    latest: Mutex<Vec<(StreamName, String, GroupLag)>>,
}

impl StreamGroups {
    /// Watches `group` on `stream` (again: no-op).
    pub fn add(&self, redis: &RedisClients, stream: StreamName, group: &str) {
        let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        if !groups.iter().any(|g| g.stream == stream && g.name == group) {
            groups.push(Group { redis: redis.clone(), stream, name: group.to_owned() });
        }
    }

    /// Reads every watched group's backlog now (concurrently, at most [`SCRAPE_TIMEOUT`]) for
    /// the next [`Collector::encode`]. A group that could not be read is left out.
    pub async fn refresh(&self) {
        let groups = self.groups.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let reads = groups.iter().map(|g| async move {
            match group_lag(&g.redis, g.stream, &g.name).await {
                Ok(lag) => lag.map(|lag| (g.stream, g.name.clone(), lag)),
                Err(error) => {
                    tracing::warn!(stream = %g.stream, group = %g.name, %error, "could not read the consumer group's backlog for metrics");
                    None
                }
            }
        });
        let read = tokio::time::timeout(SCRAPE_TIMEOUT, futures::future::join_all(reads)).await;
        let latest = match read {
            Ok(results) => results.into_iter().flatten().collect(),
            Err(_) => {
                tracing::warn!(
                    timeout_ms = SCRAPE_TIMEOUT.as_millis() as u64,
                    "consumer group backlog not read in time; scrape reports without it"
                );
                Vec::new()
            }
        };
        *self.latest.lock().unwrap_or_else(|p| p.into_inner()) = latest;
    }
}

/// Encodes what [`StreamGroups::refresh`] read last.
#[derive(Debug)]
pub struct StreamGroupCollector(pub Arc<StreamGroups>);

impl Collector for StreamGroupCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let latest = self.0.latest.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let labels = |stream: &StreamName, group: &str| {
            [("stream", stream.as_str().to_owned()), ("group", group.to_owned())]
        };
        {
            let mut family = encoder.encode_descriptor(
                "stream_group_lag_entries",
                "Entries of the stream not yet delivered to the consumer group",
                None,
                MetricType::Gauge,
            )?;
            for (stream, group, lag) in &latest {
                if let Some(undelivered) = lag.undelivered {
                    let labels = labels(stream, group);
                    ConstGauge::new(gauge(undelivered)).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "stream_group_pending_entries",
                "Entries delivered to the consumer group and not acknowledged",
                None,
                MetricType::Gauge,
            )?;
            for (stream, group, lag) in &latest {
                let labels = labels(stream, group);
                ConstGauge::new(gauge(lag.pending)).encode(family.encode_family(&labels)?)?;
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "stream_group_oldest_pending_age_seconds",
                "Time since the group's lowest-id pending entry was last delivered (0: none pending)",
                None,
                MetricType::Gauge,
            )?;
            for (stream, group, lag) in &latest {
                let age = lag.oldest_pending_idle.unwrap_or_default().as_secs_f64();
                let labels = labels(stream, group);
                ConstGauge::new(age).encode(family.encode_family(&labels)?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "stream_group_dead_letter_entries",
            "Entries in the consumer group's dead-letter stream",
            None,
            MetricType::Gauge,
        )?;
        for (stream, group, lag) in &latest {
            let labels = labels(stream, group);
            ConstGauge::new(gauge(lag.dead_letters)).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

fn gauge(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

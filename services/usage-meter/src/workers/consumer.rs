//! The usage-stream handler: validates each entry, dead-letters poison ones with the reason, and
//! queues the recording of the valid ones (one script call per batch) on the consumer's
//! transaction, so counters and `XACK` commit together. While the counters are being restored
//! after a Redis data loss, the script parks the batch instead (still with its `XACK`).

use chrono::Utc;
use platform_redis::Keys;
use platform_redis::fred::clients::Transaction;
use platform_redis::messages::UsageEvent;
use platform_redis::streams::{HandlerError, Outcome, StreamEntry, StreamHandler};

use crate::domain::usage::{EventRules, validate};
use crate::metrics::UsageMetrics;
use crate::store::{self, Fence, Retention};

/// Handles batches of [`UsageEvent`]s from [`platform_redis::StreamName::UsageEvents`].
#[derive(Debug, Clone)]
pub struct UsageHandler {
    keys: Keys,
    retention: Retention,
    rules: EventRules,
    fence: Fence,
    metrics: Option<UsageMetrics>,
}

impl UsageHandler {
    pub fn new(keys: Keys, retention: Retention, rules: EventRules) -> Self {
        Self { keys, retention, rules, fence: Fence::default(), metrics: None }
    }

    /// Shares the process's restore fence ([`Fence`]; without it only a Redis that lost its
    /// flush sequence entirely is detected by the script).
    pub fn with_fence(mut self, fence: Fence) -> Self {
        self.fence = fence;
        self
    }

    /// Counts what it sees on these metrics.
    pub fn with_metrics(mut self, metrics: UsageMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }
}

impl StreamHandler for UsageHandler {
    type Body = UsageEvent;

    // Pure: validation and argument building read nothing from Redis, and the recording script
    // decides duplicates when it runs, so a batch may be handled while the last one commits.
    const OVERLAP_COMMITS: bool = true;

    async fn handle(
        &self,
        batch: &[StreamEntry<UsageEvent>],
        tx: &Transaction,
    ) -> Result<Vec<Outcome>, HandlerError> {
        let now = Utc::now();
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut valid = Vec::with_capacity(batch.len());
        for entry in batch {
            match validate(&entry.body, now, &self.rules) {
                Ok(event) => {
                    valid.push(event);
                    outcomes.push(Outcome::Ack);
                }
                Err(reason) => outcomes.push(Outcome::DeadLetter(reason)),
            }
        }
        let refs: Vec<_> = valid.iter().collect();
        store::queue_record(tx, &self.keys, &self.retention, &self.fence, &refs).await?;
        if let Some(metrics) = &self.metrics {
            metrics.stream_events(valid.len(), batch.len() - valid.len());
        }
        Ok(outcomes)
    }
}

//! Helpers of the stream tests: a credit body, a counting handler, clients under a fresh prefix,
//! consumer settings and readers of the pending list and the dead-letter stream.
#![allow(dead_code)]

use std::sync::Mutex;
use std::time::Duration;

use platform_redis::fred::clients::Transaction;
use platform_redis::fred::prelude::*;
use platform_redis::streams::{
    ConsumerSettings, HandlerError, Outcome, StartFrom, StreamConsumer, StreamEntry, StreamHandler,
};
use platform_redis::{RedisClients, RedisSettings, StreamName};
use platform_testing::{RedisServer, unique_prefix};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Credit {
    pub amount: i64,
}

/// Adds each acked entry's amount to a counter, inside the worker's transaction.
pub struct CountingHandler {
    pub counter: String,
    /// Entries with these amounts are retried forever (to exhaust `max_deliveries`).
    pub always_retry: Option<i64>,
    /// Entries with this amount are dead-lettered by the handler's own decision.
    pub reject: Option<i64>,
    pub traceparents: Mutex<Vec<String>>,
}

impl CountingHandler {
    pub fn new(counter: String) -> Self {
        Self { counter, always_retry: None, reject: None, traceparents: Mutex::new(Vec::new()) }
    }
}

impl StreamHandler for CountingHandler {
    type Body = Credit;

    async fn handle(
        &self,
        batch: &[StreamEntry<Credit>],
        tx: &Transaction,
    ) -> Result<Vec<Outcome>, HandlerError> {
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut total = 0;
        for entry in batch {
            if let Some(traceparent) = &entry.traceparent {
                self.traceparents.lock().unwrap().push(traceparent.clone());
            }
            if Some(entry.body.amount) == self.always_retry {
                outcomes.push(Outcome::Retry);
            } else if Some(entry.body.amount) == self.reject {
                outcomes.push(Outcome::DeadLetter("amount rejected by handler".into()));
            } else {
                total += entry.body.amount;
                outcomes.push(Outcome::Ack);
            }
        }
        if total != 0 {
            let () = tx.incr_by(&self.counter, total).await?;
        }
        Ok(outcomes)
    }
}

pub async fn clients(test: &str) -> RedisClients {
    let server = RedisServer::shared();
    RedisClients::connect(&RedisSettings::for_url(&server.url(), &unique_prefix(test)))
        .await
        .expect("connect")
}

pub fn counter_key(clients: &RedisClients) -> String {
    format!("{}:test:counter", clients.keys().root())
}

pub async fn counter(clients: &RedisClients) -> i64 {
    let value: Option<i64> = clients.primary().get(counter_key(clients)).await.unwrap();
    value.unwrap_or(0)
}

pub async fn pending(clients: &RedisClients, consumer: &StreamConsumer) -> u64 {
    let summary: Value = clients
        .primary()
        .xpending(consumer.stream_key(), consumer.settings().group.as_str(), ())
        .await
        .unwrap();
    summary.into_array().first().and_then(Value::as_u64).unwrap_or(0)
}

pub async fn dead_letters(
    clients: &RedisClients,
    consumer: &StreamConsumer,
) -> Vec<Vec<(String, String)>> {
    let entries: Value =
        clients.primary().xrange(consumer.dead_letter_key(), "-", "+", None).await.unwrap();
    entries
        .into_array()
        .into_iter()
        .map(|entry| {
            let mut parts = entry.into_array().into_iter();
            let _id = parts.next();
            let flat = parts.next().unwrap().into_array();
            flat.chunks(2)
                .map(|kv| (kv[0].as_string().unwrap(), kv[1].as_string().unwrap()))
                .collect()
        })
        .collect()
}

pub fn field<'a>(fields: &'a [(String, String)], name: &str) -> &'a str {
    fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).unwrap_or("")
}

pub fn settings(group: &str) -> ConsumerSettings {
    ConsumerSettings {
        batch_size: 50,
        block: Duration::from_millis(100),
        claim_idle: Duration::from_millis(300),
        start_from: StartFrom::Beginning,
        ..ConsumerSettings::new(StreamName::UsageEvents, group)
    }
}

/// A worker of `settings` and the token that stops it; its group exists.
pub async fn worker_with_group(
    clients: &RedisClients,
    settings: ConsumerSettings,
) -> (StreamConsumer, CancellationToken) {
    let stop = CancellationToken::new();
    let consumer = StreamConsumer::new(clients, settings, stop.clone());
    consumer.ensure_group().await.unwrap();
    (consumer, stop)
}

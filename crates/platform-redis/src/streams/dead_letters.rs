//! Reading a consumer group's dead-letter stream and putting its entries back on their stream
//! (for operators: `platformctl dlq`).

use fred::prelude::*;
use serde::Serialize;

use super::{FIELD_DATA, FIELD_TRACEPARENT, FIELD_VERSION};
use crate::client::RedisClients;
use crate::error::{RedisError, Result};
use crate::keys::StreamName;

/// One dead-lettered entry as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    /// Its id in the dead-letter stream.
    pub id: String,
    /// Its id on the stream it was read from.
    pub original_id: String,
    pub reason: String,
    pub deliveries: u64,
    pub consumer: String,
    /// The body (`data`), as it was.
    pub data: Option<String>,
}

/// The oldest `count` entries of `group`'s dead-letter stream on `stream`.
pub async fn list(
    clients: &RedisClients,
    stream: StreamName,
    group: &str,
    count: u64,
) -> Result<Vec<DeadLetter>> {
    let key = clients.keys().dead_letter_stream(stream, group);
    let entries: Vec<(String, Vec<(String, String)>)> =
        clients.primary().xrange(&key, "-", "+", Some(count)).await?;
    Ok(entries.into_iter().map(|(id, fields)| dead_letter(id, &fields)).collect())
}

fn dead_letter(id: String, fields: &[(String, String)]) -> DeadLetter {
    let field = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    DeadLetter {
        id,
        original_id: field("original_id").unwrap_or_default(),
        reason: field("reason").unwrap_or_default(),
        deliveries: field("deliveries").and_then(|d| d.parse().ok()).unwrap_or(0),
        consumer: field("consumer").unwrap_or_default(),
        data: field(FIELD_DATA),
    }
}

/// Appends dead-letter entry `id` to `stream` again as it was (version, trace, body) and removes
/// it from the dead-letter stream, in one `MULTI`; returns the new entry's id, or `None` when
/// there is no such dead letter. Every group of the stream reads it again (consumers are
/// idempotent). Refused for streams fed from an outbox, whose entry ids are the outbox's
/// sequence: an entry appended here would stop their relay; replay at the source instead.
pub async fn redrive(
    clients: &RedisClients,
    stream: StreamName,
    group: &str,
    id: &str,
) -> Result<Option<String>> {
    if stream.fed_by_outbox() {
        return Err(RedisError::Config(format!(
            "{stream} is appended from its producer's outbox: replay the event at its source \
             (webhook-ingest's replay for stripe-events) instead of appending to the stream"
        )));
    }
    let keys = clients.keys();
    let dead_key = keys.dead_letter_stream(stream, group);
    let found: Vec<(String, Vec<(String, String)>)> =
        clients.primary().xrange(&dead_key, id, id, Some(1)).await?;
    let Some((_, fields)) = found.into_iter().next() else { return Ok(None) };
    let mut entry = Vec::with_capacity(3);
    for name in [FIELD_VERSION, FIELD_TRACEPARENT, FIELD_DATA] {
        if let Some((_, value)) = fields.iter().find(|(k, _)| k == name) {
            entry.push((name, value.clone()));
        }
    }
    if entry.is_empty() {
        return Err(RedisError::Unexpected(format!("dead letter {id} has no body to redrive")));
    }
    let tx = clients.primary().next().multi();
    let () = tx.xadd(keys.stream(stream), false, None, "*", entry).await?;
    let () = tx.xdel(&dead_key, id).await?;
    let (new_id, _deleted): (String, u64) = tx.exec(true).await?;
    Ok(Some(new_id))
}

//! The producer side of the streams: appends versioned, traced entries with a length cap.

use fred::prelude::*;
use serde::Serialize;
use tracing::Instrument;

use super::{FIELD_DATA, FIELD_TRACEPARENT, FIELD_VERSION};
use crate::client::RedisClients;
use crate::error::Result;
use crate::keys::StreamName;
use crate::messages::MESSAGE_VERSION;

/// Appends entries to one stream, trimmed to about `max_len` entries.
#[derive(Debug, Clone)]
pub struct StreamProducer {
    clients: RedisClients,
    stream: StreamName,
    key: String,
    max_len: i64,
}

impl StreamProducer {
    /// A producer for `stream` that keeps roughly the newest `max_len` entries (`MAXLEN ~`, so
    /// Redis trims whole nodes, which is much cheaper than an exact cap).
    pub fn new(clients: &RedisClients, stream: StreamName, max_len: usize) -> Self {
        Self {
            clients: clients.clone(),
            stream,
            key: clients.keys().stream(stream),
            max_len: i64::try_from(max_len).unwrap_or(i64::MAX),
        }
    }

    /// The stream's Redis key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Appends `body` with the current version and the current span's `traceparent`; returns the
    /// entry id.
    pub async fn append<T: Serialize>(&self, body: &T) -> Result<String> {
        let fields = entry_fields(serde_json::to_string(body)?);
        let span = tracing::debug_span!("stream.append", stream = %self.stream);
        let id: String = self
            .clients
            .primary()
            .xadd(&self.key, false, ("MAXLEN", "~", self.max_len), "*", fields)
            .instrument(span)
            .await?;
        Ok(id)
    }

    /// Appends every body in one pipelined round trip; returns the entry ids in order.
    pub async fn append_all<T: Serialize>(&self, bodies: &[T]) -> Result<Vec<String>> {
        if bodies.is_empty() {
            return Ok(Vec::new());
        }
        let span =
            tracing::debug_span!("stream.append_all", stream = %self.stream, count = bodies.len());
        async {
            let pipeline = self.clients.primary().next().pipeline();
            for body in bodies {
                let fields = entry_fields(serde_json::to_string(body)?);
                let () = pipeline
                    .xadd(&self.key, false, ("MAXLEN", "~", self.max_len), "*", fields)
                    .await?;
            }
            let ids: Vec<String> = pipeline.all().await?;
            Ok(ids)
        }
        .instrument(span)
        .await
    }
}

/// The fields of a stream entry carrying `body` (`v`, `traceparent` when traced, `data`), for
/// callers that append inside a script or transaction ([`crate::once::OnceEffects`]) instead of
/// through [`StreamProducer`].
pub fn encode_entry<T: Serialize>(body: &T) -> Result<Vec<(&'static str, String)>> {
    Ok(entry_fields(serde_json::to_string(body)?))
}

fn entry_fields(data: String) -> Vec<(&'static str, String)> {
    let mut fields = vec![(FIELD_VERSION, MESSAGE_VERSION.to_string())];
    if let Some(traceparent) = crate::trace::current_traceparent() {
        fields.push((FIELD_TRACEPARENT, traceparent));
    }
    fields.push((FIELD_DATA, data));
    fields
}

//! The producer side of the streams: appends versioned, traced entries with a length cap, and
//! appends once per idempotency marker ([`StreamProducer::append_claimed`]).

use std::time::Duration;

use fred::prelude::*;
use serde::Serialize;
use tracing::Instrument;

use super::{FIELD_DATA, FIELD_TRACEPARENT, FIELD_VERSION};
use crate::client::RedisClients;
use crate::error::{RedisError, Result};
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

/// `XADD` only while the marker `KEYS[1]` holds the claim `ARGV[1]`, then the marker becomes
/// `done:<entry id>` with `PX ARGV[2]`; one script, so the entry and the marker exist together or
/// not at all. `ARGV[3]` is the `MAXLEN ~` cap, `ARGV[4..]` the entry's field/value pairs.
static APPEND_CLAIMED: std::sync::LazyLock<fred::types::scripts::Script> =
    std::sync::LazyLock::new(|| {
        fred::types::scripts::Script::from_lua(
            r"
local v = redis.call('GET', KEYS[1])
if v ~= ARGV[1] then
  if v and string.sub(v, 1, 5) == 'done:' then return {'done', string.sub(v, 6)} end
  return {'lost', ''}
end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', unpack(ARGV, 4))
redis.call('SET', KEYS[1], 'done:' .. id, 'PX', ARGV[2])
return {'appended', id}
",
        )
    });

/// What [`StreamProducer::append_claimed`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimedAppend {
    /// Appended as this entry id; the marker is now `done:<id>`.
    Appended(String),
    /// Not appended: the marker was already done, with this result (an entry id, usually).
    AlreadyDone(String),
    /// Not appended: the claim expired or someone else holds the marker now.
    ClaimLost,
}

impl StreamProducer {
    /// Appends `body` exactly once per idempotency marker (see [`crate::idempotency`]): only while
    /// `marker_key` still holds the claim `token`, and in the same script marks it
    /// `done:<entry id>` for `done_ttl`. A crash can therefore never leave an entry without its
    /// done marker (or the reverse), and a caller whose claim expired cannot append a second copy.
    /// The entry has the same fields as [`StreamProducer::append`] (`v`, `traceparent`, `data`).
    /// In Redis Cluster the marker must be in the stream slot, as
    /// [`crate::keys::Keys::webhook_dedup`] is.
    pub async fn append_claimed<T: Serialize>(
        &self,
        body: &T,
        marker_key: &str,
        token: &str,
        done_ttl: Duration,
    ) -> Result<ClaimedAppend> {
        let mut args = vec![
            crate::idempotency::processing_value(token),
            crate::idempotency::ttl_ms(done_ttl).to_string(),
            self.max_len.to_string(),
        ];
        for (name, value) in entry_fields(serde_json::to_string(body)?) {
            args.push(name.to_owned());
            args.push(value);
        }
        let span = tracing::debug_span!("stream.append_claimed", stream = %self.stream);
        let reply: Vec<String> = APPEND_CLAIMED
            .evalsha_with_reload(
                self.clients.primary().next(),
                vec![marker_key.to_owned(), self.key.clone()],
                args,
            )
            .instrument(span)
            .await?;
        match (reply.first().map(String::as_str), reply.get(1)) {
            (Some("appended"), Some(id)) => Ok(ClaimedAppend::Appended(id.clone())),
            (Some("done"), Some(result)) => Ok(ClaimedAppend::AlreadyDone(result.clone())),
            (Some("lost"), _) => Ok(ClaimedAppend::ClaimLost),
            _ => Err(RedisError::Unexpected(format!("append_claimed script returned {reply:?}"))),
        }
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

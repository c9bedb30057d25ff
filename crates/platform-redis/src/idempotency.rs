//! Idempotency markers: one Redis string per operation id that goes `processing:<token>` → `done:<result>`.
//!
//! A caller that wants to do something once per id (a Stripe event id, say) [`claim`]s the marker:
//! `SET NX PX` of `processing:<random token>` with a short TTL, in one script that also returns
//! what was there. It then gets one of:
//! - [`Claim::Claimed`]: nobody else is working on it and it was not done (within the marker's
//!   memory). The token proves ownership for the compare-and-act steps that follow.
//! - [`Claim::InProgress`]: another caller holds it. The short TTL means a crashed holder frees it
//!   by itself; the caller should tell its client to retry (or wait with [`peek`]).
//! - [`Claim::Done`]: finished earlier; carries the result recorded with it (e.g. a stream entry id).
//!
//! Completing is either [`complete`] (unconditional `SET done:<result> PX`, for when a durable
//! record elsewhere already says done) or, where the effect itself is a Redis write, the effect and
//! the marker in one script so no crash can separate them
//! ([`crate::streams::StreamProducer::append_claimed`]). [`release`] gives up a claim (compare-and-
//! delete on the token) so a retry need not wait for the TTL.
//!
//! Values: `processing:<32 hex>` while claimed, `done:<result>` when done (the result may be empty).

use std::sync::LazyLock;
use std::time::Duration;

use fred::prelude::*;
use fred::types::scripts::Script;

use crate::client::RedisClients;
use crate::error::{RedisError, Result};

/// Prefix of a claimed marker's value.
pub(crate) const PROCESSING: &str = "processing:";
/// Prefix of a completed marker's value.
pub(crate) const DONE: &str = "done:";

/// Returns the current value, or sets `processing:<token>` with `PX` and returns nil.
static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        r"
local v = redis.call('GET', KEYS[1])
if v then return v end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
",
    )
});

/// `DEL` only while the marker still holds this claim.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
",
    )
});

/// What [`claim`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The caller now holds the marker; `token` is its proof of ownership.
    Claimed { token: String },
    /// Someone else holds it.
    InProgress,
    /// Done before, with this result.
    Done(String),
}

/// What [`peek`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Marker {
    /// No marker (never seen, expired, or released).
    Absent,
    /// Someone holds it.
    InProgress,
    /// Done, with this result.
    Done(String),
}

/// The marker value of a claim with `token` (what [`crate::streams::StreamProducer::append_claimed`]
/// compares against).
pub fn processing_value(token: &str) -> String {
    format!("{PROCESSING}{token}")
}

/// Claims `key` for `ttl` unless it is held or done (one round trip).
pub async fn claim(clients: &RedisClients, key: &str, ttl: Duration) -> Result<Claim> {
    let token = uuid::Uuid::new_v4().simple().to_string();
    let found: Option<String> = CLAIM
        .evalsha_with_reload(
            clients.primary().next(),
            vec![key.to_owned()],
            vec![processing_value(&token), ttl_ms(ttl).to_string()],
        )
        .await?;
    match found {
        None => Ok(Claim::Claimed { token }),
        Some(value) => match parse(&value)? {
            Marker::Done(result) => Ok(Claim::Done(result)),
            _ => Ok(Claim::InProgress),
        },
    }
}

/// Reads the marker without changing it.
pub async fn peek(clients: &RedisClients, key: &str) -> Result<Marker> {
    let value: Option<String> = clients.primary().get(key).await?;
    match value {
        None => Ok(Marker::Absent),
        Some(value) => parse(&value),
    }
}

/// Marks `key` done with `result` for `ttl`, whoever held it.
pub async fn complete(
    clients: &RedisClients,
    key: &str,
    result: &str,
    ttl: Duration,
) -> Result<()> {
    let () = clients
        .primary()
        .set(key, format!("{DONE}{result}"), Some(Expiration::PX(ttl_ms(ttl))), None, false)
        .await?;
    Ok(())
}

/// Deletes the marker if it still holds the claim `token`; true when it did.
pub async fn release(clients: &RedisClients, key: &str, token: &str) -> Result<bool> {
    let deleted: i64 = RELEASE
        .evalsha_with_reload(
            clients.primary().next(),
            vec![key.to_owned()],
            vec![processing_value(token)],
        )
        .await?;
    Ok(deleted == 1)
}

fn parse(value: &str) -> Result<Marker> {
    if let Some(result) = value.strip_prefix(DONE) {
        Ok(Marker::Done(result.to_owned()))
    } else if value.starts_with(PROCESSING) {
        Ok(Marker::InProgress)
    } else {
        Err(RedisError::Unexpected(format!("idempotency marker holds {value:?}")))
    }
}

/// Milliseconds for `PX`; at least 1 because Redis rejects 0.
pub(crate) fn ttl_ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_values_parse_by_prefix() {
        assert_eq!(parse("done:1-0").ok(), Some(Marker::Done("1-0".into())));
        assert_eq!(parse("done:").ok(), Some(Marker::Done(String::new())));
        assert_eq!(parse(&processing_value("abc")).ok(), Some(Marker::InProgress));
        assert!(parse("other").is_err());
    }
}

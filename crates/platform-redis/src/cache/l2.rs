//! The Redis tier: the JSON envelope of an entry, the Lua scripts that write and delete entries
//! with their group's member set, and the rule that a Redis failure is counted and warned about
//! (rate limited) but never fails a read.

use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use actix_web::web::Bytes;
use fred::prelude::*;
use fred::types::scripts::Script;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};

use super::freshness::Meta;
use crate::client::RolePool;
use crate::error::Result;
use crate::keys::Keys;

/// Writes one entry and records it in its group. KEYS: entry, group members. ARGV: JSON, TTL ms.
const WRITE_ENTRY: &str = r"
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SADD', KEYS[2], KEYS[1])
local ttl = tonumber(ARGV[2])
if redis.call('PTTL', KEYS[2]) < ttl then
  redis.call('PEXPIRE', KEYS[2], ttl)
end
return 1
";

/// Deletes one entry and its membership. KEYS: entry, group members.
const DELETE_ENTRY: &str = r"
redis.call('SREM', KEYS[2], KEYS[1])
return redis.call('DEL', KEYS[1])
";

/// Deletes every entry of a group, then the member set. KEYS: group members. The members share
/// the set's hash tag, so they are in its slot even though they are not listed in KEYS.
const DELETE_GROUP: &str = r"
local members = redis.call('SMEMBERS', KEYS[1])
local deleted = 0
for i = 1, #members, 256 do
  deleted = deleted + redis.call('DEL', unpack(members, i, math.min(i + 255, #members)))
end
redis.call('DEL', KEYS[1])
return deleted
";

/// Minimum time between two "Redis unavailable" warnings of one cache.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// A value serialised to JSON once, kept as bytes: cloning it (an L1 hit) is a reference-count
/// increment, and a handler answers with [`JsonBytes::into_bytes`] without serialising again. In the
/// L2 envelope it is stored as a JSON string holding that text (decoded once per L2 read).
#[derive(Clone, PartialEq, Eq)]
pub struct JsonBytes(Bytes);

impl JsonBytes {
    /// Serialises `value` to JSON.
    pub fn to_json<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<Self> {
        serde_json::to_vec(value).map(|json| JsonBytes(Bytes::from(json)))
    }

    /// The JSON text, taken out without touching the reference count.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    /// The JSON text in a buffer of its own. Cheaper than a clone for a hot value read on
    /// several threads at once: copying a few kilobytes costs less than the reference count's
    /// cache line moving between cores twice per read.
    pub fn copied(&self) -> JsonBytes {
        JsonBytes(Bytes::copy_from_slice(&self.0))
    }

    /// The JSON text as a slice.
    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for JsonBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JsonBytes({})", String::from_utf8_lossy(&self.0))
    }
}

impl Serialize for JsonBytes {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // `to_json` produced it, so it is UTF-8; a foreign buffer that is not fails loudly.
        let text = std::str::from_utf8(&self.0).map_err(serde::ser::Error::custom)?;
        serializer.serialize_str(text)
    }
}

impl<'de> Deserialize<'de> for JsonBytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(|text| JsonBytes(Bytes::from(text)))
    }
}

/// The L2 value: `value` next to the flattened [`Meta`], so the stored JSON reads
/// `{value, computedAtMs, ttlMs, computeMs}`.
#[derive(Serialize, Deserialize)]
struct Stored<T> {
    value: T,
    #[serde(flatten)]
    meta: Meta,
}

/// The Redis side of one cache: its pool, scripts and error count.
pub(super) struct L2 {
    /// The cache instance (it may be apart from the primary).
    pool: RolePool,
    keys: Keys,
    write_entry: Script,
    delete_entry: Script,
    delete_group: Script,
    warn_limit: WarnLimiter,
    /// Failed or skipped commands and values that did not decode or encode.
    errors: AtomicU64,
}

impl L2 {
    pub fn new(pool: RolePool, keys: Keys) -> L2 {
        L2 {
            pool,
            keys,
            write_entry: Script::from_lua(WRITE_ENTRY),
            delete_entry: Script::from_lua(DELETE_ENTRY),
            delete_group: Script::from_lua(DELETE_GROUP),
            warn_limit: WarnLimiter::default(),
            errors: AtomicU64::new(0),
        }
    }

    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// The stored value of `entry_key`; `None` when absent, undecodable or Redis is down.
    pub async fn get<T: DeserializeOwned>(&self, entry_key: &str) -> Option<(T, Meta)> {
        let client = self.redis()?;
        match client.get::<Option<String>, _>(entry_key).await {
            Ok(None) => None,
            Ok(Some(text)) => match serde_json::from_str::<Stored<T>>(&text) {
                Ok(stored) => Some((stored.value, stored.meta)),
                Err(error) => {
                    self.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%error, key = entry_key, "cached value does not decode; recomputing");
                    None
                }
            },
            Err(error) => {
                self.failed(&error, entry_key);
                None
            }
        }
    }

    /// Writes `value` under `entry_key` for `meta.ttl_ms` and records it in `group` (best effort).
    pub async fn write<T: Serialize>(&self, group: &str, entry_key: &str, value: &T, meta: Meta) {
        let Some(client) = self.redis() else { return };
        let text = match serde_json::to_string(&Stored { value, meta }) {
            Ok(text) => text,
            Err(error) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, key = entry_key, "value does not serialise; not cached in redis");
                return;
            }
        };
        let keys = vec![entry_key.to_owned(), self.keys.cache_group_members(group)];
        let args = vec![text, meta.ttl_ms.to_string()];
        let written: std::result::Result<i64, _> =
            self.write_entry.evalsha_with_reload(&client, keys, args).await;
        if let Err(error) = written {
            self.failed(&error, entry_key);
        }
    }

    /// Deletes `entry_key` and its membership of `group`.
    pub async fn delete_entry(&self, group: &str, entry_key: &str) -> Result<()> {
        let keys = vec![entry_key.to_owned(), self.keys.cache_group_members(group)];
        self.delete_entry
            .evalsha_with_reload::<i64, _, _>(self.pool.pool().next_connected(), keys, ())
            .await
            .map(drop)
            .map_err(Into::into)
    }

    /// Deletes every entry of `group` and its member set; returns how many entries there were.
    pub async fn delete_group(&self, group: &str) -> Result<u64> {
        let members = self.keys.cache_group_members(group);
        self.delete_group
            .evalsha_with_reload(self.pool.pool().next_connected(), members, ())
            .await
            .map_err(Into::into)
    }

    /// A connected client of the cache pool, or `None` (counted, warned) when Redis is down, so
    /// requests skip L2 at once instead of queueing until the command timeout.
    fn redis(&self) -> Option<Client> {
        let pool = self.pool.pool();
        let client = pool.next_connected();
        if client.is_connected() {
            return Some(client.clone());
        }
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Some(suppressed) = self.warn_limit.allow() {
            tracing::warn!(suppressed, "redis unreachable; cache reads go to L1 and origin");
        }
        None
    }

    fn failed(&self, error: &fred::error::Error, entry_key: &str) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Some(suppressed) = self.warn_limit.allow() {
            tracing::warn!(%error, key = entry_key, suppressed, "redis cache command failed; serving from L1 or origin");
        }
    }
}

/// Lets one warning through per [`WARN_EVERY`], counting the ones it held back.
#[derive(Default)]
struct WarnLimiter {
    last: Mutex<Option<Instant>>,
    suppressed: AtomicU64,
}

impl WarnLimiter {
    /// `Some(number held back since the last one)` when a warning may be logged now.
    fn allow(&self) -> Option<u64> {
        // Every critical section leaves the data consistent, so a poisoned lock is used as is.
        let mut last = self.last.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = Instant::now();
        if last.is_some_and(|at| now.duration_since(at) < WARN_EVERY) {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *last = Some(now);
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_bytes_round_trip_through_the_l2_envelope_as_a_string() {
        let meta = Meta::now(Duration::from_secs(60), Duration::from_millis(1));
        let body = JsonBytes::to_json(&serde_json::json!([{"name": "Well \"A\""}]))
            .unwrap_or_else(|_| JsonBytes(Bytes::new()));
        let stored = Stored { value: body.clone(), meta };
        let text = serde_json::to_string(&stored).unwrap_or_default();
        let back: Option<Stored<JsonBytes>> = serde_json::from_str(&text).ok();
        assert_eq!(back.map(|s| s.value), Some(body.clone()));
        assert_eq!(body.as_slice(), br#"[{"name":"Well \"A\""}]"#);
    }
}

//! The Redis side of relaying a durable outbox onto a stream: appends at ids the outbox chose, the
//! stream's position, and its consumer groups' checkpoints.
//!
//! An outbox row with sequence number `n` becomes the entry `n-0`. Redis refuses an id that is not
//! above the stream's last one, so appending a row twice is impossible by construction, and a
//! stream that lost its tail (a restart from an older snapshot, a failover to a lagging replica,
//! `FLUSHALL`) is refilled simply by appending again from its last id, or from the groups'
//! checkpoints when it lost everything. The outbox itself (Postgres) decides what to append; see
//! the relay of webhook-ingest.
//!
//! A group's checkpoint is the id up to which it has acknowledged every entry: the lowest pending
//! id minus one, or its last delivered id when nothing is pending. The relay stores it durably
//! and mirrors it into [`crate::keys::Keys::stream_group_checkpoints`], where a consumer whose
//! group vanished finds the place to recreate it.

use fred::prelude::*;
use fred::types::scripts::Script;

use crate::client::RedisClients;
use crate::error::{RedisError, Result};
use crate::keys::StreamName;
use crate::messages::MESSAGE_VERSION;
use crate::streams::{FIELD_DATA, FIELD_TRACEPARENT, FIELD_VERSION};

/// The stream's last entry id and its groups, read in one script: `{}` when the stream does not
/// exist, else `{last-generated-id, name1, last-delivered1, lowest-pending1 or '', …}`.
static STATE: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
    Script::from_lua(
        r"
if redis.call('EXISTS', KEYS[1]) == 0 then return {} end
local function field(flat, name)
  for i = 1, #flat, 2 do if flat[i] == name then return flat[i + 1] end end
end
local out = {field(redis.call('XINFO', 'STREAM', KEYS[1]), 'last-generated-id')}
for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local name = field(group, 'name')
  local lowest = ''
  if field(group, 'pending') > 0 then lowest = redis.call('XPENDING', KEYS[1], name)[2] end
  table.insert(out, name)
  table.insert(out, field(group, 'last-delivered-id'))
  table.insert(out, lowest)
end
return out
",
    )
});

/// One consumer group as the relay sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupPosition {
    pub name: String,
    /// Everything up to this sequence number is acknowledged by the group.
    pub checkpoint: u64,
}

/// Where the stream stands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamState {
    /// Sequence number of the last entry ever appended (0: the stream does not exist).
    pub last: u64,
    pub groups: Vec<GroupPosition>,
}

/// One entry to append at `seq-0`.
#[derive(Debug, Clone)]
pub struct OutboxEntry {
    pub seq: u64,
    /// The W3C trace context the row was recorded under.
    pub traceparent: Option<String>,
    /// The message body, JSON.
    pub data: String,
}

/// What [`Relay::append`] did with one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    Now,
    /// Redis refused the id: the stream already holds it or a later one.
    AlreadyThere,
}

/// The entry id of outbox sequence number `seq`.
pub fn entry_id(seq: u64) -> String {
    format!("{seq}-0")
}

/// The sequence number of an entry id written by [`entry_id`] (its first part).
pub fn seq_of(id: &str) -> Option<u64> {
    id.split_once('-').map_or(Some(id), |(ms, _)| Some(ms)).and_then(|ms| ms.parse().ok())
}

/// The Redis operations of one stream's relay. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Relay {
    clients: RedisClients,
    key: String,
    checkpoints_key: String,
    max_len: i64,
}

impl Relay {
    /// A relay onto `stream`, trimmed to about `max_len` entries.
    pub fn new(clients: &RedisClients, stream: StreamName, max_len: usize) -> Self {
        Self {
            key: clients.keys().stream(stream),
            checkpoints_key: clients.keys().stream_group_checkpoints(stream),
            clients: clients.clone(),
            max_len: i64::try_from(max_len).unwrap_or(i64::MAX),
        }
    }

    /// The stream's key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The stream's last id and every group's checkpoint, in one round trip.
    pub async fn state(&self) -> Result<StreamState> {
        let reply: Vec<String> = STATE
            .evalsha_with_reload(self.clients.primary().next(), vec![self.key.clone()], ())
            .await?;
        let mut parts = reply.into_iter();
        let Some(last) = parts.next() else {
            return Ok(StreamState::default());
        };
        let mut state = StreamState { last: parse_seq(&last)?, groups: Vec::new() };
        while let (Some(name), Some(delivered), Some(lowest)) =
            (parts.next(), parts.next(), parts.next())
        {
            let checkpoint = if lowest.is_empty() {
                parse_seq(&delivered)?
            } else {
                parse_seq(&lowest)?.saturating_sub(1)
            };
            state.groups.push(GroupPosition { name, checkpoint });
        }
        Ok(state)
    }

    /// Appends `entries` (ascending `seq`) in one pipelined round trip.
    pub async fn append(&self, entries: &[OutboxEntry]) -> Result<Vec<Appended>> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let pipeline = self.clients.primary().next().pipeline();
        for entry in entries {
            // The fields every stream entry has (crate::streams), the trace the row was recorded in.
            let mut fields = vec![(FIELD_VERSION, MESSAGE_VERSION.to_string())];
            if let Some(traceparent) = &entry.traceparent {
                fields.push((FIELD_TRACEPARENT, traceparent.clone()));
            }
            fields.push((FIELD_DATA, entry.data.clone()));
            let () = pipeline
                .xadd(&self.key, false, ("MAXLEN", "~", self.max_len), entry_id(entry.seq), fields)
                .await?;
        }
        let replies: Vec<std::result::Result<Value, fred::error::Error>> = pipeline.try_all().await;
        replies
            .into_iter()
            .map(|reply| match reply {
                Ok(_) => Ok(Appended::Now),
                Err(e) if e.details().contains("equal or smaller") => Ok(Appended::AlreadyThere),
                Err(e) => Err(e.into()),
            })
            .collect()
    }

    /// Creates `group` at `checkpoint` (and the stream if missing); an existing group is left as
    /// it is. Returns whether it was created.
    pub async fn ensure_group(&self, group: &str, checkpoint: u64) -> Result<bool> {
        let created: std::result::Result<(), fred::error::Error> = self
            .clients
            .primary()
            .xgroup_create(&self.key, group, entry_id(checkpoint), true)
            .await;
        match created {
            Ok(()) => Ok(true),
            Err(error) if error.details().starts_with("BUSYGROUP") => Ok(false),
            Err(error) => Err(error.into()),
        }
    }

    /// Mirrors the durable checkpoints into the stream's checkpoint hash.
    pub async fn publish_checkpoints(&self, groups: &[GroupPosition]) -> Result<()> {
        if groups.is_empty() {
            return Ok(());
        }
        let values: Vec<(String, String)> =
            groups.iter().map(|g| (g.name.clone(), entry_id(g.checkpoint))).collect();
        let () = self.clients.primary().hset(&self.checkpoints_key, values).await?;
        Ok(())
    }
}

fn parse_seq(id: &str) -> Result<u64> {
    seq_of(id).ok_or_else(|| RedisError::Unexpected(format!("stream answered the entry id {id:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_ids_carry_the_sequence_number_as_their_first_part() {
        assert_eq!(entry_id(42), "42-0");
        assert_eq!(seq_of("42-0"), Some(42));
        assert_eq!(seq_of("0-0"), Some(0));
        assert_eq!(seq_of("7"), Some(7));
        assert_eq!(seq_of("x-0"), None);
    }
}

//! A consumer group's backlog, read in one round trip: what metrics report about a group.

use std::time::Duration;

use fred::prelude::*;

use super::wire::{array, error_means_group_lost, flatten_rows, pending_row, record_fields};
use crate::client::RedisClients;
use crate::error::{RedisError, Result};
use crate::keys::StreamName;

/// One group's backlog at the time it was read. The same for every consumer of the group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupLag {
    /// Entries of the stream not yet delivered to the group (`XINFO GROUPS` `lag`). `None` when
    /// Redis cannot tell: entries inside the undelivered range were deleted, or the group was
    /// created at an arbitrary id (a checkpoint) and has not read up to the end since.
    pub undelivered: Option<u64>,
    /// Entries delivered to the group's consumers and not acknowledged.
    pub pending: u64,
    /// Idle time of the pending entry with the lowest id (time since it was last delivered);
    /// `None` when nothing is pending.
    pub oldest_pending_idle: Option<Duration>,
    /// Entries in the group's dead-letter stream.
    pub dead_letters: u64,
}

/// Reads `group`'s backlog on `stream` (`XINFO GROUPS`, `XPENDING … - + 1`, `XLEN` of the
/// dead-letter stream, pipelined). `Ok(None)` when the stream or the group does not exist.
pub async fn group_lag(
    clients: &RedisClients,
    stream: StreamName,
    group: &str,
) -> Result<Option<GroupLag>> {
    let keys = clients.keys();
    let key = keys.stream(stream);
    let pipeline = clients.primary().next().pipeline();
    let () = pipeline.xinfo_groups(&key).await?;
    let () = pipeline.xpending(&key, group, ("-", "+", 1u64)).await?;
    let () = pipeline.xlen(keys.dead_letter_stream(stream, group)).await?;
    let mut answers = pipeline.try_all::<Value>().await.into_iter();
    let (Some(groups), Some(oldest), Some(dead)) = (answers.next(), answers.next(), answers.next())
    else {
        return Err(RedisError::Unexpected("pipeline answered fewer replies than sent".into()));
    };
    let groups = match groups {
        Ok(groups) => groups,
        // `ERR no such key`: no stream, so no group either.
        Err(error) if error.details().contains("no such key") => return Ok(None),
        Err(error) => return Err(error.into()),
    };
    let Some(record) = array(groups)
        .into_iter()
        .map(record_fields)
        .find(|fields| field(fields, "name").and_then(Value::as_str).as_deref() == Some(group))
    else {
        return Ok(None);
    };
    let oldest = match oldest.map_err(RedisError::from) {
        Ok(rows) => flatten_rows(rows).into_iter().next().map(pending_row).transpose()?,
        Err(error) if error_means_group_lost(&error) => return Ok(None),
        Err(error) => return Err(error),
    };
    Ok(Some(GroupLag {
        undelivered: field(&record, "lag").and_then(count),
        pending: field(&record, "pending").and_then(count).unwrap_or(0),
        oldest_pending_idle: oldest.map(|(_, _, idle_ms, _)| Duration::from_millis(idle_ms)),
        dead_letters: count(&dead?).unwrap_or(0),
    }))
}

fn field<'a>(fields: &'a [(String, Value)], name: &str) -> Option<&'a Value> {
    fields.iter().find(|(k, _)| k == name).map(|(_, v)| v)
}

/// A non-negative integer reply; nil (an unknown `lag`) is `None`, whatever fred's nil features.
fn count(value: &Value) -> Option<u64> {
    match value {
        Value::Null => None,
        other => other.as_u64(),
    }
}

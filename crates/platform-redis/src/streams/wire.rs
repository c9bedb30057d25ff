//! Decoding what Redis answers to the stream commands: entries (both protocol shapes), bodies,
//! `XAUTOCLAIM` and `XPENDING` replies, and the field maps of `XINFO`.

use fred::bytes_utils::Str;
use fred::prelude::*;
use serde::de::DeserializeOwned;

use super::{FIELD_DATA, FIELD_VERSION};
use crate::error::{RedisError, Result};
use crate::messages::MESSAGE_VERSION;

/// An entry as read, before decoding. The fields are the reply's own bytes (no copy), in a list:
/// entries have two or three fields, which a linear search finds faster than a hash lookup.
#[derive(Debug)]
pub(super) struct RawEntry {
    pub(super) id: String,
    pub(super) fields: Vec<(Str, Str)>,
}

impl RawEntry {
    pub(super) fn field(&self, name: &str) -> Option<&str> {
        self.fields.iter().find(|(k, _)| &**k == name).map(|(_, v)| &**v)
    }

    /// A pending entry whose data is gone (trimmed or deleted): Redis answers its id with nil
    /// fields, and no entry can be appended without a field.
    pub(super) fn is_deleted(&self) -> bool {
        self.fields.is_empty()
    }
}

/// Decodes an entry's body; the error is the dead-letter reason.
pub(super) fn decode<T: DeserializeOwned>(entry: &RawEntry) -> std::result::Result<T, String> {
    let version = entry.field(FIELD_VERSION).ok_or("missing field `v`")?;
    let version: u32 =
        version.parse().map_err(|_| format!("message version {version:?} is not a number"))?;
    if version != MESSAGE_VERSION {
        return Err(format!(
            "unknown message version {version} (this consumer reads {MESSAGE_VERSION})"
        ));
    }
    let data = entry.field(FIELD_DATA).ok_or("missing field `data`")?;
    serde_json::from_str(data).map_err(|error| format!("data is not a valid message body: {error}"))
}

/// The group or the whole stream key is gone: `NOGROUP` from any group command, or
/// `UNBLOCKED` for a blocked `XREADGROUP` whose stream key was deleted under it.
pub(super) fn error_means_group_lost(error: &RedisError) -> bool {
    matches!(error, RedisError::Command(e)
        if e.details().starts_with("NOGROUP") || e.details().starts_with("UNBLOCKED"))
}

/// `XREADGROUP` answers `{stream: entries}` in RESP3 and `[[stream, entries]]` in RESP2; nil
/// when the block timed out.
pub(super) fn parse_read_response(value: Value) -> Result<Vec<RawEntry>> {
    let mut out = Vec::new();
    match value {
        Value::Null => {}
        Value::Map(map) => {
            for (_stream, entries) in map.inner() {
                out.extend(parse_entries(entries)?);
            }
        }
        Value::Array(streams) => {
            for stream in streams {
                let mut parts = array(stream).into_iter();
                let (_stream, entries) = (parts.next(), parts.next());
                out.extend(parse_entries(entries.unwrap_or(Value::Null))?);
            }
        }
        other => {
            return Err(RedisError::Unexpected(format!("XREADGROUP answered a {}", other.kind())));
        }
    }
    Ok(out)
}

/// `XAUTOCLAIM` (Redis 7) answers `[next cursor, entries, ids of deleted entries]`.
pub(super) fn parse_autoclaim_response(value: Value) -> Result<(String, Vec<RawEntry>, usize)> {
    let mut parts = array(value).into_iter();
    let next = parts
        .next()
        .and_then(Value::into_string)
        .ok_or_else(|| RedisError::Unexpected("XAUTOCLAIM answered no cursor".into()))?;
    let entries = parse_entries(parts.next().unwrap_or(Value::Null))?;
    let deleted = parts.next().map(|d| array(d).len()).unwrap_or(0);
    Ok((next, entries, deleted))
}

fn parse_entries(value: Value) -> Result<Vec<RawEntry>> {
    let mut out = Vec::new();
    for entry in array(value) {
        let mut parts = array(entry).into_iter();
        let id = parts
            .next()
            .and_then(Value::into_string)
            .ok_or_else(|| RedisError::Unexpected("stream entry without id".into()))?;
        let fields = match parts.next() {
            Some(Value::Map(map)) => {
                map.inner().into_iter().map(|(k, v)| (lossy_key(k), lossy(v))).collect()
            }
            Some(Value::Array(flat)) => {
                let mut fields = Vec::with_capacity(flat.len() / 2);
                let mut items = flat.into_iter();
                while let (Some(k), Some(v)) = (items.next(), items.next()) {
                    fields.push((lossy(k), lossy(v)));
                }
                fields
            }
            // A pending entry whose data was deleted; decoding reports the missing fields.
            _ => Vec::new(),
        };
        out.push(RawEntry { id, fields });
    }
    Ok(out)
}

/// The items of an array answer; nil is empty (fred's `into_array` would wrap it).
pub(super) fn array(value: Value) -> Vec<Value> {
    match value {
        Value::Null => Vec::new(),
        other => other.into_array(),
    }
}

/// Field values as text, sharing the reply's buffer; bytes that are not UTF-8 are replaced
/// (decoding then rejects the entry).
fn lossy(value: Value) -> Str {
    match value {
        Value::String(text) => text,
        Value::Bytes(bytes) => lossy_bytes(bytes),
        other => other.as_str_lossy().map(|s| Str::from(s.into_owned())).unwrap_or_default(),
    }
}

/// A field name (a map key in RESP3) as [`lossy`] reads values.
fn lossy_key(key: Key) -> Str {
    lossy_bytes(key.into_bytes())
}

/// The bytes as text without a copy when they are UTF-8.
fn lossy_bytes(bytes: fred::bytes::Bytes) -> Str {
    Str::from_inner(bytes.clone())
        .unwrap_or_else(|_| Str::from(String::from_utf8_lossy(&bytes).into_owned()))
}

/// XPENDING's extended form answers a list of rows; fred may hand a single row unwrapped.
pub(super) fn flatten_rows(value: Value) -> Vec<Value> {
    let rows = array(value);
    if rows.first().is_some_and(|first| !first.is_array()) {
        vec![Value::Array(rows)]
    } else {
        rows
    }
}

/// One row of `XPENDING key group start end count [consumer]`: entry id, consumer, idle time
/// in ms, deliveries.
pub(super) fn pending_row(row: Value) -> Result<(String, String, u64, u64)> {
    let mut fields = array(row).into_iter();
    let (id, consumer, idle, deliveries) =
        (fields.next(), fields.next(), fields.next(), fields.next());
    match (
        id.and_then(Value::into_string),
        consumer.and_then(Value::into_string),
        idle.and_then(|i| i.as_u64()),
        deliveries.and_then(|d| d.as_u64()),
    ) {
        (Some(id), Some(consumer), Some(idle), Some(deliveries)) => {
            Ok((id, consumer, idle, deliveries))
        }
        _ => Err(RedisError::Unexpected("malformed XPENDING row".into())),
    }
}

/// The name → value pairs of one `XINFO` record: a map in RESP3, a flat list in RESP2.
pub(super) fn record_fields(record: Value) -> Vec<(String, Value)> {
    match record {
        Value::Map(map) => map
            .inner()
            .into_iter()
            .filter_map(|(k, v)| k.as_str().map(|k| (k.to_string(), v)))
            .collect(),
        other => {
            let mut out = Vec::new();
            let mut items = array(other).into_iter();
            while let (Some(k), Some(v)) = (items.next(), items.next()) {
                if let Some(k) = k.into_string() {
                    out.push((k, v));
                }
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(fields: &[(&str, &str)]) -> RawEntry {
        RawEntry {
            id: "1-0".into(),
            fields: fields.iter().map(|(k, v)| (Str::from(*k), Str::from(*v))).collect(),
        }
    }

    fn reason(fields: &[(&str, &str)]) -> String {
        decode::<u32>(&raw(fields)).err().unwrap_or_default()
    }

    #[test]
    fn decode_rejects_bad_json_unknown_versions_and_missing_fields() {
        assert_eq!(decode::<u32>(&raw(&[("v", "1"), ("data", "7")])), Ok(7));
        assert!(reason(&[("v", "1"), ("data", "{")]).contains("not a valid message body"));
        assert!(reason(&[("v", "99"), ("data", "7")]).contains("unknown message version 99"));
        assert!(reason(&[("data", "7")]).contains("missing field `v`"));
        assert!(reason(&[("v", "1")]).contains("missing field `data`"));
    }

    #[test]
    fn read_responses_parse_in_both_protocol_shapes() {
        let entry = || {
            Value::Array(vec![
                Value::from("1-0"),
                Value::Array(vec![
                    Value::from("v"),
                    Value::from("1"),
                    Value::from("data"),
                    Value::from("2"),
                ]),
            ])
        };
        let resp2 =
            Value::Array(vec![Value::Array(vec![Value::from("s"), Value::Array(vec![entry()])])]);
        let parsed = parse_read_response(resp2).unwrap_or_default();
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].field("data"), Some("2"));
        assert!(parse_read_response(Value::Null).is_ok_and(|e| e.is_empty()));
        let claimed = Value::Array(vec![
            Value::from("0-0"),
            Value::Array(vec![entry()]),
            Value::Array(vec![]),
        ]);
        let (next, entries, deleted) = parse_autoclaim_response(claimed).unwrap_or_default();
        assert_eq!((next.as_str(), entries.len(), deleted), ("0-0", 1, 0));
    }

    #[test]
    fn xinfo_records_read_in_both_protocol_shapes_and_lost_groups_are_recognised() {
        let flat = Value::Array(vec![
            Value::from("name"),
            Value::from("g"),
            Value::from("lag"),
            Value::Null,
        ]);
        let fields = record_fields(flat);
        assert_eq!(fields.len(), 2);
        assert_eq!(fields[0].0, "name");
        assert_eq!(fields[1].1, Value::Null);
        let lost = |details: &'static str| {
            error_means_group_lost(&RedisError::Command(fred::error::Error::new(
                fred::error::ErrorKind::Unknown,
                details,
            )))
        };
        assert!(lost("NOGROUP No such key 's' or consumer group 'g'"));
        assert!(lost("UNBLOCKED the stream key no longer exists"));
        assert!(!lost("ERR no such key"));
        let row = Value::Array(vec![
            Value::from("1-0"),
            Value::from("c"),
            Value::Integer(12),
            Value::Integer(3),
        ]);
        assert_eq!(pending_row(row).ok(), Some(("1-0".into(), "c".into(), 12, 3)));
    }
}

//! Reads of usage from Redis: one organisation's counters, a single counter (quota checks), the
//! top-consumer lists and the recent detail events.

use std::collections::{BTreeMap, HashMap};

use platform_redis::fred::prelude::*;
use platform_redis::{RedisClients, RedisError};

use crate::domain::usage::{Month, OrgId, USAGE_FIELDS};

/// The usage counters of `org` in `month` as Redis has them (empty when the hash is gone).
pub async fn usage(
    clients: &RedisClients,
    org: &OrgId,
    month: Month,
) -> Result<BTreeMap<String, i64>, RedisError> {
    let key = clients.keys().usage_counters(org.as_str(), &month.to_string());
    let raw: HashMap<String, String> = clients.primary().hgetall(key).await?;
    Ok(parse_counters(raw))
}

pub(crate) fn parse_counters(raw: HashMap<String, String>) -> BTreeMap<String, i64> {
    raw.into_iter()
        .filter(|(field, _)| USAGE_FIELDS.contains(&field.as_str()))
        .filter_map(|(field, value)| value.parse().ok().map(|v| (field, v)))
        .collect()
}

/// One counter (quota checks: a single `HGET`).
pub async fn counter(
    clients: &RedisClients,
    org: &OrgId,
    month: Month,
    field: &str,
) -> Result<i64, RedisError> {
    let key = clients.keys().usage_counters(org.as_str(), &month.to_string());
    let value: Option<i64> = clients.primary().hget(key, field).await?;
    Ok(value.unwrap_or(0))
}

/// The `limit` organisations with the highest `field` in `month`.
pub async fn top(
    clients: &RedisClients,
    field: &str,
    month: Month,
    limit: usize,
) -> Result<Vec<(String, i64)>, RedisError> {
    let key = clients.keys().usage_top(field, &month.to_string());
    let stop = i64::try_from(limit).unwrap_or(i64::MAX).saturating_sub(1);
    let value: Value = clients.primary().zrange(key, 0, stop, None, true, None, true).await?;
    Ok(parse_scored(value))
}

/// `ZRANGE … WITHSCORES` answers `[[member, score], …]` in RESP3 and a flat list in RESP2.
fn parse_scored(value: Value) -> Vec<(String, i64)> {
    let items = match value {
        Value::Array(items) => items,
        _ => return Vec::new(),
    };
    let score = |v: &Value| v.as_f64().map(|f| f as i64).unwrap_or(0);
    if items.first().is_some_and(Value::is_array) {
        items
            .into_iter()
            .filter_map(|pair| {
                let pair = pair.into_array();
                let member = pair.first()?.as_string()?;
                Some((member, score(pair.get(1)?)))
            })
            .collect()
    } else {
        items.chunks(2).filter_map(|c| Some((c.first()?.as_string()?, score(c.get(1)?)))).collect()
    }
}

/// The newest detail events of `org` (JSON documents), at most `limit`.
pub async fn recent_events(
    clients: &RedisClients,
    org: &OrgId,
    limit: usize,
) -> Result<Vec<serde_json::Value>, RedisError> {
    let stop = i64::try_from(limit).unwrap_or(i64::MAX).saturating_sub(1);
    let raw: Vec<String> =
        clients.primary().lrange(clients.keys().usage_events(org.as_str()), 0, stop).await?;
    Ok(raw.iter().filter_map(|s| serde_json::from_str(s).ok()).collect())
}

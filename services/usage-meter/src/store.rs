//! Redis storage of usage: the recording script (idempotency check, counters, top consumers,
//! detail events and the dirty mark in one atomic unit), reads of counters and top lists, the
//! one-round-trip quota read, and the dirty set the Postgres flusher drains.
//!
//! Keys: [`platform_redis::Keys::usage_counters`] and siblings (see the key table there).

use std::collections::{BTreeMap, HashMap};
use std::sync::LazyLock;

use platform_redis::fred::clients::Transaction;
use platform_redis::fred::prelude::*;
use platform_redis::fred::types::scripts::Script;
use platform_redis::fred::types::{ClusterHash, CustomCommand};
use platform_redis::{Keys, RedisClients, RedisError};

use crate::domain::{DONATION_VOLUME, Metric, Month, OrgId, USAGE_FIELDS, ValidEvent};

/// Records a batch of validated events, in order. Atomic (one script): for each event, an
/// idempotency key seen before within its window (`SET NX EX` fails) makes the event a
/// duplicate that changes nothing; otherwise counters are summed (aggregated per batch, then one
/// `HINCRBY` per field), a gauge keeps the value with the latest event time (ties: the larger
/// value, so the result does not depend on delivery order), the top-consumer sets follow, the
/// detail record is pushed to the org's capped list, and `<org>|<month>` is marked dirty.
/// Returns 1 (counted) or 0 (duplicate) per event.
///
/// KEYS: `[dirty]` then per event `[counters, idempotency, top, top2, events]`.
/// ARGV: `[counter_ttl, events_ttl, events_cap, idem_ttl]` then per event
/// `[kind (c|g|d), field, value, at_ms, has_idem (0|1), detail or "", dirty field, org]`.
const RECORD_LUA: &str = r"
local counter_ttl = ARGV[1]
local events_ttl = ARGV[2]
local events_cap = tonumber(ARGV[3])
local idem_ttl = ARGV[4]
local n = (#KEYS - 1) / 5
local incr, incr_order = {}, {}
local zincr, zincr_order = {}, {}
local ttl_keys, ttl_order = {}, {}
local event_keys, event_order = {}, {}
local dirty, dirty_order = {}, {}
local results = {}
local function add(map, order, key, member, delta)
  local m = map[key]
  if m == nil then m = {}; map[key] = m; order[#order + 1] = key end
  m[member] = (m[member] or 0) + delta
end
local function mark(set, order, key)
  if not set[key] then set[key] = true; order[#order + 1] = key end
end
for i = 0, n - 1 do
  local k = 2 + i * 5
  local a = 5 + i * 8
  local fresh = 1
  if ARGV[a + 4] == '1' then
    if not redis.call('SET', KEYS[k + 1], '1', 'NX', 'EX', idem_ttl) then fresh = 0 end
  end
  if fresh == 1 then
    local counters, kind, field = KEYS[k], ARGV[a], ARGV[a + 1]
    local value = tonumber(ARGV[a + 2])
    local org = ARGV[a + 7]
    if kind == 'g' then
      local at = tonumber(ARGV[a + 3])
      local at_field = field .. ':at'
      local cur = redis.call('HMGET', counters, field, at_field)
      local cur_v, cur_at = tonumber(cur[1]), tonumber(cur[2])
      if cur_at == nil or at > cur_at or (at == cur_at and value > (cur_v or -1)) then
        redis.call('HSET', counters, field, ARGV[a + 2], at_field, ARGV[a + 3])
        redis.call('ZADD', KEYS[k + 2], ARGV[a + 2], org)
      end
    elseif kind == 'd' then
      add(incr, incr_order, counters, field, 1)
      add(incr, incr_order, counters, 'donation_volume_cents', value)
      add(zincr, zincr_order, KEYS[k + 2], org, 1)
      add(zincr, zincr_order, KEYS[k + 3], org, value)
      mark(ttl_keys, ttl_order, KEYS[k + 3])
    else
      add(incr, incr_order, counters, field, value)
      add(zincr, zincr_order, KEYS[k + 2], org, value)
    end
    mark(ttl_keys, ttl_order, counters)
    mark(ttl_keys, ttl_order, KEYS[k + 2])
    if ARGV[a + 5] ~= '' then
      redis.call('LPUSH', KEYS[k + 4], ARGV[a + 5])
      mark(event_keys, event_order, KEYS[k + 4])
    end
    mark(dirty, dirty_order, ARGV[a + 6])
  end
  results[#results + 1] = fresh
end
for _, key in ipairs(incr_order) do
  for field, delta in pairs(incr[key]) do
    redis.call('HINCRBY', key, field, string.format('%.0f', delta))
  end
end
for _, key in ipairs(zincr_order) do
  for member, delta in pairs(zincr[key]) do
    redis.call('ZINCRBY', key, string.format('%.0f', delta), member)
  end
end
for _, key in ipairs(ttl_order) do redis.call('EXPIRE', key, counter_ttl) end
for _, key in ipairs(event_order) do
  redis.call('LTRIM', key, 0, events_cap - 1)
  redis.call('EXPIRE', key, events_ttl)
end
for _, field in ipairs(dirty_order) do redis.call('HINCRBY', KEYS[1], field, 1) end
return results
";

static RECORD: LazyLock<Script> = LazyLock::new(|| Script::from_lua(RECORD_LUA));

/// Deletes dirty marks whose generation is still the one the flusher copied, so a change made
/// during the copy stays marked. ARGV: field, generation, field, generation, …
const CLEAR_DIRTY_LUA: &str = r"
local cleared = 0
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    redis.call('HDEL', KEYS[1], ARGV[i])
    cleared = cleared + 1
  end
end
return cleared
";

static CLEAR_DIRTY: LazyLock<Script> = LazyLock::new(|| Script::from_lua(CLEAR_DIRTY_LUA));

/// Retention of what the recording script writes; from `[usage]` settings.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub counter_ttl_secs: u64,
    pub events_ttl_secs: u64,
    pub events_per_org: u64,
    pub idempotency_window_secs: u64,
}

/// The recording script's keys and arguments for `events`.
fn record_call(
    keys: &Keys,
    retention: &Retention,
    events: &[&ValidEvent],
) -> (Vec<String>, Vec<String>) {
    let mut k = Vec::with_capacity(1 + events.len() * 5);
    let mut a = Vec::with_capacity(4 + events.len() * 8);
    k.push(keys.usage_dirty());
    a.push(retention.counter_ttl_secs.to_string());
    a.push(retention.events_ttl_secs.to_string());
    a.push(retention.events_per_org.max(1).to_string());
    a.push(retention.idempotency_window_secs.max(1).to_string());
    for event in events {
        let org = event.org.as_str();
        let month = event.month.to_string();
        let counters = keys.usage_counters(org, &month);
        let field = event.metric.as_str();
        let top = keys.usage_top(field, &month);
        k.push(counters.clone());
        k.push(match &event.idempotency_key {
            Some(key) => keys.usage_idempotency(org, key),
            // Unused placeholder in the org's slot.
            None => counters,
        });
        k.push(top.clone());
        k.push(if event.metric == Metric::DonationProcessed {
            keys.usage_top(DONATION_VOLUME, &month)
        } else {
            top
        });
        k.push(keys.usage_events(org));
        let kind = match event.metric {
            m if m.is_gauge() => "g",
            Metric::DonationProcessed => "d",
            _ => "c",
        };
        a.push(kind.to_owned());
        a.push(field.to_owned());
        a.push(event.value.to_string());
        a.push(event.occurred_at.timestamp_millis().to_string());
        a.push(if event.idempotency_key.is_some() { "1" } else { "0" }.to_owned());
        a.push(event.detail.clone().unwrap_or_default());
        a.push(format!("{org}|{month}"));
        a.push(org.to_owned());
    }
    (k, a)
}

/// Queues the recording of `events` on the stream consumer's transaction (committed with the
/// `XACK`). `EVAL` with the full text, not `EVALSHA`: a `NOSCRIPT` at `EXEC` would fail only this
/// command while the `XACK` still applied.
pub async fn queue_record(
    tx: &Transaction,
    keys: &Keys,
    retention: &Retention,
    events: &[&ValidEvent],
) -> Result<(), RedisError> {
    if events.is_empty() {
        return Ok(());
    }
    let (k, a) = record_call(keys, retention, events);
    // fred's Transaction has no Lua interface; EVAL as a custom command queues the same way.
    let mut args = Vec::with_capacity(2 + k.len() + a.len());
    args.push(RECORD_LUA.to_owned());
    args.push(k.len().to_string());
    args.extend(k);
    args.extend(a);
    let command = CustomCommand::new_static("EVAL", ClusterHash::Offset(2), false);
    let () = tx.custom(command, args).await?;
    Ok(())
}

/// Records `events` now (HTTP path); returns per event whether it was counted (false: duplicate).
pub async fn record(
    clients: &RedisClients,
    retention: &Retention,
    events: &[&ValidEvent],
) -> Result<Vec<bool>, RedisError> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let (k, a) = record_call(clients.keys(), retention, events);
    let counted: Vec<i64> = RECORD.evalsha_with_reload(clients.primary().next(), k, a).await?;
    Ok(counted.into_iter().map(|c| c == 1).collect())
}

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

fn parse_counters(raw: HashMap<String, String>) -> BTreeMap<String, i64> {
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

/// A counters hash changed since its last copy to Postgres.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirtyMonth {
    pub field: String,
    pub generation: String,
    pub org: String,
    pub month: String,
}

/// Every dirty `<org>|<month>` with its generation.
pub async fn dirty(clients: &RedisClients) -> Result<Vec<DirtyMonth>, RedisError> {
    let raw: HashMap<String, String> =
        clients.primary().hgetall(clients.keys().usage_dirty()).await?;
    Ok(raw
        .into_iter()
        .filter_map(|(field, generation)| {
            let (org, month) = field.split_once('|')?;
            let (org, month) = (org.to_owned(), month.to_owned());
            Some(DirtyMonth { field, generation, org, month })
        })
        .collect())
}

/// The counters of several org-months in one pipelined round trip.
pub async fn usage_many(
    clients: &RedisClients,
    months: &[DirtyMonth],
) -> Result<Vec<BTreeMap<String, i64>>, RedisError> {
    if months.is_empty() {
        return Ok(Vec::new());
    }
    let pipeline = clients.primary().next().pipeline();
    for m in months {
        let () = pipeline.hgetall(clients.keys().usage_counters(&m.org, &m.month)).await?;
    }
    let answers: Vec<HashMap<String, String>> = pipeline.all().await?;
    Ok(answers.into_iter().map(parse_counters).collect())
}

/// Clears the dirty marks that were not bumped since they were read.
pub async fn clear_dirty(clients: &RedisClients, months: &[DirtyMonth]) -> Result<i64, RedisError> {
    if months.is_empty() {
        return Ok(0);
    }
    let args: Vec<String> =
        months.iter().flat_map(|m| [m.field.clone(), m.generation.clone()]).collect();
    let cleared: i64 = CLEAR_DIRTY
        .evalsha_with_reload(clients.primary().next(), vec![clients.keys().usage_dirty()], args)
        .await?;
    Ok(cleared)
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

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
use platform_redis::{Keys, RedisClients, RedisError};

use crate::domain::{DONATION_VOLUME, Metric, Month, OrgId, USAGE_FIELDS, ValidEvent};

/// Records a batch of validated events, in order. Atomic (one script): for each event, an
/// idempotency key seen before within its window (`SET NX EX` fails) makes the event a
/// duplicate that changes nothing; otherwise its value is added to its slot (one slot per
/// org, month and metric in the batch, so a batch costs one `HINCRBY`/`ZINCRBY` per slot, not
/// per event), a gauge keeps the value with the latest event time (ties: the larger value, so
/// the result does not depend on delivery order), the detail record is pushed to the org's
/// capped list, and `<org>|<month>` is marked dirty. Returns 1 (counted) or 0 (duplicate) per
/// event.
///
/// KEYS: `[dirty, idempotency keys…, slot keys…]` (each key once).
/// ARGV: `[counter_ttl, events_ttl, events_cap, idem_ttl, n, m, d]`, then n events
/// `[slot, value, idempotency KEYS index or 0, at_ms]`, then m slots `[kind (c|g|d), field, org,
/// dirty field, counters, top, top2, events KEYS indices]`, then d details `[event, json]`.
const RECORD_LUA: &str = r"
local counter_ttl, events_ttl = ARGV[1], ARGV[2]
local events_cap, idem_ttl = tonumber(ARGV[3]), ARGV[4]
local n, m, d = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local ev = 8
local sl = ev + 4 * n
local de = sl + 8 * m
local sums, counts, used, fresh = {}, {}, {}, {}
for i = 0, n - 1 do
  local a = ev + i * 4
  local ok = 1
  local idem = tonumber(ARGV[a + 2])
  if idem > 0 and not redis.call('SET', KEYS[idem], '1', 'NX', 'EX', idem_ttl) then ok = 0 end
  fresh[i + 1] = ok
  if ok == 1 then
    local s = tonumber(ARGV[a])
    local b = sl + (s - 1) * 8
    used[s] = true
    if ARGV[b] == 'g' then
      local counters, field = KEYS[tonumber(ARGV[b + 4])], ARGV[b + 1]
      local value, at = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 3])
      local at_field = field .. ':at'
      local cur = redis.call('HMGET', counters, field, at_field)
      local cur_v, cur_at = tonumber(cur[1]), tonumber(cur[2])
      if cur_at == nil or at > cur_at or (at == cur_at and value > (cur_v or -1)) then
        redis.call('HSET', counters, field, ARGV[a + 1], at_field, ARGV[a + 3])
        redis.call('ZADD', KEYS[tonumber(ARGV[b + 5])], ARGV[a + 1], ARGV[b + 2])
      end
    else
      sums[s] = (sums[s] or 0) + tonumber(ARGV[a + 1])
      counts[s] = (counts[s] or 0) + 1
    end
  end
end
for s = 1, m do
  if used[s] then
    local b = sl + (s - 1) * 8
    local kind, field, org = ARGV[b], ARGV[b + 1], ARGV[b + 2]
    local counters, top = KEYS[tonumber(ARGV[b + 4])], KEYS[tonumber(ARGV[b + 5])]
    if kind == 'd' then
      local top2 = KEYS[tonumber(ARGV[b + 6])]
      redis.call('HINCRBY', counters, field, string.format('%.0f', counts[s]))
      redis.call('HINCRBY', counters, 'donation_volume_cents', string.format('%.0f', sums[s]))
      redis.call('ZINCRBY', top, string.format('%.0f', counts[s]), org)
      redis.call('ZINCRBY', top2, string.format('%.0f', sums[s]), org)
      redis.call('EXPIRE', top2, counter_ttl)
    elseif kind == 'c' then
      redis.call('HINCRBY', counters, field, string.format('%.0f', sums[s]))
      redis.call('ZINCRBY', top, string.format('%.0f', sums[s]), org)
    end
    redis.call('EXPIRE', counters, counter_ttl)
    redis.call('EXPIRE', top, counter_ttl)
    redis.call('HINCRBY', KEYS[1], ARGV[b + 3], 1)
  end
end
local lists, list_order = {}, {}
for j = 0, d - 1 do
  local a = de + j * 2
  local i = tonumber(ARGV[a])
  if fresh[i] == 1 then
    local s = tonumber(ARGV[ev + (i - 1) * 4])
    local key = KEYS[tonumber(ARGV[sl + (s - 1) * 8 + 7])]
    redis.call('LPUSH', key, ARGV[a + 1])
    if not lists[key] then lists[key] = true; list_order[#list_order + 1] = key end
  end
end
for _, key in ipairs(list_order) do
  redis.call('LTRIM', key, 0, events_cap - 1)
  redis.call('EXPIRE', key, events_ttl)
end
return fresh
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

/// Interns keys so each is passed once; returns 1-based `KEYS` indices.
#[derive(Default)]
struct KeyList {
    keys: Vec<String>,
    index: HashMap<String, usize>,
}

impl KeyList {
    fn add(&mut self, key: String) -> usize {
        if let Some(i) = self.index.get(&key) {
            return *i;
        }
        self.keys.push(key.clone());
        let i = self.keys.len();
        self.index.insert(key, i);
        i
    }
}

/// The recording script's keys and arguments for `events`.
fn record_call(
    keys: &Keys,
    retention: &Retention,
    events: &[&ValidEvent],
) -> (Vec<String>, Vec<String>) {
    let mut k = KeyList::default();
    k.add(keys.usage_dirty());
    let mut slots: Vec<[String; 8]> = Vec::new();
    let mut slot_index: HashMap<(&str, Month, Metric), usize> = HashMap::new();
    let mut event_args = Vec::with_capacity(events.len() * 4);
    let mut details = Vec::new();
    for (i, event) in events.iter().enumerate() {
        let org = event.org.as_str();
        let slot = *slot_index.entry((org, event.month, event.metric)).or_insert_with(|| {
            let month = event.month.to_string();
            let field = event.metric.as_str();
            let top = k.add(keys.usage_top(field, &month));
            let top2 = if event.metric == Metric::DonationProcessed {
                k.add(keys.usage_top(DONATION_VOLUME, &month))
            } else {
                top
            };
            let kind = match event.metric {
                m if m.is_gauge() => "g",
                Metric::DonationProcessed => "d",
                _ => "c",
            };
            slots.push([
                kind.to_owned(),
                field.to_owned(),
                org.to_owned(),
                format!("{org}|{month}"),
                k.add(keys.usage_counters(org, &month)).to_string(),
                top.to_string(),
                top2.to_string(),
                k.add(keys.usage_events(org)).to_string(),
            ]);
            slots.len()
        });
        let idem = match &event.idempotency_key {
            Some(key) => k.add(keys.usage_idempotency(org, key)),
            None => 0,
        };
        event_args.push(slot.to_string());
        event_args.push(event.value.to_string());
        event_args.push(idem.to_string());
        event_args.push(if event.metric.is_gauge() {
            event.occurred_at.timestamp_millis().to_string()
        } else {
            "0".to_owned()
        });
        if let Some(detail) = &event.detail {
            details.push((i + 1).to_string());
            details.push(detail.clone());
        }
    }
    let mut a = Vec::with_capacity(7 + event_args.len() + slots.len() * 8 + details.len());
    a.push(retention.counter_ttl_secs.to_string());
    a.push(retention.events_ttl_secs.to_string());
    a.push(retention.events_per_org.max(1).to_string());
    a.push(retention.idempotency_window_secs.max(1).to_string());
    a.push(events.len().to_string());
    a.push(slots.len().to_string());
    a.push((details.len() / 2).to_string());
    a.extend(event_args);
    a.extend(slots.into_iter().flatten());
    a.extend(details);
    (k.keys, a)
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
    // fred's Transaction has no Lua interface; EVAL as a custom command queues the same way,
    // pinned to the slot of the keys (the first is the dirty hash; all share the stream slot).
    let command = platform_redis::lua::eval(&keys.usage_dirty());
    let mut args = Vec::with_capacity(2 + k.len() + a.len());
    args.push(RECORD_LUA.to_owned());
    args.push(k.len().to_string());
    args.extend(k);
    args.extend(a);
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

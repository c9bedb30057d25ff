//! Redis storage of usage: the recording script (idempotency check, counters, top consumers,
//! detail events and the dirty mark in one atomic unit), reads of counters and top lists, the
//! one-round-trip quota read, and the dirty set the Postgres flusher drains.
//!
//! Keys: [`platform_redis::Keys::usage_counters`] and siblings (see the key table there).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::hash::BuildHasher;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};

use platform_redis::fred::clients::Transaction;
use platform_redis::fred::prelude::*;
use platform_redis::fred::types::scripts::Script;
use platform_redis::{Keys, RedisClients, RedisError};

use crate::domain::{DONATION_VOLUME, Metric, Month, OrgId, USAGE_FIELDS, ValidEvent};

/// Records a batch of validated events, in order. Atomic (one script). Per batch, not per
/// event, wherever Redis allows it:
///
/// - **Idempotency**: a producer key is a member `<org>|<key>` of the marks set of the current
///   time bucket (bucket = unix seconds / window). A key that is a member of the current or the
///   previous bucket's set was counted before: its event changes nothing. So a key seen again
///   within the window is always refused (the two buckets cover at least one window back), and
///   one may be remembered for up to two windows. One `SMISMEMBER` per bucket for the whole
///   batch and one `SADD` of every new member replace a `SET NX EX` per event (2.8 µs each). The
///   caller removes repeats within the batch (first in stream order counts) before the script.
/// - **Counters**: one slot per org, month and metric. The caller sums every event of a slot;
///   the script subtracts the ones that turned out to be duplicates, then costs one
///   `HINCRBY`/`ZINCRBY` per slot. Gauges (storage_used) keep the value with the latest event
///   time (ties: the larger value, so the result does not depend on delivery order), per event.
/// - **Details** go to the org's capped list with one `LPUSH` of all of them per list;
///   each key's TTL is refreshed once per batch.
/// - **Dirty marks**: one `HSET` sets every touched `<org>|<month>` to this call's generation,
///   a token no other call uses ([`next_generation`]), so a flusher that copied a month sees any
///   later change as a different value (one command per batch, not an `HINCRBY` per month).
///
/// Returns the keyed indices (below) of the events that were duplicates.
///
/// KEYS: `[dirty, marks of this bucket, of the previous one, of the one before (unlinked), slot
/// keys…]` (each key once).
/// ARGV: `[counter_ttl, events_ttl, events_cap, marks_ttl, m, k, g, d, generation]`, then m slots `[kind
/// (c|g|d), field, org, dirty field, counters, top, top2 (KEYS indices), total, count, keyed,
/// values]`, then the k members of the keyed events (1-based "keyed index" = position here,
/// grouped by slot in slot order: each slot owns the next `keyed` of them), then g gauge events
/// `[slot, value, at_ms, keyed index or 0]`, then d details `[keyed index or 0, list KEYS index,
/// json]`. A slot's `values` are its keyed events' values joined by commas (empty for gauges):
/// one argument per slot instead of one per event, parsed only when the batch had duplicates.
/// Every argument costs Redis a string object when the `EVAL` is queued and a Lua string when it
/// runs, so the per-event arguments are just the members.
const RECORD_LUA: &str = r"
local counter_ttl, events_ttl = ARGV[1], ARGV[2]
local events_cap, marks_ttl = tonumber(ARGV[3]), ARGV[4]
local m, k, g, d = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local generation = ARGV[9]
local sl = 10
local mb = sl + 11 * m
local gb = mb + k
local db = gb + 4 * g
-- unpack() and command arity have limits: at most this many members per call.
local chunk = 1000
local dup, fresh, ndup = {}, {}, 0
for from = 0, k - 1, chunk do
  local to = math.min(from + chunk, k) - 1
  local cur = redis.call('SMISMEMBER', KEYS[2], unpack(ARGV, mb + from, mb + to))
  local prev = redis.call('SMISMEMBER', KEYS[3], unpack(ARGV, mb + from, mb + to))
  for i = 1, to - from + 1 do
    if cur[i] == 1 or prev[i] == 1 then
      dup[from + i] = true
      ndup = ndup + 1
    else
      fresh[#fresh + 1] = ARGV[mb + from + i - 1]
    end
  end
end
if #fresh > 0 then
  for from = 1, #fresh, chunk do
    redis.call('SADD', KEYS[2], unpack(fresh, from, math.min(from + chunk - 1, #fresh)))
  end
  -- Two windows from the first mark: the set is read until the bucket after it ends.
  redis.call('EXPIRE', KEYS[2], marks_ttl, 'NX')
  -- The bucket before the previous one is never read again; free it in the background.
  if KEYS[4] ~= KEYS[3] and KEYS[4] ~= KEYS[2] then redis.call('UNLINK', KEYS[4]) end
end
local dirty, dirty_order, ttl, ttl_order = {}, {}, {}, {}
local function touch(slot_base)
  local field = ARGV[slot_base + 3]
  if not dirty[field] then dirty[field] = true; dirty_order[#dirty_order + 1] = field end
  for o = 4, 6 do
    local key = KEYS[tonumber(ARGV[slot_base + o])]
    if not ttl[key] then ttl[key] = true; ttl_order[#ttl_order + 1] = key end
  end
end
local q = 0
for s = 0, m - 1 do
  local b = sl + s * 11
  local kind = ARGV[b]
  local total, count, keyed = ARGV[b + 7], tonumber(ARGV[b + 8]), tonumber(ARGV[b + 9])
  if kind ~= 'g' then
    if ndup > 0 then
      local t, i = tonumber(total), q
      for v in string.gmatch(ARGV[b + 10], '[^,]+') do
        i = i + 1
        if dup[i] then t = t - tonumber(v); count = count - 1 end
      end
      total = string.format('%.0f', t)
    end
    if count > 0 then
      local field, org = ARGV[b + 1], ARGV[b + 2]
      local counters, top = KEYS[tonumber(ARGV[b + 4])], KEYS[tonumber(ARGV[b + 5])]
      if kind == 'd' then
        redis.call('HINCRBY', counters, field, count)
        redis.call('HINCRBY', counters, 'donation_volume_cents', total)
        redis.call('ZINCRBY', top, count, org)
        redis.call('ZINCRBY', KEYS[tonumber(ARGV[b + 6])], total, org)
      else
        redis.call('HINCRBY', counters, field, total)
        redis.call('ZINCRBY', top, total, org)
      end
      touch(b)
    end
  end
  q = q + keyed
end
for j = 0, g - 1 do
  local a = gb + j * 4
  local ki = tonumber(ARGV[a + 3])
  if ki == 0 or not dup[ki] then
    local b = sl + (tonumber(ARGV[a]) - 1) * 11
    local counters, field = KEYS[tonumber(ARGV[b + 4])], ARGV[b + 1]
    local value, at = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
    local at_field = field .. ':at'
    local cur = redis.call('HMGET', counters, field, at_field)
    local cur_v, cur_at = tonumber(cur[1]), tonumber(cur[2])
    if cur_at == nil or at > cur_at or (at == cur_at and value > (cur_v or -1)) then
      redis.call('HSET', counters, field, ARGV[a + 1], at_field, ARGV[a + 2])
      redis.call('ZADD', KEYS[tonumber(ARGV[b + 5])], ARGV[a + 1], ARGV[b + 2])
    end
    touch(b)
  end
end
if #dirty_order > 0 then
  local marks = {}
  for _, field in ipairs(dirty_order) do
    marks[#marks + 1] = field
    marks[#marks + 1] = generation
  end
  for from = 1, #marks, chunk do
    redis.call('HSET', KEYS[1], unpack(marks, from, math.min(from + chunk - 1, #marks)))
  end
end
for _, key in ipairs(ttl_order) do redis.call('EXPIRE', key, counter_ttl) end
local lists, list_order = {}, {}
for j = 0, d - 1 do
  local a = db + j * 3
  local ki = tonumber(ARGV[a])
  if ki == 0 or not dup[ki] then
    local key = KEYS[tonumber(ARGV[a + 1])]
    local l = lists[key]
    if not l then l = {}; lists[key] = l; list_order[#list_order + 1] = key end
    l[#l + 1] = ARGV[a + 2]
  end
end
for _, key in ipairs(list_order) do
  local l = lists[key]
  for from = 1, #l, chunk do
    redis.call('LPUSH', key, unpack(l, from, math.min(from + chunk - 1, #l)))
  end
  redis.call('LTRIM', key, 0, events_cap - 1)
  redis.call('EXPIRE', key, events_ttl)
end
local out = {}
if ndup > 0 then
  for i = 1, k do if dup[i] then out[#out + 1] = i end end
end
return out
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

/// Hash maps of one batch: foldhash, not SipHash (the keys are ours, and hashing showed in
/// profiles of the consumer).
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Interns keys so each is passed once; returns 1-based `KEYS` indices.
#[derive(Default)]
struct KeyList {
    keys: Vec<String>,
    index: FastMap<String, usize>,
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

/// What decides whether one event of a batch is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// No idempotency key: counted.
    Counted,
    /// Its key appeared earlier in the same batch: not counted, not sent.
    Repeat,
    /// Counted unless the script reports this keyed index as a duplicate.
    Keyed(usize),
}

/// One call of the recording script: its keys and arguments, and how to read its answer.
struct RecordCall {
    keys: Vec<String>,
    args: Vec<String>,
    fates: Vec<Fate>,
}

impl RecordCall {
    /// Per event whether it was counted, given the keyed indices the script found duplicate.
    fn counted(&self, duplicates: &[i64]) -> Vec<bool> {
        let duplicates: HashSet<i64> = duplicates.iter().copied().collect();
        self.fates
            .iter()
            .map(|fate| match fate {
                Fate::Counted => true,
                Fate::Repeat => false,
                Fate::Keyed(i) => !duplicates.contains(&(*i as i64)),
            })
            .collect()
    }
}

/// A dirty-mark generation no other recording call uses (up to chance, 2^-63): a keyed hash,
/// random per process, of a counter. A number, so that during a rolling upgrade a consumer of
/// the previous version, which bumps marks with `HINCRBY`, still finds an integer there.
fn next_generation() -> String {
    static KEYS: LazyLock<std::collections::hash_map::RandomState> =
        LazyLock::new(std::collections::hash_map::RandomState::new);
    static CALLS: AtomicU64 = AtomicU64::new(0);
    (KEYS.hash_one(CALLS.fetch_add(1, Ordering::Relaxed)) >> 1).to_string()
}

/// The idempotency time bucket of `now_secs` (unix seconds) for a window of `window_secs`.
fn marks_bucket(now_secs: i64, window_secs: u64) -> u64 {
    u64::try_from(now_secs).unwrap_or(0) / window_secs.max(1)
}

/// A slot (org, month, metric) of a batch and the events in it.
struct Slot<'a> {
    first: &'a ValidEvent,
    events: Vec<usize>,
}

/// The recording script's call for `events` at `now_secs` (unix seconds, picks the
/// idempotency bucket).
fn record_call(
    keys: &Keys,
    retention: &Retention,
    events: &[&ValidEvent],
    now_secs: i64,
) -> RecordCall {
    let mut k = KeyList::default();
    k.add(keys.usage_dirty());
    let bucket = marks_bucket(now_secs, retention.idempotency_window_secs);
    // Not interned: KEYS[2..4] are these three whatever they are (the script compares them).
    for back in 0..3 {
        k.keys.push(keys.usage_idempotency_marks(bucket.saturating_sub(back)));
    }

    // Repeats within the batch: the first in stream order counts, the others are not sent.
    let mut fates = vec![Fate::Counted; events.len()];
    let mut seen: HashSet<(&str, &str), foldhash::fast::RandomState> =
        HashSet::with_capacity_and_hasher(events.len(), Default::default());
    let mut slots: Vec<Slot> = Vec::new();
    let mut slot_index: FastMap<(&str, Month, Metric), usize> = FastMap::default();
    for (i, event) in events.iter().enumerate() {
        if let Some(key) = &event.idempotency_key
            && !seen.insert((event.org.as_str(), key.as_str()))
        {
            fates[i] = Fate::Repeat;
            continue;
        }
        let s = *slot_index.entry((event.org.as_str(), event.month, event.metric)).or_insert_with(
            || {
                slots.push(Slot { first: event, events: Vec::new() });
                slots.len() - 1
            },
        );
        slots[s].events.push(i);
    }

    let mut slot_args = Vec::with_capacity(slots.len() * 11);
    let mut members = Vec::with_capacity(events.len());
    let (mut gauges, mut details) = (Vec::new(), Vec::new());
    let mut gauge_count = 0usize;
    for (s, slot) in slots.iter().enumerate() {
        let first = slot.first;
        let org = first.org.as_str();
        let month = first.month.to_string();
        let field = first.metric.as_str();
        let top = k.add(keys.usage_top(field, &month));
        let top2 = if first.metric == Metric::DonationProcessed {
            k.add(keys.usage_top(DONATION_VOLUME, &month))
        } else {
            top
        };
        let kind = match first.metric {
            m if m.is_gauge() => "g",
            Metric::DonationProcessed => "d",
            _ => "c",
        };
        let counters = k.add(keys.usage_counters(org, &month));
        let mut events_key = None;
        let (mut total, mut keyed, mut values) = (0i64, 0usize, String::new());
        for &i in &slot.events {
            let event = events[i];
            total = total.saturating_add(event.value);
            let keyed_index = match &event.idempotency_key {
                Some(key) => {
                    members.push(format!("{org}|{key}"));
                    if kind != "g" {
                        if keyed > 0 {
                            values.push(',');
                        }
                        let _ = write!(values, "{}", event.value);
                    }
                    keyed += 1;
                    fates[i] = Fate::Keyed(members.len());
                    members.len()
                }
                None => 0,
            };
            if kind == "g" {
                gauge_count += 1;
                gauges.extend([
                    (s + 1).to_string(),
                    event.value.to_string(),
                    event.occurred_at.timestamp_millis().to_string(),
                    keyed_index.to_string(),
                ]);
            }
            if let Some(detail) = &event.detail {
                let list = *events_key.get_or_insert_with(|| k.add(keys.usage_events(org)));
                details.extend([keyed_index.to_string(), list.to_string(), detail.clone()]);
            }
        }
        slot_args.extend([
            kind.to_owned(),
            field.to_owned(),
            org.to_owned(),
            format!("{org}|{month}"),
            counters.to_string(),
            top.to_string(),
            top2.to_string(),
            total.to_string(),
            slot.events.len().to_string(),
            keyed.to_string(),
            values,
        ]);
    }
    let window = retention.idempotency_window_secs.max(1);
    let mut a =
        Vec::with_capacity(8 + slot_args.len() + members.len() + gauges.len() + details.len());
    a.push(retention.counter_ttl_secs.to_string());
    a.push(retention.events_ttl_secs.to_string());
    a.push(retention.events_per_org.max(1).to_string());
    a.push(window.saturating_mul(2).to_string());
    a.push(slots.len().to_string());
    a.push(members.len().to_string());
    a.push(gauge_count.to_string());
    a.push((details.len() / 3).to_string());
    a.push(next_generation());
    a.extend(slot_args);
    a.extend(members);
    a.extend(gauges);
    a.extend(details);
    RecordCall { keys: k.keys, args: a, fates }
}

/// Queues the recording of `events` on the stream consumer's transaction (committed with the
/// `XACK`). `EVAL` with the full text, not `EVALSHA`: a `NOSCRIPT` at `EXEC` would fail only this
/// command while the `XACK` still applied. (Redis hashes the ~4 KB text per call: ~10 µs per
/// batch, 0.01 µs per event at batch 1000.)
pub async fn queue_record(
    tx: &Transaction,
    keys: &Keys,
    retention: &Retention,
    events: &[&ValidEvent],
) -> Result<(), RedisError> {
    if events.is_empty() {
        return Ok(());
    }
    let call = record_call(keys, retention, events, Utc::now().timestamp());
    // fred's Transaction has no Lua interface; EVAL as a custom command queues the same way,
    // pinned to the slot of the keys (the first is the dirty hash; all share the stream slot).
    let command = platform_redis::lua::eval(&keys.usage_dirty());
    let mut args = Vec::with_capacity(2 + call.keys.len() + call.args.len());
    args.push(RECORD_LUA.to_owned());
    args.push(call.keys.len().to_string());
    args.extend(call.keys);
    args.extend(call.args);
    let () = tx.custom(command, args).await?;
    Ok(())
}

/// Records `events` now (HTTP path); returns per event whether it was counted (false: duplicate).
pub async fn record(
    clients: &RedisClients,
    retention: &Retention,
    events: &[&ValidEvent],
) -> Result<Vec<bool>, RedisError> {
    record_at(clients, retention, events, Utc::now()).await
}

/// [`record`] as if the clock said `now` (picks the idempotency bucket; tests of the window).
pub async fn record_at(
    clients: &RedisClients,
    retention: &Retention,
    events: &[&ValidEvent],
    now: DateTime<Utc>,
) -> Result<Vec<bool>, RedisError> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let call = record_call(clients.keys(), retention, events, now.timestamp());
    let duplicates: Vec<i64> = RECORD
        .evalsha_with_reload(clients.primary().next(), call.keys.clone(), call.args.clone())
        .await?;
    Ok(call.counted(&duplicates))
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

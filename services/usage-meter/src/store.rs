//! Redis storage of usage: the recording script (restore fence, idempotency check, counters,
//! top consumers, detail events and the dirty mark in one atomic unit), the replay of calls parked
//! while counters were restored, reads of counters and top lists, the one-round-trip quota read,
//! and the dirty set the Postgres flusher drains. The flusher's and the restore's own scripts are
//! in [`crate::sync`].
//!
//! Keys: [`platform_redis::Keys::usage_counters`] and siblings (see the key table there).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use chrono::{DateTime, Utc};

use platform_redis::fred::clients::Transaction;
use platform_redis::fred::prelude::*;
use platform_redis::fred::types::scripts::Script;
use platform_redis::{Keys, RedisClients, RedisError};

use crate::domain::{DONATION_VOLUME, Metric, MetricSet, Month, OrgId, USAGE_FIELDS, ValidEvent};

/// The body of the recording call as a Lua function of its `KEYS` and `ARGV`, shared by
/// [`RECORD_LUA`] and [`REPLAY_LUA`] (which applies a parked call).
macro_rules! record_fn {
    () => {
        r"
local function record(KEYS, ARGV)
  local counter_ttl, events_ttl = ARGV[1], ARGV[2]
  local events_cap, marks_ttl = tonumber(ARGV[3]), ARGV[4]
  local m, k, g, d = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
  local generation = ARGV[9]
  local sl = 12
  local mb = sl + 12 * m
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
  local function keep(key)
    if not ttl[key] then ttl[key] = true; ttl_order[#ttl_order + 1] = key end
  end
  local function touch(slot_base)
    local field = ARGV[slot_base + 3]
    if not dirty[field] then dirty[field] = true; dirty_order[#dirty_order + 1] = field end
    for o = 4, 6 do keep(KEYS[tonumber(ARGV[slot_base + o])]) end
  end
  local q = 0
  for s = 0, m - 1 do
    local b = sl + s * 12
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
        -- Durable metric: its counted keys wait for the flush that copies these counters.
        local u = tonumber(ARGV[b + 11])
        if u > 0 then
          local keep_members = {}
          for i = q + 1, q + keyed do
            if not dup[i] then keep_members[#keep_members + 1] = ARGV[mb + i - 1] end
          end
          for from = 1, #keep_members, chunk do
            redis.call('SADD', KEYS[u], unpack(keep_members, from, math.min(from + chunk - 1, #keep_members)))
          end
          if #keep_members > 0 then keep(KEYS[u]) end
        end
      end
    end
    q = q + keyed
  end
  for j = 0, g - 1 do
    local a = gb + j * 4
    local ki = tonumber(ARGV[a + 3])
    if ki == 0 or not dup[ki] then
      local b = sl + (tonumber(ARGV[a]) - 1) * 12
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
end
"
    };
}

/// Records a batch of validated events, in order. Atomic (one script). Per batch, not per
/// event, wherever Redis allows it:
///
/// - **Fence**: when the flush sequence (`KEYS[5]`) is missing (Redis lost its data) or below
///   `min_seq` (the caller knows a later flush: Redis came back from an older snapshot), or
///   calls are already parked (`KEYS[6]`), nothing is counted: in `park` mode (the stream
///   consumer, inside its `MULTI` with the `XACK`) the call's keys and arguments are appended to
///   the parked list, replayed in order once the counters are restored; otherwise (HTTP) the
///   script answers `restoring` and the caller refuses the request.
/// - **Idempotency**: a producer key is a member `<org>|<key>` of the marks set of the current
///   time bucket (bucket = unix seconds / window). A key that is a member of the current or the
///   previous bucket's set was counted before: its event changes nothing. So a key seen again
///   within the window is always refused (the two buckets cover at least one window back), and
///   one may be remembered for up to two windows. One `SMISMEMBER` per bucket for the whole
///   batch and one `SADD` of every new member replace a `SET NX EX` per event (2.8 µs each). The
///   caller removes repeats within the batch (first in stream order counts) before the script.
///   Counted keys of durable metrics are also added to their org-month's unflushed-marks set,
///   which the flusher copies to Postgres with the counters.
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
/// Returns the keyed indices (below) of the events that were duplicates, or `parked` /
/// `restoring`.
///
/// KEYS: `[dirty, marks of this bucket, of the previous one, of the one before (unlinked), flush
/// seq, parked list, slot keys…]` (each key once).
/// ARGV: `[counter_ttl, events_ttl, events_cap, marks_ttl, m, k, g, d, generation, min_seq, mode
/// (park|refuse)]`, then m slots `[kind (c|g|d), field, org, dirty field, counters, top, top2
/// (KEYS indices), total, count, keyed, values, unflushed marks (KEYS index, 0: not a durable
/// metric)]`, then the k members of the keyed events (1-based "keyed index" = position here,
/// grouped by slot in slot order: each slot owns the next `keyed` of them), then g gauge events
/// `[slot, value, at_ms, keyed index or 0]`, then d details `[keyed index or 0, list KEYS index,
/// json]`. A slot's `values` are its keyed events' values joined by commas (empty for gauges):
/// one argument per slot instead of one per event, parsed only when the batch had duplicates.
/// Every argument costs Redis a string object when the `EVAL` is queued and a Lua string when it
/// runs, so the per-event arguments are just the members.
const RECORD_LUA: &str = concat!(
    record_fn!(),
    r"
local seq = tonumber(redis.call('GET', KEYS[5]))
if seq == nil or seq < tonumber(ARGV[10]) or redis.call('EXISTS', KEYS[6]) == 1 then
  if ARGV[11] == 'park' then
    redis.call('RPUSH', KEYS[6], cjson.encode({KEYS, ARGV}))
    return 'parked'
  end
  return 'restoring'
end
return record(KEYS, ARGV)
"
);

/// Applies the parked call at the head of the list once, if the caller still holds the restore.
/// KEYS: the parked call's keys, then the restore token key. ARGV: `[token, the parked entry as
/// stored, the call's arguments…]`. Returns 1 (applied), 0 (the head is another entry: read it
/// again) or -1 (the restore is no longer ours).
const REPLAY_LUA: &str = concat!(
    record_fn!(),
    r"
local n = #KEYS
if redis.call('GET', KEYS[n]) ~= ARGV[1] then return -1 end
if redis.call('LINDEX', KEYS[6], 0) ~= ARGV[2] then return 0 end
redis.call('LPOP', KEYS[6])
local k, a = {}, {}
for i = 1, n - 1 do k[i] = KEYS[i] end
for i = 3, #ARGV do a[i - 2] = ARGV[i] end
record(k, a)
return 1
"
);

static REPLAY: LazyLock<Script> = LazyLock::new(|| Script::from_lua(REPLAY_LUA));

static RECORD: LazyLock<Script> = LazyLock::new(|| Script::from_lua(RECORD_LUA));

/// Retention of what the recording script writes; from `[usage]` settings.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub counter_ttl_secs: u64,
    pub events_ttl_secs: u64,
    pub events_per_org: u64,
    pub idempotency_window_secs: u64,
    /// Metrics whose counted idempotency keys are copied to Postgres with the counters and
    /// restored with them, so a redelivery after a Redis data loss is still refused.
    pub durable_marks: MetricSet,
}

/// The flush sequence this process knows Postgres has committed (see [`crate::recovery`]).
/// Recording calls pass it to the script: a Redis whose sequence is below it came back from an
/// older snapshot, and nothing is counted there until the restore. Cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct Fence(Arc<AtomicI64>);

impl Fence {
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Raises the known sequence to `seq` (never lowers it).
    pub fn raise(&self, seq: i64) {
        self.0.fetch_max(seq, Ordering::Relaxed);
    }
}

/// A recording call that did not count.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("redis command failed")]
    Redis(#[from] RedisError),
    /// Redis lost usage data and the counters are being restored from Postgres; retry shortly.
    #[error("usage counters are being restored after a redis data loss")]
    Restoring,
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
pub(crate) fn marks_bucket(now_secs: i64, window_secs: u64) -> u64 {
    u64::try_from(now_secs).unwrap_or(0) / window_secs.max(1)
}

/// The marks sets of the bucket of `now_secs`, the previous one and the one before.
fn marks_keys(keys: &Keys, now_secs: i64, window_secs: u64) -> [String; 3] {
    let bucket = marks_bucket(now_secs, window_secs);
    [0, 1, 2].map(|back| keys.usage_idempotency_marks(bucket.saturating_sub(back)))
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
    min_seq: i64,
    park: bool,
) -> RecordCall {
    let mut k = KeyList::default();
    k.add(keys.usage_dirty());
    // Not interned: KEYS[2..6] are these whatever they are (the script compares the buckets).
    k.keys.extend(marks_keys(keys, now_secs, retention.idempotency_window_secs));
    k.keys.push(keys.usage_flush_seq());
    k.keys.push(keys.usage_parked());

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

    let mut slot_args = Vec::with_capacity(slots.len() * 12);
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
        let unflushed = if kind != "g" && retention.durable_marks.contains(first.metric) {
            k.add(keys.usage_unflushed_marks(org, &month))
        } else {
            0
        };
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
            unflushed.to_string(),
        ]);
    }
    let window = retention.idempotency_window_secs.max(1);
    let mut a =
        Vec::with_capacity(11 + slot_args.len() + members.len() + gauges.len() + details.len());
    a.push(retention.counter_ttl_secs.to_string());
    a.push(retention.events_ttl_secs.to_string());
    a.push(retention.events_per_org.max(1).to_string());
    a.push(window.saturating_mul(2).to_string());
    a.push(slots.len().to_string());
    a.push(members.len().to_string());
    a.push(gauge_count.to_string());
    a.push((details.len() / 3).to_string());
    a.push(next_generation());
    a.push(min_seq.to_string());
    a.push(if park { "park" } else { "refuse" }.to_owned());
    a.extend(slot_args);
    a.extend(members);
    a.extend(gauges);
    a.extend(details);
    RecordCall { keys: k.keys, args: a, fates }
}

/// Queues the recording of `events` on the stream consumer's transaction (committed with the
/// `XACK`). `EVAL` with the full text, not `EVALSHA`: a `NOSCRIPT` at `EXEC` would fail only this
/// command while the `XACK` still applied. (Redis hashes the ~5 KB text per call: ~10 µs per
/// batch, 0.01 µs per event at batch 1000.) While the counters are being restored the script
/// parks the call instead of counting it (see [`RECORD_LUA`]), so the `XACK` never loses a batch.
pub async fn queue_record(
    tx: &Transaction,
    keys: &Keys,
    retention: &Retention,
    fence: &Fence,
    events: &[&ValidEvent],
) -> Result<(), RedisError> {
    if events.is_empty() {
        return Ok(());
    }
    let call = record_call(keys, retention, events, Utc::now().timestamp(), fence.get(), true);
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

/// Records `events` now (HTTP path); returns per event whether it was counted (false:
/// duplicate). Nothing is recorded while the counters are being restored
/// ([`RecordError::Restoring`]).
pub async fn record(
    clients: &RedisClients,
    retention: &Retention,
    fence: &Fence,
    events: &[&ValidEvent],
) -> Result<Vec<bool>, RecordError> {
    record_at(clients, retention, fence, events, Utc::now()).await
}

/// [`record`] as if the clock said `now` (picks the idempotency bucket; tests of the window).
pub async fn record_at(
    clients: &RedisClients,
    retention: &Retention,
    fence: &Fence,
    events: &[&ValidEvent],
    now: DateTime<Utc>,
) -> Result<Vec<bool>, RecordError> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let call = record_call(clients.keys(), retention, events, now.timestamp(), fence.get(), false);
    let answer: Value = RECORD
        .evalsha_with_reload(clients.primary().next(), call.keys.clone(), call.args.clone())
        .await
        .map_err(RedisError::from)?;
    match answer {
        Value::Array(items) => {
            let duplicates: Vec<i64> = items.iter().filter_map(Value::as_i64).collect();
            Ok(call.counted(&duplicates))
        }
        other if other.as_str().as_deref() == Some("restoring") => Err(RecordError::Restoring),
        other => Err(RedisError::Unexpected(format!("recording script answered {other:?}")).into()),
    }
}

/// One parked recording call as the script stored it: its keys and arguments.
#[derive(Debug, serde::Deserialize)]
struct ParkedCall(Vec<String>, Vec<String>);

/// Applies the calls parked while the counters were restored, oldest first, each exactly once
/// (the script pops the entry it applies). The idempotency buckets are taken from `now`, where
/// the restored marks went. `None` when the restore `token` no longer holds (Redis lost data
/// again, or another replica took over): the caller starts over.
pub async fn replay_parked(
    clients: &RedisClients,
    token: &str,
    now: DateTime<Utc>,
) -> Result<Option<usize>, RedisError> {
    let keys = clients.keys();
    let parked = keys.usage_parked();
    let mut replayed = 0;
    loop {
        let head: Option<String> = clients.primary().lindex(&parked, 0).await?;
        let Some(head) = head else { return Ok(Some(replayed)) };
        let ParkedCall(mut call_keys, args) = serde_json::from_str(&head)?;
        if call_keys.len() < 6 || args.len() < 11 {
            return Err(RedisError::Unexpected(format!("parked call is malformed: {head:.200}")));
        }
        // ARGV[4] is the marks TTL, two windows.
        let window = args[3].parse::<u64>().unwrap_or(2) / 2;
        for (slot, key) in marks_keys(keys, now.timestamp(), window).into_iter().enumerate() {
            call_keys[slot + 1] = key;
        }
        call_keys.push(keys.usage_restore());
        let mut argv = Vec::with_capacity(args.len() + 2);
        argv.push(token.to_owned());
        argv.push(head);
        argv.extend(args);
        let applied: i64 =
            REPLAY.evalsha_with_reload(clients.primary().next(), call_keys, argv).await?;
        match applied {
            1 => replayed += 1,
            0 => {}
            _ => return Ok(None),
        }
    }
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

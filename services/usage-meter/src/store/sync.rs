//! The Redis side of keeping the usage counters and their Postgres copy in step: the dirty set
//! (months changed since their last copy), the flusher's atomic read (counters, unflushed durable
//! marks and the next flush sequence in one script) and its clean-up, and the restore's scripts
//! (claim, counters, marks, reopen).
//!
//! **Flush sequence** (`Keys::usage_flush_seq`, `epoch << 32 | flushes`): every flush read bumps
//! it in the same script that reads the counters, and Postgres keeps the largest one committed.
//! A Redis state that holds a sequence ≥ Postgres' is at least as new as everything Postgres has;
//! a missing sequence (data loss) or a smaller one (an older snapshot) is not, and recording is
//! fenced until the restore reopens it. See [`crate::domain::recovery`].

use std::collections::{BTreeMap, HashMap};
use std::sync::LazyLock;
use std::time::Duration;

use platform_redis::fred::prelude::*;
use platform_redis::fred::types::scripts::Script;
use platform_redis::{RedisClients, RedisError};

use crate::domain::usage::Metric;
use crate::store::read::parse_counters;
use crate::store::record::marks_bucket;

/// Reads a chunk of dirty months atomically and bumps the flush sequence, unless recording is
/// fenced (then nil: nothing may be copied from a Redis that lost data).
/// KEYS: `[flush seq, parked, (counters, unflushed marks) per month…]`. ARGV: `[min_seq]`.
/// Returns `[new seq, HGETALL, SMEMBERS, HGETALL, SMEMBERS, …]`.
const FLUSH_READ_LUA: &str = r"
local seq = tonumber(redis.call('GET', KEYS[1]))
if seq == nil or seq < tonumber(ARGV[1]) or redis.call('EXISTS', KEYS[2]) == 1 then return false end
local out = {redis.call('INCR', KEYS[1])}
for i = 3, #KEYS, 2 do
  out[#out + 1] = redis.call('HGETALL', KEYS[i])
  out[#out + 1] = redis.call('SMEMBERS', KEYS[i + 1])
end
return out
";

static FLUSH_READ: LazyLock<Script> = LazyLock::new(|| Script::from_lua(FLUSH_READ_LUA));

/// After a committed copy: deletes the dirty marks whose generation is still the one copied (a
/// change made during the copy stays marked) and removes the copied marks from their unflushed
/// sets. KEYS: `[dirty, unflushed sets…]`. ARGV: `[m, field, generation × m, then per set: n,
/// its n members]`.
const CLEAR_FLUSHED_LUA: &str = r"
local m = tonumber(ARGV[1])
local cleared = 0
for i = 2, 1 + 2 * m, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    redis.call('HDEL', KEYS[1], ARGV[i])
    cleared = cleared + 1
  end
end
local a = 2 + 2 * m
for j = 2, #KEYS do
  local n = tonumber(ARGV[a])
  for from = a + 1, a + n, 1000 do
    redis.call('SREM', KEYS[j], unpack(ARGV, from, math.min(from + 999, a + n)))
  end
  a = a + 1 + n
end
return cleared
";

static CLEAR_FLUSHED: LazyLock<Script> = LazyLock::new(|| Script::from_lua(CLEAR_FLUSHED_LUA));

/// Decides whether Redis needs a restore and, if so, claims it and fences recording.
/// KEYS: `[flush seq, parked, restore token]`. ARGV: `[durable seq, token, lease ms]`.
/// `intact`: the sequence is at least Postgres' and nothing is parked. `busy`: another replica
/// holds the restore. `begun`: this token holds it and the sequence is deleted, so every
/// recording call parks (or is refused) until [`OPEN_LUA`].
const BEGIN_LUA: &str = r"
local seq = tonumber(redis.call('GET', KEYS[1]))
if seq ~= nil and seq >= tonumber(ARGV[1]) and redis.call('EXISTS', KEYS[2]) == 0 then
  return 'intact'
end
local holder = redis.call('GET', KEYS[3])
if holder and holder ~= ARGV[2] then return 'busy' end
redis.call('SET', KEYS[3], ARGV[2], 'PX', ARGV[3])
redis.call('DEL', KEYS[1])
return 'begun'
";

static BEGIN: LazyLock<Script> = LazyLock::new(|| Script::from_lua(BEGIN_LUA));

/// Restores counters, gauges and top sets from Postgres rows, if `token` still holds the
/// restore (and extends its lease). Counters take the larger of Redis and Postgres (a Redis from
/// an older snapshot holds less; an empty one nothing); the top score never goes down (`GT`);
/// a gauge keeps the reading with the later event time. Idempotent, so a restore that stopped
/// halfway is simply run again.
/// KEYS: `[token key, counters and top keys…]`. ARGV: `[token, lease ms, ttl, then per row: kind
/// (c|g), counters index, top index, org, field, value, at_ms or '']`. Returns 1, or -1 when the
/// token no longer holds.
const RESTORE_COUNTERS_LUA: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
local ttl = ARGV[3]
local touched, order = {}, {}
for a = 4, #ARGV, 7 do
  local kind = ARGV[a]
  local counters, top = KEYS[tonumber(ARGV[a + 1])], KEYS[tonumber(ARGV[a + 2])]
  local org, field, value, at = ARGV[a + 3], ARGV[a + 4], ARGV[a + 5], ARGV[a + 6]
  if kind == 'c' then
    local cur = tonumber(redis.call('HGET', counters, field)) or 0
    if tonumber(value) > cur then redis.call('HSET', counters, field, value) end
    redis.call('ZADD', top, 'GT', value, org)
  else
    local cur = redis.call('HMGET', counters, field, field .. ':at')
    local cur_v, cur_at = tonumber(cur[1]), tonumber(cur[2])
    local v, t = tonumber(value), tonumber(at)
    if cur_v == nil or (t ~= nil and (cur_at == nil or t > cur_at or (t == cur_at and v > cur_v))) then
      if t ~= nil then
        redis.call('HSET', counters, field, value, field .. ':at', at)
      else
        redis.call('HSET', counters, field, value)
      end
      redis.call('ZADD', top, value, org)
    end
  end
  for _, key in ipairs({counters, top}) do
    if not touched[key] then touched[key] = true; order[#order + 1] = key end
  end
end
for _, key in ipairs(order) do redis.call('EXPIRE', key, ttl) end
return 1
";

static RESTORE_COUNTERS: LazyLock<Script> =
    LazyLock::new(|| Script::from_lua(RESTORE_COUNTERS_LUA));

/// Adds restored idempotency marks to the current bucket's set, if `token` still holds the
/// restore. KEYS: `[token key, marks set]`. ARGV: `[token, lease ms, marks ttl, members…]`.
const RESTORE_MARKS_LUA: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
for from = 4, #ARGV, 1000 do
  redis.call('SADD', KEYS[2], unpack(ARGV, from, math.min(from + 999, #ARGV)))
end
redis.call('EXPIRE', KEYS[2], ARGV[3], 'NX')
return 1
";

static RESTORE_MARKS: LazyLock<Script> = LazyLock::new(|| Script::from_lua(RESTORE_MARKS_LUA));

/// Ends a restore: if `token` still holds it and nothing is parked, sets the flush sequence
/// (recording resumes) and releases the token. KEYS: `[flush seq, parked, token key]`.
/// ARGV: `[token, seq]`. Returns 1 (open), 0 (calls were parked meanwhile: replay them first) or
/// -1 (the token no longer holds).
const OPEN_LUA: &str = r"
if redis.call('GET', KEYS[3]) ~= ARGV[1] then return -1 end
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('DEL', KEYS[3])
return 1
";

static OPEN: LazyLock<Script> = LazyLock::new(|| Script::from_lua(OPEN_LUA));

/// One month's counters as the flusher read them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MonthRead {
    pub counters: BTreeMap<String, i64>,
    /// Event time (ms) of the gauge's value, when the month has one.
    pub gauge_at: Option<i64>,
    /// `<org>|<key>` of durable-metric keys counted into the month since its last copy.
    pub marks: Vec<String>,
}

/// What one flush read returned: the sequence it bumped to and, per requested month, its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlushRead {
    pub seq: i64,
    pub months: Vec<MonthRead>,
}

fn strings(value: Value) -> Vec<String> {
    value.into_array().iter().filter_map(Value::as_string).collect()
}

/// Reads `months` (counters and unflushed marks) and bumps the flush sequence, atomically.
/// `None` when recording is fenced (Redis lost data or is older than `min_seq`).
pub async fn flush_read(
    clients: &RedisClients,
    months: &[DirtyMonth],
    min_seq: i64,
) -> Result<Option<FlushRead>, RedisError> {
    let keys = clients.keys();
    let mut script_keys = Vec::with_capacity(2 + 2 * months.len());
    script_keys.push(keys.usage_flush_seq());
    script_keys.push(keys.usage_parked());
    for m in months {
        script_keys.push(keys.usage_counters(&m.org, &m.month));
        script_keys.push(keys.usage_unflushed_marks(&m.org, &m.month));
    }
    let answer: Value = FLUSH_READ
        .evalsha_with_reload(clients.primary().next(), script_keys, vec![min_seq.to_string()])
        .await?;
    if answer.is_null() {
        return Ok(None);
    }
    let mut items = answer.into_array().into_iter();
    let seq = items
        .next()
        .and_then(|v| v.as_i64())
        .ok_or_else(|| RedisError::Unexpected("flush read without a sequence".into()))?;
    let gauge_at_field = format!("{}:at", Metric::StorageUsed.as_str());
    let mut read = Vec::with_capacity(months.len());
    while let (Some(hash), Some(marks)) = (items.next(), items.next()) {
        let flat = strings(hash);
        let raw: HashMap<String, String> =
            flat.chunks(2).filter_map(|c| Some((c.first()?.clone(), c.get(1)?.clone()))).collect();
        let gauge_at = raw.get(&gauge_at_field).and_then(|v| v.parse().ok());
        read.push(MonthRead { counters: parse_counters(raw), gauge_at, marks: strings(marks) });
    }
    if read.len() != months.len() {
        return Err(RedisError::Unexpected("flush read answered for fewer months".into()));
    }
    Ok(Some(FlushRead { seq, months: read }))
}

/// After Postgres committed a flush of `months`: clears their dirty marks (unless changed since)
/// and removes the copied `marks` (per month, as read) from the unflushed sets.
pub async fn clear_flushed(
    clients: &RedisClients,
    months: &[DirtyMonth],
    marks: &[Vec<String>],
) -> Result<i64, RedisError> {
    if months.is_empty() {
        return Ok(0);
    }
    let keys = clients.keys();
    let mut script_keys = vec![keys.usage_dirty()];
    let mut args = vec![months.len().to_string()];
    for m in months {
        args.push(m.field.clone());
        args.push(m.generation.clone());
    }
    for (m, members) in months.iter().zip(marks) {
        if members.is_empty() {
            continue;
        }
        script_keys.push(keys.usage_unflushed_marks(&m.org, &m.month));
        args.push(members.len().to_string());
        args.extend(members.iter().cloned());
    }
    let cleared: i64 =
        CLEAR_FLUSHED.evalsha_with_reload(clients.primary().next(), script_keys, args).await?;
    Ok(cleared)
}

/// What [`begin_restore`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Begin {
    /// Redis holds everything Postgres has: nothing to restore.
    Intact,
    /// Another replica is restoring.
    Busy,
    /// This token holds the restore; recording is fenced.
    Begun,
}

/// Checks the flush sequence against `durable_seq` (Postgres') and claims the restore for
/// `token` (a lease of `lease`) when Redis is missing data.
pub async fn begin_restore(
    clients: &RedisClients,
    durable_seq: i64,
    token: &str,
    lease: Duration,
) -> Result<Begin, RedisError> {
    let keys = clients.keys();
    let answer: String = BEGIN
        .evalsha_with_reload(
            clients.primary().next(),
            vec![keys.usage_flush_seq(), keys.usage_parked(), keys.usage_restore()],
            vec![durable_seq.to_string(), token.to_owned(), lease.as_millis().to_string()],
        )
        .await?;
    match answer.as_str() {
        "intact" => Ok(Begin::Intact),
        "busy" => Ok(Begin::Busy),
        "begun" => Ok(Begin::Begun),
        other => Err(RedisError::Unexpected(format!("restore claim answered {other}"))),
    }
}

/// One durable row to put back into Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreRow {
    pub org: String,
    pub month: String,
    pub field: String,
    pub value: i64,
    /// Event time (ms) of a gauge's value; `None` for counters (and gauges without one).
    pub at_ms: Option<i64>,
}

/// Puts `rows` back (see [`RESTORE_COUNTERS_LUA`]); false when `token` no longer holds.
pub async fn restore_counters(
    clients: &RedisClients,
    token: &str,
    lease: Duration,
    ttl_secs: u64,
    rows: &[RestoreRow],
) -> Result<bool, RedisError> {
    let keys = clients.keys();
    let mut script_keys = vec![keys.usage_restore()];
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut add = |key: String, script_keys: &mut Vec<String>| -> usize {
        *index.entry(key.clone()).or_insert_with(|| {
            script_keys.push(key);
            script_keys.len()
        })
    };
    let mut args = vec![token.to_owned(), lease.as_millis().to_string(), ttl_secs.to_string()];
    for row in rows {
        let gauge = row.field == Metric::StorageUsed.as_str();
        let counters = add(keys.usage_counters(&row.org, &row.month), &mut script_keys);
        let top = add(keys.usage_top(&row.field, &row.month), &mut script_keys);
        args.extend([
            if gauge { "g" } else { "c" }.to_owned(),
            counters.to_string(),
            top.to_string(),
            row.org.clone(),
            row.field.clone(),
            row.value.to_string(),
            row.at_ms.map(|at| at.to_string()).unwrap_or_default(),
        ]);
    }
    let answer: i64 =
        RESTORE_COUNTERS.evalsha_with_reload(clients.primary().next(), script_keys, args).await?;
    Ok(answer == 1)
}

/// Adds `members` (`<org>|<key>`) to the marks set of the bucket of `now_secs`; false when
/// `token` no longer holds.
pub async fn restore_marks(
    clients: &RedisClients,
    token: &str,
    lease: Duration,
    window_secs: u64,
    now_secs: i64,
    members: &[String],
) -> Result<bool, RedisError> {
    if members.is_empty() {
        return Ok(true);
    }
    let keys = clients.keys();
    let set = keys.usage_idempotency_marks(marks_bucket(now_secs, window_secs));
    let mut args = Vec::with_capacity(3 + members.len());
    args.push(token.to_owned());
    args.push(lease.as_millis().to_string());
    args.push(window_secs.max(1).saturating_mul(2).to_string());
    args.extend(members.iter().cloned());
    let answer: i64 = RESTORE_MARKS
        .evalsha_with_reload(clients.primary().next(), vec![keys.usage_restore(), set], args)
        .await?;
    Ok(answer == 1)
}

/// What [`open`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Open {
    /// Recording resumes at the given sequence.
    Opened,
    /// Calls were parked since the last replay: replay, then open again.
    Parked,
    /// The token no longer holds: start over.
    Lost,
}

/// Ends the restore held by `token`: sets the flush sequence to `seq` if nothing is parked.
pub async fn open(clients: &RedisClients, token: &str, seq: i64) -> Result<Open, RedisError> {
    let keys = clients.keys();
    let answer: i64 = OPEN
        .evalsha_with_reload(
            clients.primary().next(),
            vec![keys.usage_flush_seq(), keys.usage_parked(), keys.usage_restore()],
            vec![token.to_owned(), seq.to_string()],
        )
        .await?;
    Ok(match answer {
        1 => Open::Opened,
        0 => Open::Parked,
        _ => Open::Lost,
    })
}

/// Opens recording on a Redis that has nothing to restore (no Postgres copy: tests, the
/// benchmark's bare consumer). A no-op when a sequence exists.
pub async fn open_without_durable_copy(clients: &RedisClients) -> Result<(), RedisError> {
    let _: Value = clients
        .primary()
        .set(clients.keys().usage_flush_seq(), 0, None, Some(SetOptions::NX), false)
        .await?;
    Ok(())
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

//! The recording scripts: the Lua that counts a batch (restore fence, idempotency check,
//! counters, top consumers, detail events and the dirty mark in one atomic unit) and the one
//! that applies a call parked while the counters were restored.

use std::sync::LazyLock;

use platform_redis::fred::types::scripts::Script;

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
///   a token no other call uses (`next_generation` in [`super::record`]), so a flusher that
///   copied a month sees any later change as a different value (one command per batch, not an
///   `HINCRBY` per month).
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
pub(super) const RECORD_LUA: &str = concat!(
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

pub(super) static REPLAY: LazyLock<Script> = LazyLock::new(|| Script::from_lua(REPLAY_LUA));

pub(super) static RECORD: LazyLock<Script> = LazyLock::new(|| Script::from_lua(RECORD_LUA));

//! Recording usage in Redis: the settings and restore fence the recording script runs under,
//! the batch's keys and arguments for [`super::script`], the stream consumer's queued call, the
//! HTTP path's direct call, and the replay of calls parked while counters were restored.
//!
//! Keys: [`platform_redis::Keys::usage_counters`] and siblings (see the key table there).

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use chrono::{DateTime, Utc};

use platform_redis::fred::clients::Transaction;
use platform_redis::fred::prelude::*;
use platform_redis::{Keys, RedisClients, RedisError};

use crate::domain::usage::{DONATION_VOLUME, Metric, MetricSet, Month, ValidEvent};
use crate::store::script::{RECORD, RECORD_LUA, REPLAY};

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

/// The flush sequence this process knows Postgres has committed (see
/// [`crate::domain::recovery`]). Recording calls pass it to the script: a Redis whose sequence is
/// below it came back from an older snapshot, and nothing is counted there until the restore.
/// Cheap to clone (shared).
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

//! Redis Streams: a producer of versioned, traced entries with a length cap, and a consumer-group
//! worker whose handlers commit their Redis effects and the `XACK` in one `MULTI`/`EXEC`.
//!
//! # Entries
//! Every entry has the fields `v` (message version, [`crate::messages::MESSAGE_VERSION`]),
//! `traceparent` (W3C, when the producer ran inside a traced span) and `data` (the body as JSON).
//! Dead-letter entries ([`crate::keys::Keys::dead_letter_stream`]) carry `original_id`, `reason`,
//! `deliveries`, `consumer`, and the original `v`, `traceparent` and `data` as they were.
//!
//! # Traces
//! The consumer opens a `stream.entry` span per delivered entry whose parent is the entry's
//! `traceparent`, so the producer's trace continues in every consuming service without the handler
//! doing anything; the span ends once the batch is committed or given up. Handlers that work per
//! entry run under it (`.instrument(entry.span.clone())`), and what they append to another stream
//! then carries it on as the next `traceparent`. The `stream.batch` span around one handler call
//! serves entries of many traces, so it starts a trace of its own, linked to every entry span.
//!
//! # Appending once per operation id
//! [`StreamProducer::append_claimed`] appends only while an idempotency marker
//! ([`crate::idempotency`]) holds the caller's claim, and marks it `done:<entry id>` in the same
//! script: a producer that must hand an external event (a Stripe webhook) to a stream exactly once
//! cannot lose the marker after appending, nor append twice after its claim expired.
//!
//! # Delivery and effects
//! Delivery is at least once: an entry stays in the group's pending list (PEL) until acked, and
//! entries idle there longer than [`ConsumerSettings::claim_idle`] (their consumer died, or a
//! handler asked for a retry) are taken over with `XAUTOCLAIM` by whichever consumer looks first.
//! Effects are exactly once because a [`StreamHandler`] does not write to Redis itself: it queues
//! its writes on the [`Transaction`] it is handed, and the worker appends the `XACK` of the entries
//! it acknowledged and runs `EXEC`. A consumer that dies before `EXEC` applied nothing and its
//! entries are reclaimed; one that dies after `EXEC` had acked them with the effects.
//!
//! Ownership of a delivered entry is a lease of `claim_idle`: nobody else can claim it sooner. The
//! worker measures the lease from before the read and abandons a batch (no `EXEC`, entries stay
//! pending) when less than a fifth of it is left, so a slow handler does not commit work a peer
//! may already have reclaimed. Set `claim_idle` well above the slowest batch. (Only a process
//! frozen for longer than that margin between the check and `EXEC` reaching Redis could still apply
//! a batch twice.) Redis has no rollback: a queued command that fails at `EXEC` time (e.g.
//! `WRONGTYPE`) does not undo the others, so queue only commands that cannot fail on well-formed data.
//!
//! # Overlapped commits
//! A handler that declares [`StreamHandler::OVERLAP_COMMITS`] (its work on a batch reads nothing
//! the previous batch's effects write; usage-meter's recording is pure) lets the worker pipeline
//! one batch deep: after a full batch it sends the next `XREADGROUP` at once (no `BLOCK`) in the
//! background (unless a claim pass is due, which then runs first), and it sends a batch's `EXEC` in the background too, so Redis runs one batch's
//! `EXEC` while this process decodes and handles the next. The previous `EXEC` must have answered
//! before the next one is sent (commits stay in batch order), before a blocking read, before a
//! claim pass and before [`StreamConsumer::run`] returns; a failed one is counted as retries and
//! ends that step with its error, as a failed inline `EXEC` does. Nothing else changes: the lease
//! of a read-ahead batch runs from when its read was sent, the lease check still comes right
//! before its `EXEC` is sent, and a consumer that dies with a batch read ahead leaves it pending
//! for a peer to reclaim like any other. Claimed batches always commit inline. Other handlers
//! (the default) read, handle and commit strictly one batch after the other.
//!
//! Handlers may do non-Redis work (Postgres) before queueing their effects. That work is outside
//! the transaction and runs again when an entry is redelivered, so it must be idempotent itself
//! (e.g. an insert keyed on the entry's id or the event's own id with `ON CONFLICT DO NOTHING`).
//!
//! # Redis Cluster
//! A `MULTI` (and a script) must stay in one hash slot. Every stream key carries the hash tag of
//! the stream slot ([`crate::keys::STREAMS_HASH_TAG`]), as do the dead-letter streams, the webhook
//! dedup markers, the once-only effect markers and the usage-meter keys, so the `XACK`, the
//! dead-letter `XADD`s, [`StreamProducer::append_claimed`] and the effects the services queue all
//! commit in that one slot. A handler must queue effects only on such keys (built by
//! [`crate::keys::Keys`] in the stream slot); an effect elsewhere makes Redis refuse the `EXEC`
//! (`CROSSSLOT`), so the batch is retried and finally dead-lettered. `tests/cluster.rs` runs these
//! paths against a real three-master cluster.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fred::bytes_utils::Str;
use fred::clients::Transaction;
use fred::prelude::*;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::client::RedisClients;
use crate::error::{RedisError, Result};
use crate::keys::StreamName;
use crate::messages::MESSAGE_VERSION;

const FIELD_VERSION: &str = "v";
const FIELD_TRACEPARENT: &str = "traceparent";
const FIELD_DATA: &str = "data";

/// Appends entries to one stream, trimmed to about `max_len` entries.
#[derive(Debug, Clone)]
pub struct StreamProducer {
    clients: RedisClients,
    stream: StreamName,
    key: String,
    max_len: i64,
}

impl StreamProducer {
    /// A producer for `stream` that keeps roughly the newest `max_len` entries (`MAXLEN ~`, so
    /// Redis trims whole nodes, which is much cheaper than an exact cap).
    pub fn new(clients: &RedisClients, stream: StreamName, max_len: usize) -> Self {
        Self {
            clients: clients.clone(),
            stream,
            key: clients.keys().stream(stream),
            max_len: i64::try_from(max_len).unwrap_or(i64::MAX),
        }
    }

    /// The stream's Redis key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Appends `body` with the current version and the current span's `traceparent`; returns the
    /// entry id.
    pub async fn append<T: Serialize>(&self, body: &T) -> Result<String> {
        let fields = entry_fields(serde_json::to_string(body)?);
        let span = tracing::debug_span!("stream.append", stream = %self.stream);
        let id: String = self
            .clients
            .primary()
            .xadd(&self.key, false, ("MAXLEN", "~", self.max_len), "*", fields)
            .instrument(span)
            .await?;
        Ok(id)
    }

    /// Appends every body in one pipelined round trip; returns the entry ids in order.
    pub async fn append_all<T: Serialize>(&self, bodies: &[T]) -> Result<Vec<String>> {
        if bodies.is_empty() {
            return Ok(Vec::new());
        }
        let span =
            tracing::debug_span!("stream.append_all", stream = %self.stream, count = bodies.len());
        async {
            let pipeline = self.clients.primary().next().pipeline();
            for body in bodies {
                let fields = entry_fields(serde_json::to_string(body)?);
                let () = pipeline
                    .xadd(&self.key, false, ("MAXLEN", "~", self.max_len), "*", fields)
                    .await?;
            }
            let ids: Vec<String> = pipeline.all().await?;
            Ok(ids)
        }
        .instrument(span)
        .await
    }
}

/// `XADD` only while the marker `KEYS[1]` holds the claim `ARGV[1]`, then the marker becomes
/// `done:<entry id>` with `PX ARGV[2]`; one script, so the entry and the marker exist together or
/// not at all. `ARGV[3]` is the `MAXLEN ~` cap, `ARGV[4..]` the entry's field/value pairs.
static APPEND_CLAIMED: std::sync::LazyLock<fred::types::scripts::Script> =
    std::sync::LazyLock::new(|| {
        fred::types::scripts::Script::from_lua(
            r"
local v = redis.call('GET', KEYS[1])
if v ~= ARGV[1] then
  if v and string.sub(v, 1, 5) == 'done:' then return {'done', string.sub(v, 6)} end
  return {'lost', ''}
end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', unpack(ARGV, 4))
redis.call('SET', KEYS[1], 'done:' .. id, 'PX', ARGV[2])
return {'appended', id}
",
        )
    });

/// What [`StreamProducer::append_claimed`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimedAppend {
    /// Appended as this entry id; the marker is now `done:<id>`.
    Appended(String),
    /// Not appended: the marker was already done, with this result (an entry id, usually).
    AlreadyDone(String),
    /// Not appended: the claim expired or someone else holds the marker now.
    ClaimLost,
}

impl StreamProducer {
    /// Appends `body` exactly once per idempotency marker (see [`crate::idempotency`]): only while
    /// `marker_key` still holds the claim `token`, and in the same script marks it
    /// `done:<entry id>` for `done_ttl`. A crash can therefore never leave an entry without its
    /// done marker (or the reverse), and a caller whose claim expired cannot append a second copy.
    /// The entry has the same fields as [`StreamProducer::append`] (`v`, `traceparent`, `data`).
    /// In Redis Cluster the marker must be in the stream slot, as
    /// [`crate::keys::Keys::webhook_dedup`] is.
    pub async fn append_claimed<T: Serialize>(
        &self,
        body: &T,
        marker_key: &str,
        token: &str,
        done_ttl: Duration,
    ) -> Result<ClaimedAppend> {
        let mut args = vec![
            crate::idempotency::processing_value(token),
            crate::idempotency::ttl_ms(done_ttl).to_string(),
            self.max_len.to_string(),
        ];
        for (name, value) in entry_fields(serde_json::to_string(body)?) {
            args.push(name.to_owned());
            args.push(value);
        }
        let span = tracing::debug_span!("stream.append_claimed", stream = %self.stream);
        let reply: Vec<String> = APPEND_CLAIMED
            .evalsha_with_reload(
                self.clients.primary().next(),
                vec![marker_key.to_owned(), self.key.clone()],
                args,
            )
            .instrument(span)
            .await?;
        match (reply.first().map(String::as_str), reply.get(1)) {
            (Some("appended"), Some(id)) => Ok(ClaimedAppend::Appended(id.clone())),
            (Some("done"), Some(result)) => Ok(ClaimedAppend::AlreadyDone(result.clone())),
            (Some("lost"), _) => Ok(ClaimedAppend::ClaimLost),
            _ => Err(RedisError::Unexpected(format!("append_claimed script returned {reply:?}"))),
        }
    }
}

/// The fields of a stream entry carrying `body` (`v`, `traceparent` when traced, `data`), for
/// callers that append inside a script or transaction ([`crate::once::OnceEffects`]) instead of
/// through [`StreamProducer`].
pub fn encode_entry<T: Serialize>(body: &T) -> Result<Vec<(&'static str, String)>> {
    Ok(entry_fields(serde_json::to_string(body)?))
}

fn entry_fields(data: String) -> Vec<(&'static str, String)> {
    let mut fields = vec![(FIELD_VERSION, MESSAGE_VERSION.to_string())];
    if let Some(traceparent) = crate::trace::current_traceparent() {
        fields.push((FIELD_TRACEPARENT, traceparent));
    }
    fields.push((FIELD_DATA, data));
    fields
}

/// Where a newly created group starts reading.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StartFrom {
    /// Every entry still in the stream (`XGROUP CREATE … 0`).
    Beginning,
    /// Only entries appended after the group was created (`XGROUP CREATE … $`).
    #[default]
    New,
}

/// How a [`StreamConsumer`] reads. Build with [`ConsumerSettings::new`] and change fields.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    /// The stream to read.
    pub stream: StreamName,
    /// The consumer group; each service reading a stream has its own.
    pub group: String,
    /// Unique per process; defaults to `<hostname>-<pid>-<random>`.
    pub consumer: String,
    /// Entries per `XREADGROUP` / `XAUTOCLAIM` page, and so per handler call.
    pub batch_size: usize,
    /// How long one `XREADGROUP` waits for new entries.
    pub block: Duration,
    /// Pending entries idle longer than this are reclaimed; also the lease of a delivered batch.
    pub claim_idle: Duration,
    /// An entry delivered more often than this goes to the dead-letter stream.
    pub max_deliveries: u64,
    /// Where the group starts when this consumer creates it.
    pub start_from: StartFrom,
    /// Approximate cap of the dead-letter stream.
    pub dead_letter_max_len: usize,
}

/// A service's config section for one consumer group (e.g. `[stripe_events]`), in the units a
/// config file uses; [`GroupSettings::consumer`] turns it into [`ConsumerSettings`]. Missing
/// fields take the [`ConsumerSettings::new`] defaults except the group, which has none: the
/// service's default file names it, and [`ConsumerSettings::validate`] rejects an empty one.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GroupSettings {
    /// false: this service does not consume the stream.
    pub enabled: bool,
    /// This service's consumer group.
    pub group: String,
    /// Entries per read, and so per handler call.
    pub batch_size: usize,
    /// How long one read blocks.
    pub block_ms: u64,
    /// Pending entries idle this long are reclaimed (also the retry delay of an entry left
    /// pending on a transient failure).
    pub claim_idle_ms: u64,
    /// Deliveries before an entry goes to the dead-letter stream.
    pub max_deliveries: u64,
}

impl Default for GroupSettings {
    fn default() -> Self {
        let defaults = ConsumerSettings::new(StreamName::StripeEvents, "");
        Self {
            enabled: true,
            group: defaults.group,
            batch_size: defaults.batch_size,
            block_ms: millis(defaults.block),
            claim_idle_ms: millis(defaults.claim_idle),
            max_deliveries: defaults.max_deliveries,
        }
    }
}

impl GroupSettings {
    /// The consumer settings of this group on `stream` (other fields: [`ConsumerSettings::new`]).
    pub fn consumer(&self, stream: StreamName) -> ConsumerSettings {
        let mut settings = ConsumerSettings::new(stream, self.group.clone());
        settings.batch_size = self.batch_size;
        settings.block = Duration::from_millis(self.block_ms);
        settings.claim_idle = Duration::from_millis(self.claim_idle_ms);
        settings.max_deliveries = self.max_deliveries;
        settings
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl ConsumerSettings {
    /// Defaults: batches of 100, 2 s block, 30 s claim idle, 5 deliveries, new entries only.
    pub fn new(stream: StreamName, group: impl Into<String>) -> Self {
        Self {
            stream,
            group: group.into(),
            consumer: default_consumer_name(),
            batch_size: 100,
            block: Duration::from_secs(2),
            claim_idle: Duration::from_secs(30),
            max_deliveries: 5,
            start_from: StartFrom::New,
            dead_letter_max_len: 100_000,
        }
    }

    /// Checks what the types cannot; the message names the setting.
    pub fn validate(&self) -> Result<()> {
        let problem = if self.group.is_empty() {
            "stream consumer group must not be empty"
        } else if self.consumer.is_empty() {
            "stream consumer name must not be empty"
        } else if self.batch_size == 0 {
            "stream consumer batch_size must be > 0"
        } else if self.block.as_millis() == 0 {
            "stream consumer block must be at least 1 ms (0 would block forever)"
        } else if self.claim_idle < Duration::from_millis(10) {
            "stream consumer claim_idle must be at least 10 ms"
        } else if self.max_deliveries == 0 {
            "stream consumer max_deliveries must be > 0"
        } else {
            return Ok(());
        };
        Err(RedisError::Config(problem.into()))
    }
}

fn default_consumer_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".to_owned());
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}-{}", std::process::id(), &random[..6])
}

/// One decoded entry handed to a [`StreamHandler`].
#[derive(Debug)]
pub struct StreamEntry<T> {
    /// The stream entry id (`<ms>-<seq>`), unique within the stream: a natural idempotency key.
    pub id: String,
    /// The decoded `data`.
    pub body: T,
    /// The producer's W3C trace context, if it had one.
    pub traceparent: Option<String>,
    /// How often the group delivered this entry, this time included.
    pub deliveries: u64,
    /// The entry's span, child of the producer's trace; enter it for per-entry work.
    pub span: tracing::Span,
}

/// What the handler decided for one entry of its batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The effects queued for it are to commit, with its `XACK`.
    Ack,
    /// Leave it pending: it is reclaimed after `claim_idle` and counts towards `max_deliveries`.
    /// Queue no effects for it.
    Retry,
    /// Poison: move it to the dead-letter stream with this reason (and ack it). Queue no effects.
    DeadLetter(String),
}

impl Outcome {
    fn label(&self) -> &'static str {
        match self {
            Outcome::Ack => "ack",
            Outcome::Retry => "retry",
            Outcome::DeadLetter(_) => "dead_letter",
        }
    }
}

/// A failed batch: every entry of it stays pending and is retried. Built from any error with `?`.
pub struct HandlerError(Box<dyn std::error::Error + Send + Sync + 'static>);

impl HandlerError {
    /// An error with just a message.
    pub fn msg(message: impl fmt::Display) -> Self {
        Self(message.to_string().into())
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for HandlerError {
    fn from(error: E) -> Self {
        Self(Box::new(error))
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// Processes batches of one stream for a [`StreamConsumer`].
///
/// Contract: queue the Redis effects of the entries you return [`Outcome::Ack`] for on `tx` (e.g.
/// `let () = tx.incr_by(key, n).await?;`, which only queues), and nothing for the others; return
/// one outcome per entry, in order. Do not `exec` the transaction, and do not write those effects
/// through another client. Reads go through your own clients (queued reads return nothing).
/// Returning `Err` leaves the whole batch pending, so prefer per-entry outcomes for per-entry
/// problems: one bad entry then does not hold back the rest.
pub trait StreamHandler: Send + Sync {
    /// The message body in `data`.
    type Body: DeserializeOwned + Send + Sync;

    /// true: this handler's work on a batch does not depend on the previous batch's effects
    /// having been applied (it reads nothing those effects write), so the worker may run it
    /// while the previous `EXEC` is still in flight, and read the next batch ahead (see the
    /// module doc, "Overlapped commits"). Commits stay in batch order either way.
    const OVERLAP_COMMITS: bool = false;

    /// Handles one batch (in stream order).
    fn handle(
        &self,
        batch: &[StreamEntry<Self::Body>],
        tx: &Transaction,
    ) -> impl Future<Output = std::result::Result<Vec<Outcome>, HandlerError>> + Send;
}

/// Counters of one consumer since it was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConsumerStats {
    /// Entries acked with their effects.
    pub processed: u64,
    /// Entries moved to the dead-letter stream.
    pub dead_lettered: u64,
    /// Entries taken over from the pending list (other consumers' or own retries).
    pub reclaimed: u64,
    /// Entries left pending for a later attempt (handler retry or error, failed or abandoned commit).
    pub retries: u64,
    /// Pending entries that were trimmed from the stream before anyone processed them.
    pub trimmed: u64,
}

#[derive(Debug, Default)]
struct Counters {
    processed: AtomicU64,
    dead_lettered: AtomicU64,
    reclaimed: AtomicU64,
    retries: AtomicU64,
    trimmed: AtomicU64,
}

fn add(counter: &AtomicU64, n: usize) {
    counter.fetch_add(n as u64, Ordering::Relaxed);
}

/// A consumer-group worker; see the module doc. Cheap to clone (clones share the counters).
#[derive(Debug, Clone)]
pub struct StreamConsumer {
    clients: RedisClients,
    settings: Arc<ConsumerSettings>,
    cancel: CancellationToken,
    key: String,
    dead_key: String,
    counters: Arc<Counters>,
}

/// An entry as read, before decoding. The fields are the reply's own bytes (no copy), in a list:
/// entries have two or three fields, which a linear search finds faster than a hash lookup.
#[derive(Debug)]
struct RawEntry {
    id: String,
    fields: Vec<(Str, Str)>,
}

impl RawEntry {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields.iter().find(|(k, _)| &**k == name).map(|(_, v)| &**v)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    New,
    Claimed,
}

struct LoopState {
    group_ready: bool,
    last_claim: Option<Instant>,
    /// The next batch, read while the current one was handled (overlapping handlers only).
    prefetched: Option<tokio::task::JoinHandle<Result<ReadBatch>>>,
    /// The last batch's `EXEC`, sent and not yet answered (overlapping handlers only).
    in_flight: Option<Commit>,
}

/// Entries of one read and when the read was sent (the start of their lease).
type ReadBatch = (Vec<RawEntry>, Instant);

/// A batch's `EXEC` sent in the background, and what to count once it answers.
struct Commit {
    exec: tokio::task::JoinHandle<std::result::Result<Value, fred::error::Error>>,
    acked: usize,
    dead: usize,
}

impl StreamConsumer {
    /// A worker for `settings`; [`StreamConsumer::run`] returns once `cancel` is cancelled.
    pub fn new(
        clients: &RedisClients,
        settings: ConsumerSettings,
        cancel: CancellationToken,
    ) -> Self {
        let keys = clients.keys();
        Self {
            key: keys.stream(settings.stream),
            dead_key: keys.dead_letter_stream(settings.stream, &settings.group),
            clients: clients.clone(),
            settings: Arc::new(settings),
            cancel,
            counters: Arc::default(),
        }
    }

    /// The settings this worker runs with.
    pub fn settings(&self) -> &ConsumerSettings {
        &self.settings
    }

    /// The stream's key.
    pub fn stream_key(&self) -> &str {
        &self.key
    }

    /// The key of this group's dead-letter stream.
    pub fn dead_letter_key(&self) -> &str {
        &self.dead_key
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> ConsumerStats {
        let c = &self.counters;
        ConsumerStats {
            processed: c.processed.load(Ordering::Relaxed),
            dead_lettered: c.dead_lettered.load(Ordering::Relaxed),
            reclaimed: c.reclaimed.load(Ordering::Relaxed),
            retries: c.retries.load(Ordering::Relaxed),
            trimmed: c.trimmed.load(Ordering::Relaxed),
        }
    }

    /// Creates the group (and the stream) if missing; an existing group is left as it is.
    pub async fn ensure_group(&self) -> Result<()> {
        let start = match self.settings.start_from {
            StartFrom::Beginning => "0",
            StartFrom::New => "$",
        };
        let created: std::result::Result<(), fred::error::Error> = self
            .clients
            .primary()
            .xgroup_create(&self.key, self.settings.group.as_str(), start, true)
            .await;
        match created {
            Ok(()) => {
                tracing::info!(stream = %self.settings.stream, group = %self.settings.group, start, "consumer group created");
                Ok(())
            }
            Err(error) if error.details().starts_with("BUSYGROUP") => Ok(()),
            Err(error) => Err(error.into()),
        }
    }

    /// Reads and handles batches until the cancellation token fires: the batch in hand (and one
    /// read ahead, if any) is finished, then it returns. A blocking read in progress is abandoned; anything it delivered
    /// stays pending and is reclaimed by a peer after `claim_idle`. Redis errors are logged and
    /// retried with backoff; only unusable settings end it with an error.
    pub async fn run<H: StreamHandler>(&self, handler: &H) -> Result<()> {
        self.settings.validate()?;
        // Blocking reads get their own connection so they never hold up a shared pool connection.
        let reader = self.clients.dedicated()?;
        let _connection = reader.connect();
        let mut state =
            LoopState { group_ready: false, last_claim: None, prefetched: None, in_flight: None };
        let mut failures: u32 = 0;
        tracing::info!(stream = %self.settings.stream, group = %self.settings.group, consumer = %self.settings.consumer, "stream consumer started");
        // A batch read ahead is in hand: it is finished too before returning.
        while !self.cancel.is_cancelled() || state.prefetched.is_some() {
            match self.step(&reader, handler, &mut state).await {
                Ok(()) => failures = 0,
                Err(error) => {
                    failures = failures.saturating_add(1);
                    if error_is_nogroup(&error) {
                        state.group_ready = false;
                    }
                    let pause =
                        Duration::from_millis(50u64 << failures.min(6)).min(Duration::from_secs(2));
                    tracing::warn!(%error, detail = ?error, failures, pause_ms = pause.as_millis() as u64, "stream consumer step failed; retrying");
                    tokio::select! {
                        () = self.cancel.cancelled() => {}
                        () = tokio::time::sleep(pause) => {}
                    }
                }
            }
        }
        if let Some(commit) = state.in_flight.take()
            && let Err(error) = self.settle(commit).await
        {
            tracing::warn!(%error, detail = ?error, "last batch's commit failed; its entries stay pending");
        }
        let _ = reader.quit().await;
        tracing::info!(stream = %self.settings.stream, group = %self.settings.group, consumer = %self.settings.consumer, "stream consumer stopped");
        Ok(())
    }

    async fn step<H: StreamHandler>(
        &self,
        reader: &Client,
        handler: &H,
        state: &mut LoopState,
    ) -> Result<()> {
        if !state.group_ready {
            self.ensure_group().await?;
            state.group_ready = true;
        }
        let claim_every = self.settings.claim_idle / 2;
        let claim_due = state.last_claim.is_none_or(|at| at.elapsed() >= claim_every);
        if claim_due && state.prefetched.is_none() && !self.cancel.is_cancelled() {
            if let Some(commit) = state.in_flight.take() {
                self.settle(commit).await?;
            }
            self.claim_pending(handler).await?;
            state.last_claim = Some(Instant::now());
            if self.cancel.is_cancelled() {
                return Ok(());
            }
        }
        let (entries, read_started) = match state.prefetched.take() {
            Some(read) => read
                .await
                .map_err(|e| RedisError::Unexpected(format!("read-ahead task failed: {e}")))??,
            None => {
                // About to block: let the last commit answer first (stats, errors).
                if let Some(commit) = state.in_flight.take() {
                    self.settle(commit).await?;
                }
                // Never block past the next claim pass.
                let block = self.settings.block.min(claim_every).max(Duration::from_millis(1));
                let read = self.read_new(reader, Some(block));
                tokio::select! {
                    () = self.cancel.cancelled() => return Ok(()),
                    read = read => read?,
                }
            }
        };
        // A full batch: more is probably waiting. Read it now, so Redis serves that read while
        // this batch is handled, and this process decodes it while this batch's EXEC runs.
        // Not when a claim pass is due: it runs between batches, and would never get its turn
        // while full batches keep coming.
        let claim_due = state.last_claim.is_none_or(|at| at.elapsed() >= claim_every);
        if H::OVERLAP_COMMITS
            && entries.len() >= self.settings.batch_size
            && !claim_due
            && !self.cancel.is_cancelled()
        {
            let this = self.clone();
            let reader = reader.clone();
            state.prefetched =
                Some(tokio::spawn(async move { this.read_new(&reader, None).await }));
        }
        if !entries.is_empty() {
            self.process(handler, entries, Delivery::New, read_started, &mut state.in_flight)
                .await?;
        }
        Ok(())
    }

    /// `XREADGROUP … >` on the reader's connection, blocking up to `block` (`None`: answers at
    /// once); returns the entries and when the read was sent (the start of their lease).
    async fn read_new(&self, reader: &Client, block: Option<Duration>) -> Result<ReadBatch> {
        let wait = block.unwrap_or_default();
        let options =
            Options { timeout: Some(wait + Duration::from_secs(5)), ..Options::default() };
        let read_started = Instant::now();
        let value = reader
            .with_options(&options)
            .xreadgroup::<Value, _, _, _, _>(
                self.settings.group.as_str(),
                self.settings.consumer.as_str(),
                Some(self.settings.batch_size as u64),
                block.map(|b| b.as_millis() as u64),
                false,
                self.key.as_str(),
                ">",
            )
            .await?;
        Ok((parse_read_response(value)?, read_started))
    }

    /// Waits for a background `EXEC` and counts its batch.
    async fn settle(&self, commit: Commit) -> Result<()> {
        let answer = commit
            .exec
            .await
            .map_err(|e| RedisError::Unexpected(format!("commit task failed: {e}")))
            .and_then(|exec| exec.map_err(RedisError::from));
        match answer {
            Ok(_) => {
                add(&self.counters.processed, commit.acked - commit.dead);
                add(&self.counters.dead_lettered, commit.dead);
                Ok(())
            }
            Err(error) => {
                add(&self.counters.retries, commit.acked);
                Err(error)
            }
        }
    }

    /// One pass of `XAUTOCLAIM` over the whole pending list, handling what it takes over.
    async fn claim_pending<H: StreamHandler>(&self, handler: &H) -> Result<()> {
        let mut cursor = "0-0".to_owned();
        loop {
            let started = Instant::now();
            let value: Value = self
                .clients
                .primary()
                .xautoclaim(
                    &self.key,
                    self.settings.group.as_str(),
                    self.settings.consumer.as_str(),
                    self.settings.claim_idle.as_millis() as u64,
                    cursor.as_str(),
                    Some(self.settings.batch_size as u64),
                    false,
                )
                .await?;
            let (next, entries, trimmed) = parse_autoclaim_response(value)?;
            if trimmed > 0 {
                add(&self.counters.trimmed, trimmed);
                tracing::warn!(trimmed, stream = %self.settings.stream, group = %self.settings.group, "pending entries were trimmed from the stream before being processed");
            }
            if !entries.is_empty() {
                add(&self.counters.reclaimed, entries.len());
                tracing::info!(count = entries.len(), stream = %self.settings.stream, group = %self.settings.group, "reclaimed idle pending entries");
                self.process(handler, entries, Delivery::Claimed, started, &mut None).await?;
            }
            if next == "0-0" || self.cancel.is_cancelled() {
                return Ok(());
            }
            cursor = next;
        }
    }

    /// Delivery counts (this delivery included) of entries this consumer just claimed; entries
    /// missing from the answer are no longer pending with this consumer.
    async fn delivery_counts(&self, entries: &[RawEntry]) -> Result<HashMap<String, u64>> {
        let pipeline = self.clients.primary().next().pipeline();
        for entry in entries {
            let args = (entry.id.as_str(), entry.id.as_str(), 1u64);
            let () = pipeline.xpending(&self.key, self.settings.group.as_str(), args).await?;
        }
        let mut counts = HashMap::with_capacity(entries.len());
        for answer in pipeline.try_all::<Value>().await {
            // Each answer is a list of [id, consumer, idle ms, deliveries] (one row at most).
            for row in flatten_rows(answer?) {
                let mut fields = array(row).into_iter();
                let (id, consumer, _idle, deliveries) =
                    (fields.next(), fields.next(), fields.next(), fields.next());
                let (Some(id), Some(consumer), Some(deliveries)) = (
                    id.and_then(Value::into_string),
                    consumer.and_then(Value::into_string),
                    deliveries.and_then(|d| d.as_u64()),
                ) else {
                    return Err(RedisError::Unexpected("malformed XPENDING row".into()));
                };
                if consumer == self.settings.consumer {
                    counts.insert(id, deliveries);
                }
            }
        }
        Ok(counts)
    }

    async fn process<H: StreamHandler>(
        &self,
        handler: &H,
        raw: Vec<RawEntry>,
        delivery: Delivery,
        lease_start: Instant,
        in_flight: &mut Option<Commit>,
    ) -> Result<()> {
        let counts = match delivery {
            Delivery::Claimed => Some(self.delivery_counts(&raw).await?),
            Delivery::New => None,
        };
        let max = self.settings.max_deliveries;
        let mut entries = Vec::with_capacity(raw.len());
        let mut originals = Vec::with_capacity(raw.len());
        let mut poison = Vec::new();
        for entry in raw {
            let deliveries = match &counts {
                None => 1,
                Some(counts) => match counts.get(&entry.id) {
                    Some(deliveries) => *deliveries,
                    // Someone claimed it from us in between: theirs now.
                    None => continue,
                },
            };
            if deliveries > max {
                poison.push((
                    entry,
                    format!("delivered {deliveries} times (max {max})"),
                    deliveries,
                ));
                continue;
            }
            match decode::<H::Body>(&entry) {
                Ok(body) => {
                    let traceparent = entry.field(FIELD_TRACEPARENT).map(str::to_owned);
                    let span = tracing::info_span!(
                        "stream.entry",
                        stream = %self.settings.stream,
                        group = %self.settings.group,
                        entry_id = %entry.id,
                        deliveries,
                        outcome = tracing::field::Empty,
                    );
                    crate::trace::set_parent_from(&span, traceparent.as_deref());
                    entries.push(StreamEntry {
                        id: entry.id.clone(),
                        body,
                        traceparent,
                        deliveries,
                        span,
                    });
                    originals.push(entry);
                }
                Err(reason) => poison.push((entry, reason, deliveries)),
            }
        }

        if !poison.is_empty() {
            let tx = self.clients.primary().next().multi();
            let mut ids = Vec::with_capacity(poison.len());
            for (entry, reason, deliveries) in &poison {
                self.queue_dead_letter(&tx, entry, reason, *deliveries).await?;
                ids.push(entry.id.clone());
            }
            let () = tx.xack(&self.key, self.settings.group.as_str(), ids).await?;
            let _: Value = tx.exec(true).await?;
            add(&self.counters.dead_lettered, poison.len());
        }
        if entries.is_empty() {
            return Ok(());
        }

        let batch_span = tracing::info_span!(
            "stream.batch",
            stream = %self.settings.stream,
            group = %self.settings.group,
            size = entries.len(),
            claimed = delivery == Delivery::Claimed,
        );
        for entry in &entries {
            crate::trace::link_to(&batch_span, &entry.span);
        }
        let tx = self.clients.primary().next().multi();
        let handled = handler.handle(&entries, &tx).instrument(batch_span.clone()).await;
        let _entered = batch_span.enter();
        let outcomes = match handled {
            Ok(outcomes) if outcomes.len() == entries.len() => outcomes,
            Ok(outcomes) => {
                tracing::error!(
                    expected = entries.len(),
                    got = outcomes.len(),
                    "handler returned the wrong number of outcomes; leaving the batch pending"
                );
                add(&self.counters.retries, entries.len());
                return Ok(());
            }
            Err(error) => {
                tracing::warn!(%error, "handler failed; leaving the batch pending for a retry");
                add(&self.counters.retries, entries.len());
                return Ok(());
            }
        };

        let (mut acked, mut dead, mut retried) = (Vec::new(), 0usize, 0usize);
        for ((entry, original), outcome) in entries.iter().zip(&originals).zip(&outcomes) {
            entry.span.record("outcome", outcome.label());
            match outcome {
                Outcome::Ack => acked.push(entry.id.clone()),
                Outcome::Retry => retried += 1,
                Outcome::DeadLetter(reason) => {
                    self.queue_dead_letter(&tx, original, reason, entry.deliveries).await?;
                    acked.push(entry.id.clone());
                    dead += 1;
                }
            }
        }
        add(&self.counters.retries, retried);
        if acked.is_empty() {
            return Ok(());
        }
        // Commits stay in batch order: the previous one answers before this one is sent.
        if let Some(previous) = in_flight.take()
            && let Err(error) = self.settle(previous).await
        {
            add(&self.counters.retries, acked.len());
            return Err(error);
        }
        // Past this point a peer may be allowed to claim these entries: do not commit.
        let lease = self.settings.claim_idle - self.settings.claim_idle / 5;
        if lease_start.elapsed() >= lease {
            tracing::warn!(
                elapsed_ms = lease_start.elapsed().as_millis() as u64,
                lease_ms = lease.as_millis() as u64,
                "batch took longer than its lease; abandoning it for a retry"
            );
            add(&self.counters.retries, acked.len());
            return Ok(());
        }
        let acked_count = acked.len();
        let () = tx.xack(&self.key, self.settings.group.as_str(), acked).await?;
        if H::OVERLAP_COMMITS && delivery == Delivery::New {
            // Answered by the next batch (or before the next blocking read or claim pass).
            let exec = tokio::spawn(async move { tx.exec::<Value>(true).await });
            *in_flight = Some(Commit { exec, acked: acked_count, dead });
            return Ok(());
        }
        if let Err(error) = tx.exec::<Value>(true).await {
            add(&self.counters.retries, acked_count);
            return Err(error.into());
        }
        add(&self.counters.processed, acked_count - dead);
        add(&self.counters.dead_lettered, dead);
        Ok(())
    }

    async fn queue_dead_letter(
        &self,
        tx: &Transaction,
        entry: &RawEntry,
        reason: &str,
        deliveries: u64,
    ) -> Result<()> {
        tracing::warn!(entry_id = %entry.id, reason, deliveries, stream = %self.settings.stream, group = %self.settings.group, "entry moved to the dead-letter stream");
        let mut fields = vec![
            ("original_id", entry.id.clone()),
            ("reason", reason.to_owned()),
            ("deliveries", deliveries.to_string()),
            ("consumer", self.settings.consumer.clone()),
        ];
        for name in [FIELD_VERSION, FIELD_TRACEPARENT, FIELD_DATA] {
            if let Some(value) = entry.field(name) {
                fields.push((name, value.to_owned()));
            }
        }
        let cap = i64::try_from(self.settings.dead_letter_max_len).unwrap_or(i64::MAX);
        let () = tx.xadd(&self.dead_key, false, ("MAXLEN", "~", cap), "*", fields).await?;
        Ok(())
    }
}

/// Decodes an entry's body; the error is the dead-letter reason.
fn decode<T: DeserializeOwned>(entry: &RawEntry) -> std::result::Result<T, String> {
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

fn error_is_nogroup(error: &RedisError) -> bool {
    matches!(error, RedisError::Command(e) if e.details().contains("NOGROUP"))
}

/// `XREADGROUP` answers `{stream: entries}` in RESP3 and `[[stream, entries]]` in RESP2; nil
/// when the block timed out.
fn parse_read_response(value: Value) -> Result<Vec<RawEntry>> {
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
fn parse_autoclaim_response(value: Value) -> Result<(String, Vec<RawEntry>, usize)> {
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
fn array(value: Value) -> Vec<Value> {
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
fn flatten_rows(value: Value) -> Vec<Value> {
    let rows = array(value);
    if rows.first().is_some_and(|first| !first.is_array()) {
        vec![Value::Array(rows)]
    } else {
        rows
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
}

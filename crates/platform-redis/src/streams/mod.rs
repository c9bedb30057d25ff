//! Redis Streams: a producer of versioned, traced entries with a length cap, and a consumer-group
//! worker whose handlers commit their Redis effects and the `XACK` in one `MULTI`/`EXEC`.
//!
//! Layout: [`producer`] appends, [`settings`] says how a group is read, [`handler`] is the
//! contract of the code that processes entries, [`consumer`] is the worker, [`lag`] reads a
//! group's backlog for metrics, [`dead_letters`] lists and redrives what a group gave up on, [`tail`] follows a stream without a group (every reader sees
//! every entry), and `wire` decodes Redis replies.
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
//! # Appending once per outbox row
//! A producer that must hand durable records to a stream exactly once (webhook-ingest's ledger)
//! appends them at ids it chose ([`crate::outbox`]): Redis refuses an id it already passed.
//!
//! # Delivery and effects
//! Delivery is at least once: an entry stays in the group's pending list (PEL) until acked, and
//! entries idle there longer than [`ConsumerSettings::claim_idle`] (their consumer died, or a
//! handler asked for a retry) are taken over with `XAUTOCLAIM` by whichever consumer looks first.
//! Effects are exactly once because a [`StreamHandler`] does not write to Redis itself: it queues
//! its writes on the [`Transaction`](fred::clients::Transaction) it is handed, and the worker
//! appends the `XACK` of the entries it acknowledged and runs `EXEC`. A consumer that dies before
//! `EXEC` applied nothing and its entries are taken again; one that dies after `EXEC` had acked
//! them with the effects.
//!
//! Ownership of a delivered entry is a lease of `claim_idle`: nobody else can claim it sooner. The
//! worker measures the lease from before the read and abandons a batch (no `EXEC`, entries stay
//! pending) when less than a fifth of it is left, so a slow handler does not commit work a peer
//! may already have reclaimed. Set `claim_idle` well above the slowest batch. (Only a process
//! frozen for longer than that margin between the check and `EXEC` reaching Redis could still apply
//! a batch twice.) Redis has no rollback: a queued command that fails at `EXEC` time (e.g.
//! `WRONGTYPE`) does not undo the others, so queue only commands that cannot fail on well-formed data.
//!
//! # Consumer names and restarts
//! A consumer's name is stable across restarts of its process: [`ConsumerSettings::consumer`],
//! set per service (`[<group section>] consumer`), or by default the host name (`$HOSTNAME`, else
//! the kernel's), which Kubernetes sets to the pod name and which a container keeps when it is
//! restarted in place. A second consumer of the same group in one process (tests, benchmarks) is
//! named `<host>-2`, the next `<host>-3`, in the order they are created. Two live processes must
//! never share a name (they would take each other's pending entries): replicas that share a host
//! name must be given names in their configuration.
//!
//! A worker first takes its own pending entries (`XREADGROUP … 0`: what its name held when the
//! process died), page by page, then reads new ones (`>`). A restarted process therefore finishes
//! what its predecessor held within one round trip of starting instead of after `claim_idle`.
//! Entries left by a name that never comes back (a replaced pod) are reclaimed by a peer after
//! `claim_idle`, as before. Both kinds of taking count as deliveries towards `max_deliveries`.
//!
//! # Lost groups heal themselves
//! A `NOGROUP` answer (the group was destroyed, or the whole stream key is gone: Redis lost data,
//! a failover promoted a replica that missed it, someone deleted it) makes the worker recreate the
//! group (`XGROUP CREATE … MKSTREAM`) and go on consuming; no restart. It recreates it at the
//! group's checkpoint in [`crate::keys::Keys::stream_group_checkpoints`] when there is one (the
//! entry id up to which the group acknowledged everything, kept by the stream's relay), so it
//! resumes right after what it had done, skipping nothing and replaying nothing before it; without
//! a checkpoint it starts where [`ConsumerSettings::start_from`] says. A relay that refills the
//! stream after a loss recreates the groups it knows itself, first (`BUSYGROUP` then leaves them as
//! they are). Entries after the checkpoint that the group had processed before the loss are
//! delivered again; handlers are idempotent for that reason already.
//!
//! # Data errors and outages
//! A handler tells the two apart per entry. Bad data (an undecodable body, a value the database
//! refuses by constraint, an amount that would overflow a total) is [`Outcome::DeadLetter`]: the
//! entry goes to the dead-letter stream at once, with the reason. An unavailable dependency
//! (Postgres down, a pool timeout) is [`Outcome::Unavailable`]: the entry stays pending, is
//! retried after `claim_idle`, and that delivery does not count towards `max_deliveries` (the
//! worker puts the count back with `XCLAIM … RETRYCOUNT` in the batch's `EXEC`), so an outage of
//! any length dead-letters nothing. [`Outcome::Retry`] is a retry that does count.
//!
//! # Overlapped commits
//! A handler that declares [`StreamHandler::OVERLAP_COMMITS`] (its work on a batch reads nothing
//! the previous batch's effects write; usage-meter's recording is pure) lets the worker pipeline
//! one batch deep: after a full batch it sends the next `XREADGROUP` at once (no `BLOCK`) in the
//! background (unless a claim pass is due, which then runs first), and it sends a batch's `EXEC`
//! in the background too, so Redis runs one batch's `EXEC` while this process decodes and handles
//! the next. The previous `EXEC` must have answered before the next one is sent (commits stay in
//! batch order), before a blocking read, before a claim pass and before [`StreamConsumer::run`]
//! returns; a failed one is counted as retries and ends that step with its error, as a failed
//! inline `EXEC` does. Nothing else changes: the lease of a read-ahead batch runs from when its
//! read was sent, the lease check still comes right before its `EXEC` is sent, and a consumer
//! that dies with a batch read ahead leaves it pending like any other. Claimed batches and the
//! own pending entries taken at start always commit inline. Other handlers (the default) read,
//! handle and commit strictly one batch after the other.
//!
//! Handlers may do non-Redis work (Postgres) before queueing their effects. That work is outside
//! the transaction and runs again when an entry is redelivered, so it must be idempotent itself
//! (e.g. an insert keyed on the entry's id or the event's own id with `ON CONFLICT DO NOTHING`).
//!
//! # Backlog
//! [`lag::group_lag`] reads one group's backlog in one round trip: entries not yet delivered
//! (`XINFO GROUPS` `lag`), entries delivered and not acknowledged, the idle time of the oldest
//! pending entry, and the length of the group's dead-letter stream. Services export it as
//! Prometheus gauges read at scrape time (`platform_service::stream_metrics`).
//!
//! # Redis Cluster
//! A `MULTI` (and a script) must stay in one hash slot. Every stream key carries the hash tag of
//! the stream slot ([`crate::keys::STREAMS_HASH_TAG`]), as do the dead-letter streams, the group
//! checkpoints, the once-only effect markers and the usage-meter keys, so the `XACK`, the
//! dead-letter `XADD`s and the effects the services queue all commit in that one slot. A handler must queue effects only on such keys
//! (built by [`crate::keys::Keys`] in the stream slot); an effect elsewhere makes Redis refuse the
//! `EXEC` (`CROSSSLOT`), so the batch is retried and finally dead-lettered. `tests/cluster.rs`
//! runs these paths against a real three-master cluster.

pub mod consumer;
pub mod dead_letters;
pub mod handler;
pub mod lag;
pub mod producer;
pub mod settings;
pub mod tail;
mod wire;

pub use consumer::{ConsumerStats, StreamConsumer};
pub use handler::{HandlerError, Outcome, StreamEntry, StreamHandler};
pub use lag::{GroupLag, group_lag};
pub use producer::{StreamProducer, encode_entry};
pub use settings::{ConsumerSettings, GroupSettings, StartFrom};
pub use tail::StreamTail;

pub(crate) const FIELD_VERSION: &str = "v";
pub(crate) const FIELD_TRACEPARENT: &str = "traceparent";
pub(crate) const FIELD_DATA: &str = "data";

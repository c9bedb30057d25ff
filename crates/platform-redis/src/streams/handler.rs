//! What a handler is handed and answers: decoded entries in, one [`Outcome`] per entry out.

use std::fmt;
use std::future::Future;

use fred::clients::Transaction;
use serde::de::DeserializeOwned;

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
    /// For data that can never be processed (bad values, a constraint the database enforces).
    DeadLetter(String),
    /// A dependency is unavailable (database down, pool timeout): leave it pending, retried
    /// after `claim_idle` like [`Outcome::Retry`], but this delivery does not count towards
    /// `max_deliveries`, so an outage never dead-letters. Queue no effects.
    Unavailable,
}

impl Outcome {
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Outcome::Ack => "ack",
            Outcome::Retry => "retry",
            Outcome::DeadLetter(_) => "dead_letter",
            Outcome::Unavailable => "unavailable",
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

/// Processes batches of one stream for a [`super::StreamConsumer`].
///
/// Contract: queue the Redis effects of the entries you return [`Outcome::Ack`] for on `tx` (e.g.
/// `let () = tx.incr_by(key, n).await?;`, which only queues), and nothing for the others; return
/// one outcome per entry, in order. Do not `exec` the transaction, and do not write those effects
/// through another client. Reads go through your own clients (queued reads return nothing).
/// Returning `Err` leaves the whole batch pending (counted as a delivery), so prefer per-entry
/// outcomes for per-entry problems: one bad entry then does not hold back the rest. Tell data
/// errors ([`Outcome::DeadLetter`], at once, with the reason) from unavailable dependencies
/// ([`Outcome::Unavailable`], retried without using up `max_deliveries`).
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

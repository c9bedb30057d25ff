//! Group commit: the ledger inserts of concurrent deliveries gathered into one statement.
//!
//! Every new delivery's hot path is one ledger insert. Run one by one, each would be a round trip
//! and a commit waiting for its own WAL flush. A [`Batcher`] queues the requests instead;
//! `committers` tasks each take what is queued (up to `max_rows`, waiting up to `linger` for more
//! once the first is there), run it as **one** statement (its own transaction: one commit, one
//! flush) and hand every waiter its own row's outcome.
//!
//! Guarantees the ingest relies on:
//! - a waiter is answered only after the statement that carries its row returned, i.e. after
//!   its commit (synchronous_commit decides durability, as for a single statement);
//! - one bad row never fails its neighbours: a batch refused for its data (a constraint, a value
//!   Postgres cannot store) is run again one row at a time, so only the bad row's waiter gets the
//!   error; a batch that failed for any other reason (Postgres unreachable) fails every waiter of
//!   it with the same error, and none of them is told its row was written;
//! - one event id appears at most once per batch (a second one waits for the next batch), so a
//!   batch's `ON CONFLICT DO UPDATE` never meets its own row twice and counts stay exact.

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::histogram::Histogram;
use sqlx::PgPool;
use tokio::sync::{Mutex, mpsc, oneshot};
use tracing::Instrument;

/// The error every waiter of a failed batch gets (shared: one failure, many waiters).
pub type BatchError = Arc<sqlx::Error>;

/// One kind of batched ledger statement.
pub trait BatchOp: Send + Sync + 'static {
    type Req: Send + Sync + 'static;
    type Resp: Send + 'static;
    /// Span name of one batch.
    const NAME: &'static str;

    /// The event id of a request (at most one per batch).
    fn key(req: &Self::Req) -> &str;

    /// Runs the batch as one statement; the answer has one entry per request, in order.
    fn run(
        db: &PgPool,
        reqs: &[Self::Req],
    ) -> impl Future<Output = Result<Vec<Self::Resp>, sqlx::Error>> + Send;
}

/// Bounds of a batch.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    /// Most requests per statement.
    pub max_rows: usize,
    /// How long a batch waits for more requests once it has one (zero: what is queued).
    pub linger: Duration,
    /// Batches in flight at once (each holds one pooled connection while it runs).
    pub committers: usize,
}

struct Job<Op: BatchOp> {
    req: Op::Req,
    reply: oneshot::Sender<Result<Op::Resp, BatchError>>,
}

/// Queue of one [`BatchOp`] in front of its committer tasks. Cheap to clone.
pub struct Batcher<Op: BatchOp> {
    jobs: mpsc::Sender<Job<Op>>,
}

impl<Op: BatchOp> Clone for Batcher<Op> {
    fn clone(&self) -> Self {
        Self { jobs: self.jobs.clone() }
    }
}

impl<Op: BatchOp> fmt::Debug for Batcher<Op> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batcher").field("op", &Op::NAME).finish_non_exhaustive()
    }
}

/// Why [`Batcher::submit`] got no outcome.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("the ledger batch failed")]
    Failed(#[source] BatchError),
    /// The committers stopped (shutdown); nothing is known about the row.
    #[error("the ledger batcher stopped")]
    Stopped,
}

impl<Op: BatchOp> Batcher<Op> {
    /// Starts the committer tasks on the current Tokio runtime; they stop when every clone of
    /// the returned batcher is dropped and the queue is drained.
    pub fn spawn(db: PgPool, limits: BatchLimits, rows: Histogram) -> Self {
        let max_rows = limits.max_rows.max(1);
        let (jobs, queue) = mpsc::channel(max_rows * limits.committers.max(1) * 4);
        let queue = Arc::new(Mutex::new(queue));
        for _ in 0..limits.committers.max(1) {
            let committer = Committer::<Op> {
                db: db.clone(),
                queue: queue.clone(),
                max_rows,
                linger: limits.linger,
                rows: rows.clone(),
                carried: VecDeque::new(),
            };
            tokio::spawn(committer.run());
        }
        Self { jobs }
    }

    /// Queues `req` and waits until the batch carrying it has run (and committed).
    pub async fn submit(&self, req: Op::Req) -> Result<Op::Resp, SubmitError> {
        let (reply, outcome) = oneshot::channel();
        self.jobs.send(Job { req, reply }).await.map_err(|_| SubmitError::Stopped)?;
        outcome.await.map_err(|_| SubmitError::Stopped)?.map_err(SubmitError::Failed)
    }
}

struct Committer<Op: BatchOp> {
    db: PgPool,
    queue: Arc<Mutex<mpsc::Receiver<Job<Op>>>>,
    max_rows: usize,
    linger: Duration,
    rows: Histogram,
    /// Requests whose event id was already in the batch being gathered: first in the next one.
    carried: VecDeque<Job<Op>>,
}

impl<Op: BatchOp> Committer<Op> {
    async fn run(mut self) {
        while let Some(batch) = self.gather().await {
            self.execute(batch).await;
        }
    }

    /// The next batch; `None` once the queue is closed and empty.
    async fn gather(&mut self) -> Option<Vec<Job<Op>>> {
        let mut batch: Vec<Job<Op>> = Vec::with_capacity(self.max_rows);
        let mut keys: HashSet<String> = HashSet::new();
        let mut carried = std::mem::take(&mut self.carried);
        while let Some(job) = carried.pop_front() {
            if batch.len() < self.max_rows && keys.insert(Op::key(&job.req).to_owned()) {
                batch.push(job);
            } else {
                self.carried.push_back(job);
            }
        }
        // One committer gathers at a time, so batches do not split the queue between them. With
        // carried requests in hand, do not wait for the queue: the other committer may be
        // holding it while it waits for traffic that never comes.
        let mut queue = if batch.is_empty() {
            self.queue.lock().await
        } else {
            match self.queue.try_lock() {
                Ok(queue) => queue,
                Err(_) => return Some(batch),
            }
        };
        if batch.is_empty() {
            let job = queue.recv().await?;
            keys.insert(Op::key(&job.req).to_owned());
            batch.push(job);
        }
        let deadline = tokio::time::Instant::now() + self.linger;
        while batch.len() < self.max_rows {
            let job = match queue.try_recv() {
                Ok(job) => job,
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) if self.linger.is_zero() => break,
                Err(mpsc::error::TryRecvError::Empty) => {
                    match tokio::time::timeout_at(deadline, queue.recv()).await {
                        Ok(Some(job)) => job,
                        Ok(None) | Err(_) => break,
                    }
                }
            };
            if keys.insert(Op::key(&job.req).to_owned()) {
                batch.push(job);
            } else {
                self.carried.push_back(job);
            }
        }
        Some(batch)
    }

    async fn execute(&self, batch: Vec<Job<Op>>) {
        let (reqs, replies): (Vec<Op::Req>, Vec<_>) =
            batch.into_iter().map(|job| (job.req, job.reply)).unzip();
        self.rows.observe(reqs.len() as f64);
        let span = tracing::info_span!("ledger.batch", op = Op::NAME, rows = reqs.len());
        match Op::run(&self.db, &reqs).instrument(span).await {
            Ok(resps) if resps.len() == reqs.len() => {
                for (reply, resp) in replies.into_iter().zip(resps) {
                    // A waiter that went away (client disconnected) needs no answer.
                    let _ = reply.send(Ok(resp));
                }
            }
            Ok(resps) => {
                let error = Arc::new(sqlx::Error::Protocol(format!(
                    "{} batch of {} rows answered {} rows",
                    Op::NAME,
                    reqs.len(),
                    resps.len()
                )));
                fail_all(replies, &error);
            }
            Err(error) if reqs.len() > 1 && is_data_error(&error) => {
                tracing::warn!(op = Op::NAME, rows = reqs.len(), %error, "ledger batch refused for its data; running its rows one by one");
                for (req, reply) in reqs.iter().zip(replies) {
                    let alone = Op::run(&self.db, std::slice::from_ref(req)).await;
                    let _ = reply.send(match alone {
                        Ok(mut resps) if resps.len() == 1 => Ok(resps.remove(0)),
                        Ok(_) => Err(Arc::new(sqlx::Error::Protocol("no row returned".into()))),
                        Err(error) => Err(Arc::new(error)),
                    });
                }
            }
            Err(error) => {
                let error = Arc::new(error);
                tracing::warn!(op = Op::NAME, rows = reqs.len(), error = %error, "ledger batch failed; every waiter answers 503");
                fail_all(replies, &error);
            }
        }
    }
}

/// A statement refused for what it carries (SQLSTATE class 22 data exception or 23 integrity
/// constraint violation): running it again cannot help, unlike a lost connection.
pub fn is_data_error(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => {
            db.code().is_some_and(|code| code.starts_with("22") || code.starts_with("23"))
        }
        _ => false,
    }
}

fn fail_all<T>(replies: Vec<oneshot::Sender<Result<T, BatchError>>>, error: &BatchError) {
    for reply in replies {
        let _ = reply.send(Err(error.clone()));
    }
}

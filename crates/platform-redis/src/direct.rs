//! A lean Redis connection per HTTP worker thread, for the few commands of a hot read path.
//!
//! fred's per-command path (a future of about 7 KB moved several times, an mpsc hop to its router
//! task, a oneshot per command, RESP3 frames built and decoded through its value type) was a
//! third of what a checkout session read cost the service beyond `/healthz`. A
//! [`DirectConnection`] belongs to one worker thread and its runtime: a request appends its
//! commands to a write buffer, registers one slot for its replies and waits; one task per
//! connection writes the whole buffer when it runs, so every command queued by requests in the
//! same turn of the worker's loop leaves in one write, and it hands the replies out in order.
//!
//! Deliberately small:
//! - RESP2, plain TCP, one node. [`crate::RolePool::direct`] offers no direct connection for an
//!   endpoint with TLS or in cluster mode; callers then use the fred pool, as they do whenever
//!   the direct connection is not up.
//! - No retries and no queueing while disconnected: a request on a connection that drops fails
//!   with an I/O error (callers treat it like any unreachable Redis). The next
//!   [`crate::RolePool::direct`] after the reconnect backoff (`backon`'s exponential one, capped
//!   at `reconnect_max_delay_ms`) starts a new connection in the background and answers `None`
//!   until it is up.
//! - Frames are encoded and decoded by `redis-protocol` (the codec fred itself uses); this module
//!   only moves them.
//! - A request without its replies after `command_timeout_ms` fails with a timeout and closes the
//!   connection (failing what queued behind it): a server that slow is treated as gone, so reads
//!   go to the fred pool, which has its own timeouts and reconnection, until a fresh connection is
//!   up. A request dropped early just leaves its slot to be filled and discarded.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use fred::bytes::BytesMut;
use fred::error::{Error as FredError, ErrorKind};
use secrecy::{ExposeSecret, SecretString};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::error::{RedisError, Result};

mod reply;
pub use reply::Reply;
use reply::{encode, parse};

/// Where a direct connection goes and how it logs in.
pub(crate) struct DirectEndpoint {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<SecretString>,
    pub database: Option<u8>,
}

/// Timeouts and backoff, from the `[redis]` settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DirectTimings {
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    pub reconnect_max_delay: Duration,
}

impl DirectTimings {
    /// Delays between failed connection attempts: 100 ms, doubling, capped, never giving up.
    fn backoff(&self) -> ExponentialBackoff {
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(self.reconnect_max_delay)
            .without_max_times()
            .build()
    }
}

/// A pipelined connection owned by one worker thread. Cheap to clone (the clones share it).
#[derive(Clone)]
pub struct DirectConnection {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for DirectConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let endpoint = &self.shared.endpoint;
        f.debug_struct("DirectConnection")
            .field("host", &endpoint.host)
            .field("port", &endpoint.port)
            .finish_non_exhaustive()
    }
}

struct Shared {
    endpoint: DirectEndpoint,
    timings: DirectTimings,
    state: Mutex<State>,
}

struct State {
    link: Link,
    /// Encoded commands the connection task has not written yet.
    out: BytesMut,
    /// One entry per request written or queued, in the order of its commands.
    pending: VecDeque<Arc<Pending>>,
    /// The connection task, when it waits for something to write.
    writer: Option<Waker>,
    /// Connection attempts failed in a row.
    failures: u32,
    /// Delays before the next attempts, restarted by a connection that comes up.
    backoff: ExponentialBackoff,
    /// Counts connections, so that a late timeout cannot close the next one.
    generation: u64,
    /// Tells the current connection's task to give it up (a request timed out).
    close: Arc<Notify>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    /// No connection; the next [`DirectConnection::usable`] after `retry_at` starts one.
    Down {
        retry_at: Instant,
    },
    Connecting,
    Up,
    /// A request timed out; the connection task is closing it.
    Closing,
}

/// The replies of one request: `expected` of them, or the error that ended the connection.
struct Pending {
    expected: usize,
    slot: Mutex<Slot>,
}

#[derive(Default)]
struct Slot {
    replies: Vec<Reply>,
    failed: Option<FredError>,
    waker: Option<Waker>,
}

impl Pending {
    /// Adds one reply; true when the request has them all.
    fn push(&self, reply: Reply) -> bool {
        let mut slot = lock(&self.slot);
        slot.replies.push(reply);
        let done = slot.replies.len() == self.expected;
        if done && let Some(waker) = slot.waker.take() {
            waker.wake();
        }
        done
    }

    fn fail(&self, error: FredError) {
        let mut slot = lock(&self.slot);
        slot.failed = Some(error);
        if let Some(waker) = slot.waker.take() {
            waker.wake();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl DirectConnection {
    /// A connection to `endpoint`, down until [`Self::usable`] first starts it. Call from inside
    /// the runtime that is to drive it (the worker's).
    pub(crate) fn new(endpoint: DirectEndpoint, timings: DirectTimings) -> Self {
        let now = Instant::now();
        Self {
            shared: Arc::new(Shared {
                endpoint,
                timings,
                state: Mutex::new(State {
                    link: Link::Down { retry_at: now },
                    out: BytesMut::new(),
                    pending: VecDeque::new(),
                    writer: None,
                    failures: 0,
                    backoff: timings.backoff(),
                    generation: 0,
                    close: Arc::new(Notify::new()),
                }),
            }),
        }
    }

    /// Whether the connection is up now; when it is down and its backoff has passed, starts
    /// connecting in the background (on the current runtime) and answers false meanwhile.
    pub fn usable(&self) -> bool {
        let mut state = lock(&self.shared.state);
        match state.link {
            Link::Up => true,
            Link::Connecting | Link::Closing => false,
            Link::Down { retry_at } => {
                if Instant::now() >= retry_at && tokio::runtime::Handle::try_current().is_ok() {
                    state.link = Link::Connecting;
                    drop(state);
                    tokio::spawn(run(self.shared.clone()));
                }
                false
            }
        }
    }

    /// Sends `commands` (each a list of arguments, the command name first) back to back and
    /// returns their replies in order. Error replies come back as [`Reply::Error`] in place; the
    /// call fails only when the connection is not up, drops, or the replies do not come in time.
    pub async fn request(&self, commands: &[&[&[u8]]]) -> Result<Vec<Reply>> {
        if commands.is_empty() {
            // A slot waiting for no reply would take the next request's.
            return Ok(Vec::new());
        }
        let pending = Arc::new(Pending {
            expected: commands.len(),
            slot: Mutex::new(Slot {
                replies: Vec::with_capacity(commands.len()),
                ..Slot::default()
            }),
        });
        let generation = {
            let mut state = lock(&self.shared.state);
            if state.link != Link::Up {
                return Err(io_error("the direct redis connection is not up"));
            }
            for command in commands {
                encode(&mut state.out, command).map_err(RedisError::Command)?;
            }
            state.pending.push_back(pending.clone());
            if let Some(writer) = state.writer.take() {
                writer.wake();
            }
            state.generation
        };
        let replies = poll_fn(|cx| {
            let mut slot = lock(&pending.slot);
            if let Some(error) = slot.failed.take() {
                return Poll::Ready(Err(RedisError::Command(error)));
            }
            if slot.replies.len() == pending.expected {
                return Poll::Ready(Ok(std::mem::take(&mut slot.replies)));
            }
            slot.waker = Some(cx.waker().clone());
            Poll::Pending
        });
        match tokio::time::timeout(self.shared.timings.command_timeout, replies).await {
            Ok(result) => result,
            Err(_) => {
                let mut state = lock(&self.shared.state);
                if state.generation == generation && state.link == Link::Up {
                    state.link = Link::Closing;
                    state.close.notify_one();
                }
                drop(state);
                Err(RedisError::Command(FredError::new(
                    ErrorKind::Timeout,
                    "no reply on the direct redis connection in time",
                )))
            }
        }
    }

    /// `EVALSHA` of the script with SHA-1 `sha1`: `Ok(None)` when the server does not have it
    /// (the caller runs it through fred, which loads it). Error replies are errors.
    pub async fn evalsha(
        &self,
        sha1: &str,
        keys: &[&str],
        args: &[&[u8]],
    ) -> Result<Option<Reply>> {
        let count = keys.len().to_string();
        let mut command: Vec<&[u8]> = Vec::with_capacity(3 + keys.len() + args.len());
        command.extend([b"EVALSHA".as_slice(), sha1.as_bytes(), count.as_bytes()]);
        command.extend(keys.iter().map(|key| key.as_bytes()));
        command.extend_from_slice(args);
        let reply = self.request(&[&command]).await?.pop();
        match reply {
            Some(Reply::Error(text)) if text.starts_with("NOSCRIPT") => Ok(None),
            Some(reply) => reply.into_result().map(Some),
            None => Err(RedisError::Unexpected("EVALSHA got no reply".into())),
        }
    }
}

fn io_error(details: &'static str) -> RedisError {
    RedisError::Command(FredError::new(ErrorKind::IO, details))
}

/// The connection task: connects, then writes and reads until the connection fails or is closed;
/// then fails every request still waiting and schedules the next attempt.
async fn run(shared: Arc<Shared>) {
    let endpoint = &shared.endpoint;
    let error = match connect(endpoint, shared.timings.connect_timeout).await {
        Ok(stream) => {
            let close = Arc::new(Notify::new());
            let was_failing = {
                let mut state = lock(&shared.state);
                state.link = Link::Up;
                state.generation += 1;
                state.close = close.clone();
                state.backoff = shared.timings.backoff();
                std::mem::take(&mut state.failures) > 0
            };
            if was_failing {
                tracing::info!(host = %endpoint.host, port = endpoint.port, "direct redis connection is up again");
            }
            let error = serve(&shared, stream, &close).await;
            tracing::warn!(host = %endpoint.host, port = endpoint.port, %error, "direct redis connection closed; reads use the shared pools until it is back");
            error
        }
        Err(error) => {
            tracing::debug!(host = %endpoint.host, port = endpoint.port, %error, "direct redis connection failed");
            error
        }
    };
    let waiting = {
        let mut state = lock(&shared.state);
        state.failures = state.failures.saturating_add(1);
        let backoff = state.backoff.next().unwrap_or(shared.timings.reconnect_max_delay);
        state.link = Link::Down { retry_at: Instant::now() + backoff };
        state.out.clear();
        state.writer = None;
        std::mem::take(&mut state.pending)
    };
    for pending in waiting {
        pending.fail(error.clone());
    }
}

/// Opens the socket and logs in (`AUTH`, `SELECT`) within `timeout`.
async fn connect(endpoint: &DirectEndpoint, timeout: Duration) -> Result<TcpStream, FredError> {
    let login = async {
        let mut stream = TcpStream::connect((endpoint.host.as_str(), endpoint.port)).await?;
        stream.set_nodelay(true)?;
        let mut hello = BytesMut::new();
        let mut expected = 0;
        if let Some(password) = &endpoint.password {
            let password = password.expose_secret().as_bytes();
            match &endpoint.username {
                Some(user) => encode(&mut hello, &[b"AUTH", user.as_bytes(), password])?,
                None => encode(&mut hello, &[b"AUTH", password])?,
            }
            expected += 1;
        }
        if let Some(database) = endpoint.database {
            encode(&mut hello, &[b"SELECT", database.to_string().as_bytes()])?;
            expected += 1;
        }
        stream.write_all(&hello).await?;
        let mut input = BytesMut::with_capacity(256);
        while expected > 0 {
            if stream.read_buf(&mut input).await? == 0 {
                return Err(FredError::new(ErrorKind::IO, "redis closed the connection at login"));
            }
            while expected > 0 {
                match parse(&mut input)? {
                    Some(Reply::Error(text)) => return Err(FredError::new(ErrorKind::Auth, text)),
                    Some(_) => expected -= 1,
                    None => break,
                }
            }
        }
        Ok(stream)
    };
    tokio::time::timeout(timeout, login)
        .await
        .unwrap_or_else(|_| Err(FredError::new(ErrorKind::Timeout, "connecting took too long")))
}

/// Moves bytes both ways until something fails; returns what did.
async fn serve(shared: &Shared, mut stream: TcpStream, close: &Notify) -> FredError {
    let (mut reader, mut writer) = stream.split();
    let write = async {
        let mut spare = BytesMut::new();
        loop {
            let out = poll_fn(|cx| {
                let mut state = lock(&shared.state);
                if state.out.is_empty() {
                    state.writer = Some(cx.waker().clone());
                    Poll::Pending
                } else {
                    Poll::Ready(std::mem::replace(&mut state.out, std::mem::take(&mut spare)))
                }
            })
            .await;
            writer.write_all(&out).await?;
            spare = out;
            spare.clear();
        }
    };
    let read = async {
        let mut input = BytesMut::with_capacity(16 * 1024);
        loop {
            if input.capacity() - input.len() < 4 * 1024 {
                input.reserve(16 * 1024);
            }
            if reader.read_buf(&mut input).await? == 0 {
                return Err(FredError::new(ErrorKind::IO, "redis closed the connection"));
            }
            while let Some(reply) = parse(&mut input)? {
                let mut state = lock(&shared.state);
                let Some(pending) = state.pending.front().cloned() else {
                    return Err(FredError::new(ErrorKind::Protocol, "a reply nobody asked for"));
                };
                if pending.push(reply) {
                    state.pending.pop_front();
                }
            }
        }
    };
    let result: Result<(), FredError> = tokio::select! {
        result = write => result,
        result = read => result,
        () = close.notified() => {
            Err(FredError::new(ErrorKind::Timeout, "a request timed out"))
        }
    };
    result.err().unwrap_or_else(|| FredError::new(ErrorKind::IO, "the connection ended"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reconnect_backoff_doubles_up_to_its_cap() {
        let timings = DirectTimings {
            connect_timeout: Duration::from_secs(1),
            command_timeout: Duration::from_secs(1),
            reconnect_max_delay: Duration::from_millis(500),
        };
        let delays: Vec<u128> = timings.backoff().take(6).map(|d| d.as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 500, 500, 500]);
    }
}

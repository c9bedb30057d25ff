//! Distributed lock with an owner token, compare-and-delete release, renewal, and fencing numbers.
//!
//! Keys: [`crate::keys::Keys::lock`] holds the random owner token of the current holder (with
//! `PX`), [`crate::keys::Keys::lock_fence`] a counter that is incremented on every successful
//! acquisition, in the same Lua script as the `SET NX PX`, so each holder gets a fencing number
//! larger than every earlier holder's. Both keys share the lock name as hash tag.
//!
//! A lease can expire while its holder still runs (a long pause, a lost renewal), so mutual
//! exclusion alone does not protect a write. Writers that must not be overtaken compare their
//! [`LockGuard::fence`] with [`current_fence`] (or make the storage reject smaller fences) before
//! they commit: a newer holder always has a larger number.
//!
//! Release and renewal are compare-and-act scripts on the token, so a stale holder whose lease
//! expired and was taken by someone else can neither delete nor extend the new holder's lock.

use std::sync::Arc;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use fred::prelude::*;
use fred::types::scripts::Script;
use tokio_util::sync::CancellationToken;

use crate::client::RedisClients;
use crate::error::Result;

/// `SET lock token NX PX ttl`, and on success `INCR fence`; returns the new fence or nil.
static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return redis.call('INCR', KEYS[2])
end
return false
",
    )
});

/// `PEXPIRE` only while the lock still holds this token.
static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
",
    )
});

/// `DEL` only while the lock still holds this token.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
",
    )
});

/// Entry point for acquiring named locks on the primary instance.
#[derive(Debug, Clone, Copy)]
pub struct Lock;

impl Lock {
    /// Tries once to take the lock `name` for `ttl`. `None` when someone else holds it.
    #[tracing::instrument(name = "lock.acquire", skip(clients), fields(lock = name, ttl_ms = ttl_ms(ttl)))]
    pub async fn acquire(
        clients: &RedisClients,
        name: &str,
        ttl: Duration,
    ) -> Result<Option<LockGuard>> {
        let keys = clients.keys();
        let (key, fence_key) = (keys.lock(name), keys.lock_fence(name));
        let token = uuid::Uuid::new_v4().simple().to_string();
        let fence: Option<u64> = ACQUIRE
            .evalsha_with_reload(
                clients.primary().next(),
                vec![key.clone(), fence_key],
                vec![token.clone(), ttl_ms(ttl).to_string()],
            )
            .await?;
        Ok(fence.map(|fence| {
            tracing::debug!(fence, "lock acquired");
            LockGuard {
                clients: clients.clone(),
                name: name.to_owned(),
                key,
                token,
                fence,
                released: AtomicBool::new(false),
                stop_renewals: CancellationToken::new(),
            }
        }))
    }

    /// Like [`Lock::acquire`], but polls (with growing, jittered pauses so competing waiters do not
    /// retry in lockstep) until the lock is taken or `max_wait` has passed.
    pub async fn acquire_with_wait(
        clients: &RedisClients,
        name: &str,
        ttl: Duration,
        max_wait: Duration,
    ) -> Result<Option<LockGuard>> {
        let deadline = Instant::now() + max_wait;
        let attempt = || async {
            match Self::acquire(clients, name, ttl).await {
                Ok(Some(guard)) => Ok(guard),
                Ok(None) => Err(Attempt::Held),
                Err(error) => Err(Attempt::Failed(error)),
            }
        };
        let taken = attempt
            .retry(WAIT_BACKOFF)
            .when(|failed| matches!(failed, Attempt::Held))
            // The last pause ends at the deadline, and one more try follows it.
            .adjust(|_, pause| {
                let left = deadline.saturating_duration_since(Instant::now());
                pause.filter(|_| !left.is_zero()).map(|pause| pause.min(left))
            })
            .await;
        match taken {
            Ok(guard) => Ok(Some(guard)),
            Err(Attempt::Held) => Ok(None),
            Err(Attempt::Failed(error)) => Err(error),
        }
    }
}

/// Pauses between tries of [`Lock::acquire_with_wait`]: jittered within [p/2, p) for p = 10 ms,
/// doubling up to 250 ms (backon's jitter adds up to one more delay to each).
const WAIT_BACKOFF: ExponentialBuilder = ExponentialBuilder::new()
    .with_min_delay(Duration::from_millis(5))
    .with_max_delay(Duration::from_millis(125))
    .with_jitter()
    .without_max_times();

/// Why one try of [`Lock::acquire_with_wait`] did not take the lock.
enum Attempt {
    /// Someone else holds it: try again after a pause.
    Held,
    /// Redis failed: give up with the error.
    Failed(crate::error::RedisError),
}

/// The fencing number of the newest acquisition of lock `name` (0 if it was never taken). A holder
/// whose [`LockGuard::fence`] is smaller has been overtaken and must not commit its result.
#[tracing::instrument(name = "lock.current_fence", skip(clients), fields(lock = name))]
pub async fn current_fence(clients: &RedisClients, name: &str) -> Result<u64> {
    let fence: Option<u64> = clients.primary().get(clients.keys().lock_fence(name)).await?;
    Ok(fence.unwrap_or(0))
}

/// A held lock. Dropping it without [`LockGuard::release`] releases it in the background (when
/// inside a Tokio runtime); otherwise the lock expires with its TTL.
#[derive(Debug)]
pub struct LockGuard {
    clients: RedisClients,
    name: String,
    key: String,
    token: String,
    fence: u64,
    released: AtomicBool,
    /// Cancelled on release so that renewal tasks stop with the guard.
    stop_renewals: CancellationToken,
}

impl LockGuard {
    /// The random owner token stored in the lock key.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The fencing number of this acquisition: larger than that of every earlier holder.
    pub fn fence(&self) -> u64 {
        self.fence
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether this guard's fence is still the newest, i.e. nobody acquired the lock since.
    pub async fn is_fence_current(&self) -> Result<bool> {
        Ok(current_fence(&self.clients, &self.name).await? == self.fence)
    }

    /// Extends the lease to `ttl` from now. `false` when the lock is no longer ours (it expired,
    /// and possibly someone else holds it now): the caller has lost the lock.
    #[tracing::instrument(name = "lock.renew", skip(self), fields(lock = %self.name, fence = self.fence))]
    pub async fn renew(&self, ttl: Duration) -> Result<bool> {
        renew(&self.clients, &self.key, &self.token, ttl).await
    }

    /// Deletes the lock if it is still ours. `false` when it had already expired or been taken
    /// over (nothing is deleted then).
    #[tracing::instrument(name = "lock.release", skip(self), fields(lock = %self.name, fence = self.fence))]
    pub async fn release(self) -> Result<bool> {
        self.released.store(true, Ordering::SeqCst);
        self.stop_renewals.cancel();
        release(&self.clients, &self.key, &self.token).await
    }

    /// Renews the lease to `ttl` every `every` in a background task, for work that may outlast
    /// one TTL. `every` should be well below `ttl` (a third is usual). The task stops when the
    /// handle is dropped or the guard released; it marks the handle lost when the lock is no longer
    /// ours, or when renewals have failed (Redis unreachable) for longer than `ttl`.
    pub fn spawn_renewal(&self, every: Duration, ttl: Duration) -> RenewalHandle {
        let stop = self.stop_renewals.child_token();
        let lost = Arc::new(AtomicBool::new(false));
        let (lost_tx, lost_rx) = tokio::sync::watch::channel(false);
        let task = {
            let (clients, key, token) =
                (self.clients.clone(), self.key.clone(), self.token.clone());
            let (stop, lost) = (stop.clone(), lost.clone());
            let name = self.name.clone();
            async move {
                let mut last_success = Instant::now();
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(every) => {}
                    }
                    match renew(&clients, &key, &token, ttl).await {
                        Ok(true) => last_success = Instant::now(),
                        Ok(false) => {
                            tracing::warn!(lock = %name, "lock lost: token no longer matches; stopping renewal");
                            break;
                        }
                        Err(error) if last_success.elapsed() < ttl => {
                            tracing::warn!(%error, lock = %name, "lock renewal failed; retrying");
                        }
                        Err(error) => {
                            tracing::warn!(%error, lock = %name, "lock renewal failed for longer than its TTL; treating lock as lost");
                            break;
                        }
                    }
                }
                lost.store(true, Ordering::SeqCst);
                let _ = lost_tx.send(true);
            }
        };
        tokio::spawn(task);
        RenewalHandle { stop, lost, lost_rx }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        self.stop_renewals.cancel();
        if self.released.load(Ordering::SeqCst) {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (clients, key, token) =
                (self.clients.clone(), self.key.clone(), self.token.clone());
            let name = self.name.clone();
            runtime.spawn(async move {
                if let Err(error) = release(&clients, &key, &token).await {
                    tracing::warn!(%error, lock = %name, "releasing dropped lock guard failed; it expires with its TTL");
                }
            });
        }
    }
}

/// Background renewal started by [`LockGuard::spawn_renewal`]; stops renewing when dropped.
#[derive(Debug)]
pub struct RenewalHandle {
    stop: CancellationToken,
    lost: Arc<AtomicBool>,
    lost_rx: tokio::sync::watch::Receiver<bool>,
}

impl RenewalHandle {
    /// True once a renewal found the lock no longer ours (or could not reach Redis for a TTL).
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    /// Resolves when the lock is lost; use in `select!` to abandon work that needs the lock.
    /// Never resolves while renewals succeed.
    pub async fn lost(&self) {
        let mut rx = self.lost_rx.clone();
        // An Err means the task ended without reporting a loss (it was stopped): wait forever.
        if rx.wait_for(|lost| *lost).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Stops renewing (the same as dropping the handle).
    pub fn stop(self) {}
}

impl Drop for RenewalHandle {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn renew(clients: &RedisClients, key: &str, token: &str, ttl: Duration) -> Result<bool> {
    let renewed: i64 = RENEW
        .evalsha_with_reload(
            clients.primary().next(),
            vec![key.to_owned()],
            vec![token.to_owned(), ttl_ms(ttl).to_string()],
        )
        .await?;
    Ok(renewed == 1)
}

async fn release(clients: &RedisClients, key: &str, token: &str) -> Result<bool> {
    let deleted: i64 = RELEASE
        .evalsha_with_reload(clients.primary().next(), vec![key.to_owned()], vec![token.to_owned()])
        .await?;
    Ok(deleted == 1)
}

/// Milliseconds for `PX`/`PEXPIRE`; at least 1 because Redis rejects 0.
fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

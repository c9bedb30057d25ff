//! Which tier a Redis-first store writes to, switched — and logged once per switch — as Redis
//! goes and comes back.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use platform_redis::fred::prelude::*;
use platform_redis::{RedisError, RolePool};
use prometheus_client::metrics::gauge::Gauge;

use crate::domain::session_store::TierError;
use crate::error::CheckoutError;

/// The tier switch of one store (checkout sessions → Postgres, user sessions → memory). Cheap to
/// clone; clones share the state.
#[derive(Debug, Clone)]
pub struct TierSwitch {
    /// Last tier an operation used, so each switch is logged once.
    on_fallback: Arc<AtomicBool>,
    /// 1 while on the fallback (the store's `*_fallback` metric).
    gauge: Gauge,
    /// What the store holds and where it goes without Redis, for the log lines.
    store: &'static str,
    fallback: &'static str,
}

impl TierSwitch {
    pub fn new(store: &'static str, fallback: &'static str, gauge: Gauge) -> Self {
        Self { on_fallback: Arc::new(AtomicBool::new(false)), gauge, store, fallback }
    }

    /// A connected client of `redis` (this thread's pool), or `None` (and the switch to the
    /// fallback noted) when no connection is up.
    pub fn client(&self, redis: &RolePool) -> Option<Client> {
        let pool = redis.pool();
        let client = pool.next_connected();
        if client.is_connected() {
            Some(client.clone())
        } else {
            self.note(true, None);
            None
        }
    }

    /// Records which tier just served: a switch updates the gauge and logs (warn to the
    /// fallback, info back to Redis).
    pub fn note(&self, on_fallback: bool, cause: Option<&RedisError>) {
        if self.on_fallback.swap(on_fallback, Ordering::Relaxed) == on_fallback {
            return;
        }
        self.gauge.set(i64::from(on_fallback));
        let (store, fallback) = (self.store, self.fallback);
        if on_fallback {
            let cause = cause.map(|e| platform_service::error::error_chain(e));
            tracing::warn!(
                store,
                fallback,
                cause,
                "redis unreachable; the store uses its fallback"
            );
        } else {
            tracing::info!(store, "redis reachable again; the store uses redis");
        }
    }

    /// Sorts a failure of the Redis tier: unreachable → `Ok` (the switch noted, the caller uses
    /// the fallback), anything else is an error of its own.
    pub fn failed(&self, error: impl Into<TierError>) -> Result<(), CheckoutError> {
        match error.into() {
            TierError::Unreachable(cause) => {
                self.note(true, cause.as_ref());
                Ok(())
            }
            TierError::Failed(error) => Err(error),
        }
    }
}

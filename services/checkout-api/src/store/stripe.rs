//! Stripe state in Redis: the user → customer map, the one state record per customer, and the
//! per-user and per-customer locks that keep a customer created once and a record written by the
//! newest sync only.
//!
//! The state record ([`platform_redis::keys::Keys::stripe_state`]) is written only by the sync,
//! through [`StripeStore::write_state`]: a script that stores it only while the sync lock's
//! fencing number ([`platform_redis::keys::stripe_sync_lock`]) is still the writer's, so a sync
//! whose lease expired and was overtaken by a newer one drops its older data.

use std::sync::LazyLock;
use std::time::Duration;

use platform_redis::RedisClients;
use platform_redis::fred::prelude::*;
use platform_redis::fred::types::scripts::Script;
use platform_redis::keys::{stripe_customer_lock, stripe_sync_lock};
use platform_redis::lock::{Lock, LockGuard};

use crate::domain::stripe::StripeState;
use crate::error::CheckoutError;

/// `SET KEYS[2] ARGV[2]` only while the fence counter `KEYS[1]` still equals `ARGV[1]`.
static FENCED_WRITE: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[2], ARGV[2])
  return 1
end
return 0
",
    )
});

/// How long a lock is held at most, and how long to wait for it.
#[derive(Debug, Clone, Copy)]
pub struct LockTimes {
    pub ttl: Duration,
    pub wait: Duration,
}

/// Stripe's records in Redis. Cheap to clone.
#[derive(Debug, Clone)]
pub struct StripeStore {
    redis: RedisClients,
}

impl StripeStore {
    pub fn new(redis: RedisClients) -> Self {
        Self { redis }
    }

    /// The customer id recorded for `user_id`, if any.
    pub async fn customer_of_user(&self, user_id: &str) -> Result<Option<String>, CheckoutError> {
        let key = self.redis.keys().stripe_customer_of_user(user_id);
        Ok(self.redis.primary().get(&key).await?)
    }

    /// Records `customer_id` as the customer of `user_id`.
    pub async fn set_customer_of_user(
        &self,
        user_id: &str,
        customer_id: &str,
    ) -> Result<(), CheckoutError> {
        let key = self.redis.keys().stripe_customer_of_user(user_id);
        let () = self.redis.primary().set(&key, customer_id, None, None, false).await?;
        Ok(())
    }

    /// The lock under which `user_id`'s customer is created; `None` when not acquired in time.
    pub async fn customer_lock(
        &self,
        user_id: &str,
        times: LockTimes,
    ) -> Result<Option<LockGuard>, CheckoutError> {
        self.lock(&stripe_customer_lock(user_id), times).await
    }

    /// The lock a sync of `customer_id` holds from before its fetch to after its write; `None`
    /// when not acquired in time.
    pub async fn sync_lock(
        &self,
        customer_id: &str,
        times: LockTimes,
    ) -> Result<Option<LockGuard>, CheckoutError> {
        self.lock(&stripe_sync_lock(customer_id), times).await
    }

    async fn lock(&self, name: &str, times: LockTimes) -> Result<Option<LockGuard>, CheckoutError> {
        Ok(Lock::acquire_with_wait(&self.redis, name, times.ttl, times.wait).await?)
    }

    /// The recorded state of `customer_id`, if any.
    pub async fn state(&self, customer_id: &str) -> Result<Option<StripeState>, CheckoutError> {
        let key = self.redis.keys().stripe_state(customer_id);
        let text: Option<String> = self.redis.primary().get(&key).await?;
        let Some(text) = text else { return Ok(None) };
        serde_json::from_str(&text).map(Some).map_err(|error| {
            CheckoutError::Internal(
                anyhow::Error::new(error).context("stored stripe state unreadable"),
            )
        })
    }

    /// Writes the state record of its customer if the sync lock's fence is still `fence` (the
    /// writer's); false when a newer sync took the lock.
    pub async fn write_state(
        &self,
        state: &StripeState,
        fence: u64,
    ) -> Result<bool, CheckoutError> {
        let keys = self.redis.keys();
        let text =
            serde_json::to_string(state).map_err(|error| CheckoutError::Internal(error.into()))?;
        let written: i64 = FENCED_WRITE
            .evalsha_with_reload(
                self.redis.primary().next(),
                vec![
                    keys.lock_fence(&stripe_sync_lock(&state.customer_id)),
                    keys.stripe_state(&state.customer_id),
                ],
                vec![fence.to_string(), text],
            )
            .await
            .map_err(CheckoutError::from)?;
        Ok(written == 1)
    }
}

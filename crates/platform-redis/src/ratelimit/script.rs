//! The Redis side of the limiter: the two Lua scripts (exact and leasing) with their keys and
//! arguments, run on this worker's direct connection or on the rate-limit pool.

use fred::prelude::Client;
use fred::types::scripts::Script;

use super::policy::{Asked, Policy};
use super::window::{LEASE_LUA, Outcome, SLIDING_WINDOW_LUA};
use crate::client::RolePool;
use crate::error::{RedisError, Result};
use crate::keys::Keys;

/// The scripts and what they run on. One per limiter.
pub(super) struct Scripts {
    pool: RolePool,
    keys: Keys,
    script: Script,
    lease_script: Script,
    expected_replicas: u32,
}

impl Scripts {
    pub(super) fn new(pool: RolePool, keys: Keys, expected_replicas: u32) -> Self {
        Self {
            pool,
            keys,
            script: Script::from_lua(SLIDING_WINDOW_LUA),
            lease_script: Script::from_lua(LEASE_LUA),
            expected_replicas,
        }
    }

    /// The rate-limit pool the scripts run on when no direct connection can.
    pub(super) fn pool(&self) -> &RolePool {
        &self.pool
    }

    /// The current and the previous window's counters of `identifier` (one hash tag).
    fn window_keys(&self, policy: &Policy, identifier: &str, window_index: u64) -> Vec<String> {
        vec![
            self.keys.rate_limit_window(&policy.name, identifier, window_index),
            self.keys.rate_limit_window(&policy.name, identifier, window_index.saturating_sub(1)),
        ]
    }

    /// One request of `identifier` decided by the exact script.
    #[tracing::instrument(level = "debug", skip_all, fields(policy = %policy.name, identifier = %asked.identifier))]
    pub(super) async fn eval(
        &self,
        client: &Client,
        policy: &Policy,
        asked: &Asked<'_>,
    ) -> Result<Outcome> {
        let Asked { identifier, limit, now_ms, .. } = *asked;
        let window_index = now_ms / policy.window_ms;
        let keys = self.window_keys(policy, identifier, window_index);
        let args =
            vec![i64::from(limit), to_i64(policy.window_ms), to_i64(now_ms % policy.window_ms)];
        let reply = self.run_script(client, &self.script, keys, args).await?;
        match reply.as_slice() {
            [allowed, _limit, remaining, reset] => Ok(Outcome {
                allowed: *allowed == 1,
                remaining: u32::try_from(*remaining).unwrap_or(0),
                reset_ms: u64::try_from(*reset).unwrap_or(0),
            }),
            other => Err(RedisError::Unexpected(format!("rate-limit script returned {other:?}"))),
        }
    }

    /// Up to `wanted` tokens of `identifier` from the leasing script, after giving back
    /// `give_back` (the window index and unspent tokens of this replica's previous lease).
    #[tracing::instrument(level = "debug", skip_all, fields(policy = %policy.name, identifier = %asked.identifier))]
    pub(super) async fn take_lease(
        &self,
        client: &Client,
        policy: &Policy,
        asked: &Asked<'_>,
        wanted: u32,
        give_back: Option<(u64, u32)>,
    ) -> Result<(u32, Outcome)> {
        let Asked { identifier, limit, now_ms, .. } = *asked;
        let window_index = now_ms / policy.window_ms;
        let keys = self.window_keys(policy, identifier, window_index);
        // Tokens go back to the window they were counted in, if it is still one of the two.
        let (back, slot) = match give_back {
            Some((index, tokens)) if index == window_index => (tokens, 1),
            Some((index, tokens)) if index + 1 == window_index => (tokens, 2),
            _ => (0, 0),
        };
        let args = vec![
            i64::from(limit),
            to_i64(policy.window_ms),
            to_i64(now_ms % policy.window_ms),
            i64::from(wanted.max(1)),
            i64::from(self.expected_replicas),
            i64::from(back),
            slot,
        ];
        let reply = self.run_script(client, &self.lease_script, keys, args).await?;
        match reply.as_slice() {
            [granted, _limit, remaining, reset] => {
                let granted = u32::try_from(*granted).unwrap_or(0);
                Ok((
                    granted,
                    Outcome {
                        allowed: granted > 0,
                        remaining: u32::try_from(*remaining).unwrap_or(0),
                        reset_ms: u64::try_from(*reset).unwrap_or(0),
                    },
                ))
            }
            other => {
                Err(RedisError::Unexpected(format!("rate-limit lease script returned {other:?}")))
            }
        }
    }

    /// Runs `script` on this worker's direct connection when it is up and has the script loaded
    /// (see [`crate::direct`]), else on `client` (which loads it, so the next call can go direct).
    async fn run_script(
        &self,
        client: &Client,
        script: &Script,
        keys: Vec<String>,
        args: Vec<i64>,
    ) -> Result<Vec<i64>> {
        if let Some(direct) = self.pool.direct() {
            let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
            let args: Vec<String> = args.iter().map(i64::to_string).collect();
            let args: Vec<&[u8]> = args.iter().map(String::as_bytes).collect();
            match direct.evalsha(script.sha1(), &keys, &args).await {
                Ok(Some(reply)) => return reply.into_integers(),
                Ok(None) => {}
                // The direct connection's failure is not Redis': the pool may still answer.
                Err(error) if error.is_unavailable() => {}
                Err(error) => return Err(error),
            }
        }
        Ok(script.evalsha_with_reload(client, keys, args).await?)
    }
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

//! User and guest sessions in Redis: a random id in an `HttpOnly; SameSite=Lax; Path=/` cookie (`Secure` configurable,
//! written by `routes::user_sessions`) pointing at a small record in Redis ([`Keys::user_session`], `EX` = 24 h by default, absolute: reads do
//! not extend it). The record holds the kind (guest | user), the userId the trusted front end
//! named at login, and timestamps: nothing sensitive.
//!
//! Login rotates the id: the old session is deleted and a new id is issued, so an id fixed
//! before login is worthless after it. There is no authentication here; login is an admin /
//! service-token route for the front end that authenticated the user.
//!
//! **Fallback.** While Redis is unreachable, sessions are kept in a bounded in-process map (the
//! oldest is evicted when full). The switch is logged once each way and reported by both health
//! routes. Such sessions live on one replica and die with the process; reads
//! try Redis and then this map, so they keep working on the replica that created them until
//! they expire.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::Utc;
use platform_redis::fred::prelude::*;
use platform_redis::fred::types::Expiration;
use platform_redis::{Keys, RedisError, RolePool};
use prometheus_client::metrics::gauge::Gauge;
use serde::Deserialize;

use crate::domain::user_sessions::{
    Held, SessionKind, UserSession, UserSessionView, new_id, valid_id,
};
use crate::error::CheckoutError;
use crate::store::tier::TierSwitch;

/// `[user_sessions]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserSessionSettings {
    /// Life of a session from its creation (or login).
    pub ttl_secs: u64,
    /// Name of the session cookie.
    pub cookie_name: String,
    /// Adds `Secure` to the cookie; turn off only for plain-HTTP local development.
    pub cookie_secure: bool,
    /// Bound of the in-memory fallback.
    pub memory_max_entries: usize,
    /// Rate-limit policy of guest session creation.
    pub guest_rate_limit_policy: String,
}

/// The bounded in-process fallback.
#[derive(Debug, Default)]
struct Memory {
    sessions: HashMap<String, UserSession>,
    /// Insertion order, for evicting the oldest; may hold ids already removed.
    order: VecDeque<String>,
}

/// The user-session store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct UserSessions {
    redis: RolePool,
    keys: Keys,
    settings: UserSessionSettings,
    memory: Arc<Mutex<Memory>>,
    tier: TierSwitch,
}

impl UserSessions {
    pub fn new(
        redis: RolePool,
        keys: Keys,
        settings: UserSessionSettings,
        fallback_gauge: Gauge,
    ) -> Self {
        Self {
            redis,
            keys,
            settings,
            memory: Arc::new(Mutex::new(Memory::default())),
            tier: TierSwitch::new("user sessions", "memory", fallback_gauge),
        }
    }

    pub fn settings(&self) -> &UserSessionSettings {
        &self.settings
    }

    /// True while no sessions-pool connection is up (new sessions go to memory).
    pub fn in_fallback(&self) -> bool {
        !self.redis.pool().next_connected().is_connected()
    }

    /// Sessions currently held in memory.
    pub fn memory_len(&self) -> usize {
        self.lock().sessions.len()
    }

    fn lock(&self) -> MutexGuard<'_, Memory> {
        self.memory.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates a session; returns its id (the cookie value), the record and where it is held.
    #[tracing::instrument(name = "user_sessions.create", skip(self, user_id))]
    pub async fn create(
        &self,
        kind: SessionKind,
        user_id: Option<String>,
    ) -> Result<(String, UserSessionView), CheckoutError> {
        let id = new_id();
        let now = Utc::now();
        let session = UserSession {
            kind,
            user_id,
            created_at: now,
            expires_at: now
                + chrono::Duration::seconds(
                    i64::try_from(self.settings.ttl_secs).unwrap_or(i64::MAX / 1000),
                ),
        };
        if let Some(client) = &self.tier.client(&self.redis) {
            let json = serde_json::to_string(&session)?;
            let ttl = i64::try_from(self.settings.ttl_secs).unwrap_or(i64::MAX);
            let stored: Result<(), RedisError> = client
                .set::<(), _, _>(
                    self.keys.user_session(&id),
                    json,
                    Some(Expiration::EX(ttl)),
                    None,
                    false,
                )
                .await
                .map_err(Into::into);
            match stored {
                Ok(()) => {
                    self.tier.note(false, None);
                    return Ok((id, UserSessionView { session, store: Held::Redis }));
                }
                Err(error) => self.tier.failed(error)?,
            }
        }
        self.remember(&id, &session);
        Ok((id, UserSessionView { session, store: Held::Memory }))
    }

    fn remember(&self, id: &str, session: &UserSession) {
        let max = self.settings.memory_max_entries;
        let now = Utc::now();
        let mut memory = self.lock();
        memory.sessions.retain(|_, s| s.expires_at > now);
        while memory.sessions.len() >= max {
            let Some(oldest) = memory.order.pop_front() else { break };
            memory.sessions.remove(&oldest);
        }
        memory.sessions.insert(id.to_owned(), session.clone());
        memory.order.push_back(id.to_owned());
        let live = memory.sessions.len();
        if memory.order.len() > live.saturating_mul(2).max(64) {
            let Memory { sessions, order } = &mut *memory;
            order.retain(|id| sessions.contains_key(id));
        }
    }

    /// The session `id` names, if it exists and has not expired.
    #[tracing::instrument(name = "user_sessions.get", skip_all)]
    pub async fn get(&self, id: &str) -> Result<Option<UserSessionView>, CheckoutError> {
        if !valid_id(id) {
            return Ok(None);
        }
        if let Some(client) = &self.tier.client(&self.redis) {
            let found: Result<Option<String>, RedisError> =
                client.get(self.keys.user_session(id)).await.map_err(Into::into);
            match found {
                Ok(Some(json)) => {
                    self.tier.note(false, None);
                    let session: UserSession = serde_json::from_str(&json)?;
                    return Ok(Some(UserSessionView { session, store: Held::Redis }));
                }
                Ok(None) => self.tier.note(false, None),
                Err(error) => self.tier.failed(error)?,
            }
        }
        let now = Utc::now();
        let memory = self.lock();
        Ok(memory
            .sessions
            .get(id)
            .filter(|s| s.expires_at > now)
            .map(|session| UserSessionView { session: session.clone(), store: Held::Memory }))
    }

    /// Deletes the session from Redis and memory. Fails only when Redis errs for another reason
    /// than being unreachable.
    #[tracing::instrument(name = "user_sessions.delete", skip_all)]
    pub async fn delete(&self, id: &str) -> Result<(), CheckoutError> {
        if !valid_id(id) {
            return Ok(());
        }
        self.lock().sessions.remove(id);
        if let Some(client) = &self.tier.client(&self.redis) {
            let deleted: Result<i64, RedisError> =
                client.del(self.keys.user_session(id)).await.map_err(Into::into);
            if let Err(error) = deleted {
                self.tier.failed(error)?;
            }
        }
        Ok(())
    }
}

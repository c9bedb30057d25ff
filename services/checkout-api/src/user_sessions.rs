//! User and guest sessions (seed 001 "session management", seed 002 "user session tracking"):
//! a random id in an `HttpOnly; SameSite=Lax; Path=/` cookie (`Secure` configurable) pointing at
//! a small record in Redis ([`Keys::user_session`], `EX` = 24 h by default, absolute: reads do
//! not extend it). The record holds the kind (guest | user), the userId the trusted front end
//! named at login, and timestamps: nothing sensitive.
//!
//! Login rotates the id: the old session is deleted and a new id is issued, so an id fixed
//! before login is worthless after it. There is no authentication here; login is an admin /
//! service-token route for the front end that authenticated the user.
//!
//! **Fallback.** While Redis is unreachable, sessions are kept in a bounded in-process map (the
//! oldest is evicted when full). The switch is logged once each way and reported by both health
//! routes. As seed 001 warns, such sessions live on one replica and die with the process; reads
//! try Redis and then this map, so they keep working on the replica that created them until
//! they expire.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use actix_web::HttpRequest;
use actix_web::http::header::COOKIE;
use chrono::{DateTime, Utc};
use platform_redis::fred::prelude::*;
use platform_redis::fred::types::Expiration;
use platform_redis::{Keys, RedisError, RolePool};
use serde::{Deserialize, Serialize};

use crate::error::CheckoutError;
use crate::fallback::TierSwitch;
use crate::metrics::CheckoutMetrics;

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

/// Guest or signed-in user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionKind {
    Guest,
    User,
}

/// What is stored for one session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserSession {
    pub kind: SessionKind,
    pub user_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// Where a session is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Held {
    Redis,
    Memory,
}

/// The response body of the session routes (never the id: it lives in the HttpOnly cookie).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UserSessionView {
    #[serde(flatten)]
    pub session: UserSession,
    pub store: Held,
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
        metrics: CheckoutMetrics,
    ) -> Self {
        Self {
            redis,
            keys,
            settings,
            memory: Arc::new(Mutex::new(Memory::default())),
            tier: TierSwitch::new("user sessions", "memory", metrics.user_session_fallback()),
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

    /// The session id from the request's cookie, if any.
    pub fn id_from(&self, request: &HttpRequest) -> Option<String> {
        let name = &self.settings.cookie_name;
        request
            .headers()
            .get_all(COOKIE)
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.trim().to_owned())
    }

    /// `Set-Cookie` value carrying `id`.
    pub fn cookie(&self, id: &str) -> String {
        let secure = if self.settings.cookie_secure { "; Secure" } else { "" };
        format!(
            "{}={id}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}{secure}",
            self.settings.cookie_name, self.settings.ttl_secs
        )
    }

    /// `Set-Cookie` value that removes the cookie.
    pub fn clearing_cookie(&self) -> String {
        let secure = if self.settings.cookie_secure { "; Secure" } else { "" };
        format!("{}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0{secure}", self.settings.cookie_name)
    }
}

/// 64 hex characters (two v4 UUIDs: 244 random bits).
fn new_id() -> String {
    format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}

/// Ids this service could have issued; anything else is not looked up.
fn valid_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Checks a userId named at login.
pub fn check_user_id(user_id: &str) -> Result<(), CheckoutError> {
    if user_id.trim().is_empty() || user_id.len() > 200 || user_id.chars().any(char::is_control) {
        return Err(CheckoutError::invalid(
            "invalid_user_id",
            "userId must be 1 to 200 bytes without control characters",
        ));
    }
    Ok(())
}

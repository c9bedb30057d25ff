//! Where checkout sessions live: Redis first, Postgres when Redis is unreachable. Both tiers fulfil one contract ([`SessionTier`]); [`SessionStore`] puts
//! the first in front of the second and switches between them with a [`TierSwitch`].
//!
//! - **Redis tier** ([`RedisSessions`]): the record with its TTL, an expiry index and counters.
//! - **Postgres tier** (`db::sessions`). When no sessions-pool connection is up, or a Redis
//!   command fails because Redis cannot be reached, creates go to `checkout_sessions` (sliding
//!   `expires_at`) and its counters to `checkout_stats`. Reads try Redis, then Postgres, so a
//!   session is found wherever it was written: sessions created during an outage stay in Postgres
//!   until they expire while new ones go to Redis again as soon as it is back (migration without
//!   downtime). Updates go to the tier that holds the session. A session held by Redis is not
//!   reachable while Redis is down (404 / 503): there is no copy elsewhere.
//! - No in-memory tier: a replica-local copy would make a session appear and vanish depending on
//!   which replica serves the request, and Postgres already covers a Redis outage.

mod redis;

use std::collections::HashMap;
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use uuid::Uuid;

pub use self::redis::RedisSessions;
use crate::domain::session_store::{
    CleanupReport, Replaced, SessionPage, SessionTier, StatField, Stats, TierError, Write,
};
use crate::domain::sessions::{SessionRecord, Tier};
use crate::error::CheckoutError;
use crate::store::tier::TierSwitch;

/// `primary` first, `fallback` while it is unreachable. Cheap to clone when both tiers are.
#[derive(Debug, Clone)]
pub struct SessionStore<P, F> {
    primary: P,
    fallback: F,
    ttl: Duration,
    switch: TierSwitch,
}

impl<P: SessionTier, F: SessionTier> SessionStore<P, F> {
    /// A store over two tiers keeping sessions for `ttl`; `gauge` is 1 while on the fallback.
    pub fn new(primary: P, fallback: F, ttl: Duration, gauge: Gauge) -> Self {
        let switch = TierSwitch::new("checkout sessions", F::TIER.as_str(), gauge);
        Self { primary, fallback, ttl, switch }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// True while the primary tier cannot take requests: new sessions go to the fallback.
    pub fn in_fallback(&self) -> bool {
        !self.primary.reachable()
    }

    /// Stores a new session; returns the tier that took it.
    #[tracing::instrument(name = "sessions.create", skip_all, fields(session_id = %record.id))]
    pub async fn create(
        &self,
        record: &SessionRecord,
        latency_us: u64,
    ) -> Result<Tier, CheckoutError> {
        let json = serde_json::to_string(record)?;
        let write = Write { record, json: &json, latency_us };
        match self.primary.create(write).await {
            Ok(()) => {
                self.switch.note(false, None);
                return Ok(P::TIER);
            }
            Err(error) => self.switch.failed(error)?,
        }
        self.fallback.create(write).await.map_err(TierError::into_error)?;
        Ok(F::TIER)
    }

    /// The session and its tier, extending its TTL; `None` when it does not exist or expired.
    pub async fn get(&self, id: Uuid) -> Result<Option<(SessionRecord, Tier)>, CheckoutError> {
        match self.get_json(id).await? {
            Some((json, tier)) => Ok(Some((serde_json::from_str(&json)?, tier))),
            None => Ok(None),
        }
    }

    /// The stored JSON of the session (as [`get`](Self::get), undecoded) and its tier.
    #[tracing::instrument(name = "sessions.get", skip(self))]
    pub async fn get_json(&self, id: Uuid) -> Result<Option<(String, Tier)>, CheckoutError> {
        match self.primary.get_json(id).await {
            Ok(found) => {
                self.switch.note(false, None);
                if let Some(json) = found {
                    return Ok(Some((json, P::TIER)));
                }
            }
            Err(error) => self.switch.failed(error)?,
        }
        // Boxed: the fallback's query future would otherwise be carried inline in every read's.
        let json = Box::pin(self.fallback.get_json(id)).await.map_err(TierError::into_error)?;
        Ok(json.map(|json| (json, F::TIER)))
    }

    /// Writes `record` over the stored session (in `tier`) if its version is still
    /// `expected_version`.
    #[tracing::instrument(name = "sessions.replace", skip(self, record), fields(session_id = %record.id))]
    pub async fn replace(
        &self,
        tier: Tier,
        record: &SessionRecord,
        expected_version: u64,
        stat: Option<StatField>,
        latency_us: u64,
    ) -> Result<Replaced, CheckoutError> {
        let json = serde_json::to_string(record)?;
        let write = Write { record, json: &json, latency_us };
        let replaced = if tier == P::TIER {
            self.primary.replace(write, expected_version, stat).await
        } else {
            self.fallback.replace(write, expected_version, stat).await
        };
        replaced.map_err(TierError::into_error)
    }

    /// Counters of both tiers. Fails only when neither can be read.
    pub async fn stats(&self) -> Result<Stats, CheckoutError> {
        let primary = match self.primary.counters().await {
            Ok(counts) => Some(counts),
            Err(error) => {
                self.switch.failed(error)?;
                None
            }
        };
        let fallback = match self.fallback.counters().await.map_err(TierError::into_error) {
            Ok(counts) => counts,
            Err(error) if primary.is_some() => {
                tracing::warn!(error = %platform_service::error::error_chain(&error), "postgres checkout counters unreadable; stats from redis only");
                HashMap::new()
            }
            Err(error) => return Err(error),
        };
        Ok(Stats::from_counters(primary.as_ref(), &fallback))
    }

    /// Live (not expired) sessions in both tiers; a tier that cannot be read counts 0.
    pub async fn live_count(&self) -> u64 {
        let mut count = 0;
        match self.primary.live_count().await {
            Ok(n) => count += n,
            Err(TierError::Unreachable(None)) => self.switch.note(true, None),
            Err(error) => {
                tracing::debug!(error = ?error, "cannot count redis sessions");
            }
        }
        match self.fallback.live_count().await {
            Ok(n) => count += n,
            Err(error) => tracing::debug!(error = ?error, "cannot count postgres sessions"),
        }
        count
    }

    /// Removes index entries of expired Redis sessions and expired Postgres rows.
    #[tracing::instrument(name = "sessions.cleanup_expired", skip(self))]
    pub async fn cleanup_expired(&self) -> Result<CleanupReport, CheckoutError> {
        let mut report = CleanupReport::default();
        let mut primary_ok = false;
        match self.primary.remove_expired().await {
            Ok(removed) => {
                report.redis_index_entries_removed = removed;
                primary_ok = true;
            }
            Err(error) => self.switch.failed(error)?,
        }
        match self.fallback.remove_expired().await.map_err(TierError::into_error) {
            Ok(removed) => report.postgres_sessions_removed = removed,
            Err(error) if primary_ok => {
                tracing::warn!(error = %platform_service::error::error_chain(&error), "expired postgres sessions not removed");
            }
            Err(error) => return Err(error),
        }
        tracing::info!(
            redis_index_entries_removed = report.redis_index_entries_removed,
            postgres_sessions_removed = report.postgres_sessions_removed,
            "expired checkout sessions cleaned up"
        );
        Ok(report)
    }

    /// One page of live sessions: Redis' first (by expiry), then Postgres'. `cursor` is what the
    /// previous page returned (`r:<offset>` or `p:<offset>`). Offsets move when sessions are
    /// read or expire meanwhile, so a page may repeat or skip one; fine for an admin listing.
    pub async fn list(
        &self,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<SessionPage, CheckoutError> {
        let (on_primary, offset) = parse_cursor(cursor)?;
        let limit_i = i64::try_from(limit).unwrap_or(100);
        if !on_primary {
            return self.list_fallback(offset, limit).await;
        }
        let (mut sessions, entries) = match self.primary.list(offset, limit_i).await {
            Ok(found) => found,
            Err(error) => {
                self.switch.failed(error)?;
                return self.list_fallback(0, limit).await;
            }
        };
        if entries == limit {
            // (Entries whose key expired since the index read are skipped, so a page can be short.)
            return Ok(SessionPage {
                sessions,
                next_cursor: Some(format!("r:{}", offset + limit_i)),
            });
        }
        // The primary is exhausted: fill the page from the fallback.
        let mut rest = self.list_fallback(0, limit - sessions.len()).await?;
        sessions.append(&mut rest.sessions);
        Ok(SessionPage { sessions, next_cursor: rest.next_cursor })
    }

    async fn list_fallback(&self, offset: i64, limit: usize) -> Result<SessionPage, CheckoutError> {
        let limit_i = i64::try_from(limit).unwrap_or(100);
        let (sessions, _) =
            self.fallback.list(offset, limit_i).await.map_err(TierError::into_error)?;
        let next_cursor = (sessions.len() == limit).then(|| format!("p:{}", offset + limit_i));
        Ok(SessionPage { sessions, next_cursor })
    }
}

fn parse_cursor(cursor: Option<&str>) -> Result<(bool, i64), CheckoutError> {
    let Some(cursor) = cursor.filter(|c| !c.is_empty()) else {
        return Ok((true, 0));
    };
    let bad = || {
        CheckoutError::invalid("invalid_cursor", "cursor must be a value returned as nextCursor")
    };
    let (tier, offset) = cursor.split_once(':').ok_or_else(bad)?;
    let offset: i64 = offset.parse().map_err(|_| bad())?;
    if offset < 0 {
        return Err(bad());
    }
    match tier {
        "r" => Ok((true, offset)),
        "p" => Ok((false, offset)),
        _ => Err(bad()),
    }
}

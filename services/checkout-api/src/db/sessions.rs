//! The Postgres tier of checkout sessions ([`PgSessions`]): `checkout_sessions` rows with a
//! sliding `expires_at`, counters in `checkout_stats`. The Redis-first store turns to it while
//! Redis is unreachable.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::domain::session_store::{
    ListedSession, Replaced, SessionTier, StatField, TierError, Write,
};
use crate::domain::sessions::Tier;

/// Checkout sessions in Postgres. Cheap to clone.
#[derive(Debug, Clone)]
pub struct PgSessions {
    db: PgPool,
    ttl: Duration,
}

impl PgSessions {
    pub fn new(db: PgPool, ttl: Duration) -> Self {
        Self { db, ttl }
    }

    fn ttl_secs(&self) -> f64 {
        self.ttl.as_secs_f64()
    }
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl SessionTier for PgSessions {
    const TIER: Tier = Tier::Postgres;

    fn reachable(&self) -> bool {
        true
    }

    async fn create(&self, write: Write<'_>) -> Result<(), TierError> {
        let record = write.record;
        let mut tx = self.db.begin().await?;
        sqlx::query(
            "INSERT INTO checkout_sessions (id, record, version, status, expires_at) \
             VALUES ($1, $2::jsonb, $3, $4, now() + make_interval(secs => $5))",
        )
        .bind(record.id)
        .bind(write.json)
        .bind(to_i64(record.version))
        .bind(record.status.as_str())
        .bind(self.ttl_secs())
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE checkout_stats SET total_created = total_created + 1, \
               create_count = create_count + 1, create_us = create_us + $1 WHERE id = 1",
        )
        .bind(to_i64(write.latency_us))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_json(&self, id: Uuid) -> Result<Option<String>, TierError> {
        Ok(sqlx::query_scalar(
            "UPDATE checkout_sessions SET expires_at = now() + make_interval(secs => $2) \
             WHERE id = $1 AND expires_at > now() RETURNING record::text",
        )
        .bind(id)
        .bind(self.ttl_secs())
        .fetch_optional(&self.db)
        .await?)
    }

    async fn replace(
        &self,
        write: Write<'_>,
        expected_version: u64,
        stat: Option<StatField>,
    ) -> Result<Replaced, TierError> {
        let record = write.record;
        let mut tx = self.db.begin().await?;
        let updated = sqlx::query(
            "UPDATE checkout_sessions SET record = $2::jsonb, version = $3, status = $4, \
               expires_at = now() + make_interval(secs => $5), updated_at = now() \
             WHERE id = $1 AND version = $6 AND expires_at > now()",
        )
        .bind(record.id)
        .bind(write.json)
        .bind(to_i64(record.version))
        .bind(record.status.as_str())
        .bind(self.ttl_secs())
        .bind(to_i64(expected_version))
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 0 {
            let exists: Option<i64> = sqlx::query_scalar(
                "SELECT version FROM checkout_sessions WHERE id = $1 AND expires_at > now()",
            )
            .bind(record.id)
            .fetch_optional(&mut *tx)
            .await?;
            return Ok(if exists.is_some() { Replaced::Conflict } else { Replaced::Gone });
        }
        sqlx::query(
            "UPDATE checkout_stats SET \
               total_completed = total_completed + CASE WHEN $1 = 'completed' THEN 1 ELSE 0 END, \
               total_failed = total_failed + CASE WHEN $1 = 'failed' THEN 1 ELSE 0 END, \
               update_count = update_count + 1, update_us = update_us + $2 WHERE id = 1",
        )
        .bind(match stat {
            Some(StatField::Completed) => "completed",
            Some(StatField::Failed) => "failed",
            None => "",
        })
        .bind(to_i64(write.latency_us))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Replaced::Done)
    }

    async fn counters(&self) -> Result<HashMap<String, i64>, TierError> {
        let row: (i64, i64, i64, i64, i64, i64, i64) = sqlx::query_as(
            "SELECT total_created, total_completed, total_failed, create_count, create_us, \
               update_count, update_us FROM checkout_stats WHERE id = 1",
        )
        .fetch_one(&self.db)
        .await?;
        Ok(HashMap::from([
            ("totalCreated".to_owned(), row.0),
            ("totalCompleted".to_owned(), row.1),
            ("totalFailed".to_owned(), row.2),
            ("createCount".to_owned(), row.3),
            ("createMicros".to_owned(), row.4),
            ("updateCount".to_owned(), row.5),
            ("updateMicros".to_owned(), row.6),
        ]))
    }

    async fn live_count(&self) -> Result<u64, TierError> {
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM checkout_sessions WHERE expires_at > now()")
                .fetch_one(&self.db)
                .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn remove_expired(&self) -> Result<u64, TierError> {
        let deleted = sqlx::query("DELETE FROM checkout_sessions WHERE expires_at <= now()")
            .execute(&self.db)
            .await?;
        Ok(deleted.rows_affected())
    }

    async fn list(
        &self,
        offset: i64,
        limit: i64,
    ) -> Result<(Vec<ListedSession>, usize), TierError> {
        let rows: Vec<(String, DateTime<Utc>)> = sqlx::query_as(
            "SELECT record::text, expires_at FROM checkout_sessions WHERE expires_at > now() \
             ORDER BY expires_at, id OFFSET $1 LIMIT $2",
        )
        .bind(offset)
        .bind(limit)
        .fetch_all(&self.db)
        .await?;
        let sessions = rows
            .into_iter()
            .map(|(json, expires_at)| {
                let record = serde_json::from_str(&json)?;
                Ok(ListedSession { record, expires_at, store: Tier::Postgres })
            })
            .collect::<Result<Vec<_>, TierError>>()?;
        let entries = sessions.len();
        Ok((sessions, entries))
    }
}

//! Keeps the rate limiter's organisations current in every replica: all of them from Postgres at
//! start and every `reload` (which also covers a stream Redis lost), and each change as its
//! `organisation_changed` entry reaches the organisation stream, read without a consumer group so
//! every replica sees every entry.

use std::time::Duration;

use platform_redis::messages::OrganisationEvent;
use platform_redis::ratelimit::RateLimiter;
use platform_redis::streams::StreamTail;
use platform_redis::{RedisClients, StreamName};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::db;

/// The rate-limit identifier of an organisation on the public routes.
pub fn identifier(slug: &str) -> String {
    ["org:", slug].concat()
}

/// Runs until `stop`: a full load, then the stream's changes until the next full load.
pub fn spawn(
    db: PgPool,
    redis: RedisClients,
    limiter: RateLimiter,
    reload: Duration,
    stop: CancellationToken,
) {
    tokio::spawn(async move {
        while !stop.is_cancelled() {
            if let Err(error) = follow(&db, &redis, &limiter, reload, &stop).await {
                tracing::warn!(%error, "organisation rate limits not refreshed; retrying");
                tokio::select! {
                    () = stop.cancelled() => {}
                    () = tokio::time::sleep(RETRY) => {}
                }
            }
        }
    });
}

/// The pause after a failed round.
const RETRY: Duration = Duration::from_secs(2);

/// One round: position on the stream first (so nothing committed during the load is missed),
/// load every organisation, then apply changes until `reload` has passed. Without Redis the load
/// still happens (a replica starting during a Redis outage limits by tier from the start).
async fn follow(
    db: &PgPool,
    redis: &RedisClients,
    limiter: &RateLimiter,
    reload: Duration,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let tail =
        tokio::time::timeout(RETRY, StreamTail::start(redis, StreamName::OrganisationEvents))
            .await
            .map_err(|_| anyhow::anyhow!("redis did not answer within {RETRY:?}"))
            .and_then(|started| Ok(started?));
    for (slug, tier, per_minute) in db::organisations::limits(db).await? {
        limiter.set_organisation(&identifier(&slug), &tier, per_minute);
    }
    let mut tail = tail?;
    let until = tokio::time::Instant::now() + reload;
    let followed = async {
        while tokio::time::Instant::now() < until && !stop.is_cancelled() {
            let read = tokio::select! {
                () = stop.cancelled() => break,
                read = tail.next::<OrganisationEvent>(100, Duration::from_secs(1)) => read,
            };
            for event in read? {
                if let OrganisationEvent::OrganisationChanged(org) = event {
                    let per_minute = org.overrides.api_requests_per_minute;
                    limiter.set_organisation(&identifier(&org.slug), &org.tier, per_minute);
                }
            }
        }
        Ok::<(), platform_redis::RedisError>(())
    }
    .await;
    tail.close().await;
    Ok(followed?)
}

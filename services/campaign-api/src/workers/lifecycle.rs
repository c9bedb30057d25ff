//! The campaign lifecycle ticker: notices campaigns starting and ending, invalidates their
//! organisation's cache and announces the ends.

use std::time::Duration;

use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::db;
use crate::store::pages::Pages;
use crate::store::updates;

/// Every `every`: campaigns that started or ended since the last tick (claimed in Postgres, so
/// each transition is handled by one replica once) get their organisation's cache invalidated,
/// and ended ones a `campaign_ended` update.
pub fn spawn_lifecycle(
    db: PgPool,
    pages: Pages,
    redis: platform_redis::RedisClients,
    every: Duration,
    stop: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            match db::claim_started(&db).await {
                Ok(started) => {
                    for campaign in started {
                        tracing::info!(campaign_id = %campaign.id, "campaign started");
                        pages.invalidate_org(&campaign.org_slug).await;
                    }
                }
                Err(error) => tracing::debug!(%error, "lifecycle tick: start check failed"),
            }
            match db::claim_ended(&db).await {
                Ok(ended) => {
                    for campaign in ended {
                        tracing::info!(campaign_id = %campaign.id, "campaign ended");
                        pages.invalidate_org(&campaign.org_slug).await;
                        updates::announce_ended(&redis, campaign.id).await;
                    }
                }
                Err(error) => tracing::debug!(%error, "lifecycle tick: end check failed"),
            }
        }
    })
}

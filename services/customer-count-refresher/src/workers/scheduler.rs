//! The in-process refresh schedule: a refresh at start when nothing is stored, then one per cron
//! tick with this replica's jitter, until shutdown.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::domain::refresh::Refresher;
use crate::domain::schedule::jitter;
use crate::error::RefreshError;

/// The in-process schedule: a refresh at start when the cache is empty, then one per cron
/// tick (plus this replica's jitter), until `stop` is cancelled. Replicas that lose the race
/// for the lock skip the tick.
pub async fn run(refresher: Arc<Refresher>, stop: CancellationToken) {
    if refresher.settings().refresh_when_empty {
        let pause = jitter(Duration::from_secs(refresher.settings().schedule_jitter_secs.min(5)));
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
        if refresher.refresh_if_empty().await {
            tracing::info!("no customer count stored; refreshing at start");
        }
    }
    if !refresher.settings().schedule_enabled {
        return;
    }
    loop {
        let now = Utc::now();
        let Some(next) = refresher.schedule().next_after(now) else {
            tracing::warn!("the refresh schedule has no future tick; scheduler stops");
            return;
        };
        let wait = (next - now).to_std().unwrap_or(Duration::ZERO)
            + jitter(Duration::from_secs(refresher.settings().schedule_jitter_secs));
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        match refresher.refresh().await {
            Ok(_) => {}
            Err(RefreshError::InProgress) => {
                tracing::info!("another replica is refreshing; skipping this tick");
            }
            Err(_) => {} // already logged, counted and recorded
        }
    }
}

//! The retry of owed cache invalidations: those that failed while Redis was unreachable are
//! tried again every second until they succeed.

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::store::pages::Pages;

/// How often failed invalidations are retried.
const REPAIR_EVERY: Duration = Duration::from_secs(1);

/// Retries failed invalidations until `stop`.
pub fn spawn_repair(pages: &Pages, stop: CancellationToken) -> JoinHandle<()> {
    let pages = pages.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(REPAIR_EVERY);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            pages.retry_owed_invalidations().await;
        }
    })
}

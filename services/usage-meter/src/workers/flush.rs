//! The flusher's loop: runs the check-restore-flush cycle ([`Flusher::tick`]) every
//! `flush_interval_ms` until shutdown, then once more after the stream consumer stopped.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::domain::flush::Flusher;

/// Ticks every `interval` until `cancel` fires; then waits for `before_final` (the consumer)
/// to finish and ticks once more.
pub async fn run(
    flusher: Flusher,
    interval: Duration,
    cancel: CancellationToken,
    before_final: impl Future<Output = ()>,
) {
    let attempt = |flusher: Flusher| async move {
        if let Err(error) = flusher.tick().await {
            let chain = platform_service::error::error_chain(&error);
            tracing::warn!(error = %chain, "copying usage counters to postgres failed; retrying next interval");
        }
    };
    // Reads every `interval` (not `interval` after the last one ended): the loss bound.
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            _ = ticker.tick() => attempt(flusher.clone()).await,
        }
    }
    before_final.await;
    attempt(flusher).await;
    tracing::info!("final usage flush done");
}

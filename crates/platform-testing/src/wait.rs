//! Waiting in tests for what happens in the background (a consumer, a subscription, a refill).

use std::future::Future;
use std::time::Duration;

/// How long [`eventually`] waits before it fails the test: long enough for a loaded CI machine,
/// and only ever spent by a test that fails anyway.
const PATIENCE: Duration = Duration::from_secs(60);

/// Polls `condition` every 25 ms until it holds; panics naming `what` after a minute.
pub async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !condition().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

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

/// Polls `check` every 25 ms for at most `within`; true once it held, false if it never did (for
/// a test that asserts on the outcome itself, or expects it not to happen).
pub async fn holds_within<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    found_within(within, || {
        let held = check();
        async move { held.await.then_some(()) }
    })
    .await
    .is_some()
}

/// Polls `check` every 25 ms for at most `within`; the first value it gives, or `None`.
pub async fn found_within<T, F, Fut>(within: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(found) = check().await {
            return Some(found);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

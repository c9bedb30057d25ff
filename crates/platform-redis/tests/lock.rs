//! The distributed lock against a real Redis: exclusion, token-checked release and renewal,
//! background renewal past the TTL, and increasing fencing numbers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use platform_redis::lock::{Lock, current_fence};
use platform_redis::{RedisClients, RedisSettings};
use platform_testing::{RedisServer, unique_prefix};

async fn clients(test: &str) -> RedisClients {
    let server = RedisServer::shared();
    RedisClients::connect(&RedisSettings::for_url(&server.url(), &unique_prefix(test)))
        .await
        .expect("connect")
}

#[tokio::test]
async fn a_second_holder_cannot_acquire_a_held_lock() {
    // Arrange
    let clients = clients("lock-exclusive").await;
    let first = Lock::acquire(&clients, "job", Duration::from_secs(10)).await.unwrap();

    // Act
    let second = Lock::acquire(&clients, "job", Duration::from_secs(10)).await.unwrap();
    let waited = Lock::acquire_with_wait(
        &clients,
        "job",
        Duration::from_secs(10),
        Duration::from_millis(150),
    )
    .await
    .unwrap();

    // Assert
    assert!(first.is_some());
    assert!(second.is_none());
    assert!(waited.is_none());
}

#[tokio::test]
async fn a_released_lock_can_be_taken_by_the_next_holder() {
    // Arrange
    let clients = clients("lock-release").await;
    let first = Lock::acquire(&clients, "job", Duration::from_secs(10)).await.unwrap().unwrap();

    // Act
    let released = first.release().await.unwrap();
    let second = Lock::acquire(&clients, "job", Duration::from_secs(10)).await.unwrap();

    // Assert
    assert!(released);
    assert!(second.is_some());
}

#[tokio::test]
async fn a_waiter_gets_the_lock_once_the_holder_releases_it() {
    // Arrange
    let clients = clients("lock-wait").await;
    let holder = Lock::acquire(&clients, "job", Duration::from_secs(10)).await.unwrap().unwrap();
    let waiter = {
        let clients = clients.clone();
        tokio::spawn(async move {
            Lock::acquire_with_wait(
                &clients,
                "job",
                Duration::from_secs(10),
                Duration::from_secs(10),
            )
            .await
        })
    };

    // Act
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(holder.release().await.unwrap());
    let acquired = waiter.await.unwrap().unwrap();

    // Assert
    assert!(acquired.is_some());
}

#[tokio::test]
async fn a_stale_owner_cannot_release_or_renew_the_new_owners_lock() {
    // Arrange: the first lease expires and someone else takes the lock.
    let clients = clients("lock-stale").await;
    let stale = Lock::acquire(&clients, "job", Duration::from_millis(50)).await.unwrap().unwrap();
    let new_owner = loop {
        if let Some(guard) = Lock::acquire(&clients, "job", Duration::from_secs(10)).await.unwrap()
        {
            break guard;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    // Act
    let renewed = stale.renew(Duration::from_secs(10)).await.unwrap();
    let released = stale.release().await.unwrap();
    let third = Lock::acquire(&clients, "job", Duration::from_secs(10)).await.unwrap();

    // Assert: the new owner still holds it, with its own token.
    assert!(!renewed);
    assert!(!released);
    assert!(third.is_none());
    let stored: Option<String> = {
        use platform_redis::fred::prelude::*;
        clients.primary().get(clients.keys().lock("job")).await.unwrap()
    };
    assert_eq!(stored.as_deref(), Some(new_owner.token()));
    assert!(new_owner.renew(Duration::from_secs(10)).await.unwrap());
}

#[tokio::test]
async fn background_renewal_keeps_the_lock_past_its_original_ttl() {
    // Arrange
    let clients = clients("lock-renewal").await;
    let ttl = Duration::from_millis(300);
    let guard = Lock::acquire(&clients, "job", ttl).await.unwrap().unwrap();
    let renewal = guard.spawn_renewal(Duration::from_millis(100), ttl);

    // Act: hold for more than three original TTLs.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let other = Lock::acquire(&clients, "job", ttl).await.unwrap();

    // Assert
    assert!(other.is_none());
    assert!(!renewal.is_lost());
    drop(renewal);
    assert!(guard.release().await.unwrap());
}

#[tokio::test]
async fn renewal_reports_the_lock_lost_when_someone_else_took_it() {
    // Arrange: the lease expires before the first renewal, and another holder takes it.
    let clients = clients("lock-lost").await;
    let guard = Lock::acquire(&clients, "job", Duration::from_millis(30)).await.unwrap().unwrap();
    let renewal = guard.spawn_renewal(Duration::from_millis(200), Duration::from_millis(30));
    let _other = loop {
        if let Some(g) = Lock::acquire(&clients, "job", Duration::from_secs(10)).await.unwrap() {
            break g;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };

    // Act
    tokio::time::timeout(Duration::from_secs(10), renewal.lost()).await.expect("loss reported");

    // Assert
    assert!(renewal.is_lost());
}

#[tokio::test]
async fn fence_numbers_increase_with_every_acquisition() {
    // Arrange
    let clients = clients("lock-fence").await;
    assert_eq!(current_fence(&clients, "job").await.unwrap(), 0);
    let mut fences = Vec::new();

    // Act
    for _ in 0..5 {
        let guard = Lock::acquire(&clients, "job", Duration::from_secs(10)).await.unwrap().unwrap();
        fences.push(guard.fence());
        assert!(guard.is_fence_current().await.unwrap());
        guard.release().await.unwrap();
    }
    let older = Lock::acquire(&clients, "job", Duration::from_secs(10)).await.unwrap().unwrap();
    let older_fence = older.fence();
    older.release().await.unwrap();
    let newer = Lock::acquire(&clients, "job", Duration::from_secs(10)).await.unwrap().unwrap();

    // Assert
    assert!(fences.windows(2).all(|w| w[0] < w[1]), "fences {fences:?}");
    assert!(older_fence < newer.fence());
    assert!(newer.is_fence_current().await.unwrap());
    assert_eq!(current_fence(&clients, "job").await.unwrap(), newer.fence());
}

#[tokio::test]
async fn a_dropped_guard_releases_its_lock() {
    // Arrange
    let clients = clients("lock-drop").await;
    let guard = Lock::acquire(&clients, "job", Duration::from_secs(60)).await.unwrap().unwrap();

    // Act
    drop(guard);
    let next =
        Lock::acquire_with_wait(&clients, "job", Duration::from_secs(10), Duration::from_secs(5))
            .await
            .unwrap();

    // Assert
    assert!(next.is_some());
}

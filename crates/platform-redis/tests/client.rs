//! Worker connections: a thread bound with `bind_worker` gets pools of its own, driven by its own
//! runtime; every other thread keeps the shared ones.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use fred::prelude::*;
use platform_redis::{RedisClients, RedisSettings, Role};
use platform_testing::{RedisServer, unique_prefix};

async fn connect(url: &str, worker_connections: usize) -> RedisClients {
    let mut settings = RedisSettings::for_url(url, &unique_prefix("client"));
    settings.worker_connections = worker_connections;
    RedisClients::connect(&settings).await.unwrap()
}

fn shared_ids(clients: &RedisClients) -> Vec<String> {
    clients.role(Role::Primary).shared().clients().iter().map(|c| c.id().to_owned()).collect()
}

/// Runs `work` on a new thread with a single-threaded runtime of its own, as an HTTP worker has,
/// while this test's runtime (which drives the shared pool) keeps running.
async fn on_worker_thread<F, Fut, T>(clients: &RedisClients, work: F) -> T
where
    F: FnOnce(RedisClients) -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    let clients = clients.clone();
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let value = runtime.block_on(async move {
            clients.bind_worker().unwrap();
            work(clients).await
        });
        let _ = done.send(value);
    });
    result.await.expect("the worker thread panicked")
}

/// The id of the client `clients.primary()` hands out once the thread's own pool is up (or after
/// two seconds, whatever it hands out then), and whether a SET / GET through it round-trips.
async fn own_client_id(clients: RedisClients) -> (String, bool) {
    let shared = shared_ids(&clients);
    for _ in 0..200 {
        let id = clients.primary().next().id().to_owned();
        if !shared.contains(&id) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let pool = clients.primary();
    let client = pool.next_connected();
    let key = clients.keys().lock("worker-probe");
    let () = client.set(&key, "ok", None, None, false).await.unwrap();
    let read: Option<String> = client.get(&key).await.unwrap();
    (client.id().to_owned(), read.as_deref() == Some("ok"))
}

#[tokio::test]
async fn a_bound_worker_thread_uses_connections_of_its_own_and_others_the_shared_pool() {
    // Arrange
    let clients = connect(&RedisServer::shared().url(), 1).await;
    let shared = shared_ids(&clients);

    // Act
    let (worker_id, round_trip) = on_worker_thread(&clients, own_client_id).await;
    let (other_worker_id, _) = on_worker_thread(&clients, own_client_id).await;
    let here = clients.primary().next().id().to_owned();
    let cache_here = clients.cache().next().id().to_owned();

    // Assert
    assert!(round_trip, "a command through the worker's own pool did not round-trip");
    assert!(!shared.contains(&worker_id), "the bound thread still used the shared pool");
    assert_ne!(worker_id, other_worker_id, "two workers shared one connection");
    assert!(shared.contains(&here), "an unbound thread left the shared pool");
    assert!(shared.contains(&cache_here), "the cache role (same endpoint) left the shared pool");
}

#[tokio::test]
async fn with_worker_connections_off_a_bound_thread_keeps_the_shared_pool() {
    // Arrange
    let clients = connect(&RedisServer::shared().url(), 0).await;
    let shared = shared_ids(&clients);

    // Act
    let (worker_id, round_trip) = on_worker_thread(&clients, own_client_id).await;

    // Assert
    assert!(round_trip);
    assert!(shared.contains(&worker_id), "worker_connections = 0 still built a worker pool");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_uses_the_shared_pool_while_its_own_is_down_and_its_own_again_once_back() {
    // Arrange: a private Redis, and a worker thread that reports which client it would use.
    let redis = RedisServer::start().unwrap();
    let clients = connect(&redis.url(), 1).await;
    let shared = shared_ids(&clients);
    let (ask, mut asked) = tokio::sync::mpsc::unbounded_channel::<()>();
    let (tell, mut told) = tokio::sync::mpsc::unbounded_channel::<(String, bool)>();
    let worker_clients = clients.clone();
    let worker = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            worker_clients.bind_worker().unwrap();
            while asked.recv().await.is_some() {
                let pool = worker_clients.primary();
                let client = pool.next();
                tell.send((client.id().to_owned(), client.is_connected())).unwrap();
            }
        });
    });
    let mut which = async || {
        ask.send(()).unwrap();
        told.recv().await.unwrap()
    };
    let mut own_when_up = false;
    for _ in 0..200 {
        let (id, _) = which().await;
        own_when_up = !shared.contains(&id);
        if own_when_up {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Act: Redis goes away, then comes back.
    redis.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (during, _) = which().await;
    redis.restart().unwrap();
    let mut own_again = false;
    for _ in 0..300 {
        let (id, connected) = which().await;
        own_again = !shared.contains(&id) && connected;
        if own_again {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(ask);
    worker.join().unwrap();

    // Assert
    assert!(own_when_up, "the worker never used its own pool");
    assert!(
        shared.contains(&during),
        "a worker without its own connection did not fall back to the shared pool"
    );
    assert!(own_again, "the worker's own pool did not reconnect");
}

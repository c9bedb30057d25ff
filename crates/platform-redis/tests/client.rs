//! Worker connections: a thread bound with `bind_worker` gets pools of its own, driven by its own
//! runtime, and a direct connection (`platform_redis::direct`); every other thread keeps the shared
//! ones.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use fred::prelude::*;
use platform_redis::{DirectConnection, RedisClients, RedisSettings, Reply, Role};
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

/// This thread's direct connection to the primary once it is up (waits up to three seconds).
async fn direct_when_up(clients: &RedisClients) -> Option<DirectConnection> {
    for _ in 0..300 {
        if let Some(direct) = clients.role(Role::Primary).direct() {
            return Some(direct);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

#[tokio::test]
async fn a_direct_connection_pipelines_requests_and_gives_each_its_own_replies() {
    // Arrange: 200 keys with distinct values, and one key of the wrong type.
    let clients = connect(&RedisServer::shared().url(), 1).await;
    let keys: Vec<String> = (0..200).map(|i| clients.keys().lock(&format!("direct-{i}"))).collect();
    for (i, key) in keys.iter().enumerate() {
        let () = clients.primary().set(key, i, None, None, false).await.unwrap();
    }
    let hash = clients.keys().lock("direct-hash");
    let () = clients.primary().hset(&hash, ("field", 1)).await.unwrap();

    // Act: every read at once, on a worker thread's direct connection.
    let (replies, wrong_type, nothing, after) =
        on_worker_thread(&clients, move |clients| async move {
            let direct =
                direct_when_up(&clients).await.expect("the direct connection never came up");
            let reads = keys.iter().map(|key| {
                let direct = direct.clone();
                async move {
                    direct
                        .request(&[
                            &[b"GET", key.as_bytes()],
                            &[b"PEXPIRE", key.as_bytes(), b"60000"],
                        ])
                        .await
                        .unwrap()
                }
            });
            let replies = futures::future::join_all(reads).await;
            let wrong_type = direct.request(&[&[b"GET", hash.as_bytes()]]).await.unwrap();
            let nothing = direct.request(&[]).await.unwrap();
            let after = direct.request(&[&[b"GET", keys[7].as_bytes()]]).await.unwrap();
            (replies, wrong_type, nothing, after)
        })
        .await;

    // Assert
    for (i, reply) in replies.iter().enumerate() {
        assert_eq!(
            reply,
            &vec![Reply::Bulk(Some(i.to_string().into())), Reply::Integer(1)],
            "read {i} got another read's replies"
        );
    }
    let ttl: i64 = clients.primary().pttl(clients.keys().lock("direct-3")).await.unwrap();
    assert!((1..=60_000).contains(&ttl), "PEXPIRE did not apply: PTTL {ttl}");
    assert!(
        matches!(&wrong_type[..], [Reply::Error(text)] if text.starts_with("WRONGTYPE")),
        "{wrong_type:?}"
    );
    assert!(nothing.is_empty());
    assert_eq!(
        after,
        vec![Reply::Bulk(Some("7".into()))],
        "an error reply or an empty request put the replies out of step"
    );
}

#[tokio::test]
async fn direct_evalsha_says_when_the_script_is_not_loaded_and_runs_it_once_it_is() {
    // Arrange
    let clients = connect(&RedisServer::shared().url(), 1).await;
    let script = fred::types::scripts::Script::from_lua(format!(
        "return {{tonumber(ARGV[1]) + 1, #KEYS, {}}}",
        rand_marker()
    ));
    let key = clients.keys().lock("direct-script");

    // Act
    let (before, after) = on_worker_thread(&clients, move |clients| async move {
        let direct = direct_when_up(&clients).await.expect("the direct connection never came up");
        let before = direct.evalsha(script.sha1(), &[&key], &[b"41"]).await.unwrap();
        let _: Vec<i64> = script
            .evalsha_with_reload(
                &clients.primary().next_connected().clone(),
                vec![key.clone()],
                vec![0],
            )
            .await
            .unwrap();
        let after = direct.evalsha(script.sha1(), &[&key], &[b"41"]).await.unwrap();
        (before, after.map(Reply::into_integers).transpose().unwrap())
    })
    .await;

    // Assert
    assert_eq!(before, None, "an unknown script was not reported as missing");
    assert_eq!(after.as_deref().map(|v| &v[..2]), Some(&[42, 1][..]));
}

/// A number no other run of this test has used, so each run's script is new to the server.
fn rand_marker() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
}

#[tokio::test]
async fn only_bound_threads_get_a_direct_connection_and_only_for_plain_single_node_endpoints() {
    // Arrange
    let plain = connect(&RedisServer::shared().url(), 1).await;
    let off = connect(&RedisServer::shared().url(), 0).await;
    let mut tls_settings = RedisSettings::for_url(
        &RedisServer::shared().url().replace("redis://", "rediss://"),
        &unique_prefix("client"),
    );
    tls_settings.connect_timeout_ms = 100;
    let tls = RedisClients::connect(&tls_settings).await.unwrap();

    // Act
    let unbound = plain.role(Role::Primary).direct().is_some();
    let bound =
        on_worker_thread(&plain, |c| async move { direct_when_up(&c).await.is_some() }).await;
    let with_off =
        on_worker_thread(&off, |c| async move { direct_when_up(&c).await.is_some() }).await;
    let with_tls =
        on_worker_thread(&tls, |c| async move { direct_when_up(&c).await.is_some() }).await;

    // Assert
    assert!(bound, "a bound worker got no direct connection");
    assert!(!unbound, "a thread that did not bind got a direct connection");
    assert!(!with_off, "worker_connections = 0 still gave a direct connection");
    assert!(!with_tls, "a TLS endpoint got a (plain TCP) direct connection");
}

#[tokio::test]
async fn the_direct_connection_logs_in_to_the_configured_database() {
    // Arrange: the same key in database 0 and database 3.
    let url = RedisServer::shared().url();
    let in_db0 = connect(&url, 1).await;
    let in_db3 = connect(&format!("{url}/3"), 1).await;
    let key = in_db0.keys().lock("direct-db");
    let () = in_db0.primary().set(&key, "zero", None, None, false).await.unwrap();
    let () = in_db3.primary().set(&key, "three", None, None, false).await.unwrap();

    // Act
    let read = on_worker_thread(&in_db3, move |clients| async move {
        let direct = direct_when_up(&clients).await.expect("the direct connection never came up");
        direct.request(&[&[b"GET", key.as_bytes()]]).await.unwrap()
    })
    .await;

    // Assert
    assert_eq!(read, vec![Reply::Bulk(Some("three".into()))]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_connection_fails_its_requests_when_redis_goes_and_reconnects_when_it_is_back() {
    // Arrange: a worker thread that reads through its direct connection whenever asked, and
    // reports the outcome (`Err(true)`: failed as unavailable).
    let redis = RedisServer::start().unwrap();
    let clients = connect(&redis.url(), 1).await;
    let key = clients.keys().lock("direct-outage");
    let (ask, mut asked) = tokio::sync::mpsc::unbounded_channel::<()>();
    let (tell, mut told) = tokio::sync::mpsc::unbounded_channel::<Result<Vec<Reply>, bool>>();
    let worker_clients = clients.clone();
    let worker = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            worker_clients.bind_worker().unwrap();
            let direct = direct_when_up(&worker_clients).await.expect("never up");
            while asked.recv().await.is_some() {
                // Asking for it again is what starts a reconnection once the backoff has passed.
                let _ = worker_clients.role(Role::Primary).direct();
                let read = direct.request(&[&[b"GET", key.as_bytes()]]).await;
                tell.send(read.map_err(|error| error.is_unavailable())).unwrap();
            }
        });
    });
    let mut read = async || {
        ask.send(()).unwrap();
        told.recv().await.unwrap()
    };
    let before = read().await;

    // Act: Redis goes away, then comes back.
    redis.stop();
    let during = read().await;
    redis.restart().unwrap();
    let mut after = read().await;
    for _ in 0..300 {
        if after.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        after = read().await;
    }
    drop(ask);
    worker.join().unwrap();

    // Assert
    assert_eq!(before, Ok(vec![Reply::Bulk(None)]));
    assert_eq!(during, Err(true), "a read with Redis gone did not fail as unavailable");
    assert_eq!(after, Ok(vec![Reply::Bulk(None)]), "the direct connection did not come back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_replies_in_time_fails_and_closes_the_direct_connection() {
    // Arrange: a short command timeout, and a server that will stop answering for a while.
    let redis = RedisServer::start().unwrap();
    let mut settings = RedisSettings::for_url(&redis.url(), &unique_prefix("client"));
    settings.command_timeout_ms = 200;
    let clients = RedisClients::connect(&settings).await.unwrap();
    let key = clients.keys().lock("direct-timeout");

    // Act: every client paused for a second while a worker reads directly.
    let outcome = on_worker_thread(&clients, move |clients| async move {
        let direct = direct_when_up(&clients).await.expect("the direct connection never came up");
        let pauser = clients.role(Role::Primary).shared().next_connected().clone();
        let () = pauser.custom(fred::cmd!("CLIENT"), vec!["PAUSE", "1000", "ALL"]).await.unwrap();
        let started = std::time::Instant::now();
        let failed =
            direct.request(&[&[b"GET", key.as_bytes()]]).await.map_err(|e| e.is_unavailable());
        let waited = started.elapsed();
        let closed = clients.role(Role::Primary).direct().is_none();
        let back = direct_when_up(&clients).await.is_some();
        (failed, waited, closed, back)
    })
    .await;

    // Assert
    let (failed, waited, closed, back) = outcome;
    assert_eq!(failed, Err(true), "a request past its timeout did not fail as unavailable");
    assert!(waited < Duration::from_millis(900), "the request waited for the pause to end");
    assert!(closed, "the connection stayed up after a timeout");
    assert!(back, "the direct connection did not come back");
}

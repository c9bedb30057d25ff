//! Test support: real `redis-server` and Postgres processes on free loopback ports.
//!
//! Tests never mock Redis or the database. A test binary shares one Redis ([`RedisServer::shared`])
//! and one Postgres cluster ([`PostgresServer::shared`]); each test isolates itself with its own key
//! prefix ([`unique_prefix`]) and its own database ([`PostgresServer::create_database`]). A test that
//! needs to stop or restart a server (fallback behaviour) starts a private one with
//! [`RedisServer::start`] and owns it. Tests of Redis Cluster safety share one real three-master
//! cluster per binary ([`RedisCluster::shared`], a `redis-cluster://` URL).
//!
//! Processes are started synchronously so they can live in a `OnceLock`. Statics are never
//! dropped, so every server also gets a watchdog shell process that kills it and removes its
//! directory once the test binary has exited, however it exited.
//!
//! [`fake_simpro`] is a local fake of simPRO's invoice list (paging headers, injected faults), also
//! runnable as the `fake-simpro` binary. [`fake_stripe`] is a local fake of the Stripe API
//! (customers, Checkout sessions, subscriptions, payment intents) for the real async-stripe client,
//! also runnable as the `fake-stripe` binary. [`otlp`] is a local OTLP/HTTP trace receiver that
//! keeps the spans services export, for tests of trace propagation.
//!
//! [`TestApp`] runs one service for a test, built from its settings on port 0 against those
//! servers ([`app`]); [`holds_within`] and [`eventually`] wait for what happens in the background,
//! and [`put_on_stripe_stream`] feeds a stream consumer.
//!
//! The suite is meant for `cargo test` (one process per test binary, so one server per binary).

pub mod app;
pub mod fake_simpro;
pub mod fake_stripe;
pub mod otlp;
mod postgres;
mod process;
mod redis;
mod redis_cluster;
mod serve;
mod streams;
mod wait;

pub use app::{TestApp, TestAppBuilder, TestService, http_client};
pub use fake_simpro::{FakeSimpro, FakeSimproConfig, Fault};
pub use fake_stripe::{FakeStripe, FakeStripeConfig, StripeFault, SubscriptionState};
pub use otlp::{OtlpReceiver, ReceivedSpan};
pub use postgres::{PostgresServer, TestDatabase};
pub use process::free_port;
pub use redis::RedisServer;
pub use redis_cluster::RedisCluster;
pub use streams::put_on_stripe_stream;
pub use wait::{eventually, found_within, holds_within};

/// A key prefix no other test uses, readable in `redis-cli MONITOR` output: `t-<test>-<random>`.
pub fn unique_prefix(test: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("t-{test}-{}", &id[..8])
}

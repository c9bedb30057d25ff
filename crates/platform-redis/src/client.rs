//! The Redis client factory: settings, connection pools per role, subscriber clients.
//!
//! A service gets one [`RedisClients`]: a primary pool and, when configured, separate
//! instances for the cache, rate limits and sessions, each falling back to the primary when not
//! set. Connections use RESP3, reconnect forever with capped exponential backoff, and fail a
//! command after `command_timeout_ms` so that callers reach their fallback quickly instead of
//! queueing behind a dead connection. Start-up never fails because Redis is down: the pools keep
//! reconnecting in the background and the health route says `fallback` until they succeed.
//!
//! ## Worker connections
//!
//! A fred connection is driven by tasks on the runtime that connected it. The shared pools are
//! connected on the service's main (multi-threaded) runtime, but actix-web runs handlers on its
//! own worker threads, each with a single-threaded runtime: every command from a handler then
//! crosses threads twice (handler → connection task, reply → handler), which cost a checkout
//! session read more CPU in futex wake-ups than Redis spent answering it. So each HTTP worker
//! calls [`RedisClients::bind_worker`] when it starts, which gives the worker thread
//! `redis.worker_connections` connections of its own per endpoint, driven by the worker's
//! runtime; [`RolePool::pool`] (and the role accessors) hand those out on that thread and the
//! shared pool everywhere else (stream consumers, background tasks, tests). Binding is explicit
//! rather than "on first use by any single-threaded runtime" because only a worker thread is
//! known to keep one runtime for its whole life: a pool bound to a runtime that has gone would
//! fail every command. The worker pools reconnect like the shared ones and close with the worker.
//!
//! A bound worker also gets, per plain-TCP single-node endpoint, a [`DirectConnection`]: a lean
//! pipelined connection for the few commands of a hot read ([`RolePool::direct`], see
//! [`crate::direct`]).

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fred::clients::SubscriberClient;
use fred::prelude::*;
use fred::types::RespVersion;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::direct::{DirectConnection, DirectEndpoint, DirectTimings};
use crate::error::{RedisError, Result};
use crate::keys::Keys;

/// Centralized (one primary) or Redis Cluster.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RedisMode {
    #[default]
    Centralized,
    Cluster,
}

/// Where one Redis instance is. Either `url` (`redis://`, `rediss://` for TLS,
/// `redis-cluster://` for a cluster's seed nodes), or the discrete `host` / `port` / `password` / `db` / `tls`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisEndpoint {
    #[serde(default)]
    pub url: Option<SecretString>,
    #[serde(default = "default_host")]
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<SecretString>,
    #[serde(default)]
    pub db: u8,
    #[serde(default)]
    pub tls: bool,
}

/// The `[redis]` section of every service's configuration.
#[derive(Clone, Debug, Deserialize)]
pub struct RedisSettings {
    #[serde(flatten)]
    pub primary: RedisEndpoint,
    #[serde(default)]
    pub mode: RedisMode,
    /// First segment of every key (see [`Keys`]).
    #[serde(default = "default_prefix")]
    pub key_prefix: String,
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// Connections per endpoint of each HTTP worker thread (see the module doc); 0 = workers
    /// use the shared pools.
    #[serde(default = "default_worker_connections")]
    pub worker_connections: usize,
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    #[serde(default = "default_command_timeout_ms")]
    pub command_timeout_ms: u64,
    #[serde(default = "default_reconnect_max_delay_ms")]
    pub reconnect_max_delay_ms: u32,
    /// Optional separate instances; each falls back to the primary.
    #[serde(default)]
    pub cache: Option<RedisEndpoint>,
    #[serde(default)]
    pub rate_limit: Option<RedisEndpoint>,
    #[serde(default)]
    pub sessions: Option<RedisEndpoint>,
}

fn default_host() -> String {
    "127.0.0.1".into()
}
fn default_port() -> u16 {
    6379
}
fn default_prefix() -> String {
    "platform".into()
}
fn default_pool_size() -> usize {
    4
}
fn default_worker_connections() -> usize {
    1
}
fn default_connect_timeout_ms() -> u64 {
    2_000
}
fn default_command_timeout_ms() -> u64 {
    1_000
}
fn default_reconnect_max_delay_ms() -> u32 {
    5_000
}

impl RedisSettings {
    /// Settings for a local server at `url` with `prefix`; defaults elsewhere. For tests and tools.
    pub fn for_url(url: &str, prefix: &str) -> Self {
        Self {
            primary: RedisEndpoint::from_url(url),
            mode: RedisMode::Centralized,
            key_prefix: prefix.to_owned(),
            pool_size: default_pool_size(),
            worker_connections: default_worker_connections(),
            connect_timeout_ms: default_connect_timeout_ms(),
            command_timeout_ms: default_command_timeout_ms(),
            reconnect_max_delay_ms: 500,
            cache: None,
            rate_limit: None,
            sessions: None,
        }
    }

    /// Checks what the types cannot; the message names the setting.
    pub fn validate(&self) -> Result<()> {
        if self.pool_size == 0 || self.pool_size > 64 {
            return Err(RedisError::Config("redis.pool_size must be between 1 and 64".into()));
        }
        if self.worker_connections > 64 {
            return Err(RedisError::Config(
                "redis.worker_connections must be between 0 and 64".into(),
            ));
        }
        if self.key_prefix.is_empty() || self.key_prefix.contains(['{', '}', ' ']) {
            return Err(RedisError::Config(
                "redis.key_prefix must be non-empty without braces or spaces".into(),
            ));
        }
        if self.command_timeout_ms == 0 {
            return Err(RedisError::Config("redis.command_timeout_ms must be > 0".into()));
        }
        for (name, endpoint) in [
            ("redis", Some(&self.primary)),
            ("redis.cache", self.cache.as_ref()),
            ("redis.rate_limit", self.rate_limit.as_ref()),
            ("redis.sessions", self.sessions.as_ref()),
        ] {
            if let Some(endpoint) = endpoint {
                endpoint
                    .fred_config(self.mode)
                    .map_err(|e| RedisError::Config(format!("{name}: {}", e.details())))?;
            }
        }
        Ok(())
    }
}

impl RedisEndpoint {
    pub fn from_url(url: &str) -> Self {
        Self {
            url: Some(SecretString::from(url.to_owned())),
            host: default_host(),
            port: default_port(),
            username: None,
            password: None,
            db: 0,
            tls: false,
        }
    }

    fn fred_config(&self, mode: RedisMode) -> std::result::Result<Config, fred::error::Error> {
        let mut config = match &self.url {
            Some(url) => Config::from_url(url.expose_secret())?,
            None => {
                let server = match mode {
                    RedisMode::Centralized => ServerConfig::new_centralized(&self.host, self.port),
                    RedisMode::Cluster => {
                        ServerConfig::new_clustered(vec![(&self.host, self.port)])
                    }
                };
                Config {
                    server,
                    username: self.username.clone(),
                    password: self.password.as_ref().map(|p| p.expose_secret().to_owned()),
                    database: (self.db != 0).then_some(self.db),
                    tls: if self.tls { Some(TlsConnector::default_rustls()?.into()) } else { None },
                    ..Config::default()
                }
            }
        };
        config.version = RespVersion::RESP3;
        // Keep retrying the first connection too: a service starts (in fallback) while Redis is down.
        config.fail_fast = false;
        Ok(config)
    }
}

/// Which instance a command goes to (a deployment may split them; unset roles use the primary).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Streams, pub/sub, locks and anything without a role of its own.
    Primary,
    Cache,
    RateLimit,
    Sessions,
}

/// One endpoint's connections: the process-wide pool plus, on HTTP worker threads that called
/// [`RedisClients::bind_worker`], the worker's own (see the module doc). Cheap to clone; components
/// keep one and ask it for [`RolePool::pool`] per operation.
#[derive(Clone)]
pub struct RolePool(Arc<RolePoolInner>);

impl std::fmt::Debug for RolePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RolePool")
            .field("id", &self.0.id)
            .field("worker_connections", &self.0.worker_connections)
            .finish_non_exhaustive()
    }
}

struct RolePoolInner {
    /// Tells this endpoint's worker pools apart from others' in [`WORKER_BINDINGS`].
    id: u64,
    shared: Pool,
    builder: Builder,
    worker_connections: usize,
    timings: DirectTimings,
}

/// What [`RedisClients::bind_worker`] gave one thread for one endpoint.
struct WorkerBinding {
    id: u64,
    pool: Pool,
    direct: Option<DirectConnection>,
}

thread_local! {
    /// The connections bound to this thread by [`RedisClients::bind_worker`], by [`RolePool`] id.
    /// A handful of entries at most (one per endpoint per app instance), so a scan beats a map.
    static WORKER_BINDINGS: RefCell<Vec<WorkerBinding>> = const { RefCell::new(Vec::new()) };
}

impl RolePool {
    fn new(builder: Builder, settings: &RedisSettings) -> Result<Self> {
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        Ok(Self(Arc::new(RolePoolInner {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            shared: builder.build_pool(settings.pool_size)?,
            builder,
            worker_connections: settings.worker_connections,
            timings: DirectTimings {
                connect_timeout: Duration::from_millis(settings.connect_timeout_ms),
                command_timeout: Duration::from_millis(settings.command_timeout_ms),
                reconnect_max_delay: Duration::from_millis(settings.reconnect_max_delay_ms.into()),
            },
        })))
    }

    /// The pool for the calling thread: the worker's own on a bound HTTP worker while it has a
    /// connection up, else the shared one. A worker's pool starts connecting when the worker
    /// starts, so its first requests (and any after its connection dropped) use the shared pool,
    /// which `connect` waited for, rather than failing over to the callers' fallbacks.
    pub fn pool(&self) -> Pool {
        let id = self.0.id;
        WORKER_BINDINGS
            .with_borrow(|bindings| {
                bindings
                    .iter()
                    .find(|bound| bound.id == id && bound.pool.next_connected().is_connected())
                    .map(|bound| bound.pool.clone())
            })
            .unwrap_or_else(|| self.0.shared.clone())
    }

    /// This worker thread's direct connection to the endpoint while it is up: `None` on threads
    /// that did not bind, for TLS and cluster endpoints, with `worker_connections = 0`, and while
    /// it (re)connects, which a call after its backoff starts. Callers then use [`Self::pool`].
    pub fn direct(&self) -> Option<DirectConnection> {
        let id = self.0.id;
        WORKER_BINDINGS.with_borrow(|bindings| {
            let direct = bindings.iter().find(|bound| bound.id == id)?.direct.as_ref()?;
            direct.usable().then(|| direct.clone())
        })
    }

    /// The process-wide pool, whatever the thread.
    pub fn shared(&self) -> &Pool {
        &self.0.shared
    }

    /// Connects this thread's own pool on the current runtime, once per thread.
    fn bind_worker(&self) -> Result<()> {
        let inner = &self.0;
        if inner.worker_connections == 0
            || WORKER_BINDINGS.with_borrow(|bindings| bindings.iter().any(|b| b.id == inner.id))
        {
            return Ok(());
        }
        let pool = inner.builder.build_pool(inner.worker_connections)?;
        pool.connect_pool();
        let direct = self.direct_endpoint().map(|endpoint| {
            let direct = DirectConnection::new(endpoint, inner.timings);
            direct.usable(); // starts connecting
            direct
        });
        WORKER_BINDINGS.with_borrow_mut(|bindings| {
            bindings.push(WorkerBinding { id: inner.id, pool, direct });
        });
        Ok(())
    }

    /// The endpoint as a direct connection sees it, when one can serve it (one node, no TLS).
    fn direct_endpoint(&self) -> Option<DirectEndpoint> {
        let config = self.0.builder.get_config()?;
        let ServerConfig::Centralized { server } = &config.server else {
            return None;
        };
        if config.tls.is_some() {
            return None;
        }
        Some(DirectEndpoint {
            host: server.host.to_string(),
            port: server.port,
            username: config.username.clone(),
            password: config.password.clone().map(SecretString::from),
            database: config.database,
        })
    }
}

/// Connection pools for each role, plus the key builder. Cheap to clone.
#[derive(Clone)]
pub struct RedisClients {
    primary: RolePool,
    cache: RolePool,
    rate_limit: RolePool,
    sessions: RolePool,
    subscriber_builder: Builder,
    keys: Keys,
    settings: RedisSettings,
}

impl std::fmt::Debug for RedisClients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisClients").field("keys", &self.keys).finish_non_exhaustive()
    }
}

impl RedisClients {
    /// Builds the pools and starts connecting. Waits up to `connect_timeout_ms` for the primary;
    /// if Redis is not there yet it logs a warning and returns anyway (the pools keep trying).
    /// Fails only on settings that cannot work.
    pub async fn connect(settings: &RedisSettings) -> Result<Self> {
        settings.validate()?;
        let primary_builder = builder(&settings.primary, settings)?;
        let primary = RolePool::new(primary_builder.clone(), settings)?;
        let role = |endpoint: &Option<RedisEndpoint>| -> Result<RolePool> {
            match endpoint {
                Some(endpoint) => RolePool::new(builder(endpoint, settings)?, settings),
                None => Ok(primary.clone()),
            }
        };
        let clients = Self {
            cache: role(&settings.cache)?,
            rate_limit: role(&settings.rate_limit)?,
            sessions: role(&settings.sessions)?,
            primary,
            subscriber_builder: primary_builder,
            keys: Keys::new(&settings.key_prefix),
            settings: settings.clone(),
        };
        for role in clients.distinct_roles() {
            role.shared().connect_pool();
        }
        let wait = Duration::from_millis(settings.connect_timeout_ms);
        match tokio::time::timeout(wait, clients.primary.shared().wait_for_connect()).await {
            Ok(Ok(())) => tracing::info!(prefix = %settings.key_prefix, "connected to redis"),
            _ => tracing::warn!(
                wait_ms = settings.connect_timeout_ms,
                "redis is not reachable yet; starting in fallback mode and reconnecting in the background"
            ),
        }
        Ok(clients)
    }

    /// Gives the calling thread connections of its own, driven by its runtime, for every
    /// endpoint (see the module doc). Call it on a thread that keeps one runtime for its whole
    /// life, from inside that runtime: `Application::build` does it in each HTTP worker.
    pub fn bind_worker(&self) -> Result<()> {
        self.distinct_roles().into_iter().try_for_each(RolePool::bind_worker)
    }

    /// The connections of one role, for components that keep them.
    pub fn role(&self, role: Role) -> &RolePool {
        match role {
            Role::Primary => &self.primary,
            Role::Cache => &self.cache,
            Role::RateLimit => &self.rate_limit,
            Role::Sessions => &self.sessions,
        }
    }

    /// This thread's pool on the primary instance: streams, pub/sub, locks and anything without
    /// a role of its own.
    pub fn primary(&self) -> Pool {
        self.primary.pool()
    }
    pub fn cache(&self) -> Pool {
        self.cache.pool()
    }
    pub fn rate_limit(&self) -> Pool {
        self.rate_limit.pool()
    }
    pub fn sessions(&self) -> Pool {
        self.sessions.pool()
    }
    pub fn keys(&self) -> &Keys {
        &self.keys
    }
    pub fn settings(&self) -> &RedisSettings {
        &self.settings
    }

    /// A new, not yet connected subscriber client on the primary instance (pub/sub needs a
    /// dedicated connection). See [`crate::pubsub`].
    pub fn subscriber(&self) -> Result<SubscriberClient> {
        Ok(self.subscriber_builder.build_subscriber_client()?)
    }

    /// A new, not yet connected single client on the primary, for blocking commands
    /// (`XREADGROUP BLOCK`) that must not hold up a shared pool connection.
    pub fn dedicated(&self) -> Result<Client> {
        Ok(self.subscriber_builder.build()?)
    }

    /// Whether every connection of the shared primary pool is currently up.
    pub fn is_connected(&self) -> bool {
        self.primary.shared().clients().iter().all(|c| c.is_connected())
    }

    /// Round-trip time of a `PING` on the primary.
    pub async fn ping(&self) -> Result<Duration> {
        let started = Instant::now();
        let _: String = self.primary.shared().ping(None).await?;
        Ok(started.elapsed())
    }

    /// Closes every shared pool (worker pools close with their workers).
    pub async fn quit(&self) {
        for role in self.distinct_roles() {
            let _ = role.shared().quit().await;
        }
    }

    fn distinct_roles(&self) -> Vec<&RolePool> {
        let mut roles = vec![&self.primary];
        for (role, endpoint) in [
            (&self.cache, &self.settings.cache),
            (&self.rate_limit, &self.settings.rate_limit),
            (&self.sessions, &self.settings.sessions),
        ] {
            if endpoint.is_some() {
                roles.push(role);
            }
        }
        roles
    }
}

fn builder(endpoint: &RedisEndpoint, settings: &RedisSettings) -> Result<Builder> {
    let config = endpoint.fred_config(settings.mode)?;
    let command_timeout = Duration::from_millis(settings.command_timeout_ms);
    let connect_timeout = Duration::from_millis(settings.connect_timeout_ms);
    let mut builder = Builder::from_config(config);
    builder
        .with_connection_config(|c| {
            c.connection_timeout = connect_timeout;
            c.internal_command_timeout = connect_timeout;
            c.max_command_attempts = 2;
            // Bounded queue while reconnecting: beyond it, commands fail at once and callers fall back.
            c.max_command_buffer_len = 10_000;
        })
        .with_performance_config(|p| {
            p.default_command_timeout = command_timeout;
        })
        .set_policy(ReconnectPolicy::new_exponential(0, 50, settings.reconnect_max_delay_ms, 2));
    Ok(builder)
}

/// The value of `field` in the text of an `INFO` section (`field:value` lines).
pub fn info_field(info: &str, field: &str) -> Option<String> {
    info.lines().find_map(|line| line.strip_prefix(field)?.strip_prefix(':')).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::info_field;

    #[test]
    fn info_fields_are_read_by_name() {
        let info = "# Server\r\nredis_version:7.0.15\r\nuptime_in_seconds:42\r\n";
        assert_eq!(info_field(info, "redis_version").as_deref(), Some("7.0.15"));
        assert_eq!(info_field(info, "uptime_in_seconds").as_deref(), Some("42"));
    }
}

//! The Redis client factory: settings, connection pools per role, subscriber clients.
//!
//! A service gets one [`RedisClients`]: a primary pool and, when configured (seed 001), separate
//! instances for the cache, rate limits and sessions, each falling back to the primary when not
//! set. Connections use RESP3, reconnect forever with capped exponential backoff, and fail a
//! command after `command_timeout_ms` so that callers reach their fallback quickly instead of
//! queueing behind a dead connection. Start-up never fails because Redis is down: the pools keep
//! reconnecting in the background and the health route says `fallback` until they succeed.

use std::time::{Duration, Instant};

use fred::clients::SubscriberClient;
use fred::prelude::*;
use fred::types::RespVersion;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

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
/// `redis-cluster://` for cluster seeds), or the discrete `host` / `port` / `password` / `db` / `tls`.
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
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    #[serde(default = "default_command_timeout_ms")]
    pub command_timeout_ms: u64,
    #[serde(default = "default_reconnect_max_delay_ms")]
    pub reconnect_max_delay_ms: u32,
    /// Optional separate instances (seed 001); each falls back to the primary.
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

/// Connection pools for each role, plus the key builder. Cheap to clone.
#[derive(Clone)]
pub struct RedisClients {
    primary: Pool,
    cache: Pool,
    rate_limit: Pool,
    sessions: Pool,
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
        let primary = primary_builder.build_pool(settings.pool_size)?;
        let role = |endpoint: &Option<RedisEndpoint>| -> Result<Pool> {
            match endpoint {
                Some(endpoint) => Ok(builder(endpoint, settings)?.build_pool(settings.pool_size)?),
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
        for pool in clients.distinct_pools() {
            pool.connect_pool();
        }
        let wait = Duration::from_millis(settings.connect_timeout_ms);
        match tokio::time::timeout(wait, clients.primary.wait_for_connect()).await {
            Ok(Ok(())) => tracing::info!(prefix = %settings.key_prefix, "connected to redis"),
            _ => tracing::warn!(
                wait_ms = settings.connect_timeout_ms,
                "redis is not reachable yet; starting in fallback mode and reconnecting in the background"
            ),
        }
        Ok(clients)
    }

    /// The primary instance: streams, pub/sub, locks and anything without a role of its own.
    pub fn primary(&self) -> &Pool {
        &self.primary
    }
    pub fn cache(&self) -> &Pool {
        &self.cache
    }
    pub fn rate_limit(&self) -> &Pool {
        &self.rate_limit
    }
    pub fn sessions(&self) -> &Pool {
        &self.sessions
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

    /// Whether every connection of the primary pool is currently up.
    pub fn is_connected(&self) -> bool {
        self.primary.clients().iter().all(|c| c.is_connected())
    }

    /// Round-trip time of a `PING` on the primary.
    pub async fn ping(&self) -> Result<Duration> {
        let started = Instant::now();
        let _: String = self.primary.ping(None).await?;
        Ok(started.elapsed())
    }

    /// Closes every pool.
    pub async fn quit(&self) {
        for pool in self.distinct_pools() {
            let _ = pool.quit().await;
        }
    }

    fn distinct_pools(&self) -> Vec<&Pool> {
        let mut pools = vec![&self.primary];
        for (pool, endpoint) in [
            (&self.cache, &self.settings.cache),
            (&self.rate_limit, &self.settings.rate_limit),
            (&self.sessions, &self.settings.sessions),
        ] {
            if endpoint.is_some() {
                pools.push(pool);
            }
        }
        pools
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

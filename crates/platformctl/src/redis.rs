//! `redis check` and `redis health`: every Redis role the configuration names (primary, and
//! cache, rate_limit, sessions where they have an instance of their own), each answered within
//! the timeout.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use platform_redis::fred::prelude::*;
use platform_redis::fred::types::{CustomCommand, InfoKind};
use platform_redis::{RedisClients, RedisEndpoint, Role, info_field};
use secrecy::ExposeSecret;
use serde_json::json;

use crate::{Report, Settings};

/// Each role with an instance of its own: (name, role, endpoint).
fn roles(settings: &Settings) -> Vec<(&'static str, Role, &RedisEndpoint)> {
    let redis = &settings.redis;
    let mut roles = vec![("primary", Role::Primary, &redis.primary)];
    for (name, role, endpoint) in [
        ("cache", Role::Cache, &redis.cache),
        ("rate_limit", Role::RateLimit, &redis.rate_limit),
        ("sessions", Role::Sessions, &redis.sessions),
    ] {
        if let Some(endpoint) = endpoint {
            roles.push((name, role, endpoint));
        }
    }
    roles
}

/// Where an endpoint is, without credentials.
pub fn address(endpoint: &RedisEndpoint) -> String {
    match &endpoint.url {
        Some(url) => match reqwest::Url::parse(url.expose_secret()) {
            Ok(mut url) => {
                let _ = url.set_username("");
                let _ = url.set_password(None);
                url.to_string()
            }
            Err(_) => "(unparsable url)".to_owned(),
        },
        None => {
            let scheme = if endpoint.tls { "rediss" } else { "redis" };
            format!("{scheme}://{}:{}/{}", endpoint.host, endpoint.port, endpoint.db)
        }
    }
}

async fn connect(settings: &Settings) -> anyhow::Result<RedisClients> {
    Ok(RedisClients::connect(&settings.redis).await?)
}

/// One role's answer within the timeout, or why not.
async fn ask<T>(
    timeout: Duration,
    work: impl std::future::Future<Output = Result<T, platform_redis::fred::error::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(timeout, work).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
    }
}

/// Configuration and connectivity of every role (seed 001's `redis:check`).
pub async fn check(settings: &Settings) -> anyhow::Result<Report> {
    let clients = connect(settings).await?;
    let mut ok = true;
    let mut rows = Vec::new();
    let mut text = String::new();
    for (name, role, endpoint) in roles(settings) {
        let pool = clients.role(role).pool();
        let answer = ask(settings.timeout(), async {
            let client = pool.next();
            let _: String = client.ping(None).await?;
            let info: String = client.info(Some(InfoKind::Server)).await?;
            // Managed services may refuse CONFIG: the check still passes, the values read unknown.
            let config = |name: &'static str| async move {
                let command = CustomCommand::new_static("CONFIG", None, false);
                let values: Option<HashMap<String, String>> =
                    client.custom(command, vec!["GET", name]).await.ok();
                values.and_then(|mut values| values.remove(name))
            };
            let policy = config("maxmemory-policy").await;
            let aof = config("appendonly").await;
            Ok((info, policy, aof))
        })
        .await;
        let address = address(endpoint);
        match answer {
            Ok((info, policy, aof)) => {
                let version = info_field(&info, "redis_version").unwrap_or_default();
                let policy = policy.unwrap_or_else(|| "unknown".into());
                let aof = aof.unwrap_or_else(|| "unknown".into());
                let _ = writeln!(
                    text,
                    "ok    {name:<10} {address}  redis {version}, maxmemory-policy {policy}, appendonly {aof}"
                );
                rows.push(json!({"role": name, "address": address, "ok": true, "version": version,
                    "maxmemoryPolicy": policy, "appendonly": aof}));
            }
            Err(error) => {
                ok = false;
                let _ = writeln!(text, "FAIL  {name:<10} {address}  {error}");
                rows.push(json!({"role": name, "address": address, "ok": false, "error": error}));
            }
        }
    }
    clients.quit().await;
    if !ok {
        text.push_str("redis check failed: a role above is not reachable\n");
    }
    Ok(Report { ok, text, json: json!({"ok": ok, "roles": rows}) })
}

/// Latency, memory, clients and keys of every role (seed 001's `redis:health`).
pub async fn health(settings: &Settings) -> anyhow::Result<Report> {
    let clients = connect(settings).await?;
    let mut ok = true;
    let mut rows = Vec::new();
    let mut text = String::new();
    for (name, role, endpoint) in roles(settings) {
        let pool = clients.role(role).pool();
        let answer = ask(settings.timeout(), async {
            let client = pool.next();
            let started = Instant::now();
            let _: String = client.ping(None).await?;
            let latency = started.elapsed();
            let info: String = client.info(None).await?;
            Ok((latency, info))
        })
        .await;
        let address = address(endpoint);
        match answer {
            Ok((latency, info)) => {
                let field = |f: &str| info_field(&info, f).unwrap_or_default();
                let keys: u64 = info
                    .lines()
                    .filter(|line| line.starts_with("db"))
                    .filter_map(|line| {
                        let stats = line.split_once(':')?.1;
                        stats
                            .split(',')
                            .find_map(|kv| kv.strip_prefix("keys="))?
                            .parse::<u64>()
                            .ok()
                    })
                    .sum();
                let row = json!({"role": name, "address": address, "ok": true,
                    "pingMs": latency.as_secs_f64() * 1e3,
                    "usedMemory": field("used_memory_human"), "maxMemory": field("maxmemory_human"),
                    "connectedClients": field("connected_clients"), "keys": keys,
                    "uptimeSeconds": field("uptime_in_seconds")});
                let _ = writeln!(
                    text,
                    "ok    {name:<10} {address}  ping {:.2} ms, memory {} (max {}), {} clients, {keys} keys",
                    latency.as_secs_f64() * 1e3,
                    field("used_memory_human"),
                    field("maxmemory_human"),
                    field("connected_clients"),
                );
                rows.push(row);
            }
            Err(error) => {
                ok = false;
                let _ = writeln!(text, "FAIL  {name:<10} {address}  {error}");
                rows.push(json!({"role": name, "address": address, "ok": false, "error": error}));
            }
        }
    }
    clients.quit().await;
    Ok(Report { ok, text, json: json!({"ok": ok, "roles": rows}) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_never_show_credentials() {
        let endpoint = RedisEndpoint::from_url("redis://app:s3cret@cache.internal:6380/2");
        assert_eq!(address(&endpoint), "redis://cache.internal:6380/2");
    }
}

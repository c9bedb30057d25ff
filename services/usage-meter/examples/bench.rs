//! usage-meter benchmark (run by `scripts/bench/usage-meter.sh`): events consumed per second by
//! one consumer at several batch sizes vs `redis-benchmark` XADD on the same Redis, and
//! quota-check latency under `wrk` next to `/healthz`. Starts private Redis and Postgres.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use platform_redis::fred::prelude::*;
use platform_redis::fred::types::{ClusterHash, CustomCommand, InfoKind};
use platform_redis::messages::UsageEvent;
use platform_redis::streams::{ConsumerSettings, StartFrom, StreamConsumer, StreamProducer};
use platform_redis::{RedisClients, RedisSettings, StreamName};
use platform_service::settings::ServiceSettings;
use platform_testing::{PostgresServer, RedisServer, unique_prefix};
use tokio_util::sync::CancellationToken;
use usage_meter::domain::usage::{EventRules, Metric, MetricSet};
use usage_meter::store::Retention;
use usage_meter::workers::consumer::UsageHandler;

// The service binary's allocator (src/main.rs), so the consumer runs as it does in production.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const GROUP: &str = "bench";
const METRICS: [&str; 5] =
    ["api_request", "email_sent", "sms_sent", "donation_processed", "campaign_created"];

fn events(n: usize) -> Vec<UsageEvent> {
    let now = chrono::Utc::now().to_rfc3339();
    (0..n)
        .map(|i| UsageEvent {
            org_id: format!("org-{}", i % 100),
            metric: METRICS[i % METRICS.len()].to_owned(),
            value: (i % 7) as i64 + 1,
            occurred_at: Some(now.clone()),
            idempotency_key: Some(format!("evt-{i}")),
            metadata: None,
        })
        .collect()
}

/// CPU seconds (user + system) this process has used; /proc ticks are 1/100 s.
fn own_cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name: utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU seconds (user + system) the Redis server has used (`INFO cpu`).
async fn redis_cpu_secs(clients: &RedisClients) -> f64 {
    let info: String = clients.primary().info(Some(InfoKind::Cpu)).await.unwrap();
    info.lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| *k == "used_cpu_user" || *k == "used_cpu_sys")
        .map(|(_, v)| v.trim().parse::<f64>().unwrap_or(0.0))
        .sum()
}

async fn drained(clients: &RedisClients) -> bool {
    let key = clients.keys().stream(StreamName::UsageEvents);
    let groups: Vec<HashMap<String, Value>> =
        clients.primary().xinfo_groups(key).await.unwrap_or_default();
    groups.iter().any(|g| {
        g.get("pending").and_then(Value::as_i64) == Some(0)
            && g.get("lag").and_then(Value::as_i64) == Some(0)
    })
}

/// Produces `n` events, then times one consumer with `batch` until the group is drained.
async fn consume_rate(url: &str, n: usize, batch: usize) -> (f64, f64) {
    let clients =
        RedisClients::connect(&RedisSettings::for_url(url, &unique_prefix("bench"))).await.unwrap();
    let producer = StreamProducer::new(&clients, StreamName::UsageEvents, n * 2);
    let all = events(n);
    let started = Instant::now();
    for chunk in all.chunks(1000) {
        producer.append_all(chunk).await.unwrap();
    }
    let produce_rate = n as f64 / started.elapsed().as_secs_f64();

    let mut settings = ConsumerSettings::new(StreamName::UsageEvents, GROUP);
    settings.batch_size = batch;
    settings.start_from = StartFrom::Beginning;
    settings.block = Duration::from_millis(100);
    let cancel = CancellationToken::new();
    let consumer = StreamConsumer::new(&clients, settings, cancel.clone());
    let retention = Retention {
        counter_ttl_secs: 86_400,
        events_ttl_secs: 86_400,
        events_per_org: 100,
        idempotency_window_secs: 3600,
        durable_marks: MetricSet::of(&[Metric::DonationProcessed]),
    };
    let rules = EventRules {
        max_age: chrono::Duration::days(1),
        max_future_skew: chrono::Duration::minutes(5),
    };
    let handler = UsageHandler::new(clients.keys().clone(), retention, rules);
    usage_meter::store::sync::open_without_durable_copy(&clients).await.unwrap();
    let _: () = clients
        .primary()
        .custom(CustomCommand::new_static("CONFIG", ClusterHash::Random, false), vec!["RESETSTAT"])
        .await
        .unwrap();
    println!("  batch {batch}: produced {n} events, consuming");
    let (cpu_before, redis_cpu_before) = (own_cpu_secs(), redis_cpu_secs(&clients).await);
    let started = Instant::now();
    let task = tokio::spawn(async move { consumer.run(&handler).await.unwrap() });
    while !drained(&clients).await {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = started.elapsed();
    let rate = n as f64 / elapsed.as_secs_f64();
    let per_event = |secs: f64| secs * 1e6 / n as f64;
    let consumer_cpu = per_event(own_cpu_secs() - cpu_before);
    let redis_cpu = per_event(redis_cpu_secs(&clients).await - redis_cpu_before);
    // Where Redis spent its time (commands run inside scripts are counted separately too).
    let stats: String = clients.primary().info(Some(InfoKind::CommandStats)).await.unwrap();
    // Every command above 0.05 µs/event, most expensive first; `exec` includes the script
    // (`eval`), which includes the commands it called (listed on their own too).
    let mut costs: Vec<(String, f64)> = Vec::new();
    for line in stats.lines().filter(|l| l.starts_with("cmdstat_")) {
        let name = line.split(':').next().unwrap_or("").trim_start_matches("cmdstat_");
        let usec = line
            .split(',')
            .find_map(|kv| kv.split_once('=').filter(|(k, _)| k.ends_with("usec")))
            .and_then(|(_, v)| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        if usec / n as f64 >= 0.05 && name != "info" {
            costs.push((name.to_owned(), usec / n as f64));
        }
    }
    costs.sort_by(|a, b| b.1.total_cmp(&a.1));
    let lines: Vec<String> =
        costs.iter().map(|(name, us)| format!("{name} {us:.2} µs/event")).collect();
    println!(
        "  batch {batch}: redis time per event: {} (wall {:.2} µs/event; CPU per event: consumer process {consumer_cpu:.2} µs, redis-server {redis_cpu:.2} µs)",
        lines.join(", "),
        elapsed.as_secs_f64() * 1e6 / n as f64
    );
    cancel.cancel();
    task.await.unwrap();
    clients.quit().await;
    (rate, produce_rate)
}

/// `redis-benchmark` XADD of a usage-sized entry: requests per second.
async fn xadd_rate(port: u16, pipeline: u32) -> f64 {
    let data = r#"{"orgId":"org-1","metric":"api_request","value":1,"occurredAt":"2026-11-22T10:00:00Z","idempotencyKey":"evt-1"}"#;
    let output = tokio::process::Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-n", "200000", "-c", "50"])
        .args([
            "-P",
            &pipeline.to_string(),
            "--csv",
            "XADD",
            "bench:xadd",
            "MAXLEN",
            "~",
            "100000",
            "*",
            "v",
            "1",
            "data",
            data,
        ])
        .output()
        .await
        .expect("run redis-benchmark");
    let text = String::from_utf8_lossy(&output.stdout);
    // The first CSV column is the command (it contains commas); rps is 7th from the end.
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(',').collect();
            fields.len().checked_sub(7).and_then(|i| fields[i].trim_matches('"').parse().ok())
        })
        .next_back()
        .unwrap_or_else(|| panic!("cannot parse redis-benchmark output: {text}"))
}

/// Runs wrk and returns (requests/s, p50 ms, p99 ms).
async fn wrk(url: &str, script: Option<&str>, secs: &str, connections: &str) -> (f64, f64, f64) {
    let mut command = tokio::process::Command::new("wrk");
    command.args(["-t", "1", "-c", connections, "-d", &format!("{secs}s"), "--latency"]);
    if let Some(script) = script {
        command.args(["-s", script]);
    }
    let output = command.arg(url).output().await.expect("run wrk");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let millis = |label: &str| -> f64 {
        let line = text.lines().find(|l| l.trim_start().starts_with(label)).unwrap_or_default();
        let value = line.split_whitespace().nth(1).unwrap_or("0");
        let (number, unit) =
            value.split_at(value.find(|c: char| c.is_alphabetic()).unwrap_or(value.len()));
        let number: f64 = number.parse().unwrap_or(f64::NAN);
        match unit {
            "us" => number / 1000.0,
            "s" => number * 1000.0,
            _ => number,
        }
    };
    let rps = text
        .lines()
        .find(|l| l.starts_with("Requests/sec:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN);
    if text.contains("Non-2xx") {
        println!("warning: wrk saw non-2xx answers for {url}:\n{text}");
    }
    (rps, millis("50%"), millis("99%"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: usize =
        std::env::var("BENCH_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(200_000);
    let secs = std::env::var("BENCH_WRK_SECS").unwrap_or_else(|_| "10".into());
    let connections = std::env::var("BENCH_WRK_CONNECTIONS").unwrap_or_else(|_| "32".into());
    let redis = RedisServer::start()?;
    let postgres = PostgresServer::start()?;
    println!(
        "# usage-meter benchmark ({} cores)",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );

    let xadd_unpipelined = xadd_rate(redis.port(), 1).await;
    let xadd_pipelined = xadd_rate(redis.port(), 16).await;
    println!("redis-benchmark XADD, 50 clients, no pipelining: {xadd_unpipelined:.0}/s");
    println!("redis-benchmark XADD, 50 clients, pipeline 16:   {xadd_pipelined:.0}/s");
    let mut consumed = Vec::new();
    let quick = std::env::var("BENCH_QUICK").is_ok();
    let passes: Vec<(usize, usize)> =
        if quick { vec![(1000, n)] } else { vec![(1000, n), (100, n / 2), (1, n / 20)] };
    for (batch, events) in passes {
        let (rate, produced) = consume_rate(&redis.url(), events, batch).await;
        println!(
            "one consumer, batch {batch:>4}: {rate:>8.0} events/s consumed ({events} events; producer append_all {produced:.0}/s); ratio to unpipelined XADD {:.2}",
            rate / xadd_unpipelined
        );
        consumed.push((batch, rate));
    }

    if quick {
        return Ok(());
    }
    // Quota checks against the real service (in this process), next to /healthz.
    let database = postgres.create_database().await?;
    let vars = HashMap::from([
        ("APP__HTTP__PORT".to_owned(), "0".to_owned()),
        ("APP__HTTP__WORKERS".to_owned(), "1".to_owned()),
        ("APP__REDIS__URL".to_owned(), redis.url()),
        ("APP__REDIS__KEY_PREFIX".to_owned(), unique_prefix("bench-quota")),
        ("APP__DATABASE__URL".to_owned(), database.url),
        ("APP__TELEMETRY__FILTER".to_owned(), "warn".to_owned()),
    ]);
    let app = usage_meter::build(usage_meter::Settings::from_overrides(vars)?).await?;
    let base = format!("http://127.0.0.1:{}", app.port());
    let shutdown = app.context().shutdown.clone();
    let server = tokio::spawn(app.run_until_stopped());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/bench/usage-meter-quota.lua");
    let (health_rps, health_p50, health_p99) =
        wrk(&format!("{base}/healthz"), None, &secs, &connections).await;
    let (quota_rps, quota_p50, quota_p99) =
        wrk(&format!("{base}/internal/quota/check"), Some(script), &secs, &connections).await;
    println!(
        "wrk /healthz ({connections} connections, {secs} s, 1 HTTP worker): {health_rps:.0} req/s, p50 {health_p50:.3} ms, p99 {health_p99:.3} ms"
    );
    println!(
        "wrk /internal/quota/check (same):                 {quota_rps:.0} req/s, p50 {quota_p50:.3} ms, p99 {quota_p99:.3} ms"
    );
    shutdown.trigger();
    server.await??;

    let batched = consumed.first().map(|c| c.1).unwrap_or(0.0);
    println!(
        "{}",
        serde_json::json!({
            "xaddPerSec": xadd_unpipelined.round(),
            "xaddPipelinedPerSec": xadd_pipelined.round(),
            "consumePerSec": consumed.iter().map(|(b, r)| (b.to_string(), r.round())).collect::<HashMap<_, _>>(),
            "consumeToXaddRatio": (batched / xadd_unpipelined * 100.0).round() / 100.0,
            "quotaCheck": { "rps": quota_rps.round(), "p50Ms": quota_p50, "p99Ms": quota_p99 },
            "healthz": { "rps": health_rps.round(), "p50Ms": health_p50, "p99Ms": health_p99 },
        })
    );
    Ok(())
}

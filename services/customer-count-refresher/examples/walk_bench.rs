//! Walk benchmark: a full invoice walk against a running fake simPRO, concurrent then sequential.
//!
//! `cargo run --release -p customer-count-refresher --example walk_bench -- <base_url> <token>
//! [concurrency=16] [latency_ms=20] [sequential=yes|no] [columns=ID,Customer ("-" = all fields)]`. `scripts/bench/customer-count-refresher.sh`
//! starts the fake (`fake-simpro --latency-ms 20 --invoices 1000000`) in its own process so the
//! peak RSS measured here (`VmHWM`) is the walker's alone. Prints one `key=value` line per figure.

use std::io::Write as _;
use std::time::{Duration, Instant};

use customer_count_refresher::SimproSettings;
use customer_count_refresher::upstream::simpro::SimproClient;
use customer_count_refresher::upstream::walk::{WalkResult, walk_all};
use secrecy::SecretString;

fn vm_hwm_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Resets the peak RSS so the next phase's peak is its own (Linux: clear_refs 5).
fn reset_hwm() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn settings(base_url: &str, token: &str, concurrency: usize, columns: &str) -> SimproSettings {
    SimproSettings {
        base_url: base_url.to_owned(),
        company_id: 0,
        token: SecretString::from(token.to_owned()),
        page_size: 250,
        columns: columns.to_owned(),
        concurrency,
        request_timeout_ms: 30_000,
        connect_timeout_ms: 5_000,
        max_attempts: 6,
        backoff_base_ms: 100,
        backoff_max_ms: 5_000,
        max_retry_after_secs: 30,
        run_deadline_secs: 1_800,
    }
}

/// Mean wall time of a `latency_ms` sleep on this machine now: the floor any walk against a fake
/// that sleeps per page can reach (a loaded VM wakes sleepers late).
async fn measured_sleep_ms(latency_ms: f64, samples: u32) -> f64 {
    let wanted = Duration::from_secs_f64(latency_ms / 1000.0);
    let started = Instant::now();
    for _ in 0..samples {
        tokio::time::sleep(wanted).await;
    }
    started.elapsed().as_secs_f64() * 1000.0 / f64::from(samples)
}

async fn timed_walk(settings: &SimproSettings) -> anyhow::Result<(WalkResult, Duration)> {
    let client = SimproClient::new(settings)?;
    let started = Instant::now();
    let result = walk_all(&client, settings.concurrency, settings.run_deadline()).await?;
    Ok((result, started.elapsed()))
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let base_url = args.first().map_or("http://127.0.0.1:8095", String::as_str);
    let token = args.get(1).map_or("dev-simpro-token", String::as_str);
    let concurrency: usize = args.get(2).map_or(Ok(16), |v| v.parse())?;
    let latency_ms: f64 = args.get(3).map_or(Ok(20.0), |v| v.parse())?;
    let sequential = args.get(4).is_none_or(|v| v != "no");
    let columns = match args.get(5).map(String::as_str) {
        None => "ID,Customer",
        Some("-") => "",
        Some(list) => list,
    };
    platform_service::telemetry::install_crypto_provider();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let mut out = std::io::stdout();

    let baseline_kib = vm_hwm_kib();
    reset_hwm();
    let (result, wall) =
        runtime.block_on(timed_walk(&settings(base_url, token, concurrency, columns)))?;
    let peak_kib = vm_hwm_kib();
    let ideal = result.pages as f64 * latency_ms / 1000.0 / concurrency as f64;
    let slept_ms = runtime.block_on(measured_sleep_ms(latency_ms, 100));
    let floor = result.pages as f64 * slept_ms / 1000.0 / concurrency as f64;
    writeln!(out, "pages={}", result.pages)?;
    writeln!(out, "invoices={}", result.total_invoices)?;
    writeln!(out, "unique_customers={}", result.unique_customers)?;
    writeln!(out, "retries={}", result.retries)?;
    writeln!(out, "concurrency={concurrency}")?;
    writeln!(out, "latency_ms={latency_ms}")?;
    writeln!(out, "columns={}", if columns.is_empty() { "all" } else { columns })?;
    writeln!(out, "concurrent_wall_s={:.3}", wall.as_secs_f64())?;
    writeln!(out, "ideal_s={ideal:.3}")?;
    writeln!(out, "ratio_to_ideal={:.3}", wall.as_secs_f64() / ideal)?;
    writeln!(out, "measured_sleep_ms={slept_ms:.2}")?;
    writeln!(out, "machine_floor_s={floor:.3}")?;
    writeln!(out, "ratio_to_machine_floor={:.3}", wall.as_secs_f64() / floor)?;
    writeln!(out, "rss_before_walk_mib={:.1}", baseline_kib as f64 / 1024.0)?;
    writeln!(out, "peak_rss_concurrent_mib={:.1}", peak_kib as f64 / 1024.0)?;
    out.flush()?;

    if sequential {
        reset_hwm();
        let (seq_result, seq_wall) =
            runtime.block_on(timed_walk(&settings(base_url, token, 1, columns)))?;
        anyhow::ensure!(seq_result.unique_customers == result.unique_customers, "counts differ");
        writeln!(out, "sequential_wall_s={:.3}", seq_wall.as_secs_f64())?;
        writeln!(out, "peak_rss_sequential_mib={:.1}", vm_hwm_kib() as f64 / 1024.0)?;
        writeln!(
            out,
            "speedup_over_sequential={:.2}",
            seq_wall.as_secs_f64() / wall.as_secs_f64()
        )?;
    }
    Ok(())
}

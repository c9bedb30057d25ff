//! `fake-stripe`: the fake Stripe API as a standalone process, for `make run` and manual checkouts.
//!
//! Usage: `fake-stripe [--port 8096] [--secret-key sk_test_fake_stripe] [--latency-ms 0]`. Prints
//! the base URL, serves until SIGINT/SIGTERM. A Checkout session's `url` points at the fake's
//! hosted page (`/c/pay/{id}`), which completes the session and redirects to its success URL.

use std::io::Write as _;
use std::time::Duration;

use platform_testing::fake_stripe::{FakeStripe, FakeStripeConfig};

fn main() -> anyhow::Result<()> {
    let mut config = FakeStripeConfig { port: 8096, ..FakeStripeConfig::default() };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| anyhow::anyhow!("{flag} needs a value"));
        match flag.as_str() {
            "--port" => config.port = value()?.parse()?,
            "--secret-key" => config.secret_key = value()?,
            "--latency-ms" => config.latency = Duration::from_millis(value()?.parse()?),
            other => anyhow::bail!(
                "unknown argument {other}; usage: fake-stripe [--port N] [--secret-key K] [--latency-ms N]"
            ),
        }
    }
    let fake = FakeStripe::start(config)?;
    writeln!(std::io::stdout(), "fake Stripe listening on {}/v1/", fake.base_url())?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        anyhow::Ok(())
    })?;
    drop(fake);
    Ok(())
}

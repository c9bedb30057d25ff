//! `fake-simpro`: the fake simPRO invoice list as a standalone process, for `make run` and benchmarks.
//!
//! Usage: `fake-simpro [--port 8095] [--invoices 2847] [--customers 450] [--latency-ms 0]
//! [--company-id 0] [--token dev-simpro-token]`. Prints the base URL, serves until SIGINT/SIGTERM.

use std::io::Write as _;
use std::time::Duration;

use platform_testing::fake_simpro::{FakeSimpro, FakeSimproConfig};

fn main() -> anyhow::Result<()> {
    let mut config = FakeSimproConfig::generated(2_847, 450);
    config.port = 8095;
    config.token = Some("dev-simpro-token".to_owned());
    config.threads = 2;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| anyhow::anyhow!("{flag} needs a value"));
        match flag.as_str() {
            "--port" => config.port = value()?.parse()?,
            "--invoices" | "--customers" => {
                let n: u64 = value()?.parse()?;
                if let platform_testing::fake_simpro::Invoices::Generated { invoices, customers } =
                    &mut config.invoices
                {
                    *if flag == "--invoices" { invoices } else { customers } = n;
                }
            }
            "--latency-ms" => config.latency = Duration::from_millis(value()?.parse()?),
            "--company-id" => config.company_id = value()?.parse()?,
            "--token" => config.token = Some(value()?).filter(|t| !t.is_empty()),
            "--threads" => config.threads = value()?.parse()?,
            other => anyhow::bail!(
                "unknown argument {other}; usage: fake-simpro [--port N] [--invoices N] [--customers N] [--latency-ms N] [--company-id N] [--token T] [--threads N]"
            ),
        }
    }
    let company = config.company_id;
    let fake = FakeSimpro::start(config)?;
    writeln!(
        std::io::stdout(),
        "fake simPRO listening on {}/api/v1.0/companies/{company}/invoices/ ({} invoices, {} unique customers)",
        fake.base_url(),
        fake.total_invoices(),
        fake.expected_unique_customers()
    )?;
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

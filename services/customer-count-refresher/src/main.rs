//! Entry point of customer-count-refresher: `serve` (default) or `refresh-once` (CronJob; exit code 0 = stored).

use std::process::ExitCode;

use customer_count_refresher::{SERVICE, Settings, build, refresh_once};

// mimalloc instead of glibc malloc: fewer cycles per request under load (docs/dependencies.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let (settings, _telemetry) = platform_service::start::<Settings>(SERVICE)?;
    match std::env::args().nth(1).as_deref() {
        None | Some("serve") => {
            build(settings).await?.run_until_stopped().await?;
            Ok(ExitCode::SUCCESS)
        }
        Some("refresh-once") => Ok(refresh_once(settings).await?.exit_code()),
        Some(other) => anyhow::bail!(
            "unknown command `{other}`; usage: customer-count-refresher [serve | refresh-once]"
        ),
    }
}

//! Entry point of checkout-api: settings, telemetry, serve until stopped.

use checkout_api::{SERVICE, Settings, build};
use platform_service::init_telemetry;
use platform_service::settings::ServiceSettings;

// mimalloc instead of glibc malloc: fewer cycles per request under load (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::load()?;
    let _telemetry = init_telemetry(SERVICE, &settings.common.telemetry)?;
    build(settings).await?.run_until_stopped().await?;
    Ok(())
}

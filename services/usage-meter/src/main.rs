//! Entry point of usage-meter: settings, telemetry, serve until stopped.

use platform_service::init_telemetry;
use platform_service::settings::ServiceSettings;
use usage_meter::{SERVICE, Settings, build};

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

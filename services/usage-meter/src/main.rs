//! Entry point of usage-meter: settings, telemetry, serve until stopped.

use platform_service::init_telemetry;
use platform_service::settings::ServiceSettings;
use usage_meter::{SERVICE, Settings, build};

// glibc's malloc and free were ~25 % of the stream consumer's CPU (many small strings per
// event: reply frames, decoded bodies, script arguments); mimalloc's thread-local heaps are cheaper.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::load()?;
    let _telemetry = init_telemetry(SERVICE, &settings.common.telemetry)?;
    build(settings).await?.run_until_stopped().await?;
    Ok(())
}

//! Entry point of webhook-ingest: settings, telemetry, serve until stopped.

use webhook_ingest::{SERVICE, Settings, build};
use platform_service::init_telemetry;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::load()?;
    let _telemetry = init_telemetry(SERVICE, &settings.common.telemetry)?;
    build(settings).await?.run_until_stopped().await?;
    Ok(())
}

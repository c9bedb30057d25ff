//! Entry point of campaign-api: settings, telemetry, serve until stopped.

use campaign_api::{SERVICE, Settings, build};
use platform_service::init_telemetry;
use platform_service::settings::ServiceSettings;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::load()?;
    let _telemetry = init_telemetry(SERVICE, &settings.common.telemetry)?;
    build(settings).await?.run_until_stopped().await?;
    Ok(())
}

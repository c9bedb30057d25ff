//! Entry point of campaign-api: settings, telemetry, serve until stopped.

use campaign_api::{SERVICE, build};

// mimalloc instead of glibc malloc: fewer cycles per request under load (docs/dependencies.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    platform_service::run(SERVICE, build).await
}

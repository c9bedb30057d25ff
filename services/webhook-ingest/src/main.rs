//! Entry point of webhook-ingest: settings, telemetry, serve until stopped.

use webhook_ingest::{SERVICE, build};

// mimalloc instead of glibc malloc: fewer cycles per request under load (docs/dependencies.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    platform_service::run(SERVICE, build).await
}

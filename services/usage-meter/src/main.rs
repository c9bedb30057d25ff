//! Entry point of usage-meter: settings, telemetry, serve until stopped.

use usage_meter::{SERVICE, build};

// glibc's malloc and free were ~25 % of the stream consumer's CPU (many small strings per
// event: reply frames, decoded bodies, script arguments); mimalloc's thread-local heaps are cheaper.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    platform_service::run(SERVICE, build).await
}

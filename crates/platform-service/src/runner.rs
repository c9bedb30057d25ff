//! What every service binary's `main` does: load and validate the settings, start telemetry, build
//! the service, serve until stopped.

use std::future::Future;

use crate::app::Application;
use crate::settings::ServiceSettings;
use crate::telemetry::{TelemetryGuard, init_telemetry};

/// A built service that serves until SIGTERM / SIGINT, then drains ([`Application`], or a service's
/// own wrapper that also waits for its background workers).
pub trait Serve {
    fn run_until_stopped(self) -> impl Future<Output = std::io::Result<()>>;
}

impl Serve for Application {
    fn run_until_stopped(self) -> impl Future<Output = std::io::Result<()>> {
        Application::run_until_stopped(self)
    }
}

/// Loads and validates `S` (a bad setting stops here, named) and starts telemetry; keep the guard
/// alive for the life of the process (dropping it flushes the trace exporter).
pub fn start<S: ServiceSettings>(service: &'static str) -> anyhow::Result<(S, TelemetryGuard)> {
    let settings = S::load()?;
    let telemetry = init_telemetry(service, &settings.common().telemetry)?;
    Ok((settings, telemetry))
}

/// [`start`], then `build` and serve until stopped: a service's whole `main`.
pub async fn run<S, A, F, Fut>(service: &'static str, build: F) -> anyhow::Result<()>
where
    S: ServiceSettings,
    A: Serve,
    F: FnOnce(S) -> Fut,
    Fut: Future<Output = anyhow::Result<A>>,
{
    let (settings, _telemetry) = start::<S>(service)?;
    build(settings).await?.run_until_stopped().await?;
    Ok(())
}

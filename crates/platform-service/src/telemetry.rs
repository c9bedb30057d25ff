//! Logs and traces: one `init_telemetry` for every service.
//!
//! Logs go to stdout (JSON or pretty), filtered by `RUST_LOG` or `telemetry.filter`. When
//! `telemetry.otlp_endpoint` is set, spans are also exported over OTLP/HTTP in batches; the
//! returned [`TelemetryGuard`] flushes them on shutdown.
//!
//! [`init_test_telemetry`] installs the same layer stack for tests that export spans to a local
//! receiver; only its log lines go through the test harness's output capture instead of stdout.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::fmt::TestWriter;
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::settings::{LogFormat, TelemetrySettings};

/// Installs ring as the process-wide rustls crypto provider. Every TLS user in the workspace
/// (reqwest, fred, sqlx) is built without a provider of its own, so this must run before the
/// first TLS client is built; it is idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Keeps the trace exporter alive; flushes it when dropped or on [`TelemetryGuard::shutdown`].
#[derive(Debug, Default)]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Exports every finished span now and waits for the export (blocking: from async code call
    /// it in `spawn_blocking`). A no-op without an exporter.
    pub fn force_flush(&self) -> anyhow::Result<()> {
        match &self.provider {
            Some(provider) => {
                provider.force_flush().map_err(|e| anyhow::anyhow!("trace flush failed: {e}"))
            }
            None => Ok(()),
        }
    }

    /// Flushes and stops the exporter.
    pub fn shutdown(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(error) = provider.shutdown()
        {
            tracing::warn!(%error, "trace exporter did not shut down cleanly");
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Sets the global subscriber. Call once, first thing in `main`.
pub fn init_telemetry(
    service: &'static str,
    settings: &TelemetrySettings,
) -> anyhow::Result<TelemetryGuard> {
    install(service, settings, LogOutput::Stdout)
}

/// [`init_telemetry`] for tests: the same filter, log format and OTLP export, with log lines
/// written through the test harness's capture (shown only for failing tests). Once per process.
pub fn init_test_telemetry(
    service: &'static str,
    settings: &TelemetrySettings,
) -> anyhow::Result<TelemetryGuard> {
    install(service, settings, LogOutput::TestCapture)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LogOutput {
    Stdout,
    TestCapture,
}

fn install(
    service: &'static str,
    settings: &TelemetrySettings,
    output: LogOutput,
) -> anyhow::Result<TelemetryGuard> {
    install_crypto_provider();
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.filter))
        .map_err(|e| anyhow::anyhow!("invalid setting `telemetry.filter`: {e}"))?;

    let writer = match output {
        LogOutput::Stdout => BoxMakeWriter::new(std::io::stdout),
        LogOutput::TestCapture => BoxMakeWriter::new(TestWriter::new()),
    };
    let fmt_layer = match settings.format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(writer)
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer().compact().with_writer(writer).boxed(),
    };

    let provider = match &settings.otlp_endpoint {
        Some(endpoint) => Some(tracer_provider(service, endpoint)?),
        None => None,
    };
    let otel_layer =
        provider.as_ref().map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer(service)));

    Registry::default()
        .with(filter)
        .with(fmt_layer)
        .with(otel_layer)
        .try_init()
        .map_err(|e| anyhow::anyhow!("telemetry already initialised: {e}"))?;
    tracing::info!(service, otlp = settings.otlp_endpoint.is_some(), "telemetry initialised");
    Ok(TelemetryGuard { provider })
}

/// A batch-exporting OTLP/HTTP tracer provider for `service`.
pub fn tracer_provider(service: &'static str, endpoint: &str) -> anyhow::Result<SdkTracerProvider> {
    let traces_url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(traces_url)
        .build()?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(service).build())
        .build())
}

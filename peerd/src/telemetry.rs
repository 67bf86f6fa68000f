//! Logging and tracing setup in Istio's style: `RUST_LOG`-style filter (default `info`),
//! plain text on a terminal, JSON lines with `LOG_FORMAT=json`; spans exported with
//! OpenTelemetry OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (the standard
//! `OTEL_*` variables apply: service name, headers, batch delays), off otherwise.
//!
//! The sync path is traced with spans named `xds.client.response` (upstream response),
//! `store.apply`, `federation.recompute`, `xds.server.push` and `xds.server.ack`.
//! Must never log secrets: callers pass tokens and keys to no `tracing` macro.

use anyhow::Context;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer};

/// The standard variable that turns OTLP export on.
pub const OTLP_ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// Keeps the trace exporter alive; [`Telemetry::shutdown`] flushes pending spans.
#[must_use = "dropping the guard without shutdown may lose the last spans"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports what is pending and stops the exporter.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown()
        {
            eprintln!("peerd: flushing traces: {e}");
        }
    }
}

/// Installs the global subscriber once; later calls are no-ops (tests call it freely).
pub fn init_logging() {
    // Without an endpoint there is nothing to flush.
    drop(init_with(None));
}

/// Logging plus OTLP export when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (and non-empty).
/// Must run inside a Tokio runtime (the exporter's gRPC channel lives there).
pub fn init() -> Telemetry {
    let endpoint = std::env::var(OTLP_ENDPOINT_ENV)
        .ok()
        .filter(|v| !v.trim().is_empty());
    init_with(endpoint.as_deref())
}

/// As [`init`], with the OTLP endpoint given (`None` = no export). A bad endpoint is
/// reported and tracing stays off: telemetry never stops peerd from starting.
pub fn init_with(otlp_endpoint: Option<&str>) -> Telemetry {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = if json {
        fmt.json().flatten_event(true).boxed()
    } else {
        fmt.boxed()
    };
    let (provider, otel, otel_error) = match otlp_endpoint.map(otlp_provider) {
        Some(Ok(provider)) => {
            let layer = tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("peerd"))
                // peerd's own spans; never the exporter's (it would trace itself).
                .with_filter(Targets::new().with_target("peerd", Level::INFO));
            (Some(provider), Some(layer), None)
        }
        Some(Err(e)) => (None, None, Some(e)),
        None => (None, None, None),
    };
    let result = tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(otel)
        .try_init();
    if let Some(e) = otel_error {
        tracing::error!(error = %format!("{e:#}"), "OTLP trace export disabled");
    }
    match result {
        Ok(()) => {
            if let Some(endpoint) = otlp_endpoint.filter(|_| provider.is_some()) {
                tracing::info!(endpoint, "exporting traces with OTLP/gRPC");
            }
            Telemetry { provider }
        }
        // Already initialised (tests, or an embedding program): keep the first.
        Err(_) => {
            if let Some(p) = provider {
                let _ = p.shutdown();
            }
            Telemetry { provider: None }
        }
    }
}

fn otlp_provider(endpoint: &str) -> anyhow::Result<SdkTracerProvider> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .with_context(|| format!("{OTLP_ENDPOINT_ENV}={endpoint}: building the OTLP exporter"))?;
    let service_name = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "peerd".to_string());
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service_name)
                .build(),
        )
        .build())
}

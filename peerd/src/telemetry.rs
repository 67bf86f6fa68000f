//! Logging setup in Istio's style: `RUST_LOG`-style filter (default `info`), plain text
//! on a terminal, JSON lines with `LOG_FORMAT=json`. Metrics and tracing exporters join
//! here. Must never log secrets: callers pass tokens and keys to no `tracing` macro.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber once; later calls are no-ops (tests call it freely).
pub fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
    // Already initialised (tests, or an embedding program): keep the first.
    drop(result);
}

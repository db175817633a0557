//! Logging setup: a `RUST_LOG`-style filter (default `info`) and text or JSON output.

use tracing_subscriber::{fmt, EnvFilter};

/// Installs the global subscriber. `format` is "text" or "json".
pub fn init(format: &str) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,openraft=warn,h2=warn,tower=warn"));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

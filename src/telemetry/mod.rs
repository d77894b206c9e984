//! Logging and metrics. Logging setup (tracing) is here; metrics are in [`prometheus`].
//!
//! Logging: Human-readable by default, JSON with `--log-format json`; the
//! level comes from `RUST_LOG` (default `info`). Logs go to standard error.
//!
//! What may be logged is decided where events are written: ids, codes, field names, counts
//! and timings — never field values, tokens or key material.

use tracing_subscriber::EnvFilter;

pub mod prometheus;

use crate::config::LogFormat;

/// Installs the global subscriber. Returns an error if one is installed already.
pub fn init(format: LogFormat) -> Result<(), String> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(false).try_init(),
    };
    result.map_err(|e| e.to_string())?;
    install_panic_hook();
    Ok(())
}

/// Replaces the default panic hook, which prints the panic message (possibly built from
/// data), with one that logs only where the panic happened.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let location = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
        tracing::error!(%location, "panic (message withheld: it may contain data)");
    }));
}

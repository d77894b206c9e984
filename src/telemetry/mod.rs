//! Logging and metrics. Logging setup (tracing) is here; metrics are in [`prometheus`].
//!
//! Logging: Human-readable by default, JSON with `--log-format json`; the
//! level comes from `RUST_LOG` (default `info`). Logs go to standard error, written by a
//! thread of their own: a request formats its line and hands it over; the writer thread sends
//! whatever has queued up in one write (one system call per request made the access log
//! line the costliest part of a cached read). Colour codes only on a terminal.
//!
//! What may be logged is decided where events are written: ids, codes, field names, counts
//! and timings — never field values, tokens or key material.

use tracing_subscriber::EnvFilter;

pub mod prometheus;
pub mod stage;
pub mod thread;

use crate::config::LogFormat;

/// Lines that may wait for the writer thread; past that, logging waits (never drops a line).
const QUEUED_LINES: usize = 64 * 1024;
/// The writer thread's buffer: lines queued up meanwhile go out in one write.
const WRITE_BUFFER: usize = 64 * 1024;

/// The log writer thread's guard, from [`init`] until [`finish`].
static WRITER: std::sync::Mutex<Option<tracing_appender::non_blocking::WorkerGuard>> = std::sync::Mutex::new(None);

/// Writes out every queued log line and stops the writer thread (the process is about to exit:
/// lines logged after this are lost). Call once, last thing before exiting.
pub fn finish() {
    let guard = WRITER.lock().unwrap_or_else(|p| p.into_inner()).take();
    drop(guard);
}

/// Installs the global subscriber and starts the log writer thread ([`finish`] stops it).
/// Returns an error if a subscriber is installed already.
pub fn init(format: LogFormat) -> Result<(), String> {
    use std::io::IsTerminal;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let ansi = std::io::stderr().is_terminal();
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(QUEUED_LINES)
        .thread_name("log-writer")
        .finish(std::io::BufWriter::with_capacity(WRITE_BUFFER, std::io::stderr()));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(writer);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(false).try_init(),
    };
    result.map_err(|e| e.to_string())?;
    *WRITER.lock().unwrap_or_else(|p| p.into_inner()) = Some(guard);
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

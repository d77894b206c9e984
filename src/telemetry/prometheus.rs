//! Metrics in Prometheus format, served on their own address (`--metrics-listen`,
//! `CUSTODIA_METRICS_LISTEN`, `metrics_listen`; off by default) at `/metrics`.
//!
//! The vault's layers record through the `metrics` facade with the names below; when metrics
//! are off no recorder is installed and every record is a no-op.
//!
//! Owns: the metric names, their buckets, the recorder and the scrape endpoint. Must never:
//! put a principal, a customer id, a field value or a request id in a label — labels are
//! routes (templates, not paths), methods, status codes, reasons and budget names, all from
//! small fixed sets.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Requests answered: `route`, `method`, `status`.
pub const HTTP_REQUESTS: &str = "custodia_http_requests_total";
/// Request latency in seconds, from the first byte read to the response: `route`, `method`.
pub const HTTP_DURATION: &str = "custodia_http_request_duration_seconds";
/// Events waiting for the audit writer.
pub const AUDIT_QUEUE: &str = "custodia_audit_queue_depth";
/// Events per audit group commit.
pub const AUDIT_BATCH: &str = "custodia_audit_batch_events";
/// Duration of an audit group commit, in seconds.
pub const AUDIT_COMMIT: &str = "custodia_audit_commit_seconds";
/// Audit commits that failed (each refused its batch's requests with 503).
pub const AUDIT_FAILURES: &str = "custodia_audit_commit_failures_total";
/// Requests the gate refused: `reason` (the problem code: forbidden, purpose_not_allowed, …).
pub const DENIALS: &str = "custodia_denials_total";
/// Requests refused because a budget was spent: `budget` (reveals, searches).
pub const BUDGET_REFUSALS: &str = "custodia_budget_refusals_total";
/// Open security alerts (sampled every maintenance tick).
pub const OPEN_ALERTS: &str = "custodia_open_alerts";
/// Data keys still wrapped under an older key-encryption key version.
pub const REWRAP_PENDING: &str = "custodia_rewrap_pending";
/// Database connections: `state` = busy, idle; and the pool's maximum.
pub const POOL_CONNECTIONS: &str = "custodia_db_pool_connections";
pub const POOL_MAX: &str = "custodia_db_pool_max_connections";
/// 1 while the database answers, 0 while the breaker refuses calls.
pub const DATABASE_UP: &str = "custodia_database_up";
/// SQLite: rounds of the background WAL checkpointer: `outcome` = synced, behind.
pub const CHECKPOINT_ROUNDS: &str = "custodia_sqlite_checkpoint_rounds_total";
/// SQLite: how long a write held the one writer's turn (from being granted it to releasing it:
/// its transaction and commit), in seconds: `kind` = audit, customers, budget, other.
pub const SQLITE_WRITE: &str = "custodia_sqlite_write_seconds";
/// SQLite: how long a write waited for the writer's turn, in seconds: `kind` as above.
pub const SQLITE_WRITE_WAIT: &str = "custodia_sqlite_write_wait_seconds";
/// SQLite: where a slow write turn's time went (turns over 25 ms only), in seconds: `kind` as
/// above, `step` = begin (reopening, `BEGIN IMMEDIATE`), statements, commit (the WAL's write and
/// sync, and a checkpoint if the commit ran one).
pub const SQLITE_SLOW_WRITE_STEP: &str = "custodia_sqlite_slow_write_step_seconds";
/// SQLite: what the writing thread did during a slow write turn (over 25 ms), in seconds: `kind`
/// as above, `state` = running (on a CPU), runnable (waiting for a CPU), blocked (the disk, a
/// lock). Linux only.
pub const SQLITE_SLOW_WRITE_THREAD: &str = "custodia_sqlite_slow_write_thread_seconds";
/// SQLite: how far the access log's customer index trails, in sequence numbers (the last event
/// naming a customer, less the index's mark; `?customer=` reads events past the mark
/// unindexed), sampled after each of the index thread's turns.
pub const SQLITE_INDEX_LAG: &str = "custodia_sqlite_audit_index_lag_events";

/// Where a request waited on another thread, in seconds: `stage` = read, audit (queued to
/// answered: the read queue or the audit writer, its queue and its work), read_resume,
/// audit_resume (answered to the request's task running again: the wait for a runtime worker).
pub const REQUEST_STAGE: &str = "custodia_request_stage_seconds";

/// Latency buckets, seconds: 0.5 ms to 10 s.
const LATENCY_BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Batch-size buckets, events.
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0];

/// Errors starting the metrics endpoint.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("metrics recorder: {0}")]
    Recorder(String),
    #[error("metrics listener on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
}

/// Whether a recorder is installed (per-request labels are not even built otherwise).
static ENABLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether metrics are being recorded in this process.
pub fn enabled() -> bool {
    ENABLED.load(std::sync::atomic::Ordering::Relaxed)
}

/// The process's recorder, installed once (several vault instances in one process, as in the
/// tests, share it).
fn handle() -> Result<&'static PrometheusHandle, TelemetryError> {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    if let Some(h) = HANDLE.get() {
        return Ok(h);
    }
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(AUDIT_BATCH.into()), BATCH_BUCKETS))
        .map_err(|e| TelemetryError::Recorder(e.to_string()))?
        .build_recorder();
    let handle = recorder.handle();
    // Only the first caller installs; a lost race keeps the winner's recorder.
    if ::metrics::set_global_recorder(recorder).is_ok() {
        let _ = HANDLE.set(handle);
        ENABLED.store(true, std::sync::atomic::Ordering::Relaxed);
        describe();
        // Histograms keep raw samples until upkeep folds them in: bound that memory.
        tokio::spawn(async {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                if let Some(h) = HANDLE.get() {
                    h.run_upkeep();
                }
            }
        });
    }
    HANDLE.get().ok_or_else(|| TelemetryError::Recorder("another metrics recorder is installed".into()))
}

/// The `# HELP` lines.
fn describe() {
    use ::metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(HTTP_REQUESTS, "Requests answered, by route template, method and status");
    describe_histogram!(HTTP_DURATION, Unit::Seconds, "Request latency, by route template and method");
    describe_gauge!(AUDIT_QUEUE, "Audit events waiting for the writer");
    describe_histogram!(AUDIT_BATCH, Unit::Count, "Audit events per group commit");
    describe_histogram!(AUDIT_COMMIT, Unit::Seconds, "Duration of an audit group commit");
    describe_counter!(AUDIT_FAILURES, "Audit commits that failed (their requests were refused with 503)");
    describe_counter!(DENIALS, "Requests refused by the gate, by problem code");
    describe_counter!(BUDGET_REFUSALS, "Requests refused because a per-principal budget was spent");
    describe_gauge!(OPEN_ALERTS, "Open security alerts");
    describe_gauge!(REWRAP_PENDING, "Data keys still wrapped under an older key-encryption key");
    describe_gauge!(POOL_CONNECTIONS, "Database read connections, busy or idle");
    describe_gauge!(POOL_MAX, "Most database read connections");
    describe_gauge!(DATABASE_UP, "1 while PostgreSQL answers, 0 while the breaker refuses calls");
    describe_counter!(
        CHECKPOINT_ROUNDS,
        "SQLite: background checkpoint rounds, by outcome (synced: the database file was synced off the commit path; behind: commits or readers kept it from catching up)"
    );
    describe_histogram!(
        SQLITE_WRITE,
        Unit::Seconds,
        "SQLite: time a write held the one writer's turn (transaction and commit), by kind (audit, customers, budget, other)"
    );
    describe_histogram!(SQLITE_WRITE_WAIT, Unit::Seconds, "SQLite: time a write waited for the writer's turn, by kind");
    describe_histogram!(
        SQLITE_SLOW_WRITE_STEP,
        Unit::Seconds,
        "SQLite: write turns over 25 ms, time by step (begin, statements, commit) and kind"
    );
    describe_histogram!(
        SQLITE_SLOW_WRITE_THREAD,
        Unit::Seconds,
        "SQLite: write turns over 25 ms, the writing thread's time by state (running, runnable: waiting for a CPU, blocked) and kind"
    );
    describe_gauge!(
        SQLITE_INDEX_LAG,
        "SQLite: how far the access log's customer index trails, in sequence numbers (events past its mark are searched unindexed)"
    );
    describe_histogram!(
        REQUEST_STAGE,
        Unit::Seconds,
        "Where a request waited on another thread, by stage (read, audit: queued to answered; read_resume, audit_resume: answered to running again)"
    );
}

/// The running metrics endpoint.
#[derive(Debug)]
pub struct MetricsServer {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Installs the recorder and serves `/metrics` on `addr`.
pub async fn serve(addr: SocketAddr) -> Result<MetricsServer, TelemetryError> {
    let handle = handle()?;
    let listener =
        tokio::net::TcpListener::bind(addr).await.map_err(|source| TelemetryError::Listen { addr, source })?;
    let addr = listener.local_addr().map_err(|source| TelemetryError::Listen { addr, source })?;
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || async move {
                (
                    [
                        (axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8"),
                        (axum::http::header::CACHE_CONTROL, "no-store"),
                    ],
                    handle.render(),
                )
            }),
        )
        .fallback(|| async { (axum::http::StatusCode::NOT_FOUND, "not found\n") });
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics endpoint stopped");
        }
    });
    tracing::info!(%addr, "metrics on http://{addr}/metrics");
    Ok(MetricsServer { addr, task })
}

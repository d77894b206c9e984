//! Background loops that requests wait on (the audit writer, which also commits the creates,
//! and the read combiner) run on a thread
//! of their own with a single-threaded runtime. On the shared runtime each of their awaits
//! queued behind every runnable request task, so under load a group commit waited for the
//! very requests that were waiting for it.
//!
//! These threads may block on local work (the SQLite store runs its direct statements inline
//! there instead of handing them to the blocking pool: one thread hop fewer per batch).
//!
//! Owns: starting such threads. Must never: run request handling.

use std::cell::Cell;
use std::future::Future;

thread_local! {
    static DEDICATED: Cell<bool> = const { Cell::new(false) };
}

/// Whether the current thread is one of [`spawn_dedicated`]'s, whose only work is its loop:
/// blocking it on a local statement delays nothing else.
pub fn on_dedicated_thread() -> bool {
    DEDICATED.with(Cell::get)
}

/// Runs `work` to completion on a new thread named `name`. Logs (and drops `work`) when the
/// thread or its runtime cannot be created; callers then see their queue closed.
pub fn spawn_dedicated<F>(name: &str, work: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, thread = name, "cannot start a background runtime");
            return;
        }
    };
    if let Err(e) = std::thread::Builder::new().name(name.to_owned()).spawn(move || {
        DEDICATED.with(|d| d.set(true));
        runtime.block_on(work)
    }) {
        tracing::error!(error = %e, thread = name, "cannot start a background thread");
    }
}

//! Where a request's time goes when it waits on another thread: the read queue's thread for
//! its record, the audit writer's thread for its event's commit. Each hand-off is timed in two
//! parts — from being queued to being answered (the other thread's queue and work), and from
//! being answered to the request's task running again (the wait for a runtime worker, which is
//! queueing for a CPU when the vault's cores are busy) — in
//! `custodia_request_stage_seconds{stage}`.
//!
//! Owns: the answer's time stamp and the stage histogram. Must never: carry anything but a
//! time stamp beside the answer, or label a stage with more than its fixed name.

use std::time::Instant;

/// An answer handed back from another thread, stamped with when it was handed over.
#[derive(Debug)]
pub struct Handed<T> {
    pub value: T,
    at: Instant,
}

impl<T> Handed<T> {
    /// The answer, handed over now.
    pub fn now(value: T) -> Self {
        Handed { value, at: Instant::now() }
    }

    /// The answer, handed over at `at` (one stamp for a whole batch's answers).
    pub fn at(value: T, at: Instant) -> Self {
        Handed { value, at }
    }

    /// The answer, once the waiting task runs again: records the stage (`queued` is when the
    /// job was queued) and its resume wait.
    pub fn resumed(self, stage: Stage, queued: Instant) -> T {
        if crate::telemetry::prometheus::enabled() {
            let now = Instant::now();
            let (answered, resume) =
                (self.at.saturating_duration_since(queued), now.saturating_duration_since(self.at));
            let (work, wake) = stage.labels();
            metrics::histogram!(super::prometheus::REQUEST_STAGE, "stage" => work).record(answered.as_secs_f64());
            metrics::histogram!(super::prometheus::REQUEST_STAGE, "stage" => wake).record(resume.as_secs_f64());
        }
        self.value
    }
}

/// A hand-off to another thread.
#[derive(Clone, Copy, Debug)]
pub enum Stage {
    /// A record read through the read queue.
    Read,
    /// An event (or a create with its event) committed by the audit writer.
    Audit,
}

impl Stage {
    /// The labels of its two parts: queued to answered, answered to running again.
    fn labels(self) -> (&'static str, &'static str) {
        match self {
            Stage::Read => ("read", "read_resume"),
            Stage::Audit => ("audit", "audit_resume"),
        }
    }
}

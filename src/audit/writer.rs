//! The audit writer: one task per vault instance that appends events in batches (group commit:
//! all the events waiting when a transaction starts go into it) and acknowledges each only
//! after its transaction committed. It also signs checkpoints every `checkpoint_every` events
//! or `checkpoint_interval`.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{mpsc, oneshot};

use super::checkpoint::CheckpointSigner;
use super::event::AuditEvent;
use crate::store::{Store, StoreError};

/// Most events in one transaction.
const MAX_BATCH: usize = 1024;
/// Events that may wait for the writer.
const QUEUE: usize = 8192;

/// Why an event was not committed. The caller must not disclose anything.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit store unavailable: {0}")]
    Store(#[from] StoreError),
    #[error("audit writer stopped")]
    Stopped,
}

enum Job {
    Append(AuditEvent, oneshot::Sender<Result<i64, String>>),
}

/// Checkpoint cadence.
#[derive(Clone, Copy, Debug)]
pub struct CheckpointPolicy {
    pub every: i64,
    pub interval: Duration,
}

/// The handle the rest of the vault writes events through.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Job>,
    store: Arc<dyn Store>,
    signer: Arc<CheckpointSigner>,
    policy: CheckpointPolicy,
    last_checkpoint: Arc<tokio::sync::Mutex<Option<i64>>>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Job")
    }
}

impl AuditLog {
    /// Starts the writer and checkpoint tasks.
    pub fn start(store: Arc<dyn Store>, signer: Arc<CheckpointSigner>, policy: CheckpointPolicy) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let last_checkpoint = Arc::new(tokio::sync::Mutex::new(None::<i64>));
        let writer = write_loop(store.clone(), rx, signer.clone(), policy, last_checkpoint.clone());
        crate::background::spawn_dedicated("audit-writer", writer);
        tokio::spawn(checkpoint_loop(store.clone(), signer.clone(), policy, last_checkpoint.clone(), tx.downgrade()));
        AuditLog { tx, store, signer, policy, last_checkpoint }
    }

    /// Signs a checkpoint of the head now if any event is unsigned (at shutdown: the log is
    /// left with no unsigned tail). Every event acknowledged is already committed; this only
    /// seals them. Returns the head's sequence number.
    pub async fn checkpoint_now(&self) -> Result<i64, AuditError> {
        let head = self.store.audit_head().await?;
        maybe_checkpoint(
            &*self.store,
            &self.signer,
            self.policy,
            &self.last_checkpoint,
            head.seq,
            &head.chain_hash,
            true,
        )
        .await;
        Ok(head.seq)
    }

    /// Appends an event and waits until it is durably committed; returns its sequence number.
    pub async fn append(&self, event: AuditEvent) -> Result<i64, AuditError> {
        let (ack, done) = oneshot::channel();
        self.tx.send(Job::Append(event, ack)).await.map_err(|_| AuditError::Stopped)?;
        match done.await {
            Ok(Ok(seq)) => Ok(seq),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "AUDIT WRITE FAILED: request refused");
                Err(AuditError::Stopped)
            }
            Err(_) => Err(AuditError::Stopped),
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }
}

async fn write_loop(
    store: Arc<dyn Store>,
    mut rx: mpsc::Receiver<Job>,
    signer: Arc<CheckpointSigner>,
    policy: CheckpointPolicy,
    last_checkpoint: Arc<tokio::sync::Mutex<Option<i64>>>,
) {
    // Events and their acknowledgements side by side: the events go to the store as they are.
    let mut events: Vec<AuditEvent> = Vec::new();
    let mut acks: Vec<oneshot::Sender<Result<i64, String>>> = Vec::with_capacity(MAX_BATCH);
    while let Some(Job::Append(e, ack)) = rx.recv().await {
        events.push(e);
        acks.push(ack);
        while events.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(Job::Append(e, ack)) => {
                    events.push(e);
                    acks.push(ack);
                }
                Err(_) => break,
            }
        }
        let batch = std::mem::take(&mut events);
        let appended = batch.len() as i64;
        {
            use crate::telemetry::prometheus::{AUDIT_BATCH, AUDIT_QUEUE};
            metrics::gauge!(AUDIT_QUEUE).set(rx.len() as f64);
            metrics::histogram!(AUDIT_BATCH).record(appended as f64);
        }
        let started = std::time::Instant::now();
        let committed = store.append_audit(batch).await;
        metrics::histogram!(crate::telemetry::prometheus::AUDIT_COMMIT).record(started.elapsed().as_secs_f64());
        match committed {
            Ok(head) => {
                let first = head.seq - appended + 1;
                for (i, ack) in acks.drain(..).enumerate() {
                    let _ = ack.send(Ok(first + i as i64));
                }
                maybe_checkpoint(&*store, &signer, policy, &last_checkpoint, head.seq, &head.chain_hash, false).await;
            }
            Err(e) => {
                metrics::counter!(crate::telemetry::prometheus::AUDIT_FAILURES).increment(1);
                let msg = e.to_string();
                for ack in acks.drain(..) {
                    let _ = ack.send(Err(msg.clone()));
                }
            }
        }
    }
}

/// Signs the head when `every` events passed since the last checkpoint (or when `force`d and
/// anything is unsigned).
async fn maybe_checkpoint(
    store: &dyn Store,
    signer: &CheckpointSigner,
    policy: CheckpointPolicy,
    last: &tokio::sync::Mutex<Option<i64>>,
    seq: i64,
    chain_hash: &[u8],
    force: bool,
) {
    let mut last = last.lock().await;
    if last.is_none() {
        match store.latest_checkpoint().await {
            Ok(newest) => *last = Some(newest.map_or(0, |c| c.seq)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read audit checkpoints");
                return;
            }
        }
    }
    let since = seq - last.unwrap_or(0);
    if since <= 0 || (!force && since < policy.every) {
        return;
    }
    let cp = signer.sign(seq, chain_hash, Utc::now());
    match store.insert_checkpoint(&cp).await {
        Ok(()) => *last = Some(seq),
        Err(e) => tracing::warn!(error = %e, "cannot store audit checkpoint"),
    }
}

async fn checkpoint_loop(
    store: Arc<dyn Store>,
    signer: Arc<CheckpointSigner>,
    policy: CheckpointPolicy,
    last: Arc<tokio::sync::Mutex<Option<i64>>>,
    alive: mpsc::WeakSender<Job>,
) {
    let mut tick = tokio::time::interval(policy.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        if alive.upgrade().is_none() {
            return;
        }
        match store.audit_head().await {
            Ok(head) => maybe_checkpoint(&*store, &signer, policy, &last, head.seq, &head.chain_hash, true).await,
            Err(e) => tracing::warn!(error = %e, "cannot read the audit head for a checkpoint"),
        }
    }
}

//! The read-side group: single-customer reads waiting at the same moment are combined into
//! one query. (Creates are group-committed by the audit writer, with their events: see
//! [`crate::audit::writer`].)
//!
//! Owns: batching reads of records by id. Must never: change what is read, or answer a caller
//! with another caller's record.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::{CustomerRecord, Store, StoreError};
use crate::telemetry::stage::{Handed, Stage};

/// Reads that may wait for the loop.
const QUEUE: usize = 4096;

/// What a caller is told when the database (or the loop serving it) is unavailable.
fn unavailable() -> StoreError {
    StoreError::Unavailable(sqlx::Error::PoolClosed)
}

/// Most customers in one combined read.
const MAX_READ_BATCH: usize = 64;
/// Combined reads in flight at once (PostgreSQL: each a round trip to the server). On SQLite
/// the read runs inline on this loop's own thread, so reads there go one batch at a
/// time, and each batch holds whatever arrived during the previous one.
const READS_IN_FLIGHT: usize = 4;

type ReadAck = oneshot::Sender<Handed<Result<Option<CustomerRecord>, StoreError>>>;

/// Combines single-customer reads that wait at the same moment into one `IN (…)` query (the
/// read-side counterpart of the group commit): each query is a round trip to a connection's
/// thread, which under load cost more than the lookup itself. Each record still comes from
/// one statement, so it is never torn between versions. An idle vault sends each read alone,
/// at once; nothing waits for a batch to fill.
#[derive(Clone, Debug)]
pub struct ReadQueue {
    tx: mpsc::Sender<(uuid::Uuid, ReadAck)>,
}

impl ReadQueue {
    /// Starts the loop on its own thread.
    pub fn start(store: Arc<dyn Store>) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        crate::background::spawn_dedicated("read-queue", read_loop(store, rx));
        ReadQueue { tx }
    }

    /// One customer record, whatever its region (the caller checks scope).
    pub async fn customer(&self, id: uuid::Uuid) -> Result<Option<CustomerRecord>, StoreError> {
        let (ack, done) = oneshot::channel();
        let queued = std::time::Instant::now();
        self.tx.send((id, ack)).await.map_err(|_| unavailable())?;
        done.await.map_err(|_| unavailable())?.resumed(Stage::Read, queued)
    }
}

async fn read_loop(store: Arc<dyn Store>, mut rx: mpsc::Receiver<(uuid::Uuid, ReadAck)>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(READS_IN_FLIGHT));
    let everywhere = [crate::domain::RegionId::group()];
    loop {
        // Take a slot first, so the batch gathers whatever arrives while every slot is busy.
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let Some(first) = rx.recv().await else { return };
        let mut batch = vec![first];
        while batch.len() < MAX_READ_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let store = store.clone();
        let everywhere = everywhere.clone();
        tokio::spawn(async move {
            let _slot = slot;
            if let [(id, _)] = batch.as_slice() {
                let result = store.customer(*id).await;
                if let Some((_, ack)) = batch.pop() {
                    let _ = ack.send(Handed::now(result));
                }
                return;
            }
            let mut ids: Vec<uuid::Uuid> = batch.iter().map(|(id, _)| *id).collect();
            ids.sort_unstable();
            ids.dedup();
            let mut found = Vec::with_capacity(ids.len());
            let mut failed = None;
            for part in super::pow2_chunks(&ids, MAX_READ_BATCH) {
                match store.customers_by_ids(part, &everywhere).await {
                    Ok(records) => found.extend(records),
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            match failed {
                Some(e) if e.is_unavailable() => {
                    tracing::warn!(error = %e, reads = batch.len(), "database unavailable: combined read refused");
                    for (_, ack) in batch {
                        let _ = ack.send(Handed::now(Err(unavailable())));
                    }
                    return;
                }
                Some(e) => {
                    // Each caller gets its own outcome from its own read.
                    tracing::warn!(error = %e, reads = batch.len(), "combined read failed; reading one by one");
                    for (id, ack) in batch {
                        let _ = ack.send(Handed::now(store.customer(id).await));
                    }
                    return;
                }
                None => {}
            }
            let at = std::time::Instant::now();
            for (id, ack) in batch {
                let record = found.iter().find(|r| r.id == id).cloned();
                let _ = ack.send(Handed::at(Ok(record), at));
            }
        });
    }
}

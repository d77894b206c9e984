//! The audit writer: one task per vault instance that appends events in batches (group commit:
//! all the events waiting when a transaction starts go into it) and acknowledges each only
//! after its transaction committed. New customers ride in the same transaction as their
//! create events and the other events waiting with them, so a create costs a share of one
//! synced commit, the same one its neighbours' reads wait for, instead of a commit of its own
//! beside it (on SQLite, one writer takes one commit at a time: two streams of commits doubled
//! the time it spent syncing). It also signs checkpoints every `checkpoint_every` events or
//! `checkpoint_interval`.
//!
//! A create whose caller has gone (timed out, disconnected) before its batch starts is dropped,
//! never committed behind the caller's back. When a batch carrying creates fails on a
//! constraint (a duplicate id, a concurrent retry's idempotency key), its events are committed
//! without the creates, then each create alone: one bad record fails neither the reads beside
//! it nor the other creates, and each caller gets its own outcome. Any other failure (database
//! unreachable, locked, full) is every caller's answer at once: retrying one by one would wait
//! out the same fault once per job.
//!
//! Owns: the order of the chain and the batching of its commits. Must never: acknowledge an
//! event or a create before its commit, or change what is written.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::{mpsc, oneshot};

use super::checkpoint::CheckpointSigner;
use super::event::AuditEvent;
use crate::store::{AuditBatch, CustomerRecord, Store, StoreError};
use crate::telemetry::stage::{Handed, Stage};

/// Most events in one transaction.
const MAX_BATCH: usize = 1024;
/// Most creates in one transaction (each is a record, its fields and its index entries).
const MAX_CREATES: usize = 256;
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

type AppendAck = oneshot::Sender<Handed<Result<i64, String>>>;
type CreateAck = oneshot::Sender<Handed<Result<(), StoreError>>>;

enum Job {
    Append(AuditEvent, AppendAck),
    Create(Box<CustomerRecord>, AuditEvent, CreateAck),
}

/// Who is told about an event of the batch once it commits.
enum Ack {
    Append(AppendAck),
    /// A create; the batch's records are in the order of its `Create` acks.
    Create(CreateAck),
}

/// What a create's caller is told when the database (or the writer) is unavailable.
fn unavailable() -> StoreError {
    StoreError::Unavailable(sqlx::Error::PoolClosed)
}

/// Checkpoint cadence, and the pacing of group commits.
#[derive(Clone, Copy, Debug)]
pub struct CheckpointPolicy {
    pub every: i64,
    pub interval: Duration,
    /// The least time between the starts of two group commits (`audit.commit_min_interval_us`).
    pub commit_spacing: Duration,
    /// Events per second from which every commit waits out the whole spacing
    /// (`audit.commit_spacing_always_above`; 0: never).
    pub spacing_always_above: u64,
}

/// How long the writer measures the event rate over (see [`Pace`]).
const RATE_WINDOW: Duration = Duration::from_millis(100);

/// The writer's recent event rate, and whether it is past `spacing_always_above`.
///
/// Measured on a 5,000-request-a-second soak on the test VM: the spacing waited only while
/// events were still to come left ≈ 1,000 commits (and disk flushes) a second, because under
/// evenly spread arrivals there is rarely one still to come; waiting out the whole spacing
/// halved the flushes, and the audit writer's turns over 25 ms (each a stall of every answer
/// waiting for it, in the disk's writeback) fell from 2–8 a minute to 0–1.
#[derive(Debug)]
struct Pace {
    threshold: u64,
    window_start: Instant,
    events: u64,
    busy: bool,
}

impl Pace {
    fn new(threshold: u64, now: Instant) -> Pace {
        Pace { threshold, window_start: now, events: 0, busy: false }
    }

    /// Counts a batch's events; at the end of each window, decides whether the rate is past
    /// the threshold.
    fn count(&mut self, events: usize, now: Instant) {
        self.events += events as u64;
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed >= RATE_WINDOW {
            let per_second = self.events as f64 / elapsed.as_secs_f64();
            self.busy = self.threshold > 0 && per_second >= self.threshold as f64;
            self.window_start = now;
            self.events = 0;
        }
    }

    /// Whether the next commit waits out the whole spacing.
    fn busy(&self) -> bool {
        self.busy
    }
}

/// The events still to come: requests under way whose events are not yet closed. A group
/// commit under load waits a little for them (PostgreSQL's `commit_delay` waits only when
/// `commit_siblings` transactions are active, for the same reason): when none is under way,
/// as for a client sending one request at a time, waiting would only delay it.
#[derive(Debug, Default)]
struct Company {
    coming: AtomicUsize,
    /// Set while the writer waits for them, on its thread (`thread`).
    waiting: AtomicBool,
    thread: OnceLock<std::thread::Thread>,
}

impl Company {
    fn arrived(&self) {
        if self.coming.fetch_sub(1, Ordering::SeqCst) == 1 && self.waiting.load(Ordering::SeqCst) {
            if let Some(t) = self.thread.get() {
                t.unpark();
            }
        }
    }

    /// Waits until `due`, or (unless `whole`) until no event is still to come, whichever is
    /// first. On the writer's own thread the thread itself waits, to the kernel timer's
    /// precision (the runtime's timer counts whole milliseconds) and woken when the last event
    /// comes; elsewhere (tests) the runtime sleeps in millisecond steps.
    async fn wait_until(&self, due: Instant, whole: bool) {
        let done = |now: Instant| now >= due || (!whole && self.coming.load(Ordering::SeqCst) == 0);
        if crate::background::on_dedicated_thread() {
            let _ = self.thread.set(std::thread::current());
            self.waiting.store(!whole, Ordering::SeqCst);
            loop {
                let now = Instant::now();
                if done(now) {
                    break;
                }
                std::thread::park_timeout(due - now);
            }
            self.waiting.store(false, Ordering::SeqCst);
        } else {
            while !done(Instant::now()) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
}

/// An event the audit writer counts on: taken when a request starts, given back (dropped) when
/// its event is closed for writing. See [`AuditLog::expect`].
#[derive(Debug)]
pub struct Expected(Arc<Company>);

impl Drop for Expected {
    fn drop(&mut self) {
        self.0.arrived();
    }
}

/// The handle the rest of the vault writes events through.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Job>,
    company: Arc<Company>,
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
        let company = Arc::new(Company::default());
        let writer = write_loop(store.clone(), rx, signer.clone(), policy, last_checkpoint.clone(), company.clone());
        crate::background::spawn_dedicated("audit-writer", writer);
        tokio::spawn(checkpoint_loop(store.clone(), signer.clone(), policy, last_checkpoint.clone(), tx.downgrade()));
        AuditLog { tx, company, store, signer, policy, last_checkpoint }
    }

    /// Counts an event to come (a request's, from its start) until the returned guard is
    /// dropped: while any is, a group commit under load waits up to `commit_spacing` for
    /// company.
    pub fn expect(&self) -> Expected {
        self.company.coming.fetch_add(1, Ordering::SeqCst);
        Expected(self.company.clone())
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
        let queued = std::time::Instant::now();
        self.tx.send(Job::Append(event, ack)).await.map_err(|_| AuditError::Stopped)?;
        match done.await.map(|h| h.resumed(Stage::Audit, queued)) {
            Ok(Ok(seq)) => Ok(seq),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "AUDIT WRITE FAILED: request refused");
                Err(AuditError::Stopped)
            }
            Err(_) => Err(AuditError::Stopped),
        }
    }

    /// Inserts a new customer `record` with its audit `event` in the writer's next group
    /// commit; returns once both are committed. Nothing is inserted if this future is dropped
    /// before the batch starts.
    pub async fn create(&self, record: CustomerRecord, event: AuditEvent) -> Result<(), StoreError> {
        let (ack, done) = oneshot::channel();
        let queued = std::time::Instant::now();
        self.tx.send(Job::Create(Box::new(record), event, ack)).await.map_err(|_| unavailable())?;
        done.await.map_err(|_| unavailable())?.resumed(Stage::Audit, queued)
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
    company: Arc<Company>,
) {
    // The batch: its events in arrival order (the chain's order) and the records of its
    // creates; who to tell about each event. Its buffers are reused from batch to batch.
    let mut batch = AuditBatch { records: Vec::with_capacity(MAX_CREATES), events: Vec::with_capacity(MAX_BATCH) };
    let mut acks: Vec<Ack> = Vec::with_capacity(MAX_BATCH);
    let mut last_start: Option<Instant> = None;
    let mut pace = Pace::new(policy.spacing_always_above, Instant::now());
    while let Some(first) = rx.recv().await {
        // Under load, the rest of the spacing since the last commit started is waited out
        // while other requests' events are still to come, and what arrives meanwhile shares
        // this commit; past `spacing_always_above` events a second, waited out whole. After a
        // quiet spell the spacing has passed; with nothing else under way and a low rate there
        // is no one to wait for.
        if let Some(due) = last_start.map(|s| s + policy.commit_spacing) {
            company.wait_until(due, pace.busy()).await;
        }
        last_start = Some(Instant::now());
        let mut next = Some(first);
        while let Some(job) = next.take() {
            match job {
                Job::Append(e, ack) => {
                    batch.events.push(e);
                    acks.push(Ack::Append(ack));
                }
                Job::Create(record, e, ack) => {
                    if !ack.is_closed() {
                        batch.events.push(e);
                        acks.push(Ack::Create(ack));
                        batch.records.push(*record);
                    }
                }
            }
            if batch.events.len() < MAX_BATCH && batch.records.len() < MAX_CREATES {
                next = rx.try_recv().ok();
            }
        }
        if batch.events.is_empty() {
            continue;
        }
        pace.count(batch.events.len(), Instant::now());
        {
            use crate::telemetry::prometheus::{AUDIT_BATCH, AUDIT_QUEUE};
            metrics::gauge!(AUDIT_QUEUE).set(rx.len() as f64);
            metrics::histogram!(AUDIT_BATCH).record(batch.events.len() as f64);
        }
        let shared = Arc::new(std::mem::take(&mut batch));
        let head = commit(&*store, &shared, &mut acks).await;
        if let Some(head) = head {
            maybe_checkpoint(&*store, &signer, policy, &last_checkpoint, head.seq, &head.chain_hash, false).await;
        }
        // The store has normally let go of the batch by now and its buffers are taken back,
        // emptied; if a timed-out write still holds it, the next batch starts with new ones.
        batch = Arc::try_unwrap(shared).unwrap_or_default();
        batch.events.clear();
        batch.records.clear();
        acks.clear();
    }
}

/// Commits one batch and answers every job in it; the head after the last commit, if any
/// committed.
async fn commit(store: &dyn Store, batch: &Arc<AuditBatch>, acks: &mut Vec<Ack>) -> Option<crate::store::AuditHead> {
    let started = std::time::Instant::now();
    let committed = store.append_audit(batch.clone()).await;
    metrics::histogram!(crate::telemetry::prometheus::AUDIT_COMMIT).record(started.elapsed().as_secs_f64());
    match committed {
        Ok(head) => {
            answer(head.seq - acks.len() as i64 + 1, acks.drain(..));
            Some(head)
        }
        // Only a batch with creates is retried: a record is what can break a constraint.
        Err(e) if e.is_constraint() && !batch.records.is_empty() => {
            tracing::warn!(error = %e, events = acks.len(), "group commit failed on a constraint; committing its creates one by one");
            separately(store, batch, acks.drain(..)).await
        }
        Err(e) => {
            refuse(&e, acks.drain(..));
            None
        }
    }
}

/// Tells each job of a committed batch, the first of which got sequence number `first`.
fn answer(first: i64, acks: impl Iterator<Item = Ack>) {
    let at = std::time::Instant::now();
    for (i, ack) in acks.enumerate() {
        match ack {
            Ack::Append(ack) => {
                let _ = ack.send(Handed::at(Ok(first + i as i64), at));
            }
            Ack::Create(ack) => {
                let _ = ack.send(Handed::at(Ok(()), at));
            }
        }
    }
}

/// Tells each job of a batch that failed as a whole (nothing of it was committed).
fn refuse(e: &StoreError, acks: impl Iterator<Item = Ack>) {
    metrics::counter!(crate::telemetry::prometheus::AUDIT_FAILURES).increment(1);
    let msg = e.to_string();
    for ack in acks {
        match ack {
            Ack::Append(ack) => {
                let _ = ack.send(Handed::now(Err(msg.clone())));
            }
            Ack::Create(ack) => {
                let _ = ack.send(Handed::now(Err(unavailable())));
            }
        }
    }
}

/// A batch with creates that failed on a constraint, again: its other events in one
/// transaction, then each create alone with its event, each caller told its own outcome.
/// (The rare path: the batch's parts are copied into their own commits.)
async fn separately(
    store: &dyn Store,
    batch: &AuditBatch,
    acks: impl Iterator<Item = Ack>,
) -> Option<crate::store::AuditHead> {
    let mut records = batch.records.iter();
    let (mut plain, mut plain_acks, mut creates) = (Vec::new(), Vec::new(), Vec::new());
    for (event, ack) in batch.events.iter().zip(acks) {
        match ack {
            Ack::Append(ack) => {
                plain.push(event.clone());
                plain_acks.push(Ack::Append(ack));
            }
            Ack::Create(ack) => {
                if let Some(record) = records.next() {
                    creates.push((record, event, ack));
                }
            }
        }
    }
    let mut head = None;
    if !plain.is_empty() {
        match store.append_audit(AuditBatch::events(plain)).await {
            Ok(h) => {
                answer(h.seq - plain_acks.len() as i64 + 1, plain_acks.into_iter());
                head = Some(h);
            }
            Err(e) => refuse(&e, plain_acks.into_iter()),
        }
    }
    for (record, event, ack) in creates {
        if ack.is_closed() {
            continue;
        }
        let one = Arc::new(AuditBatch { records: vec![record.clone()], events: vec![event.clone()] });
        match store.append_audit(one).await {
            Ok(h) => {
                let _ = ack.send(Handed::now(Ok(())));
                head = Some(h);
            }
            Err(e) => {
                let _ = ack.send(Handed::now(Err(e)));
            }
        }
    }
    head
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

#[cfg(test)]
mod tests {
    //! The writer's batches against real databases (SQLite always; PostgreSQL when
    //! `CUSTODIA_TEST_POSTGRES_URL` is set). Jobs are queued before the loop starts, so they
    //! all fall into one batch.

    use super::*;
    use crate::domain::{CustomerKind, CustomerStatus};
    use crate::store::SealedField;

    fn record(id: uuid::Uuid) -> CustomerRecord {
        let now = Utc::now();
        CustomerRecord {
            id,
            region: "440100".to_owned(),
            kind: CustomerKind::Individual,
            vip_level: 0,
            status: CustomerStatus::Active,
            version: 1,
            wrapped_key: crate::crypto::envelope::WrappedKey { kek_version: 1, bytes: vec![7; 40] },
            created_at: now,
            updated_at: now,
            fields: vec![SealedField { name: "name".to_owned(), sealed: vec![9; 30] }],
            index: Vec::new(),
        }
    }

    fn event(action: &str, customer: uuid::Uuid) -> AuditEvent {
        let mut e = AuditEvent::now(format!("req-{}", uuid::Uuid::now_v7()), action);
        e.customer_ids = vec![customer];
        e
    }

    /// Runs one batch of jobs through the writer and returns the answers in queue order.
    async fn one_batch(store: Arc<dyn Store>, jobs: Vec<Job>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        for job in jobs {
            assert!(tx.try_send(job).is_ok());
        }
        drop(tx);
        let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let signer = Arc::new(CheckpointSigner::load(&root.join("keys-example/audit-ed25519.pem")).unwrap());
        let policy = CheckpointPolicy {
            every: 1_000_000,
            interval: Duration::from_secs(3600),
            commit_spacing: Duration::ZERO,
            spacing_always_above: 0,
        };
        write_loop(store, rx, signer, policy, Arc::new(tokio::sync::Mutex::new(None)), Arc::default()).await;
    }

    /// Fails when the constraint fallback (`separately`) is removed: the duplicate create then
    /// fails the reads' events and the good create of its batch with it.
    async fn a_bad_create_fails_only_itself(store: Arc<dyn Store>) {
        let (a, b, gone) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
        let (read1, read1_done) = oneshot::channel();
        let (create_a, create_a_done) = oneshot::channel();
        let (dup, dup_done) = oneshot::channel();
        let (read2, read2_done) = oneshot::channel();
        let (create_b, create_b_done) = oneshot::channel();
        let (create_gone, gone_done) = oneshot::channel();
        drop(gone_done);
        one_batch(
            store.clone(),
            vec![
                Job::Append(event("customer.read", a), read1),
                Job::Create(Box::new(record(a)), event("customer.create", a), create_a),
                Job::Create(Box::new(record(a)), event("customer.create", a), dup),
                Job::Create(Box::new(record(gone)), event("customer.create", gone), create_gone),
                Job::Append(event("customer.read", b), read2),
                Job::Create(Box::new(record(b)), event("customer.create", b), create_b),
            ],
        )
        .await;
        let (s1, s2) = (read1_done.await.unwrap().value.unwrap(), read2_done.await.unwrap().value.unwrap());
        assert_eq!((s1, s2), (1, 2), "the reads' events commit in their order");
        create_a_done.await.unwrap().value.unwrap();
        create_b_done.await.unwrap().value.unwrap();
        let dup = dup_done.await.unwrap().value.unwrap_err();
        assert!(dup.is_constraint(), "{dup}");
        assert!(store.customer(a).await.unwrap().is_some());
        assert!(store.customer(b).await.unwrap().is_some());
        assert!(store.customer(gone).await.unwrap().is_none(), "a create whose caller left was committed");
        let events = store.audit_events_after(0, 100).await.unwrap();
        let actions: Vec<_> = events.iter().map(|e| e.event.action.as_str()).collect();
        assert_eq!(actions, ["customer.read", "customer.read", "customer.create", "customer.create"]);
        assert_eq!(store.audit_head().await.unwrap().seq, 4);
    }

    /// Fails when the creates leave the writer's chain order (their events must sit between
    /// the reads' events exactly as they were queued) or their records go missing.
    async fn creates_and_events_commit_together(store: Arc<dyn Store>) {
        let ids: Vec<_> = (0..5).map(|_| uuid::Uuid::now_v7()).collect();
        let (mut jobs, mut created, mut read) = (Vec::new(), Vec::new(), Vec::new());
        for id in &ids {
            let (ack, done) = oneshot::channel();
            jobs.push(Job::Create(Box::new(record(*id)), event("customer.create", *id), ack));
            created.push(done);
            let (ack, done) = oneshot::channel();
            jobs.push(Job::Append(event("customer.read", *id), ack));
            read.push(done);
        }
        one_batch(store.clone(), jobs).await;
        for (i, (c, r)) in created.into_iter().zip(read).enumerate() {
            c.await.unwrap().value.unwrap();
            assert_eq!(r.await.unwrap().value.unwrap(), 2 * i as i64 + 2);
        }
        for id in &ids {
            assert!(store.customer(*id).await.unwrap().is_some());
        }
        let events = store.audit_events_after(0, 100).await.unwrap();
        for (i, e) in events.iter().enumerate() {
            assert!(e.customer_ids_text.contains(&ids[i / 2].to_string()), "{i}: {}", e.customer_ids_text);
            assert_eq!(e.event.action, if i % 2 == 0 { "customer.create" } else { "customer.read" });
        }
        assert_eq!(events.len(), 10);
    }

    async fn sqlite() -> (tempfile::TempDir, Arc<dyn Store>) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("w.db").display());
        let store = crate::store::open(&url, &crate::store::StoreOptions::default()).await.unwrap();
        (dir, store)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_a_bad_create_fails_only_itself() {
        let (_dir, store) = sqlite().await;
        a_bad_create_fails_only_itself(store).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_creates_and_events_commit_together() {
        let (_dir, store) = sqlite().await;
        creates_and_events_commit_together(store).await;
    }

    /// Starts a writer as the vault does (on a thread of its own) with the given commit spacing
    /// and rate threshold; its queue and its count of events to come.
    fn spaced_writer(store: Arc<dyn Store>, spacing: Duration, above: u64) -> (mpsc::Sender<Job>, Arc<Company>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let signer = Arc::new(CheckpointSigner::load(&root.join("keys-example/audit-ed25519.pem")).unwrap());
        let policy = CheckpointPolicy {
            every: 1_000_000,
            interval: Duration::from_secs(3600),
            commit_spacing: spacing,
            spacing_always_above: above,
        };
        let company = Arc::new(Company::default());
        let last = Arc::new(tokio::sync::Mutex::new(None));
        crate::background::spawn_dedicated(
            "test-audit-writer",
            write_loop(store, rx, signer, policy, last, company.clone()),
        );
        (tx, company)
    }

    /// Appends one read event through the queue and waits for its sequence number.
    async fn append(tx: mpsc::Sender<Job>) -> i64 {
        let (ack, done) = oneshot::channel();
        tx.send(Job::Append(event("customer.read", uuid::Uuid::now_v7()), ack)).await.unwrap();
        done.await.unwrap().value.unwrap()
    }

    /// Fails when the wait before a commit is removed (the events behind the first then commit
    /// at once although another request is under way), when it ignores who is under way (the
    /// lone client's event then waits too), or when the last event to come does not end it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_commit_waits_for_company_only_while_requests_are_under_way() {
        let (_dir, store) = sqlite().await;
        let spacing = Duration::from_millis(400);
        // Far below the rate threshold: the spacing is waited only while events are to come.
        let (tx, company) = spaced_writer(store, spacing, 1_000_000);
        let under_way = || {
            company.coming.fetch_add(1, Ordering::SeqCst);
            Expected(company.clone())
        };
        // Nothing else under way: each event of a client sending one at a time commits at once.
        let start = Instant::now();
        for seq in 1..=3 {
            assert_eq!(append(tx.clone()).await, seq);
        }
        assert!(start.elapsed() < spacing / 2, "a lone client's events waited: {:?}", start.elapsed());
        // Another request under way: the events behind a commit wait for the rest of the spacing.
        let other = under_way();
        let start = Instant::now();
        assert_eq!(append(tx.clone()).await, 4);
        let (a, b) = tokio::join!(append(tx.clone()), append(tx.clone()));
        assert!(start.elapsed() >= spacing, "the next commit started {:?} after the last", start.elapsed());
        assert_eq!(a.min(b), 5);
        // The wait ends as soon as the last event to come is closed.
        let waiting = tokio::spawn(append(tx.clone()));
        let start = Instant::now();
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(other);
        assert_eq!(waiting.await.unwrap(), 7);
        assert!(start.elapsed() < spacing / 2, "the wait outlasted the last request under way: {:?}", start.elapsed());
        drop(tx);
    }

    /// Past the rate threshold every commit waits out the whole spacing, though no other event
    /// is to come. Fails when `Pace` never reports the rate, or when the busy wait still ends as
    /// soon as no event is to come.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn past_the_rate_threshold_every_commit_waits_out_the_spacing() {
        let (_dir, store) = sqlite().await;
        let spacing = Duration::from_millis(300);
        // One event a second is the threshold: two events 150 ms apart are past it.
        let (tx, _company) = spaced_writer(store, spacing, 1);
        // The rate is not known yet (no window has passed): the second event commits at once.
        assert_eq!(append(tx.clone()).await, 1);
        tokio::time::sleep(Duration::from_millis(150)).await;
        let start = Instant::now();
        assert_eq!(append(tx.clone()).await, 2);
        assert!(start.elapsed() < spacing / 3, "below the threshold a lone event waited: {:?}", start.elapsed());
        // Now past it: the third waits for the spacing since the second commit started.
        let start = Instant::now();
        assert_eq!(append(tx.clone()).await, 3);
        assert!(start.elapsed() >= spacing * 3 / 4, "the commit did not wait out the spacing: {:?}", start.elapsed());
        drop(tx);
    }

    /// The rate is decided per window of `RATE_WINDOW`: past the threshold is busy, below it or
    /// with the threshold 0 is not, and a quiet window ends being busy.
    #[test]
    fn the_pace_follows_the_event_rate() {
        let t0 = Instant::now();
        let mut pace = Pace::new(1_000, t0);
        pace.count(50, t0 + Duration::from_millis(20));
        assert!(!pace.busy(), "decided before a window passed");
        pace.count(100, t0 + Duration::from_millis(100));
        assert!(pace.busy(), "150 events in 100 ms is 1,500 a second");
        pace.count(10, t0 + Duration::from_millis(250));
        assert!(!pace.busy(), "10 events in 150 ms is below 1,000 a second");
        let mut never = Pace::new(0, t0);
        never.count(1_000_000, t0 + Duration::from_millis(100));
        assert!(!never.busy(), "a threshold of 0 turns it off");
    }

    /// A fresh PostgreSQL database, dropped at the end, when one is configured.
    async fn postgres(test: impl AsyncFnOnce(Arc<dyn Store>)) {
        use sqlx::Connection;
        let Ok(admin_url) = std::env::var("CUSTODIA_TEST_POSTGRES_URL") else {
            eprintln!("PostgreSQL part SKIPPED: CUSTODIA_TEST_POSTGRES_URL is not set");
            return;
        };
        let name = format!("custodia_w_{}", uuid::Uuid::new_v4().simple());
        let mut admin = sqlx::PgConnection::connect(&admin_url).await.unwrap();
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await.unwrap();
        let (base, _) = admin_url.rsplit_once('/').unwrap();
        let store =
            crate::store::open(&format!("{base}/{name}"), &crate::store::StoreOptions::default()).await.unwrap();
        test(store.clone()).await;
        drop(store);
        sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut admin).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_a_bad_create_fails_only_itself() {
        postgres(a_bad_create_fails_only_itself).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_creates_and_events_commit_together() {
        postgres(creates_and_events_commit_together).await;
    }
}

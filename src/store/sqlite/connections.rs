//! SQLite connections (rusqlite, used off the async runtime): one writer, a set of read-only
//! readers (with the audit index file attached, see `links.rs`), and the WAL checkpointer.
//!
//! Owns: opening connections with the store's settings and handing them out in turn. Must
//! never: run a statement on an async worker thread.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::links::{Attached, Generation};
use crate::store::StoreError;
use crate::telemetry::thread::ThreadClock;

/// How long a statement waits for another process's lock on the file.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the background checkpointer runs a round (see [`checkpoint_round`]).
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);
/// WAL pages after which a commit checkpoints by itself (~16 MB; SQLite's default is 1,000).
/// By then the background checkpointer has normally copied the frames back already, so the
/// commit's own checkpoint finds little to do, and the WAL is restarted from its beginning as
/// soon as no reader needs its frames: under constant reads and writes a WAL restarts only
/// opportunistically, so without this bound it would grow.
const AUTOCHECKPOINT_BACKSTOP: &str = "4000";
/// The writer's page cache, 16 MiB (SQLite's default is 2 MiB): inserts into the random-keyed
/// blind index stay in memory longer. Readers keep the default.
const WRITER_CACHE_SIZE: &str = "-16384";

/// Runs blocking SQLite work: inline on a dedicated background thread (the audit writer, the
/// queues: nothing else runs there), on the blocking pool from anywhere else.
pub(super) async fn off_runtime<R: Send + 'static>(
    work: impl FnOnce() -> Result<R, StoreError> + Send + 'static,
) -> Result<R, StoreError> {
    if crate::background::on_dedicated_thread() {
        return work();
    }
    tokio::task::spawn_blocking(work).await.map_err(|_| StoreError::Corrupt("SQLite task stopped"))?
}

/// Waits for a permit, at most `wait`; like an exhausted pool, unavailable after that.
async fn turn(permits: &Arc<Semaphore>, wait: Duration) -> Result<OwnedSemaphorePermit, StoreError> {
    match tokio::time::timeout(wait, permits.clone().acquire_owned()).await {
        Ok(Ok(permit)) => Ok(permit),
        Ok(Err(_)) | Err(_) => Err(StoreError::Saturated),
    }
}

/// Opens the file read-write (creating it), in WAL mode with `synchronous = FULL` (a commit is
/// durable when it returns), foreign keys on, and the writer's checkpoint and cache settings.
pub(super) fn open_writer(path: &Path) -> Result<Connection, StoreError> {
    let c = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    c.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String = c.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Config(format!("SQLite refused WAL mode (journal mode {mode})")));
    }
    c.pragma_update(None, "synchronous", "FULL")?;
    c.pragma_update(None, "foreign_keys", "ON")?;
    c.pragma_update(None, "wal_autocheckpoint", AUTOCHECKPOINT_BACKSTOP)?;
    c.pragma_update(None, "cache_size", WRITER_CACHE_SIZE)?;
    c.set_prepared_statement_cache_capacity(64);
    Ok(c)
}

/// Whether a commit waits for the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sync {
    /// `synchronous = FULL`: durable when the commit returns (every write but budget counts).
    Full,
    /// `synchronous = NORMAL`: durable with the next `Full` commit (see [`Writer::write_unsynced`]).
    Deferred,
}

/// What a write is, for the writer's metrics (`custodia_sqlite_write_seconds` and
/// `custodia_sqlite_write_wait_seconds`, label `kind`): which writes hold the one turn, and
/// for how long, shows where the audit commits that every answer waits for are delayed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum WriteKind {
    /// An audit group commit (the events of answered reads, searches, reveals, denials), with
    /// the creates waiting with them.
    Audit,
    /// Customers updated, erased or restricted (with their events), created outside the audit
    /// writer (seeding, imports), or their search index rebuilt.
    Customers,
    /// A per-principal budget charged.
    Budget,
    /// Anything else: grants, alerts, checkpoints, maintenance.
    Other,
}

impl WriteKind {
    fn label(self) -> &'static str {
        match self {
            WriteKind::Audit => "audit",
            WriteKind::Customers => "customers",
            WriteKind::Budget => "budget",
            WriteKind::Other => "other",
        }
    }
}

/// A write turn that holds the writer this long or longer is split by step and by what its thread
/// did (`custodia_sqlite_slow_write_*`): every answer waiting for an audit commit waits this long.
const SLOW_TURN: Duration = Duration::from_millis(25);

/// The steps of a write turn, in order (indices into [`Steps::ends`]).
const BEGIN: usize = 0;
const STATEMENTS: usize = 1;
const COMMIT: usize = 2;
const STEP_LABELS: [&str; 3] = ["begin", "statements", "commit"];

/// When a write turn's steps ended, and its thread's scheduler clock over the turn (kept only
/// when metrics are on; reported only for turns of at least [`SLOW_TURN`]).
struct Steps {
    started: Instant,
    clock: Option<ThreadClock>,
    /// When each step ended; a step not reached (the turn failed) stays `None`.
    ends: [Option<Instant>; 3],
    /// The thread's running and runnable time over the turn, taken when it ends.
    thread: Option<ThreadClock>,
}

impl Steps {
    fn start() -> Steps {
        Steps { started: Instant::now(), clock: ThreadClock::now(), ends: [None; 3], thread: None }
    }

    fn mark(&mut self, step: usize) {
        if let Some(end) = self.ends.get_mut(step) {
            *end = Some(Instant::now());
        }
        if step == COMMIT {
            self.thread = self.clock.zip(ThreadClock::now()).map(|(start, now)| now.since(&start));
        }
    }

    /// Each step reached and its time, in order.
    fn steps(&self) -> Vec<(&'static str, Duration)> {
        let mut from = self.started;
        let mut out = Vec::with_capacity(STEP_LABELS.len());
        for (end, step) in self.ends.iter().zip(STEP_LABELS) {
            let Some(end) = *end else { break };
            out.push((step, end.duration_since(from)));
            from = end;
        }
        out
    }

    /// The thread's time running, runnable and blocked over a turn that committed (where the
    /// kernel offers the clock).
    fn states(&self) -> Option<[(&'static str, Duration); 3]> {
        let (thread, end) = (self.thread?, self.ends[COMMIT]?);
        let blocked = end.duration_since(self.started).saturating_sub(thread.running + thread.runnable);
        Some([("running", thread.running), ("runnable", thread.runnable), ("blocked", blocked)])
    }

    fn record(&self, kind: WriteKind) {
        use crate::telemetry::prometheus::{SQLITE_SLOW_WRITE_STEP, SQLITE_SLOW_WRITE_THREAD};
        for (step, time) in self.steps() {
            metrics::histogram!(SQLITE_SLOW_WRITE_STEP, "kind" => kind.label(), "step" => step)
                .record(time.as_secs_f64());
        }
        for (state, time) in self.states().into_iter().flatten() {
            metrics::histogram!(SQLITE_SLOW_WRITE_THREAD, "kind" => kind.label(), "state" => state)
                .record(time.as_secs_f64());
        }
    }
}

/// The one read-write connection of this process. Writes take turns (a permit, waited for
/// without blocking the runtime), each in one `IMMEDIATE` transaction.
pub(super) struct Writer {
    path: PathBuf,
    conn: Mutex<Option<Connection>>,
    permit: Arc<Semaphore>,
    wait: Duration,
}

impl Writer {
    pub(super) fn new(path: PathBuf, conn: Connection, wait: Duration) -> Self {
        Writer { path, conn: Mutex::new(Some(conn)), permit: Arc::new(Semaphore::new(1)), wait }
    }

    /// Runs `f` in one `IMMEDIATE` transaction, committed if `f` succeeds, rolled back
    /// otherwise. The turn is handed to the blocking work, so it stays held even if the caller
    /// stops waiting.
    pub(super) async fn write<R: Send + 'static>(
        self: &Arc<Self>,
        kind: WriteKind,
        f: impl FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        self.write_with(kind, Sync::Full, f).await
    }

    /// Like [`Writer::write`], but the commit does not wait for the disk (`synchronous =
    /// NORMAL` for this one transaction): it survives the process being killed, and reaches the
    /// disk with the next synced commit, which in WAL mode syncs every frame appended before
    /// it. For counters whose every use is followed by a synced commit before any answer (the
    /// budgets: the request's own audit event), where a commit of their own would add an
    /// fsync per request.
    pub(super) async fn write_unsynced<R: Send + 'static>(
        self: &Arc<Self>,
        kind: WriteKind,
        f: impl FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        self.write_with(kind, Sync::Deferred, f).await
    }

    async fn write_with<R: Send + 'static>(
        self: &Arc<Self>,
        kind: WriteKind,
        sync: Sync,
        f: impl FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let asked = Instant::now();
        let held = turn(&self.permit, self.wait).await?;
        // Held from here to its release, the hand-over to a blocking thread included: the
        // writer is as unavailable to others then as during the transaction.
        // The label is not even built when metrics are off (a non-literal label allocates).
        let granted = Instant::now();
        let timed = crate::telemetry::prometheus::enabled();
        if timed {
            metrics::histogram!(crate::telemetry::prometheus::SQLITE_WRITE_WAIT, "kind" => kind.label())
                .record(granted.duration_since(asked).as_secs_f64());
        }
        let writer = self.clone();
        off_runtime(move || {
            let mut steps = timed.then(Steps::start);
            let written = writer.transaction(sync, steps.as_mut(), f);
            drop(held);
            if timed {
                let turn = granted.elapsed();
                metrics::histogram!(crate::telemetry::prometheus::SQLITE_WRITE, "kind" => kind.label())
                    .record(turn.as_secs_f64());
                if let Some(steps) = steps.filter(|_| turn >= SLOW_TURN) {
                    steps.record(kind);
                }
            }
            written
        })
        .await
    }

    fn transaction<R>(
        &self,
        sync: Sync,
        mut steps: Option<&mut Steps>,
        f: impl FnOnce(&Connection) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let mut slot = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        // A connection that failed was dropped (which rolled back its transaction): reopen.
        let mut conn = match slot.take() {
            Some(c) => c,
            None => open_writer(&self.path)?,
        };
        if sync == Sync::Deferred {
            // A connection left in this mode would commit audit events unsynced: on any
            // failure here or below it is dropped, and a reopened one is `FULL` again.
            conn.pragma_update(None, "synchronous", "NORMAL")?;
        }
        let mut mark = |step: usize| {
            if let Some(s) = steps.as_deref_mut() {
                s.mark(step);
            }
        };
        let written: Result<R, StoreError> = (|| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            mark(BEGIN);
            let out = f(&tx)?;
            mark(STATEMENTS);
            tx.commit()?;
            Ok(out)
        })();
        let restored = sync == Sync::Full || conn.pragma_update(None, "synchronous", "FULL").is_ok();
        if written.is_ok() {
            mark(COMMIT);
        }
        // Kept after a refused statement too (the transaction rolled back when dropped); a
        // connection whose commit failed is dropped, in case its state is unknown.
        if restored && (written.is_ok() || !matches!(&written, Err(e) if e.is_unavailable())) {
            *slot = Some(conn);
        }
        written
    }
}

/// Read-only connections to the store's file, opened on demand: at most `keep` at once (each
/// is three open files), all kept for reuse.
pub(super) struct Readers {
    path: PathBuf,
    /// Idle connections, each with the generation of the index file it attached.
    idle: Mutex<Vec<(Connection, u64)>>,
    /// The index file's generation now (see `links::Generation`).
    index: Generation,
    permits: Arc<Semaphore>,
    keep: usize,
    wait: Duration,
}

impl Readers {
    pub(super) fn new(path: PathBuf, index: Generation, keep: usize, wait: Duration) -> Self {
        Readers { path, idle: Mutex::new(Vec::new()), index, permits: Arc::new(Semaphore::new(keep)), keep, wait }
    }

    /// (busy, at most): readers in use, and how many may be.
    pub(super) fn occupancy(&self) -> (usize, usize) {
        (self.keep - self.permits.available_permits(), self.keep)
    }

    /// Runs `f` on a free connection, off the async runtime.
    pub(super) async fn read<R: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let held = turn(&self.permits, self.wait).await?;
        let readers = self.clone();
        off_runtime(move || {
            let read = readers.with(f);
            drop(held);
            read
        })
        .await
    }

    fn with<R>(&self, f: impl FnOnce(&Connection) -> Result<R, StoreError>) -> Result<R, StoreError> {
        let generation = self.index.current();
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        // A connection attached to an index file that has since been recreated is let go.
        let (conn, keep) = match idle {
            Some((c, attached)) if attached == generation => (c, true),
            _ => {
                let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
                let mut c = Connection::open_with_flags(&self.path, flags)?;
                c.busy_timeout(BUSY_TIMEOUT)?;
                // A connection with the index's stand-in serves this read only: the next one
                // tries the file again.
                let attached = super::links::attach(&mut c, &self.path)?;
                // IN lists come in power-of-two lengths, with or without a scope filter.
                c.set_prepared_statement_cache_capacity(64);
                (c, attached == Attached::File)
            }
        };
        let out = f(&conn);
        // A connection that failed is dropped rather than reused.
        if out.is_ok() && keep {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            if idle.len() < self.keep {
                idle.push((conn, generation));
            }
        }
        out
    }
}

/// Checkpoints the WAL every `CHECKPOINT_EVERY` on a connection and thread of its own until
/// `alive` is gone. `PASSIVE`: it never waits for, or blocks, the writer. Each round catches
/// up (see [`checkpoint_round`]), so that the database file is synced here, off the writer's
/// path: the commit that crosses `AUTOCHECKPOINT_BACKSTOP` then finds little to copy and little
/// to sync.
pub(super) fn spawn_checkpointer(path: PathBuf, alive: Weak<()>) {
    let started = std::thread::Builder::new().name("wal-checkpoint".into()).spawn(move || {
        let conn = match Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_WRITE)
            .and_then(|c| c.busy_timeout(BUSY_TIMEOUT).map(|()| c))
        {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot open the WAL checkpoint connection; commits checkpoint by themselves");
                return;
            }
        };
        while alive.upgrade().is_some() {
            std::thread::sleep(CHECKPOINT_EVERY);
            let outcome = match checkpoint_round(&conn) {
                Ok(Round::Synced) => "synced",
                Ok(Round::Behind) => "behind",
                Err(e) => {
                    tracing::warn!(error = %e, "WAL checkpoint failed");
                    continue;
                }
            };
            metrics::counter!(crate::telemetry::prometheus::CHECKPOINT_ROUNDS, "outcome" => outcome).increment(1);
        }
    });
    if let Err(e) = started {
        tracing::warn!(error = %e, "cannot start the WAL checkpointer; commits checkpoint by themselves");
    }
}

/// Most `PASSIVE` passes in one round of the checkpointer.
const PASSES_PER_ROUND: usize = 6;

/// How a round of the checkpointer ended (counted in `custodia_sqlite_checkpoint_rounds_total`:
/// a share of `behind` that stays high means the commits sync the database file themselves).
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Round {
    /// A pass copied every frame and no commit came in meanwhile: SQLite synced the database
    /// file in that pass.
    Synced,
    /// Commits kept arriving, or a reader held frames, through every pass.
    Behind,
}

/// Runs `PASSIVE` checkpoints back to back until one has provably synced the database file.
///
/// SQLite syncs the database file at the end of a checkpoint only if no commit arrived while it
/// copied; under a steady stream of commits a single pass every `CHECKPOINT_EVERY` almost never
/// does (one trace under load: 3 syncs in 172 passes), so the writer's own checkpoint at the
/// backstop then synced everything copied since, stalling every commit waiting behind it. A
/// pass that starts right after another copies only the frames of the few commits that came in
/// meanwhile, and so usually finishes before the next one. Two passes in a row reporting the
/// same WAL length, all of it copied, mean that no commit came in since the first of them
/// started: that pass synced the file, or found every frame already copied and synced by an
/// earlier checkpoint.
pub(super) fn checkpoint_round(conn: &Connection) -> rusqlite::Result<Round> {
    let mut last = None;
    for _ in 0..PASSES_PER_ROUND {
        let (log, copied): (i64, i64) =
            conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| Ok((r.get(1)?, r.get(2)?)))?;
        // Frames not copied (a reader still uses them) are taken by a later pass.
        if copied == log && last == Some(log) {
            return Ok(Round::Synced);
        }
        last = (copied == log).then_some(log);
    }
    Ok(Round::Behind)
}

/// Takes an exclusive lock on a file beside the database (released when dropped): processes
/// opening (and migrating) one file at once take turns.
pub(super) async fn lock_file(db_path: &Path) -> Result<std::fs::File, StoreError> {
    let db_path = db_path.to_owned();
    tokio::task::spawn_blocking(move || lock_file_blocking(&db_path))
        .await
        .map_err(|e| StoreError::Config(format!("migration lock task failed: {e}")))?
}

/// [`lock_file`], on the calling thread.
pub(super) fn lock_file_blocking(db_path: &Path) -> Result<std::fs::File, StoreError> {
    let mut lock_path = db_path.as_os_str().to_owned();
    lock_path.push(".migrate-lock");
    let locked = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(lock_path)
        .and_then(|file| file.lock().map(|()| file));
    locked.map_err(|e| StoreError::Config(format!("cannot lock migrations: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh file in WAL mode whose writer never checkpoints by itself.
    fn wal_file() -> (tempfile::TempDir, PathBuf, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let writer = open_writer(&path).unwrap();
        writer.pragma_update(None, "wal_autocheckpoint", "0").unwrap();
        (dir, path, writer)
    }

    fn frames(conn: &Connection) -> (i64, i64) {
        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| Ok((r.get(1).unwrap(), r.get(2).unwrap()))).unwrap()
    }

    #[test]
    fn a_round_copies_every_frame_and_reports_the_sync() {
        let (_dir, path, writer) = wal_file();
        writer.execute_batch("CREATE TABLE t (v BLOB)").unwrap();
        for _ in 0..50 {
            writer.execute("INSERT INTO t VALUES (randomblob(3000))", []).unwrap();
        }
        let checkpointer = Connection::open(&path).unwrap();
        // With no commit coming in, one round copies every frame the inserts left and says so.
        assert_eq!(checkpoint_round(&checkpointer).unwrap(), Round::Synced);
        let (log, copied) = frames(&checkpointer);
        assert!(log > 50, "the inserts should have left frames in the WAL, found {log}");
        assert_eq!(copied, log);
    }

    #[test]
    fn a_round_is_behind_while_a_reader_holds_frames() {
        let (_dir, path, writer) = wal_file();
        writer.execute_batch("CREATE TABLE t (v BLOB); INSERT INTO t VALUES (1)").unwrap();
        let reader = Connection::open(&path).unwrap();
        reader.execute_batch("BEGIN; SELECT count(*) FROM t;").unwrap();
        writer.execute("INSERT INTO t VALUES (randomblob(3000))", []).unwrap();
        let checkpointer = Connection::open(&path).unwrap();
        assert_eq!(checkpoint_round(&checkpointer).unwrap(), Round::Behind);
        reader.execute_batch("COMMIT").unwrap();
        assert_eq!(checkpoint_round(&checkpointer).unwrap(), Round::Synced);
    }

    /// A turn's time is split by step and by what its thread did: sleeping in the statements is
    /// `statements` and `blocked`, spinning there is `running` (fails if the marks or the clock
    /// readings move, or the states are mixed up).
    #[test]
    fn a_turn_is_split_by_step_and_thread_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let writer = Writer::new(path.clone(), open_writer(&path).unwrap(), Duration::from_secs(1));
        let turn = |work: fn()| {
            let mut steps = Steps::start();
            writer
                .transaction(Sync::Full, Some(&mut steps), |c| {
                    c.execute_batch("CREATE TABLE IF NOT EXISTS t (v BLOB); INSERT INTO t VALUES (randomblob(100))")?;
                    work();
                    Ok(())
                })
                .unwrap();
            steps
        };
        let ms = Duration::from_millis;

        let slept = turn(|| std::thread::sleep(Duration::from_millis(40)));
        let steps = slept.steps();
        assert_eq!(steps.iter().map(|(s, _)| *s).collect::<Vec<_>>(), STEP_LABELS);
        assert!(steps[1].1 >= ms(40) && steps[0].1 < ms(40) && steps[2].1 < ms(40), "{steps:?}");
        if let Some(states) = slept.states() {
            assert_eq!(states.map(|(s, _)| s), ["running", "runnable", "blocked"]);
            assert!(states[2].1 >= ms(35) && states[0].1 < ms(20), "{states:?}");
        } else {
            eprintln!("SKIPPED (thread states): no /proc/thread-self/schedstat on this kernel");
        }

        let spun = turn(|| {
            let start = Instant::now();
            while start.elapsed() < Duration::from_millis(40) {
                std::hint::black_box(());
            }
        });
        if let Some(states) = spun.states() {
            // On a busy machine part of the spin waits for a CPU; none of it is blocked.
            assert!(states[0].1 + states[1].1 >= ms(35), "{states:?}");
        }
    }

    /// A reader that could only attach the index's stand-in serves one read and is not kept;
    /// one attached to an index file that has since been recreated is let go (fails when
    /// `Readers` keeps either: the first would never read the index, the second would read a
    /// removed file).
    #[test]
    fn readers_keep_only_connections_to_the_current_index_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        let mut writer = open_writer(&path).unwrap();
        super::super::migrate::run(&mut writer).unwrap();
        let generation = Generation::default();
        let readers = Readers::new(path.clone(), generation.clone(), 2, Duration::from_secs(1));
        let through = || readers.with(|c| Ok(c.query_row(super::super::links::THROUGH, [], |r| r.get::<_, i64>(0))?));
        let kept = || readers.idle.lock().unwrap().iter().map(|(_, g)| *g).collect::<Vec<_>>();

        // No index file yet: a stand-in answers, and goes.
        assert_eq!(through().unwrap(), 0);
        assert_eq!(kept(), Vec::<u64>::new());
        super::super::links::prepare(&path, &writer).unwrap();
        assert_eq!(through().unwrap(), 0);
        assert_eq!(kept(), [0]);
        assert_eq!(through().unwrap(), 0);
        assert_eq!(kept(), [0]);
        // The file was recreated: the connection to the old one goes.
        generation.next();
        assert_eq!(through().unwrap(), 0);
        assert_eq!(kept(), [1]);
    }
}

//! The customer-keyed index of the access log, kept in a file of its own beside the database
//! (`<file>-audit-index`) and filled by a thread of its own.
//!
//! An event's links (which customers it concerns) are written with the event, in its synced
//! commit, to `audit_event_customers`, keyed by sequence number: the rightmost pages of one
//! B-tree. Access reports and `?customer=` searches need them by customer; a customer-keyed
//! B-tree costs one random page per link. In the database's own file, those pages held the one
//! writer a fifth of its time under load and went to disk with every audit commit's sync
//! (docs/PERFORMANCE.md, 2026-12-07). Here, the index thread copies the links into
//! `audit_customer_index`, sorted by customer, a turn at a time, and moves
//! `audit_customer_index_state.through` forward in the same transaction of the index file: it
//! never takes the database's write lock, and audit commits never wait for it.
//!
//! Readers attach the index file as schema `ix`. Queries take events up to `through` from the
//! index and events after it from `audit_event_customers` ([`CUSTOMER_EVENTS`]), so they see
//! every link, indexed or not.
//!
//! The index is derived: it holds customer ids and sequence numbers, no personal data, and can
//! always be rebuilt from the links. Its commits do not wait for the disk (`synchronous =
//! NORMAL`): a crash loses the last turns and their mark together, which the thread redoes. The
//! mark carries the chain hash of its event; an index whose mark does not match the database's
//! chain (a database restored from a backup, or copied without its index file) is emptied at
//! open and rebuilt, and until then queries read the links unindexed. Verification checks the
//! index against the links like any copy of the access log.
//!
//! Because it is derived, no state of the index file stops the vault or its reads. A file that
//! SQLite finds damaged is removed and rebuilt at open (a `-wal` left beside a removed file,
//! SQLite itself discards when it creates the new one). A file removed or replaced while the vault runs is noticed by the thread, which
//! recreates it and moves [`Generation`] on, so that readers drop connections holding the old
//! one. A reader that cannot attach the file gets an empty stand-in (mark 0: every link read
//! unindexed, correct but slower) and is not kept.
//!
//! Owns: the index file, its schema, its mark and the thread that fills it. Must never: write
//! to the database's own file, or change the index without its mark (or the mark without the
//! index).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use rusqlite::{Connection, DatabaseName, ErrorCode, OpenFlags, OptionalExtension, TransactionBehavior};

use crate::store::StoreError;

/// The index file's suffix, after the database file's name.
const SUFFIX: &str = "-audit-index";
/// The index file's layout; a file with another is emptied and rebuilt.
const LAYOUT: i64 = 1;
/// How long the thread rests after a turn that caught up. Queries scan at most the links
/// written since (by sequence number, a range of `audit_event_customers`' key).
const EVERY: Duration = Duration::from_millis(500);
/// Links per turn at most (an event's links are never split between turns). A turn holds only
/// the index file's write lock, which nothing on a request's path waits for.
const LINKS_PER_TURN: i64 = 8192;
/// How long a statement waits for another process's lock on either file.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

const SCHEMA_SQL: &str = "\
CREATE TABLE IF NOT EXISTS audit_customer_index (
    customer_id BLOB    NOT NULL,
    seq         INTEGER NOT NULL,
    PRIMARY KEY (customer_id, seq)
) WITHOUT ROWID;
-- Verification reads the index a range of sequence numbers at a time.
CREATE INDEX IF NOT EXISTS audit_customer_index_seq ON audit_customer_index (seq);
CREATE TABLE IF NOT EXISTS audit_customer_index_state (
    id           INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    through      INTEGER NOT NULL,
    through_hash BLOB
);
INSERT OR IGNORE INTO audit_customer_index_state (id, through, through_hash) VALUES (1, 0, NULL);
CREATE TRIGGER IF NOT EXISTS audit_customer_index_no_update BEFORE UPDATE ON audit_customer_index
BEGIN SELECT RAISE(ABORT, 'the customer index is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_customer_index_no_delete BEFORE DELETE ON audit_customer_index
BEGIN SELECT RAISE(ABORT, 'the customer index is append-only'); END;
-- The mark only moves forward.
CREATE TRIGGER IF NOT EXISTS audit_customer_index_state_forward BEFORE UPDATE ON audit_customer_index_state
WHEN NEW.through < OLD.through
BEGIN SELECT RAISE(ABORT, 'the customer index is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_customer_index_state_no_delete BEFORE DELETE ON audit_customer_index_state
BEGIN SELECT RAISE(ABORT, 'the customer index is append-only'); END;";
/// Empties the index: dropped and created again (the triggers go with their tables).
const DROP_SQL: &str = "DROP TABLE IF EXISTS audit_customer_index; DROP TABLE IF EXISTS audit_customer_index_state;";

/// The sequence numbers of a customer's events: the customer is bound after each part.
/// One statement: the index, its mark and the newer links come from one read transaction.
pub(super) const CUSTOMER_EVENTS: (&str, &str) = (
    "SELECT seq FROM ix.audit_customer_index WHERE customer_id = ",
    " UNION ALL SELECT seq FROM audit_event_customers \
     WHERE seq > (SELECT through FROM ix.audit_customer_index_state WHERE id = 1) AND customer_id = ",
);

/// The links of events `?1..=?2` as written with the events.
pub(super) const LINKS_BY_SEQ: &str =
    "SELECT seq, customer_id FROM audit_event_customers WHERE seq >= ?1 AND seq <= ?2 ORDER BY seq, customer_id";
/// The links of events `?1..=?2` as the customer index holds them.
pub(super) const INDEXED_LINKS: &str =
    "SELECT seq, customer_id FROM ix.audit_customer_index WHERE seq >= ?1 AND seq <= ?2 ORDER BY seq, customer_id";
/// How far the index is complete.
pub(super) const THROUGH: &str = "SELECT through FROM ix.audit_customer_index_state WHERE id = 1";
/// The last sequence number of the next turn: the event of the `LINKS_PER_TURN`-th link after
/// the mark, or the last link's (read from the database).
const TURN_END: &str = "SELECT coalesce(\
     (SELECT seq FROM audit_event_customers WHERE seq > ?1 ORDER BY seq LIMIT 1 OFFSET ?2), \
     (SELECT max(seq) FROM audit_event_customers WHERE seq > ?1))";
/// The links of one turn (read from the database).
const TURN_LINKS: &str = "SELECT customer_id, seq FROM audit_event_customers WHERE seq > ?1 AND seq <= ?2";
/// The chain hash of an event (read from the database).
const CHAIN_HASH: &str = "SELECT chain_hash FROM audit_events WHERE seq = ?1";
/// The index's mark and the chain hash of its event (in the index file).
const MARK: &str = "SELECT through, through_hash FROM audit_customer_index_state WHERE id = 1";
const INSERT: &str = "INSERT OR IGNORE INTO audit_customer_index (customer_id, seq) VALUES (?1, ?2)";
const MOVE_MARK: &str = "UPDATE audit_customer_index_state SET through = ?1, through_hash = ?2 WHERE id = 1";

/// The index file of the database at `database`.
pub(super) fn index_path(database: &Path) -> PathBuf {
    let mut p = database.as_os_str().to_owned();
    p.push(SUFFIX);
    PathBuf::from(p)
}

/// Which index file readers should have attached: the thread moves it on when it recreates a
/// file that was removed or replaced, and readers drop connections attached before.
#[derive(Clone, Default)]
pub(super) struct Generation(Arc<AtomicU64>);

impl Generation {
    pub(super) fn current(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    pub(super) fn next(&self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }
}

/// What a connection has attached as `ix`.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Attached {
    /// The index file.
    File,
    /// An empty stand-in: the file could not be attached.
    StandIn,
}

/// When a reader last warned that it could not attach the index file (seconds on a monotonic
/// clock, plus one): at most one warning every `WARN_EVERY`.
static WARNED: AtomicU64 = AtomicU64::new(0);
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Attaches the index file to a connection as schema `ix` (read-only on a read-only connection).
/// If it cannot (the file is missing, damaged or locked away), attaches an empty stand-in whose
/// mark is 0, so that queries read every link unindexed: correct, slower.
pub(super) fn attach(c: &mut Connection, database: &Path) -> Result<Attached, StoreError> {
    let index = index_path(database);
    let Some(index) = index.to_str() else {
        return Err(StoreError::Config("the SQLite file's path is not UTF-8".into()));
    };
    // SQLite opens an attached file when it is first read: read the mark to know.
    let attached =
        c.execute("ATTACH DATABASE ?1 AS ix", [index]).and_then(|_| c.query_row(THROUGH, [], |r| r.get::<_, i64>(0)));
    let Err(e) = attached else {
        return Ok(Attached::File);
    };
    warn_now_and_then(&e);
    if c.query_row("SELECT count(*) FROM pragma_database_list WHERE name = 'ix'", [], |r| r.get::<_, i64>(0))? > 0 {
        c.execute_batch("DETACH DATABASE ix")?;
    }
    // A read-only connection cannot write even to an in-memory database: the stand-in is built
    // on a connection of its own and loaded, read-only, as `ix`.
    let stand_in = Connection::open_in_memory()?;
    stand_in.execute_batch(SCHEMA_SQL)?;
    let rusqlite::serialize::Data::Owned(image) = stand_in.serialize(DatabaseName::Main)? else {
        return Err(StoreError::Corrupt("SQLite lent an in-memory database instead of copying it"));
    };
    c.execute_batch("ATTACH DATABASE ':memory:' AS ix")?;
    c.deserialize(DatabaseName::Attached("ix"), image, true)?;
    Ok(Attached::StandIn)
}

fn warn_now_and_then(e: &rusqlite::Error) {
    static STARTED: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let now = STARTED.get_or_init(Instant::now).elapsed().as_secs() + 1;
    let last = WARNED.load(Ordering::Relaxed);
    if (last == 0 || now >= last + WARN_EVERY.as_secs())
        && WARNED.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    {
        tracing::warn!(error = %e, "cannot attach the audit index file; customer queries of the access log read its links unindexed until it is back");
    }
}

/// Opens the index file read-write (creating it if `create`), in WAL mode with `synchronous =
/// NORMAL`. Only [`prepare`], under the store's opening lock, creates it.
fn open_index(database: &Path, create: bool) -> Result<Connection, StoreError> {
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if create {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    let c = Connection::open_with_flags(index_path(database), flags)?;
    c.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String = c.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Config(format!("the audit index file cannot use WAL (journal_mode {mode})")));
    }
    c.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(c)
}

/// The index file's journal beside it.
fn journal(index: &Path) -> [PathBuf; 2] {
    ["-wal", "-shm"].map(|suffix| {
        let mut p = index.as_os_str().to_owned();
        p.push(suffix);
        PathBuf::from(p)
    })
}

fn remove_if_present(path: &Path) -> Result<(), StoreError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(StoreError::Config(format!("cannot remove {}: {e}", path.display())))
        }
        _ => Ok(()),
    }
}

/// Whether SQLite found the file damaged, or not a database at all.
fn damaged(e: &StoreError) -> bool {
    matches!(e, StoreError::Sqlite(rusqlite::Error::SqliteFailure(f, _))
        if matches!(f.code, ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase))
}

/// Creates the index file if missing, and empties it if its layout is another or its mark does
/// not lie on `database`'s chain; removes and rebuilds a file SQLite finds damaged. `database`
/// is the migrated database (`c`: any connection to it), and the caller holds the store's
/// opening lock, so that no other process prepares the file meanwhile.
pub(super) fn prepare(database: &Path, c: &Connection) -> Result<(), StoreError> {
    let index = index_path(database);
    match prepare_file(database, c) {
        Err(e) if damaged(&e) => {
            tracing::warn!(error = %e, "the audit index file cannot be read: removing and rebuilding it; until then customer queries of the access log read its links unindexed");
            remove_if_present(&index)?;
            for stale in journal(&index) {
                remove_if_present(&stale)?;
            }
            prepare_file(database, c)
        }
        prepared => prepared,
    }
}

fn prepare_file(database: &Path, c: &Connection) -> Result<(), StoreError> {
    let mut index = open_index(database, true)?;
    let tx = index.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let layout: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let tables: i64 = tx.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))?;
    let stale = if layout != LAYOUT && tables > 0 {
        Some(format!("its layout is {layout}, this binary's {LAYOUT}"))
    } else if tables == 0 {
        None
    } else {
        let (through, hash): (i64, Option<Vec<u8>>) = tx.query_row(MARK, [], |r| Ok((r.get(0)?, r.get(1)?)))?;
        let chain: Option<Vec<u8>> = c.query_row(CHAIN_HASH, [through], |r| r.get(0)).optional()?;
        (through > 0 && (hash.is_none() || chain != hash))
            .then(|| format!("its mark (event {through}) is not on this database's chain"))
    };
    if let Some(why) = &stale {
        tracing::warn!(reason = %why, "the audit index file belongs to another copy of the database: rebuilding it; until then customer queries of the access log read its links unindexed");
        tx.execute_batch(DROP_SQL)?;
    }
    tx.execute_batch(SCHEMA_SQL)?;
    tx.pragma_update(None, "user_version", LAYOUT)?;
    tx.commit()?;
    Ok(())
}

/// The file at a path (device and inode), if there is one.
fn identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// The thread's connections: the index file (read-write) and the database (read-only).
struct Opened {
    index: Connection,
    log: Connection,
    /// The index file these were opened on.
    file: Option<(u64, u64)>,
}

/// Opens the index file and the database for the thread. `prepare_first`: under the store's
/// opening lock, prepares the file first (it was removed or replaced after the store opened).
fn open_thread(database: &Path, prepare_first: bool) -> Result<Opened, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let log = Connection::open_with_flags(database, flags)?;
    log.busy_timeout(BUSY_TIMEOUT)?;
    if prepare_first {
        let _lock = super::connections::lock_file_blocking(database)?;
        prepare(database, &log)?;
    }
    let index = open_index(database, false)?;
    Ok(Opened { index, log, file: identity(&index_path(database)) })
}

/// Starts the index thread; it stops when `alive` is gone. It moves `generation` on whenever it
/// recreates the file.
pub(super) fn spawn(database: PathBuf, generation: Generation, alive: Weak<()>) {
    let started = std::thread::Builder::new().name("audit-index".into()).spawn(move || {
        let path = index_path(&database);
        let mut opened = match open_thread(&database, false) {
            Ok(o) => Some(o),
            Err(e) => {
                tracing::warn!(error = %e, "cannot open the audit index file; customer queries of the access log read its newer links unindexed");
                None
            }
        };
        while alive.upgrade().is_some() {
            let moved = opened.as_ref().is_none_or(|o| o.file.is_none() || identity(&path) != o.file);
            if moved {
                // The file was removed or replaced while the vault runs (or could not be opened):
                // recreate it, and have readers let go of the old one.
                if opened.is_some() {
                    tracing::warn!("the audit index file was removed or replaced while the vault runs: recreating it");
                }
                opened = None;
                match open_thread(&database, true) {
                    Ok(o) => {
                        opened = Some(o);
                        generation.next();
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot recreate the audit index file yet; customer queries of the access log read its links unindexed");
                        std::thread::sleep(EVERY);
                        continue;
                    }
                }
            }
            let Some(Opened { index, log, .. }) = opened.as_mut() else { continue };
            let turned = turn(log, index);
            if let Ok(lag) = lag(log, index) {
                metrics::gauge!(crate::telemetry::prometheus::SQLITE_INDEX_LAG).set(lag as f64);
            }
            match turned {
                // Behind by a whole turn or more: on at once.
                Ok(copied) if copied as i64 >= LINKS_PER_TURN => {}
                // Caught up: back to back, each turn would find only the links written during
                // the last one, and pay a commit for a handful.
                Ok(_) => std::thread::sleep(EVERY),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot index the access log by customer yet; queries read the newer links unindexed");
                    std::thread::sleep(EVERY);
                }
            }
        }
    });
    if let Err(e) = started {
        tracing::warn!(error = %e, "cannot start the audit index thread; customer queries of the access log read its links unindexed");
    }
}

/// How far the index trails: the sequence number of the last event with links, less the mark.
fn lag(log: &Connection, index: &Connection) -> Result<i64, StoreError> {
    let through: i64 = index.query_row(MARK, [], |r| r.get(0))?;
    let last: i64 = log.query_row("SELECT coalesce(max(seq), 0) FROM audit_event_customers", [], |r| r.get(0))?;
    Ok((last - through).max(0))
}

/// One turn: copies the next links (at most `LINKS_PER_TURN`, whole events) from the database
/// `log` into the index in customer order, and moves the mark past them with its event's chain
/// hash, in one transaction of the index file. Returns the links copied.
fn turn(log: &Connection, index: &mut Connection) -> Result<usize, StoreError> {
    // The index file's lock first: a turn of another process in between cannot move the mark
    // under this one.
    let tx = index.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let through: i64 = tx.query_row(MARK, [], |r| r.get(0))?;
    let Some(end) = log.query_row(TURN_END, (through, LINKS_PER_TURN - 1), |r| r.get::<_, Option<i64>>(0))? else {
        return Ok(0);
    };
    // The links of events up to `end` are committed with their events and never change.
    let mut links = log
        .prepare_cached(TURN_LINKS)?
        .query_map((through, end), |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?)))?
        .collect::<Result<Vec<_>, _>>()?;
    let hash: Vec<u8> = log.query_row(CHAIN_HASH, [end], |r| r.get(0))?;
    // In key order: links to one customer share a page, and each page is written once.
    links.sort_unstable();
    {
        let mut insert = tx.prepare_cached(INSERT)?;
        for (customer, seq) in &links {
            insert.execute((customer, seq))?;
        }
        tx.prepare_cached(MOVE_MARK)?.execute((end, hash))?;
    }
    tx.commit()?;
    Ok(links.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(c: &Connection, sql: &str) -> Vec<String> {
        let mut stmt = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let n = stmt.parameter_count();
        let params: Vec<i64> = vec![1; n];
        stmt.query_map(rusqlite::params_from_iter(params), |r| r.get(3)).unwrap().map(Result::unwrap).collect()
    }

    /// A migrated database with its index file prepared, and a connection to it with the
    /// index attached, as readers have it.
    fn migrated() -> (tempfile::TempDir, PathBuf, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.db");
        let mut c = Connection::open(&path).unwrap();
        super::super::migrate::run(&mut c).unwrap();
        prepare(&path, &c).unwrap();
        attach(&mut c, &path).unwrap();
        (dir, path, c)
    }

    /// Writes event `seq` (chain hash `hash`) and its links, as the audit writer would.
    fn event(c: &Connection, seq: i64, hash: u8, customers: &[[u8; 16]]) {
        c.execute(
            "INSERT INTO audit_events (seq, time, request_id, action, customer_ids, fields, outcome, status, chain_hash) \
             VALUES (?1, '2026-12-07T00:00:00Z', 'r', 'customer.read', '[]', '[]', 'allowed', 200, ?2)",
            (seq, [hash; 32].as_slice()),
        )
        .unwrap();
        for id in customers {
            c.execute("INSERT INTO audit_event_customers (seq, customer_id) VALUES (?1, ?2)", (seq, id.as_slice()))
                .unwrap();
        }
    }

    fn count(c: &Connection, sql: &str) -> i64 {
        c.query_row(sql, [], |r| r.get(0)).unwrap()
    }

    /// Every statement here reads a range of a key, never a whole table: fails when an index of
    /// the index file or of migration 0010 is dropped, or a statement stops using its key.
    #[test]
    fn every_statement_reads_a_range_of_a_key() {
        let (_dir, _path, c) = migrated();
        let customer = format!("{}?1{}?2", CUSTOMER_EVENTS.0, CUSTOMER_EVENTS.1);
        for sql in [LINKS_BY_SEQ, INDEXED_LINKS, TURN_END, TURN_LINKS, CHAIN_HASH, THROUGH, &customer] {
            let steps = plan(&c, sql);
            let scans = steps.iter().filter(|s| s.starts_with("SCAN") && *s != "SCAN CONSTANT ROW");
            assert!(!steps.is_empty() && scans.count() == 0, "{sql}: {steps:?}");
        }
        assert_eq!(
            plan(&c, INDEXED_LINKS),
            ["SEARCH ix.audit_customer_index USING COVERING INDEX audit_customer_index_seq (seq>? AND seq<?)"]
        );
        assert_eq!(plan(&c, LINKS_BY_SEQ), ["SEARCH audit_event_customers USING PRIMARY KEY (seq>? AND seq<?)"]);
    }

    /// Turns copy every link exactly once, whole events at a time, and the mark ends on the last
    /// link's event with its chain hash; the database's own file holds no index (fails when a
    /// turn splits an event, skips links, or leaves the mark or its hash behind).
    #[test]
    fn turns_index_every_link_and_move_the_mark() {
        let (_dir, path, c) = migrated();
        let customers: Vec<[u8; 16]> = (0u8..7).map(|i| [i; 16]).collect();
        let mut n: i64 = 0;
        for seq in 1..=20_000i64 {
            // Every seventh event names no customer; some name two.
            let mut named = vec![];
            if seq % 7 != 0 {
                named.push(customers[(seq % 7) as usize]);
                if seq % 5 == 0 {
                    named.push(customers[((seq + 1) % 7) as usize]);
                }
            }
            n += named.len() as i64;
            event(&c, seq, (seq % 251) as u8, &named);
        }
        let log = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        let mut index = open_index(&path, false).unwrap();
        let mut turns = 0;
        loop {
            let before: i64 = c.query_row(THROUGH, [], |r| r.get(0)).unwrap();
            let written_before =
                count(&c, &format!("SELECT count(*) FROM audit_event_customers WHERE seq <= {before}"));
            let copied = turn(&log, &mut index).unwrap() as i64;
            if copied == 0 {
                break;
            }
            turns += 1;
            // Whole events: at most one event's links over the turn's bound.
            assert!(copied <= LINKS_PER_TURN + 1, "turn {turns}: {copied}");
            let through: i64 = c.query_row(THROUGH, [], |r| r.get(0)).unwrap();
            assert!(through > before);
            let indexed = count(&c, &format!("SELECT count(*) FROM ix.audit_customer_index WHERE seq <= {through}"));
            let written = count(&c, &format!("SELECT count(*) FROM audit_event_customers WHERE seq <= {through}"));
            assert_eq!((indexed, copied), (written, written - written_before), "turn {turns}");
        }
        assert_eq!(turns, (n + LINKS_PER_TURN - 1) / LINKS_PER_TURN, "{turns} turns for {n} links");
        let (through, hash): (i64, Vec<u8>) = c
            .query_row("SELECT through, through_hash FROM ix.audit_customer_index_state", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        let last = count(&c, "SELECT max(seq) FROM audit_event_customers");
        assert_eq!((through, hash), (last, vec![(last % 251) as u8; 32]));
        assert_eq!(count(&c, "SELECT count(*) FROM ix.audit_customer_index"), n);
        assert_eq!(count(&c, "SELECT count(*) FROM main.sqlite_master WHERE name LIKE 'audit_customer_index%'"), 0);
        // The mark only moves forward; the index is append-only.
        assert!(index.execute("UPDATE audit_customer_index_state SET through = 10", []).is_err());
        assert!(index.execute("DELETE FROM audit_customer_index WHERE seq = 1", []).is_err());
    }

    /// An index file whose mark is not on the database's chain (a database restored from a
    /// backup beside a newer index) is emptied at open; one on the chain is kept (fails when
    /// `prepare` stops comparing the mark's chain hash).
    #[test]
    fn an_index_of_another_chain_is_rebuilt() {
        let (_dir, path, mut c) = migrated();
        for seq in 1..=10 {
            event(&c, seq, seq as u8, &[[seq as u8; 16]]);
        }
        let log = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        let mut index = open_index(&path, false).unwrap();
        assert_eq!(turn(&log, &mut index).unwrap(), 10);
        drop((log, index));
        prepare(&path, &c).unwrap();
        assert_eq!(count(&c, "SELECT count(*) FROM ix.audit_customer_index"), 10);

        // Another copy of the database, with another chain, under the same name: a restore.
        let other = path.with_file_name("other.db");
        let mut o = Connection::open(&other).unwrap();
        super::super::migrate::run(&mut o).unwrap();
        for seq in 1..=12 {
            event(&o, seq, 100 + seq as u8, &[[seq as u8; 16]]);
        }
        drop(o);
        std::fs::copy(index_path(&path), index_path(&other)).unwrap();
        let mut o = Connection::open(&other).unwrap();
        prepare(&other, &o).unwrap();
        attach(&mut o, &other).unwrap();
        assert_eq!(count(&o, "SELECT count(*) FROM ix.audit_customer_index"), 0);
        assert_eq!(count(&o, THROUGH), 0);
        // And an index file of an unknown layout.
        c.execute_batch("DETACH DATABASE ix").unwrap();
        Connection::open(index_path(&path)).unwrap().pragma_update(None, "user_version", LAYOUT + 1).unwrap();
        prepare(&path, &c).unwrap();
        attach(&mut c, &path).unwrap();
        assert_eq!(count(&c, "SELECT count(*) FROM ix.audit_customer_index"), 0);
    }

    /// The index file's names: the file, its `-wal` and its `-shm`.
    fn files(path: &Path) -> [PathBuf; 3] {
        let index = index_path(path);
        let [wal, shm] = journal(&index);
        [index, wal, shm]
    }

    /// No state of the derived index file stops the store from opening. A `-wal` left beside a
    /// removed file is not replayed into the new one: SQLite deletes the journal of an empty
    /// database file, which this relies on (fails if a SQLite upgrade stops doing so: the
    /// removed file's links and mark would come back). A file that is not a
    /// database is removed and rebuilt (fails when `prepare` stops doing so: an error).
    #[test]
    fn a_damaged_or_orphaned_index_file_is_rebuilt_at_open() {
        let (_dir, path, mut c) = migrated();
        for seq in 1..=10 {
            event(&c, seq, seq as u8, &[[seq as u8; 16]]);
        }
        c.execute_batch("DETACH DATABASE ix").unwrap();
        let [index, wal, _] = files(&path);

        // A journal whose file was removed. Every page of the index is in the `-wal` (the header
        // too, by `user_version`), so that SQLite would replay it whole into a new file.
        let log = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        let mut writer = open_index(&path, false).unwrap();
        writer.execute_batch("PRAGMA wal_checkpoint(TRUNCATE); PRAGMA wal_autocheckpoint = 0").unwrap();
        writer.pragma_update(None, "user_version", LAYOUT).unwrap();
        assert_eq!(turn(&log, &mut writer).unwrap(), 10);
        let orphan = path.with_file_name("orphan-wal");
        std::fs::copy(&wal, &orphan).unwrap();
        drop(writer);
        for f in files(&path) {
            let _ = std::fs::remove_file(f);
        }
        std::fs::copy(&orphan, &wal).unwrap();
        prepare(&path, &c).unwrap();
        attach(&mut c, &path).unwrap();
        assert_eq!(count(&c, "SELECT count(*) FROM ix.audit_customer_index"), 0);
        assert_eq!(count(&c, THROUGH), 0);
        assert_eq!(turn(&log, &mut open_index(&path, false).unwrap()).unwrap(), 10);
        c.execute_batch("DETACH DATABASE ix").unwrap();

        // A file that is not a database at all.
        for f in files(&path) {
            let _ = std::fs::remove_file(f);
        }
        std::fs::write(&index, vec![0x5a; 8192]).unwrap();
        prepare(&path, &c).unwrap();
        assert_eq!(attach(&mut c, &path).unwrap(), Attached::File);
        assert_eq!(count(&c, THROUGH), 0);
        assert_eq!(turn(&log, &mut open_index(&path, false).unwrap()).unwrap(), 10);
        assert_eq!(count(&c, "SELECT count(*) FROM ix.audit_customer_index"), 10);
    }

    /// A connection that cannot attach the index file gets an empty stand-in: a customer's
    /// events are all read from the links (fails when `attach` gives up instead, or when the
    /// stand-in's mark is not 0 and links go missing).
    #[test]
    fn without_its_file_the_index_is_an_empty_stand_in() {
        let (_dir, path, c) = migrated();
        for seq in 1..=5 {
            event(&c, seq, seq as u8, &[[7; 16]]);
        }
        let log = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        assert_eq!(turn(&log, &mut open_index(&path, false).unwrap()).unwrap(), 5);
        event(&c, 6, 6, &[[7; 16]]);
        let events = |r: &Connection| -> Vec<i64> {
            let sql = format!("{}?1{}?1", CUSTOMER_EVENTS.0, CUSTOMER_EVENTS.1);
            let mut all: Vec<i64> = r
                .prepare(&sql)
                .unwrap()
                .query_map([[7u8; 16]], |row| row.get(0))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            all.sort_unstable();
            all
        };
        let reader = || {
            let mut r = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
            let attached = attach(&mut r, &path).unwrap();
            (r, attached)
        };
        let (r, attached) = reader();
        assert_eq!((attached, events(&r)), (Attached::File, (1..=6).collect()));
        for f in files(&path) {
            let _ = std::fs::remove_file(f);
        }
        let (r, attached) = reader();
        assert_eq!((attached, events(&r)), (Attached::StandIn, (1..=6).collect()));
        assert_eq!(count(&r, THROUGH), 0);
        // Not a database: the same.
        std::fs::write(index_path(&path), vec![0x5a; 8192]).unwrap();
        let (r, attached) = reader();
        assert_eq!((attached, events(&r)), (Attached::StandIn, (1..=6).collect()));
    }
}

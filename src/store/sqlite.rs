//! The SQLite store: one file in WAL mode, `synchronous = FULL` (a commit is durable when it
//! returns), a busy timeout, one writer connection and a pool of read-only readers.
//! `sqlite::memory:` is refused: each pooled connection would get its own empty database.
//!
//! WAL checkpoints run on a connection of their own every half second (`PASSIVE`: they never
//! wait for, or block, the writer), instead of inside whichever commit crossed SQLite's
//! 1,000-page threshold: copying the WAL back and syncing the database file then stalled that
//! commit, and every request waiting for the audit group commit behind it (masked reads at 64
//! connections 10.6k -> 13.2k/s, p99 10.8 -> 8.9 ms).
//!
//! Customer reads and audit verification go through [`DirectReaders`] instead of sqlx:
//! rusqlite connections used off the async runtime (inline on the dedicated background threads,
//! on the blocking pool elsewhere), linked to the same SQLite library as sqlx.
//! sqlx-sqlite runs each statement on its connection's own thread and hands every row over
//! as owned values, which the caller then decodes again column by column; on the hot read
//! path and in a scan of a million events that hand-over was most of the cost.
//!
//! The two bulk writes — the audit writer's batches and the create queue's (and seeding's)
//! batches of new records — go through [`DirectWriter`], a rusqlite connection of its own,
//! while holding the one sqlx writer connection: no other write of this process can start
//! meanwhile, so the two never wait on SQLite's lock for each other. Every other write goes
//! through the sqlx writer.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection};

use super::sql::impl_store;
use uuid::Uuid;

use super::{AuditHead, Backend, CustomerRecord, SealedField, SqlPiece, StoreError, StoreOptions};
use crate::audit::{AuditEvent, Outcome, StoredEvent};
use crate::domain::RegionId;

/// Embedded SQLite migrations (`migrations/sqlite`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// How often the background checkpointer runs.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);
/// WAL pages after which a commit checkpoints by itself (~16 MB; SQLite's default is 1,000).
/// By then the background checkpointer has normally copied the frames back already, so the
/// commit's own checkpoint finds little to do, and the WAL is restarted from its beginning as
/// soon as no reader needs its frames: under constant reads and writes a WAL restarts only
/// opportunistically, so without this bound it would grow.
const AUTOCHECKPOINT_BACKSTOP: &str = "4000";

/// The writers' page cache, 16 MiB (SQLite's default is 2 MiB): inserts into the random-keyed
/// blind index stay in memory longer. Readers keep the default.
const WRITER_CACHE_SIZE: &str = "-16384";

pub struct SqliteStore {
    read: SqlitePool,
    write: SqlitePool,
    direct: Arc<DirectReaders>,
    direct_writer: Arc<DirectWriter>,
    /// The checkpointer stops when this is dropped.
    _alive: Arc<()>,
}

impl SqliteStore {
    /// Opens (creating it if missing) the database file and applies pending migrations.
    pub async fn open(url: &str, options: &StoreOptions) -> Result<Self, StoreError> {
        if url.contains(":memory:") || url.contains("mode=memory") {
            return Err(StoreError::Config(
                "in-memory SQLite is not supported (each pooled connection would see its own empty database); use sqlite://PATH".into(),
            ));
        }
        let connect = SqliteConnectOptions::from_str(url)
            .map_err(|_| StoreError::Config("malformed sqlite:// url".into()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true)
            // Rows a statement may run ahead of its reader (sqlx's default is 50, which made
            // every long scan — verification, export — a ping-pong between two threads).
            .row_buffer_size(4096)
            .pragma("wal_autocheckpoint", AUTOCHECKPOINT_BACKSTOP);
        let path = connect.get_filename().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Config(format!("cannot create {}: {e}", dir.display())))?;
        }
        // Opening (which may create the file and switch it to WAL) and migrating happen under
        // one lock file, so that processes starting together take turns.
        let lock = lock_file(&path).await?;
        // No ping before each acquire (sqlx's default): a local file cannot lose its connection,
        // and the ping was one more round trip to the connection's thread on every query.
        let write = SqlitePoolOptions::new()
            .test_before_acquire(false)
            .max_connections(1)
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect.clone().pragma("cache_size", WRITER_CACHE_SIZE))
            .await?;
        let migrated = MIGRATOR.run(&write).await;
        drop(lock);
        migrated?;
        let read = SqlitePoolOptions::new()
            .test_before_acquire(false)
            .max_connections(options.max_connections.clamp(1, 16))
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect.clone().read_only(true))
            .await?;
        let alive = Arc::new(());
        spawn_checkpointer(connect, Arc::downgrade(&alive));
        let readers = options.max_connections.clamp(1, 16) as usize;
        let direct = Arc::new(DirectReaders {
            path: path.clone(),
            idle: Mutex::new(Vec::new()),
            open: Arc::new(tokio::sync::Semaphore::new(readers)),
            keep: readers,
            wait: options.acquire_timeout,
        });
        let direct_writer = Arc::new(DirectWriter { path, conn: Mutex::new(None) });
        Ok(SqliteStore { read, write, direct, direct_writer, _alive: alive })
    }

    /// Records by id (and, when given, within `scopes`), read off the async runtime.
    async fn direct_customers(
        &self,
        ids: Vec<Uuid>,
        scopes: Option<Vec<RegionId>>,
    ) -> Result<Vec<CustomerRecord>, StoreError> {
        let (direct, turn) = (self.direct.clone(), self.direct.turn().await?);
        off_runtime(move || {
            let read = direct.with(|c| customers(c, &ids, scopes.as_deref()));
            drop(turn);
            read
        })
        .await
    }

    /// Runs `f` in one `IMMEDIATE` transaction of the direct writer off the async runtime,
    /// holding the sqlx writer meanwhile (it is handed to the blocking work, so it stays held
    /// even if the caller stops waiting).
    async fn direct_write<R: Send + 'static>(
        &self,
        f: impl FnOnce(&rusqlite::Connection) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let turn = self.write.acquire().await.map_err(StoreError::Unavailable)?;
        let writer = self.direct_writer.clone();
        off_runtime(move || {
            let written = writer.transaction(f);
            drop(turn);
            written
        })
        .await
    }

    /// Appends a batch of events in one transaction.
    async fn append_batch(&self, events: &[AuditEvent]) -> Result<AuditHead, StoreError> {
        let events = events.to_vec();
        self.direct_write(move |c| append_events(c, &events)).await
    }

    /// A page of events for verification, in sequence order, read off the async runtime.
    async fn audit_page(&self, after_seq: i64, limit: u32) -> Result<Vec<StoredEvent>, StoreError> {
        let (direct, turn) = (self.direct.clone(), self.direct.turn().await?);
        off_runtime(move || {
            let page = direct.with(|c| audit_page(c, after_seq, limit));
            drop(turn);
            page
        })
        .await
    }
}

/// Runs blocking SQLite work: inline on a dedicated background thread (the audit writer, the
/// queues: nothing else runs there), on the blocking pool from anywhere else.
async fn off_runtime<R: Send + 'static>(
    work: impl FnOnce() -> Result<R, StoreError> + Send + 'static,
) -> Result<R, StoreError> {
    if crate::background::on_dedicated_thread() {
        return work();
    }
    tokio::task::spawn_blocking(work).await.map_err(|_| StoreError::Corrupt("SQLite task stopped"))?
}

/// Read-only rusqlite connections to the store's file, opened on demand: at most as many at
/// once as the sqlx read pool may hold (each is three open files), all kept for reuse.
struct DirectReaders {
    path: PathBuf,
    idle: Mutex<Vec<rusqlite::Connection>>,
    /// One permit per connection that may be in use.
    open: Arc<tokio::sync::Semaphore>,
    keep: usize,
    /// How long a read waits for a free connection (the pools' acquire timeout).
    wait: Duration,
}

impl DirectReaders {
    /// Waits for a connection to be free (the permit goes with the work that uses it); like
    /// an exhausted pool, unavailable after the acquire timeout.
    async fn turn(&self) -> Result<tokio::sync::OwnedSemaphorePermit, StoreError> {
        match tokio::time::timeout(self.wait, self.open.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) => Err(StoreError::Unavailable(sqlx::Error::PoolClosed)),
            Err(_) => Err(StoreError::Unavailable(sqlx::Error::PoolTimedOut)),
        }
    }

    /// Runs `f` on an idle connection (or a new one); call it holding a [`Self::turn`], off
    /// the async runtime.
    fn with<R>(&self, f: impl FnOnce(&rusqlite::Connection) -> Result<R, StoreError>) -> Result<R, StoreError> {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match idle {
            Some(c) => c,
            None => {
                use rusqlite::OpenFlags;
                let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
                let c = rusqlite::Connection::open_with_flags(&self.path, flags)?;
                c.busy_timeout(Duration::from_secs(10))?;
                // IN lists come in power-of-two lengths, with or without a scope filter.
                c.set_prepared_statement_cache_capacity(64);
                c
            }
        };
        let out = f(&conn);
        // A connection that failed is dropped rather than reused.
        if out.is_ok() {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            if idle.len() < self.keep {
                idle.push(conn);
            }
        }
        out
    }
}

/// The direct read-write connection of the bulk writes (audit batches, new records), opened
/// on first use and dropped after any failure (which also rolls back its open transaction).
struct DirectWriter {
    path: PathBuf,
    conn: Mutex<Option<rusqlite::Connection>>,
}

impl DirectWriter {
    /// Runs `f` in one `IMMEDIATE` transaction, committed if `f` succeeds; call it holding the
    /// sqlx writer, off the async runtime.
    fn transaction<R>(&self, f: impl FnOnce(&rusqlite::Connection) -> Result<R, StoreError>) -> Result<R, StoreError> {
        let mut slot = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let mut conn = match slot.take() {
            Some(c) => c,
            None => {
                use rusqlite::OpenFlags;
                let c = rusqlite::Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                c.busy_timeout(Duration::from_secs(10))?;
                // The same durability, checkpoint backstop and page cache as the sqlx writer.
                c.pragma_update(None, "synchronous", "FULL")?;
                c.pragma_update(None, "foreign_keys", "ON")?;
                c.pragma_update(None, "wal_autocheckpoint", AUTOCHECKPOINT_BACKSTOP)?;
                c.pragma_update(None, "cache_size", WRITER_CACHE_SIZE)?;
                c
            }
        };
        let written = (|| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        })();
        if written.is_ok() {
            *slot = Some(conn);
        }
        written
    }
}

/// The direct twin of `append_events_in` (`sql.rs`), inside the caller's transaction: the same
/// chain, the same stored encoding (timestamps as sqlx writes them, UUIDs as 16-byte BLOBs), so
/// either path's events verify and read back alike.
fn append_events(c: &rusqlite::Connection, events: &[AuditEvent]) -> Result<AuditHead, StoreError> {
    let (mut seq, mut head): (i64, Vec<u8>) =
        c.query_row("SELECT seq, chain_hash FROM audit_head WHERE id = 1", [], |r| Ok((r.get(0)?, r.get(1)?)))?;
    {
        let mut insert = c.prepare_cached(
            "INSERT INTO audit_events (seq, time, request_id, principal, grant_id, action, customer_ids, fields, \
             purpose, justification, query, outcome, status, client, user_agent, chain_hash, actor_region, \
             subject_region, proxy, undisclosed_ids) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20)",
        )?;
        let mut link = c.prepare_cached(
            "INSERT INTO audit_event_customers (customer_id, seq) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
        )?;
        for e in events {
            seq += 1;
            let (ids, fields) = (e.customer_ids_text(), e.fields_text());
            let hash = crate::audit::chain::next(&head, seq, e, &ids, &fields);
            insert.execute(rusqlite::params![
                seq,
                time_text(&e.time),
                e.request_id,
                e.principal,
                e.grant_id.as_ref().map(|g| g.as_bytes().as_slice()),
                e.action,
                ids,
                fields,
                e.purpose,
                e.justification,
                e.query,
                e.outcome.as_str(),
                i32::from(e.status),
                e.client,
                e.user_agent,
                hash.as_slice(),
                e.actor_region,
                e.subject_region,
                e.proxy,
                e.undisclosed,
            ])?;
            for customer in &e.customer_ids {
                link.execute((customer.as_bytes().as_slice(), seq))?;
            }
            head = hash.to_vec();
        }
    }
    c.execute("UPDATE audit_head SET seq = ?1, chain_hash = ?2 WHERE id = 1", (seq, head.as_slice()))?;
    Ok(AuditHead { seq, chain_hash: head })
}

/// The direct twin of the sqlx `insert_customers` (`sql.rs`): records, their sealed fields,
/// their blind-index entries (in key order: digests are random, and sorted inserts walk the
/// index's pages once each) and the events, inside the caller's transaction.
fn insert_customers(
    c: &rusqlite::Connection,
    records: &[CustomerRecord],
    events: &[AuditEvent],
) -> Result<(), StoreError> {
    {
        let mut customer = c.prepare_cached(
            "INSERT INTO customers (id, region, kind, vip_level, status, version, kek_version, wrapped_key, \
             created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?;
        let mut field =
            c.prepare_cached("INSERT INTO customer_fields (customer_id, field, sealed) VALUES (?1, ?2, ?3)")?;
        for r in records {
            let id = r.id.as_bytes().as_slice();
            customer.execute(rusqlite::params![
                id,
                r.region,
                r.kind.as_str(),
                r.vip_level,
                r.status.as_str(),
                r.version,
                i64::from(r.wrapped_key.kek_version),
                r.wrapped_key.bytes,
                time_text(&r.created_at),
                time_text(&r.updated_at),
            ])?;
            for f in &r.fields {
                field.execute((id, f.name.as_str(), f.sealed.as_slice()))?;
            }
        }
        let mut index: Vec<(&Uuid, &super::IndexEntry)> =
            records.iter().flat_map(|r| r.index.iter().map(move |e| (&r.id, e))).collect();
        index.sort_unstable_by(|a, b| (&a.1.field, &a.1.digest).cmp(&(&b.1.field, &b.1.digest)));
        let mut entry = c.prepare_cached(
            "INSERT INTO blind_index (field, digest, customer_id, key_version) VALUES (?1, ?2, ?3, ?4)",
        )?;
        for (id, e) in index {
            entry.execute((e.field.as_str(), e.digest.as_slice(), id.as_bytes().as_slice(), e.key_version))?;
        }
    }
    if !events.is_empty() {
        append_events(c, events)?;
    }
    Ok(())
}

/// A timestamp as sqlx-sqlite stores one (RFC 3339, `+00:00`, as many fractional digits as
/// needed), so text comparisons in SQL see one format whichever path wrote the row.
fn time_text(t: &chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false)
}

/// A record's columns, then one field per row (`LEFT JOIN`: a record without fields still has
/// its row). One statement, so a record and its fields come from one snapshot: a concurrent
/// update can never pair a row of one version with fields sealed for another.
const CUSTOMER_ROWS: &str = "SELECT c.id, c.region, c.kind, c.vip_level, c.status, c.version, c.kek_version, \
     c.wrapped_key, c.created_at, c.updated_at, f.field, f.sealed \
     FROM customers c LEFT JOIN customer_fields f ON f.customer_id = c.id WHERE c.id IN (";

/// The records of `ids` (restricted to `scopes` when given), ordered by id, fields by name.
fn customers(
    c: &rusqlite::Connection,
    ids: &[Uuid],
    scopes: Option<&[RegionId]>,
) -> Result<Vec<CustomerRecord>, StoreError> {
    use rusqlite::types::Value;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut sql = String::with_capacity(CUSTOMER_ROWS.len() + 3 * ids.len() + 64);
    sql.push_str(CUSTOMER_ROWS);
    let mut params: Vec<Value> = Vec::with_capacity(ids.len() + 4);
    for (i, id) in ids.iter().enumerate() {
        sql.push_str(if i == 0 { "?" } else { ", ?" });
        params.push(Value::Blob(id.as_bytes().to_vec()));
    }
    sql.push(')');
    if let Some(scopes) = scopes {
        for piece in super::scope_filter("c.region", scopes) {
            match piece {
                SqlPiece::Text(t) => sql.push_str(&t),
                SqlPiece::Bind(v) => {
                    sql.push('?');
                    params.push(Value::Text(v.to_owned()));
                }
            }
        }
    }
    sql.push_str(" ORDER BY c.id, f.field");
    let mut stmt = c.prepare_cached(&sql)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(params))?;
    let mut out: Vec<CustomerRecord> = Vec::with_capacity(ids.len());
    while let Some(row) = rows.next()? {
        let id = uuid_at(row, 0, "malformed customer id")?.ok_or(StoreError::Corrupt("customer without id"))?;
        if out.last().is_none_or(|r| r.id != id) {
            let kind: String = row.get(2)?;
            let status: String = row.get(4)?;
            out.push(CustomerRecord {
                id,
                region: row.get(1)?,
                kind: super::parse_kind(&kind)?,
                vip_level: row.get(3)?,
                status: super::parse_status(&status)?,
                version: row.get(5)?,
                wrapped_key: crate::crypto::WrappedKey {
                    kek_version: super::kek_version(row.get(6)?)?,
                    bytes: row.get(7)?,
                },
                created_at: time_at(row, 8)?,
                updated_at: time_at(row, 9)?,
                fields: Vec::with_capacity(10),
                index: Vec::new(),
            });
        }
        if let (Some(name), Some(record)) = (row.get::<_, Option<String>>(10)?, out.last_mut()) {
            record.fields.push(SealedField { name, sealed: row.get(11)? });
        }
    }
    Ok(out)
}

/// A UUID stored as a 16-byte BLOB (or NULL).
fn uuid_at(row: &rusqlite::Row<'_>, idx: usize, bad: &'static str) -> Result<Option<Uuid>, StoreError> {
    match row.get_ref(idx)?.as_blob_or_null() {
        Ok(Some(b)) => Uuid::from_slice(b).map(Some).map_err(|_| StoreError::Corrupt(bad)),
        Ok(None) => Ok(None),
        Err(_) => Err(StoreError::Corrupt(bad)),
    }
}

/// A timestamp stored as RFC 3339 text (how sqlx writes them).
fn time_at(row: &rusqlite::Row<'_>, idx: usize) -> Result<chrono::DateTime<chrono::Utc>, StoreError> {
    let text = row.get_ref(idx)?.as_str().map_err(|_| StoreError::Corrupt("malformed timestamp"))?;
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|_| StoreError::Corrupt("malformed timestamp"))
}

/// Up to `limit` events after `after_seq`, in sequence order; the id and field lists are kept
/// as their stored texts only (what verification hashes).
fn audit_page(c: &rusqlite::Connection, after_seq: i64, limit: u32) -> Result<Vec<StoredEvent>, StoreError> {
    let mut stmt = c.prepare_cached(
        "SELECT seq, time, request_id, principal, grant_id, action, customer_ids, fields, purpose, \
         justification, query, outcome, status, client, user_agent, chain_hash, actor_region, subject_region, \
         proxy, undisclosed_ids \
         FROM audit_events WHERE seq > ?1 ORDER BY seq LIMIT ?2",
    )?;
    let mut rows = stmt.query((after_seq, i64::from(limit)))?;
    let mut page = Vec::with_capacity(limit as usize);
    while let Some(row) = rows.next()? {
        let time = time_at(row, 1)?;
        let grant_id = uuid_at(row, 4, "malformed grant id")?;
        let outcome: String = row.get(11)?;
        let status: i64 = row.get(12)?;
        page.push(StoredEvent {
            seq: row.get(0)?,
            event: AuditEvent {
                time,
                request_id: row.get(2)?,
                principal: row.get(3)?,
                grant_id,
                action: row.get(5)?,
                customer_ids: Vec::new(),
                fields: Vec::new(),
                purpose: row.get(8)?,
                justification: row.get(9)?,
                query: row.get(10)?,
                // Lenient, as for the sqlx path: verification hashes whatever is stored.
                outcome: Outcome::parse(&outcome).unwrap_or(Outcome::Failed),
                status: u16::try_from(status).unwrap_or(0),
                client: row.get(13)?,
                user_agent: row.get(14)?,
                actor_region: row.get(16)?,
                subject_region: row.get(17)?,
                proxy: row.get(18)?,
                undisclosed: row.get(19)?,
            },
            customer_ids_text: row.get(6)?,
            fields_text: row.get(7)?,
            chain_hash: row.get(15)?,
        });
    }
    Ok(page)
}

/// Checkpoints the WAL every `CHECKPOINT_EVERY` on its own connection until `alive` is gone.
fn spawn_checkpointer(options: SqliteConnectOptions, alive: Weak<()>) {
    tokio::spawn(async move {
        let mut conn = match options.connect().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot open the WAL checkpoint connection; commits checkpoint by themselves");
                return;
            }
        };
        let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if alive.upgrade().is_none() {
                let _ = conn.close().await;
                return;
            }
            if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(&mut conn).await {
                tracing::warn!(error = %e, "WAL checkpoint failed");
            }
        }
    });
}

/// Takes an exclusive lock on a file beside the database (released when dropped).
async fn lock_file(db_path: &std::path::Path) -> Result<std::fs::File, StoreError> {
    let mut lock_path = db_path.as_os_str().to_owned();
    lock_path.push(".migrate-lock");
    tokio::task::spawn_blocking(move || -> std::io::Result<std::fs::File> {
        let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(lock_path)?;
        file.lock()?;
        Ok(file)
    })
    .await
    .map_err(|e| StoreError::Config(format!("migration lock task failed: {e}")))?
    .map_err(|e| StoreError::Config(format!("cannot lock migrations: {e}")))
}

impl_store!(SqliteStore, sqlx::Sqlite, {
    fn backend(&self) -> Backend {
        Backend::Sqlite
    }

    async fn insert_customers(&self, records: &[CustomerRecord], events: &[AuditEvent]) -> Result<(), StoreError> {
        let (records, events) = (records.to_vec(), events.to_vec());
        self.direct_write(move |c| insert_customers(c, &records, &events)).await
    }

    async fn customer(&self, id: Uuid) -> Result<Option<CustomerRecord>, StoreError> {
        Ok(self.direct_customers(vec![id], None).await?.pop())
    }

    async fn customers_by_ids(&self, ids: &[Uuid], scopes: &[RegionId]) -> Result<Vec<CustomerRecord>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        self.direct_customers(ids.to_vec(), Some(scopes.to_vec())).await
    }
});

//! The SQLite store: one file in WAL mode, `synchronous = FULL` (a commit is durable when it
//! returns), reached through rusqlite alone (one driver for the backend): one writer connection
//! whose writes take turns, a set of read-only readers, a WAL checkpointer on a thread of its
//! own ([`connections`]), the access log's customer index in a file and thread of its own
//! ([`links`]), and embedded migrations ([`migrate`]). `sqlite::memory:` is refused:
//! each connection would get its own empty database.
//!
//! Statements run off the async runtime: inline on the dedicated background threads (audit
//! writer, queues), on the blocking pool elsewhere. Rows are read straight from SQLite's
//! buffers into the store's types, with statements prepared once per connection and cached.
//!
//! Owns: SQLite's SQL. Must never: see plaintext or key material, or know HTTP.

pub mod backup;
mod connections;
mod links;
mod migrate;
mod rows;

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};
use uuid::Uuid;

use self::connections::{Readers, WriteKind, Writer};
use self::rows::{
    alert_from, all, event_from, first, grant_from, grant_values, id_at, time_at, time_text, time_value,
    tombstone_from, uuid_at, uuid_value, Query, ALERT_COLUMNS, EVENT_COLUMNS, GRANT_COLUMNS,
};
use super::{
    AlertRecord, AuditBatch, AuditHead, AuditLinks, AuditQuery, AuditTallies, AuditTally, AuthzState, Backend,
    BootstrapOutcome, Bucket, CustomerQuery, CustomerRecord, CustomerUpdate, GrantQuery, GrantRecord,
    IdempotencyRecord, IndexEntry, SealedField, Store, StoreError, StoreOptions, Tombstone, UpdateOutcome,
    DISCLOSURE_ACTIONS,
};
use crate::audit::{AuditEvent, Checkpoint, StoredEvent};
use crate::crypto::WrappedKey;
use crate::domain::{CustomerKind, CustomerStatus, RegionId};

const BUMP_EPOCH: &str = "UPDATE authz_epoch SET value = value + 1 WHERE id = 1";

pub struct SqliteStore {
    readers: Arc<Readers>,
    writer: Arc<Writer>,
    /// The checkpointer stops when this is dropped (the access-log indexer when the writer and
    /// readers are).
    _alive: Arc<()>,
}

/// The file of a `sqlite://PATH` (or `sqlite:PATH`) URL. Query parameters are refused rather
/// than ignored: the store decides the journal, synchronisation and open mode itself.
fn file_of(url: &str) -> Result<PathBuf, StoreError> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .ok_or_else(|| StoreError::Config("a SQLite url starts with sqlite://".into()))?;
    if rest.contains(":memory:") || rest.contains("mode=memory") {
        return Err(StoreError::Config(
            "in-memory SQLite is not supported (each connection would see its own empty database); use sqlite://PATH"
                .into(),
        ));
    }
    if rest.contains('?') {
        return Err(StoreError::Config(
            "options in a sqlite:// url are not supported (the store sets WAL and synchronous = FULL itself)".into(),
        ));
    }
    if rest.is_empty() {
        return Err(StoreError::Config("malformed sqlite:// url: no file".into()));
    }
    Ok(PathBuf::from(rest))
}

impl SqliteStore {
    /// Opens (creating it if missing) the database file and applies pending migrations.
    pub async fn open(url: &str, options: &StoreOptions) -> Result<Self, StoreError> {
        let path = file_of(url)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Config(format!("cannot create {}: {e}", dir.display())))?;
        }
        // Opening (which may create the file and switch it to WAL) and migrating happen under
        // one lock file, so that processes starting together take turns.
        let lock = connections::lock_file(&path).await?;
        let at = path.clone();
        let writer = tokio::task::spawn_blocking(move || -> Result<Connection, StoreError> {
            let mut c = connections::open_writer(&at)?;
            migrate::run(&mut c)?;
            links::prepare(&at, &c)?;
            Ok(c)
        })
        .await
        .map_err(|_| StoreError::Corrupt("SQLite task stopped"))?;
        drop(lock);
        let writer = writer?;
        let alive = Arc::new(());
        connections::spawn_checkpointer(path.clone(), Arc::downgrade(&alive));
        let keep = options.max_connections.clamp(1, 16) as usize;
        let generation = links::Generation::default();
        links::spawn(path.clone(), generation.clone(), Arc::downgrade(&alive));
        let readers = Arc::new(Readers::new(path.clone(), generation, keep, options.acquire_timeout));
        let writer = Arc::new(Writer::new(path, writer, options.acquire_timeout));
        Ok(SqliteStore { readers, writer, _alive: alive })
    }

    async fn read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        self.readers.read(f).await
    }

    async fn write<R: Send + 'static>(
        &self,
        kind: WriteKind,
        f: impl FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        self.writer.write(kind, f).await
    }
}

/// The database's separation-of-duties trigger (migration 0006) refused the grant.
fn duty_conflict(e: &StoreError) -> bool {
    matches!(e, StoreError::Sqlite(rusqlite::Error::SqliteFailure(_, Some(m))) if m.contains("separation_of_duties"))
}

fn unique_violation(e: &StoreError) -> bool {
    matches!(e, StoreError::Sqlite(rusqlite::Error::SqliteFailure(f, _))
        if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY)
}

fn insert_grant(c: &Connection, g: &GrantRecord) -> Result<(), StoreError> {
    let sql = format!("INSERT INTO grants ({GRANT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)");
    match c.prepare_cached(&sql)?.execute(rusqlite::params_from_iter(grant_values(g))) {
        Ok(_) => Ok(()),
        Err(e) => {
            let e = StoreError::from(e);
            Err(if duty_conflict(&e) { StoreError::SeparationOfDuties } else { e })
        }
    }
}

/// Appends events to the chain inside the caller's transaction (which holds the write lock,
/// so appenders on every process queue and the chain stays one total order).
fn append_events(c: &Connection, events: &[AuditEvent]) -> Result<AuditHead, StoreError> {
    let (mut seq, mut head): (i64, Vec<u8>) =
        c.query_row("SELECT seq, chain_hash FROM audit_head WHERE id = 1", [], |r| Ok((r.get(0)?, r.get(1)?)))?;
    {
        let mut insert = c.prepare_cached(&format!(
            "INSERT INTO audit_events ({EVENT_COLUMNS}) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20)"
        ))?;
        let mut link = c.prepare_cached(
            "INSERT INTO audit_event_customers (seq, customer_id) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
        )?;
        for e in events {
            seq += 1;
            let (ids, fields) = (e.customer_ids_text(), e.fields_text());
            let hash = crate::audit::chain::next(&head, seq, e, &ids, &fields);
            insert.execute(params![
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
                link.execute((seq, customer.as_bytes().as_slice()))?;
            }
            head = hash.to_vec();
        }
    }
    for record in events.iter().filter_map(|e| e.idempotency.as_deref()) {
        remember(c, record)?;
    }
    c.prepare_cached("UPDATE audit_head SET seq = ?1, chain_hash = ?2 WHERE id = 1")?
        .execute((seq, head.as_slice()))?;
    Ok(AuditHead { seq, chain_hash: head })
}

/// Stores a write's idempotency key in its transaction, replacing an expired record of the
/// same key. A live record of the same key fails the statement (a primary-key violation): a
/// concurrent retry committed first, and this write must not apply.
fn remember(c: &Connection, record: &IdempotencyRecord) -> Result<(), StoreError> {
    let created = time_text(&record.created_at);
    c.prepare_cached(
        "DELETE FROM idempotency_keys WHERE principal = ?1 AND key = ?2 AND julianday(expires_at) <= julianday(?3)",
    )?
    .execute((&record.principal, &record.key, &created))?;
    c.prepare_cached(
        "INSERT INTO idempotency_keys (principal, key, fingerprint, outcome, created_at, expires_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute((
        &record.principal,
        &record.key,
        record.fingerprint.as_slice(),
        &record.outcome,
        &created,
        time_text(&record.expires_at),
    ))?;
    Ok(())
}

/// Records and the events, inside the caller's transaction.
fn insert_customers(c: &Connection, records: &[CustomerRecord], events: &[AuditEvent]) -> Result<(), StoreError> {
    insert_records(c, records)?;
    if !events.is_empty() {
        append_events(c, events)?;
    }
    Ok(())
}

/// Records, their sealed fields and their blind-index entries (in key order: digests are
/// random, and sorted inserts walk the index's pages once each), inside the caller's
/// transaction.
fn insert_records(c: &Connection, records: &[CustomerRecord]) -> Result<(), StoreError> {
    if records.is_empty() {
        return Ok(());
    }
    {
        let mut customer = c.prepare_cached(
            "INSERT INTO customers (id, region, kind, vip_level, status, version, kek_version, wrapped_key, \
             created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?;
        let mut field =
            c.prepare_cached("INSERT INTO customer_fields (customer_id, field, sealed) VALUES (?1, ?2, ?3)")?;
        for r in records {
            let id = r.id.as_bytes().as_slice();
            customer.execute(params![
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
        let mut index: Vec<(&Uuid, &IndexEntry)> =
            records.iter().flat_map(|r| r.index.iter().map(move |e| (&r.id, e))).collect();
        index.sort_unstable_by(|a, b| (&a.1.field, &a.1.digest).cmp(&(&b.1.field, &b.1.digest)));
        insert_index(c, index)?;
    }
    Ok(())
}

fn insert_index<'a>(
    c: &Connection,
    entries: impl IntoIterator<Item = (&'a Uuid, &'a IndexEntry)>,
) -> Result<(), StoreError> {
    let mut entry =
        c.prepare_cached("INSERT INTO blind_index (field, digest, customer_id, key_version) VALUES (?1, ?2, ?3, ?4)")?;
    for (id, e) in entries {
        entry.execute((e.field.as_str(), e.digest.as_slice(), id.as_bytes().as_slice(), e.key_version))?;
    }
    Ok(())
}

/// A record's columns, then one field per row (`LEFT JOIN`: a record without fields still has
/// its row). One statement, so a record and its fields come from one snapshot: a concurrent
/// update can never pair a row of one version with fields sealed for another.
const CUSTOMER_ROWS: &str = "SELECT c.id, c.region, c.kind, c.vip_level, c.status, c.version, c.kek_version, \
     c.wrapped_key, c.created_at, c.updated_at, f.field, f.sealed \
     FROM customers c LEFT JOIN customer_fields f ON f.customer_id = c.id WHERE c.id IN (";

/// The statement finding the ids a search matches, in id order (at most `query.limit`).
fn search_query(query: &CustomerQuery) -> Query {
    let mut q = Query::new("SELECT c.id FROM customers c WHERE 1 = 1");
    for (field, digests) in &query.matches {
        q.push(" AND c.id IN (SELECT customer_id FROM blind_index WHERE field = ").bind(field.clone()).push(" AND (");
        for (i, (version, digest)) in digests.iter().enumerate() {
            if i > 0 {
                q.push(" OR ");
            }
            q.push("(key_version = ").bind(i64::from(*version)).push(" AND digest = ").bind(digest.clone()).push(")");
        }
        q.push("))");
    }
    q.pieces(super::scope_filter("c.region", &query.scopes));
    if let Some(region) = &query.region {
        q.pieces(super::scope_filter("c.region", std::slice::from_ref(region)));
    }
    if let Some(kind) = query.kind {
        q.push(" AND c.kind = ").bind(kind.as_str().to_owned());
    }
    if let Some(status) = query.status {
        q.push(" AND c.status = ").bind(status.as_str().to_owned());
    }
    if let Some(after) = query.after {
        q.push(" AND c.id > ").bind(uuid_value(&after));
    }
    q.push(" ORDER BY c.id LIMIT ").bind(i64::from(query.limit));
    q
}

/// The records of `ids` (restricted to `scopes` when given), ordered by id, fields by name.
fn customers(c: &Connection, ids: &[Uuid], scopes: Option<&[RegionId]>) -> Result<Vec<CustomerRecord>, StoreError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut q = Query::new(CUSTOMER_ROWS);
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            q.push(", ");
        }
        q.bind(uuid_value(id));
    }
    q.push(")");
    if let Some(scopes) = scopes {
        q.pieces(super::scope_filter("c.region", scopes));
    }
    q.push(" ORDER BY c.id, f.field");
    let mut stmt = c.prepare_cached(&q.sql)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(q.params.iter()))?;
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
                wrapped_key: WrappedKey { kek_version: super::kek_version(row.get(6)?)?, bytes: row.get(7)? },
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

fn pair<A: rusqlite::types::FromSql, B: rusqlite::types::FromSql>(
    row: &rusqlite::Row<'_>,
) -> Result<(A, B), StoreError> {
    Ok((row.get(0)?, row.get(1)?))
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> Backend {
        Backend::Sqlite
    }

    fn pool_stats(&self) -> Option<super::PoolStats> {
        let (busy, max) = self.readers.occupancy();
        let (busy, max) = (busy as u32, max as u32);
        Some(super::PoolStats { busy, idle: max - busy, max })
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.read(|c| Ok(c.query_row("SELECT 1", [], |_| Ok(()))?)).await
    }

    async fn insert_customers(&self, records: &[CustomerRecord], events: &[AuditEvent]) -> Result<(), StoreError> {
        let (records, events) = (records.to_vec(), events.to_vec());
        self.write(WriteKind::Customers, move |c| insert_customers(c, &records, &events)).await
    }

    async fn customer(&self, id: Uuid) -> Result<Option<CustomerRecord>, StoreError> {
        Ok(self.read(move |c| customers(c, &[id], None)).await?.pop())
    }

    async fn update_customer(&self, u: &CustomerUpdate, audit: &AuditEvent) -> Result<UpdateOutcome, StoreError> {
        let (u, audit) = (u.clone(), audit.clone());
        self.write(WriteKind::Customers, move |c| {
            let id = u.id.as_bytes().as_slice();
            let updated = c
                .prepare_cached(
                    "UPDATE customers SET version = ?1, vip_level = ?2, updated_at = ?3 WHERE id = ?4 AND version = ?5",
                )?
                .execute(params![u.version, u.vip_level, time_text(&u.updated_at), id, u.expected_version])?;
            if updated == 0 {
                let exists =
                    c.query_row("SELECT 1 FROM customers WHERE id = ?1", [id], |_| Ok(())).optional()?.is_some();
                return Ok(if exists { UpdateOutcome::VersionConflict } else { UpdateOutcome::NotFound });
            }
            c.prepare_cached("DELETE FROM customer_fields WHERE customer_id = ?1")?.execute([id])?;
            let mut field =
                c.prepare_cached("INSERT INTO customer_fields (customer_id, field, sealed) VALUES (?1, ?2, ?3)")?;
            for f in &u.fields {
                field.execute((id, f.name.as_str(), f.sealed.as_slice()))?;
            }
            c.prepare_cached("DELETE FROM blind_index WHERE customer_id = ?1")?.execute([id])?;
            insert_index(c, u.index.iter().map(|e| (&u.id, e)))?;
            append_events(c, std::slice::from_ref(&audit))?;
            Ok(UpdateOutcome::Updated)
        })
        .await
    }

    async fn customers_by_ids(&self, ids: &[Uuid], scopes: &[RegionId]) -> Result<Vec<CustomerRecord>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let (ids, scopes) = (ids.to_vec(), scopes.to_vec());
        self.read(move |c| customers(c, &ids, Some(&scopes))).await
    }

    async fn search_customers(&self, query: &CustomerQuery) -> Result<Vec<Uuid>, StoreError> {
        let q = search_query(query);
        self.read(move |c| q.all(c, |r| id_at(r, 0))).await
    }

    async fn search_customer_records(&self, query: &CustomerQuery) -> Result<Vec<CustomerRecord>, StoreError> {
        let q = search_query(query);
        let scopes = query.scopes.clone();
        // Both statements on one connection in one hop off the runtime.
        self.read(move |c| customers(c, &q.all(c, |r| id_at(r, 0))?, Some(&scopes))).await
    }

    async fn authz_epoch(&self) -> Result<i64, StoreError> {
        self.read(|c| Ok(c.query_row("SELECT value FROM authz_epoch WHERE id = 1", [], |r| r.get(0))?)).await
    }

    async fn authz_state(&self) -> Result<AuthzState, StoreError> {
        self.read(|c| {
            // The epoch is read first: a change committed meanwhile shows up as a newer epoch
            // at the next poll, so the state is never considered fresher than it is.
            let epoch: i64 = c.query_row("SELECT value FROM authz_epoch WHERE id = 1", [], |r| r.get(0))?;
            let grants = all(c, &format!("SELECT {GRANT_COLUMNS} FROM grants"), [], grant_from)?;
            let token_revocations =
                all(c, "SELECT principal, not_before FROM token_revocations", [], |r| Ok((r.get(0)?, time_at(r, 1)?)))?;
            let blocked =
                all(c, "SELECT DISTINCT principal FROM audit_alerts WHERE cleared_at IS NULL", [], |r| Ok(r.get(0)?))?;
            let clears = all(
                c,
                "SELECT principal, count(*) FROM audit_alerts WHERE cleared_at IS NOT NULL GROUP BY principal",
                [],
                pair,
            )?;
            Ok(AuthzState { epoch, grants, token_revocations, blocked, clears })
        })
        .await
    }

    async fn grant(&self, id: Uuid) -> Result<Option<GrantRecord>, StoreError> {
        self.read(move |c| {
            first(
                c,
                &format!("SELECT {GRANT_COLUMNS} FROM grants WHERE id = ?1"),
                [id.as_bytes().as_slice()],
                grant_from,
            )
        })
        .await
    }

    async fn insert_grant(&self, grant: &GrantRecord, audit: &AuditEvent) -> Result<(), StoreError> {
        let (g, audit) = (grant.clone(), audit.clone());
        self.write(WriteKind::Other, move |c| {
            insert_grant(c, &g)?;
            append_events(c, std::slice::from_ref(&audit))?;
            c.execute(BUMP_EPOCH, [])?;
            Ok(())
        })
        .await
    }

    async fn insert_bootstrap_grant(
        &self,
        grant: &GrantRecord,
        audit: &AuditEvent,
    ) -> Result<BootstrapOutcome, StoreError> {
        let (g, audit) = (grant.clone(), audit.clone());
        // The IMMEDIATE transaction holds the write lock before reading: concurrent bootstraps
        // (other processes on one file) queue instead of deciding on a stale read.
        self.write(WriteKind::Other, move |c| {
            let existing = c
                .query_row(
                    "SELECT 1 FROM grants WHERE parent_id IS NULL AND revoked_at IS NULL AND role = ?1",
                    [&g.role],
                    |_| Ok(()),
                )
                .optional()?;
            if existing.is_some() {
                return Ok(BootstrapOutcome::AlreadyBootstrapped);
            }
            match insert_grant(c, &g) {
                Ok(()) => {}
                // A live root grant exists after all (unique index on live root grants).
                Err(e) if unique_violation(&e) => return Ok(BootstrapOutcome::AlreadyBootstrapped),
                Err(e) => return Err(e),
            }
            append_events(c, std::slice::from_ref(&audit))?;
            c.execute(BUMP_EPOCH, [])?;
            Ok(BootstrapOutcome::Created)
        })
        .await
    }

    async fn revoke_grant(
        &self,
        id: Uuid,
        by: &str,
        at: DateTime<Utc>,
        audit: &AuditEvent,
    ) -> Result<bool, StoreError> {
        let (by, audit) = (by.to_owned(), audit.clone());
        self.write(WriteKind::Other, move |c| {
            let n = c.execute(
                "UPDATE grants SET revoked_at = ?1, revoked_by = ?2 WHERE id = ?3 AND revoked_at IS NULL",
                params![time_text(&at), by, id.as_bytes().as_slice()],
            )?;
            append_events(c, std::slice::from_ref(&audit))?;
            c.execute(BUMP_EPOCH, [])?;
            Ok(n > 0)
        })
        .await
    }

    async fn grants_page(&self, query: &GrantQuery) -> Result<Vec<GrantRecord>, StoreError> {
        let mut q = Query::new(&format!("SELECT {GRANT_COLUMNS} FROM grants WHERE 1 = 1"));
        q.pieces(super::scope_filter("region", &query.scopes));
        if let Some(p) = &query.principal {
            q.push(" AND principal = ").bind(p.clone());
        }
        if let Some(after) = query.after {
            q.push(" AND id > ").bind(uuid_value(&after));
        }
        q.push(" ORDER BY id LIMIT ").bind(i64::from(query.limit));
        self.read(move |c| q.all(c, grant_from)).await
    }

    async fn revoke_tokens(
        &self,
        principal: &str,
        not_before: DateTime<Utc>,
        audit: &AuditEvent,
    ) -> Result<(), StoreError> {
        let (principal, audit) = (principal.to_owned(), audit.clone());
        self.write(WriteKind::Other, move |c| {
            c.execute(
                "INSERT INTO token_revocations (principal, not_before) VALUES (?1, ?2) \
                 ON CONFLICT (principal) DO UPDATE SET not_before = excluded.not_before",
                params![principal, time_text(&not_before)],
            )?;
            append_events(c, std::slice::from_ref(&audit))?;
            c.execute(BUMP_EPOCH, [])?;
            Ok(())
        })
        .await
    }

    async fn append_audit(&self, batch: Arc<AuditBatch>) -> Result<AuditHead, StoreError> {
        self.write(WriteKind::Audit, move |c| {
            insert_records(c, &batch.records)?;
            append_events(c, &batch.events)
        })
        .await
    }

    async fn audit_head(&self) -> Result<AuditHead, StoreError> {
        self.read(|c| {
            Ok(c.query_row("SELECT seq, chain_hash FROM audit_head WHERE id = 1", [], |r| {
                Ok(AuditHead { seq: r.get(0)?, chain_hash: r.get(1)? })
            })?)
        })
        .await
    }

    async fn insert_checkpoint(&self, cp: &Checkpoint) -> Result<(), StoreError> {
        let cp = cp.clone();
        self.write(WriteKind::Other, move |c| {
            c.execute(
                "INSERT INTO audit_checkpoints (seq, chain_hash, time, key_id, signature) VALUES (?1, ?2, ?3, ?4, ?5) \
                 ON CONFLICT (seq) DO NOTHING",
                params![cp.seq, cp.chain_hash, time_text(&cp.time), cp.key_id, cp.signature],
            )?;
            Ok(())
        })
        .await
    }

    async fn checkpoints(&self) -> Result<Vec<Checkpoint>, StoreError> {
        self.read(|c| all(c, &format!("{CHECKPOINT_SELECT} ORDER BY seq"), [], checkpoint_from)).await
    }

    async fn latest_checkpoint(&self) -> Result<Option<Checkpoint>, StoreError> {
        self.read(|c| first(c, &format!("{CHECKPOINT_SELECT} ORDER BY seq DESC LIMIT 1"), [], checkpoint_from)).await
    }

    async fn audit_events_after(&self, after_seq: i64, limit: u32) -> Result<Vec<StoredEvent>, StoreError> {
        self.read(move |c| {
            all(
                c,
                &format!("SELECT {EVENT_COLUMNS} FROM audit_events WHERE seq > ?1 ORDER BY seq LIMIT ?2"),
                (after_seq, i64::from(limit)),
                |r| event_from(r, false),
            )
        })
        .await
    }

    async fn query_audit(&self, query: &AuditQuery) -> Result<Vec<StoredEvent>, StoreError> {
        let mut q = Query::new(&format!("SELECT {EVENT_COLUMNS} FROM audit_events WHERE seq > "));
        q.bind(query.after_seq);
        if let Some(p) = &query.principal {
            q.push(" AND principal = ").bind(p.clone());
        }
        if let Some(customer) = query.customer {
            let (index, newer) = links::CUSTOMER_EVENTS;
            q.push(" AND seq IN (")
                .push(index)
                .bind(uuid_value(&customer))
                .push(newer)
                .bind(uuid_value(&customer))
                .push(")");
        }
        if let Some(a) = &query.action {
            q.push(" AND action = ").bind(a.clone());
        }
        if let Some(o) = &query.outcome {
            q.push(" AND outcome = ").bind(o.clone());
        }
        if let Some(p) = &query.purpose {
            q.push(" AND purpose = ").bind(p.clone());
        }
        if let Some(from) = query.from {
            q.push(" AND time >= ").bind(time_value(&from));
        }
        if let Some(to) = query.to {
            q.push(" AND time < ").bind(time_value(&to));
        }
        if let Some(scopes) = &query.scopes {
            q.push(" AND (");
            q.pieces(super::scope_condition("actor_region", scopes));
            q.push(" OR ");
            q.pieces(super::scope_condition("subject_region", scopes));
            q.push(")");
        }
        q.push(" ORDER BY seq LIMIT ").bind(i64::from(query.limit));
        self.read(move |c| q.all(c, |r| event_from(r, true))).await
    }

    async fn audit_tallies(&self, tally: &AuditTally) -> Result<AuditTallies, StoreError> {
        let tally = tally.clone();
        self.read(move |c| {
            let since = time_value(&tally.since);
            let width = match tally.bucket {
                Bucket::Hour => 13,
                Bucket::Day => 10,
            };
            let scoped = |q: &mut Query| {
                q.push(" AND (");
                q.pieces(super::scope_condition("actor_region", &tally.scopes));
                q.push(" OR ");
                q.pieces(super::scope_condition("subject_region", &tally.scopes));
                q.push(")");
            };
            let mut q = Query::new(&format!(
                "SELECT substr(time, 1, {width}) AS b, outcome, COUNT(*) FROM audit_events WHERE time >= "
            ));
            q.bind(since.clone());
            scoped(&mut q);
            q.push(" GROUP BY b, outcome ORDER BY b, outcome");
            let by_bucket = q.all(c, |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            let mut q = Query::new("SELECT action, COUNT(*) FROM audit_events WHERE time >= ");
            q.bind(since.clone());
            q.push(" AND action IN (");
            for (i, a) in DISCLOSURE_ACTIONS.iter().enumerate() {
                if i > 0 {
                    q.push(", ");
                }
                q.bind(a.to_string());
            }
            q.push(")");
            scoped(&mut q);
            q.push(" GROUP BY action ORDER BY action");
            let disclosures = q.all(c, |r| Ok((r.get(0)?, r.get(1)?)))?;
            let mut q = Query::new(
                "SELECT principal, COUNT(DISTINCT l.customer_id) AS n FROM audit_events \
                 JOIN audit_event_customers l ON l.seq = audit_events.seq \
                 WHERE principal IS NOT NULL AND outcome = 'allowed' AND time >= ",
            );
            q.bind(since);
            scoped(&mut q);
            q.push(" GROUP BY principal ORDER BY n DESC, principal LIMIT ").bind(i64::from(tally.leaders));
            let leaders = q.all(c, |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(AuditTallies { by_bucket, disclosures, leaders })
        })
        .await
    }

    async fn insert_alert(&self, alert: &AlertRecord, audit: &AuditEvent) -> Result<(), StoreError> {
        let (a, audit) = (alert.clone(), audit.clone());
        self.write(WriteKind::Other, move |c| {
            c.execute(
                &format!("INSERT INTO audit_alerts ({ALERT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"),
                params![
                    a.id.as_bytes().as_slice(),
                    a.kind,
                    a.principal,
                    a.region,
                    time_text(&a.raised_at),
                    a.distinct_customers,
                    a.window_seconds,
                    a.cleared_at.as_ref().map(time_text),
                    a.cleared_by,
                ],
            )?;
            append_events(c, std::slice::from_ref(&audit))?;
            c.execute(BUMP_EPOCH, [])?;
            Ok(())
        })
        .await
    }

    async fn clear_alert(&self, id: Uuid, by: &str, at: DateTime<Utc>, audit: &AuditEvent) -> Result<bool, StoreError> {
        let (by, audit) = (by.to_owned(), audit.clone());
        self.write(WriteKind::Other, move |c| {
            let n = c.execute(
                "UPDATE audit_alerts SET cleared_at = ?1, cleared_by = ?2 WHERE id = ?3 AND cleared_at IS NULL",
                params![time_text(&at), by, id.as_bytes().as_slice()],
            )?;
            if n == 0 {
                return Ok(false);
            }
            append_events(c, std::slice::from_ref(&audit))?;
            c.execute(BUMP_EPOCH, [])?;
            Ok(true)
        })
        .await
    }

    async fn alerts(&self, scopes: Option<&[RegionId]>, limit: u32) -> Result<Vec<AlertRecord>, StoreError> {
        let mut q = Query::new(&format!("SELECT {ALERT_COLUMNS} FROM audit_alerts WHERE 1 = 1"));
        if let Some(scopes) = scopes {
            q.pieces(super::scope_filter("region", scopes));
        }
        q.push(" ORDER BY raised_at DESC LIMIT ").bind(i64::from(limit));
        self.read(move |c| q.all(c, alert_from)).await
    }

    async fn alert(&self, id: Uuid) -> Result<Option<AlertRecord>, StoreError> {
        self.read(move |c| {
            first(
                c,
                &format!("SELECT {ALERT_COLUMNS} FROM audit_alerts WHERE id = ?1"),
                [id.as_bytes().as_slice()],
                alert_from,
            )
        })
        .await
    }

    async fn index_stale(&self, current: i32, limit: u32) -> Result<Vec<Uuid>, StoreError> {
        self.read(move |c| all(c, STALE_INDEX_ENTRIES, (current, i64::from(limit)), |r| id_at(r, 0))).await
    }

    async fn index_stale_count(&self, current: i32) -> Result<i64, StoreError> {
        self.read(move |c| {
            Ok(c.query_row(
                "SELECT count(DISTINCT customer_id) FROM blind_index WHERE key_version < ?1",
                [current],
                |r| r.get(0),
            )?)
        })
        .await
    }

    async fn replace_index(&self, id: Uuid, version: i64, entries: &[IndexEntry]) -> Result<bool, StoreError> {
        let entries = entries.to_vec();
        // The IMMEDIATE transaction holds the write lock before deciding: an update committing
        // in between leaves its own entries untouched.
        self.write(WriteKind::Customers, move |c| {
            let key = id.as_bytes().as_slice();
            let current = c
                .query_row("SELECT 1 FROM customers WHERE id = ?1 AND version = ?2", params![key, version], |_| Ok(()))
                .optional()?;
            if current.is_none() {
                return Ok(false);
            }
            c.prepare_cached("DELETE FROM blind_index WHERE customer_id = ?1")?.execute([key])?;
            insert_index(c, entries.iter().map(|e| (&id, e)))?;
            Ok(true)
        })
        .await
    }

    async fn audit_links(&self, from_seq: i64, to_seq: i64) -> Result<Vec<AuditLinks>, StoreError> {
        self.read(move |c| {
            // One snapshot: the mark and the index rows it vouches for.
            let tx = c.unchecked_transaction()?;
            let link = |r: &rusqlite::Row<'_>| -> Result<(i64, Uuid), StoreError> { Ok((r.get(0)?, id_at(r, 1)?)) };
            let written = all(&tx, links::LINKS_BY_SEQ, (from_seq, to_seq), link)?;
            let through: i64 = tx.query_row(links::THROUGH, [], |r| r.get(0))?;
            let indexed = all(&tx, links::INDEXED_LINKS, (from_seq, to_seq.min(through)), link)?;
            tx.finish()?;
            Ok(vec![
                AuditLinks { copy: "access-log links", through: i64::MAX, links: written },
                AuditLinks { copy: "access-log links in the customer index", through, links: indexed },
            ])
        })
        .await
    }

    async fn charge_budget(
        &self,
        principal: &str,
        budget: &str,
        bucket: i64,
        after_bucket: i64,
        amount: i64,
    ) -> Result<i64, StoreError> {
        let (principal, budget) = (principal.to_owned(), budget.to_owned());
        // Unsynced: the request's audit event, committed synced before any answer, makes the
        // charge durable with it (no fsync of its own per search or reveal).
        self.writer
            .write_unsynced(WriteKind::Budget, move |c| {
                c.prepare_cached(
                    "INSERT INTO budget_usage (principal, budget, bucket, used) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (principal, budget, bucket) DO UPDATE SET used = budget_usage.used + excluded.used",
                )?
                .execute(params![principal, budget, bucket, amount])?;
                Ok(c.prepare_cached(
                "SELECT COALESCE(SUM(used), 0) FROM budget_usage WHERE principal = ?1 AND budget = ?2 AND bucket > ?3",
            )?
            .query_row(params![principal, budget, after_bucket], |r| r.get(0))?)
            })
            .await
    }

    async fn prune_budgets(&self, before_bucket: i64) -> Result<(), StoreError> {
        self.write(WriteKind::Other, move |c| {
            c.execute("DELETE FROM budget_usage WHERE bucket < ?1", [before_bucket])?;
            // Counts of instances gone for as long (their rows are no longer read anyway).
            c.execute("DELETE FROM guard_counts WHERE updated_at < ?1", [before_bucket.saturating_mul(60)])?;
            Ok(())
        })
        .await
    }

    async fn publish_guard_counts(&self, instance: &str, counts: &[(String, i64)], now: i64) -> Result<(), StoreError> {
        if counts.is_empty() {
            return Ok(());
        }
        let (instance, counts) = (instance.to_owned(), counts.to_vec());
        self.write(WriteKind::Other, move |c| {
            for (principal, n) in &counts {
                if *n == 0 {
                    c.prepare_cached("DELETE FROM guard_counts WHERE instance = ?1 AND principal = ?2")?
                        .execute((&instance, principal))?;
                    continue;
                }
                c.prepare_cached(
                    "INSERT INTO guard_counts (instance, principal, customers, updated_at) VALUES (?1, ?2, ?3, ?4) \
                     ON CONFLICT (instance, principal) DO UPDATE SET customers = excluded.customers, updated_at = excluded.updated_at",
                )?
                .execute(params![instance, principal, n, now])?;
            }
            Ok(())
        })
        .await
    }

    async fn clear_guard_counts(&self, principal: &str) -> Result<(), StoreError> {
        let principal = principal.to_owned();
        self.write(WriteKind::Other, move |c| {
            c.execute("DELETE FROM guard_counts WHERE principal = ?1", [principal])?;
            Ok(())
        })
        .await
    }

    async fn guard_counts_elsewhere(&self, instance: &str, since: i64) -> Result<Vec<(String, i64)>, StoreError> {
        let instance = instance.to_owned();
        self.read(move |c| {
            all(
                c,
                "SELECT principal, SUM(customers) FROM guard_counts WHERE instance <> ?1 AND updated_at >= ?2 GROUP BY principal",
                params![instance, since],
                pair,
            )
        })
        .await
    }

    async fn kek_usage(&self) -> Result<Vec<(u32, i64)>, StoreError> {
        self.read(|c| {
            all(c, "SELECT kek_version, count(*) FROM customers GROUP BY kek_version ORDER BY kek_version", [], |r| {
                Ok((super::kek_version(r.get(0)?)?, r.get(1)?))
            })
        })
        .await
    }

    async fn wrapped_below(&self, active: u32, limit: u32) -> Result<Vec<(Uuid, WrappedKey)>, StoreError> {
        self.read(move |c| {
            all(c, STALE_DATA_KEYS, (i64::from(active), i64::from(limit)), |r| {
                Ok((id_at(r, 0)?, WrappedKey { kek_version: super::kek_version(r.get(1)?)?, bytes: r.get(2)? }))
            })
        })
        .await
    }

    async fn replace_wrapped_key(&self, id: Uuid, from_version: u32, key: &WrappedKey) -> Result<bool, StoreError> {
        let key = key.clone();
        self.write(WriteKind::Other, move |c| {
            let n = c.execute(
                "UPDATE customers SET kek_version = ?1, wrapped_key = ?2 WHERE id = ?3 AND kek_version = ?4",
                params![i64::from(key.kek_version), key.bytes, id.as_bytes().as_slice(), i64::from(from_version)],
            )?;
            Ok(n > 0)
        })
        .await
    }

    async fn erase_customer(&self, tombstone: &Tombstone, audit: &AuditEvent) -> Result<bool, StoreError> {
        let (t, audit) = (tombstone.clone(), audit.clone());
        self.write(WriteKind::Customers, move |c| {
            let key = t.id.as_bytes().as_slice();
            c.execute("DELETE FROM blind_index WHERE customer_id = ?1", [key])?;
            c.execute("DELETE FROM customer_fields WHERE customer_id = ?1", [key])?;
            if c.execute("DELETE FROM customers WHERE id = ?1", [key])? == 0 {
                // Nothing was there: the (empty) deletions above change nothing either.
                return Ok(false);
            }
            c.execute(
                "INSERT INTO customer_tombstones (id, region, erased_at, erased_by, reason) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![key, t.region, time_text(&t.erased_at), t.erased_by, t.reason],
            )?;
            append_events(c, std::slice::from_ref(&audit))?;
            Ok(true)
        })
        .await
    }

    async fn tombstone(&self, id: Uuid) -> Result<Option<Tombstone>, StoreError> {
        self.read(move |c| {
            first(
                c,
                "SELECT id, region, erased_at, erased_by, reason FROM customer_tombstones WHERE id = ?1",
                [id.as_bytes().as_slice()],
                tombstone_from,
            )
        })
        .await
    }

    async fn set_status(&self, id: Uuid, status: CustomerStatus, audit: &AuditEvent) -> Result<bool, StoreError> {
        let audit = audit.clone();
        self.write(WriteKind::Customers, move |c| {
            let n = c.execute(
                "UPDATE customers SET status = ?1, updated_at = ?2 WHERE id = ?3",
                params![status.as_str(), time_text(&Utc::now()), id.as_bytes().as_slice()],
            )?;
            if n == 0 {
                return Ok(false);
            }
            append_events(c, std::slice::from_ref(&audit))?;
            Ok(true)
        })
        .await
    }

    async fn idempotency(
        &self,
        principal: &str,
        key: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        let (principal, key) = (principal.to_owned(), key.to_owned());
        self.read(move |c| {
            first(
                c,
                "SELECT principal, key, fingerprint, outcome, created_at, expires_at FROM idempotency_keys \
                 WHERE principal = ?1 AND key = ?2 AND julianday(expires_at) > julianday(?3)",
                params![principal, key, time_text(&now)],
                |r| {
                    Ok(IdempotencyRecord {
                        principal: r.get(0)?,
                        key: r.get(1)?,
                        fingerprint: r.get(2)?,
                        outcome: r.get(3)?,
                        created_at: time_at(r, 4)?,
                        expires_at: time_at(r, 5)?,
                    })
                },
            )
        })
        .await
    }

    async fn prune_idempotency(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        self.write(WriteKind::Other, move |c| {
            let n = c.execute(
                "DELETE FROM idempotency_keys WHERE julianday(expires_at) <= julianday(?1)",
                [time_text(&now)],
            )?;
            Ok(n as u64)
        })
        .await
    }

    async fn past_retention(
        &self,
        kind: CustomerKind,
        status: CustomerStatus,
        before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<(Uuid, String)>, StoreError> {
        self.read(move |c| {
            all(
                c,
                "SELECT id, region FROM customers WHERE kind = ?1 AND status = ?2 AND updated_at < ?3 ORDER BY id LIMIT ?4",
                params![kind.as_str(), status.as_str(), time_text(&before), i64::from(limit)],
                |r| Ok((id_at(r, 0)?, r.get(1)?)),
            )
        })
        .await
    }
}

const CHECKPOINT_SELECT: &str = "SELECT seq, chain_hash, time, key_id, signature FROM audit_checkpoints";

fn checkpoint_from(r: &rusqlite::Row<'_>) -> Result<Checkpoint, StoreError> {
    Ok(Checkpoint {
        seq: r.get(0)?,
        chain_hash: r.get(1)?,
        time: time_at(r, 2)?,
        key_id: r.get(3)?,
        signature: r.get(4)?,
    })
}

/// Records with a data key wrapped under a key version below the active one (the rewrap's next
/// batch). Asked every few seconds by maintenance: it must be answered from the
/// `customers_kek_version` index (migration 0009), in its order — a scan of the table per
/// question grew with the data.
const STALE_DATA_KEYS: &str =
    "SELECT id, kek_version, wrapped_key FROM customers WHERE kek_version < ?1 ORDER BY kek_version, id LIMIT ?2";

/// Customers with blind-index entries under an index version below the current one, oldest
/// version first (the re-index's next batch). Asked every few seconds by maintenance: it must be
/// answered from the `blind_index_key_version` index (migration 0009), one version at a time in
/// customer order, so that a batch reads only its own entries.
const STALE_INDEX_ENTRIES: &str = "SELECT DISTINCT customer_id FROM blind_index WHERE key_version = \
     (SELECT min(key_version) FROM blind_index WHERE key_version < ?1) ORDER BY customer_id LIMIT ?2";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(file_of("sqlite://data/custodia.db").unwrap(), PathBuf::from("data/custodia.db"));
        assert_eq!(file_of("sqlite:///tmp/x.db").unwrap(), PathBuf::from("/tmp/x.db"));
        assert_eq!(file_of("sqlite:x.db").unwrap(), PathBuf::from("x.db"));
        for bad in ["sqlite::memory:", "sqlite://file?mode=memory", "sqlite://x.db?mode=ro", "sqlite://", "x.db"] {
            assert!(matches!(file_of(bad), Err(StoreError::Config(_))), "{bad}");
        }
    }

    /// Fails when migration 0009's indexes are dropped: both questions fall back to a scan of
    /// their whole table (`SCAN customers`, `SCAN blind_index USING INDEX blind_index_customer`).
    #[test]
    fn stale_key_versions_are_found_from_their_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = rusqlite::Connection::open(dir.path().join("p.db")).unwrap();
        migrate::run(&mut c).unwrap();
        let plan = |sql: &str| -> Vec<String> {
            let mut stmt = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            stmt.query_map((1, 2), |r| r.get(3)).unwrap().map(Result::unwrap).collect()
        };
        assert_eq!(
            plan(STALE_DATA_KEYS),
            ["SEARCH customers USING INDEX customers_kek_version (kek_version<?)"],
            "{:?}",
            plan(STALE_DATA_KEYS)
        );
        let entries = plan(STALE_INDEX_ENTRIES);
        assert!(
            entries.iter().all(|step| !step.starts_with("SCAN"))
                && entries.iter().any(|s| s.contains("blind_index_key_version")),
            "{entries:?}"
        );
    }
}

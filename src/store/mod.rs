//! Persistence. One [`Store`] trait, implemented for SQLite ([`sqlite`], through rusqlite)
//! and PostgreSQL ([`postgres`], through sqlx): one driver per backend.
//!
//! The store owns SQL and migrations. It sees only sealed field values and wrapped keys —
//! never plaintext, never key material — and knows nothing of HTTP.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::audit::{AuditEvent, Checkpoint, StoredEvent};
use crate::crypto::WrappedKey;
use crate::domain::{CustomerKind, CustomerStatus, RegionId, RegionLevel};

pub mod breaker;
pub mod group;
pub mod postgres;
pub mod sqlite;

/// Which database a store talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Storage errors. The messages carry no row content.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    #[error("migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// A SQLite error (see [`sqlite`]).
    #[error("database error: {0}")]
    Sqlite(#[source] rusqlite::Error),
    /// No connection became free within the acquire timeout (SQLite's turns; PostgreSQL's
    /// pool reports `Unavailable`).
    #[error("database busy: no connection free in time")]
    Saturated,
    /// A call to a networked database did not finish within its deadline (see [`breaker`]).
    #[error("database call exceeded its deadline")]
    DeadlineExceeded,
    /// The database was found unreachable and has not answered a probe since (see
    /// [`breaker`]): refused without trying.
    #[error("database unreachable: refused until it answers a probe")]
    Unreachable,
    #[error("stored row is corrupt: {0}")]
    Corrupt(&'static str),
    /// The database refused a grant: the principal holds unrevoked grants of another duty.
    #[error("separation of duties")]
    SeparationOfDuties,
    #[error("unsupported database url: {0}")]
    Config(String),
    /// A backup could not be made (see [`backup`]); nothing is left at its target.
    #[error("backup refused or failed: {0}")]
    Backup(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) | sqlx::Error::Tls(_) => {
                StoreError::Unavailable(e)
            }
            // The server is going away or cannot take the session: SQLSTATE class 08
            // (connection exception), 53 (insufficient resources: too many connections, disk
            // full) and 57 (operator intervention: admin or crash shutdown, cannot connect now).
            sqlx::Error::Database(ref db)
                if db.code().is_some_and(|c| c.starts_with("08") || c.starts_with("53") || c.starts_with("57")) =>
            {
                StoreError::Unavailable(e)
            }
            other => StoreError::Database(other),
        }
    }
}

impl StoreError {
    /// Whether a statement violated a constraint (so a failed batch can be down to one of its
    /// records).
    pub fn is_constraint(&self) -> bool {
        match self {
            StoreError::Database(sqlx::Error::Database(db)) => db.kind() != sqlx::error::ErrorKind::Other,
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => {
                e.code == rusqlite::ErrorCode::ConstraintViolation
            }
            _ => false,
        }
    }

    /// Whether the database could not be reached or used at all (as opposed to a statement
    /// failing): callers answer 503 and do not retry record by record.
    pub fn is_unavailable(&self) -> bool {
        use rusqlite::ErrorCode as Code;
        match self {
            StoreError::Unavailable(_)
            | StoreError::Saturated
            | StoreError::DeadlineExceeded
            | StoreError::Unreachable => true,
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => matches!(
                e.code,
                Code::DatabaseBusy
                    | Code::DatabaseLocked
                    | Code::CannotOpen
                    | Code::SystemIoFailure
                    | Code::DiskFull
                    | Code::OutOfMemory
            ),
            _ => false,
        }
    }
}

impl StoreError {
    /// Whether the database could not be reached at all — refused or reset connections, a
    /// server shutting down, a call past its deadline — as opposed to being busy or refusing
    /// a statement. Opens the [`breaker`].
    pub fn is_unreachable(&self) -> bool {
        match self {
            StoreError::Unavailable(sqlx::Error::PoolClosed) => false,
            StoreError::Unavailable(_) | StoreError::DeadlineExceeded | StoreError::Unreachable => true,
            _ => false,
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Sqlite(e)
    }
}

/// One sealed field of a record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealedField {
    pub name: String,
    pub sealed: Vec<u8>,
}

/// One blind-index entry of a record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    pub field: String,
    pub digest: Vec<u8>,
    pub key_version: i32,
}

/// One searched field and its digests under each live index version.
pub type FieldMatch = (String, Vec<(i32, Vec<u8>)>);

/// A customer search, filtered in SQL: exact blind-index matches, the caller's scopes, filters.
#[derive(Clone, Debug)]
pub struct CustomerQuery {
    /// Per field, the (index version, digest) pairs of which one must match; all fields must.
    pub matches: Vec<FieldMatch>,
    /// The caller's scopes; empty means nothing is visible.
    pub scopes: Vec<RegionId>,
    /// An additional region filter.
    pub region: Option<RegionId>,
    pub kind: Option<CustomerKind>,
    pub status: Option<CustomerStatus>,
    pub after: Option<Uuid>,
    pub limit: u32,
}

/// A customer record as stored.
#[derive(Clone, Debug)]
pub struct CustomerRecord {
    pub id: Uuid,
    pub region: String,
    pub kind: CustomerKind,
    pub vip_level: i16,
    pub status: CustomerStatus,
    pub version: i64,
    pub wrapped_key: WrappedKey,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub fields: Vec<SealedField>,
    /// Blind-index entries (written on insert; not loaded on reads).
    pub index: Vec<IndexEntry>,
}

/// A new version of a record: every field is re-sealed under the new version, so the update
/// replaces the record's whole field set.
#[derive(Clone, Debug)]
pub struct CustomerUpdate {
    pub id: Uuid,
    pub expected_version: i64,
    pub version: i64,
    pub vip_level: i16,
    pub updated_at: DateTime<Utc>,
    pub fields: Vec<SealedField>,
    /// The record's complete new set of blind-index entries.
    pub index: Vec<IndexEntry>,
}

/// A grant as stored.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct GrantRecord {
    pub id: Uuid,
    pub principal: String,
    pub role: String,
    /// `CN`, a province or a city code.
    pub region: String,
    pub granted_by: String,
    /// The grant under which this one was delegated (`None` for the bootstrap grant).
    pub parent_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub revoked_by: Option<String>,
    /// The role's duty (`data`, `administration`, `audit`): the database lets a principal hold
    /// unrevoked grants of one duty only.
    pub duty: String,
}

/// Everything authorization decisions depend on, read at one epoch.
#[derive(Clone, Debug, Default)]
pub struct AuthzState {
    pub epoch: i64,
    pub grants: Vec<GrantRecord>,
    /// Principal → tokens issued at or before this instant are refused.
    pub token_revocations: Vec<(String, DateTime<Utc>)>,
    /// Principals with an open bulk-access alert.
    pub blocked: Vec<String>,
    /// Per principal, how many of its alerts were cleared (grows with every clear: instances
    /// restart their counting for the principal when it does).
    pub clears: Vec<(String, i64)>,
}

/// One group commit of the audit writer: the new customer records of the creates waiting in
/// it, then the events to append, in the chain's order. Handed to the store behind an `Arc`
/// so that the writer keeps the batch for the rare retry after a constraint failure without
/// copying it on every commit.
#[derive(Default)]
pub struct AuditBatch {
    pub records: Vec<CustomerRecord>,
    pub events: Vec<AuditEvent>,
}

impl AuditBatch {
    /// A batch of events alone (no creates).
    pub fn events(events: Vec<AuditEvent>) -> Arc<AuditBatch> {
        Arc::new(AuditBatch { records: Vec::new(), events })
    }
}

/// The audit chain head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditHead {
    pub seq: i64,
    pub chain_hash: Vec<u8>,
}

/// One copy of the event-to-customer links that answers access reports and `?customer=`
/// searches, for a range of events. Verification checks every copy against the chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditLinks {
    /// What the copy is, for the verification report.
    pub copy: &'static str,
    /// The copy claims to be complete for events up to this sequence number (a copy filled
    /// in the background lags; events after it are answered from another copy).
    pub through: i64,
    /// `(seq, customer)` pairs, ordered by sequence number then customer.
    pub links: Vec<(i64, Uuid)>,
}

/// A search of the audit.
#[derive(Clone, Debug, Default)]
pub struct AuditQuery {
    pub principal: Option<String>,
    pub customer: Option<Uuid>,
    pub action: Option<String>,
    pub outcome: Option<String>,
    /// The stated purpose (`X-Purpose`) the events were recorded with.
    pub purpose: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    /// Events with a greater sequence number.
    pub after_seq: i64,
    pub limit: u32,
    /// Only events whose actor or subject region lies in one of these subtrees; `None`: all.
    pub scopes: Option<Vec<RegionId>>,
}

/// The width of the overview's time buckets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bucket {
    /// `YYYY-MM-DDTHH` (UTC).
    Hour,
    /// `YYYY-MM-DD` (UTC).
    Day,
}

/// What the console's overview counts: audit events since an instant, inside subtrees (by
/// actor or subject region, as the search filters).
#[derive(Clone, Debug)]
pub struct AuditTally {
    pub since: DateTime<Utc>,
    pub scopes: Vec<RegionId>,
    pub bucket: Bucket,
    /// How many principals the leak-warning list holds.
    pub leaders: u32,
}

/// The overview's counts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditTallies {
    /// (bucket, outcome, events), by bucket.
    pub by_bucket: Vec<(String, String, i64)>,
    /// Events of the actions that hand plaintext or whole records out: (action, events) for
    /// `customer.reveal` and `customer.export`.
    pub disclosures: Vec<(String, i64)>,
    /// The leak-warning list: (principal, distinct customers disclosed to it), most first.
    pub leaders: Vec<(String, i64)>,
}

/// The actions the overview counts as disclosures.
pub const DISCLOSURE_ACTIONS: [&str; 2] = ["customer.reveal", "customer.export"];

/// A write's idempotency key and first outcome, committed in the same transaction as the
/// write (it rides on the write's audit event: [`AuditEvent::idempotency`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyRecord {
    pub principal: String,
    pub key: String,
    /// SHA-256 of the request (method, path, `If-Match`, body).
    pub fingerprint: Vec<u8>,
    /// The outcome, as JSON: identifiers and versions, never field values.
    pub outcome: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// What is left of an erased customer.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct Tombstone {
    pub id: Uuid,
    pub region: String,
    pub erased_at: DateTime<Utc>,
    pub erased_by: String,
    pub reason: String,
}

/// A bulk-access alert.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct AlertRecord {
    pub id: Uuid,
    /// `bulk_access`, `search_budget` or `search_misses`.
    pub kind: String,
    pub principal: String,
    /// Where the principal acted from when the alert was raised (scopes officers' view).
    pub region: Option<String>,
    pub raised_at: DateTime<Utc>,
    pub distinct_customers: i32,
    pub window_seconds: i32,
    pub cleared_at: Option<DateTime<Utc>>,
    pub cleared_by: Option<String>,
}

/// A page request over grants, filtered in SQL to the given region scopes.
#[derive(Clone, Debug)]
pub struct GrantQuery {
    /// Region nodes whose subtrees are visible; empty means nothing is.
    pub scopes: Vec<RegionId>,
    pub principal: Option<String>,
    /// Return grants with ids greater than this.
    pub after: Option<Uuid>,
    pub limit: u32,
}

/// What an attempt to create the bootstrap grant found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootstrapOutcome {
    Created,
    AlreadyBootstrapped,
}

/// What an optimistic update found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpdateOutcome {
    Updated,
    NotFound,
    VersionConflict,
}

/// A connection pool's occupancy, for metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolStats {
    pub busy: u32,
    pub idle: u32,
    pub max: u32,
}

/// The vault's persistence.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    fn backend(&self) -> Backend;
    /// The read connections' occupancy (PostgreSQL: the pool; SQLite: the readers).
    fn pool_stats(&self) -> Option<PoolStats> {
        None
    }
    /// Checks that the database answers.
    async fn ping(&self) -> Result<(), StoreError>;
    /// Inserts records and appends audit events, all in one transaction with multi-row
    /// statements: a seeding batch with one event for the whole batch. (Creates served to
    /// callers go through the audit writer's [`Store::append_audit`].)
    async fn insert_customers(&self, records: &[CustomerRecord], events: &[AuditEvent]) -> Result<(), StoreError>;
    async fn customer(&self, id: Uuid) -> Result<Option<CustomerRecord>, StoreError>;
    /// Applies an update and appends its audit event in one transaction (neither on a conflict).
    async fn update_customer(&self, update: &CustomerUpdate, audit: &AuditEvent) -> Result<UpdateOutcome, StoreError>;
    /// The records among `ids` inside `scopes` (filtered in SQL).
    async fn customers_by_ids(&self, ids: &[Uuid], scopes: &[RegionId]) -> Result<Vec<CustomerRecord>, StoreError>;
    /// Ids of the records a search finds, in id order.
    async fn search_customers(&self, query: &CustomerQuery) -> Result<Vec<Uuid>, StoreError>;
    /// The records a search finds (inside `query.scopes`), in id order: [`Store::search_customers`]
    /// then [`Store::customers_by_ids`], in one round trip where the backend can.
    async fn search_customer_records(&self, query: &CustomerQuery) -> Result<Vec<CustomerRecord>, StoreError> {
        let ids = self.search_customers(query).await?;
        self.customers_by_ids(&ids, &query.scopes).await
    }

    /// The current authorization epoch (bumped by every grant or token revocation change).
    async fn authz_epoch(&self) -> Result<i64, StoreError>;
    /// Every grant and token revocation, with the epoch read first.
    async fn authz_state(&self) -> Result<AuthzState, StoreError>;
    async fn grant(&self, id: Uuid) -> Result<Option<GrantRecord>, StoreError>;
    async fn insert_grant(&self, grant: &GrantRecord, audit: &AuditEvent) -> Result<(), StoreError>;
    /// Inserts the root grant unless a live one exists.
    async fn insert_bootstrap_grant(
        &self,
        grant: &GrantRecord,
        audit: &AuditEvent,
    ) -> Result<BootstrapOutcome, StoreError>;
    /// Marks a grant revoked; false when it was already revoked.
    async fn revoke_grant(&self, id: Uuid, by: &str, at: DateTime<Utc>, audit: &AuditEvent)
        -> Result<bool, StoreError>;
    async fn grants_page(&self, query: &GrantQuery) -> Result<Vec<GrantRecord>, StoreError>;
    async fn revoke_tokens(
        &self,
        principal: &str,
        not_before: DateTime<Utc>,
        audit: &AuditEvent,
    ) -> Result<(), StoreError>;

    /// Inserts the batch's new records (none, or the creates waiting with the events) and
    /// appends its events to the audit chain, in this order, in one transaction: the audit
    /// writer's group commit, one synced commit for a batch's events and its creates. A
    /// constraint violated by any record or event fails the whole transaction.
    async fn append_audit(&self, batch: Arc<AuditBatch>) -> Result<AuditHead, StoreError>;
    async fn audit_head(&self) -> Result<AuditHead, StoreError>;
    /// Stores a checkpoint (a duplicate sequence number is ignored).
    async fn insert_checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), StoreError>;
    async fn checkpoints(&self) -> Result<Vec<Checkpoint>, StoreError>;
    /// The newest checkpoint.
    async fn latest_checkpoint(&self) -> Result<Option<Checkpoint>, StoreError>;
    /// Events after `after_seq`, in order, at most `limit`, for verification: the customer-id
    /// and field lists are left empty (the stored texts, which the chain covers, are kept).
    async fn audit_events_after(&self, after_seq: i64, limit: u32) -> Result<Vec<StoredEvent>, StoreError>;
    async fn query_audit(&self, query: &AuditQuery) -> Result<Vec<StoredEvent>, StoreError>;
    /// The overview's counts (see [`AuditTally`]).
    async fn audit_tallies(&self, tally: &AuditTally) -> Result<AuditTallies, StoreError>;
    /// Raises an alert (and appends its event) in one transaction.
    async fn insert_alert(&self, alert: &AlertRecord, audit: &AuditEvent) -> Result<(), StoreError>;
    /// Clears an open alert; false when there was none with that id.
    async fn clear_alert(&self, id: Uuid, by: &str, at: DateTime<Utc>, audit: &AuditEvent) -> Result<bool, StoreError>;
    /// The newest alerts whose region lies in `scopes` (`None`: all).
    async fn alerts(&self, scopes: Option<&[RegionId]>, limit: u32) -> Result<Vec<AlertRecord>, StoreError>;
    /// One alert by id.
    async fn alert(&self, id: Uuid) -> Result<Option<AlertRecord>, StoreError>;

    /// Records with blind-index entries under a version older than `current`.
    async fn index_stale(&self, current: i32, limit: u32) -> Result<Vec<Uuid>, StoreError>;
    /// How many records still have entries under an older index version.
    async fn index_stale_count(&self, current: i32) -> Result<i64, StoreError>;
    /// Replaces a record's blind-index entries if the record is still at `version` (false
    /// otherwise: an update in between wrote entries of its own).
    async fn replace_index(&self, id: Uuid, version: i64, entries: &[IndexEntry]) -> Result<bool, StoreError>;

    /// The event-to-customer links of events `from_seq..=to_seq`, by sequence number, from each
    /// copy the store answers access reports from.
    async fn audit_links(&self, from_seq: i64, to_seq: i64) -> Result<Vec<AuditLinks>, StoreError>;
    /// Adds `amount` to a principal's budget counter for minute `bucket` and returns the
    /// total of the buckets after `after_bucket`, this charge included.
    async fn charge_budget(
        &self,
        principal: &str,
        budget: &str,
        bucket: i64,
        after_bucket: i64,
        amount: i64,
    ) -> Result<i64, StoreError>;
    /// Deletes budget counters of buckets before `before_bucket` (a unix minute), and bulk-guard
    /// counts not updated since then.
    async fn prune_budgets(&self, before_bucket: i64) -> Result<(), StoreError>;
    /// Publishes this instance's bulk-guard counts (a count of 0 removes the row).
    async fn publish_guard_counts(&self, instance: &str, counts: &[(String, i64)], now: i64) -> Result<(), StoreError>;
    /// Forgets every instance's count for `principal` (its alert was cleared).
    async fn clear_guard_counts(&self, principal: &str) -> Result<(), StoreError>;
    /// The other instances' counts updated since `since`, summed per principal.
    async fn guard_counts_elsewhere(&self, instance: &str, since: i64) -> Result<Vec<(String, i64)>, StoreError>;

    /// How many data keys each KEK version wraps.
    async fn kek_usage(&self) -> Result<Vec<(u32, i64)>, StoreError>;
    /// Records whose data key is wrapped under a version older than `active`.
    async fn wrapped_below(&self, active: u32, limit: u32) -> Result<Vec<(Uuid, WrappedKey)>, StoreError>;
    /// Replaces a record's wrapped key if it is still wrapped under `from_version`.
    async fn replace_wrapped_key(&self, id: Uuid, from_version: u32, key: &WrappedKey) -> Result<bool, StoreError>;
    /// Appends a system event (key operations, retention) on its own.
    async fn erase_customer(&self, tombstone: &Tombstone, audit: &AuditEvent) -> Result<bool, StoreError>;
    async fn tombstone(&self, id: Uuid) -> Result<Option<Tombstone>, StoreError>;
    /// Sets a record's status (a new version; fields untouched).
    async fn set_status(&self, id: Uuid, status: CustomerStatus, audit: &AuditEvent) -> Result<bool, StoreError>;
    /// The unexpired idempotency record of `principal`'s `key`.
    async fn idempotency(
        &self,
        principal: &str,
        key: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<IdempotencyRecord>, StoreError>;
    /// Deletes idempotency records expired before `now`; returns how many.
    async fn prune_idempotency(&self, now: DateTime<Utc>) -> Result<u64, StoreError>;
    /// Ids of records of `kind` in `status` last changed before `before`.
    async fn past_retention(
        &self,
        kind: CustomerKind,
        status: CustomerStatus,
        before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<(Uuid, String)>, StoreError>;
}

/// A piece of SQL text or a bound value, for filters both drivers render.
pub(crate) enum SqlPiece<'a> {
    Text(String),
    Bind(&'a str),
}

/// `AND (…)` restricting a `region` column to the subtrees of `scopes` (nothing when `scopes`
/// is empty).
pub(crate) fn scope_filter<'a>(column: &str, scopes: &'a [RegionId]) -> Vec<SqlPiece<'a>> {
    let mut out = vec![SqlPiece::Text(" AND ".into())];
    out.extend(scope_condition(column, scopes));
    out
}

/// `(…)`: whether a `region` column lies in the subtrees of `scopes` (false when `scopes` is
/// empty; a NULL region lies in no subtree but the group's). Region codes have fixed lengths,
/// so a province's subtree is exactly the rows whose first two characters are its code.
pub(crate) fn scope_condition<'a>(column: &str, scopes: &'a [RegionId]) -> Vec<SqlPiece<'a>> {
    let mut out = vec![SqlPiece::Text("(".into())];
    if scopes.is_empty() {
        out.push(SqlPiece::Text("1 = 0".into()));
    }
    for (i, scope) in scopes.iter().enumerate() {
        if i > 0 {
            out.push(SqlPiece::Text(" OR ".into()));
        }
        match scope.level() {
            RegionLevel::Group => out.push(SqlPiece::Text("1 = 1".into())),
            RegionLevel::Province => {
                out.push(SqlPiece::Text(format!("substr({column}, 1, 2) = ")));
                out.push(SqlPiece::Bind(scope.as_str()));
            }
            RegionLevel::City => {
                out.push(SqlPiece::Text(format!("{column} = ")));
                out.push(SqlPiece::Bind(scope.as_str()));
            }
        }
    }
    out.push(SqlPiece::Text(")".into()));
    out
}

/// Appends [`scope_filter`] to a sqlx query.
pub(crate) fn push_scope_filter<'a, DB: sqlx::Database>(
    qb: &mut sqlx::QueryBuilder<'a, DB>,
    column: &str,
    scopes: &'a [RegionId],
) where
    &'a str: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    push_pieces(qb, scope_filter(column, scopes));
}

/// Appends pieces of SQL and bound values to a sqlx query.
pub(crate) fn push_pieces<'a, DB: sqlx::Database>(qb: &mut sqlx::QueryBuilder<'a, DB>, pieces: Vec<SqlPiece<'a>>)
where
    &'a str: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    for piece in pieces {
        match piece {
            SqlPiece::Text(t) => {
                qb.push(t);
            }
            SqlPiece::Bind(v) => {
                qb.push_bind(v);
            }
        }
    }
}

/// Pool sizing and timeouts.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    pub max_connections: u32,
    /// How long a call waits for a connection (SQLite's turns; PostgreSQL's pool).
    pub acquire_timeout: std::time::Duration,
    /// The deadline of every call to a networked database, connection included
    /// ([`breaker`]).
    pub call_timeout: std::time::Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            max_connections: 16,
            acquire_timeout: std::time::Duration::from_secs(5),
            call_timeout: std::time::Duration::from_secs(5),
        }
    }
}

/// Opens the store a URL names (`sqlite://PATH` or `postgres://…`), applying migrations.
pub async fn open(url: &str, options: &StoreOptions) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    if url.starts_with("sqlite:") {
        Ok(std::sync::Arc::new(sqlite::SqliteStore::open(url, options).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let store = std::sync::Arc::new(postgres::PgStore::open(url, options).await?);
        Ok(std::sync::Arc::new(breaker::Breaker::new(store, options.call_timeout)))
    } else {
        Err(StoreError::Config("expected sqlite://PATH or postgres://…".into()))
    }
}

/// An online, consistent backup of the vault at `url` into the file `to` (which must not
/// exist), taken while the vault serves. SQLite only: PostgreSQL is backed up with its own
/// tools (`pg_basebackup` or `pg_dump`, docs/OPERATIONS.md).
pub async fn backup(url: &str, to: &std::path::Path) -> Result<sqlite::backup::BackupReport, StoreError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Err(StoreError::Backup(
            "PostgreSQL is backed up with pg_basebackup or pg_dump (see docs/OPERATIONS.md), not by custodia".into(),
        ));
    }
    let (url, to) = (url.to_owned(), to.to_path_buf());
    tokio::task::spawn_blocking(move || sqlite::backup::backup(&url, &to))
        .await
        .map_err(|_| StoreError::Backup("the backup thread stopped".into()))?
}

pub(crate) fn parse_kind(s: &str) -> Result<CustomerKind, StoreError> {
    CustomerKind::parse(s).ok_or(StoreError::Corrupt("unknown customer kind"))
}

pub(crate) fn parse_status(s: &str) -> Result<CustomerStatus, StoreError> {
    CustomerStatus::parse(s).ok_or(StoreError::Corrupt("unknown customer status"))
}

pub(crate) fn kek_version(v: i64) -> Result<u32, StoreError> {
    u32::try_from(v).map_err(|_| StoreError::Corrupt("key version out of range"))
}

/// Parses sealed fields folded by the store's aggregate (`field:hex,field:hex`, any order, hex
/// in either case) into records sorted by field name.
pub(crate) fn parse_folded_fields(text: &str) -> Result<Vec<SealedField>, StoreError> {
    const BAD: StoreError = StoreError::Corrupt("malformed folded fields");
    /// A hex digit's value, or 0xFF.
    const fn nibble(c: u8) -> u8 {
        match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => 0xFF,
        }
    }
    let mut out = Vec::with_capacity(10);
    for part in text.split(',').filter(|p| !p.is_empty()) {
        let (name, hex) = part.split_once(':').ok_or(BAD)?;
        let hex = hex.as_bytes();
        if hex.len() % 2 != 0 {
            return Err(BAD);
        }
        let mut sealed = Vec::with_capacity(hex.len() / 2);
        for pair in hex.chunks_exact(2) {
            let (hi, lo) = (nibble(pair[0]), nibble(pair[1]));
            if (hi | lo) > 0x0F {
                return Err(BAD);
            }
            sealed.push((hi << 4) | lo);
        }
        out.push(SealedField { name: name.to_owned(), sealed });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

#[cfg(test)]
mod folded_tests {
    use super::*;

    #[test]
    fn folded_fields_round_trip_and_refuse_garbage() {
        let f = parse_folded_fields("mobile:0aFF,name:00").unwrap();
        assert_eq!(f.len(), 2);
        assert_eq!((f[0].name.as_str(), f[0].sealed.as_slice()), ("mobile", &[0x0a, 0xff][..]));
        assert_eq!((f[1].name.as_str(), f[1].sealed.as_slice()), ("name", &[0x00][..]));
        assert!(parse_folded_fields("").unwrap().is_empty());
        for bad in ["mobile", "mobile:0", "mobile:zz", "mobile:0g"] {
            assert!(parse_folded_fields(bad).is_err(), "{bad}");
        }
    }
}

/// Splits `items` into chunks whose lengths are powers of two (at most `max`, itself a power
/// of two), largest first. Multi-row statements then come in a handful of shapes that the
/// driver's statement cache keeps prepared, instead of one shape per batch size.
pub(crate) fn pow2_chunks<T>(items: &[T], max: usize) -> impl Iterator<Item = &[T]> {
    let mut rest = items;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let n = rest.len().min(max.max(1));
        let size = 1usize << (usize::BITS - 1 - n.leading_zeros());
        let (head, tail) = rest.split_at(size);
        rest = tail;
        Some(head)
    })
}

#[cfg(test)]
mod chunk_tests {
    #[test]
    fn pow2_chunks_cover_everything_in_few_shapes() {
        let v: Vec<u32> = (0..1000).collect();
        let sizes: Vec<usize> = super::pow2_chunks(&v, 256).map(<[u32]>::len).collect();
        assert_eq!(sizes, vec![256, 256, 256, 128, 64, 32, 8]);
        assert_eq!(super::pow2_chunks(&v[..1], 256).count(), 1);
        assert_eq!(super::pow2_chunks(&v[..0], 256).count(), 0);
        let joined: Vec<u32> = super::pow2_chunks(&v[..37], 16).flatten().copied().collect();
        assert_eq!(joined, v[..37].to_vec());
    }
}

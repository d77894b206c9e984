//! Persistence. One [`Store`] trait, implemented for SQLite ([`sqlite`]) and PostgreSQL
//! ([`postgres`]) with their concrete sqlx drivers; the SQL both share is written once in
//! [`sql`].
//!
//! The store owns SQL and migrations. It sees only sealed field values and wrapped keys —
//! never plaintext, never key material — and knows nothing of HTTP.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::crypto::WrappedKey;
use crate::domain::{CustomerKind, CustomerStatus};

pub mod postgres;
mod sql;
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
    #[error("stored row is corrupt: {0}")]
    Corrupt(&'static str),
    #[error("unsupported database url: {0}")]
    Config(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) | sqlx::Error::Tls(_) => {
                StoreError::Unavailable(e)
            }
            other => StoreError::Database(other),
        }
    }
}

/// One sealed field of a record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealedField {
    pub name: String,
    pub sealed: Vec<u8>,
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
}

/// What an optimistic update found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpdateOutcome {
    Updated,
    NotFound,
    VersionConflict,
}

/// The vault's persistence.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    fn backend(&self) -> Backend;
    /// Checks that the database answers.
    async fn ping(&self) -> Result<(), StoreError>;
    async fn insert_customer(&self, record: &CustomerRecord) -> Result<(), StoreError>;
    async fn customer(&self, id: Uuid) -> Result<Option<CustomerRecord>, StoreError>;
    async fn update_customer(&self, update: &CustomerUpdate) -> Result<UpdateOutcome, StoreError>;
}

/// Pool sizing and timeouts.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    pub max_connections: u32,
    pub acquire_timeout: std::time::Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions { max_connections: 16, acquire_timeout: std::time::Duration::from_secs(5) }
    }
}

/// Opens the store a URL names (`sqlite://PATH` or `postgres://…`), applying migrations.
pub async fn open(url: &str, options: &StoreOptions) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    if url.starts_with("sqlite:") {
        Ok(std::sync::Arc::new(sqlite::SqliteStore::open(url, options).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(std::sync::Arc::new(postgres::PgStore::open(url, options).await?))
    } else {
        Err(StoreError::Config("expected sqlite://PATH or postgres://…".into()))
    }
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

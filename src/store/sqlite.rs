//! The SQLite store: one file in WAL mode, `synchronous = FULL` (a commit is durable when it
//! returns), a busy timeout, one writer connection and a pool of read-only readers.
//! `sqlite::memory:` is refused: each pooled connection would get its own empty database.

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

use super::sql::impl_store;
use super::{Backend, StoreError, StoreOptions};

/// Embedded SQLite migrations (`migrations/sqlite`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

pub struct SqliteStore {
    read: SqlitePool,
    write: SqlitePool,
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
            .row_buffer_size(4096);
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
            // A 16 MiB page cache for the one writer (SQLite's default is 2 MiB): inserts into
            // the random-keyed blind index stay in memory longer. Readers keep the default.
            .connect_with(connect.clone().pragma("cache_size", "-16384"))
            .await?;
        let migrated = MIGRATOR.run(&write).await;
        drop(lock);
        migrated?;
        let read = SqlitePoolOptions::new()
            .test_before_acquire(false)
            .max_connections(options.max_connections.clamp(1, 16))
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect.read_only(true))
            .await?;
        Ok(SqliteStore { read, write })
    }
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

impl_store!(
    SqliteStore,
    sqlx::Sqlite,
    fields_of_customer =
        "(SELECT group_concat(f.field || ':' || hex(f.sealed), ',') FROM customer_fields f WHERE f.customer_id = c.id)",
    {
        fn backend(&self) -> Backend {
            Backend::Sqlite
        }
    }
);

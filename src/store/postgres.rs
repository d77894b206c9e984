//! The PostgreSQL store. Migrations run under sqlx's advisory lock, so several instances
//! starting at once apply each migration exactly once.

use sqlx::postgres::{PgPool, PgPoolOptions};

use super::sql::impl_store;
use super::{Backend, StoreError, StoreOptions};

/// Embedded PostgreSQL migrations (`migrations/postgres`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

pub struct PgStore {
    read: PgPool,
    write: PgPool,
}

impl PgStore {
    /// Connects and applies pending migrations.
    pub async fn open(url: &str, options: &StoreOptions) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .acquire_timeout(options.acquire_timeout)
            .connect(url)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(PgStore { read: pool.clone(), write: pool })
    }
}

impl_store!(PgStore, sqlx::Postgres, fields_of_customer = "(SELECT string_agg(f.field || ':' || encode(f.sealed, 'hex'), ',') FROM customer_fields f WHERE f.customer_id = c.id)", {
    fn backend(&self) -> Backend {
        Backend::Postgres
    }
});

//! The PostgreSQL store. Migrations run under sqlx's advisory lock, so several instances
//! starting at once apply each migration exactly once.

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::Row;
use uuid::Uuid;

use super::sql::impl_store;
use super::{Backend, CustomerRecord, StoreError, StoreOptions};
use crate::domain::RegionId;

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

    /// Appends a batch of events in one transaction.
    async fn append_batch(&self, events: &[crate::audit::AuditEvent]) -> Result<super::AuditHead, StoreError> {
        let mut tx = self.write.begin().await.map_err(StoreError::Unavailable)?;
        let head = append_events_in(&mut tx, events).await?;
        tx.commit().await?;
        Ok(head)
    }

    /// A page of events for verification, in sequence order.
    async fn audit_page(&self, after_seq: i64, limit: u32) -> Result<Vec<crate::audit::StoredEvent>, StoreError> {
        let mut conn = self.read.acquire().await.map_err(StoreError::Unavailable)?;
        let rows =
            sqlx::query(&format!("SELECT {EVENT_COLUMNS} FROM audit_events WHERE seq > $1 ORDER BY seq LIMIT $2"))
                .bind(after_seq)
                .bind(i64::from(limit))
                .fetch_all(&mut *conn)
                .await?;
        rows.iter().map(|r| event_from_row(r, false)).collect()
    }
}

/// Customers, one row each, with their sealed fields folded into one text column
/// (`field:hex,…`, by `string_agg`): the driver copies every value of every row, and a join
/// repeating ten record columns on each field row made that copying the largest cost of a
/// read. One statement, so the record and its fields come from one snapshot: a concurrent
/// update can never pair a row of one version with fields sealed for another.
const CUSTOMER_SELECT: &str = "SELECT c.id, c.region, c.kind, c.vip_level, c.status, c.version, c.kek_version, \
     c.wrapped_key, c.created_at, c.updated_at, \
     (SELECT string_agg(f.field || ':' || encode(f.sealed, 'hex'), ',') FROM customer_fields f WHERE f.customer_id = c.id) \
     AS fields FROM customers c";

/// The record of a row of `CUSTOMER_SELECT`.
fn record_from_row(row: &sqlx::postgres::PgRow) -> Result<CustomerRecord, StoreError> {
    let kind: String = row.try_get("kind")?;
    let status: String = row.try_get("status")?;
    let fields: Option<String> = row.try_get("fields")?;
    Ok(CustomerRecord {
        id: row.try_get("id")?,
        region: row.try_get("region")?,
        kind: super::parse_kind(&kind)?,
        vip_level: row.try_get("vip_level")?,
        status: super::parse_status(&status)?,
        version: row.try_get("version")?,
        wrapped_key: crate::crypto::WrappedKey {
            kek_version: super::kek_version(row.try_get("kek_version")?)?,
            bytes: row.try_get("wrapped_key")?,
        },
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        fields: super::parse_folded_fields(fields.as_deref().unwrap_or(""))?,
        index: Vec::new(),
    })
}

impl_store!(PgStore, sqlx::Postgres, {
    fn backend(&self) -> Backend {
        Backend::Postgres
    }

    async fn customer(&self, id: Uuid) -> Result<Option<CustomerRecord>, StoreError> {
        let mut conn = self.read.acquire().await.map_err(StoreError::Unavailable)?;
        let row =
            sqlx::query(&format!("{CUSTOMER_SELECT} WHERE c.id = $1")).bind(id).fetch_optional(&mut *conn).await?;
        row.as_ref().map(record_from_row).transpose()
    }

    async fn customers_by_ids(&self, ids: &[Uuid], scopes: &[RegionId]) -> Result<Vec<CustomerRecord>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.read.acquire().await.map_err(StoreError::Unavailable)?;
        let mut qb = sqlx::QueryBuilder::<sqlx::Postgres>::new(format!("{CUSTOMER_SELECT} WHERE c.id IN ("));
        let mut list = qb.separated(", ");
        for id in ids {
            list.push_bind(*id);
        }
        qb.push(")");
        super::push_scope_filter(&mut qb, "c.region", scopes);
        qb.push(" ORDER BY c.id");
        let rows = qb.build().fetch_all(&mut *conn).await?;
        rows.iter().map(record_from_row).collect()
    }

    async fn insert_customers(
        &self,
        records: &[crate::store::CustomerRecord],
        events: &[crate::audit::AuditEvent],
    ) -> Result<(), crate::store::StoreError> {
        use crate::store::pow2_chunks;
        let mut tx = self.write.begin().await.map_err(crate::store::StoreError::Unavailable)?;
        for chunk in pow2_chunks(records, 256) {
            let mut qb = sqlx::QueryBuilder::<sqlx::Postgres>::new(
                "INSERT INTO customers (id, region, kind, vip_level, status, version, kek_version, wrapped_key, created_at, updated_at) ",
            );
            qb.push_values(chunk, |mut b, r| {
                b.push_bind(r.id)
                    .push_bind(r.region.as_str())
                    .push_bind(r.kind.as_str())
                    .push_bind(r.vip_level)
                    .push_bind(r.status.as_str())
                    .push_bind(r.version)
                    .push_bind(i64::from(r.wrapped_key.kek_version))
                    .push_bind(r.wrapped_key.bytes.as_slice())
                    .push_bind(r.created_at)
                    .push_bind(r.updated_at);
            });
            qb.build().execute(&mut *tx).await?;
        }
        let fields: Vec<(uuid::Uuid, &crate::store::SealedField)> =
            records.iter().flat_map(|r| r.fields.iter().map(move |f| (r.id, f))).collect();
        for part in pow2_chunks(&fields, 1024) {
            let mut qb =
                sqlx::QueryBuilder::<sqlx::Postgres>::new("INSERT INTO customer_fields (customer_id, field, sealed) ");
            qb.push_values(part, |mut b, (id, f)| {
                b.push_bind(*id).push_bind(f.name.as_str()).push_bind(f.sealed.as_slice());
            });
            qb.build().execute(&mut *tx).await?;
        }
        let mut index: Vec<(uuid::Uuid, &crate::store::IndexEntry)> =
            records.iter().flat_map(|r| r.index.iter().map(move |e| (r.id, e))).collect();
        // In key order: digests are random, and sorted inserts walk the index's pages
        // once each instead of jumping across the whole tree for every entry.
        index.sort_unstable_by(|a, b| (&a.1.field, &a.1.digest).cmp(&(&b.1.field, &b.1.digest)));
        for part in pow2_chunks(&index, 1024) {
            let mut qb = sqlx::QueryBuilder::<sqlx::Postgres>::new(
                "INSERT INTO blind_index (field, digest, customer_id, key_version) ",
            );
            qb.push_values(part, |mut b, (id, e)| {
                b.push_bind(e.field.as_str()).push_bind(e.digest.as_slice()).push_bind(*id).push_bind(e.key_version);
            });
            qb.build().execute(&mut *tx).await?;
        }
        if !events.is_empty() {
            append_events_in(&mut tx, events).await?;
        }
        tx.commit().await?;
        Ok(())
    }
});

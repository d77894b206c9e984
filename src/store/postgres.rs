//! The PostgreSQL store, through sqlx (the SQLite store has its own driver, rusqlite: one
//! driver per backend). Migrations run under sqlx's advisory lock, so several instances
//! starting at once apply each migration exactly once.
//!
//! Owns: PostgreSQL's SQL. Must never: see plaintext or key material, or know HTTP.

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::Row;
use uuid::Uuid;

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
        // JIT off for the vault's sessions: its statements are point reads and small writes,
        // but a cost estimate over the JIT threshold (stale statistics after a bulk load do
        // it) made PostgreSQL compile every batch read: ≈ 10 ms of a 100-record batch-get's
        // ≈ 16 ms of database CPU, for nothing.
        let connect = url.parse::<PgConnectOptions>()?.options([("jit", "off")]);
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .acquire_timeout(options.acquire_timeout.min(options.call_timeout))
            .connect_with(connect)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(PgStore { read: pool.clone(), write: pool })
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

// ---- The Store implementation: SQL for PostgreSQL (sqlx). ----

async fn insert_grant_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    g: &crate::store::GrantRecord,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO grants (id, principal, role, region, granted_by, parent_id, created_at, expires_at, \
         revoked_at, revoked_by, duty) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(g.id)
    .bind(&g.principal)
    .bind(&g.role)
    .bind(&g.region)
    .bind(&g.granted_by)
    .bind(g.parent_id)
    .bind(g.created_at)
    .bind(g.expires_at)
    .bind(g.revoked_at)
    .bind(&g.revoked_by)
    .bind(&g.duty)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The database's separation-of-duties trigger (migration 0006) refused the grant.
fn duty_conflict(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.message().contains("separation_of_duties"))
}

async fn insert_index_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    id: uuid::Uuid,
    entries: &[crate::store::IndexEntry],
) -> Result<(), sqlx::Error> {
    for e in entries {
        sqlx::query("INSERT INTO blind_index (field, digest, customer_id, key_version) VALUES ($1, $2, $3, $4)")
            .bind(&e.field)
            .bind(&e.digest)
            .bind(id)
            .bind(e.key_version)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

const EVENT_COLUMNS: &str = "seq, time, request_id, principal, grant_id, action, customer_ids, fields, purpose, \
     justification, query, outcome, status, client, user_agent, chain_hash, actor_region, subject_region, proxy, \
     undisclosed_ids";

/// Records, their sealed fields and their blind-index entries, with multi-row statements,
/// inside the caller's transaction.
async fn insert_records_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    records: &[CustomerRecord],
) -> Result<(), StoreError> {
    use crate::store::pow2_chunks;
    if records.is_empty() {
        return Ok(());
    }
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
        qb.build().execute(&mut **tx).await?;
    }
    let fields: Vec<(uuid::Uuid, &crate::store::SealedField)> =
        records.iter().flat_map(|r| r.fields.iter().map(move |f| (r.id, f))).collect();
    for part in pow2_chunks(&fields, 1024) {
        let mut qb =
            sqlx::QueryBuilder::<sqlx::Postgres>::new("INSERT INTO customer_fields (customer_id, field, sealed) ");
        qb.push_values(part, |mut b, (id, f)| {
            b.push_bind(*id).push_bind(f.name.as_str()).push_bind(f.sealed.as_slice());
        });
        qb.build().execute(&mut **tx).await?;
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
        qb.build().execute(&mut **tx).await?;
    }
    Ok(())
}

/// Appends events to the chain inside `tx`. The no-op UPDATE takes the head's write lock
/// before the head is read, so appenders on every instance (and process) queue here and
/// the chain stays one total order.
async fn append_events_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    events: &[crate::audit::AuditEvent],
) -> Result<crate::store::AuditHead, crate::store::StoreError> {
    use sqlx::Row;
    // Locks the head (other instances append to the same chain) and reads it.
    let row = sqlx::query("UPDATE audit_head SET seq = seq WHERE id = 1 RETURNING seq, chain_hash")
        .fetch_one(&mut **tx)
        .await?;
    let mut seq: i64 = row.try_get(0)?;
    let mut head: Vec<u8> = row.try_get(1)?;
    // Chain first, then write the whole batch with multi-row statements.
    let mut rows = Vec::with_capacity(events.len());
    for e in events {
        seq += 1;
        let (ids, fields) = (e.customer_ids_text(), e.fields_text());
        let hash = crate::audit::chain::next(&head, seq, e, &ids, &fields);
        head = hash.to_vec();
        rows.push((seq, e, ids, fields, hash));
    }
    for part in crate::store::pow2_chunks(&rows, 256) {
        let mut qb = sqlx::QueryBuilder::<sqlx::Postgres>::new(format!("INSERT INTO audit_events ({EVENT_COLUMNS}) "));
        qb.push_values(part, |mut b, (seq, e, ids, fields, hash)| {
            b.push_bind(*seq)
                .push_bind(e.time)
                .push_bind(e.request_id.as_str())
                .push_bind(e.principal.as_deref())
                .push_bind(e.grant_id)
                .push_bind(e.action.as_str())
                .push_bind(ids.as_str())
                .push_bind(fields.as_str())
                .push_bind(e.purpose.as_deref())
                .push_bind(e.justification.as_deref())
                .push_bind(e.query.as_deref())
                .push_bind(e.outcome.as_str())
                .push_bind(i32::from(e.status))
                .push_bind(e.client.as_deref())
                .push_bind(e.user_agent.as_deref())
                .push_bind(hash.as_slice())
                .push_bind(e.actor_region.as_deref())
                .push_bind(e.subject_region.as_deref())
                .push_bind(e.proxy.as_deref())
                .push_bind(e.undisclosed.as_deref());
        });
        qb.build().execute(&mut **tx).await?;
    }
    let links: Vec<(uuid::Uuid, i64)> =
        rows.iter().flat_map(|(seq, e, ..)| e.customer_ids.iter().map(move |c| (*c, *seq))).collect();
    for part in crate::store::pow2_chunks(&links, 1024) {
        let mut qb = sqlx::QueryBuilder::<sqlx::Postgres>::new("INSERT INTO audit_event_customers (customer_id, seq) ");
        qb.push_values(part, |mut b, (c, seq)| {
            b.push_bind(*c).push_bind(*seq);
        });
        qb.push(" ON CONFLICT DO NOTHING");
        qb.build().execute(&mut **tx).await?;
    }
    for record in events.iter().filter_map(|e| e.idempotency.as_deref()) {
        remember_in(tx, record).await?;
    }
    sqlx::query("UPDATE audit_head SET seq = $1, chain_hash = $2 WHERE id = 1")
        .bind(seq)
        .bind(&head)
        .execute(&mut **tx)
        .await?;
    Ok(crate::store::AuditHead { seq, chain_hash: head })
}

/// Stores a write's idempotency key in its transaction, replacing an expired record of the
/// same key. A live record of the same key fails the statement (a primary-key violation): a
/// concurrent retry committed first, and this write must not apply.
async fn remember_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    record: &crate::store::IdempotencyRecord,
) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM idempotency_keys WHERE principal = $1 AND key = $2 AND expires_at <= $3")
        .bind(&record.principal)
        .bind(&record.key)
        .bind(record.created_at)
        .execute(&mut **tx)
        .await?;
    sqlx::query(
        "INSERT INTO idempotency_keys (principal, key, fingerprint, outcome, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&record.principal)
    .bind(&record.key)
    .bind(&record.fingerprint)
    .bind(&record.outcome)
    .bind(record.created_at)
    .bind(record.expires_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

const CHECKPOINT_SELECT: &str = "SELECT seq, chain_hash, time, key_id, signature FROM audit_checkpoints";

fn checkpoint_from(r: &sqlx::postgres::PgRow) -> Result<crate::audit::Checkpoint, sqlx::Error> {
    Ok(crate::audit::Checkpoint {
        seq: r.try_get(0)?,
        chain_hash: r.try_get(1)?,
        time: r.try_get(2)?,
        key_id: r.try_get(3)?,
        signature: r.try_get(4)?,
    })
}

/// An event from its row; `lists` parses the customer-id and field texts (verification
/// only hashes the texts, and parsing them was most of its decoding cost).
fn event_from_row(
    row: &<sqlx::Postgres as sqlx::Database>::Row,
    lists: bool,
) -> Result<crate::audit::StoredEvent, crate::store::StoreError> {
    use sqlx::Row;
    let ids_text: String = row.try_get("customer_ids")?;
    let fields_text: String = row.try_get("fields")?;
    let outcome: String = row.try_get("outcome")?;
    let status: i32 = row.try_get("status")?;
    let event = crate::audit::AuditEvent {
        time: row.try_get("time")?,
        request_id: row.try_get("request_id")?,
        principal: row.try_get("principal")?,
        grant_id: row.try_get("grant_id")?,
        action: row.try_get("action")?,
        // Lenient here: verification hashes the stored texts, whatever they hold.
        customer_ids: if lists { serde_json::from_str(&ids_text).unwrap_or_default() } else { Vec::new() },
        fields: if lists { serde_json::from_str(&fields_text).unwrap_or_default() } else { Vec::new() },
        purpose: row.try_get("purpose")?,
        justification: row.try_get("justification")?,
        query: row.try_get("query")?,
        outcome: crate::audit::Outcome::parse(&outcome).unwrap_or(crate::audit::Outcome::Failed),
        status: u16::try_from(status).unwrap_or(0),
        client: row.try_get("client")?,
        user_agent: row.try_get("user_agent")?,
        proxy: row.try_get("proxy")?,
        actor_region: row.try_get("actor_region")?,
        subject_region: row.try_get("subject_region")?,
        undisclosed: row.try_get("undisclosed_ids")?,
        idempotency: None,
    };
    Ok(crate::audit::StoredEvent {
        seq: row.try_get("seq")?,
        event,
        customer_ids_text: ids_text,
        fields_text,
        chain_hash: row.try_get("chain_hash")?,
    })
}

const GRANT_COLUMNS: &str =
    "id, principal, role, region, granted_by, parent_id, created_at, expires_at, revoked_at, revoked_by, duty";
const ALERT_COLUMNS: &str =
    "id, kind, principal, region, raised_at, distinct_customers, window_seconds, cleared_at, cleared_by";
const BUMP_EPOCH: &str = "UPDATE authz_epoch SET value = value + 1 WHERE id = 1";

#[async_trait::async_trait]
impl crate::store::Store for PgStore {
    fn backend(&self) -> Backend {
        Backend::Postgres
    }

    fn pool_stats(&self) -> Option<super::PoolStats> {
        let (size, idle) = (self.read.size(), self.read.num_idle() as u32);
        Some(super::PoolStats { busy: size.saturating_sub(idle), idle, max: self.read.options().get_max_connections() })
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
        let mut tx = self.write.begin().await.map_err(crate::store::StoreError::Unavailable)?;
        insert_records_in(&mut tx, records).await?;
        if !events.is_empty() {
            append_events_in(&mut tx, events).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), crate::store::StoreError> {
        let mut conn = self.read.acquire().await.map_err(crate::store::StoreError::Unavailable)?;
        sqlx::query("SELECT 1").execute(&mut *conn).await?;
        Ok(())
    }

    async fn search_customers(
        &self,
        q: &crate::store::CustomerQuery,
    ) -> Result<Vec<uuid::Uuid>, crate::store::StoreError> {
        use sqlx::Row;
        let mut conn = self.read.acquire().await.map_err(crate::store::StoreError::Unavailable)?;
        let mut qb = sqlx::QueryBuilder::<sqlx::Postgres>::new("SELECT c.id FROM customers c WHERE 1 = 1");
        for (field, digests) in &q.matches {
            qb.push(" AND c.id IN (SELECT customer_id FROM blind_index WHERE field = ");
            qb.push_bind(field.as_str());
            qb.push(" AND (");
            for (i, (version, digest)) in digests.iter().enumerate() {
                if i > 0 {
                    qb.push(" OR ");
                }
                qb.push("(key_version = ");
                qb.push_bind(*version);
                qb.push(" AND digest = ");
                qb.push_bind(digest.as_slice());
                qb.push(")");
            }
            qb.push("))");
        }
        crate::store::push_scope_filter(&mut qb, "c.region", &q.scopes);
        if let Some(region) = &q.region {
            crate::store::push_scope_filter(&mut qb, "c.region", std::slice::from_ref(region));
        }
        if let Some(kind) = q.kind {
            qb.push(" AND c.kind = ");
            qb.push_bind(kind.as_str());
        }
        if let Some(status) = q.status {
            qb.push(" AND c.status = ");
            qb.push_bind(status.as_str());
        }
        if let Some(after) = q.after {
            qb.push(" AND c.id > ");
            qb.push_bind(after);
        }
        qb.push(" ORDER BY c.id LIMIT ");
        qb.push_bind(i64::from(q.limit));
        let rows = qb.build().fetch_all(&mut *conn).await?;
        Ok(rows.iter().map(|r| r.try_get(0)).collect::<Result<Vec<_>, _>>()?)
    }

    async fn update_customer(
        &self,
        u: &crate::store::CustomerUpdate,
        audit: &crate::audit::AuditEvent,
    ) -> Result<crate::store::UpdateOutcome, crate::store::StoreError> {
        let mut tx = self.write.begin().await.map_err(crate::store::StoreError::Unavailable)?;
        let updated = sqlx::query(
            "UPDATE customers SET version = $1, vip_level = $2, updated_at = $3 WHERE id = $4 AND version = $5",
        )
        .bind(u.version)
        .bind(u.vip_level)
        .bind(u.updated_at)
        .bind(u.id)
        .bind(u.expected_version)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated == 0 {
            let exists = sqlx::query("SELECT 1 FROM customers WHERE id = $1")
                .bind(u.id)
                .fetch_optional(&mut *tx)
                .await?
                .is_some();
            tx.rollback().await?;
            return Ok(if exists {
                crate::store::UpdateOutcome::VersionConflict
            } else {
                crate::store::UpdateOutcome::NotFound
            });
        }
        sqlx::query("DELETE FROM customer_fields WHERE customer_id = $1").bind(u.id).execute(&mut *tx).await?;
        for f in &u.fields {
            sqlx::query("INSERT INTO customer_fields (customer_id, field, sealed) VALUES ($1, $2, $3)")
                .bind(u.id)
                .bind(&f.name)
                .bind(&f.sealed)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("DELETE FROM blind_index WHERE customer_id = $1").bind(u.id).execute(&mut *tx).await?;
        insert_index_in(&mut tx, u.id, &u.index).await?;
        append_events_in(&mut tx, std::slice::from_ref(audit)).await?;
        tx.commit().await?;
        Ok(crate::store::UpdateOutcome::Updated)
    }

    async fn authz_epoch(&self) -> Result<i64, crate::store::StoreError> {
        use sqlx::Row;
        let mut conn = self.read.acquire().await.map_err(crate::store::StoreError::Unavailable)?;
        Ok(sqlx::query("SELECT value FROM authz_epoch WHERE id = 1").fetch_one(&mut *conn).await?.try_get(0)?)
    }

    async fn authz_state(&self) -> Result<crate::store::AuthzState, crate::store::StoreError> {
        use sqlx::Row;
        let mut conn = self.read.acquire().await.map_err(crate::store::StoreError::Unavailable)?;
        // The epoch is read first: a change committed meanwhile shows up as a newer epoch at
        // the next poll, so the state is never considered fresher than it is.
        let epoch: i64 =
            sqlx::query("SELECT value FROM authz_epoch WHERE id = 1").fetch_one(&mut *conn).await?.try_get(0)?;
        let grants = sqlx::query_as::<_, crate::store::GrantRecord>(&format!("SELECT {GRANT_COLUMNS} FROM grants"))
            .fetch_all(&mut *conn)
            .await?;
        let token_revocations = sqlx::query("SELECT principal, not_before FROM token_revocations")
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        let blocked = sqlx::query("SELECT DISTINCT principal FROM audit_alerts WHERE cleared_at IS NULL")
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<Vec<String>, sqlx::Error>>()?;
        let clears = sqlx::query(
            "SELECT principal, CAST(count(*) AS BIGINT) FROM audit_alerts WHERE cleared_at IS NOT NULL GROUP BY principal",
        )
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect::<Result<Vec<(String, i64)>, sqlx::Error>>()?;
        Ok(crate::store::AuthzState { epoch, grants, token_revocations, blocked, clears })
    }

    async fn grant(&self, id: uuid::Uuid) -> Result<Option<crate::store::GrantRecord>, crate::store::StoreError> {
        let mut conn = self.read.acquire().await.map_err(crate::store::StoreError::Unavailable)?;
        Ok(sqlx::query_as::<_, crate::store::GrantRecord>(&format!("SELECT {GRANT_COLUMNS} FROM grants WHERE id = $1"))
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?)
    }

    async fn insert_grant(
        &self,
        g: &crate::store::GrantRecord,
        audit: &crate::audit::AuditEvent,
    ) -> Result<(), crate::store::StoreError> {
        let mut tx = self.write.begin().await.map_err(crate::store::StoreError::Unavailable)?;
        match insert_grant_in(&mut tx, g).await {
            Ok(()) => {}
            Err(e) if duty_conflict(&e) => return Err(crate::store::StoreError::SeparationOfDuties),
            Err(e) => return Err(e.into()),
        }
        append_events_in(&mut tx, std::slice::from_ref(audit)).await?;
        sqlx::query(BUMP_EPOCH).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn insert_bootstrap_grant(
        &self,
        g: &crate::store::GrantRecord,
        audit: &crate::audit::AuditEvent,
    ) -> Result<crate::store::BootstrapOutcome, crate::store::StoreError> {
        let mut tx = self.write.begin().await.map_err(crate::store::StoreError::Unavailable)?;
        // Take the epoch row's lock before reading, so that concurrent bootstraps (other
        // instances) queue instead of deciding on a stale read.
        sqlx::query("UPDATE authz_epoch SET value = value WHERE id = 1").execute(&mut *tx).await?;
        let existing = sqlx::query("SELECT 1 FROM grants WHERE parent_id IS NULL AND revoked_at IS NULL AND role = $1")
            .bind(&g.role)
            .fetch_optional(&mut *tx)
            .await?;
        if existing.is_some() {
            return Ok(crate::store::BootstrapOutcome::AlreadyBootstrapped);
        }
        match insert_grant_in(&mut tx, g).await {
            Ok(()) => {}
            // A concurrent bootstrap won the race (unique index on live root grants).
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                return Ok(crate::store::BootstrapOutcome::AlreadyBootstrapped)
            }
            Err(e) if duty_conflict(&e) => return Err(crate::store::StoreError::SeparationOfDuties),
            Err(e) => return Err(e.into()),
        }
        append_events_in(&mut tx, std::slice::from_ref(audit)).await?;
        sqlx::query(BUMP_EPOCH).execute(&mut *tx).await?;
        match tx.commit().await {
            Ok(()) => Ok(crate::store::BootstrapOutcome::Created),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                Ok(crate::store::BootstrapOutcome::AlreadyBootstrapped)
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn revoke_grant(
        &self,
        id: uuid::Uuid,
        by: &str,
        at: chrono::DateTime<chrono::Utc>,
        audit: &crate::audit::AuditEvent,
    ) -> Result<bool, crate::store::StoreError> {
        let mut tx = self.write.begin().await.map_err(crate::store::StoreError::Unavailable)?;
        let n = sqlx::query("UPDATE grants SET revoked_at = $1, revoked_by = $2 WHERE id = $3 AND revoked_at IS NULL")
            .bind(at)
            .bind(by)
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        append_events_in(&mut tx, std::slice::from_ref(audit)).await?;
        sqlx::query(BUMP_EPOCH).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(n > 0)
    }

    async fn grants_page(
        &self,
        q: &crate::store::GrantQuery,
    ) -> Result<Vec<crate::store::GrantRecord>, crate::store::StoreError> {
        let mut conn = self.read.acquire().await.map_err(crate::store::StoreError::Unavailable)?;
        let mut qb =
            sqlx::QueryBuilder::<sqlx::Postgres>::new(format!("SELECT {GRANT_COLUMNS} FROM grants WHERE 1 = 1"));
        crate::store::push_scope_filter(&mut qb, "region", &q.scopes);
        if let Some(p) = &q.principal {
            qb.push(" AND principal = ");
            qb.push_bind(p.as_str());
        }
        if let Some(after) = q.after {
            qb.push(" AND id > ");
            qb.push_bind(after);
        }
        qb.push(" ORDER BY id LIMIT ");
        qb.push_bind(i64::from(q.limit));
        Ok(qb.build_query_as::<crate::store::GrantRecord>().fetch_all(&mut *conn).await?)
    }

    async fn revoke_tokens(
        &self,
        principal: &str,
        not_before: chrono::DateTime<chrono::Utc>,
        audit: &crate::audit::AuditEvent,
    ) -> Result<(), crate::store::StoreError> {
        let mut tx = self.write.begin().await.map_err(crate::store::StoreError::Unavailable)?;
        sqlx::query(
            "INSERT INTO token_revocations (principal, not_before) VALUES ($1, $2) \
             ON CONFLICT (principal) DO UPDATE SET not_before = excluded.not_before",
        )
        .bind(principal)
        .bind(not_before)
        .execute(&mut *tx)
        .await?;
        append_events_in(&mut tx, std::slice::from_ref(audit)).await?;
        sqlx::query(BUMP_EPOCH).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn append_audit(
        &self,
        batch: std::sync::Arc<crate::store::AuditBatch>,
    ) -> Result<crate::store::AuditHead, crate::store::StoreError> {
        let mut tx = self.write.begin().await.map_err(StoreError::Unavailable)?;
        insert_records_in(&mut tx, &batch.records).await?;
        let head = append_events_in(&mut tx, &batch.events).await?;
        tx.commit().await?;
        Ok(head)
    }

    async fn audit_head(&self) -> Result<crate::store::AuditHead, crate::store::StoreError> {
        use sqlx::Row;
        let mut conn = self.read.acquire().await.map_err(crate::store::StoreError::Unavailable)?;
        let row = sqlx::query("SELECT seq, chain_hash FROM audit_head WHERE id = 1").fetch_one(&mut *conn).await?;
        Ok(crate::store::AuditHead { seq: row.try_get(0)?, chain_hash: row.try_get(1)? })
    }

    async fn insert_checkpoint(&self, cp: &crate::audit::Checkpoint) -> Result<(), crate::store::StoreError> {
        let mut conn = self.write.acquire().await.map_err(crate::store::StoreError::Unavailable)?;
        sqlx::query(
            "INSERT INTO audit_checkpoints (seq, chain_hash, time, key_id, signature) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (seq) DO NOTHING",
        )
        .bind(cp.seq)
        .bind(&cp.chain_hash)
        .bind(cp.time)
        .bind(&cp.key_id)
        .bind(&cp.signature)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    async fn checkpoints(&self) -> Result<Vec<crate::audit::Checkpoint>, crate::store::StoreError> {
        let mut conn = self.read.acquire().await.map_err(crate::store::StoreError::Unavailable)?;
        let rows = sqlx::query(&format!("{CHECKPOINT_SELECT} ORDER BY seq")).fetch_all(&mut *conn).await?;
        Ok(rows.iter().map(checkpoint_from).collect::<Result<Vec<_>, sqlx::Error>>()?)
    }

    async fn latest_checkpoint(&self) -> Result<Option<crate::audit::Checkpoint>, crate::store::StoreError> {
        let mut conn = self.read.acquire().await.map_err(crate::store::StoreError::Unavailable)?;
        let row =
            sqlx::query(&format!("{CHECKPOINT_SELECT} ORDER BY seq DESC LIMIT 1")).fetch_optional(&mut *conn).await?;
        Ok(row.as_ref().map(checkpoint_from).transpose()?)
    }

    async fn audit_events_after(
        &self,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<crate::audit::StoredEvent>, crate::store::StoreError> {
        self.audit_page(after_seq, limit).await
    }

    async fn audit_tallies(
        &self,
        tally: &crate::store::AuditTally,
    ) -> Result<crate::store::AuditTallies, crate::store::StoreError> {
        use crate::store::{push_pieces, scope_condition, Bucket, DISCLOSURE_ACTIONS};
        let mut conn = self.read.acquire().await.map_err(crate::store::StoreError::Unavailable)?;
        let format = match tally.bucket {
            Bucket::Hour => "YYYY-MM-DD\"T\"HH24",
            Bucket::Day => "YYYY-MM-DD",
        };
        fn scoped<'a>(qb: &mut sqlx::QueryBuilder<'a, sqlx::Postgres>, scopes: &'a [crate::domain::RegionId]) {
            qb.push(" AND (");
            push_pieces(qb, scope_condition("actor_region", scopes));
            qb.push(" OR ");
            push_pieces(qb, scope_condition("subject_region", scopes));
            qb.push(")");
        }
        let mut qb = sqlx::QueryBuilder::<sqlx::Postgres>::new("SELECT to_char(time AT TIME ZONE 'UTC', ");
        qb.push_bind(format);
        qb.push(") AS b, outcome, COUNT(*) FROM audit_events WHERE time >= ");
        qb.push_bind(tally.since);
        scoped(&mut qb, &tally.scopes);
        qb.push(" GROUP BY b, outcome ORDER BY b, outcome");
        let by_bucket = qb
            .build()
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        let mut qb =
            sqlx::QueryBuilder::<sqlx::Postgres>::new("SELECT action, COUNT(*) FROM audit_events WHERE time >= ");
        qb.push_bind(tally.since);
        qb.push(" AND action = ANY(");
        qb.push_bind(DISCLOSURE_ACTIONS.iter().map(|a| a.to_string()).collect::<Vec<_>>());
        qb.push(")");
        scoped(&mut qb, &tally.scopes);
        qb.push(" GROUP BY action ORDER BY action");
        let disclosures = qb
            .build()
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        let mut qb = sqlx::QueryBuilder::<sqlx::Postgres>::new(
            "SELECT principal, COUNT(DISTINCT l.customer_id) AS n FROM audit_events \
             JOIN audit_event_customers l ON l.seq = audit_events.seq \
             WHERE principal IS NOT NULL AND outcome = 'allowed' AND time >= ",
        );
        qb.push_bind(tally.since);
        scoped(&mut qb, &tally.scopes);
        qb.push(" GROUP BY principal ORDER BY n DESC, principal LIMIT ");
        qb.push_bind(i64::from(tally.leaders));
        let leaders = qb
            .build()
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        Ok(crate::store::AuditTallies { by_bucket, disclosures, leaders })
    }

    async fn query_audit(
        &self,
        q: &crate::store::AuditQuery,
    ) -> Result<Vec<crate::audit::StoredEvent>, crate::store::StoreError> {
        let mut conn = self.read.acquire().await.map_err(crate::store::StoreError::Unavailable)?;
        let mut qb =
            sqlx::QueryBuilder::<sqlx::Postgres>::new(format!("SELECT {EVENT_COLUMNS} FROM audit_events WHERE seq > "));
        qb.push_bind(q.after_seq);
        if let Some(p) = &q.principal {
            qb.push(" AND principal = ");
            qb.push_bind(p.as_str());
        }
        if let Some(c) = q.customer {
            qb.push(" AND seq IN (SELECT seq FROM audit_event_customers WHERE customer_id = ");
            qb.push_bind(c);
            qb.push(")");
        }
        if let Some(a) = &q.action {
            qb.push(" AND action = ");
            qb.push_bind(a.as_str());
        }
        if let Some(o) = &q.outcome {
            qb.push(" AND outcome = ");
            qb.push_bind(o.as_str());
        }
        if let Some(p) = &q.purpose {
            qb.push(" AND purpose = ");
            qb.push_bind(p.as_str());
        }
        if let Some(from) = q.from {
            qb.push(" AND time >= ");
            qb.push_bind(from);
        }
        if let Some(to) = q.to {
            qb.push(" AND time < ");
            qb.push_bind(to);
        }
        if let Some(scopes) = &q.scopes {
            qb.push(" AND (");
            crate::store::push_pieces(&mut qb, crate::store::scope_condition("actor_region", scopes));
            qb.push(" OR ");
            crate::store::push_pieces(&mut qb, crate::store::scope_condition("subject_region", scopes));
            qb.push(")");
        }
        qb.push(" ORDER BY seq LIMIT ");
        qb.push_bind(i64::from(q.limit));
        let rows = qb.build().fetch_all(&mut *conn).await?;
        rows.iter().map(|r| event_from_row(r, true)).collect()
    }

    async fn insert_alert(
        &self,
        a: &crate::store::AlertRecord,
        audit: &crate::audit::AuditEvent,
    ) -> Result<(), crate::store::StoreError> {
        let mut tx = self.write.begin().await.map_err(crate::store::StoreError::Unavailable)?;
        sqlx::query(&format!("INSERT INTO audit_alerts ({ALERT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"))
            .bind(a.id)
            .bind(&a.kind)
            .bind(&a.principal)
            .bind(&a.region)
            .bind(a.raised_at)
            .bind(a.distinct_customers)
            .bind(a.window_seconds)
            .bind(a.cleared_at)
            .bind(&a.cleared_by)
            .execute(&mut *tx)
            .await?;
        append_events_in(&mut tx, std::slice::from_ref(audit)).await?;
        sqlx::query(BUMP_EPOCH).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn clear_alert(
        &self,
        id: uuid::Uuid,
        by: &str,
        at: chrono::DateTime<chrono::Utc>,
        audit: &crate::audit::AuditEvent,
    ) -> Result<bool, crate::store::StoreError> {
        let mut tx = self.write.begin().await.map_err(crate::store::StoreError::Unavailable)?;
        let n = sqlx::query(
            "UPDATE audit_alerts SET cleared_at = $1, cleared_by = $2 WHERE id = $3 AND cleared_at IS NULL",
        )
        .bind(at)
        .bind(by)
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        append_events_in(&mut tx, std::slice::from_ref(audit)).await?;
        sqlx::query(BUMP_EPOCH).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn alerts(
        &self,
        scopes: Option<&[crate::domain::RegionId]>,
        limit: u32,
    ) -> Result<Vec<crate::store::AlertRecord>, crate::store::StoreError> {
        let mut conn = self.read.acquire().await.map_err(crate::store::StoreError::Unavailable)?;
        let mut qb =
            sqlx::QueryBuilder::<sqlx::Postgres>::new(format!("SELECT {ALERT_COLUMNS} FROM audit_alerts WHERE 1 = 1"));
        if let Some(scopes) = scopes {
            crate::store::push_scope_filter(&mut qb, "region", scopes);
        }
        qb.push(" ORDER BY raised_at DESC LIMIT ");
        qb.push_bind(i64::from(limit));
        Ok(qb.build_query_as::<crate::store::AlertRecord>().fetch_all(&mut *conn).await?)
    }

    async fn alert(&self, id: uuid::Uuid) -> Result<Option<crate::store::AlertRecord>, crate::store::StoreError> {
        let mut conn = self.read.acquire().await.map_err(crate::store::StoreError::Unavailable)?;
        Ok(sqlx::query_as::<_, crate::store::AlertRecord>(&format!(
            "SELECT {ALERT_COLUMNS} FROM audit_alerts WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?)
    }

    async fn audit_links(
        &self,
        from_seq: i64,
        to_seq: i64,
    ) -> Result<Vec<crate::store::AuditLinks>, crate::store::StoreError> {
        use sqlx::Row;
        let mut conn = self.read.acquire().await.map_err(crate::store::StoreError::Unavailable)?;
        let rows = sqlx::query("SELECT seq, customer_id FROM audit_event_customers WHERE seq >= $1 AND seq <= $2 ORDER BY seq, customer_id")
            .bind(from_seq)
            .bind(to_seq)
            .fetch_all(&mut *conn)
            .await?;
        let links = rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect::<Result<Vec<_>, sqlx::Error>>()?;
        // One copy, written with the events: complete for every event.
        Ok(vec![crate::store::AuditLinks { copy: "access-log links", through: i64::MAX, links }])
    }

    async fn charge_budget(
        &self,
        principal: &str,
        budget: &str,
        bucket: i64,
        after_bucket: i64,
        amount: i64,
    ) -> Result<i64, crate::store::StoreError> {
        use sqlx::Row;
        let mut tx = self.write.begin().await.map_err(crate::store::StoreError::Unavailable)?;
        sqlx::query(
            "INSERT INTO budget_usage (principal, budget, bucket, used) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (principal, budget, bucket) DO UPDATE SET used = budget_usage.used + excluded.used",
        )
        .bind(principal)
        .bind(budget)
        .bind(bucket)
        .bind(amount)
        .execute(&mut *tx)
        .await?;
        let total: i64 = sqlx::query(
            "SELECT CAST(COALESCE(SUM(used), 0) AS BIGINT) FROM budget_usage WHERE principal = $1 AND budget = $2 AND bucket > $3",
        )
        .bind(principal)
        .bind(budget)
        .bind(after_bucket)
        .fetch_one(&mut *tx)
        .await?
        .try_get(0)?;
        tx.commit().await?;
        Ok(total)
    }

    async fn prune_budgets(&self, before_bucket: i64) -> Result<(), crate::store::StoreError> {
        let mut conn = self.write.acquire().await.map_err(crate::store::StoreError::Unavailable)?;
        sqlx::query("DELETE FROM budget_usage WHERE bucket < $1").bind(before_bucket).execute(&mut *conn).await?;
        // Counts of instances gone for as long (their rows are no longer read anyway).
        sqlx::query("DELETE FROM guard_counts WHERE updated_at < $1")
            .bind(before_bucket.saturating_mul(60))
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    async fn publish_guard_counts(
        &self,
        instance: &str,
        counts: &[(String, i64)],
        now: i64,
    ) -> Result<(), crate::store::StoreError> {
        if counts.is_empty() {
            return Ok(());
        }
        let mut tx = self.write.begin().await.map_err(crate::store::StoreError::Unavailable)?;
        for (principal, n) in counts {
            if *n == 0 {
                sqlx::query("DELETE FROM guard_counts WHERE instance = $1 AND principal = $2")
                    .bind(instance)
                    .bind(principal)
                    .execute(&mut *tx)
                    .await?;
                continue;
            }
            sqlx::query(
                "INSERT INTO guard_counts (instance, principal, customers, updated_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (instance, principal) DO UPDATE SET customers = excluded.customers, updated_at = excluded.updated_at",
            )
            .bind(instance)
            .bind(principal)
            .bind(*n)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn clear_guard_counts(&self, principal: &str) -> Result<(), crate::store::StoreError> {
        let mut conn = self.write.acquire().await.map_err(crate::store::StoreError::Unavailable)?;
        sqlx::query("DELETE FROM guard_counts WHERE principal = $1").bind(principal).execute(&mut *conn).await?;
        Ok(())
    }

    async fn guard_counts_elsewhere(
        &self,
        instance: &str,
        since: i64,
    ) -> Result<Vec<(String, i64)>, crate::store::StoreError> {
        use sqlx::Row;
        let mut conn = self.read.acquire().await.map_err(crate::store::StoreError::Unavailable)?;
        let rows = sqlx::query(
            "SELECT principal, CAST(SUM(customers) AS BIGINT) FROM guard_counts WHERE instance <> $1 AND updated_at >= $2 GROUP BY principal",
        )
        .bind(instance)
        .bind(since)
        .fetch_all(&mut *conn)
        .await?;
        Ok(rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect::<Result<Vec<_>, sqlx::Error>>()?)
    }

    async fn kek_usage(&self) -> Result<Vec<(u32, i64)>, crate::store::StoreError> {
        use sqlx::Row;
        let mut conn = self.read.acquire().await.map_err(crate::store::StoreError::Unavailable)?;
        let rows = sqlx::query("SELECT kek_version, count(*) FROM customers GROUP BY kek_version ORDER BY kek_version")
            .fetch_all(&mut *conn)
            .await?;
        rows.iter().map(|r| Ok((crate::store::kek_version(r.try_get(0)?)?, r.try_get::<i64, _>(1)?))).collect()
    }

    async fn wrapped_below(
        &self,
        active: u32,
        limit: u32,
    ) -> Result<Vec<(uuid::Uuid, crate::crypto::WrappedKey)>, crate::store::StoreError> {
        use sqlx::Row;
        let mut conn = self.read.acquire().await.map_err(crate::store::StoreError::Unavailable)?;
        let rows = sqlx::query(
            "SELECT id, kek_version, wrapped_key FROM customers WHERE kek_version < $1 ORDER BY kek_version, id LIMIT $2",
        )
        .bind(i64::from(active))
        .bind(i64::from(limit))
        .fetch_all(&mut *conn)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get(0)?,
                    crate::crypto::WrappedKey {
                        kek_version: crate::store::kek_version(r.try_get(1)?)?,
                        bytes: r.try_get(2)?,
                    },
                ))
            })
            .collect()
    }

    async fn replace_wrapped_key(
        &self,
        id: uuid::Uuid,
        from_version: u32,
        key: &crate::crypto::WrappedKey,
    ) -> Result<bool, crate::store::StoreError> {
        let mut conn = self.write.acquire().await.map_err(crate::store::StoreError::Unavailable)?;
        let n =
            sqlx::query("UPDATE customers SET kek_version = $1, wrapped_key = $2 WHERE id = $3 AND kek_version = $4")
                .bind(i64::from(key.kek_version))
                .bind(&key.bytes)
                .bind(id)
                .bind(i64::from(from_version))
                .execute(&mut *conn)
                .await?
                .rows_affected();
        Ok(n > 0)
    }

    async fn erase_customer(
        &self,
        t: &crate::store::Tombstone,
        audit: &crate::audit::AuditEvent,
    ) -> Result<bool, crate::store::StoreError> {
        let mut tx = self.write.begin().await.map_err(crate::store::StoreError::Unavailable)?;
        sqlx::query("DELETE FROM blind_index WHERE customer_id = $1").bind(t.id).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM customer_fields WHERE customer_id = $1").bind(t.id).execute(&mut *tx).await?;
        let n = sqlx::query("DELETE FROM customers WHERE id = $1").bind(t.id).execute(&mut *tx).await?.rows_affected();
        if n == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO customer_tombstones (id, region, erased_at, erased_by, reason) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(t.id)
        .bind(&t.region)
        .bind(t.erased_at)
        .bind(&t.erased_by)
        .bind(&t.reason)
        .execute(&mut *tx)
        .await?;
        append_events_in(&mut tx, std::slice::from_ref(audit)).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn tombstone(&self, id: uuid::Uuid) -> Result<Option<crate::store::Tombstone>, crate::store::StoreError> {
        let mut conn = self.read.acquire().await.map_err(crate::store::StoreError::Unavailable)?;
        Ok(sqlx::query_as::<_, crate::store::Tombstone>(
            "SELECT id, region, erased_at, erased_by, reason FROM customer_tombstones WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?)
    }

    async fn set_status(
        &self,
        id: uuid::Uuid,
        status: crate::domain::CustomerStatus,
        audit: &crate::audit::AuditEvent,
    ) -> Result<bool, crate::store::StoreError> {
        let mut tx = self.write.begin().await.map_err(crate::store::StoreError::Unavailable)?;
        let n = sqlx::query("UPDATE customers SET status = $1, updated_at = $2 WHERE id = $3")
            .bind(status.as_str())
            .bind(chrono::Utc::now())
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        append_events_in(&mut tx, std::slice::from_ref(audit)).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn idempotency(
        &self,
        principal: &str,
        key: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<crate::store::IdempotencyRecord>, StoreError> {
        let mut conn = self.read.acquire().await.map_err(StoreError::Unavailable)?;
        let row = sqlx::query(
            "SELECT principal, key, fingerprint, outcome, created_at, expires_at FROM idempotency_keys \
             WHERE principal = $1 AND key = $2 AND expires_at > $3",
        )
        .bind(principal)
        .bind(key)
        .bind(now)
        .fetch_optional(&mut *conn)
        .await?;
        let Some(r) = row else { return Ok(None) };
        Ok(Some(crate::store::IdempotencyRecord {
            principal: r.try_get(0)?,
            key: r.try_get(1)?,
            fingerprint: r.try_get(2)?,
            outcome: r.try_get(3)?,
            created_at: r.try_get(4)?,
            expires_at: r.try_get(5)?,
        }))
    }

    async fn prune_idempotency(&self, now: chrono::DateTime<chrono::Utc>) -> Result<u64, StoreError> {
        let mut conn = self.write.acquire().await.map_err(StoreError::Unavailable)?;
        let done =
            sqlx::query("DELETE FROM idempotency_keys WHERE expires_at <= $1").bind(now).execute(&mut *conn).await?;
        Ok(done.rows_affected())
    }

    async fn past_retention(
        &self,
        kind: crate::domain::CustomerKind,
        status: crate::domain::CustomerStatus,
        before: chrono::DateTime<chrono::Utc>,
        limit: u32,
    ) -> Result<Vec<(uuid::Uuid, String)>, crate::store::StoreError> {
        use sqlx::Row;
        let mut conn = self.read.acquire().await.map_err(crate::store::StoreError::Unavailable)?;
        let rows = sqlx::query(
            "SELECT id, region FROM customers WHERE kind = $1 AND status = $2 AND updated_at < $3 ORDER BY id LIMIT $4",
        )
        .bind(kind.as_str())
        .bind(status.as_str())
        .bind(before)
        .bind(i64::from(limit))
        .fetch_all(&mut *conn)
        .await?;
        Ok(rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect::<Result<Vec<_>, sqlx::Error>>()?)
    }

    async fn index_stale(&self, current: i32, limit: u32) -> Result<Vec<uuid::Uuid>, crate::store::StoreError> {
        use sqlx::Row;
        let mut conn = self.read.acquire().await.map_err(crate::store::StoreError::Unavailable)?;
        let rows = sqlx::query(
            "SELECT DISTINCT customer_id FROM blind_index WHERE key_version = (SELECT min(key_version) FROM blind_index WHERE key_version < $1) ORDER BY customer_id LIMIT $2",
        )
        .bind(current)
        .bind(i64::from(limit))
        .fetch_all(&mut *conn)
        .await?;
        Ok(rows.iter().map(|r| r.try_get(0)).collect::<Result<Vec<_>, _>>()?)
    }

    async fn index_stale_count(&self, current: i32) -> Result<i64, crate::store::StoreError> {
        use sqlx::Row;
        let mut conn = self.read.acquire().await.map_err(crate::store::StoreError::Unavailable)?;
        Ok(sqlx::query("SELECT count(DISTINCT customer_id) FROM blind_index WHERE key_version < $1")
            .bind(current)
            .fetch_one(&mut *conn)
            .await?
            .try_get(0)?)
    }

    async fn replace_index(
        &self,
        id: uuid::Uuid,
        version: i64,
        entries: &[crate::store::IndexEntry],
    ) -> Result<bool, crate::store::StoreError> {
        let mut tx = self.write.begin().await.map_err(crate::store::StoreError::Unavailable)?;
        // Takes the record's row lock before deciding: an update
        // committing in between leaves its own entries untouched.
        let current = sqlx::query("UPDATE customers SET version = version WHERE id = $1 AND version = $2")
            .bind(id)
            .bind(version)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if current == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        sqlx::query("DELETE FROM blind_index WHERE customer_id = $1").bind(id).execute(&mut *tx).await?;
        insert_index_in(&mut tx, id, entries).await?;
        tx.commit().await?;
        Ok(true)
    }
}

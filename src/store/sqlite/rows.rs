//! How values are stored in SQLite and read back: UUIDs as 16-byte BLOBs, timestamps as
//! RFC 3339 text with `+00:00` and as many fractional digits as needed (the encoding sqlx used
//! when it wrote this store, so older files read back alike and text comparisons in SQL see one
//! format), and the rows of each table as the store's types.
//!
//! Owns: encoding and decoding. Must never: run a statement.

use chrono::{DateTime, Utc};
use rusqlite::types::Value;
use rusqlite::Row;
use uuid::Uuid;

use crate::audit::{AuditEvent, Outcome, StoredEvent};
use crate::store::{AlertRecord, GrantRecord, SqlPiece, StoreError, Tombstone};

pub(super) fn time_text(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false)
}

pub(super) fn uuid_value(id: &Uuid) -> Value {
    Value::Blob(id.as_bytes().to_vec())
}

pub(super) fn time_value(t: &DateTime<Utc>) -> Value {
    Value::Text(time_text(t))
}

pub(super) fn opt_time_value(t: &Option<DateTime<Utc>>) -> Value {
    t.as_ref().map_or(Value::Null, time_value)
}

pub(super) fn opt_uuid_value(id: &Option<Uuid>) -> Value {
    id.as_ref().map_or(Value::Null, uuid_value)
}

/// A UUID stored as a 16-byte BLOB (or NULL).
pub(super) fn uuid_at(row: &Row<'_>, idx: usize, bad: &'static str) -> Result<Option<Uuid>, StoreError> {
    match row.get_ref(idx)?.as_blob_or_null() {
        Ok(Some(b)) => Uuid::from_slice(b).map(Some).map_err(|_| StoreError::Corrupt(bad)),
        Ok(None) => Ok(None),
        Err(_) => Err(StoreError::Corrupt(bad)),
    }
}

pub(super) fn id_at(row: &Row<'_>, idx: usize) -> Result<Uuid, StoreError> {
    uuid_at(row, idx, "malformed id")?.ok_or(StoreError::Corrupt("missing id"))
}

/// A timestamp stored as RFC 3339 text (or NULL).
pub(super) fn opt_time_at(row: &Row<'_>, idx: usize) -> Result<Option<DateTime<Utc>>, StoreError> {
    let value = row.get_ref(idx)?;
    if matches!(value, rusqlite::types::ValueRef::Null) {
        return Ok(None);
    }
    let text = value.as_str().map_err(|_| StoreError::Corrupt("malformed timestamp"))?;
    DateTime::parse_from_rfc3339(text)
        .map(|t| Some(t.with_timezone(&Utc)))
        .map_err(|_| StoreError::Corrupt("malformed timestamp"))
}

pub(super) fn time_at(row: &Row<'_>, idx: usize) -> Result<DateTime<Utc>, StoreError> {
    opt_time_at(row, idx)?.ok_or(StoreError::Corrupt("missing timestamp"))
}

pub(super) const GRANT_COLUMNS: &str =
    "id, principal, role, region, granted_by, parent_id, created_at, expires_at, revoked_at, revoked_by, duty";

pub(super) fn grant_from(row: &Row<'_>) -> Result<GrantRecord, StoreError> {
    Ok(GrantRecord {
        id: id_at(row, 0)?,
        principal: row.get(1)?,
        role: row.get(2)?,
        region: row.get(3)?,
        granted_by: row.get(4)?,
        parent_id: uuid_at(row, 5, "malformed parent grant id")?,
        created_at: time_at(row, 6)?,
        expires_at: opt_time_at(row, 7)?,
        revoked_at: opt_time_at(row, 8)?,
        revoked_by: row.get(9)?,
        duty: row.get(10)?,
    })
}

pub(super) fn grant_values(g: &GrantRecord) -> Vec<Value> {
    vec![
        uuid_value(&g.id),
        Value::Text(g.principal.clone()),
        Value::Text(g.role.clone()),
        Value::Text(g.region.clone()),
        Value::Text(g.granted_by.clone()),
        opt_uuid_value(&g.parent_id),
        time_value(&g.created_at),
        opt_time_value(&g.expires_at),
        opt_time_value(&g.revoked_at),
        g.revoked_by.clone().map_or(Value::Null, Value::Text),
        Value::Text(g.duty.clone()),
    ]
}

pub(super) const ALERT_COLUMNS: &str =
    "id, kind, principal, region, raised_at, distinct_customers, window_seconds, cleared_at, cleared_by";

pub(super) fn alert_from(row: &Row<'_>) -> Result<AlertRecord, StoreError> {
    Ok(AlertRecord {
        id: id_at(row, 0)?,
        kind: row.get(1)?,
        principal: row.get(2)?,
        region: row.get(3)?,
        raised_at: time_at(row, 4)?,
        distinct_customers: row.get(5)?,
        window_seconds: row.get(6)?,
        cleared_at: opt_time_at(row, 7)?,
        cleared_by: row.get(8)?,
    })
}

pub(super) fn tombstone_from(row: &Row<'_>) -> Result<Tombstone, StoreError> {
    Ok(Tombstone {
        id: id_at(row, 0)?,
        region: row.get(1)?,
        erased_at: time_at(row, 2)?,
        erased_by: row.get(3)?,
        reason: row.get(4)?,
    })
}

pub(super) const EVENT_COLUMNS: &str = "seq, time, request_id, principal, grant_id, action, customer_ids, fields, \
     purpose, justification, query, outcome, status, client, user_agent, chain_hash, actor_region, subject_region, \
     proxy, undisclosed_ids";

/// An event from its row; `lists` parses the customer-id and field texts (verification only
/// hashes the texts, and parsing them was most of its decoding cost).
pub(super) fn event_from(row: &Row<'_>, lists: bool) -> Result<StoredEvent, StoreError> {
    let ids_text: String = row.get(6)?;
    let fields_text: String = row.get(7)?;
    let outcome: String = row.get(11)?;
    let status: i64 = row.get(12)?;
    Ok(StoredEvent {
        seq: row.get(0)?,
        event: AuditEvent {
            time: time_at(row, 1)?,
            request_id: row.get(2)?,
            principal: row.get(3)?,
            grant_id: uuid_at(row, 4, "malformed grant id")?,
            action: row.get(5)?,
            // Lenient here: verification hashes the stored texts, whatever they hold.
            customer_ids: if lists { serde_json::from_str(&ids_text).unwrap_or_default() } else { Vec::new() },
            fields: if lists { serde_json::from_str(&fields_text).unwrap_or_default() } else { Vec::new() },
            purpose: row.get(8)?,
            justification: row.get(9)?,
            query: row.get(10)?,
            outcome: Outcome::parse(&outcome).unwrap_or(Outcome::Failed),
            status: u16::try_from(status).unwrap_or(0),
            client: row.get(13)?,
            user_agent: row.get(14)?,
            actor_region: row.get(16)?,
            subject_region: row.get(17)?,
            proxy: row.get(18)?,
            undisclosed: row.get(19)?,
            idempotency: None,
        },
        customer_ids_text: ids_text,
        fields_text,
        chain_hash: row.get(15)?,
    })
}

/// A statement assembled with its parameters (`?` placeholders, in order).
#[derive(Default)]
pub(super) struct Query {
    pub sql: String,
    pub params: Vec<Value>,
}

impl Query {
    pub(super) fn new(sql: &str) -> Self {
        Query { sql: sql.to_owned(), params: Vec::new() }
    }

    pub(super) fn push(&mut self, sql: &str) -> &mut Self {
        self.sql.push_str(sql);
        self
    }

    pub(super) fn bind(&mut self, value: impl Into<Value>) -> &mut Self {
        self.sql.push('?');
        self.params.push(value.into());
        self
    }

    pub(super) fn pieces(&mut self, pieces: Vec<SqlPiece<'_>>) -> &mut Self {
        for piece in pieces {
            match piece {
                SqlPiece::Text(t) => self.sql.push_str(&t),
                SqlPiece::Bind(v) => {
                    self.bind(v.to_owned());
                }
            }
        }
        self
    }

    /// Every row, mapped by `f`.
    pub(super) fn all<T>(
        &self,
        c: &rusqlite::Connection,
        mut f: impl FnMut(&Row<'_>) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        let mut stmt = c.prepare_cached(&self.sql)?;
        let mut rows = stmt.query(rusqlite::params_from_iter(self.params.iter()))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            out.push(f(row)?);
        }
        Ok(out)
    }
}

/// Every row of a statement with fixed parameters, mapped by `f`.
pub(super) fn all<T>(
    c: &rusqlite::Connection,
    sql: &str,
    params: impl rusqlite::Params,
    mut f: impl FnMut(&Row<'_>) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    let mut stmt = c.prepare_cached(sql)?;
    let mut rows = stmt.query(params)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(f(row)?);
    }
    Ok(out)
}

/// The first row of a statement, if any, mapped by `f`.
pub(super) fn first<T>(
    c: &rusqlite::Connection,
    sql: &str,
    params: impl rusqlite::Params,
    f: impl FnOnce(&Row<'_>) -> Result<T, StoreError>,
) -> Result<Option<T>, StoreError> {
    let mut stmt = c.prepare_cached(sql)?;
    let mut rows = stmt.query(params)?;
    match rows.next()? {
        Some(row) => Ok(Some(f(row)?)),
        None => Ok(None),
    }
}

//! The audit event and its canonical encoding.
//!
//! An event records who did what to which customers, how (fields and views), why (purpose,
//! justification), with what result, and from where. It never holds PII: customers are ids,
//! fields are names, search terms are blind-index digests.

use chrono::{DateTime, SubsecRound, Utc};
use serde::Serialize;
use uuid::Uuid;

/// How a request ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    #[default]
    Allowed,
    Denied,
    NotFound,
    Invalid,
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Denied => "denied",
            Outcome::NotFound => "not_found",
            Outcome::Invalid => "invalid",
            Outcome::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Outcome> {
        [Outcome::Allowed, Outcome::Denied, Outcome::NotFound, Outcome::Invalid, Outcome::Failed]
            .into_iter()
            .find(|o| o.as_str() == s)
    }

    /// The outcome an HTTP status stands for.
    pub fn from_status(status: u16) -> Outcome {
        match status {
            200..=399 => Outcome::Allowed,
            401 | 403 | 429 => Outcome::Denied,
            404 => Outcome::NotFound,
            400..=499 => Outcome::Invalid,
            _ => Outcome::Failed,
        }
    }
}

/// One audit event, before it has a place in the chain.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditEvent {
    /// Truncated to microseconds (what both databases keep).
    pub time: DateTime<Utc>,
    pub request_id: String,
    pub principal: Option<String>,
    /// The grant that allowed the request.
    pub grant_id: Option<Uuid>,
    pub action: String,
    pub customer_ids: Vec<Uuid>,
    /// (field, view) pairs disclosed.
    pub fields: Vec<(String, String)>,
    pub purpose: Option<String>,
    pub justification: Option<String>,
    /// Search terms as blind-index digests and filters, canonical JSON.
    pub query: Option<String>,
    pub outcome: Outcome,
    pub status: u16,
    /// The client's address: the peer, or the address a trusted proxy forwarded.
    pub client: Option<String>,
    pub user_agent: Option<String>,
    /// The trusted proxy the request came through (the peer), when `client` was forwarded.
    pub proxy: Option<String>,
    /// The region of the acting principal: the smallest node containing its live grants.
    pub actor_region: Option<String>,
    /// The region of what the request concerned: the smallest node containing the customers
    /// disclosed or changed, or the grant or alert acted on.
    pub subject_region: Option<String>,
    /// Ids asked for but not disclosed (missing, out of scope or restricted), as a canonical
    /// JSON array; `None` when every id asked for was disclosed.
    pub undisclosed: Option<String>,
    /// Not part of the event or its chain: the idempotency key and first outcome of the write
    /// this event records, committed in the same transaction as the write and the event.
    pub idempotency: Option<Box<crate::store::IdempotencyRecord>>,
}

impl AuditEvent {
    /// A new event at the current time.
    pub fn now(request_id: String, action: &str) -> Self {
        AuditEvent {
            time: Utc::now().trunc_subsecs(6),
            request_id,
            principal: None,
            grant_id: None,
            action: action.to_owned(),
            customer_ids: Vec::new(),
            fields: Vec::new(),
            purpose: None,
            justification: None,
            query: None,
            outcome: Outcome::Allowed,
            status: 200,
            client: None,
            user_agent: None,
            proxy: None,
            actor_region: None,
            subject_region: None,
            undisclosed: None,
            idempotency: None,
        }
    }

    /// The customer ids as stored (a JSON array, canonical).
    pub fn customer_ids_text(&self) -> String {
        serde_json::to_string(&self.customer_ids).unwrap_or_else(|_| "[]".into())
    }

    /// The fields as stored (a JSON array of [field, view], canonical).
    pub fn fields_text(&self) -> String {
        serde_json::to_string(&self.fields).unwrap_or_else(|_| "[]".into())
    }
}

/// The canonical time format of events and checkpoints: `%Y-%m-%dT%H:%M:%S%.6fZ`, written
/// directly (chrono's formatter interprets its pattern on every call, and this runs for every
/// event written and verified).
pub fn time_text(t: &DateTime<Utc>) -> String {
    use chrono::{Datelike, Timelike};
    let nanos = t.nanosecond();
    if !(0..=9999).contains(&t.year()) || nanos >= 1_000_000_000 {
        return t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
    }
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year(),
        t.month(),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        nanos / 1000
    )
}

#[cfg(test)]
mod time_tests {
    use chrono::{TimeZone, Utc};

    #[test]
    fn time_text_is_chronos_format() {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..2000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let secs = (state % 253_402_300_799) as i64; // up to 9999-12-31
            let t = Utc.timestamp_opt(secs, (state >> 34) as u32 % 1_000_000_000).unwrap();
            assert_eq!(super::time_text(&t), t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string());
        }
        let t = Utc.timestamp_opt(0, 0).unwrap();
        assert_eq!(super::time_text(&t), "1970-01-01T00:00:00.000000Z");
    }
}

/// An event as stored: its place in the chain and the chain head after it.
#[derive(Clone, Debug)]
pub struct StoredEvent {
    pub seq: i64,
    pub event: AuditEvent,
    /// The stored texts the hash covers (kept verbatim so verification hashes what is stored).
    pub customer_ids_text: String,
    pub fields_text: String,
    pub chain_hash: Vec<u8>,
}

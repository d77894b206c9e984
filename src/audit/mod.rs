//! The access audit: one tamper-evident event per request, committed before any data leaves.
//!
//! - [`event`]: what an event holds (ids, field names and views, digests — never PII);
//! - [`chain`]: the SHA-256 hash chain with leaf/node domain separation;
//! - [`checkpoint`]: Ed25519-signed checkpoints of the chain head;
//! - [`writer`]: the group-commit writer that the HTTP layer awaits before answering;
//! - [`verify`]: recomputing the chain and checking every checkpoint;
//! - [`guard`]: the bulk-access guard.
//!
//! This module never updates or deletes an event.

pub mod chain;
pub mod checkpoint;
pub mod event;
pub mod guard;
pub mod verify;
pub mod writer;

use std::sync::{Arc, Mutex};

use uuid::Uuid;

pub use checkpoint::{Checkpoint, CheckpointSigner, CheckpointVerifier};
pub use event::{AuditEvent, Outcome, StoredEvent};
pub use verify::VerifyReport;
pub use writer::{AuditError, AuditLog, Expected};

/// The event of the request being served, filled in as the request goes: the HTTP layer
/// opens it, the use cases add what they disclose, and the HTTP layer closes and writes it —
/// unless a write already committed it with its data.
#[derive(Clone, Debug)]
pub struct AuditHandle(Arc<Mutex<Draft>>);

#[derive(Debug)]
struct Draft {
    event: AuditEvent,
    recorded: bool,
    /// Tells the audit writer this event is still to come, until it is closed (about to be
    /// written), marked written, or dropped.
    expected: Option<Expected>,
}

impl AuditHandle {
    pub fn new(event: AuditEvent) -> Self {
        AuditHandle(Arc::new(Mutex::new(Draft { event, recorded: false, expected: None })))
    }

    /// The event of a request the audit writer counts on (see [`AuditLog::expect`]).
    pub fn expected(event: AuditEvent, expected: Expected) -> Self {
        AuditHandle(Arc::new(Mutex::new(Draft { event, recorded: false, expected: Some(expected) })))
    }

    /// A handle for work outside any request (command line).
    pub fn detached(action: &str) -> Self {
        Self::new(AuditEvent::now(format!("cli-{}", Uuid::now_v7()), action))
    }

    fn with<R>(&self, f: impl FnOnce(&mut Draft) -> R) -> R {
        match self.0.lock() {
            Ok(mut g) => f(&mut g),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    pub fn set_principal(&self, principal: &str) {
        self.with(|d| d.event.principal = Some(principal.to_owned()));
    }

    pub fn set_purpose(&self, purpose: &str) {
        self.with(|d| d.event.purpose = Some(purpose.to_owned()));
    }

    pub fn set_grant(&self, grant: Uuid) {
        self.with(|d| d.event.grant_id = Some(grant));
    }

    pub fn set_justification(&self, justification: &str) {
        self.with(|d| d.event.justification = Some(justification.to_owned()));
    }

    /// The action the route declares (set by the router, before any handler runs).
    pub fn set_action(&self, action: &str) {
        self.with(|d| {
            if d.event.action != action {
                d.event.action.clear();
                d.event.action.push_str(action);
            }
        });
    }

    pub fn set_actor_region(&self, region: Option<crate::domain::RegionId>) {
        self.with(|d| d.event.actor_region = region.map(crate::domain::RegionId::into_string));
    }

    /// Widens the event's subject region to contain `region` (the smallest common node).
    pub fn add_subject_region(&self, region: &crate::domain::RegionId) {
        self.with(|d| {
            let merged = match d.event.subject_region.as_deref() {
                None => region.as_str().to_owned(),
                Some(cur) => crate::domain::region::common_ancestor(cur, region.as_str()).to_owned(),
            };
            d.event.subject_region = Some(merged);
        });
    }

    /// Records the client address and, when it was forwarded by a trusted proxy, the proxy.
    pub fn set_client(&self, client: Option<String>, proxy: Option<String>) {
        self.with(|d| {
            d.event.client = client;
            d.event.proxy = proxy;
        });
    }

    /// Records ids asked for that were not disclosed (they stay in `customer_ids` too).
    pub fn set_undisclosed(&self, ids: &[Uuid]) {
        self.with(|d| {
            d.event.undisclosed =
                if ids.is_empty() { None } else { Some(serde_json::to_string(ids).unwrap_or_else(|_| "[]".into())) };
        });
    }

    pub fn set_query(&self, query: String) {
        self.with(|d| d.event.query = Some(query));
    }

    pub fn add_customer(&self, id: Uuid) {
        self.with(|d| {
            if !d.event.customer_ids.contains(&id) {
                d.event.customer_ids.push(id);
            }
        });
    }

    /// Records that `field` was disclosed under `view` (`plain`, `masked`, `revealed`).
    pub fn add_field(&self, field: &str, view: &str) {
        self.with(|d| {
            if !d.event.fields.iter().any(|(f, v)| f == field && v == view) {
                d.event.fields.push((field.to_owned(), view.to_owned()));
            }
        });
    }

    /// Clears what was recorded as disclosed (the request ended without disclosing it).
    pub fn clear_disclosure(&self) {
        self.with(|d| d.event.fields.clear());
    }

    /// The event as it stands, closed with `status`.
    pub fn closed(&self, status: u16) -> AuditEvent {
        self.with(|d| {
            d.expected = None;
            Self::finish(d.event.clone(), status)
        })
    }

    /// The event closed with `status`, taken out of the handle rather than copied: for the
    /// last close of a request (the draft is left empty).
    pub fn take_closed(&self, status: u16) -> AuditEvent {
        self.with(|d| {
            d.expected = None;
            Self::finish(std::mem::take(&mut d.event), status)
        })
    }

    fn finish(mut e: AuditEvent, status: u16) -> AuditEvent {
        if e.action.is_empty() {
            // No route declared an action (an unrouted path or method).
            e.action.push_str("unknown");
        }
        e.status = status;
        e.outcome = Outcome::from_status(status);
        if e.outcome != Outcome::Allowed {
            e.fields.clear();
        }
        e
    }

    /// Marks the event written (with the data it concerns, in one transaction).
    pub fn mark_recorded(&self) {
        self.with(|d| {
            d.recorded = true;
            d.expected = None;
        });
    }

    pub fn is_recorded(&self) -> bool {
        self.with(|d| d.recorded)
    }
}

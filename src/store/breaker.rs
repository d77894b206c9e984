//! The deadline and breaker in front of a networked database (PostgreSQL).
//!
//! Every call gets a deadline: a statement stuck on a black-holed connection, or a pool waiting
//! for a server that refuses connections, fails as unavailable (503) instead of holding its
//! request — and the audit writer's commit — for as long as TCP takes to give up. The first
//! call that finds the database unreachable opens the breaker: from then on every call is
//! refused at once, so that an outage answers 503 in microseconds instead of piling up tasks
//! that each wait out the deadline. One probe task pings the database every
//! [`PROBE_EVERY`] and closes the breaker when it answers; the vault recovers without a
//! restart.
//!
//! A call cut by its deadline may still have committed on the server: its caller was answered
//! 503 and the write's outcome is unknown to it. `Idempotency-Key` lets a client retry such a
//! write safely.
//!
//! Owns: deadlines and fast refusal. Must never: retry a write, or hide an error that is not
//! about reaching the database.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{
    AlertRecord, AuditBatch, AuditHead, AuditQuery, AuditTallies, AuditTally, AuthzState, Backend, BootstrapOutcome,
    Checkpoint, CustomerQuery, CustomerRecord, CustomerUpdate, GrantQuery, GrantRecord, IdempotencyRecord, IndexEntry,
    Store, StoreError, Tombstone, UpdateOutcome, WrappedKey,
};
use crate::audit::{AuditEvent, StoredEvent};
use crate::domain::{CustomerKind, CustomerStatus, RegionId};

/// How often the probe pings a database found unreachable.
pub const PROBE_EVERY: Duration = Duration::from_millis(250);

/// A store whose calls have a deadline and are refused at once while the database is down.
pub struct Breaker {
    inner: Arc<dyn Store>,
    shared: Arc<Shared>,
}

struct Shared {
    deadline: Duration,
    /// The breaker is open: the database was found unreachable and no probe has answered since.
    open: AtomicBool,
}

impl Breaker {
    pub fn new(inner: Arc<dyn Store>, deadline: Duration) -> Self {
        ::metrics::gauge!(crate::telemetry::prometheus::DATABASE_UP).set(1.0);
        Breaker { inner, shared: Arc::new(Shared { deadline, open: AtomicBool::new(false) }) }
    }

    /// Runs one call: refused while the breaker is open, cut at the deadline, and opening the
    /// breaker when the database could not be reached.
    async fn call<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, StoreError>> + Send,
    {
        if self.shared.open.load(Ordering::Acquire) {
            return Err(StoreError::Unreachable);
        }
        let outcome = match tokio::time::timeout(self.shared.deadline, work).await {
            Ok(outcome) => outcome,
            Err(_) => Err(StoreError::DeadlineExceeded),
        };
        if let Err(e) = &outcome {
            if e.is_unreachable() {
                self.trip(e);
            }
        }
        outcome
    }

    /// Opens the breaker (once) and starts the probe that closes it.
    fn trip(&self, cause: &StoreError) {
        if self.shared.open.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::error!(error = %cause, "database unreachable: refusing database calls until it answers again");
        ::metrics::gauge!(crate::telemetry::prometheus::DATABASE_UP).set(0.0);
        let (inner, shared) = (self.inner.clone(), self.shared.clone());
        tokio::spawn(async move {
            let since = std::time::Instant::now();
            loop {
                tokio::time::sleep(PROBE_EVERY).await;
                if let Ok(Ok(())) = tokio::time::timeout(shared.deadline, inner.ping()).await {
                    shared.open.store(false, Ordering::Release);
                    ::metrics::gauge!(crate::telemetry::prometheus::DATABASE_UP).set(1.0);
                    tracing::warn!(
                        down_ms = since.elapsed().as_millis() as u64,
                        "database answers again: breaker closed"
                    );
                    return;
                }
            }
        });
    }
}

#[async_trait]
impl Store for Breaker {
    fn backend(&self) -> Backend {
        self.inner.backend()
    }
    fn pool_stats(&self) -> Option<super::PoolStats> {
        self.inner.pool_stats()
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.call(self.inner.ping()).await
    }
    async fn insert_customers(&self, records: &[CustomerRecord], events: &[AuditEvent]) -> Result<(), StoreError> {
        self.call(self.inner.insert_customers(records, events)).await
    }
    async fn customer(&self, id: Uuid) -> Result<Option<CustomerRecord>, StoreError> {
        self.call(self.inner.customer(id)).await
    }
    async fn update_customer(&self, update: &CustomerUpdate, audit: &AuditEvent) -> Result<UpdateOutcome, StoreError> {
        self.call(self.inner.update_customer(update, audit)).await
    }
    async fn customers_by_ids(&self, ids: &[Uuid], scopes: &[RegionId]) -> Result<Vec<CustomerRecord>, StoreError> {
        self.call(self.inner.customers_by_ids(ids, scopes)).await
    }
    async fn search_customers(&self, query: &CustomerQuery) -> Result<Vec<Uuid>, StoreError> {
        self.call(self.inner.search_customers(query)).await
    }
    async fn search_customer_records(&self, query: &CustomerQuery) -> Result<Vec<CustomerRecord>, StoreError> {
        self.call(self.inner.search_customer_records(query)).await
    }
    async fn authz_epoch(&self) -> Result<i64, StoreError> {
        self.call(self.inner.authz_epoch()).await
    }
    async fn authz_state(&self) -> Result<AuthzState, StoreError> {
        self.call(self.inner.authz_state()).await
    }
    async fn grant(&self, id: Uuid) -> Result<Option<GrantRecord>, StoreError> {
        self.call(self.inner.grant(id)).await
    }
    async fn insert_grant(&self, grant: &GrantRecord, audit: &AuditEvent) -> Result<(), StoreError> {
        self.call(self.inner.insert_grant(grant, audit)).await
    }
    async fn insert_bootstrap_grant(
        &self,
        grant: &GrantRecord,
        audit: &AuditEvent,
    ) -> Result<BootstrapOutcome, StoreError> {
        self.call(self.inner.insert_bootstrap_grant(grant, audit)).await
    }
    async fn revoke_grant(
        &self,
        id: Uuid,
        by: &str,
        at: DateTime<Utc>,
        audit: &AuditEvent,
    ) -> Result<bool, StoreError> {
        self.call(self.inner.revoke_grant(id, by, at, audit)).await
    }
    async fn grants_page(&self, query: &GrantQuery) -> Result<Vec<GrantRecord>, StoreError> {
        self.call(self.inner.grants_page(query)).await
    }
    async fn revoke_tokens(
        &self,
        principal: &str,
        not_before: DateTime<Utc>,
        audit: &AuditEvent,
    ) -> Result<(), StoreError> {
        self.call(self.inner.revoke_tokens(principal, not_before, audit)).await
    }
    async fn append_audit(&self, batch: Arc<AuditBatch>) -> Result<AuditHead, StoreError> {
        self.call(self.inner.append_audit(batch)).await
    }
    async fn audit_head(&self) -> Result<AuditHead, StoreError> {
        self.call(self.inner.audit_head()).await
    }
    async fn insert_checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), StoreError> {
        self.call(self.inner.insert_checkpoint(checkpoint)).await
    }
    async fn checkpoints(&self) -> Result<Vec<Checkpoint>, StoreError> {
        self.call(self.inner.checkpoints()).await
    }
    async fn latest_checkpoint(&self) -> Result<Option<Checkpoint>, StoreError> {
        self.call(self.inner.latest_checkpoint()).await
    }
    async fn audit_events_after(&self, after_seq: i64, limit: u32) -> Result<Vec<StoredEvent>, StoreError> {
        self.call(self.inner.audit_events_after(after_seq, limit)).await
    }
    async fn query_audit(&self, query: &AuditQuery) -> Result<Vec<StoredEvent>, StoreError> {
        self.call(self.inner.query_audit(query)).await
    }
    async fn audit_tallies(&self, tally: &AuditTally) -> Result<AuditTallies, StoreError> {
        self.call(self.inner.audit_tallies(tally)).await
    }
    async fn insert_alert(&self, alert: &AlertRecord, audit: &AuditEvent) -> Result<(), StoreError> {
        self.call(self.inner.insert_alert(alert, audit)).await
    }
    async fn clear_alert(&self, id: Uuid, by: &str, at: DateTime<Utc>, audit: &AuditEvent) -> Result<bool, StoreError> {
        self.call(self.inner.clear_alert(id, by, at, audit)).await
    }
    async fn alerts(&self, scopes: Option<&[RegionId]>, limit: u32) -> Result<Vec<AlertRecord>, StoreError> {
        self.call(self.inner.alerts(scopes, limit)).await
    }
    async fn alert(&self, id: Uuid) -> Result<Option<AlertRecord>, StoreError> {
        self.call(self.inner.alert(id)).await
    }
    async fn index_stale(&self, current: i32, limit: u32) -> Result<Vec<Uuid>, StoreError> {
        self.call(self.inner.index_stale(current, limit)).await
    }
    async fn index_stale_count(&self, current: i32) -> Result<i64, StoreError> {
        self.call(self.inner.index_stale_count(current)).await
    }
    async fn replace_index(&self, id: Uuid, version: i64, entries: &[IndexEntry]) -> Result<bool, StoreError> {
        self.call(self.inner.replace_index(id, version, entries)).await
    }
    async fn audit_links(&self, from_seq: i64, to_seq: i64) -> Result<Vec<super::AuditLinks>, StoreError> {
        self.call(self.inner.audit_links(from_seq, to_seq)).await
    }
    async fn charge_budget(
        &self,
        principal: &str,
        budget: &str,
        bucket: i64,
        after_bucket: i64,
        amount: i64,
    ) -> Result<i64, StoreError> {
        self.call(self.inner.charge_budget(principal, budget, bucket, after_bucket, amount)).await
    }
    async fn prune_budgets(&self, before_bucket: i64) -> Result<(), StoreError> {
        self.call(self.inner.prune_budgets(before_bucket)).await
    }
    async fn publish_guard_counts(&self, instance: &str, counts: &[(String, i64)], now: i64) -> Result<(), StoreError> {
        self.call(self.inner.publish_guard_counts(instance, counts, now)).await
    }
    async fn clear_guard_counts(&self, principal: &str) -> Result<(), StoreError> {
        self.call(self.inner.clear_guard_counts(principal)).await
    }
    async fn guard_counts_elsewhere(&self, instance: &str, since: i64) -> Result<Vec<(String, i64)>, StoreError> {
        self.call(self.inner.guard_counts_elsewhere(instance, since)).await
    }
    async fn kek_usage(&self) -> Result<Vec<(u32, i64)>, StoreError> {
        self.call(self.inner.kek_usage()).await
    }
    async fn wrapped_below(&self, active: u32, limit: u32) -> Result<Vec<(Uuid, WrappedKey)>, StoreError> {
        self.call(self.inner.wrapped_below(active, limit)).await
    }
    async fn replace_wrapped_key(&self, id: Uuid, from_version: u32, key: &WrappedKey) -> Result<bool, StoreError> {
        self.call(self.inner.replace_wrapped_key(id, from_version, key)).await
    }
    async fn erase_customer(&self, tombstone: &Tombstone, audit: &AuditEvent) -> Result<bool, StoreError> {
        self.call(self.inner.erase_customer(tombstone, audit)).await
    }
    async fn tombstone(&self, id: Uuid) -> Result<Option<Tombstone>, StoreError> {
        self.call(self.inner.tombstone(id)).await
    }
    async fn set_status(&self, id: Uuid, status: CustomerStatus, audit: &AuditEvent) -> Result<bool, StoreError> {
        self.call(self.inner.set_status(id, status, audit)).await
    }
    async fn idempotency(
        &self,
        principal: &str,
        key: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        self.call(self.inner.idempotency(principal, key, now)).await
    }
    async fn prune_idempotency(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        self.call(self.inner.prune_idempotency(now)).await
    }
    async fn past_retention(
        &self,
        kind: CustomerKind,
        status: CustomerStatus,
        before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<(Uuid, String)>, StoreError> {
        self.call(self.inner.past_retention(kind, status, before, limit)).await
    }
}

//! Audit use cases: searching and exporting events, verifying the chain, the bulk-access
//! alerts, and a customer's access log (PIPL right to know).

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Caller, Vault, VaultError};
use crate::audit::{verify, AuditEvent, StoredEvent, VerifyReport};
use crate::authz::Action;
use crate::store::{AlertRecord, AuditQuery};

/// Largest page of audit events.
pub const MAX_PAGE: u32 = 1000;

/// A page of events.
#[derive(Debug)]
pub struct AuditPage {
    pub items: Vec<StoredEvent>,
    pub next_cursor: Option<i64>,
}

/// One access to a customer's data, as shown to the data subject's representative.
#[derive(Debug)]
pub struct AccessLogEntry {
    pub time: DateTime<Utc>,
    pub principal: Option<String>,
    pub action: String,
    pub fields: Vec<(String, String)>,
    pub purpose: Option<String>,
    pub outcome: String,
}

impl Vault {
    /// Events matching `query`, for security officers.
    #[tracing::instrument(skip_all)]
    pub async fn audit_events(&self, caller: &Caller, mut query: AuditQuery) -> Result<AuditPage, VaultError> {
        self.authz.capability(&caller.principal, Action::ReadAudit, None)?;
        let limit = query.limit.clamp(1, MAX_PAGE);
        query.limit = limit + 1;
        let mut items = self.store.query_audit(&query).await?;
        let next_cursor = if items.len() > limit as usize {
            items.truncate(limit as usize);
            items.last().map(|e| e.seq)
        } else {
            None
        };
        Ok(AuditPage { items, next_cursor })
    }

    /// Recomputes the chain and checks every checkpoint against the pinned key.
    #[tracing::instrument(skip_all)]
    pub async fn verify_audit(&self, caller: &Caller) -> Result<VerifyReport, VaultError> {
        self.authz.capability(&caller.principal, Action::VerifyAudit, None)?;
        let verifier = self.verifier.as_ref().ok_or(VaultError::AuditUnavailable)?;
        let report = verify::verify(&self.store, verifier).await?;
        if !report.ok {
            tracing::error!(first_bad_seq = report.first_bad_seq, "AUDIT VERIFICATION FAILED");
        }
        Ok(report)
    }

    /// Recent bulk-access alerts.
    pub async fn alerts(&self, caller: &Caller) -> Result<Vec<AlertRecord>, VaultError> {
        self.authz.capability(&caller.principal, Action::AuditAlerts, None)?;
        Ok(self.store.alerts(200).await?)
    }

    /// Clears an open alert, unblocking its principal.
    pub async fn clear_alert(&self, caller: &Caller, id: Uuid) -> Result<AlertRecord, VaultError> {
        self.authz.capability(&caller.principal, Action::AuditAlerts, None)?;
        let alert = self.store.alert(id).await?.ok_or(VaultError::NotFound)?;
        if !self.store.clear_alert(id, &caller.principal.sub, Utc::now(), &caller.audit.closed(200)).await? {
            return Err(VaultError::NotFound);
        }
        caller.audit.mark_recorded();
        self.guard.reset(&alert.principal);
        if let Err(e) = self.authz.grants().reload().await {
            tracing::warn!(error = %e, "alert cleared; the poller will pick it up");
        }
        // Read back as stored (the database's own timestamp precision).
        self.store.alert(id).await?.ok_or(VaultError::NotFound)
    }

    /// Raises a bulk-access alert for `principal` (its own audit event, in one transaction).
    pub(super) async fn raise_bulk_alert(&self, principal: &str, distinct: usize) -> Result<(), VaultError> {
        let policy = self.guard.policy();
        let alert = AlertRecord {
            id: Uuid::now_v7(),
            principal: principal.to_owned(),
            raised_at: Utc::now(),
            distinct_customers: i32::try_from(distinct).unwrap_or(i32::MAX),
            window_seconds: i32::try_from(policy.window.as_secs()).unwrap_or(i32::MAX),
            cleared_at: None,
            cleared_by: None,
        };
        let mut event = AuditEvent::now(format!("alert-{}", alert.id), "audit.alert_raised");
        event.principal = Some(principal.to_owned());
        event.status = 429;
        event.outcome = crate::audit::Outcome::Denied;
        self.store.insert_alert(&alert, &event).await?;
        tracing::warn!(alert_id = %alert.id, distinct, "BULK ACCESS ALERT: principal blocked until a security officer clears it");
        if let Err(e) = self.authz.grants().reload().await {
            tracing::warn!(error = %e, "alert raised; the poller will pick it up");
        }
        Ok(())
    }

    /// Who accessed this customer's data and how (PIPL art. 44 right to know).
    #[tracing::instrument(skip_all)]
    pub async fn access_log(
        &self,
        caller: &Caller,
        id: Uuid,
        after: i64,
        limit: u32,
    ) -> Result<(Vec<AccessLogEntry>, Option<i64>), VaultError> {
        let (_record, _) = self.load_for(caller, Action::AccessLog, id).await?;
        let limit = limit.clamp(1, MAX_PAGE);
        let query = AuditQuery { customer: Some(id), after_seq: after, limit: limit + 1, ..AuditQuery::default() };
        let mut events = self.store.query_audit(&query).await?;
        let next = if events.len() > limit as usize {
            events.truncate(limit as usize);
            events.last().map(|e| e.seq)
        } else {
            None
        };
        let entries = events
            .into_iter()
            .map(|e| AccessLogEntry {
                time: e.event.time,
                principal: e.event.principal,
                action: e.event.action,
                fields: e.event.fields,
                purpose: e.event.purpose,
                outcome: e.event.outcome.as_str().to_owned(),
            })
            .collect();
        Ok((entries, next))
    }
}

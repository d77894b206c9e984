//! Audit use cases: searching and exporting events, verifying the chain, the bulk-access
//! alerts, and a customer's access log (PIPL right to know).

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Caller, Vault, VaultError};
use crate::audit::{verify, AuditEvent, StoredEvent, VerifyReport};
use crate::authz::Action;
use crate::store::{AlertRecord, AuditQuery, AuditTallies, AuditTally, Bucket};

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

/// What raised a security alert. Every kind blocks the principal's data requests until a
/// security officer clears it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlertKind {
    /// Too many distinct customers shown within the window.
    BulkAccess,
    /// The search budget is spent.
    SearchBudget,
    /// Too many searches found nothing (guessing masked values).
    SearchMisses,
}

impl AlertKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::BulkAccess => "bulk_access",
            AlertKind::SearchBudget => "search_budget",
            AlertKind::SearchMisses => "search_misses",
        }
    }
}

/// The audit chain's head and newest signed checkpoint (sequence number, time).
#[derive(Clone, Debug)]
pub struct ChainState {
    pub head_seq: i64,
    pub checkpoint: Option<(i64, chrono::DateTime<chrono::Utc>)>,
}

/// The security officer's overview: the chain's state and what happened in its subtree.
#[derive(Clone, Debug)]
pub struct Overview {
    pub chain: ChainState,
    /// The last 24 hours, by hour.
    pub day: AuditTallies,
    /// The last 30 days, by day.
    pub month: AuditTallies,
    /// Open alerts about principals in the subtree.
    pub open_alerts: usize,
    /// This instance's newest verification (`None` since it started).
    pub verified: Option<Verified>,
}

/// The outcome of a verification run on this instance.
#[derive(Clone, Debug)]
pub struct Verified {
    pub at: DateTime<Utc>,
    pub ok: bool,
    /// Events checked (the chain verified through this sequence number when `ok`).
    pub events: i64,
    pub first_bad_seq: Option<i64>,
}

/// How many principals the leak-warning list shows.
pub const LEADERS: u32 = 10;

impl Vault {
    /// The overview of the officer's subtree (events per hour and per day by outcome, reveals
    /// and exports, the principals touching the most distinct customers, open alerts) and the
    /// chain's state.
    #[tracing::instrument(skip_all)]
    pub async fn audit_overview(&self, caller: &Caller) -> Result<Overview, VaultError> {
        let permit = self.admit(caller, Action::ReadAudit)?;
        let scopes = permit.scopes();
        let now = Utc::now();
        let tally =
            |since: DateTime<Utc>, bucket| AuditTally { since, scopes: scopes.clone(), bucket, leaders: LEADERS };
        let day = self.store.audit_tallies(&tally(now - chrono::Duration::hours(24), Bucket::Hour)).await?;
        let month = self.store.audit_tallies(&tally(now - chrono::Duration::days(30), Bucket::Day)).await?;
        let open_alerts =
            self.store.alerts(Some(&scopes), 200).await?.iter().filter(|a| a.cleared_at.is_none()).count();
        let chain = self.audit_state(caller).await?;
        let verified = self.last_verification.lock().unwrap_or_else(|p| p.into_inner()).clone();
        Ok(Overview { chain, day, month, open_alerts, verified })
    }

    /// Events matching `query`, for security officers: only events whose actor or subject lies
    /// in the officer's subtree (all of them for an officer at `CN`).
    #[tracing::instrument(skip_all)]
    pub async fn audit_events(&self, caller: &Caller, mut query: AuditQuery) -> Result<AuditPage, VaultError> {
        let permit = self.admit(caller, Action::ReadAudit)?;
        query.scopes = Some(permit.scopes());
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

    /// Whether the caller may do `action` (a page that only offers it asks first).
    pub fn may(&self, caller: &Caller, action: Action) -> Result<(), VaultError> {
        self.admit(caller, action).map(|_| ())
    }

    /// The chain's state for the console's overview: the head and the newest checkpoint.
    #[tracing::instrument(skip_all)]
    pub async fn audit_state(&self, caller: &Caller) -> Result<ChainState, VaultError> {
        self.admit(caller, Action::ReadAudit)?;
        let head = self.store.audit_head().await?;
        let checkpoint = self.store.latest_checkpoint().await?.map(|c| (c.seq, c.time));
        Ok(ChainState { head_seq: head.seq, checkpoint })
    }

    /// Recomputes the chain and checks every checkpoint against the pinned key.
    #[tracing::instrument(skip_all)]
    pub async fn verify_audit(&self, caller: &Caller) -> Result<VerifyReport, VaultError> {
        self.admit(caller, Action::VerifyAudit)?;
        let verifier = self.verifier.as_ref().ok_or(VaultError::AuditUnavailable)?;
        let report = verify::verify(&self.store, verifier).await?;
        if !report.ok {
            tracing::error!(first_bad_seq = report.first_bad_seq, "AUDIT VERIFICATION FAILED");
        }
        *self.last_verification.lock().unwrap_or_else(|p| p.into_inner()) = Some(Verified {
            at: Utc::now(),
            ok: report.ok,
            events: report.events,
            first_bad_seq: report.first_bad_seq,
        });
        Ok(report)
    }

    /// Recent alerts about principals in the officer's subtree.
    #[tracing::instrument(skip_all)]
    pub async fn alerts(&self, caller: &Caller) -> Result<Vec<AlertRecord>, VaultError> {
        let permit = self.admit(caller, Action::AuditAlerts)?;
        Ok(self.store.alerts(Some(&permit.scopes()), 200).await?)
    }

    /// One alert about a principal in the officer's subtree (outside it: 404, as missing).
    #[tracing::instrument(skip_all)]
    pub async fn alert(&self, caller: &Caller, id: Uuid) -> Result<AlertRecord, VaultError> {
        let permit = self.admit(caller, Action::AuditAlerts)?;
        let alert = self.store.alert(id).await?.ok_or(VaultError::NotFound)?;
        self.gate.audit_subject(&permit, alert.region.as_deref())?;
        Ok(alert)
    }

    /// Clears an open alert about a principal in the officer's subtree, unblocking it.
    #[tracing::instrument(skip_all)]
    pub async fn clear_alert(&self, caller: &Caller, id: Uuid) -> Result<AlertRecord, VaultError> {
        let permit = self.admit(caller, Action::AuditAlerts)?;
        let alert = self.store.alert(id).await?.ok_or(VaultError::NotFound)?;
        let grant = self.gate.audit_subject(&permit, alert.region.as_deref())?;
        caller.audit.set_grant(grant);
        if let Some(region) = alert.region.as_deref().and_then(|r| self.regions.parse(r)) {
            caller.audit.add_subject_region(&region);
        }
        if !self.store.clear_alert(id, &caller.principal.sub, Utc::now(), &caller.audit.closed(200)).await? {
            return Err(VaultError::NotFound);
        }
        caller.audit.mark_recorded();
        // Counting starts afresh: here at once, on the other instances when they see the alert
        // cleared (their published counts are dropped now, so they are not added in meanwhile).
        self.guard.reset(&alert.principal);
        if let Err(e) = self.store.clear_guard_counts(&alert.principal).await {
            tracing::warn!(error = %e, "alert cleared; other instances' counts expire with their next exchange");
        }
        if let Err(e) = self.authorizer().grants().reload().await {
            tracing::warn!(error = %e, "alert cleared; the poller will pick it up");
        }
        // Read back as stored (the database's own timestamp precision).
        self.store.alert(id).await?.ok_or(VaultError::NotFound)
    }

    /// Raises a security alert for `principal` (its own audit event, in one transaction): the
    /// principal's data requests are refused until a security officer clears it.
    pub(super) async fn raise_alert(
        &self,
        principal: &str,
        kind: AlertKind,
        distinct: usize,
    ) -> Result<(), VaultError> {
        let policy = self.guard.policy();
        let region = self.gate.home_region(principal);
        let alert = AlertRecord {
            id: Uuid::now_v7(),
            kind: kind.as_str().to_owned(),
            principal: principal.to_owned(),
            region: region.as_ref().map(|r| r.as_str().to_owned()),
            raised_at: Utc::now(),
            distinct_customers: i32::try_from(distinct).unwrap_or(i32::MAX),
            window_seconds: i32::try_from(policy.window.as_secs()).unwrap_or(i32::MAX),
            cleared_at: None,
            cleared_by: None,
        };
        let mut event = AuditEvent::now(format!("alert-{}", alert.id), "audit.alert_raised");
        event.principal = Some(principal.to_owned());
        event.actor_region = alert.region.clone();
        event.query = Some(serde_json::json!({ "alert": kind.as_str() }).to_string());
        event.status = 429;
        event.outcome = crate::audit::Outcome::Denied;
        self.store.insert_alert(&alert, &event).await?;
        tracing::warn!(alert_id = %alert.id, kind = kind.as_str(), distinct, "SECURITY ALERT: principal blocked until a security officer clears it");
        if let Err(e) = self.authorizer().grants().reload().await {
            tracing::warn!(error = %e, "alert raised; the poller will pick it up");
        }
        Ok(())
    }

    /// Who accessed this customer's data and how (PIPL art. 44 right to know). Ids that an
    /// event asked for but did not disclose show as such (no fields, outcome `not_found`).
    #[tracing::instrument(skip_all)]
    pub async fn access_log(
        &self,
        caller: &Caller,
        id: Uuid,
        after: i64,
        limit: u32,
    ) -> Result<(Vec<AccessLogEntry>, Option<i64>), VaultError> {
        let permit = self.admit(caller, Action::AccessLog)?;
        self.load_for(caller, &permit, id).await?;
        let limit = limit.clamp(1, MAX_PAGE);
        let query = AuditQuery { customer: Some(id), after_seq: after, limit: limit + 1, ..AuditQuery::default() };
        let mut events = self.store.query_audit(&query).await?;
        let next = if events.len() > limit as usize {
            events.truncate(limit as usize);
            events.last().map(|e| e.seq)
        } else {
            None
        };
        let id_text = id.to_string();
        let entries = events
            .into_iter()
            .map(|e| {
                let withheld = e.event.undisclosed.as_deref().is_some_and(|u| u.contains(&id_text));
                AccessLogEntry {
                    time: e.event.time,
                    principal: e.event.principal,
                    action: e.event.action,
                    fields: if withheld { Vec::new() } else { e.event.fields },
                    purpose: e.event.purpose,
                    outcome: if withheld { "not_found".into() } else { e.event.outcome.as_str().to_owned() },
                }
            })
            .collect();
        Ok((entries, next))
    }
}

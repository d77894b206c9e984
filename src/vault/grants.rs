//! Delegated administration: granting roles at region nodes, listing and revoking grants,
//! revoking a principal's tokens, and bootstrapping the first administrator.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Caller, Vault, VaultError};
use crate::auth::valid_subject;
use crate::authz::{Action, Denied, GrantStatus};
use crate::domain::GrantDraft;
use crate::store::{BootstrapOutcome, GrantQuery, GrantRecord};

/// The role the bootstrap grant carries.
pub const BOOTSTRAP_ROLE: &str = "admin";
/// `granted_by` of the bootstrap grant.
pub const BOOTSTRAP_GRANTOR: &str = "custodia:bootstrap";
/// Largest page of grants.
pub const MAX_PAGE: u32 = 100;

/// A grant with its status now.
#[derive(Clone, Debug)]
pub struct GrantView {
    pub record: GrantRecord,
    pub status: GrantStatus,
}

/// A page of grants.
#[derive(Clone, Debug)]
pub struct GrantPage {
    pub items: Vec<GrantView>,
    pub next_cursor: Option<Uuid>,
}

impl Vault {
    fn view(&self, record: GrantRecord) -> GrantView {
        let status = self.authz.grants().snapshot().status(&record, Utc::now());
        GrantView { record, status }
    }

    /// Makes the local snapshot current after a change, so the caller's next request sees it.
    async fn refresh_grants(&self) {
        if let Err(e) = self.authz.grants().reload().await {
            tracing::warn!(error = %e, "grant snapshot not refreshed; the poller will retry");
        }
    }

    /// Grants `draft.role` at `draft.region` to `draft.principal`, delegated under one of the
    /// caller's grants.
    #[tracing::instrument(skip_all)]
    pub async fn create_grant(&self, caller: &Caller, draft: GrantDraft) -> Result<GrantView, VaultError> {
        // Only a grant manager learns anything, even about validation.
        self.authz.capability(&caller.principal, Action::CreateGrant, None)?;
        let now = Utc::now();
        let policy = self.authz.policy();
        let valid = draft.validate(self.regions, |r| policy.is_role(r), valid_subject, now)?;
        let delegation =
            self.authz.delegation(&caller.principal, &valid.principal, &valid.role, &valid.region, valid.expires_at)?;
        let record = GrantRecord {
            id: Uuid::now_v7(),
            principal: valid.principal,
            role: valid.role,
            region: valid.region.as_str().to_owned(),
            granted_by: caller.principal.sub.clone(),
            parent_id: Some(delegation.parent),
            created_at: now,
            expires_at: Some(valid.expires_at),
            revoked_at: None,
            revoked_by: None,
        };
        caller.audit.set_grant(delegation.parent);
        self.store.insert_grant(&record, &caller.audit.closed(201)).await?;
        caller.audit.mark_recorded();
        self.refresh_grants().await;
        tracing::info!(grant_id = %record.id, role = %record.role, region = %record.region, "grant created");
        Ok(self.view(record))
    }

    /// The grants inside the caller's administrative (or audit) scope, filtered in SQL.
    #[tracing::instrument(skip_all)]
    pub async fn list_grants(
        &self,
        caller: &Caller,
        principal: Option<String>,
        after: Option<Uuid>,
        page_size: Option<u32>,
    ) -> Result<GrantPage, VaultError> {
        let capability = self.authz.capability(&caller.principal, Action::GrantList, None)?;
        let limit = page_size.unwrap_or(50).clamp(1, MAX_PAGE);
        let query = GrantQuery { scopes: capability.scopes(), principal, after, limit: limit + 1 };
        let mut records = self.store.grants_page(&query).await?;
        let next_cursor = if records.len() > limit as usize {
            records.truncate(limit as usize);
            records.last().map(|g| g.id)
        } else {
            None
        };
        Ok(GrantPage { items: records.into_iter().map(|r| self.view(r)).collect(), next_cursor })
    }

    /// Revokes a grant in the caller's scope; every grant delegated under it stops with it.
    #[tracing::instrument(skip_all)]
    pub async fn revoke_grant(&self, caller: &Caller, id: Uuid) -> Result<GrantView, VaultError> {
        let capability = self.authz.capability(&caller.principal, Action::RevokeGrant, None)?;
        let record = self.store.grant(id).await?.ok_or(VaultError::NotFound)?;
        let region = self.regions.parse(&record.region).ok_or(VaultError::NotFound)?;
        let by = capability.grant_for(&region).ok_or(VaultError::NotFound)?;
        caller.audit.set_grant(by);
        self.store.revoke_grant(id, &caller.principal.sub, Utc::now(), &caller.audit.closed(200)).await?;
        caller.audit.mark_recorded();
        self.refresh_grants().await;
        tracing::info!(grant_id = %id, "grant revoked");
        let record = self.store.grant(id).await?.ok_or(VaultError::NotFound)?;
        Ok(self.view(record))
    }

    /// Makes every token of `sub` issued until now fail. The caller's management scope must
    /// cover every live grant `sub` holds.
    #[tracing::instrument(skip_all)]
    pub async fn revoke_tokens(&self, caller: &Caller, sub: &str) -> Result<DateTime<Utc>, VaultError> {
        let capability = self.authz.capability(&caller.principal, Action::RevokeTokens, None)?;
        if !valid_subject(sub) {
            return Err(VaultError::NotFound);
        }
        let snapshot = self.authz.grants().snapshot();
        let now = Utc::now();
        let outside = snapshot
            .live_grants_of(sub, now)
            .any(|g| g.region.as_ref().is_none_or(|r| capability.grant_for(r).is_none()));
        if outside {
            return Err(Denied::RegionOutOfScope.into());
        }
        self.store.revoke_tokens(sub, now, &caller.audit.closed(200)).await?;
        caller.audit.mark_recorded();
        self.refresh_grants().await;
        tracing::info!("tokens revoked for a principal");
        Ok(now)
    }

    /// Creates the first administrator: `admin` at `CN`, without expiry. Refused when a live
    /// root grant exists.
    pub async fn bootstrap_admin(&self, sub: &str) -> Result<Option<GrantRecord>, VaultError> {
        if !valid_subject(sub) {
            return Err(VaultError::Validation(crate::domain::ValidationErrors(vec![
                crate::domain::ValidationError { field: "sub".into(), rule: crate::domain::identifiers::Rule::Format },
            ])));
        }
        let record = GrantRecord {
            id: Uuid::now_v7(),
            principal: sub.to_owned(),
            role: BOOTSTRAP_ROLE.to_owned(),
            region: crate::domain::RegionId::GROUP.to_owned(),
            granted_by: BOOTSTRAP_GRANTOR.to_owned(),
            parent_id: None,
            created_at: Utc::now(),
            expires_at: None,
            revoked_at: None,
            revoked_by: None,
        };
        let audit = crate::audit::AuditHandle::detached("grant.bootstrap");
        audit.set_principal(BOOTSTRAP_GRANTOR);
        match self.store.insert_bootstrap_grant(&record, &audit.closed(201)).await? {
            BootstrapOutcome::Created => {
                self.refresh_grants().await;
                Ok(Some(record))
            }
            BootstrapOutcome::AlreadyBootstrapped => Ok(None),
        }
    }
}

//! Delegated administration: granting roles at region nodes, listing and revoking grants,
//! revoking a principal's tokens, and bootstrapping the first administrator.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::idempotency::Remembered;
use super::{Caller, Vault, VaultError};
use crate::auth::valid_subject;
use crate::authz::{Action, Delegable, Denied, GrantStatus};
use crate::domain::GrantDraft;
use crate::store::{BootstrapOutcome, GrantQuery, GrantRecord};

/// The role the bootstrap grant carries by default.
pub const BOOTSTRAP_ROLE: &str = "admin";
/// The roles `custodia admin bootstrap --role` may create: the roots of the administration and
/// audit lines.
pub const BOOTSTRAP_ROLES: [&str; 2] = ["admin", "security_officer"];
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
        let status = self.authorizer().grants().snapshot().status(&record, Utc::now());
        GrantView { record, status }
    }

    /// Makes the local snapshot current after a change, so the caller's next request sees it.
    async fn refresh_grants(&self) {
        if let Err(e) = self.authorizer().grants().reload().await {
            tracing::warn!(error = %e, "grant snapshot not refreshed; the poller will retry");
        }
    }

    /// Grants `draft.role` at `draft.region` to `draft.principal`, delegated under one of the
    /// caller's grants.
    #[tracing::instrument(skip_all)]
    pub async fn create_grant(&self, caller: &Caller, draft: GrantDraft) -> Result<GrantView, VaultError> {
        // Only a grant manager learns anything, even about validation.
        let permit = self.admit(caller, Action::CreateGrant)?;
        let now = Utc::now();
        let policy = self.authorizer().policy();
        let valid = draft.validate(self.regions, |r| policy.is_role(r), valid_subject, now)?;
        caller.audit.add_subject_region(&valid.region);
        let delegation = self.gate.delegation(
            &permit,
            &caller.principal,
            &valid.principal,
            &valid.role,
            &valid.region,
            valid.expires_at,
        )?;
        let duty = policy.duty(&valid.role).map(|d| d.as_str()).unwrap_or_default().to_owned();
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
            duty,
        };
        caller.audit.set_grant(delegation.parent);
        if let Some(Remembered::Grant { id }) = self.replay(caller).await? {
            let first = self.store.grant(id).await?.ok_or(VaultError::NotFound)?;
            return Ok(self.view(first));
        }
        let mut event = caller.audit.closed(201);
        self.remember(caller, &Remembered::Grant { id: record.id }, &mut event)?;
        if let Err(e) = self.store.insert_grant(&record, &event).await {
            let failed: VaultError = match e {
                // Another grant of another duty won a race past the snapshot check: the
                // database refused this one.
                crate::store::StoreError::SeparationOfDuties => Denied::SeparationOfDuties.into(),
                other => other.into(),
            };
            return match self.replay_after(caller, failed).await? {
                Remembered::Grant { id } => {
                    let first = self.store.grant(id).await?.ok_or(VaultError::NotFound)?;
                    Ok(self.view(first))
                }
                _ => Err(VaultError::IdempotencyKeyReused),
            };
        }
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
        let permit = self.admit(caller, Action::GrantList)?;
        let limit = page_size.unwrap_or(50).clamp(1, MAX_PAGE);
        let query = GrantQuery { scopes: permit.scopes(), principal, after, limit: limit + 1 };
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
        let permit = self.admit(caller, Action::RevokeGrant)?;
        let record = self.store.grant(id).await?.ok_or(VaultError::NotFound)?;
        // Bounded exactly like granting: scope (else hidden), delegable role, expiry.
        let by = self.gate.revocation(&permit, &record)?;
        caller.audit.set_grant(by);
        if let Some(region) = self.regions.parse(&record.region) {
            caller.audit.add_subject_region(&region);
        }
        self.store.revoke_grant(id, &caller.principal.sub, Utc::now(), &caller.audit.closed(200)).await?;
        caller.audit.mark_recorded();
        self.refresh_grants().await;
        tracing::info!(grant_id = %id, "grant revoked");
        let record = self.store.grant(id).await?.ok_or(VaultError::NotFound)?;
        Ok(self.view(record))
    }

    /// Most grants a region tree shows.
    pub const TREE_LIMIT: usize = 1_000;

    /// The region nodes the caller's grant listing covers (its subtrees' roots) and the grants
    /// inside them (at most [`Vault::TREE_LIMIT`], oldest first), for the region tree.
    #[tracing::instrument(skip_all)]
    pub async fn grant_tree(
        &self,
        caller: &Caller,
    ) -> Result<(Vec<crate::domain::RegionId>, Vec<GrantView>), VaultError> {
        let permit = self.admit(caller, Action::GrantList)?;
        let scopes = permit.scopes();
        let mut out = Vec::new();
        let mut after = None;
        while out.len() < Self::TREE_LIMIT {
            let query = GrantQuery { scopes: scopes.clone(), principal: None, after, limit: MAX_PAGE };
            let page = self.store.grants_page(&query).await?;
            let full = page.len() == MAX_PAGE as usize;
            after = page.last().map(|g| g.id);
            out.extend(page.into_iter().map(|r| self.view(r)));
            if !full {
                break;
            }
        }
        out.truncate(Self::TREE_LIMIT);
        Ok((scopes, out))
    }

    /// What the caller could grant now, for a grant form (roles it may hand out, where, until
    /// when). Admitted as reading grants: drawing the form grants nothing, and the grant itself
    /// is decided again, by [`Vault::create_grant`].
    #[tracing::instrument(skip_all)]
    pub async fn delegation_options(&self, caller: &Caller) -> Result<Vec<Delegable>, VaultError> {
        self.admit(caller, Action::GrantList)?;
        Ok(self.gate.delegable(&caller.principal))
    }

    /// A grant in the caller's scope and what revoking it would suspend: the grants delegated
    /// under it that are in force now. Out of scope (or unknown) is 404.
    #[tracing::instrument(skip_all)]
    pub async fn revocation_preview(
        &self,
        caller: &Caller,
        id: Uuid,
    ) -> Result<(GrantView, Vec<GrantView>), VaultError> {
        let permit = self.admit(caller, Action::GrantList)?;
        let record = self.store.grant(id).await?.ok_or(VaultError::NotFound)?;
        let region = self.regions.parse(&record.region).ok_or(VaultError::NotFound)?;
        if !permit.scopes().iter().any(|s| s.contains(&region)) {
            return Err(VaultError::NotFound);
        }
        let now = Utc::now();
        let snapshot = self.authorizer().grants().snapshot();
        let suspended = snapshot
            .delegated_under(id)
            .into_iter()
            .filter(|g| snapshot.status(&g.record, now) == GrantStatus::Active)
            .map(|g| self.view(g.record.clone()))
            .collect();
        Ok((self.view(record), suspended))
    }

    /// A principal's grants in the caller's scope, each with the grants above it in its
    /// delegation chain that also lie in the caller's scope (nearest first; the rest of the
    /// chain, above the caller's own grants, is not shown).
    #[tracing::instrument(skip_all)]
    pub async fn principal_grants(
        &self,
        caller: &Caller,
        sub: &str,
    ) -> Result<Vec<(GrantView, Vec<GrantView>)>, VaultError> {
        let permit = self.admit(caller, Action::GrantList)?;
        if !valid_subject(sub) {
            return Err(VaultError::NotFound);
        }
        let scopes = permit.scopes();
        let query =
            GrantQuery { scopes: scopes.clone(), principal: Some(sub.to_owned()), after: None, limit: MAX_PAGE };
        let records = self.store.grants_page(&query).await?;
        let snapshot = self.authorizer().grants().snapshot();
        let in_scope = |region: &Option<crate::domain::RegionId>| {
            region.as_ref().is_some_and(|r| scopes.iter().any(|s| s.contains(r)))
        };
        Ok(records
            .into_iter()
            .map(|record| {
                let chain = snapshot
                    .chain_above(record.id)
                    .into_iter()
                    .take_while(|g| in_scope(&g.region))
                    .map(|g| self.view(g.record.clone()))
                    .collect();
                (self.view(record), chain)
            })
            .collect())
    }

    /// Makes every token of `sub` issued until now fail. The caller's management scope must
    /// cover every live grant `sub` holds.
    #[tracing::instrument(skip_all)]
    pub async fn revoke_tokens(&self, caller: &Caller, sub: &str) -> Result<DateTime<Utc>, VaultError> {
        let permit = self.admit(caller, Action::RevokeTokens)?;
        if !valid_subject(sub) {
            return Err(VaultError::NotFound);
        }
        self.gate.token_revocation(&permit, sub)?;
        let now = Utc::now();
        self.store.revoke_tokens(sub, now, &caller.audit.closed(200)).await?;
        caller.audit.mark_recorded();
        self.refresh_grants().await;
        tracing::info!("tokens revoked for a principal");
        Ok(now)
    }

    /// Creates the first holder of `role` — `admin` (the first administrator) or
    /// `security_officer` (the first auditor, who then appoints the others along the audit
    /// line) — at `CN`, without expiry. Refused when a live root grant of that role exists.
    pub async fn bootstrap(&self, sub: &str, role: &str) -> Result<Option<GrantRecord>, VaultError> {
        let invalid = |field: &str| {
            VaultError::Validation(crate::domain::ValidationErrors(vec![crate::domain::ValidationError {
                field: field.into(),
                rule: crate::domain::identifiers::Rule::Format,
            }]))
        };
        if !valid_subject(sub) {
            return Err(invalid("sub"));
        }
        if !BOOTSTRAP_ROLES.contains(&role) {
            return Err(invalid("role"));
        }
        let duty = self.authorizer().policy().duty(role).map(|d| d.as_str()).unwrap_or_default().to_owned();
        let record = GrantRecord {
            id: Uuid::now_v7(),
            principal: sub.to_owned(),
            role: role.to_owned(),
            region: crate::domain::RegionId::GROUP.to_owned(),
            granted_by: BOOTSTRAP_GRANTOR.to_owned(),
            parent_id: None,
            created_at: Utc::now(),
            expires_at: None,
            revoked_at: None,
            revoked_by: None,
            duty,
        };
        let audit = crate::audit::AuditHandle::detached("grant.bootstrap");
        audit.set_principal(BOOTSTRAP_GRANTOR);
        audit.add_subject_region(&crate::domain::RegionId::group());
        match self.store.insert_bootstrap_grant(&record, &audit.closed(201)).await {
            Ok(BootstrapOutcome::Created) => {
                self.refresh_grants().await;
                Ok(Some(record))
            }
            Ok(BootstrapOutcome::AlreadyBootstrapped) => Ok(None),
            Err(crate::store::StoreError::SeparationOfDuties) => Err(Denied::SeparationOfDuties.into()),
            Err(e) => Err(e.into()),
        }
    }

    /// Creates the first administrator (`admin` at `CN`); see [`Vault::bootstrap`].
    pub async fn bootstrap_admin(&self, sub: &str) -> Result<Option<GrantRecord>, VaultError> {
        self.bootstrap(sub, BOOTSTRAP_ROLE).await
    }
}

//! Authorization: what a principal may do, to which customers, for which purpose.
//!
//! A decision combines the role policy ([`policy`]: casbin, roles × actions × purposes) with
//! the principal's live grants ([`grants`]: role at a region node, covering its subtree). A
//! token alone gets nothing. Every request that discloses or changes customer, audit or grant
//! data is decided by the [`gate`]. This module decides; it never reads customer data and never
//! writes anything.

pub mod gate;
pub mod grants;
pub mod policy;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::auth::Principal;
use crate::domain::RegionId;
pub use gate::{Budget, Delegable, Gate, Permit, RecordAccess};
pub use grants::{GrantCache, GrantStatus, Snapshot};
pub use policy::{Duty, Policy, PolicyError};

/// Something a principal asks to do. The names are those of `policies/policy.csv`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    CreateCustomer,
    ReadCustomer,
    UpdateCustomer,
    SearchCustomers,
    BatchGetCustomers,
    RevealFields,
    ExportCustomer,
    EraseCustomer,
    RestrictCustomer,
    AccessLog,
    CreateGrant,
    GrantList,
    RevokeGrant,
    RevokeTokens,
    ReadAudit,
    VerifyAudit,
    AuditAlerts,
    ManageKeys,
}

impl Action {
    pub const ALL: [Action; 18] = [
        Action::CreateCustomer,
        Action::ReadCustomer,
        Action::UpdateCustomer,
        Action::SearchCustomers,
        Action::BatchGetCustomers,
        Action::RevealFields,
        Action::ExportCustomer,
        Action::EraseCustomer,
        Action::RestrictCustomer,
        Action::AccessLog,
        Action::CreateGrant,
        Action::GrantList,
        Action::RevokeGrant,
        Action::RevokeTokens,
        Action::ReadAudit,
        Action::VerifyAudit,
        Action::AuditAlerts,
        Action::ManageKeys,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::CreateCustomer => "customer.create",
            Action::ReadCustomer => "customer.read",
            Action::UpdateCustomer => "customer.update",
            Action::SearchCustomers => "customer.search",
            Action::BatchGetCustomers => "customer.batch_get",
            Action::RevealFields => "customer.reveal",
            Action::ExportCustomer => "customer.export",
            Action::EraseCustomer => "customer.erase",
            Action::RestrictCustomer => "customer.restrict",
            Action::AccessLog => "customer.access_log",
            Action::CreateGrant => "grant.create",
            Action::GrantList => "grant.list",
            Action::RevokeGrant => "grant.revoke",
            Action::RevokeTokens => "principal.revoke_tokens",
            Action::ReadAudit => "audit.read",
            Action::VerifyAudit => "audit.verify",
            Action::AuditAlerts => "audit.alerts",
            Action::ManageKeys => "keys.manage",
        }
    }

    pub fn parse(s: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.as_str() == s)
    }

    /// Whether the action touches customer data (and so needs a stated purpose).
    pub fn is_data(self) -> bool {
        self.as_str().starts_with("customer.")
    }
}

/// A refusal. Carries nothing about the record it concerns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// No live grant of the principal permits the action.
    #[error("action not permitted")]
    Action,
    /// A data request without `X-Purpose`.
    #[error("purpose required")]
    PurposeRequired,
    /// The stated purpose is unknown or not allowed for the principal's roles.
    #[error("purpose not allowed")]
    PurposeNotAllowed,
    /// The record lies outside the principal's scope (answered like a missing record).
    #[error("record out of scope")]
    OutOfScope,
    /// A new record or grant would lie outside the principal's scope.
    #[error("region outside the caller's scope")]
    RegionOutOfScope,
    #[error("the role may not be delegated by the caller's grants")]
    DelegationRole,
    #[error("the expiry lies beyond the caller's own grant")]
    DelegationExpiry,
    #[error("a principal may not grant to itself")]
    SelfGrant,
    #[error("the principal holds roles of another duty")]
    SeparationOfDuties,
    /// The principal has an open bulk-access alert.
    #[error("blocked by a bulk-access alert")]
    Blocked,
    /// None of the caller's roles at the record's scope may reveal a requested field.
    #[error("reveal not allowed")]
    RevealNotAllowed,
    /// The record is restricted (PIPL art. 47): only legal requests may read it.
    #[error("customer restricted")]
    Restricted,
    /// A field the caller's views hide was asked for by name.
    #[error("field not visible")]
    FieldHidden,
}

/// A live grant of the caller, as a capability holds it.
#[derive(Clone, Debug)]
pub struct Held {
    pub id: Uuid,
    pub role: String,
    pub region: RegionId,
    pub expires_at: Option<DateTime<Utc>>,
}

/// The live grants of one principal that permit one action for one purpose.
#[derive(Clone, Debug, Default)]
pub struct Capability {
    grants: Vec<Held>,
}

impl Capability {
    /// The grants, in grant order.
    pub fn grants(&self) -> impl Iterator<Item = &Held> {
        self.grants.iter()
    }

    /// The grant that covers `region`, if any (the first, by grant order).
    pub fn grant_for(&self, region: &RegionId) -> Option<Uuid> {
        self.grants.iter().find(|g| g.region.contains(region)).map(|g| g.id)
    }

    /// The region nodes covered, without nodes inside others.
    pub fn scopes(&self) -> Vec<RegionId> {
        let mut nodes: Vec<RegionId> = Vec::new();
        for g in &self.grants {
            if nodes.iter().any(|n| n.contains(&g.region)) {
                continue;
            }
            nodes.retain(|n| !g.region.contains(n));
            nodes.push(g.region.clone());
        }
        nodes
    }
}

/// A delegation the caller may make: the grant it is made under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delegation {
    pub parent: Uuid,
}

/// Decides requests.
#[derive(Debug)]
pub struct Authorizer {
    policy: Arc<Policy>,
    grants: Arc<GrantCache>,
}

impl Authorizer {
    pub fn new(policy: Arc<Policy>, grants: Arc<GrantCache>) -> Self {
        Authorizer { policy, grants }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn grants(&self) -> &Arc<GrantCache> {
        &self.grants
    }

    /// Whether the principal's token was issued before its tokens were revoked.
    pub fn token_revoked(&self, principal: &Principal) -> bool {
        match self.grants.snapshot().tokens_not_before(&principal.sub) {
            None => false,
            Some(not_before) => principal.issued_at.is_none_or(|iat| iat.timestamp() <= not_before.timestamp()),
        }
    }

    /// The principal's live grants that permit `action` for `purpose`. Data actions need a
    /// purpose from the catalogue; other actions use their internal purposes.
    pub fn capability(
        &self,
        principal: &Principal,
        action: Action,
        purpose: Option<&str>,
    ) -> Result<Capability, Denied> {
        let purpose = if action.is_data() {
            let p = purpose.ok_or(Denied::PurposeRequired)?;
            if !self.policy.is_purpose(p) {
                return Err(Denied::PurposeNotAllowed);
            }
            Some(p)
        } else {
            None
        };
        let snapshot = self.grants.snapshot();
        if action.is_data() && snapshot.is_blocked(&principal.sub) {
            return Err(Denied::Blocked);
        }
        let now = Utc::now();
        let mut any_role = false;
        let mut cap = Capability::default();
        for g in snapshot.live_grants_of(&principal.sub, now) {
            let role = g.record.role.as_str();
            if !self.policy.permits_action(role, action) {
                continue;
            }
            any_role = true;
            let permitted = match purpose {
                Some(p) => self.policy.permits(role, action, p),
                None => {
                    self.policy.permits(role, action, policy::ADMINISTRATION)
                        || self.policy.permits(role, action, policy::AUDIT)
                }
            };
            if let (true, Some(region)) = (permitted, &g.region) {
                cap.grants.push(Held {
                    id: g.record.id,
                    role: g.record.role.clone(),
                    region: region.clone(),
                    expires_at: g.record.expires_at,
                });
            }
        }
        match (cap.grants.is_empty(), any_role) {
            (false, _) => Ok(cap),
            (true, true) if action.is_data() => Err(Denied::PurposeNotAllowed),
            _ => Err(Denied::Action),
        }
    }
}

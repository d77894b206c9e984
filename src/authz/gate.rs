//! The gate: the one place where a request that discloses or changes customer, audit or grant
//! data gets its decision.
//!
//! A use case asks the gate before it touches anything, and again for each thing it found:
//!
//! 1. [`Gate::admit`] — principal, the action the route declared, the action the use case
//!    implements, the stated purpose → a [`Permit`] (the live grants that allow it, the scopes to
//!    filter lists by in SQL, the budgets to charge) or a refusal (403, nothing looked up).
//! 2. [`Permit::record`] — a customer's region and state → a [`RecordAccess`] (the grant used,
//!    the views to apply, the fields that may be decrypted) or a refusal: hide (404, identical
//!    to a missing record) or restricted (403).
//! 3. [`Gate::delegation`], [`Gate::revocation`], [`Gate::token_revocation`] — grants and tokens,
//!    bounded by the caller's own scope, roles and expiry alike.
//!
//! The gate decides; it never reads customer data, audit pages or grants from storage, and
//! never writes. What it allowed is all a use case may hand back.

use std::borrow::Cow;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Action, Authorizer, Capability, Delegation, Denied};
use crate::auth::Principal;
use crate::domain::{CustomerStatus, RegionId, Regions};
use crate::mask::{FieldView, View, ViewPolicy, Views};
use crate::store::GrantRecord;

/// The only purpose under which restricted records are readable.
pub const LEGAL_REQUEST: &str = "legal_request";

/// A per-principal budget a permitted action is charged to (see `vault::limits`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Budget {
    /// Distinct customers shown within the window (the bulk-access guard).
    Customers,
    /// Exact-match lookups (every search, hit or miss): each one is an oracle.
    Searches,
    /// Plaintext disclosures: reveals and data-subject exports.
    Reveals,
}

impl Action {
    /// The budgets the action is charged to, declared once here.
    pub fn budgets(self) -> &'static [Budget] {
        match self {
            Action::ReadCustomer | Action::BatchGetCustomers => &[Budget::Customers],
            Action::SearchCustomers => &[Budget::Searches, Budget::Customers],
            Action::RevealFields | Action::ExportCustomer => &[Budget::Reveals, Budget::Customers],
            _ => &[],
        }
    }

    /// Whether the action works on restricted records for any purpose (it is how a
    /// restriction is lifted, or ends the record).
    fn lifts_restriction(self) -> bool {
        matches!(self, Action::RestrictCustomer | Action::EraseCustomer)
    }
}

/// The one decision point (see the module doc).
#[derive(Debug)]
pub struct Gate {
    authz: Authorizer,
    views: Arc<ViewPolicy>,
    regions: &'static Regions,
}

/// A permitted action: the grants that allow it, for one principal and purpose.
#[derive(Debug)]
pub struct Permit {
    action: Action,
    legal_request: bool,
    capability: Capability,
}

/// What a principal may hand out under one of its grants (for a grant form): `role` at
/// `scope` or any node inside it, until `until` at the latest (`None`: no limit).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delegable {
    pub role: String,
    pub scope: RegionId,
    pub until: Option<DateTime<Utc>>,
}

/// A permitted access to one customer record.
#[derive(Debug)]
pub struct RecordAccess<'a> {
    /// The grant the access is made under (for the audit).
    pub grant: Uuid,
    /// The record's city.
    pub region: RegionId,
    views: Cow<'a, Views>,
    roles: Vec<&'a str>,
}

impl Gate {
    pub fn new(authz: Authorizer, views: Arc<ViewPolicy>, regions: &'static Regions) -> Self {
        Gate { authz, views, regions }
    }

    pub fn authorizer(&self) -> &Authorizer {
        &self.authz
    }

    /// May `principal` do `implemented` for `purpose` at all? `declared` is the action its
    /// route declared; a use case reached under any other action is refused (fail closed).
    pub fn admit(
        &self,
        principal: &Principal,
        declared: Action,
        implemented: Action,
        purpose: Option<&str>,
    ) -> Result<Permit, Denied> {
        if declared != implemented {
            tracing::error!(
                declared = declared.as_str(),
                implemented = implemented.as_str(),
                "route declares another action than its use case implements: refused"
            );
            return Err(Denied::Action);
        }
        let capability = self.authz.capability(principal, implemented, purpose)?;
        Ok(Permit { action: implemented, legal_request: purpose == Some(LEGAL_REQUEST), capability })
    }

    /// May the permit act on a record in `region` (a city code as stored) in `status`?
    /// Out of scope (or a region the tree does not know) is hidden: 404, as missing.
    pub fn record<'a>(
        &'a self,
        permit: &'a Permit,
        region: &str,
        status: CustomerStatus,
    ) -> Result<RecordAccess<'a>, Denied> {
        let region = self.regions.parse_city(region).ok_or(Denied::OutOfScope)?;
        let grant = permit.capability.grant_for(&region).ok_or(Denied::OutOfScope)?;
        if status == CustomerStatus::Restricted && !permit.legal_request && !permit.action.lifts_restriction() {
            return Err(Denied::Restricted);
        }
        let roles: Vec<&'a str> =
            permit.capability.grants().filter(|g| g.region.contains(&region)).map(|g| g.role.as_str()).collect();
        let views = self.views.views_for(roles.iter().copied());
        Ok(RecordAccess { grant, region, views, roles })
    }

    /// May the permit create a record (or anything else new) in `region`?
    pub fn region(&self, permit: &Permit, region: &RegionId) -> Result<Uuid, Denied> {
        permit.capability.grant_for(region).ok_or(Denied::RegionOutOfScope)
    }

    /// May `principal` (holding `permit` for `grant.create`) grant `role` at `region` until
    /// `expires_at` to `grantee`? Returns the grant the delegation is made under.
    pub fn delegation(
        &self,
        permit: &Permit,
        principal: &Principal,
        grantee: &str,
        role: &str,
        region: &RegionId,
        expires_at: DateTime<Utc>,
    ) -> Result<Delegation, Denied> {
        if grantee == principal.sub {
            return Err(Denied::SelfGrant);
        }
        let parent = self.bounded(permit, region, role, Some(expires_at), Denied::RegionOutOfScope)?;
        // Separation of duties: the grantee may hold live grants of this role's duty only (the
        // database enforces it again, race-free, when the grant is inserted).
        let policy = self.authz.policy();
        let duty = policy.duty(role);
        let snapshot = self.authz.grants().snapshot();
        if snapshot.live_grants_of(grantee, Utc::now()).any(|g| policy.duty(&g.record.role) != duty) {
            return Err(Denied::SeparationOfDuties);
        }
        Ok(Delegation { parent })
    }

    /// What `principal` could grant now (the bounds [`Gate::delegation`] applies: its live
    /// grants that permit `grant.create`, the roles each may hand out, their scope and expiry).
    /// Empty when it may grant nothing. For drawing a grant form; granting itself is decided by
    /// [`Gate::delegation`].
    pub fn delegable(&self, principal: &Principal) -> Vec<Delegable> {
        let Ok(capability) = self.authz.capability(principal, Action::CreateGrant, None) else { return Vec::new() };
        let policy = self.authz.policy();
        let mut out = Vec::new();
        for g in capability.grants() {
            for role in policy.roles() {
                if policy.may_delegate(&g.role, role) {
                    out.push(Delegable { role: role.to_owned(), scope: g.region.clone(), until: g.expires_at });
                }
            }
        }
        out
    }

    /// May the permit (for `grant.revoke`) revoke `target`? Bounded exactly like granting: the
    /// caller could have made it (scope, role, expiry). Outside the scope it is hidden (404).
    pub fn revocation(&self, permit: &Permit, target: &GrantRecord) -> Result<Uuid, Denied> {
        let region = self.regions.parse(&target.region).ok_or(Denied::OutOfScope)?;
        self.bounded(permit, &region, &target.role, target.expires_at, Denied::OutOfScope)
    }

    /// May the permit (for `principal.revoke_tokens`) end every token of `sub`? Only when each
    /// of `sub`'s live grants lies in its scope and has a role it may hand out.
    pub fn token_revocation(&self, permit: &Permit, sub: &str) -> Result<(), Denied> {
        let snapshot = self.authz.grants().snapshot();
        for g in snapshot.live_grants_of(sub, Utc::now()) {
            let region = g.region.as_ref().ok_or(Denied::RegionOutOfScope)?;
            // Scope and role bound it; expiry does not (ending tokens takes nothing beyond now).
            self.bounded(permit, region, &g.record.role, Some(Utc::now()), Denied::RegionOutOfScope)?;
        }
        Ok(())
    }

    /// The grant of `permit` under which `role` at `region` until `expires_at` (`None`: no
    /// expiry) could be handed out: in scope, a role that may delegate `role`, lasting at least
    /// as long (the longest such grant).
    fn bounded(
        &self,
        permit: &Permit,
        region: &RegionId,
        role: &str,
        expires_at: Option<DateTime<Utc>>,
        out_of_scope: Denied,
    ) -> Result<Uuid, Denied> {
        let policy = self.authz.policy();
        let in_scope: Vec<_> = permit.capability.grants().filter(|g| g.region.contains(region)).collect();
        if in_scope.is_empty() {
            return Err(out_of_scope);
        }
        let delegable: Vec<_> = in_scope.into_iter().filter(|g| policy.may_delegate(&g.role, role)).collect();
        if delegable.is_empty() {
            return Err(Denied::DelegationRole);
        }
        let lasts = |own: Option<DateTime<Utc>>| match (own, expires_at) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(own), Some(wanted)) => own >= wanted,
        };
        delegable
            .into_iter()
            .filter(|g| lasts(g.expires_at))
            .max_by_key(|g| g.expires_at.map_or(i64::MAX, |e| e.timestamp_micros()))
            .map(|g| g.id)
            .ok_or(Denied::DelegationExpiry)
    }

    /// May the permit (an audit action) act on something recorded about `region` (an alert's
    /// principal)? `None` — where nobody's region is known — is for the group root alone.
    /// Outside the subtree it is hidden (404).
    pub fn audit_subject(&self, permit: &Permit, region: Option<&str>) -> Result<Uuid, Denied> {
        let region = region.and_then(|r| self.regions.parse(r)).unwrap_or_else(RegionId::group);
        permit.capability.grant_for(&region).ok_or(Denied::OutOfScope)
    }

    /// The smallest region node containing the principal's live grants (where it acts from),
    /// for the audit; `None` without live grants.
    pub fn home_region(&self, sub: &str) -> Option<RegionId> {
        let snapshot = self.authz.grants().snapshot();
        let mut home: Option<RegionId> = None;
        for g in snapshot.live_grants_of(sub, Utc::now()) {
            if let Some(r) = &g.region {
                home = Some(match home {
                    None => r.clone(),
                    Some(h) => h.common_ancestor(r),
                });
            }
        }
        home
    }
}

impl Permit {
    pub fn action(&self) -> Action {
        self.action
    }

    /// The region nodes the permit covers, without nodes inside others: what lists, searches
    /// and batch reads are filtered by, in SQL.
    pub fn scopes(&self) -> Vec<RegionId> {
        self.capability.scopes()
    }

    /// The budgets this action is charged to.
    pub fn budgets(&self) -> &'static [Budget] {
        self.action.budgets()
    }
}

impl RecordAccess<'_> {
    /// The fields to decrypt and how to show each: every field the views show, or those of
    /// `only`. Naming a field the views hide is refused (403) rather than silently dropped.
    pub fn select<'f>(
        &self,
        present: impl Iterator<Item = &'f str>,
        only: Option<&[String]>,
    ) -> Result<Vec<(&'f str, FieldView)>, Denied> {
        if let Some(only) = only {
            if only.iter().any(|f| self.views.get(f).view == View::Hidden) {
                return Err(Denied::FieldHidden);
            }
        }
        Ok(present
            .filter(|name| only.is_none_or(|o| o.iter().any(|x| x == name)))
            .map(|name| (name, self.views.get(name)))
            .filter(|(_, v)| v.view != View::Hidden)
            .collect())
    }

    /// May every field of `fields` be revealed in plaintext through this access?
    pub fn reveal(&self, gate: &Gate, fields: &[String]) -> Result<(), Denied> {
        if fields.iter().all(|f| gate.views.may_reveal(self.roles.iter().copied(), f)) {
            Ok(())
        } else {
            Err(Denied::RevealNotAllowed)
        }
    }
}

//! The role policy: casbin model and policy from `policies/`, the role catalogue with duties,
//! and the purpose catalogue.
//!
//! At start-up the casbin enforcer is evaluated once for every (role, action, purpose) and
//! every delegation, and the answers are kept in a decision table: a request-time check is a
//! hash lookup, with no casbin evaluation and no allocation. The policy is also checked for
//! typos (unknown roles, actions, purposes) and for separation of duties, and refused if either
//! fails. This module decides nothing about regions or grants.

use std::collections::{HashMap, HashSet};

use casbin::{CoreApi, DefaultModel, Enforcer, MgmtApi, StringAdapter};
use serde::Deserialize;

use super::Action;

pub const BUILTIN_MODEL: &str = include_str!("../../policies/model.conf");
pub const BUILTIN_POLICY: &str = include_str!("../../policies/policy.csv");
pub const BUILTIN_ROLES: &str = include_str!("../../policies/roles.toml");
pub const BUILTIN_PURPOSES: &str = include_str!("../../policies/purposes.toml");

/// The internal purpose of grant and principal management.
pub const ADMINISTRATION: &str = "administration";
/// The internal purpose of audit actions.
pub const AUDIT: &str = "audit";

/// What a role is for; a principal holds roles of one duty only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Duty {
    Data,
    Administration,
    Audit,
}

impl Duty {
    /// The name stored with each grant (the database enforces one duty per principal).
    pub fn as_str(self) -> &'static str {
        match self {
            Duty::Data => "data",
            Duty::Administration => "administration",
            Duty::Audit => "audit",
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleFile {
    role: Vec<RoleEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleEntry {
    name: String,
    duty: Duty,
    #[allow(dead_code)]
    description: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PurposeFile {
    purpose: Vec<PurposeEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PurposeEntry {
    name: String,
    #[allow(dead_code)]
    description: String,
}

/// Why the policy was refused.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("policy file does not parse: {0}")]
    Parse(String),
    #[error("casbin: {0}")]
    Casbin(String),
    #[error("policy: {0}")]
    Invalid(String),
}

#[derive(Debug, Default)]
struct RolePolicy {
    duty: Option<Duty>,
    allowed: HashMap<Action, HashSet<String>>,
    delegates: HashSet<String>,
}

/// The evaluated policy.
#[derive(Debug)]
pub struct Policy {
    roles: HashMap<String, RolePolicy>,
    purposes: HashSet<String>,
}

fn action_duty(action: Action) -> Duty {
    match action.as_str().split('.').next() {
        Some("customer") => Duty::Data,
        Some("audit") => Duty::Audit,
        _ => Duty::Administration,
    }
}

impl Policy {
    /// The policy compiled into the binary from `policies/`.
    pub async fn builtin() -> Result<Self, PolicyError> {
        Self::load(BUILTIN_MODEL, BUILTIN_POLICY, BUILTIN_ROLES, BUILTIN_PURPOSES).await
    }

    pub async fn load(model: &str, policy: &str, roles: &str, purposes: &str) -> Result<Self, PolicyError> {
        let roles: RoleFile = toml::from_str(roles).map_err(|e| PolicyError::Parse(e.to_string()))?;
        let purposes: PurposeFile = toml::from_str(purposes).map_err(|e| PolicyError::Parse(e.to_string()))?;
        let purposes: HashSet<String> = purposes.purpose.into_iter().map(|p| p.name).collect();
        if purposes.contains(ADMINISTRATION) || purposes.contains(AUDIT) {
            return Err(PolicyError::Invalid("internal purposes may not be listed in purposes.toml".into()));
        }
        let mut table: HashMap<String, RolePolicy> = HashMap::new();
        for r in roles.role {
            let entry = RolePolicy { duty: Some(r.duty), ..RolePolicy::default() };
            if table.insert(r.name.clone(), entry).is_some() {
                return Err(PolicyError::Invalid(format!("role {} declared twice", r.name)));
            }
        }
        let model = DefaultModel::from_str(model).await.map_err(|e| PolicyError::Casbin(e.to_string()))?;
        let enforcer =
            Enforcer::new(model, StringAdapter::new(policy)).await.map_err(|e| PolicyError::Casbin(e.to_string()))?;

        // Every line must name known things, and respect separation of duties.
        for line in enforcer.get_policy() {
            let [role, act, purpose] = line.as_slice() else {
                return Err(PolicyError::Invalid(format!("policy line with {} fields", line.len())));
            };
            let duty = table
                .get(role)
                .and_then(|r| r.duty)
                .ok_or_else(|| PolicyError::Invalid(format!("unknown role {role}")))?;
            let internal = purpose == ADMINISTRATION || purpose == AUDIT;
            if !internal && !purposes.contains(purpose) {
                return Err(PolicyError::Invalid(format!("unknown purpose {purpose}")));
            }
            let line_duty = if let Some(target) = act.strip_prefix("delegate:") {
                let target_duty = table
                    .get(target)
                    .and_then(|r| r.duty)
                    .ok_or_else(|| PolicyError::Invalid(format!("{role} delegates unknown role {target}")))?;
                // Audit roles are appointed along their own line, never by an administrator.
                if target_duty == Duty::Audit {
                    Duty::Audit
                } else {
                    Duty::Administration
                }
            } else {
                let action = Action::parse(act).ok_or_else(|| PolicyError::Invalid(format!("unknown action {act}")))?;
                if matches!(action, Action::GrantList | Action::CreateGrant | Action::RevokeGrant)
                    && duty == Duty::Audit
                {
                    Duty::Audit // security officers review grants and appoint security officers
                } else {
                    action_duty(action)
                }
            };
            if line_duty != duty {
                return Err(PolicyError::Invalid(format!(
                    "separation of duties: role {role} ({duty:?}) may not be given {act}"
                )));
            }
            let expected_purpose = match line_duty {
                Duty::Data => !internal,
                Duty::Administration => purpose == ADMINISTRATION,
                Duty::Audit => purpose == AUDIT,
            };
            if !expected_purpose {
                return Err(PolicyError::Invalid(format!("{role} {act}: purpose {purpose} does not fit the action")));
            }
        }

        // Evaluate the enforcer for every combination once.
        let all_purposes: Vec<String> =
            purposes.iter().cloned().chain([ADMINISTRATION.to_owned(), AUDIT.to_owned()]).collect();
        let role_names: Vec<String> = table.keys().cloned().collect();
        for role in &role_names {
            let mut allowed: HashMap<Action, HashSet<String>> = HashMap::new();
            for action in Action::ALL {
                for purpose in &all_purposes {
                    let ok = enforcer
                        .enforce((role.as_str(), action.as_str(), purpose.as_str()))
                        .map_err(|e| PolicyError::Casbin(e.to_string()))?;
                    if ok {
                        allowed.entry(action).or_default().insert(purpose.clone());
                    }
                }
            }
            let mut delegates = HashSet::new();
            for target in &role_names {
                let act = format!("delegate:{target}");
                let mut delegable = false;
                for purpose in [ADMINISTRATION, AUDIT] {
                    delegable |= enforcer
                        .enforce((role.as_str(), act.as_str(), purpose))
                        .map_err(|e| PolicyError::Casbin(e.to_string()))?;
                }
                if delegable {
                    delegates.insert(target.clone());
                }
            }
            if let Some(entry) = table.get_mut(role) {
                entry.allowed = allowed;
                entry.delegates = delegates;
            }
        }
        Ok(Policy { roles: table, purposes })
    }

    /// Whether `role` may perform `action` for `purpose`.
    pub fn permits(&self, role: &str, action: Action, purpose: &str) -> bool {
        self.roles.get(role).and_then(|r| r.allowed.get(&action)).is_some_and(|p| p.contains(purpose))
    }

    /// Whether `role` may perform `action` for any purpose.
    pub fn permits_action(&self, role: &str, action: Action) -> bool {
        self.roles.get(role).is_some_and(|r| r.allowed.contains_key(&action))
    }

    /// Whether a holder of `role` may hand out `target`.
    pub fn may_delegate(&self, role: &str, target: &str) -> bool {
        self.roles.get(role).is_some_and(|r| r.delegates.contains(target))
    }

    pub fn is_role(&self, role: &str) -> bool {
        self.roles.contains_key(role)
    }

    /// Every role, by name.
    pub fn roles(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.roles.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// The roles of one duty.
    pub fn roles_with_duty(&self, duty: Duty) -> impl Iterator<Item = &str> {
        self.roles.iter().filter(move |(_, r)| r.duty == Some(duty)).map(|(name, _)| name.as_str())
    }

    pub fn duty(&self, role: &str) -> Option<Duty> {
        self.roles.get(role).and_then(|r| r.duty)
    }

    /// Whether `purpose` is a data purpose of the catalogue.
    pub fn is_purpose(&self, purpose: &str) -> bool {
        self.purposes.contains(purpose)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn builtin_policy_loads_and_decides() {
        let p = Policy::builtin().await.unwrap();
        assert!(p.permits("agent", Action::ReadCustomer, "customer_service"));
        assert!(!p.permits("agent", Action::ReadCustomer, "marketing"));
        assert!(!p.permits("agent", Action::UpdateCustomer, "customer_service"));
        assert!(!p.permits("admin", Action::ReadCustomer, ADMINISTRATION));
        assert!(!p.permits_action("admin", Action::ReadCustomer));
        assert!(p.permits("security_officer", Action::GrantList, AUDIT));
        // Auditors are appointed along their own line, never by administrators.
        assert!(p.may_delegate("security_officer", "security_officer"));
        assert!(!p.may_delegate("security_officer", "agent"));
        assert!(!p.may_delegate("admin", "security_officer"));
        assert!(!p.permits_action("security_officer", Action::RevokeTokens));
        assert!(p.may_delegate("admin", "admin"));
        assert!(p.may_delegate("local_admin", "agent"));
        assert!(!p.may_delegate("local_admin", "risk_officer"));
        assert!(!p.may_delegate("agent", "agent"));
        assert!(p.is_purpose("billing") && !p.is_purpose(ADMINISTRATION));
    }

    #[tokio::test]
    async fn policy_typos_and_duty_mixing_are_refused() {
        let bad_lines = [
            "p, agnet, customer.read, customer_service",
            "p, agent, customer.raed, customer_service",
            "p, agent, customer.read, customer_servce",
            "p, admin, customer.read, administration",
            "p, agent, grant.create, administration",
            "p, security_officer, grant.create, administration",
            "p, security_officer, delegate:agent, audit",
            "p, admin, delegate:security_officer, administration",
            "p, security_officer, keys.manage, audit",
            "p, agent, customer.read, administration",
            "p, admin, delegate:root, administration",
        ];
        for line in bad_lines {
            let err = Policy::load(BUILTIN_MODEL, line, BUILTIN_ROLES, BUILTIN_PURPOSES).await;
            assert!(matches!(err, Err(PolicyError::Invalid(_))), "{line} accepted");
        }
    }
}

//! Authorization: what a principal may do, to which customers.
//!
//! Until grants and roles land, every authenticated principal may use the customer
//! endpoints. This module is the one place that says so: the tiered, grant-based model
//! replaces [`Authorizer::check`] without touching any caller.

use crate::auth::Principal;
use crate::domain::RegionId;

/// Something a principal asks to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    CreateCustomer,
    ReadCustomer,
    UpdateCustomer,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::CreateCustomer => "customer.create",
            Action::ReadCustomer => "customer.read",
            Action::UpdateCustomer => "customer.update",
        }
    }
}

/// A refusal. Carries nothing about the record it concerns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// The principal may not perform the action at all.
    #[error("action not permitted")]
    Action,
    /// The record lies outside the principal's scope (answered like a missing record).
    #[error("record out of scope")]
    OutOfScope,
}

/// Decides requests.
#[derive(Clone, Debug, Default)]
pub struct Authorizer;

impl Authorizer {
    /// Whether `principal` may perform `action` on a customer in `region`.
    pub fn check(&self, _principal: &Principal, _action: Action, _region: &RegionId) -> Result<(), Denied> {
        Ok(())
    }
}

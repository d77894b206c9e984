//! The customer domain: what a customer record is, which fields it may carry, how each
//! field's value is validated and normalised, and the region tree customers live in.
//!
//! Nothing here knows about HTTP, SQL or keys. Plaintext values are held in [`FieldValue`],
//! whose `Debug` never prints the value.

pub mod catalogue;
pub mod customer;
pub mod grant;
pub mod identifiers;
pub mod region;
pub mod synthetic;

pub use catalogue::{Catalogue, FieldKind, FieldSpec, Sensitivity};
pub use customer::{
    CustomerDraft, CustomerKind, CustomerPatch, CustomerStatus, FieldValue, ValidCustomer, ValidPatch, ValidationError,
    ValidationErrors,
};
pub use grant::{GrantDraft, ValidGrant};
pub use region::{RegionId, RegionLevel, Regions};

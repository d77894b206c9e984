//! Field-level views: which fields a role sees plain, masked or not at all ([`views`]), and the
//! masking of each field kind ([`kinds`]).
//!
//! Masking happens here, on the server, before anything leaves the vault. This module never
//! logs values and never stores anything.

pub mod kinds;
pub mod views;

pub use views::{DigitMask, FieldView, View, ViewPolicy, Views};

use crate::domain::{FieldKind, FieldSpec, Regions};

/// What a field shows under `view`: the value, its mask, or nothing.
pub fn apply(spec: &FieldSpec, value: &str, view: FieldView, regions: &Regions) -> Option<String> {
    match view.view {
        View::Hidden => None,
        View::Plain => Some(value.to_owned()),
        View::Masked => Some(match (spec.kind, view.mask) {
            (FieldKind::Mobile | FieldKind::ResidentId | FieldKind::BankCard | FieldKind::CreditCode, Some(m)) => {
                kinds::digits(value, m)
            }
            // A digit kind without a mask cannot occur (checked at load); hide everything.
            (FieldKind::Mobile | FieldKind::ResidentId | FieldKind::BankCard | FieldKind::CreditCode, None) => {
                "*".repeat(value.chars().count())
            }
            (FieldKind::PersonName, _) => kinds::person_name(value),
            (FieldKind::CompanyName, _) => kinds::company_name(value),
            (FieldKind::Email, _) => kinds::email(value),
            (FieldKind::Address, _) => kinds::address(value, regions),
            (FieldKind::BirthDate, _) => kinds::birth_date(value),
        }),
    }
}

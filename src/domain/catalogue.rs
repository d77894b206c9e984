//! The field catalogue (`policies/fields.toml`): which fields a customer record may carry,
//! each with its kind (validator, later masker), sensitivity class and searchability.
//!
//! The catalogue is data reviewed like code; this module parses and checks it and validates
//! single values against it. It never stores, encrypts or discloses anything.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::customer::CustomerKind;
use super::identifiers::{self, Rule};
use super::region::Regions;

/// The catalogue compiled into the binary.
pub const BUILTIN_FIELDS_TOML: &str = include_str!("../../policies/fields.toml");
/// The allocated mobile prefixes compiled into the binary.
pub const BUILTIN_MOBILE_PREFIXES_TOML: &str = include_str!("../../policies/mobile_prefixes.toml");

/// How a field's value is validated and normalised (and, with views, masked).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldKind {
    PersonName,
    ResidentId,
    Mobile,
    Email,
    Address,
    BirthDate,
    BankCard,
    CompanyName,
    CreditCode,
}

impl FieldKind {
    /// Whether exact-match search over a normalised value makes sense for this kind.
    pub fn supports_search(self) -> bool {
        matches!(self, FieldKind::ResidentId | FieldKind::Mobile | FieldKind::Email | FieldKind::CreditCode)
    }
}

/// Sensitivity class of a field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sensitivity {
    /// PIPL personal information.
    Personal,
    /// PIPL art. 28 sensitive personal information.
    Sensitive,
}

/// One field of the catalogue.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldSpec {
    pub name: String,
    pub kind: FieldKind,
    pub class: Sensitivity,
    pub searchable: bool,
    pub applies_to: Vec<CustomerKind>,
    #[serde(default)]
    pub required_for: Vec<CustomerKind>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogueFile {
    field: Vec<FieldSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PrefixFile {
    allocated: Vec<String>,
}

/// An error in the catalogue source.
#[derive(Debug, thiserror::Error)]
pub enum CatalogueError {
    #[error("field catalogue does not parse: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("field catalogue: {0}")]
    Invalid(String),
}

/// The loaded field catalogue.
#[derive(Debug)]
pub struct Catalogue {
    fields: BTreeMap<String, FieldSpec>,
    mobile_prefixes: Vec<String>,
}

impl Catalogue {
    pub fn builtin() -> Result<Self, CatalogueError> {
        Self::from_toml(BUILTIN_FIELDS_TOML, BUILTIN_MOBILE_PREFIXES_TOML)
    }

    pub fn from_toml(fields: &str, prefixes: &str) -> Result<Self, CatalogueError> {
        let file: CatalogueFile = toml::from_str(fields)?;
        let prefixes: PrefixFile = toml::from_str(prefixes)?;
        let mut map = BTreeMap::new();
        for spec in file.field {
            let valid_name = !spec.name.is_empty()
                && spec.name.len() <= 32
                && spec.name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
            if !valid_name {
                return Err(CatalogueError::Invalid(format!("bad field name {:?}", spec.name)));
            }
            if spec.searchable && !spec.kind.supports_search() {
                return Err(CatalogueError::Invalid(format!(
                    "field {} is searchable but its kind has no exact normalised form",
                    spec.name
                )));
            }
            if spec.applies_to.is_empty() {
                return Err(CatalogueError::Invalid(format!("field {} applies to nothing", spec.name)));
            }
            if spec.required_for.iter().any(|k| !spec.applies_to.contains(k)) {
                return Err(CatalogueError::Invalid(format!(
                    "field {} is required for a kind it does not apply to",
                    spec.name
                )));
            }
            if map.insert(spec.name.clone(), spec).is_some() {
                return Err(CatalogueError::Invalid("a field is declared twice".into()));
            }
        }
        let prefix_ok =
            |p: &String| (2..=4).contains(&p.len()) && p.starts_with('1') && p.bytes().all(|b| b.is_ascii_digit());
        if prefixes.allocated.is_empty() || !prefixes.allocated.iter().all(prefix_ok) {
            return Err(CatalogueError::Invalid("mobile prefixes must be 2-4 digit strings starting with 1".into()));
        }
        Ok(Catalogue { fields: map, mobile_prefixes: prefixes.allocated })
    }

    pub fn get(&self, name: &str) -> Option<&FieldSpec> {
        self.fields.get(name)
    }

    pub fn fields(&self) -> impl Iterator<Item = &FieldSpec> {
        self.fields.values()
    }

    /// Validates one value of field `spec`, returning its normalised form.
    pub fn validate(&self, spec: &FieldSpec, raw: &str, regions: &Regions) -> Result<String, Rule> {
        if raw.len() > 1024 {
            return Err(Rule::TooLong);
        }
        match spec.kind {
            FieldKind::PersonName => identifiers::text(raw, 64),
            FieldKind::CompanyName => identifiers::text(raw, 128),
            FieldKind::Address => identifiers::text(raw, 200),
            FieldKind::ResidentId => identifiers::resident_id(raw, |p| regions.province(p).is_some()),
            FieldKind::Mobile => identifiers::mobile(raw, &self.mobile_prefixes),
            FieldKind::Email => identifiers::email(raw),
            FieldKind::BirthDate => identifiers::birth_date(raw),
            FieldKind::BankCard => identifiers::bank_card(raw),
            FieldKind::CreditCode => identifiers::credit_code(raw),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_catalogue_loads() {
        let c = Catalogue::builtin().unwrap();
        for name in [
            "name",
            "resident_id",
            "mobile",
            "email",
            "address",
            "birth_date",
            "bank_card",
            "company_name",
            "credit_code",
        ] {
            assert!(c.get(name).is_some(), "{name} missing");
        }
    }

    #[test]
    fn searchable_free_text_is_refused() {
        let bad = r#"[[field]]
name = "address"
kind = "address"
class = "personal"
searchable = true
applies_to = ["individual"]
"#;
        assert!(matches!(Catalogue::from_toml(bad, BUILTIN_MOBILE_PREFIXES_TOML), Err(CatalogueError::Invalid(_))));
    }
}

//! Customer records as the domain sees them: kinds, statuses, plaintext field values, and the
//! validation of a new record or a change against the field catalogue and the region tree.
//!
//! Plaintext lives only in [`FieldValue`], which zeroizes on drop and never prints its value.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::catalogue::Catalogue;
use super::identifiers::Rule;
use super::region::{RegionId, RegionLevel, Regions};

/// Individual or enterprise customer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CustomerKind {
    Individual,
    Enterprise,
}

impl CustomerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CustomerKind::Individual => "individual",
            CustomerKind::Enterprise => "enterprise",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "individual" => Some(CustomerKind::Individual),
            "enterprise" => Some(CustomerKind::Enterprise),
            _ => None,
        }
    }
}

/// Lifecycle status of a customer record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CustomerStatus {
    Active,
    Dormant,
    Closed,
    /// PIPL art. 47 restriction: kept, readable only for legal requests.
    Restricted,
}

impl CustomerStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CustomerStatus::Active => "active",
            CustomerStatus::Dormant => "dormant",
            CustomerStatus::Closed => "closed",
            CustomerStatus::Restricted => "restricted",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(CustomerStatus::Active),
            "dormant" => Some(CustomerStatus::Dormant),
            "closed" => Some(CustomerStatus::Closed),
            "restricted" => Some(CustomerStatus::Restricted),
            _ => None,
        }
    }
}

/// A plaintext field value. Zeroized on drop; `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct FieldValue(Zeroizing<String>);

impl FieldValue {
    pub fn new(value: String) -> Self {
        FieldValue(Zeroizing::new(value))
    }

    /// The plaintext. Callers must not log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for FieldValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FieldValue(<redacted>)")
    }
}

/// The highest VIP level.
pub const MAX_VIP_LEVEL: i64 = 9;

/// A customer as submitted, not yet validated.
pub struct CustomerDraft {
    pub region: String,
    pub kind: String,
    pub vip_level: Option<i64>,
    pub fields: Vec<(String, FieldValue)>,
}

/// A validated new customer.
#[derive(Debug)]
pub struct ValidCustomer {
    pub region: RegionId,
    pub kind: CustomerKind,
    pub vip_level: i16,
    pub fields: BTreeMap<String, FieldValue>,
}

/// A change to an existing customer, not yet validated. `None` removes a field.
pub struct CustomerPatch {
    pub vip_level: Option<i64>,
    pub fields: Vec<(String, Option<FieldValue>)>,
}

/// A validated change.
#[derive(Debug, Default)]
pub struct ValidPatch {
    pub vip_level: Option<i16>,
    pub set: BTreeMap<String, FieldValue>,
    pub remove: Vec<String>,
}

/// One broken rule: which input (a path such as `fields.mobile`) and which rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidationError {
    pub field: String,
    pub rule: Rule,
}

/// Every rule a submission broke.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("validation failed on {} input(s)", .0.len())]
pub struct ValidationErrors(pub Vec<ValidationError>);

/// The name under which an input field is reported: its own name when it is a plain
/// identifier, never an arbitrary submitted string.
fn report_name(name: &str) -> String {
    let safe = !name.is_empty()
        && name.len() <= 32
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if safe {
        format!("fields.{name}")
    } else {
        "fields".to_owned()
    }
}

fn vip_level(value: Option<i64>, errors: &mut Vec<ValidationError>) -> Option<i16> {
    match value {
        None => None,
        Some(v) if (0..=MAX_VIP_LEVEL).contains(&v) => Some(v as i16),
        Some(_) => {
            errors.push(ValidationError { field: "vip_level".into(), rule: Rule::OutOfRange });
            None
        }
    }
}

impl CustomerDraft {
    pub fn validate(self, catalogue: &Catalogue, regions: &Regions) -> Result<ValidCustomer, ValidationErrors> {
        let mut errors = Vec::new();
        let region = match regions.parse(&self.region) {
            Some(r) if r.level() == RegionLevel::City => Some(r),
            Some(_) => {
                errors.push(ValidationError { field: "region".into(), rule: Rule::CityRequired });
                None
            }
            None => {
                errors.push(ValidationError { field: "region".into(), rule: Rule::UnknownRegion });
                None
            }
        };
        let kind = CustomerKind::parse(&self.kind);
        if kind.is_none() {
            errors.push(ValidationError { field: "kind".into(), rule: Rule::Format });
        }
        let vip = vip_level(self.vip_level, &mut errors).unwrap_or(0);
        let mut fields = BTreeMap::new();
        for (name, value) in self.fields {
            match check_field(catalogue, regions, kind, &name, &value) {
                Ok(normalised) => {
                    fields.insert(name, normalised);
                }
                Err(e) => errors.push(e),
            }
        }
        if let Some(kind) = kind {
            for spec in catalogue.fields() {
                if spec.required_for.contains(&kind) && !fields.contains_key(&spec.name) {
                    errors.push(ValidationError { field: report_name(&spec.name), rule: Rule::Required });
                }
            }
        }
        match (region, kind) {
            (Some(region), Some(kind)) if errors.is_empty() => {
                Ok(ValidCustomer { region, kind, vip_level: vip, fields })
            }
            _ => Err(ValidationErrors(errors)),
        }
    }
}

fn check_field(
    catalogue: &Catalogue,
    regions: &Regions,
    kind: Option<CustomerKind>,
    name: &str,
    value: &FieldValue,
) -> Result<FieldValue, ValidationError> {
    let field = report_name(name);
    let spec = catalogue.get(name).ok_or_else(|| ValidationError { field: field.clone(), rule: Rule::UnknownField })?;
    if let Some(kind) = kind {
        if !spec.applies_to.contains(&kind) {
            return Err(ValidationError { field, rule: Rule::NotApplicable });
        }
    }
    catalogue
        .validate(spec, value.expose(), regions)
        .map(FieldValue::new)
        .map_err(|rule| ValidationError { field, rule })
}

impl CustomerPatch {
    /// Validates the change against the customer's kind and its current field names.
    pub fn validate(
        self,
        kind: CustomerKind,
        present: &[String],
        catalogue: &Catalogue,
        regions: &Regions,
    ) -> Result<ValidPatch, ValidationErrors> {
        let mut errors = Vec::new();
        let mut patch = ValidPatch { vip_level: vip_level(self.vip_level, &mut errors), ..ValidPatch::default() };
        for (name, value) in self.fields {
            match value {
                Some(value) => match check_field(catalogue, regions, Some(kind), &name, &value) {
                    Ok(v) => {
                        patch.set.insert(name, v);
                    }
                    Err(e) => errors.push(e),
                },
                None => match catalogue.get(&name) {
                    None => errors.push(ValidationError { field: report_name(&name), rule: Rule::UnknownField }),
                    Some(spec) if spec.required_for.contains(&kind) => {
                        errors.push(ValidationError { field: report_name(&name), rule: Rule::Required })
                    }
                    Some(_) => {
                        if present.contains(&name) {
                            patch.remove.push(name);
                        }
                    }
                },
            }
        }
        if errors.is_empty() {
            Ok(patch)
        } else {
            Err(ValidationErrors(errors))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft(region: &str, kind: &str, fields: &[(&str, &str)]) -> CustomerDraft {
        CustomerDraft {
            region: region.into(),
            kind: kind.into(),
            vip_level: None,
            fields: fields.iter().map(|(k, v)| (k.to_string(), FieldValue::new(v.to_string()))).collect(),
        }
    }

    #[test]
    fn valid_individual() {
        let c = Catalogue::builtin().unwrap();
        let v = draft("3201", "individual", &[("name", "张三"), ("mobile", "+86 138 1234 5678")])
            .validate(&c, Regions::builtin())
            .unwrap();
        assert_eq!(v.fields["mobile"].expose(), "13812345678");
    }

    #[test]
    fn errors_name_field_and_rule_never_value() {
        let c = Catalogue::builtin().unwrap();
        let err =
            draft("32", "individual", &[("name", "张三"), ("resident_id", "110105194912310021"), ("x\"<script>", "v")])
                .validate(&c, Regions::builtin())
                .unwrap_err();
        let rendered = format!("{err:?}");
        assert!(!rendered.contains("110105194912310021") && !rendered.contains("script"));
        assert!(err.0.contains(&ValidationError { field: "region".into(), rule: Rule::CityRequired }));
        assert!(err.0.contains(&ValidationError { field: "fields.resident_id".into(), rule: Rule::CheckCharacter }));
        assert!(err.0.contains(&ValidationError { field: "fields".into(), rule: Rule::UnknownField }));
    }

    #[test]
    fn enterprise_requires_company_fields() {
        let c = Catalogue::builtin().unwrap();
        let err =
            draft("3201", "enterprise", &[("birth_date", "1980-01-01")]).validate(&c, Regions::builtin()).unwrap_err();
        assert!(err.0.contains(&ValidationError { field: "fields.birth_date".into(), rule: Rule::NotApplicable }));
        assert!(err.0.contains(&ValidationError { field: "fields.company_name".into(), rule: Rule::Required }));
    }

    #[test]
    fn field_value_debug_is_redacted() {
        assert_eq!(format!("{:?}", FieldValue::new("13812345678".into())), "FieldValue(<redacted>)");
    }
}

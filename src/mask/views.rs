//! The view policy (`policies/views.toml`): for each data role and field, plain, masked or
//! hidden; the digit masks; which fields a role may reveal.
//!
//! Checked at start-up so that no principal can rebuild a masked value by combining what its
//! views show: a resident ID masked to hide (nearly) exactly the birth date must not stand
//! beside the birth date, and one field must never be masked two ways in views one principal
//! can hold together (every pair of roles of one duty is checked). This module decides views;
//! it never sees a value.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;

use crate::authz::{Duty, Policy};
use crate::domain::{Catalogue, FieldKind};

/// How a field is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum View {
    Hidden,
    Masked,
    Plain,
}

impl View {
    pub fn as_str(self) -> &'static str {
        match self {
            View::Hidden => "hidden",
            View::Masked => "masked",
            View::Plain => "plain",
        }
    }
}

/// Characters kept by a digit-like mask.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DigitMask {
    pub keep_first: u8,
    pub keep_last: u8,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ViewFile {
    masks: HashMap<String, DigitMask>,
    role: HashMap<String, RoleEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleEntry {
    #[serde(default)]
    fields: HashMap<String, View>,
    #[serde(default)]
    reveal: Vec<String>,
    /// Per-role overrides of the digit masks.
    #[serde(default)]
    masks: HashMap<String, DigitMask>,
}

/// Why the view policy was refused.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error("views.toml does not parse: {0}")]
    Parse(String),
    #[error("views.toml: {0}")]
    Invalid(String),
}

/// How one field is shown to a set of roles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldView {
    pub view: View,
    pub mask: Option<DigitMask>,
}

/// The views of a set of roles, field by field.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Views(BTreeMap<String, FieldView>);

impl Views {
    pub fn get(&self, field: &str) -> FieldView {
        self.0.get(field).copied().unwrap_or(FieldView { view: View::Hidden, mask: None })
    }
}

/// The loaded view policy.
#[derive(Debug)]
pub struct ViewPolicy {
    /// role → field → view (every catalogue field present).
    roles: HashMap<String, Views>,
    reveal: HashMap<String, Vec<String>>,
}

pub const BUILTIN_VIEWS: &str = include_str!("../../policies/views.toml");

fn digit_kind(kind: FieldKind) -> bool {
    matches!(kind, FieldKind::Mobile | FieldKind::ResidentId | FieldKind::BankCard | FieldKind::CreditCode)
}

/// Fewest unknown digits (of the 17 before the check character) a masked resident ID must keep
/// hidden under everything else a view shows: with the check character confirming guesses,
/// 6 unknown digits still leave ~90,000 candidates.
pub const MIN_HIDDEN_ID_DIGITS: usize = 6;

impl ViewPolicy {
    pub fn builtin(catalogue: &Catalogue, policy: &Policy) -> Result<Self, ViewError> {
        Self::load(BUILTIN_VIEWS, catalogue, policy)
    }

    pub fn load(text: &str, catalogue: &Catalogue, policy: &Policy) -> Result<Self, ViewError> {
        let file: ViewFile = toml::from_str(text).map_err(|e| ViewError::Parse(e.to_string()))?;
        let bad = |m: String| Err(ViewError::Invalid(m));
        for (field, mask) in &file.masks {
            match catalogue.get(field) {
                Some(spec) if digit_kind(spec.kind) => check_mask(spec.kind, *mask)?,
                _ => return bad(format!("[masks] {field}: not a digit-like catalogue field")),
            }
        }
        let mut roles = HashMap::new();
        let mut reveal = HashMap::new();
        for (role, entry) in &file.role {
            if policy.duty(role) != Some(Duty::Data) {
                return bad(format!("role {role}: not a data role of roles.toml"));
            }
            let mut views = BTreeMap::new();
            for spec in catalogue.fields() {
                let view = entry.fields.get(&spec.name).copied().unwrap_or(View::Masked);
                let mask = if digit_kind(spec.kind) && view == View::Masked {
                    let m = entry.masks.get(&spec.name).or(file.masks.get(&spec.name)).copied();
                    match m {
                        Some(m) => {
                            check_mask(spec.kind, m)?;
                            Some(m)
                        }
                        None => return bad(format!("role {role}: field {} is masked but has no mask", spec.name)),
                    }
                } else {
                    None
                };
                views.insert(spec.name.clone(), FieldView { view, mask });
            }
            for field in entry.fields.keys().chain(entry.reveal.iter()).chain(entry.masks.keys()) {
                if catalogue.get(field).is_none() {
                    return bad(format!("role {role}: unknown field {field}"));
                }
            }
            roles.insert(role.clone(), Views(views));
            reveal.insert(role.clone(), entry.reveal.clone());
        }
        for r in policy.roles_with_duty(Duty::Data) {
            if !roles.contains_key(r) {
                return bad(format!("data role {r} has no views"));
            }
        }
        let vp = ViewPolicy { roles, reveal };
        vp.check_combinations(catalogue, policy)?;
        Ok(vp)
    }

    /// The (role, field) pairs where a role may search a field by exact value while its views
    /// mask or hide that field: each such search is an oracle that confirms a guess of what
    /// the mask withholds, so these roles need a search budget (`searches_per_hour`) and the
    /// miss alarm (`search_miss_alarm`). Sorted, for stable messages.
    pub fn search_oracles(&self, catalogue: &Catalogue, policy: &Policy) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (role, views) in &self.roles {
            if !policy.permits_action(role, crate::authz::Action::SearchCustomers) {
                continue;
            }
            for spec in catalogue.fields().filter(|f| f.searchable) {
                if views.get(&spec.name).view != View::Plain {
                    out.push((role.clone(), spec.name.clone()));
                }
            }
        }
        out.sort();
        out
    }

    /// The start-up lint of search: without a search budget or without the miss alarm, no role
    /// may search a field by exact value that its views mask or hide.
    pub fn check_search_budget(
        &self,
        catalogue: &Catalogue,
        policy: &Policy,
        searches_per_hour: u32,
        search_miss_alarm: u32,
    ) -> Result<(), ViewError> {
        if searches_per_hour > 0 && search_miss_alarm > 0 {
            return Ok(());
        }
        match self.search_oracles(catalogue, policy).first() {
            None => Ok(()),
            Some((role, field)) => Err(ViewError::Invalid(format!(
                "role {role} may search {field} by exact value while its views mask or hide it: \
                 searches_per_hour and search_miss_alarm must be positive (each search is an oracle for the masked value)"
            ))),
        }
    }

    /// Refuses views that one principal could combine to rebuild a masked value.
    fn check_combinations(&self, catalogue: &Catalogue, policy: &Policy) -> Result<(), ViewError> {
        let names: Vec<&String> = self.roles.keys().collect();
        for (i, a) in names.iter().enumerate() {
            for b in &names[i..] {
                if policy.duty(a) != policy.duty(b) {
                    continue;
                }
                for spec in catalogue.fields() {
                    let (va, vb) = (self.roles[*a].get(&spec.name), self.roles[*b].get(&spec.name));
                    if va.view == View::Masked && vb.view == View::Masked && va.mask != vb.mask {
                        return Err(ViewError::Invalid(format!(
                            "field {} is masked two different ways by roles {a} and {b}: combined they reveal more",
                            spec.name
                        )));
                    }
                }
                let merged = self.views_for([a.as_str(), b.as_str()]);
                check_resident_id(catalogue, &merged)
                    .map_err(|m| ViewError::Invalid(format!("roles {a} + {b}: {m}")))?;
            }
        }
        Ok(())
    }

    /// The views of a principal acting through `roles`: per field, the most revealing.
    pub fn views_for<'a>(&self, roles: impl IntoIterator<Item = &'a str>) -> Cow<'_, Views> {
        let mut distinct: Vec<&str> = Vec::with_capacity(2);
        for role in roles {
            if self.roles.contains_key(role) && !distinct.contains(&role) {
                distinct.push(role);
            }
        }
        // One role (the usual case): its views as loaded, without building a map per request.
        if let [role] = distinct.as_slice() {
            if let Some(v) = self.roles.get(*role) {
                return Cow::Borrowed(v);
            }
        }
        let mut out: BTreeMap<String, FieldView> = BTreeMap::new();
        for role in distinct {
            let Some(v) = self.roles.get(role) else { continue };
            for (field, fv) in &v.0 {
                match out.get(field) {
                    Some(cur) if cur.view >= fv.view => {}
                    _ => {
                        out.insert(field.clone(), *fv);
                    }
                }
            }
        }
        Cow::Owned(Views(out))
    }

    /// Whether a principal acting through `roles` may reveal `field`.
    pub fn may_reveal<'a>(&self, roles: impl IntoIterator<Item = &'a str>, field: &str) -> bool {
        roles.into_iter().any(|r| self.reveal.get(r).is_some_and(|f| f.iter().any(|x| x == field)))
    }
}

fn check_mask(kind: FieldKind, m: DigitMask) -> Result<(), ViewError> {
    let (first, last) = (usize::from(m.keep_first), usize::from(m.keep_last));
    let total = match kind {
        FieldKind::Mobile => 11,
        FieldKind::ResidentId | FieldKind::CreditCode => 18,
        FieldKind::BankCard => 16,
        _ => 0,
    };
    if kind == FieldKind::BankCard && (first > 6 || last > 4) {
        return Err(ViewError::Invalid(
            "bank card masks may keep at most the first 6 and last 4 digits (PCI DSS)".into(),
        ));
    }
    if first + last + 4 > total {
        return Err(ViewError::Invalid(format!("{kind:?} mask keeps too much: at least 4 characters must be hidden")));
    }
    Ok(())
}

/// The resident ID's 17 leading digits left unknown by a set of views.
fn check_resident_id(catalogue: &Catalogue, views: &Views) -> Result<(), String> {
    for id_spec in catalogue.fields().filter(|f| f.kind == FieldKind::ResidentId) {
        let id = views.get(&id_spec.name);
        let Some(mask) = id.mask.filter(|_| id.view == View::Masked) else { continue };
        let mut known = [false; 17];
        for (i, k) in known.iter_mut().enumerate() {
            *k = i < usize::from(mask.keep_first) || i >= 18 - usize::from(mask.keep_last);
        }
        for bd in catalogue.fields().filter(|f| f.kind == FieldKind::BirthDate) {
            let revealed = match views.get(&bd.name).view {
                View::Plain => 6..14,
                View::Masked => 6..10,
                View::Hidden => 0..0,
            };
            for i in revealed {
                known[i] = true;
            }
        }
        let hidden = known.iter().filter(|k| !**k).count();
        if hidden < MIN_HIDDEN_ID_DIGITS {
            return Err(format!(
                "{} masked beside {} leaves only {hidden} unknown digits: the ID can be rebuilt (the check character confirms guesses)",
                id_spec.name, "the birth date"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn deps() -> (Catalogue, Policy) {
        (Catalogue::builtin().unwrap(), Policy::builtin().await.unwrap())
    }

    #[tokio::test]
    async fn builtin_views_load() {
        let (c, p) = deps().await;
        let v = ViewPolicy::builtin(&c, &p).unwrap();
        assert_eq!(v.views_for(["agent"]).get("bank_card").view, View::Hidden);
        assert_eq!(v.views_for(["account_manager"]).get("mobile").view, View::Plain);
        assert_eq!(v.views_for(["agent", "account_manager"]).get("mobile").view, View::Plain);
        assert_eq!(v.views_for(["marketing"]).get("resident_id").view, View::Hidden);
        assert_eq!(v.views_for(["admin"]).get("name").view, View::Hidden);
        assert!(v.may_reveal(["risk_officer"], "resident_id"));
        assert!(!v.may_reveal(["agent", "account_manager"], "resident_id"));
    }

    #[tokio::test]
    async fn searching_masked_fields_needs_a_budget() {
        let (catalogue, policy) = deps().await;
        let v = ViewPolicy::builtin(&catalogue, &policy).unwrap();
        let oracles = v.search_oracles(&catalogue, &policy);
        assert!(oracles.contains(&("agent".into(), "mobile".into())), "{oracles:?}");
        assert!(oracles.contains(&("account_manager".into(), "resident_id".into())), "{oracles:?}");
        assert!(!oracles.contains(&("account_manager".into(), "mobile".into())), "plain to it: {oracles:?}");
        assert!(v.check_search_budget(&catalogue, &policy, 200, 50).is_ok());
        for (budget, alarm) in [(0, 50), (200, 0)] {
            let err = v.check_search_budget(&catalogue, &policy, budget, alarm).unwrap_err().to_string();
            assert!(err.contains("searches_per_hour"), "{err}");
        }
    }

    #[tokio::test]
    async fn birth_date_beside_masked_id_is_refused() {
        let (c, p) = deps().await;
        // The ID masked to hide exactly the birth date, with the birth date in plain view.
        let bad = BUILTIN_VIEWS.replace(
            "[role.agent.fields]\nname = \"masked\"",
            "[role.agent.masks]\nresident_id = { keep_first = 6, keep_last = 4 }\n[role.agent.fields]\nname = \"masked\"",
        );
        assert!(ViewPolicy::load(&bad, &c, &p).is_err(), "divergent masks accepted");
        let bad = BUILTIN_VIEWS.replace(
            "birth_date = \"hidden\"\nbank_card = \"hidden\"",
            "birth_date = \"plain\"\nbank_card = \"hidden\"",
        );
        let err = ViewPolicy::load(&bad, &c, &p).unwrap_err().to_string();
        assert!(err.contains("rebuilt"), "{err}");
        // Two roles one principal can combine: marketing's birth year with a 6+4 ID mask.
        let bad = BUILTIN_VIEWS.replace(
            "resident_id = { keep_first = 3, keep_last = 4 }",
            "resident_id = { keep_first = 6, keep_last = 4 }",
        );
        let err = ViewPolicy::load(&bad, &c, &p).unwrap_err().to_string();
        assert!(err.contains("rebuilt"), "{err}");
    }

    #[tokio::test]
    async fn mask_sanity() {
        let (c, p) = deps().await;
        let bad = BUILTIN_VIEWS
            .replace("bank_card = { keep_first = 6, keep_last = 4 }", "bank_card = { keep_first = 8, keep_last = 4 }");
        assert!(ViewPolicy::load(&bad, &c, &p).is_err());
        let bad = BUILTIN_VIEWS
            .replace("mobile = { keep_first = 3, keep_last = 4 }", "mobile = { keep_first = 7, keep_last = 4 }");
        assert!(ViewPolicy::load(&bad, &c, &p).is_err());
        let bad = BUILTIN_VIEWS.replace("[role.marketing]", "[role.admin]\n[role.marketing]");
        assert!(ViewPolicy::load(&bad, &c, &p).is_err());
    }
}

//! Customer record use cases: create, read (masked per view), update, search, batch fetch and
//! justified reveal.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::idempotency::Remembered;
use super::{Caller, Vault, VaultError};
use crate::authz::{Action, Budget, Permit, RecordAccess};
use crate::crypto::{CryptoError, DataKey, FieldContext};
use crate::domain::identifiers::Rule;
use crate::domain::{
    CustomerDraft, CustomerKind, CustomerPatch, CustomerStatus, FieldValue, ValidationError, ValidationErrors,
};
use crate::mask::{self, View};
use crate::store::{CustomerQuery, CustomerRecord, CustomerUpdate, IndexEntry, SealedField, UpdateOutcome};
use crate::vault::audit::AlertKind;
use crate::vault::limits::Counter;

/// Largest page of search results and largest batch.
pub const MAX_PAGE: u32 = 100;

/// A customer's routing and lifecycle data, without field values.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct CustomerSummary {
    pub id: Uuid,
    pub region: String,
    pub kind: CustomerKind,
    pub vip_level: i16,
    pub status: CustomerStatus,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One disclosed field: what is shown (plain or masked) and which view produced it.
#[derive(Debug)]
pub struct Shown {
    pub value: FieldValue,
    pub view: View,
}

/// A customer as disclosed to one caller: only the fields its views show, masked as they say.
#[derive(Debug)]
pub struct CustomerView {
    pub summary: CustomerSummary,
    pub fields: BTreeMap<String, Shown>,
}

/// A search, as submitted.
#[derive(Debug, Default)]
pub struct SearchRequest {
    /// Field → value, exact match on the normalised value.
    pub matches: Vec<(String, FieldValue)>,
    pub region: Option<String>,
    pub kind: Option<String>,
    pub status: Option<String>,
    pub page_size: Option<u32>,
    pub after: Option<Uuid>,
}

/// A page of search results.
#[derive(Debug)]
pub struct SearchPage {
    pub items: Vec<CustomerView>,
    pub next_cursor: Option<Uuid>,
}

/// A batch fetch: what was found, and what was not (missing and out of scope, together).
#[derive(Debug)]
pub struct Batch {
    pub items: Vec<CustomerView>,
    pub not_found: Vec<Uuid>,
}

/// Characters that would mean a pattern in other systems; exact match never needs them.
const PATTERN_CHARS: [char; 6] = ['*', '%', '?', '[', ']', '~'];

pub(super) fn summary_of(r: &CustomerRecord) -> CustomerSummary {
    summary(r)
}

fn summary(r: &CustomerRecord) -> CustomerSummary {
    CustomerSummary {
        id: r.id,
        region: r.region.clone(),
        kind: r.kind,
        vip_level: r.vip_level,
        status: r.status,
        version: r.version,
        created_at: r.created_at,
        updated_at: r.updated_at,
    }
}

pub(super) fn crypto_error(e: CryptoError) -> VaultError {
    match e {
        CryptoError::Integrity => VaultError::Integrity,
        CryptoError::UnknownKeyVersion(_) | CryptoError::RetiredKeyVersion(_) => {
            tracing::error!(error = %e, "DATA KEY UNREADABLE: its key-encryption key version is not available");
            VaultError::KeyUnavailable(e)
        }
        other => VaultError::Crypto(other),
    }
}

/// Logs an integrity alert: ids and field names only, never content.
fn integrity_alert(id: Uuid, field: Option<&str>) {
    tracing::error!(
        target: "custodia::integrity_alert",
        customer_id = %id,
        field = field.unwrap_or("<data key>"),
        "INTEGRITY ALERT: stored ciphertext failed authentication (tampered or moved); nothing was served"
    );
}

fn invalid(field: &str, rule: Rule) -> VaultError {
    VaultError::Validation(ValidationErrors(vec![ValidationError { field: field.to_owned(), rule }]))
}

impl Vault {
    /// Loads the record `id` for the caller (the id is recorded in the audit first).
    pub(super) async fn load(&self, caller: &Caller, id: Uuid) -> Result<CustomerRecord, VaultError> {
        caller.audit.add_customer(id);
        self.reads.customer(id).await?.ok_or(VaultError::NotFound)
    }

    /// The gate's decision on one record, recorded in the audit when allowed: out of scope
    /// answers as missing (404), a restricted record as restricted (403).
    pub(super) fn access<'a>(
        &'a self,
        caller: &Caller,
        permit: &'a Permit,
        record: &CustomerRecord,
    ) -> Result<RecordAccess<'a>, VaultError> {
        let access = self.gate.record(permit, &record.region, record.status)?;
        caller.audit.set_grant(access.grant);
        caller.audit.add_subject_region(&access.region);
        Ok(access)
    }

    /// Admits, loads and decides one record: the common start of every single-record use case.
    pub(super) async fn load_for<'a>(
        &'a self,
        caller: &Caller,
        permit: &'a Permit,
        id: Uuid,
    ) -> Result<(CustomerRecord, RecordAccess<'a>), VaultError> {
        let record = self.load(caller, id).await?;
        let access = self.access(caller, permit, &record)?;
        Ok((record, access))
    }

    /// Charges the budgets the gate declared for the permit's action (searches excepted: they
    /// are charged per lookup, before it runs) for disclosing `customers`.
    pub(super) async fn charge(&self, caller: &Caller, permit: &Permit, customers: &[Uuid]) -> Result<(), VaultError> {
        for budget in permit.budgets() {
            match budget {
                Budget::Searches => {}
                Budget::Reveals => {
                    let used = self.budgets.charge(&caller.principal.sub, Counter::Reveals).await?;
                    if used > i64::from(self.budgets.policy.reveals_per_hour) {
                        return Err(VaultError::RateLimited);
                    }
                }
                Budget::Customers => {
                    if let Err(count) = self.guard.admit(&caller.principal.sub, customers) {
                        self.raise_alert(&caller.principal.sub, AlertKind::BulkAccess, count).await?;
                        return Err(VaultError::BulkAccessBlocked);
                    }
                }
            }
        }
        Ok(())
    }

    fn data_key(&self, record: &CustomerRecord) -> Result<DataKey, VaultError> {
        self.keyring().unwrap_data_key(record.id, &record.wrapped_key).map_err(|e| {
            if e == CryptoError::Integrity {
                integrity_alert(record.id, None);
            }
            crypto_error(e)
        })
    }

    /// Decrypts the record's fields for which `wanted` holds.
    fn open_fields(
        &self,
        record: &CustomerRecord,
        key: &DataKey,
        wanted: impl Fn(&str) -> bool,
    ) -> Result<BTreeMap<String, FieldValue>, VaultError> {
        let mut out = BTreeMap::new();
        for f in &record.fields {
            if !wanted(&f.name) {
                continue;
            }
            let ctx = FieldContext { field: &f.name, record_version: record.version };
            let plain = key.open(ctx, &f.sealed).map_err(|e| {
                integrity_alert(record.id, Some(&f.name));
                crypto_error(e)
            })?;
            let text = String::from_utf8(plain.to_vec()).map_err(|_| {
                integrity_alert(record.id, Some(&f.name));
                VaultError::Integrity
            })?;
            out.insert(f.name.clone(), FieldValue::new(text));
        }
        Ok(out)
    }

    /// Decrypts every field of a record.
    pub(super) fn open_fields_with(
        &self,
        record: &CustomerRecord,
        key: &DataKey,
    ) -> Result<BTreeMap<String, FieldValue>, VaultError> {
        self.open_fields(record, key, |_| true)
    }

    pub(super) fn seal_all(
        key: &DataKey,
        version: i64,
        fields: &BTreeMap<String, FieldValue>,
    ) -> Result<Vec<SealedField>, VaultError> {
        Self::seal_fields(key, version, fields)
    }

    fn seal_fields(
        key: &DataKey,
        version: i64,
        fields: &BTreeMap<String, FieldValue>,
    ) -> Result<Vec<SealedField>, VaultError> {
        fields
            .iter()
            .map(|(name, value)| {
                let sealed = key
                    .seal(FieldContext { field: name, record_version: version }, value.expose().as_bytes())
                    .map_err(crypto_error)?;
                Ok(SealedField { name: name.clone(), sealed })
            })
            .collect()
    }

    /// Blind-index entries of the searchable fields among `fields` (already normalised).
    pub(super) fn index_entries(&self, fields: &BTreeMap<String, FieldValue>) -> Vec<IndexEntry> {
        let index = self.keys.index();
        let version = i32::try_from(index.version()).unwrap_or(i32::MAX);
        fields
            .iter()
            .filter_map(|(name, value)| {
                index.digest(name, value.expose()).map(|d| IndexEntry {
                    field: name.clone(),
                    digest: d.to_vec(),
                    key_version: version,
                })
            })
            .collect()
    }

    /// The record as the gate's `access` lets the caller see it: the fields its views show,
    /// limited to `only` when given, each plain or masked.
    fn disclose(
        &self,
        caller: &Caller,
        record: &CustomerRecord,
        access: &RecordAccess<'_>,
        only: Option<&[String]>,
    ) -> Result<CustomerView, VaultError> {
        let selected = access.select(record.fields.iter().map(|f| f.name.as_str()), only)?;
        let mut fields = BTreeMap::new();
        if !selected.is_empty() {
            let key = self.data_key(record)?;
            for (name, value) in self.open_fields(record, &key, |n| selected.iter().any(|(s, _)| *s == n))? {
                let Some(spec) = self.catalogue.get(&name) else { continue };
                let Some(view) = selected.iter().find(|(n, _)| *n == name).map(|(_, v)| *v) else { continue };
                if let Some(shown) = mask::apply(spec, value.expose(), view, self.regions) {
                    caller.audit.add_field(&name, view.view.as_str());
                    fields.insert(name, Shown { value: FieldValue::new(shown), view: view.view });
                }
            }
        }
        Ok(CustomerView { summary: summary(record), fields })
    }

    /// Discloses what the gate allows of `records` (the rest — out of scope, restricted — is
    /// left out, as missing), after charging the permit's budgets for it. Ids in `asked` that
    /// end up undisclosed are recorded as such in the audit.
    async fn disclose_all(
        &self,
        caller: &Caller,
        permit: &Permit,
        records: &[CustomerRecord],
        asked: &[Uuid],
        only: Option<&[String]>,
    ) -> Result<Vec<CustomerView>, VaultError> {
        let mut allowed = Vec::with_capacity(records.len());
        for r in records {
            match self.access(caller, permit, r) {
                Ok(access) => allowed.push((r, access)),
                Err(VaultError::NotFound | VaultError::Restricted) => {}
                Err(e) => return Err(e),
            }
        }
        let ids: Vec<Uuid> = allowed.iter().map(|(r, _)| r.id).collect();
        for id in asked.iter().chain(&ids) {
            caller.audit.add_customer(*id);
        }
        let undisclosed: Vec<Uuid> = asked.iter().filter(|id| !ids.contains(id)).copied().collect();
        caller.audit.set_undisclosed(&undisclosed);
        self.charge(caller, permit, &ids).await?;
        allowed.iter().map(|(r, access)| self.disclose(caller, r, access, only)).collect()
    }

    /// Checks a `fields` selection against the catalogue.
    fn check_selection(&self, only: Option<&[String]>) -> Result<(), VaultError> {
        match only {
            Some(names) if names.iter().any(|n| self.catalogue.get(n).is_none()) => {
                Err(invalid("fields", Rule::UnknownField))
            }
            _ => Ok(()),
        }
    }

    /// Creates a customer record.
    #[tracing::instrument(skip_all)]
    pub async fn create_customer(&self, caller: &Caller, draft: CustomerDraft) -> Result<CustomerSummary, VaultError> {
        let permit = self.admit(caller, Action::CreateCustomer)?;
        let valid = draft.validate(&self.catalogue, self.regions)?;
        // Creating outside one's scope reveals nothing (no record exists yet): a plain refusal.
        let grant = self.gate.region(&permit, &valid.region)?;
        if let Some(Remembered::Customer(first)) = self.replay(caller).await? {
            caller.audit.add_customer(first.id);
            caller.audit.set_grant(grant);
            return Ok(first);
        }
        let id = Uuid::now_v7();
        caller.audit.add_customer(id);
        caller.audit.set_grant(grant);
        caller.audit.add_subject_region(&valid.region);
        let (key, wrapped_key) = self.keyring().generate_data_key(id).map_err(crypto_error)?;
        let now = Utc::now();
        let record = CustomerRecord {
            id,
            region: valid.region.as_str().to_owned(),
            kind: valid.kind,
            vip_level: valid.vip_level,
            status: CustomerStatus::Active,
            version: 1,
            wrapped_key,
            created_at: now,
            updated_at: now,
            fields: Self::seal_fields(&key, 1, &valid.fields)?,
            index: self.index_entries(&valid.fields),
        };
        let created = summary(&record);
        let mut event = caller.audit.closed(201);
        self.remember(caller, &Remembered::Customer(created.clone()), &mut event)?;
        // In the audit writer's next group commit, with its event and the others waiting then.
        if let Err(e) = self.audit.create(record, event).await {
            return match self.replay_after(caller, e.into()).await? {
                Remembered::Customer(first) => Ok(first),
                _ => Err(VaultError::IdempotencyKeyReused),
            };
        }
        caller.audit.mark_recorded();
        tracing::info!(customer_id = %id, region = %valid.region.as_str(), "customer created");
        Ok(created)
    }

    /// Reads a customer record as the caller's views show it, limited to `only` when given.
    #[tracing::instrument(skip_all)]
    pub async fn read_customer(
        &self,
        caller: &Caller,
        id: Uuid,
        only: Option<&[String]>,
    ) -> Result<CustomerView, VaultError> {
        let permit = self.admit(caller, Action::ReadCustomer)?;
        self.check_selection(only)?;
        let (record, access) = self.load_for(caller, &permit, id).await?;
        self.charge(caller, &permit, &[id]).await?;
        self.disclose(caller, &record, &access, only)
    }

    /// Applies a change if the record is still at `expected_version`.
    #[tracing::instrument(skip_all)]
    pub async fn update_customer(
        &self,
        caller: &Caller,
        id: Uuid,
        expected_version: i64,
        patch: CustomerPatch,
    ) -> Result<CustomerSummary, VaultError> {
        let permit = self.admit(caller, Action::UpdateCustomer)?;
        let (record, _) = self.load_for(caller, &permit, id).await?;
        if let Some(Remembered::Customer(first)) = self.replay(caller).await? {
            return Ok(first);
        }
        let present: Vec<String> = record.fields.iter().map(|f| f.name.clone()).collect();
        let patch = patch.validate(record.kind, &present, &self.catalogue, self.regions)?;
        // The event names the fields changed (names only, never values).
        for name in patch.set.keys().chain(patch.remove.iter()) {
            caller.audit.add_field(name, "changed");
        }
        if record.version != expected_version {
            return Err(VaultError::VersionConflict);
        }
        let key = self.data_key(&record)?;
        let mut fields = self.open_fields(&record, &key, |_| true)?;
        for name in &patch.remove {
            fields.remove(name);
        }
        fields.extend(patch.set);
        let version = record.version + 1;
        let update = CustomerUpdate {
            id,
            expected_version,
            version,
            vip_level: patch.vip_level.unwrap_or(record.vip_level),
            updated_at: Utc::now(),
            fields: Self::seal_fields(&key, version, &fields)?,
            index: self.index_entries(&fields),
        };
        let mut out = summary(&record);
        out.version = version;
        out.vip_level = update.vip_level;
        out.updated_at = update.updated_at;
        let mut event = caller.audit.closed(200);
        self.remember(caller, &Remembered::Customer(out.clone()), &mut event)?;
        let failed = match self.store.update_customer(&update, &event).await {
            Ok(UpdateOutcome::Updated) => None,
            Ok(UpdateOutcome::NotFound) => Some(VaultError::NotFound),
            Ok(UpdateOutcome::VersionConflict) => Some(VaultError::VersionConflict),
            Err(e) => Some(e.into()),
        };
        if let Some(failed) = failed {
            // A concurrent retry with the same key may have applied it first.
            return match self.replay_after(caller, failed).await? {
                Remembered::Customer(first) => Ok(first),
                _ => Err(VaultError::IdempotencyKeyReused),
            };
        }
        caller.audit.mark_recorded();
        tracing::info!(customer_id = %id, version, "customer updated");
        Ok(out)
    }

    /// Finds customers by exact match on searchable fields, inside the caller's scope (in SQL),
    /// masked per view, one cursor page at a time.
    #[tracing::instrument(skip_all)]
    pub async fn search_customers(&self, caller: &Caller, req: SearchRequest) -> Result<SearchPage, VaultError> {
        let permit = self.admit(caller, Action::SearchCustomers)?;
        if req.matches.is_empty() {
            return Err(VaultError::UnsupportedQuery("name at least one searchable field in match"));
        }
        let index = self.keys.index();
        let mut matches = Vec::with_capacity(req.matches.len());
        for (field, value) in &req.matches {
            let spec = self.catalogue.get(field).filter(|s| s.searchable).ok_or(VaultError::UnsupportedQuery(
                "only exact match on searchable fields (mobile, resident_id, email, credit_code)",
            ))?;
            if value.expose().contains(PATTERN_CHARS) {
                return Err(VaultError::UnsupportedQuery("no prefix, wildcard or pattern search: exact values only"));
            }
            let normalised = self
                .catalogue
                .validate(spec, value.expose(), self.regions)
                .map_err(|rule| invalid(&format!("match.{field}"), rule))?;
            // Every live index version: records not yet re-indexed after an index rotation are found too.
            let digests: Vec<(i32, Vec<u8>)> = index
                .digests(field, &normalised)
                .into_iter()
                .map(|(v, d)| (i32::try_from(v).unwrap_or(i32::MAX), d.to_vec()))
                .collect();
            if digests.is_empty() {
                return Err(VaultError::UnsupportedQuery("field is not indexed"));
            }
            matches.push((field.clone(), digests));
        }
        // The audit keeps the search terms as their blind-index digests only.
        let mut query = serde_json::Map::new();
        let digests: serde_json::Map<String, serde_json::Value> = matches
            .iter()
            .filter_map(|(f, ds)| {
                ds.last().map(|(_, d)| (f.clone(), d.iter().map(|b| format!("{b:02x}")).collect::<String>().into()))
            })
            .collect();
        query.insert("match".into(), digests.into());
        let region = match req.region.as_deref() {
            None => None,
            Some(r) => Some(self.regions.parse(r).ok_or_else(|| invalid("region", Rule::UnknownRegion))?),
        };
        let kind = match req.kind.as_deref() {
            None => None,
            Some(k) => Some(CustomerKind::parse(k).ok_or_else(|| invalid("kind", Rule::Format))?),
        };
        let status = match req.status.as_deref() {
            None => None,
            Some(s) => Some(CustomerStatus::parse(s).ok_or_else(|| invalid("status", Rule::Format))?),
        };
        let limit = req.page_size.unwrap_or(50);
        if limit == 0 || limit > MAX_PAGE {
            return Err(invalid("page_size", Rule::OutOfRange));
        }
        for (k, v) in [
            ("region", region.as_ref().map(|r| r.as_str())),
            ("kind", kind.map(|k| k.as_str())),
            ("status", status.map(|s| s.as_str())),
        ] {
            if let Some(v) = v {
                query.insert(k.into(), v.into());
            }
        }
        caller.audit.set_query(serde_json::Value::Object(query).to_string());
        // Every exact-match lookup is an oracle: each is charged, hit or miss, before it runs.
        self.charge_search(caller).await?;
        let query = CustomerQuery {
            matches,
            scopes: permit.scopes(),
            region,
            kind,
            status,
            after: req.after,
            limit: limit + 1,
        };
        // One more than a page: whether there is a next page.
        let mut records = self.store.search_customer_records(&query).await?;
        let next_cursor = if records.len() > limit as usize {
            records.truncate(limit as usize);
            records.last().map(|r| r.id)
        } else {
            None
        };
        let items = self.disclose_all(caller, &permit, &records, &[], None).await?;
        if items.is_empty() && req.after.is_none() {
            self.charge_search_miss(caller).await?;
        }
        Ok(SearchPage { items, next_cursor })
    }

    /// Charges one search to the caller's budget; past it, 429 and a security alert that
    /// blocks the principal until an officer clears it.
    async fn charge_search(&self, caller: &Caller) -> Result<(), VaultError> {
        // Off only where the start-up lint found no role searching what it cannot see.
        if self.budgets.policy.searches_per_hour == 0 {
            return Ok(());
        }
        let used = self.budgets.charge(&caller.principal.sub, Counter::Searches).await?;
        let limit = i64::from(self.budgets.policy.searches_per_hour);
        if used > limit {
            if used == limit + 1 {
                self.raise_alert(&caller.principal.sub, AlertKind::SearchBudget, 0).await?;
            }
            return Err(VaultError::SearchBudget);
        }
        Ok(())
    }

    /// Counts a search that found nothing; at the alarm threshold, a security alert (the
    /// signature of guessing masked values).
    async fn charge_search_miss(&self, caller: &Caller) -> Result<(), VaultError> {
        if self.budgets.policy.search_miss_alarm == 0 {
            return Ok(());
        }
        let misses = self.budgets.charge(&caller.principal.sub, Counter::SearchMisses).await?;
        if misses == i64::from(self.budgets.policy.search_miss_alarm) {
            self.raise_alert(&caller.principal.sub, AlertKind::SearchMisses, 0).await?;
        }
        Ok(())
    }

    /// Fetches up to 100 customers by id, inside the caller's scope (in SQL), masked per view.
    /// Missing and out-of-scope ids come back together in `not_found`.
    #[tracing::instrument(skip_all)]
    pub async fn batch_get(
        &self,
        caller: &Caller,
        ids: Vec<Uuid>,
        only: Option<&[String]>,
    ) -> Result<Batch, VaultError> {
        let permit = self.admit(caller, Action::BatchGetCustomers)?;
        self.check_selection(only)?;
        let mut unique: Vec<Uuid> = Vec::with_capacity(ids.len());
        for id in ids {
            if !unique.contains(&id) {
                unique.push(id);
            }
        }
        if unique.is_empty() || unique.len() > MAX_PAGE as usize {
            return Err(invalid("ids", Rule::OutOfRange));
        }
        let records = self.store.customers_by_ids(&unique, &permit.scopes()).await?;
        // Every id asked for is recorded, and which were not disclosed: probing leaves a trace.
        let items = self.disclose_all(caller, &permit, &records, &unique, only).await?;
        let not_found = unique.into_iter().filter(|id| !items.iter().any(|v| v.summary.id == *id)).collect();
        Ok(Batch { items, not_found })
    }

    /// Returns fields in plaintext to a caller whose roles may reveal them at the record's scope,
    /// for a stated purpose and a ticket reference; rate-limited per principal.
    #[tracing::instrument(skip_all)]
    pub async fn reveal(
        &self,
        caller: &Caller,
        id: Uuid,
        fields: &[String],
        justification: &str,
    ) -> Result<BTreeMap<String, FieldValue>, VaultError> {
        let permit = self.admit(caller, Action::RevealFields)?;
        if !valid_justification(justification) {
            return Err(invalid("justification", Rule::Format));
        }
        if fields.is_empty() || fields.len() > 16 {
            return Err(invalid("fields", Rule::OutOfRange));
        }
        self.check_selection(Some(fields))?;
        caller.audit.set_justification(justification);
        // The same decision as a read: scope, restriction (PIPL art. 47) and state.
        let (record, access) = self.load_for(caller, &permit, id).await?;
        access.reveal(&self.gate, fields)?;
        self.charge(caller, &permit, &[id]).await?;
        let key = self.data_key(&record)?;
        let out = self.open_fields(&record, &key, |n| fields.iter().any(|f| f == n))?;
        for f in out.keys() {
            caller.audit.add_field(f, "revealed");
        }
        tracing::info!(customer_id = %id, fields = fields.len(), "fields revealed");
        Ok(out)
    }
}

/// A justification is a ticket reference: 3–64 characters of letters, digits and `-_.:/#`,
/// starting with a letter or digit.
pub fn valid_justification(s: &str) -> bool {
    (3..=64).contains(&s.len())
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'/' | b'#'))
}

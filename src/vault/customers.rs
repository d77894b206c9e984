//! Customer record use cases: create, read, update.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Caller, Vault, VaultError};
use crate::authz::{Action, Denied};
use crate::crypto::{CryptoError, DataKey, FieldContext};
use crate::domain::{CustomerDraft, CustomerKind, CustomerPatch, CustomerStatus, FieldValue, RegionId};
use crate::store::{CustomerRecord, CustomerUpdate, SealedField, StoreError, UpdateOutcome};

/// A customer's routing and lifecycle data, without field values.
#[derive(Clone, Debug)]
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

/// A customer with its plaintext field values.
#[derive(Debug)]
pub struct CustomerView {
    pub summary: CustomerSummary,
    pub fields: BTreeMap<String, FieldValue>,
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

fn crypto_error(e: CryptoError) -> VaultError {
    match e {
        CryptoError::Integrity => VaultError::Integrity,
        CryptoError::UnknownKeyVersion(_) => VaultError::KeyUnavailable(e),
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

impl Vault {
    fn record_region(&self, r: &CustomerRecord) -> Result<RegionId, VaultError> {
        self.regions.parse_city(&r.region).ok_or(VaultError::Store(StoreError::Corrupt("unknown region code")))
    }

    /// Loads a record the principal may act on, or `NotFound`.
    async fn load_for(&self, caller: &Caller, action: Action, id: Uuid) -> Result<(CustomerRecord, Uuid), VaultError> {
        // Capability first: a caller who may not do this at all learns nothing about the id.
        let capability = self.authz.capability(&caller.principal, action, caller.purpose())?;
        let record = self.store.customer(id).await?.ok_or(VaultError::NotFound)?;
        let grant = capability.grant_for(&self.record_region(&record)?).ok_or(VaultError::NotFound)?;
        Ok((record, grant))
    }

    fn data_key(&self, record: &CustomerRecord) -> Result<DataKey, VaultError> {
        self.keyring.unwrap_data_key(record.id, &record.wrapped_key).map_err(|e| {
            if e == CryptoError::Integrity {
                integrity_alert(record.id, None);
            }
            crypto_error(e)
        })
    }

    fn open_fields(&self, record: &CustomerRecord, key: &DataKey) -> Result<BTreeMap<String, FieldValue>, VaultError> {
        let mut out = BTreeMap::new();
        for f in &record.fields {
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

    /// Creates a customer record.
    #[tracing::instrument(skip_all)]
    pub async fn create_customer(&self, caller: &Caller, draft: CustomerDraft) -> Result<CustomerSummary, VaultError> {
        let valid = draft.validate(&self.catalogue, self.regions)?;
        let capability = self.authz.capability(&caller.principal, Action::CreateCustomer, caller.purpose())?;
        // Creating outside one's scope reveals nothing (no record exists yet): a plain refusal.
        capability.grant_for(&valid.region).ok_or(Denied::RegionOutOfScope)?;
        let id = Uuid::now_v7();
        let (key, wrapped_key) = self.keyring.generate_data_key(id).map_err(crypto_error)?;
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
        };
        self.store.insert_customer(&record).await?;
        tracing::info!(customer_id = %id, region = %record.region, "customer created");
        Ok(summary(&record))
    }

    /// Reads a customer record with its plaintext fields.
    #[tracing::instrument(skip_all)]
    pub async fn read_customer(&self, caller: &Caller, id: Uuid) -> Result<CustomerView, VaultError> {
        let (record, _grant) = self.load_for(caller, Action::ReadCustomer, id).await?;
        let key = self.data_key(&record)?;
        let fields = self.open_fields(&record, &key)?;
        Ok(CustomerView { summary: summary(&record), fields })
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
        let (record, _grant) = self.load_for(caller, Action::UpdateCustomer, id).await?;
        let present: Vec<String> = record.fields.iter().map(|f| f.name.clone()).collect();
        let patch = patch.validate(record.kind, &present, &self.catalogue, self.regions)?;
        if record.version != expected_version {
            return Err(VaultError::VersionConflict);
        }
        let key = self.data_key(&record)?;
        let mut fields = self.open_fields(&record, &key)?;
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
        };
        match self.store.update_customer(&update).await? {
            UpdateOutcome::Updated => {}
            UpdateOutcome::NotFound => return Err(VaultError::NotFound),
            UpdateOutcome::VersionConflict => return Err(VaultError::VersionConflict),
        }
        tracing::info!(customer_id = %id, version, "customer updated");
        let mut out = summary(&record);
        out.version = version;
        out.vip_level = update.vip_level;
        out.updated_at = update.updated_at;
        Ok(out)
    }
}

//! The vault's use cases: create, read and update customer records.
//!
//! This is the only layer that combines authorization, validation, cryptography and storage.
//! It takes domain inputs and returns domain outputs; it knows nothing about HTTP and writes
//! no SQL. Plaintext leaves it only inside [`FieldValue`]s.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::auth::Principal;
use crate::authz::{Action, Authorizer, Denied};
use crate::crypto::{CryptoError, DataKey, FieldContext, Keyring};
use crate::domain::{
    Catalogue, CustomerDraft, CustomerKind, CustomerPatch, CustomerStatus, FieldValue, RegionId, Regions,
    ValidationErrors,
};
use crate::store::{CustomerRecord, CustomerUpdate, SealedField, Store, StoreError, UpdateOutcome};

/// Errors of the use cases.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error(transparent)]
    Validation(#[from] ValidationErrors),
    /// Missing, or outside the caller's scope: the two are indistinguishable.
    #[error("customer not found")]
    NotFound,
    #[error("action not permitted")]
    Forbidden,
    #[error("record version does not match")]
    VersionConflict,
    /// A stored ciphertext failed authentication: tampering, or a ciphertext moved.
    #[error("integrity check failed")]
    Integrity,
    #[error("key unavailable: {0}")]
    KeyUnavailable(CryptoError),
    #[error("cryptographic failure: {0}")]
    Crypto(CryptoError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<Denied> for VaultError {
    fn from(d: Denied) -> Self {
        match d {
            Denied::Action => VaultError::Forbidden,
            Denied::OutOfScope => VaultError::NotFound,
        }
    }
}

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

/// The vault.
pub struct Vault {
    store: Arc<dyn Store>,
    keyring: Arc<Keyring>,
    catalogue: Arc<Catalogue>,
    regions: &'static Regions,
    authz: Authorizer,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault").field("backend", &self.store.backend()).finish_non_exhaustive()
    }
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
    pub fn new(
        store: Arc<dyn Store>,
        keyring: Arc<Keyring>,
        catalogue: Arc<Catalogue>,
        regions: &'static Regions,
    ) -> Self {
        Vault { store, keyring, catalogue, regions, authz: Authorizer }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn catalogue(&self) -> &Catalogue {
        &self.catalogue
    }

    /// Whether the database answers.
    pub async fn ready(&self) -> Result<(), VaultError> {
        Ok(self.store.ping().await?)
    }

    fn record_region(&self, r: &CustomerRecord) -> Result<RegionId, VaultError> {
        self.regions.parse_city(&r.region).ok_or(VaultError::Store(StoreError::Corrupt("unknown region code")))
    }

    /// Loads a record the principal may act on, or `NotFound`.
    async fn load_for(&self, principal: &Principal, action: Action, id: Uuid) -> Result<CustomerRecord, VaultError> {
        let record = self.store.customer(id).await?.ok_or(VaultError::NotFound)?;
        self.authz.check(principal, action, &self.record_region(&record)?)?;
        Ok(record)
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
    pub async fn create_customer(
        &self,
        principal: &Principal,
        draft: CustomerDraft,
    ) -> Result<CustomerSummary, VaultError> {
        let valid = draft.validate(&self.catalogue, self.regions)?;
        self.authz.check(principal, Action::CreateCustomer, &valid.region)?;
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
    pub async fn read_customer(&self, principal: &Principal, id: Uuid) -> Result<CustomerView, VaultError> {
        let record = self.load_for(principal, Action::ReadCustomer, id).await?;
        let key = self.data_key(&record)?;
        let fields = self.open_fields(&record, &key)?;
        Ok(CustomerView { summary: summary(&record), fields })
    }

    /// Applies a change if the record is still at `expected_version`.
    #[tracing::instrument(skip_all)]
    pub async fn update_customer(
        &self,
        principal: &Principal,
        id: Uuid,
        expected_version: i64,
        patch: CustomerPatch,
    ) -> Result<CustomerSummary, VaultError> {
        let record = self.load_for(principal, Action::UpdateCustomer, id).await?;
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

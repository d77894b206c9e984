//! Seeding a vault with synthetic customers (benchmarks, demos), through the same envelope
//! encryption and blind indexes as real writes, in bulk transactions.

use chrono::Utc;
use uuid::Uuid;

use super::{Vault, VaultError};
use crate::audit::AuditHandle;
use crate::domain::synthetic::Synthetic;
use crate::domain::CustomerStatus;
use crate::store::{CustomerRecord, StoreError};

/// Customers per transaction.
const BATCH: usize = 2000;

impl Vault {
    /// Creates `count` synthetic customers; returns their ids in creation order.
    pub async fn seed(&self, count: usize, seed: u64, actor: &str) -> Result<Vec<Uuid>, VaultError> {
        let mut generator = Synthetic::new(self.regions, seed);
        let mut ids = Vec::with_capacity(count);
        let ring = self.keyring();
        let mut inserting: Option<tokio::task::JoinHandle<Result<(), StoreError>>> = None;
        while ids.len() < count {
            let n = BATCH.min(count - ids.len());
            let mut records = Vec::with_capacity(n);
            let now = Utc::now();
            for _ in 0..n {
                let c = generator.customer();
                let id = Uuid::now_v7();
                let (key, wrapped_key) = ring.generate_data_key(id).map_err(super::customers::crypto_error)?;
                records.push(CustomerRecord {
                    id,
                    region: c.region.as_str().to_owned(),
                    kind: c.kind,
                    vip_level: c.vip_level,
                    status: CustomerStatus::Active,
                    version: 1,
                    wrapped_key,
                    created_at: now,
                    updated_at: now,
                    fields: Self::seal_all(&key, 1, &c.fields)?,
                    index: self.index_entries(&c.fields),
                });
            }
            let audit = AuditHandle::detached("customer.seed");
            audit.set_principal(actor);
            ids.extend(records.iter().map(|r| r.id));
            // The previous batch commits (on the database's thread) while this one was sealed.
            if let Some(previous) = inserting.take() {
                previous.await.map_err(|_| VaultError::Store(StoreError::Corrupt("seeding task stopped")))??;
            }
            let store = self.store.clone();
            let event = audit.closed(201);
            inserting = Some(tokio::spawn(async move { store.insert_customers(&records, &[event]).await }));
        }
        if let Some(previous) = inserting.take() {
            previous.await.map_err(|_| VaultError::Store(StoreError::Corrupt("seeding task stopped")))??;
        }
        Ok(ids)
    }
}

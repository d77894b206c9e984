//! Data-subject rights and retention: erasure by crypto-shredding (the record's data key and
//! blind-index entries destroyed, a tombstone kept), export of everything held about a
//! customer, restriction (PIPL art. 47), and erasure past the retention period.

use std::collections::BTreeMap;

use chrono::Utc;
use uuid::Uuid;

use super::customers::crypto_error;
use super::idempotency::Remembered;
use super::{Caller, CustomerSummary, Vault, VaultError};
use crate::audit::AuditHandle;
use crate::authz::Action;
use crate::domain::{CustomerStatus, FieldValue};
use crate::store::Tombstone;

/// `erased_by` of retention erasures.
pub const RETENTION_ACTOR: &str = "custodia:retention";

impl Vault {
    /// Erases a customer: its data key, ciphertexts and blind-index entries are deleted in one
    /// transaction with the audit event, leaving a tombstone. Copies of the database taken
    /// before keep only ciphertext under a data key wrapped by a KEK version that rotation and
    /// retirement destroy.
    #[tracing::instrument(skip_all)]
    pub async fn erase_customer(&self, caller: &Caller, id: Uuid) -> Result<(), VaultError> {
        let permit = self.admit(caller, Action::EraseCustomer)?;
        // Before the record is looked up: after the first erasure there is none to find.
        if let Some(Remembered::Erased { id: first }) = self.replay(caller).await? {
            if first == id {
                caller.audit.add_customer(id);
                return Ok(());
            }
        }
        let (record, _) = self.load_for(caller, &permit, id).await?;
        let tombstone = Tombstone {
            id,
            region: record.region.clone(),
            erased_at: Utc::now(),
            erased_by: caller.principal.sub.clone(),
            reason: "data_subject_request".into(),
        };
        let mut event = caller.audit.closed(204);
        self.remember(caller, &Remembered::Erased { id }, &mut event)?;
        let failed = match self.store.erase_customer(&tombstone, &event).await {
            Ok(true) => None,
            Ok(false) => Some(VaultError::NotFound),
            Err(e) => Some(e.into()),
        };
        if let Some(failed) = failed {
            return match self.replay_after(caller, failed).await? {
                Remembered::Erased { id: first } if first == id => Ok(()),
                _ => Err(VaultError::IdempotencyKeyReused),
            };
        }
        caller.audit.mark_recorded();
        tracing::info!(customer_id = %id, "customer erased (crypto-shredded)");
        Ok(())
    }

    /// Everything held about a customer, in plaintext, for the data subject: a role that
    /// policy allows to export, a justification (the request's ticket), and a charge to the
    /// reveal budget, as for any plaintext disclosure.
    #[tracing::instrument(skip_all)]
    pub async fn export_customer(
        &self,
        caller: &Caller,
        id: Uuid,
        justification: &str,
    ) -> Result<(CustomerSummary, BTreeMap<String, FieldValue>), VaultError> {
        let permit = self.admit(caller, Action::ExportCustomer)?;
        if !super::valid_justification(justification) {
            return Err(VaultError::Validation(crate::domain::ValidationErrors(vec![
                crate::domain::ValidationError {
                    field: "X-Justification".into(),
                    rule: crate::domain::identifiers::Rule::Format,
                },
            ])));
        }
        caller.audit.set_justification(justification);
        let (record, _) = self.load_for(caller, &permit, id).await?;
        self.charge(caller, &permit, &[id]).await?;
        let key = self.keyring().unwrap_data_key(record.id, &record.wrapped_key).map_err(crypto_error)?;
        let fields = self.open_fields_with(&record, &key)?;
        for name in fields.keys() {
            caller.audit.add_field(name, "exported");
        }
        Ok((super::customers::summary_of(&record), fields))
    }

    /// Restricts a customer (readable only for legal requests), or lifts the restriction.
    #[tracing::instrument(skip_all)]
    pub async fn restrict_customer(
        &self,
        caller: &Caller,
        id: Uuid,
        restrict: bool,
    ) -> Result<CustomerSummary, VaultError> {
        let permit = self.admit(caller, Action::RestrictCustomer)?;
        let (record, _) = self.load_for(caller, &permit, id).await?;
        if let Some(Remembered::Customer(first)) = self.replay(caller).await? {
            return Ok(first);
        }
        let status = if restrict { CustomerStatus::Restricted } else { CustomerStatus::Active };
        let mut summary = super::customers::summary_of(&record);
        summary.status = status;
        let mut event = caller.audit.closed(200);
        self.remember(caller, &Remembered::Customer(summary.clone()), &mut event)?;
        let failed = match self.store.set_status(id, status, &event).await {
            Ok(true) => None,
            Ok(false) => Some(VaultError::NotFound),
            Err(e) => Some(e.into()),
        };
        if let Some(failed) = failed {
            return match self.replay_after(caller, failed).await? {
                Remembered::Customer(first) => Ok(first),
                _ => Err(VaultError::IdempotencyKeyReused),
            };
        }
        caller.audit.mark_recorded();
        Ok(summary)
    }

    /// Erases every customer past its retention period; returns how many.
    pub async fn run_retention(&self) -> Result<usize, VaultError> {
        let mut erased = 0;
        for (kind, status, days) in &self.retention {
            let before = Utc::now() - chrono::Duration::days(i64::from(*days));
            loop {
                let due = self.store.past_retention(*kind, *status, before, 500).await?;
                if due.is_empty() {
                    break;
                }
                for (id, region) in due {
                    let audit = AuditHandle::detached("customer.erase");
                    audit.set_principal(RETENTION_ACTOR);
                    audit.add_customer(id);
                    let tombstone = Tombstone {
                        id,
                        region,
                        erased_at: Utc::now(),
                        erased_by: RETENTION_ACTOR.into(),
                        reason: format!("retention: {} {} after {days} days", kind.as_str(), status.as_str()),
                    };
                    if self.store.erase_customer(&tombstone, &audit.closed(204)).await? {
                        erased += 1;
                    }
                }
            }
        }
        if erased > 0 {
            tracing::info!(erased, "retention: customers erased");
        }
        Ok(erased)
    }
}

//! Retries without duplicates: `Idempotency-Key` on create, update, erase, restrict and grant.
//!
//! A write whose request carries a key commits, in its own transaction (with its audit event,
//! through the group commit for creates), the key, a fingerprint of the request and the
//! write's outcome. A later request of the same principal with the same key and fingerprint
//! gets that outcome back and applies nothing; with the same key and another request it is
//! refused (422). Two concurrent requests with one key cannot both apply: the second write's
//! transaction fails on the key's primary key and it answers with the first's outcome. Keys
//! expire after the configured window and are kept in the database, so they hold across
//! instances and restarts.
//!
//! Owns: the key's lookup and the outcome remembered. Must never: remember a field value (an
//! outcome holds identifiers, versions and times only), or replay across principals.

use chrono::Utc;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::customers::CustomerSummary;
use super::{Caller, Vault, VaultError};
use crate::audit::AuditEvent;
use crate::store::{IdempotencyRecord, StoreError};

/// Longest accepted key.
pub const MAX_KEY_LEN: usize = 255;

/// A request's idempotency key and the fingerprint of the request it came with.
#[derive(Clone, Debug)]
pub struct IdempotencyRequest {
    pub key: String,
    /// SHA-256 of the method, path, `If-Match` and body.
    pub fingerprint: [u8; 32],
}

impl IdempotencyRequest {
    /// Whether `key` is acceptable: 1 to 255 visible ASCII characters.
    pub fn valid_key(key: &str) -> bool {
        !key.is_empty() && key.len() <= MAX_KEY_LEN && key.bytes().all(|b| b.is_ascii_graphic())
    }
}

/// What a write remembers of its outcome.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "remembered", rename_all = "snake_case")]
pub(crate) enum Remembered {
    /// A customer created, updated, restricted or lifted, as answered.
    Customer(CustomerSummary),
    /// A customer erased.
    Erased { id: Uuid },
    /// A grant created.
    Grant { id: Uuid },
}

impl Vault {
    /// The remembered outcome of the caller's key, if the caller sent one and it is live;
    /// 422 when the key came with another request.
    pub(crate) async fn replay(&self, caller: &Caller) -> Result<Option<Remembered>, VaultError> {
        let Some(request) = &caller.idempotency else { return Ok(None) };
        let Some(record) = self.store.idempotency(&caller.principal.sub, &request.key, Utc::now()).await? else {
            return Ok(None);
        };
        if record.fingerprint != request.fingerprint {
            return Err(VaultError::IdempotencyKeyReused);
        }
        let outcome = serde_json::from_str(&record.outcome).map_err(|_| StoreError::Corrupt("idempotency outcome"))?;
        tracing::info!("retry with a used idempotency key: the first outcome is returned, nothing applied");
        Ok(Some(outcome))
    }

    /// After a write failed: a concurrent request with the same key may have committed first
    /// (the key's primary key failed this one, or, for an update, its version moved). Its
    /// outcome, if so; otherwise the write's own error.
    pub(crate) async fn replay_after(&self, caller: &Caller, failed: VaultError) -> Result<Remembered, VaultError> {
        if caller.idempotency.is_none() {
            return Err(failed);
        }
        match self.replay(caller).await? {
            Some(outcome) => Ok(outcome),
            None => Err(failed),
        }
    }

    /// Attaches the key and `outcome` to the write's audit event, which commits them with it.
    pub(crate) fn remember(
        &self,
        caller: &Caller,
        outcome: &Remembered,
        event: &mut AuditEvent,
    ) -> Result<(), VaultError> {
        let Some(request) = &caller.idempotency else { return Ok(()) };
        let outcome = serde_json::to_string(outcome).map_err(|_| StoreError::Corrupt("idempotency outcome"))?;
        let now = Utc::now();
        event.idempotency = Some(Box::new(IdempotencyRecord {
            principal: caller.principal.sub.clone(),
            key: request.key.clone(),
            fingerprint: request.fingerprint.to_vec(),
            outcome,
            created_at: now,
            expires_at: now + self.idempotency_window,
        }));
        Ok(())
    }

    /// Forgets expired idempotency keys (maintenance).
    pub async fn prune_idempotency(&self) -> Result<u64, VaultError> {
        Ok(self.store.prune_idempotency(Utc::now()).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembered_outcomes_read_back() {
        let now = Utc::now();
        let summary = CustomerSummary {
            id: Uuid::now_v7(),
            region: "3201".into(),
            kind: crate::domain::CustomerKind::Individual,
            vip_level: 2,
            status: crate::domain::CustomerStatus::Active,
            version: 3,
            created_at: now,
            updated_at: now,
        };
        for outcome in [
            Remembered::Customer(summary),
            Remembered::Erased { id: Uuid::now_v7() },
            Remembered::Grant { id: Uuid::now_v7() },
        ] {
            let text = serde_json::to_string(&outcome).unwrap();
            let back: Remembered = serde_json::from_str(&text).unwrap();
            assert_eq!(serde_json::to_string(&back).unwrap(), text);
        }
    }

    #[test]
    fn keys_are_visible_ascii_of_bounded_length() {
        assert!(IdempotencyRequest::valid_key("5f1c0a9e-retry-1"));
        assert!(!IdempotencyRequest::valid_key(""));
        assert!(!IdempotencyRequest::valid_key("has space"));
        assert!(!IdempotencyRequest::valid_key("键"));
        assert!(!IdempotencyRequest::valid_key(&"k".repeat(MAX_KEY_LEN + 1)));
        assert!(IdempotencyRequest::valid_key(&"k".repeat(MAX_KEY_LEN)));
    }
}

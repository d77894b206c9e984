//! Key lifecycle use cases: the live keyring (reloaded from its source), rotation, background
//! rewrap of data keys to the newest KEK version, retirement of old versions, and status.

use std::sync::{Arc, RwLock};

use serde::Serialize;

use super::{Caller, Vault, VaultError};
use crate::audit::{AuditEvent, AuditHandle};
use crate::authz::Action;
use crate::crypto::{BlindIndex, KeyFileError, KeySource, Keyring};
use crate::domain::RegionId;

/// The keyring and the blind-index keys derived from it, replaceable when the source changes.
pub struct Keys {
    source: Arc<dyn KeySource>,
    searchable: Vec<String>,
    current: RwLock<(Arc<Keyring>, Arc<BlindIndex>)>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys").field("source", &self.source.describe()).finish_non_exhaustive()
    }
}

impl Keys {
    pub fn load(source: Arc<dyn KeySource>, searchable: Vec<String>) -> Result<Self, VaultError> {
        let loaded = Self::derive(&*source, &searchable)?;
        Ok(Keys { source, searchable, current: RwLock::new(loaded) })
    }

    fn derive(source: &dyn KeySource, searchable: &[String]) -> Result<(Arc<Keyring>, Arc<BlindIndex>), VaultError> {
        let ring = source.load().map_err(VaultError::Keys)?;
        let index = BlindIndex::new(&ring, searchable).map_err(VaultError::Crypto)?;
        Ok((Arc::new(ring), Arc::new(index)))
    }

    fn read(&self) -> (Arc<Keyring>, Arc<BlindIndex>) {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// The keyring now.
    pub fn current(&self) -> Arc<Keyring> {
        self.read().0
    }

    /// The blind-index keys now.
    pub fn index(&self) -> Arc<BlindIndex> {
        self.read().1
    }

    /// Reloads from the source; keeps the current keys when the source fails.
    pub fn reload(&self) -> Result<(), VaultError> {
        let loaded = Self::derive(&*self.source, &self.searchable)?;
        match self.current.write() {
            Ok(mut g) => *g = loaded,
            Err(p) => *p.into_inner() = loaded,
        }
        Ok(())
    }

    pub fn source(&self) -> &dyn KeySource {
        &*self.source
    }
}

/// One KEK version.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct KeyVersionStatus {
    pub version: u32,
    pub fingerprint: String,
    /// `active` (wraps new data keys), `live` (still unwraps) or `retired` (material destroyed).
    pub state: &'static str,
    /// Data keys wrapped under this version.
    pub data_keys: i64,
}

/// The state of the keys and of the rewrap.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct KeyStatus {
    pub source: String,
    pub active_version: u32,
    pub versions: Vec<KeyVersionStatus>,
    /// Data keys still wrapped under an older version.
    pub rewrap_pending: i64,
    /// The blind-index version that indexes writes, and the live ones searches use.
    pub index_version: u32,
    pub index_versions: Vec<u32>,
    /// Records whose blind-index entries are still under an older index version.
    pub reindex_pending: i64,
    /// Share of data keys under the active version, in percent.
    pub rewrap_progress: f64,
}

/// Records rewrapped per batch.
const REWRAP_BATCH: u32 = 500;

impl Vault {
    /// Key management happens at the group level only: whether the caller is a key manager.
    pub fn may_manage_keys(&self, caller: &Caller) -> Result<(), VaultError> {
        self.check_key_manager(caller)
    }

    fn check_key_manager(&self, caller: &Caller) -> Result<(), VaultError> {
        let permit = self.admit(caller, Action::ManageKeys)?;
        let grant = self.gate.region(&permit, &RegionId::group())?;
        caller.audit.set_grant(grant);
        caller.audit.add_subject_region(&RegionId::group());
        Ok(())
    }

    /// The keyring now.
    pub fn keyring(&self) -> Arc<Keyring> {
        self.keys.current()
    }

    /// Reloads the keyring from its source (a rotation made elsewhere takes effect here).
    pub fn reload_keys(&self) -> Result<(), VaultError> {
        self.keys.reload()
    }

    /// Key versions, their use, and rewrap progress.
    pub async fn key_status_unchecked(&self) -> Result<KeyStatus, VaultError> {
        let ring = self.keyring();
        let usage = self.store.kek_usage().await?;
        let count = |v: u32| usage.iter().find(|(u, _)| *u == v).map_or(0, |(_, c)| *c);
        let mut versions: Vec<KeyVersionStatus> = ring
            .versions()
            .map(|(v, fp)| KeyVersionStatus {
                version: v,
                fingerprint: fp.to_owned(),
                state: if v == ring.active_version() { "active" } else { "live" },
                data_keys: count(v),
            })
            .chain(ring.retired_versions().map(|(v, fp)| KeyVersionStatus {
                version: v,
                fingerprint: fp.to_owned(),
                state: "retired",
                data_keys: count(v),
            }))
            .collect();
        versions.sort_by_key(|v| v.version);
        let total: i64 = usage.iter().map(|(_, c)| c).sum();
        let pending: i64 = usage.iter().filter(|(v, _)| *v < ring.active_version()).map(|(_, c)| c).sum();
        let index_version = ring.index_version();
        let reindex_pending = self.store.index_stale_count(i32::try_from(index_version).unwrap_or(i32::MAX)).await?;
        Ok(KeyStatus {
            index_version,
            index_versions: ring.index_versions().collect(),
            reindex_pending,
            source: self.keys.source().describe(),
            active_version: ring.active_version(),
            versions,
            rewrap_pending: pending,
            rewrap_progress: if total == 0 { 100.0 } else { 100.0 * (total - pending) as f64 / total as f64 },
        })
    }

    /// Key status, for key managers.
    pub async fn key_status(&self, caller: &Caller) -> Result<KeyStatus, VaultError> {
        self.check_key_manager(caller)?;
        self.key_status_unchecked().await
    }

    /// Adds a KEK version (through the API), audited with the request.
    pub async fn rotate_keys(&self, caller: &Caller) -> Result<KeyStatus, VaultError> {
        self.check_key_manager(caller)?;
        let version = self.keys.source().rotate().map_err(VaultError::Keys)?;
        self.reload_keys()?;
        tracing::info!(version, "key-encryption key rotated; rewrap runs in the background");
        self.key_status_unchecked().await
    }

    /// Audits a key operation done directly on the key source (command line).
    pub async fn record_key_operation(&self, actor: &str, action: &str) -> Result<(), VaultError> {
        self.system_event(actor, action).await
    }

    /// Adds a KEK version (command line), with its own audit event.
    pub async fn rotate_keys_as(&self, actor: &str) -> Result<u32, VaultError> {
        let version = self.keys.source().rotate().map_err(VaultError::Keys)?;
        self.reload_keys()?;
        self.system_event(actor, "keys.rotate").await?;
        Ok(version)
    }

    /// Destroys an old KEK version's material once no data key is wrapped under it.
    pub async fn retire_key_as(&self, actor: &str, version: u32) -> Result<(), VaultError> {
        self.reload_keys()?;
        if self.keyring().active_version() == version {
            return Err(VaultError::Keys(KeyFileError::NotRetirable(version)));
        }
        let in_use = self.store.kek_usage().await?.iter().any(|(v, c)| *v == version && *c > 0);
        if in_use {
            return Err(VaultError::Keys(KeyFileError::StillInUse(version)));
        }
        self.keys.source().retire(version).map_err(VaultError::Keys)?;
        self.reload_keys()?;
        self.system_event(actor, "keys.retire").await?;
        Ok(())
    }

    /// Moves up to one batch of data keys to the active KEK version; returns how many moved.
    /// Resumable by construction: progress is what the database holds.
    pub async fn rewrap_batch(&self) -> Result<usize, VaultError> {
        let ring = self.keyring();
        let active = ring.active_version();
        let batch = self.store.wrapped_below(active, REWRAP_BATCH).await?;
        let mut moved = 0;
        for (id, wrapped) in batch {
            let fresh = match ring.rewrap(id, &wrapped) {
                Ok(k) => k,
                Err(e) => {
                    tracing::error!(customer_id = %id, error = %e, "cannot rewrap a data key");
                    continue;
                }
            };
            if self.store.replace_wrapped_key(id, wrapped.kek_version, &fresh).await? {
                moved += 1;
            }
        }
        Ok(moved)
    }

    /// Adds a blind-index version (command line); re-indexing follows in the background.
    pub async fn rotate_index_as(&self, actor: &str) -> Result<u32, VaultError> {
        let version = self.keys.source().rotate_index().map_err(VaultError::Keys)?;
        self.reload_keys()?;
        self.system_event(actor, "keys.rotate_index").await?;
        Ok(version)
    }

    /// Destroys older blind-index versions once every record is re-indexed.
    pub async fn retire_old_index_as(&self, actor: &str) -> Result<(), VaultError> {
        self.reload_keys()?;
        let current = i32::try_from(self.keyring().index_version()).unwrap_or(i32::MAX);
        if self.store.index_stale_count(current).await? > 0 {
            return Err(VaultError::Keys(KeyFileError::Invalid(
                "records are still indexed under an older index version; run `custodia keys reindex` first",
            )));
        }
        self.keys.source().retire_old_index().map_err(VaultError::Keys)?;
        self.reload_keys()?;
        self.system_event(actor, "keys.retire_index").await?;
        Ok(())
    }

    /// Re-indexes up to one batch of records under the current index version.
    pub async fn reindex_batch(&self) -> Result<usize, VaultError> {
        let current = i32::try_from(self.keyring().index_version()).unwrap_or(i32::MAX);
        let ids = self.store.index_stale(current, REWRAP_BATCH).await?;
        let mut done = 0;
        for id in ids {
            let Some(record) = self.store.customer(id).await? else { continue };
            let key = match self.keyring().unwrap_data_key(record.id, &record.wrapped_key) {
                Ok(k) => k,
                Err(e) => {
                    tracing::error!(customer_id = %id, error = %e, "cannot re-index a record");
                    continue;
                }
            };
            let fields = self.open_fields_with(&record, &key)?;
            // Only if the record is still at the version read: an update in between wrote the
            // entries of its new values, and the old value's digest must not come back.
            if self.store.replace_index(id, record.version, &self.index_entries(&fields)).await? {
                done += 1;
            }
        }
        Ok(done)
    }

    /// Re-indexes until nothing is left.
    pub async fn reindex_all(&self) -> Result<usize, VaultError> {
        let mut total = 0;
        loop {
            let done = self.reindex_batch().await?;
            if done == 0 {
                return Ok(total);
            }
            total += done;
        }
    }

    /// Rewraps until nothing is left (or nothing more can be moved).
    pub async fn rewrap_all(&self) -> Result<usize, VaultError> {
        let mut total = 0;
        loop {
            let moved = self.rewrap_batch().await?;
            if moved == 0 {
                return Ok(total);
            }
            total += moved;
        }
    }

    /// Appends an event for work done outside a request (command line, background tasks).
    pub(super) async fn system_event(&self, actor: &str, action: &str) -> Result<(), VaultError> {
        let handle = AuditHandle::detached(action);
        handle.set_principal(actor);
        let event: AuditEvent = handle.closed(200);
        self.store.append_audit(crate::store::AuditBatch::events(vec![event])).await?;
        Ok(())
    }
}

//! The vault's use cases: customer records ([`customers`]) and grants ([`grants`]).
//!
//! This is the only layer that combines authorization, validation, cryptography and storage.
//! It takes domain inputs and returns domain outputs; it knows nothing about HTTP and writes
//! no SQL. Plaintext leaves it only inside [`FieldValue`]s.

pub mod audit;
mod customers;
mod grants;
pub mod idempotency;
pub mod keys;
mod lifecycle;
pub mod limits;
mod seed;

use std::sync::Arc;

use crate::audit::guard::{BulkGuard, GuardPolicy};
use crate::audit::{AuditHandle, AuditLog, CheckpointVerifier};
use crate::auth::Principal;
use crate::authz::{Action, Authorizer, Denied, Gate, GrantCache, Permit, Policy};
use crate::crypto::{CryptoError, KeySource};
use crate::domain::{Catalogue, Regions, ValidationErrors};
use crate::mask::ViewPolicy;
use crate::store::group::ReadQueue;
use crate::store::{Store, StoreError};
use limits::{BudgetPolicy, Budgets};

pub use audit::{AccessLogEntry, AuditPage};
pub use customers::{valid_justification, Batch, CustomerSummary, CustomerView, SearchPage, SearchRequest, Shown};

/// The largest page of audit events.
pub fn audit_max_page() -> u32 {
    audit::MAX_PAGE
}
pub use grants::{GrantPage, GrantView};

/// Errors of the use cases.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error(transparent)]
    Validation(#[from] ValidationErrors),
    /// Missing, or outside the caller's scope: the two are indistinguishable.
    #[error("customer not found")]
    NotFound,
    /// Refused by authorization (never for an out-of-scope record: that is `NotFound`).
    #[error("denied: {0}")]
    Denied(Denied),
    #[error("record version does not match")]
    VersionConflict,
    /// A search the vault does not offer (prefix, wildcard, range, ordering, unsearchable field).
    #[error("unsupported query: {0}")]
    UnsupportedQuery(&'static str),
    #[error("rate limit exceeded")]
    RateLimited,
    /// The principal's search budget is spent: an alert was raised and blocks it.
    #[error("search budget exceeded")]
    SearchBudget,
    /// The principal passed the bulk-access threshold: blocked until a security officer clears it.
    #[error("bulk access blocked")]
    BulkAccessBlocked,
    #[error("audit unavailable")]
    AuditUnavailable,
    /// The request's `Idempotency-Key` was used before with another request.
    #[error("idempotency key reused with another request")]
    IdempotencyKeyReused,
    #[error("keys: {0}")]
    Keys(crate::crypto::KeyFileError),
    /// The record is restricted (PIPL art. 47): only legal requests may read it.
    #[error("customer restricted")]
    Restricted,
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
            Denied::OutOfScope => VaultError::NotFound,
            Denied::Blocked => VaultError::BulkAccessBlocked,
            Denied::Restricted => VaultError::Restricted,
            other => VaultError::Denied(other),
        }
    }
}

/// Who is asking, for which stated purpose (`X-Purpose`), under which declared action (its
/// route's), and the audit event of the request.
#[derive(Clone, Debug)]
pub struct Caller {
    pub principal: Principal,
    pub purpose: Option<String>,
    pub action: Action,
    pub audit: AuditHandle,
    /// The request's `Idempotency-Key`, for the writes that honour one.
    pub idempotency: Option<idempotency::IdempotencyRequest>,
}

impl Caller {
    pub fn purpose(&self) -> Option<&str> {
        self.purpose.as_deref()
    }
}

/// Tunables of the use cases.
#[derive(Clone, Debug)]
pub struct VaultOptions {
    /// Reveals, searches and search misses per principal per hour (counted in the database).
    pub budgets: BudgetPolicy,
    /// Bulk-access guard.
    pub guard: GuardPolicy,
    /// Retention periods: (kind, status, days).
    pub retention: Vec<(crate::domain::CustomerKind, crate::domain::CustomerStatus, u32)>,
    /// How long an idempotency key is remembered.
    pub idempotency_window: std::time::Duration,
}

impl Default for VaultOptions {
    fn default() -> Self {
        VaultOptions {
            budgets: BudgetPolicy::default(),
            guard: GuardPolicy { threshold: 500, window: std::time::Duration::from_secs(3600) },
            retention: Vec::new(),
            idempotency_window: std::time::Duration::from_secs(24 * 3600),
        }
    }
}

/// What a vault is assembled from.
pub struct VaultParts {
    pub store: Arc<dyn Store>,
    pub keys: Arc<dyn KeySource>,
    pub catalogue: Arc<Catalogue>,
    pub regions: &'static Regions,
    pub policy: Arc<Policy>,
    pub views: Arc<ViewPolicy>,
    /// The pinned checkpoint key; without it audit verification is unavailable.
    pub verifier: Option<CheckpointVerifier>,
    /// The audit writer, whose group commits carry the creates with their events.
    pub audit: AuditLog,
    pub options: VaultOptions,
}

/// The vault.
pub struct Vault {
    store: Arc<dyn Store>,
    /// Creates go through the audit writer: one synced commit for them and the events beside them.
    audit: AuditLog,
    reads: ReadQueue,
    keys: keys::Keys,
    catalogue: Arc<Catalogue>,
    regions: &'static Regions,
    gate: Gate,
    budgets: Budgets,
    guard: Arc<BulkGuard>,
    verifier: Option<CheckpointVerifier>,
    retention: Vec<(crate::domain::CustomerKind, crate::domain::CustomerStatus, u32)>,
    idempotency_window: chrono::Duration,
    /// The outcome of this instance's newest audit verification, for the overview.
    last_verification: std::sync::Mutex<Option<audit::Verified>>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault").field("backend", &self.store.backend()).finish_non_exhaustive()
    }
}

impl Vault {
    /// Assembles the vault and loads the authorization state.
    pub async fn open(parts: VaultParts) -> Result<Self, VaultError> {
        let VaultParts { store, keys, catalogue, regions, policy, views, verifier, audit, options } = parts;
        let searchable = catalogue.fields().filter(|f| f.searchable).map(|f| f.name.clone()).collect();
        let keys = keys::Keys::load(keys, searchable)?;
        let grants = GrantCache::load(store.clone(), regions).await?;
        let guard = Arc::new(BulkGuard::new(options.guard));
        let budget_store = store.clone();
        limits::share_guard_counts(
            store.clone(),
            Arc::downgrade(&guard),
            Arc::downgrade(&grants),
            uuid::Uuid::now_v7().to_string(),
        );
        Ok(Vault {
            audit,
            reads: ReadQueue::start(store.clone()),
            store,
            keys,
            catalogue,
            regions,
            gate: Gate::new(Authorizer::new(policy, grants), views, regions),
            budgets: Budgets::new(budget_store, options.budgets),
            guard,
            verifier,
            retention: options.retention,
            idempotency_window: chrono::Duration::from_std(options.idempotency_window)
                .unwrap_or_else(|_| chrono::Duration::days(1)),
            last_verification: std::sync::Mutex::new(None),
        })
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn catalogue(&self) -> &Catalogue {
        &self.catalogue
    }

    pub fn authorizer(&self) -> &Authorizer {
        self.gate.authorizer()
    }

    /// The disclosure gate.
    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    /// Asks the gate whether the caller may do `implemented` (the action this use case is),
    /// under the action its route declared and the purpose it stated.
    pub(crate) fn admit(&self, caller: &Caller, implemented: Action) -> Result<Permit, VaultError> {
        Ok(self.gate.admit(&caller.principal, caller.action, implemented, caller.purpose())?)
    }

    /// Forgets budget counts and guard counts older than their hour (maintenance).
    pub async fn prune_budgets(&self) -> Result<(), VaultError> {
        Ok(self.budgets.prune().await?)
    }

    /// Whether the database answers.
    pub async fn ready(&self) -> Result<(), VaultError> {
        Ok(self.store.ping().await?)
    }
}

impl Vault {
    /// Samples the gauges that are read from the database, for metrics: open alerts, data
    /// keys awaiting rewrap, connection occupancy. Failures are logged and skipped.
    pub async fn sample_gauges(&self) {
        use crate::telemetry::prometheus::{OPEN_ALERTS, POOL_CONNECTIONS, POOL_MAX, REWRAP_PENDING};
        if let Some(pool) = self.store.pool_stats() {
            metrics::gauge!(POOL_CONNECTIONS, "state" => "busy").set(f64::from(pool.busy));
            metrics::gauge!(POOL_CONNECTIONS, "state" => "idle").set(f64::from(pool.idle));
            metrics::gauge!(POOL_MAX).set(f64::from(pool.max));
        }
        match self.store.alerts(None, 10_000).await {
            Ok(alerts) => {
                let open = alerts.iter().filter(|a| a.cleared_at.is_none()).count();
                metrics::gauge!(OPEN_ALERTS).set(open as f64);
            }
            Err(e) => tracing::debug!(error = %e, "open alerts not sampled"),
        }
        match self.key_status_unchecked().await {
            Ok(status) => metrics::gauge!(REWRAP_PENDING).set(status.rewrap_pending as f64),
            Err(e) => tracing::debug!(error = %e, "rewrap progress not sampled"),
        }
    }
}

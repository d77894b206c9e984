//! The in-memory view of grants and token revocations that authorization decisions read.
//!
//! The whole state is small (grants number in the thousands), so each instance keeps a snapshot
//! and replaces it when the database's authorization epoch moves: right after a local change,
//! and by polling the epoch (a one-row read) every 250 ms, so that a change made through any
//! instance sharing the database takes effect everywhere within a second. Liveness — not
//! revoked, not expired, and every grant up the delegation chain live too — is computed at
//! decision time, so expiry needs no writes.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::domain::{RegionId, Regions};
use crate::store::{AuthzState, GrantRecord, Store, StoreError};

/// How often instances look for changes made elsewhere.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Delegation chains longer than this are treated as not live.
const MAX_CHAIN: usize = 32;

/// A grant with its parsed region.
#[derive(Clone, Debug)]
pub struct CachedGrant {
    pub record: GrantRecord,
    /// `None` when the stored region is not a node of the tree (such a grant covers nothing).
    pub region: Option<RegionId>,
}

/// Whether a grant is in force.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrantStatus {
    Active,
    Expired,
    Revoked,
    /// Its own dates are fine but a grant up its delegation chain is expired or revoked.
    Suspended,
}

impl GrantStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            GrantStatus::Active => "active",
            GrantStatus::Expired => "expired",
            GrantStatus::Revoked => "revoked",
            GrantStatus::Suspended => "suspended",
        }
    }
}

/// One consistent view.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub epoch: i64,
    grants: HashMap<Uuid, CachedGrant>,
    by_principal: HashMap<String, Vec<Uuid>>,
    not_before: HashMap<String, DateTime<Utc>>,
    blocked: std::collections::HashSet<String>,
    clears: HashMap<String, i64>,
}

impl Snapshot {
    fn build(state: AuthzState, regions: &Regions) -> Snapshot {
        let mut snap = Snapshot { epoch: state.epoch, ..Snapshot::default() };
        for record in state.grants {
            let region = regions.parse(&record.region);
            snap.by_principal.entry(record.principal.clone()).or_default().push(record.id);
            snap.grants.insert(record.id, CachedGrant { record, region });
        }
        snap.not_before = state.token_revocations.into_iter().collect();
        snap.blocked = state.blocked.into_iter().collect();
        snap.clears = state.clears.into_iter().collect();
        snap
    }

    pub fn get(&self, id: Uuid) -> Option<&CachedGrant> {
        self.grants.get(&id)
    }

    fn own_status(g: &GrantRecord, now: DateTime<Utc>) -> GrantStatus {
        if g.revoked_at.is_some() {
            GrantStatus::Revoked
        } else if g.expires_at.is_some_and(|e| e <= now) {
            GrantStatus::Expired
        } else {
            GrantStatus::Active
        }
    }

    /// The grant's status at `now`, following its delegation chain.
    pub fn status(&self, g: &GrantRecord, now: DateTime<Utc>) -> GrantStatus {
        let own = Self::own_status(g, now);
        if own != GrantStatus::Active {
            return own;
        }
        let mut parent = g.parent_id;
        for _ in 0..MAX_CHAIN {
            let Some(id) = parent else { return GrantStatus::Active };
            let Some(p) = self.grants.get(&id) else { return GrantStatus::Suspended };
            if Self::own_status(&p.record, now) != GrantStatus::Active {
                return GrantStatus::Suspended;
            }
            parent = p.record.parent_id;
        }
        GrantStatus::Suspended
    }

    /// The grants delegated under `id`, directly or further down (what revoking it suspends),
    /// oldest first.
    pub fn delegated_under(&self, id: Uuid) -> Vec<&CachedGrant> {
        let mut out: Vec<&CachedGrant> = self
            .grants
            .values()
            .filter(|g| {
                let mut parent = g.record.parent_id;
                for _ in 0..MAX_CHAIN {
                    match parent {
                        Some(p) if p == id => return true,
                        Some(p) => parent = self.grants.get(&p).and_then(|g| g.record.parent_id),
                        None => return false,
                    }
                }
                false
            })
            .collect();
        out.sort_by_key(|g| (g.record.created_at, g.record.id));
        out
    }

    /// The grants above `id` in its delegation chain, nearest first (at most the chain limit).
    pub fn chain_above(&self, id: Uuid) -> Vec<&CachedGrant> {
        let mut out = Vec::new();
        let mut parent = self.grants.get(&id).and_then(|g| g.record.parent_id);
        while let Some(p) = parent {
            let Some(g) = self.grants.get(&p) else { break };
            out.push(g);
            if out.len() >= MAX_CHAIN {
                break;
            }
            parent = g.record.parent_id;
        }
        out
    }

    /// The principal's grants that are in force at `now`.
    pub fn live_grants_of<'a>(
        &'a self,
        principal: &str,
        now: DateTime<Utc>,
    ) -> impl Iterator<Item = &'a CachedGrant> + 'a {
        self.by_principal
            .get(principal)
            .into_iter()
            .flatten()
            .filter_map(|id| self.grants.get(id))
            .filter(move |g| g.region.is_some() && self.status(&g.record, now) == GrantStatus::Active)
    }

    /// Whether the principal has an open security alert.
    pub fn is_blocked(&self, principal: &str) -> bool {
        self.blocked.contains(principal)
    }

    /// Per principal, how many of its alerts have been cleared.
    pub fn clears(&self) -> &HashMap<String, i64> {
        &self.clears
    }

    /// Tokens of `principal` issued at or before this instant are refused.
    pub fn tokens_not_before(&self, principal: &str) -> Option<DateTime<Utc>> {
        self.not_before.get(principal).copied()
    }
}

/// The shared, refreshed snapshot.
pub struct GrantCache {
    store: Arc<dyn Store>,
    regions: &'static Regions,
    current: RwLock<Arc<Snapshot>>,
}

impl std::fmt::Debug for GrantCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrantCache").field("epoch", &self.snapshot().epoch).finish_non_exhaustive()
    }
}

impl GrantCache {
    pub async fn load(store: Arc<dyn Store>, regions: &'static Regions) -> Result<Arc<Self>, StoreError> {
        let state = store.authz_state().await?;
        let cache =
            Arc::new(GrantCache { store, regions, current: RwLock::new(Arc::new(Snapshot::build(state, regions))) });
        tokio::spawn(poll(Arc::downgrade(&cache)));
        Ok(cache)
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        match self.current.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Reloads from the database now.
    pub async fn reload(&self) -> Result<(), StoreError> {
        let state = self.store.authz_state().await?;
        let fresh = Arc::new(Snapshot::build(state, self.regions));
        let mut guard = match self.current.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        // Never go back to an older epoch (a slower concurrent reload may finish last).
        if fresh.epoch >= guard.epoch {
            *guard = fresh;
        }
        Ok(())
    }

    async fn reload_if_changed(&self) -> Result<(), StoreError> {
        if self.store.authz_epoch().await? != self.snapshot().epoch {
            self.reload().await?;
        }
        Ok(())
    }
}

/// Polls the epoch until the cache is dropped.
async fn poll(cache: Weak<GrantCache>) {
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(cache) = cache.upgrade() else { return };
        if let Err(e) = cache.reload_if_changed().await {
            tracing::warn!(error = %e, "cannot refresh grants; keeping the last snapshot");
        }
    }
}

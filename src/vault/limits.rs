//! Per-principal budgets, counted in the database so that they hold across every instance
//! sharing it: reveals (plaintext disclosures, exports included), exact-match searches (each
//! one an oracle that confirms or refutes a guess) and search misses (the signature of
//! guessing). Counts are kept per minute and summed over the last hour.
//!
//! The bulk-access guard (distinct customers shown) stays in each instance's memory, where the
//! read path can afford it; [`share_guard_counts`] publishes every instance's counts every
//! second and adds up the others', so a principal spread over several instances is counted as
//! one (within a second).

use std::collections::HashSet;
use std::sync::{Arc, Weak};
use std::time::Duration;

use chrono::Utc;

use crate::audit::guard::BulkGuard;
use crate::authz::GrantCache;
use crate::store::{Store, StoreError};

/// Minutes summed for an hourly budget.
const WINDOW_MINUTES: i64 = 60;
/// How often the guard's counts are exchanged between instances.
pub const GUARD_SYNC: Duration = Duration::from_secs(1);

/// A budget's name in the database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    Reveals,
    Searches,
    SearchMisses,
}

impl Counter {
    fn as_str(self) -> &'static str {
        match self {
            Counter::Reveals => "reveals",
            Counter::Searches => "searches",
            Counter::SearchMisses => "search_misses",
        }
    }
}

/// Limits per principal per hour.
#[derive(Clone, Copy, Debug)]
pub struct BudgetPolicy {
    pub reveals_per_hour: u32,
    pub searches_per_hour: u32,
    /// Misses within the hour that raise a security alert.
    pub search_miss_alarm: u32,
}

impl Default for BudgetPolicy {
    fn default() -> Self {
        BudgetPolicy { reveals_per_hour: 20, searches_per_hour: 200, search_miss_alarm: 50 }
    }
}

/// The database-backed counters.
pub struct Budgets {
    store: Arc<dyn Store>,
    pub policy: BudgetPolicy,
}

impl std::fmt::Debug for Budgets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Budgets").field("policy", &self.policy).finish_non_exhaustive()
    }
}

impl Budgets {
    pub fn new(store: Arc<dyn Store>, policy: BudgetPolicy) -> Self {
        Budgets { store, policy }
    }

    /// Charges one use of `counter` to `principal`; returns the uses within the hour,
    /// this one included. Every instance sharing the database sees the same count.
    pub async fn charge(&self, principal: &str, counter: Counter) -> Result<i64, StoreError> {
        let minute = Utc::now().timestamp().div_euclid(60);
        self.store.charge_budget(principal, counter.as_str(), minute, minute - WINDOW_MINUTES, 1).await
    }

    /// Forgets counts older than the window (maintenance).
    pub async fn prune(&self) -> Result<(), StoreError> {
        let minute = Utc::now().timestamp().div_euclid(60);
        self.store.prune_budgets(minute - WINDOW_MINUTES).await
    }
}

/// Exchanges the bulk guard's counts with the other instances every [`GUARD_SYNC`] until the
/// guard is dropped. A principal whose alert was cleared (on any instance: it left the blocked
/// set of the authorization snapshot) starts counting afresh here too, before this instance
/// publishes again.
pub fn share_guard_counts(store: Arc<dyn Store>, guard: Weak<BulkGuard>, grants: Weak<GrantCache>, instance: String) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(GUARD_SYNC);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut blocked: HashSet<String> = HashSet::new();
        loop {
            tick.tick().await;
            let (Some(guard), Some(grants)) = (guard.upgrade(), grants.upgrade()) else { return };
            let now_blocked: HashSet<String> = grants.snapshot().blocked().map(str::to_owned).collect();
            for cleared in blocked.difference(&now_blocked) {
                guard.reset(cleared);
            }
            blocked = now_blocked;
            let now = Utc::now().timestamp();
            let window = i64::try_from(guard.policy().window.as_secs()).unwrap_or(i64::MAX);
            let counts = guard.local_counts();
            let exchanged = async {
                store.publish_guard_counts(&instance, &counts, now).await?;
                store.guard_counts_elsewhere(&instance, now.saturating_sub(window)).await
            };
            match exchanged.await {
                Ok(remote) => guard.set_remote(remote),
                Err(e) => {
                    tracing::warn!(error = %e, "bulk-guard counts not exchanged; keeping the other instances' last counts")
                }
            }
        }
    });
}

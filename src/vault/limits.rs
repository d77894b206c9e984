//! Per-principal budgets, counted in the database so that they hold across every instance
//! sharing it: reveals (plaintext disclosures, exports included), exact-match searches (each
//! one an oracle that confirms or refutes a guess) and search misses (the signature of
//! guessing). Counts are kept per minute and summed over the last hour.
//!
//! The bulk-access guard (distinct customers shown) stays in each instance's memory, where the
//! read path can afford it; [`share_guard_counts`] publishes every instance's counts every
//! second and adds up the others', so a principal spread over several instances is counted as
//! one (within a second).
//!
//! This module counts and says how much of a budget is used; it decides nothing (the gate
//! declares which budgets an action spends, the use cases refuse) and never sees customer data.

use std::collections::HashMap;
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
/// An unchanged count is published again after this many seconds.
const REFRESH_SECS: i64 = 60;

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

    /// Forgets counts older than the window, and departed instances' guard counts (maintenance,
    /// once a minute).
    pub async fn prune(&self) -> Result<(), StoreError> {
        let minute = Utc::now().timestamp().div_euclid(60);
        self.store.prune_budgets(minute - WINDOW_MINUTES).await
    }
}

/// Exchanges the bulk guard's counts with the other instances every [`GUARD_SYNC`] until the
/// guard is dropped. A principal whose alert was cleared (on any instance: its count of cleared
/// alerts in the authorization snapshot grew) starts counting afresh here too, before this
/// instance publishes again.
pub fn share_guard_counts(store: Arc<dyn Store>, guard: Weak<BulkGuard>, grants: Weak<GrantCache>, instance: String) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(GUARD_SYNC);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Alert clears seen so far, per principal (`None` until the first snapshot is read:
        // clears from before this instance started concern no window of its own).
        let mut clears_seen: Option<HashMap<String, i64>> = None;
        // What was last published per principal, and when: only changes go out, and unchanged
        // counts are refreshed once a minute so that other instances do not age them out.
        let mut published: HashMap<String, (i64, i64)> = HashMap::new();
        loop {
            tick.tick().await;
            let (Some(guard), Some(grants)) = (guard.upgrade(), grants.upgrade()) else { return };
            let snapshot = grants.snapshot();
            let current = snapshot.clears();
            let cleared: Vec<String> = match &clears_seen {
                None => Vec::new(),
                Some(seen) => current
                    .iter()
                    .filter(|(p, n)| seen.get(*p).is_none_or(|s| *n > s))
                    .map(|(p, _)| p.clone())
                    .collect(),
            };
            for p in &cleared {
                guard.reset(p);
            }
            clears_seen = Some(current.clone());
            let now = Utc::now().timestamp();
            let window = i64::try_from(guard.policy().window.as_secs()).unwrap_or(i64::MAX);
            let counts: Vec<(String, i64)> = guard
                .local_counts()
                .into_iter()
                .filter(|(p, n)| published.get(p).is_none_or(|(last, at)| last != n || now - at >= REFRESH_SECS))
                // A cleared principal's row goes (its window here is gone, so it reports nothing).
                .chain(cleared.into_iter().map(|p| (p, 0)))
                .collect();
            let exchanged = async {
                store.publish_guard_counts(&instance, &counts, now).await?;
                for (p, n) in &counts {
                    if *n == 0 {
                        published.remove(p);
                    } else {
                        published.insert(p.clone(), (*n, now));
                    }
                }
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

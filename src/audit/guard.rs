//! The bulk-access guard: counts the distinct customers whose data each principal was shown in
//! a sliding window (per vault instance) and says when a disclosure would pass the threshold —
//! the pattern of the big telecom leaks: one identity walking a whole province.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use uuid::Uuid;

/// Guard settings.
#[derive(Clone, Copy, Debug)]
pub struct GuardPolicy {
    pub threshold: usize,
    pub window: Duration,
}

/// The guard.
#[derive(Debug)]
pub struct BulkGuard {
    policy: GuardPolicy,
    seen: Mutex<HashMap<String, HashMap<Uuid, Instant>>>,
}

impl BulkGuard {
    pub fn new(policy: GuardPolicy) -> Self {
        BulkGuard { policy, seen: Mutex::new(HashMap::new()) }
    }

    pub fn policy(&self) -> GuardPolicy {
        self.policy
    }

    /// Records that `customers` are about to be disclosed to `principal`. Returns the distinct
    /// count when that would pass the threshold (and then records nothing).
    pub fn admit(&self, principal: &str, customers: &[Uuid]) -> Result<(), usize> {
        let now = Instant::now();
        let mut seen = match self.seen.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mine = seen.entry(principal.to_owned()).or_default();
        mine.retain(|_, t| now.duration_since(*t) < self.policy.window);
        let new = customers.iter().filter(|c| !mine.contains_key(c)).count();
        if mine.len() + new > self.policy.threshold {
            return Err(mine.len() + new);
        }
        for c in customers {
            mine.insert(*c, now);
        }
        Ok(())
    }

    /// Forgets a principal's window (after a security officer cleared its alert).
    pub fn reset(&self, principal: &str) {
        if let Ok(mut seen) = self.seen.lock() {
            seen.remove(principal);
        }
    }
}

//! The bulk-access guard: counts the distinct customers whose data each principal was shown in
//! a sliding window and says when a disclosure would pass the threshold — the pattern of the
//! big telecom leaks: one identity walking a whole province. Each instance counts exactly what
//! it served; the counts of the other instances sharing the database are added in, as last
//! exchanged (every second, `vault::limits::share_guard_counts`).

use std::collections::{HashMap, VecDeque};
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
    seen: Mutex<HashMap<String, Window>>,
    /// Distinct customers shown by the other instances, per principal.
    remote: Mutex<HashMap<String, usize>>,
}

/// One principal's window: when each customer was last shown, and one queue entry per customer
/// in the order they were first recorded, so expiry pops from the front instead of scanning
/// (amortised O(1) per disclosure, whatever the window holds). A customer shown again keeps its
/// queue entry; when that entry reaches the front it is re-queued at its latest sighting. The
/// queue may then be slightly out of order, which can only keep a customer counted a little
/// longer than the window, never shorter.
#[derive(Debug, Default)]
struct Window {
    last_seen: HashMap<Uuid, Instant>,
    order: VecDeque<(Instant, Uuid)>,
}

impl Window {
    fn expire(&mut self, now: Instant, window: Duration) {
        while let Some(&(t, id)) = self.order.front() {
            if now.duration_since(t) < window {
                break;
            }
            self.order.pop_front();
            match self.last_seen.get(&id) {
                Some(&latest) if now.duration_since(latest) < window => self.order.push_back((latest, id)),
                _ => {
                    self.last_seen.remove(&id);
                }
            }
        }
    }
}

impl BulkGuard {
    pub fn new(policy: GuardPolicy) -> Self {
        BulkGuard { policy, seen: Mutex::new(HashMap::new()), remote: Mutex::new(HashMap::new()) }
    }

    pub fn policy(&self) -> GuardPolicy {
        self.policy
    }

    /// Records that `customers` are about to be disclosed to `principal`. Returns the distinct
    /// count when that would pass the threshold (and then records nothing).
    pub fn admit(&self, principal: &str, customers: &[Uuid]) -> Result<(), usize> {
        let elsewhere = match self.remote.lock() {
            Ok(r) => r.get(principal).copied().unwrap_or(0),
            Err(poisoned) => poisoned.into_inner().get(principal).copied().unwrap_or(0),
        };
        let now = Instant::now();
        let mut seen = match self.seen.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mine = match seen.get_mut(principal) {
            Some(w) => w,
            None => seen.entry(principal.to_owned()).or_default(),
        };
        mine.expire(now, self.policy.window);
        let new = customers.iter().filter(|c| !mine.last_seen.contains_key(c)).count();
        let distinct = mine.last_seen.len() + new + elsewhere;
        if distinct > self.policy.threshold {
            return Err(distinct);
        }
        for c in customers {
            if mine.last_seen.insert(*c, now).is_none() {
                mine.order.push_back((now, *c));
            }
        }
        Ok(())
    }

    /// Forgets a principal's window (after a security officer cleared its alert).
    pub fn reset(&self, principal: &str) {
        if let Ok(mut seen) = self.seen.lock() {
            seen.remove(principal);
        }
        if let Ok(mut remote) = self.remote.lock() {
            remote.remove(principal);
        }
    }

    /// This instance's distinct count per principal (windows expired first; principals whose
    /// window emptied are reported once with 0 and then forgotten).
    pub fn local_counts(&self) -> Vec<(String, i64)> {
        let now = Instant::now();
        let mut seen = match self.seen.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut out = Vec::with_capacity(seen.len());
        seen.retain(|principal, w| {
            w.expire(now, self.policy.window);
            out.push((principal.clone(), i64::try_from(w.last_seen.len()).unwrap_or(i64::MAX)));
            !w.last_seen.is_empty()
        });
        out
    }

    /// The other instances' counts, as last exchanged.
    pub fn set_remote(&self, counts: Vec<(String, i64)>) {
        let map = counts.into_iter().map(|(p, n)| (p, usize::try_from(n).unwrap_or(0))).collect();
        match self.remote.lock() {
            Ok(mut r) => *r = map,
            Err(poisoned) => *poisoned.into_inner() = map,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_distinct_customers_within_the_window() {
        let guard = BulkGuard::new(GuardPolicy { threshold: 3, window: Duration::from_millis(200) });
        let ids: Vec<Uuid> = (0..5).map(|_| Uuid::new_v4()).collect();
        assert_eq!(guard.admit("p", &ids[..2]), Ok(()));
        // The same customers again do not count twice.
        assert_eq!(guard.admit("p", &ids[..2]), Ok(()));
        assert_eq!(guard.admit("p", &ids[2..3]), Ok(()));
        assert_eq!(guard.admit("p", &ids[3..4]), Err(4));
        // Another principal has its own window.
        assert_eq!(guard.admit("q", &ids[3..5]), Ok(()));
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(guard.admit("p", &ids[3..5]), Ok(()));
    }

    #[test]
    fn a_refreshed_customer_stays_counted_and_the_queue_stays_bounded() {
        let guard = BulkGuard::new(GuardPolicy { threshold: 2, window: Duration::from_millis(150) });
        let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        assert_eq!(guard.admit("p", &[a]), Ok(()));
        std::thread::sleep(Duration::from_millis(100));
        for _ in 0..1000 {
            assert_eq!(guard.admit("p", &[a]), Ok(()));
        }
        std::thread::sleep(Duration::from_millis(100));
        // a's first sighting left the window, its latest did not: a still counts.
        assert_eq!(guard.admit("p", &[b]), Ok(()));
        assert_eq!(guard.admit("p", &[c]), Err(3));
        let seen = guard.seen.lock().unwrap();
        assert_eq!(seen["p"].order.len(), seen["p"].last_seen.len());
    }
}

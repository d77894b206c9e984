//! Per-principal rate limits (reveals). A sliding one-hour window kept in memory, per vault
//! instance.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Allows `limit` events per principal per `window`.
#[derive(Debug)]
pub struct RateLimiter {
    limit: u32,
    window: Duration,
    events: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl RateLimiter {
    pub fn new(limit: u32, window: Duration) -> Self {
        RateLimiter { limit, window, events: Mutex::new(HashMap::new()) }
    }

    /// Records an event for `principal` if it is within the limit.
    pub fn allow(&self, principal: &str) -> bool {
        let now = Instant::now();
        let mut events = match self.events.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let queue = events.entry(principal.to_owned()).or_default();
        while queue.front().is_some_and(|t| now.duration_since(*t) >= self.window) {
            queue.pop_front();
        }
        if queue.len() >= self.limit as usize {
            return false;
        }
        queue.push_back(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_principal_and_window() {
        let l = RateLimiter::new(2, Duration::from_millis(50));
        assert!(l.allow("a") && l.allow("a"));
        assert!(!l.allow("a"));
        assert!(l.allow("b"));
        std::thread::sleep(Duration::from_millis(60));
        assert!(l.allow("a"));
    }
}

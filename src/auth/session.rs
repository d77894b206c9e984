//! Console sessions, held by the server: an opaque random id in a cookie, the principal it
//! stands for, a CSRF token, an idle timeout and an absolute lifetime. Sign-out ends a session
//! here, so a copied cookie dies with it.
//!
//! Sessions live in this instance's memory (behind a load balancer, pin console users to an
//! instance); they are looked up by the SHA-256 of their id, so the table holds nothing a
//! cookie could be rebuilt from.
//!
//! Owns: creating, finding, expiring and ending sessions. Must never: log or expose a session
//! id or CSRF token, or accept a session past either of its limits.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use chrono::{DateTime, Utc};
use ring::rand::{SecureRandom, SystemRandom};

use super::Principal;

/// A session's limits.
#[derive(Clone, Copy, Debug)]
pub struct SessionPolicy {
    pub idle: Duration,
    pub lifetime: Duration,
}

/// A live session, as handed to a request.
#[derive(Clone, Debug)]
pub struct Session {
    pub principal: Principal,
    /// The token every state-changing form must carry.
    pub csrf: String,
}

struct Entry {
    sub: String,
    csrf: String,
    created: Instant,
    created_at: DateTime<Utc>,
    last_seen: Instant,
}

/// The sessions of this instance.
pub struct Sessions {
    policy: SessionPolicy,
    rng: SystemRandom,
    table: Mutex<HashMap<[u8; 32], Entry>>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").field("policy", &self.policy).finish_non_exhaustive()
    }
}

fn digest(id: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, id.as_bytes()).as_ref());
    out
}

impl Sessions {
    pub fn new(policy: SessionPolicy) -> Self {
        Sessions { policy, rng: SystemRandom::new(), table: Mutex::new(HashMap::new()) }
    }

    fn random(&self) -> Option<String> {
        let mut bytes = [0u8; 32];
        self.rng.fill(&mut bytes).ok()?;
        Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
    }

    /// Starts a session for `sub`; returns the cookie value (the only copy of the id).
    pub fn create(&self, sub: &str) -> Option<String> {
        let (id, csrf) = (self.random()?, self.random()?);
        let now = Instant::now();
        let entry = Entry { sub: sub.to_owned(), csrf, created: now, created_at: Utc::now(), last_seen: now };
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        // Forget expired sessions as new ones start: the table stays as large as the live set.
        let policy = self.policy;
        table.retain(|_, e| now - e.last_seen < policy.idle && now - e.created < policy.lifetime);
        table.insert(digest(&id), entry);
        Some(id)
    }

    /// The session a cookie names, if it is within both limits (its idle clock restarts).
    pub fn find(&self, id: &str) -> Option<Session> {
        let key = digest(id);
        let now = Instant::now();
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let live = table
            .get(&key)
            .is_some_and(|e| now - e.last_seen < self.policy.idle && now - e.created < self.policy.lifetime);
        if !live {
            table.remove(&key);
            return None;
        }
        let entry = table.get_mut(&key)?;
        entry.last_seen = now;
        let lifetime = chrono::Duration::from_std(self.policy.lifetime).unwrap_or_else(|_| chrono::Duration::hours(8));
        Some(Session {
            principal: Principal {
                sub: entry.sub.clone(),
                // As a token's `iat`: revoking the principal's tokens ends its sessions too.
                issued_at: Some(entry.created_at),
                expires_at: entry.created_at + lifetime,
            },
            csrf: entry.csrf.clone(),
        })
    }

    /// Ends a session (sign-out).
    pub fn end(&self, id: &str) {
        self.table.lock().unwrap_or_else(|p| p.into_inner()).remove(&digest(id));
    }
}

/// Whether `sent` is the session's CSRF token, compared in constant time.
pub fn csrf_matches(session: &Session, sent: &str) -> bool {
    super::same_secret(&session.csrf, sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sessions(idle_ms: u64) -> Sessions {
        Sessions::new(SessionPolicy { idle: Duration::from_millis(idle_ms), lifetime: Duration::from_secs(3600) })
    }

    #[test]
    fn a_session_is_found_by_its_id_only_and_ends_on_sign_out() {
        let s = sessions(60_000);
        let id = s.create("officer").unwrap();
        let found = s.find(&id).unwrap();
        assert_eq!(found.principal.sub, "officer");
        assert!(csrf_matches(&found, &found.csrf.clone()));
        assert!(!csrf_matches(&found, "forged"));
        assert!(s.find("not-an-id").is_none());
        s.end(&id);
        assert!(s.find(&id).is_none());
    }

    #[test]
    fn an_idle_session_expires() {
        let s = sessions(30);
        let id = s.create("officer").unwrap();
        std::thread::sleep(Duration::from_millis(60));
        assert!(s.find(&id).is_none());
    }
}

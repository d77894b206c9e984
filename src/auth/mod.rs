//! Authentication: a bearer JWT in, a [`Principal`] out.
//!
//! A token only says who the caller is. Nothing in it is trusted about permissions; that is
//! [`crate::authz`]'s business. This module never logs a token or any part of one.

mod keys;
pub mod oidc;
pub mod session;
pub mod token;

use chrono::{DateTime, TimeZone, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

pub use keys::KeyConfigError;

use crate::config::AuthConfig;

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The token's `sub`.
    pub sub: String,
    pub issued_at: Option<DateTime<Utc>>,
    pub expires_at: DateTime<Utc>,
}

/// Why a request is not authenticated. The variants map to stable problem codes; none
/// carries any part of the token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no bearer token")]
    Missing,
    #[error("token is not a well-formed JWT")]
    Malformed,
    #[error("token has expired")]
    Expired,
    /// The principal's tokens issued until some instant were revoked, and this is one.
    #[error("token revoked")]
    Revoked,
    #[error("token rejected: {0}")]
    Rejected(Rejection),
}

/// Why a well-formed token was rejected (logged, not returned in detail).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("header carries jku, jwk, x5u, x5c or crit")]
    ForbiddenHeader,
    #[error("typ header is not an accepted access-token type")]
    TokenType,
    #[error("kid missing or not in the allow-list")]
    UnknownKey,
    #[error("alg does not match the key's pinned algorithm")]
    Algorithm,
    #[error("signature does not verify")]
    Signature,
    #[error("issuer, audience, subject or time claims invalid")]
    Claims,
    #[error("token is not yet valid")]
    NotYetValid,
}

/// Largest token accepted, in bytes.
const MAX_TOKEN_LEN: usize = 8 * 1024;

#[derive(Deserialize)]
struct Claims {
    // Optional here so that a missing claim is reported by the validator as a rejected token,
    // not as a malformed one.
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    exp: Option<i64>,
    #[serde(default)]
    iat: Option<i64>,
    /// ID tokens only.
    #[serde(default)]
    nonce: Option<String>,
    /// ID tokens only: the party the token was issued to.
    #[serde(default)]
    azp: Option<String>,
}

#[derive(Clone)]
struct AllowedKey {
    algorithm: Algorithm,
    key: DecodingKey,
    validation: Validation,
}

/// What a token is presented as: the vault's rules for each.
enum Use<'a> {
    /// A bearer access token for the vault (`aud` = `auth.audience`, `typ` an access-token type).
    Access,
    /// An OpenID Connect ID token for the console (`aud` = the console's client id, the
    /// sign-in's nonce, never an access token's `typ`).
    Id { client_id: &'a str, nonce: &'a str },
}

/// Most verified tokens remembered (the cache is emptied when full).
const CACHE_ENTRIES: usize = 10_000;

/// Verifies bearer tokens against the configured allow-list of keys.
pub struct Authenticator {
    keys: std::collections::HashMap<String, AllowedKey>,
    /// The identity provider's published signing keys (its JWKS, fetched by
    /// [`oidc`](crate::auth::oidc)), replaced whole at each refresh. Configured keys win a
    /// shared kid.
    provider_keys: std::sync::RwLock<std::collections::HashMap<String, AllowedKey>>,
    issuer: String,
    audience: String,
    token_types: Vec<String>,
    leeway: i64,
    /// SHA-256 of a token already verified → its principal. Only the identical token hits;
    /// expiry is checked on every hit, and revocation is checked by the caller on every request.
    verified: std::sync::Mutex<std::collections::HashMap<[u8; 32], Principal>>,
    /// Whether the public example token key is among the allowed keys (by fingerprint).
    example_key: bool,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut kids: Vec<_> = self.keys.keys().collect();
        kids.sort();
        f.debug_struct("Authenticator").field("kids", &kids).finish()
    }
}

/// Selects jsonwebtoken's crypto backend explicitly (RustCrypto), so that no feature
/// combination can leave the process without one and panic at the first verification.
pub fn install_jwt_backend() {
    // Err only means a provider is already installed, which is what we want.
    let _ = jsonwebtoken::crypto::CryptoProvider::install_default(&jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER);
}

impl Authenticator {
    /// Builds the verifier from the configured keys. Paths are resolved as given (relative to
    /// the working directory).
    pub fn from_config(config: &AuthConfig) -> Result<Self, KeyConfigError> {
        Self::new(config, false)
    }

    /// Builds the verifier; with `provider_keys`, the identity provider's published keys will
    /// join (see [`Authenticator::install_provider_keys`]), so configured keys may be absent.
    pub fn new(config: &AuthConfig, provider_keys: bool) -> Result<Self, KeyConfigError> {
        install_jwt_backend();
        let loaded = keys::load(config, provider_keys)?;
        let mut map = std::collections::HashMap::new();
        let example_key = loaded.iter().any(|(.., example)| *example);
        for (kid, algorithm, key, _) in loaded {
            let allowed = Self::allowed(config, algorithm, key);
            if map.insert(kid, allowed).is_some() {
                return Err(KeyConfigError::DuplicateKid);
            }
        }
        Ok(Authenticator {
            keys: map,
            provider_keys: std::sync::RwLock::new(std::collections::HashMap::new()),
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            token_types: config.token_types.clone(),
            leeway: i64::try_from(config.leeway_seconds.min(30)).unwrap_or(30),
            verified: std::sync::Mutex::new(std::collections::HashMap::new()),
            example_key,
        })
    }

    fn allowed(config: &AuthConfig, algorithm: Algorithm, key: DecodingKey) -> AllowedKey {
        let mut validation = Validation::new(algorithm);
        validation.algorithms = vec![algorithm];
        validation.set_issuer(&[&config.issuer]);
        validation.set_audience(&[&config.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = config.leeway_seconds.min(30);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = true;
        AllowedKey { algorithm, key, validation }
    }

    /// Replaces the identity provider's keys with those of its JWKS (signing keys of the
    /// accepted kinds only; a kid already configured keeps its configured key). Returns how
    /// many were installed.
    pub fn install_provider_keys(&self, set: &jsonwebtoken::jwk::JwkSet) -> usize {
        let config = AuthConfig {
            issuer: self.issuer.clone(),
            audience: self.audience.clone(),
            leeway_seconds: u64::try_from(self.leeway).unwrap_or(30),
            ..AuthConfig::default()
        };
        let fresh: std::collections::HashMap<_, _> = keys::from_provider_jwks(set)
            .into_iter()
            .filter(|(kid, ..)| !self.keys.contains_key(kid))
            .map(|(kid, algorithm, key, _)| (kid, Self::allowed(&config, algorithm, key)))
            .collect();
        let n = fresh.len();
        *self.provider_keys.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        n
    }

    /// Whether `kid` names a key this verifier knows.
    pub fn knows_key(&self, kid: &str) -> bool {
        self.keys.contains_key(kid) || self.provider_keys.read().unwrap_or_else(|p| p.into_inner()).contains_key(kid)
    }

    /// Whether the public example token key is accepted (recognised by fingerprint, under
    /// whatever kid, PEM file or JWKS it was configured): anyone can mint tokens it verifies.
    pub fn accepts_example_key(&self) -> bool {
        self.example_key
    }

    /// Verifies a bearer token (a token verified before is answered from a bounded cache
    /// until it expires).
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::Malformed);
        }
        let mut digest = [0u8; 32];
        digest.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref());
        let now = Utc::now();
        if let Ok(cache) = self.verified.lock() {
            if let Some(p) = cache.get(&digest) {
                if p.expires_at + chrono::Duration::seconds(self.leeway) > now {
                    return Ok(p.clone());
                }
            }
        }
        let principal = self.verify_uncached(token)?;
        if let Ok(mut cache) = self.verified.lock() {
            if cache.len() >= CACHE_ENTRIES {
                cache.retain(|_, p| p.expires_at > now);
                if cache.len() >= CACHE_ENTRIES {
                    cache.clear();
                }
            }
            cache.insert(digest, principal.clone());
        }
        Ok(principal)
    }

    fn verify_uncached(&self, token: &str) -> Result<Principal, AuthError> {
        self.check(token, Use::Access)
    }

    /// Verifies an OpenID Connect ID token received by the console at sign-in: the same key
    /// allow-list, pinned algorithms, forbidden headers and issuer as access tokens, but its
    /// audience is the console's `client_id` (and `azp`, when present, too), it must carry the
    /// sign-in's `nonce`, and it must not be an access token. Returns its subject.
    pub fn verify_id_token(&self, token: &str, client_id: &str, nonce: &str) -> Result<Principal, AuthError> {
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::Malformed);
        }
        self.check(token, Use::Id { client_id, nonce })
    }

    fn check(&self, token: &str, purpose: Use<'_>) -> Result<Principal, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        let reject = |r| Err(AuthError::Rejected(r));
        if header.jku.is_some()
            || header.jwk.is_some()
            || header.x5u.is_some()
            || header.x5c.is_some()
            || header.crit.is_some()
        {
            return reject(Rejection::ForbiddenHeader);
        }
        let is_access_type = |typ: &str| self.token_types.iter().any(|t| t.eq_ignore_ascii_case(typ));
        match (&purpose, header.typ.as_deref()) {
            (Use::Access, Some(typ)) if is_access_type(typ) => {}
            (Use::Id { .. }, None) => {}
            (Use::Id { .. }, Some(typ)) if typ.eq_ignore_ascii_case("JWT") => {}
            _ => return reject(Rejection::TokenType),
        }
        let Some(kid) = header.kid.as_deref() else { return reject(Rejection::UnknownKey) };
        // Configured keys are used in place; a provider key is copied out of its lock.
        let provider_key;
        let allowed = match self.keys.get(kid) {
            Some(k) => k,
            None => match self.provider_keys.read().unwrap_or_else(|p| p.into_inner()).get(kid) {
                Some(k) => {
                    provider_key = k.clone();
                    &provider_key
                }
                None => return reject(Rejection::UnknownKey),
            },
        };
        if header.alg != allowed.algorithm {
            return reject(Rejection::Algorithm);
        }
        let id_validation;
        let validation = match &purpose {
            Use::Access => &allowed.validation,
            Use::Id { client_id, .. } => {
                let mut v = allowed.validation.clone();
                v.set_audience(&[client_id]);
                id_validation = v;
                &id_validation
            }
        };
        let data = jsonwebtoken::decode::<Claims>(token, &allowed.key, validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::Rejected(Rejection::NotYetValid),
                ErrorKind::InvalidSignature | ErrorKind::InvalidEcdsaKey | ErrorKind::InvalidRsaKey(_) => {
                    AuthError::Rejected(Rejection::Signature)
                }
                ErrorKind::InvalidToken | ErrorKind::Base64(_) | ErrorKind::Json(_) | ErrorKind::Utf8(_) => {
                    AuthError::Malformed
                }
                _ => AuthError::Rejected(Rejection::Claims),
            }
        })?;
        let claims = data.claims;
        if let Use::Id { client_id, nonce } = &purpose {
            let nonce_ok = claims.nonce.as_deref().is_some_and(|n| same_secret(n, nonce));
            if !nonce_ok || claims.azp.as_deref().is_some_and(|azp| azp != *client_id) {
                return reject(Rejection::Claims);
            }
        }
        let (Some(sub), Some(exp)) = (claims.sub, claims.exp) else {
            return reject(Rejection::Claims);
        };
        if !valid_subject(&sub) {
            return reject(Rejection::Claims);
        }
        let expires_at = Utc.timestamp_opt(exp, 0).single().ok_or(AuthError::Rejected(Rejection::Claims))?;
        let issued_at = claims.iat.and_then(|t| Utc.timestamp_opt(t, 0).single());
        Ok(Principal { sub, issued_at, expires_at })
    }
}

/// Whether two secrets (CSRF tokens, sign-in states, nonces) are equal, compared in constant
/// time (their lengths are not secret).
pub fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Subjects are identifiers that appear in logs and the audit: printable ASCII without
/// spaces or quotes, 1–128 bytes.
pub fn valid_subject(sub: &str) -> bool {
    !sub.is_empty()
        && sub.len() <= 128
        && sub.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@' | b':' | b'|' | b'+'))
}

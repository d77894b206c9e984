//! Blind indexes for exact-match search over encrypted fields: HMAC-SHA256 of the normalised
//! value under a per-field key derived with HKDF from the blind-index root secret, which is
//! separate from the key-encryption keys. An unkeyed hash of an 11-digit phone number is
//! brute-forced in seconds; a keyed one is useless without the key.

use std::collections::HashMap;

use ring::hmac;

use super::{CryptoError, Keyring};

/// A blind-index digest.
pub type Digest = [u8; 32];

/// The HMAC keys of the searchable fields, for every live index version (the highest is
/// current: it indexes every write; older ones serve searches until re-indexing finishes).
pub struct BlindIndex {
    keys: HashMap<(String, u32), hmac::Key>,
    versions: Vec<u32>,
    version: u32,
}

impl std::fmt::Debug for BlindIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlindIndex").field("versions", &self.versions).field("version", &self.version).finish()
    }
}

impl BlindIndex {
    /// Derives one key per searchable field.
    pub fn new(keyring: &Keyring, fields: &[String]) -> Result<Self, CryptoError> {
        let versions: Vec<u32> = keyring.index_versions().collect();
        let mut keys = HashMap::new();
        for &version in &versions {
            for field in fields {
                let raw = keyring.derive_index_key(version, &format!("field/{field}/v{version}"))?;
                keys.insert((field.to_owned(), version), hmac::Key::new(hmac::HMAC_SHA256, raw.as_ref()));
            }
        }
        Ok(BlindIndex { keys, version: keyring.index_version(), versions })
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    /// The current digest of a normalised value of `field`, or `None` when the field is not
    /// searchable.
    pub fn digest(&self, field: &str, normalised: &str) -> Option<Digest> {
        self.digest_at(field, normalised, self.version)
    }

    fn digest_at(&self, field: &str, normalised: &str, version: u32) -> Option<Digest> {
        let key = self.keys.get(&(field.to_owned(), version))?;
        let tag = hmac::sign(key, normalised.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        Some(out)
    }

    /// The digest under every live version, for searching while re-indexing runs.
    pub fn digests(&self, field: &str, normalised: &str) -> Vec<(u32, Digest)> {
        self.versions.iter().filter_map(|&v| self.digest_at(field, normalised, v).map(|d| (v, d))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_keyed_per_field() {
        let ring = Keyring::from_toml(include_str!("../../keys-example/keys.toml")).unwrap();
        let idx = BlindIndex::new(&ring, &["mobile".to_owned(), "email".to_owned()]).unwrap();
        let a = idx.digest("mobile", "13812345678").unwrap();
        assert_eq!(a, idx.digest("mobile", "13812345678").unwrap());
        assert_ne!(a, idx.digest("email", "13812345678").unwrap());
        assert_ne!(a.as_slice(), ring::digest::digest(&ring::digest::SHA256, b"13812345678").as_ref());
        assert!(idx.digest("name", "x").is_none());
    }
}

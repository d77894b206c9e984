//! The keyring: versioned key-encryption keys (KEKs) and the blind-index root secret, loaded
//! from a key file (`keys-example/keys.toml` is the public example).
//!
//! Raw key bytes live only inside zeroizing buffers and cipher instances that zeroize their key
//! schedule on drop. `Debug` shows versions and fingerprints, never key bytes.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use aes_gcm::{Aes256Gcm, KeyInit};
use base64::Engine;
use secrecy::{ExposeSecret, SecretBox};
use serde::Deserialize;
use zeroize::{Zeroize, Zeroizing};

use super::CryptoError;

/// Fingerprints of the KEKs in `keys-example/keys.toml`: whoever loads them is warned, whatever
/// the file they came from says.
const EXAMPLE_KEK_FINGERPRINTS: [&str; 1] = ["ecf3786ce586b3b3"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    #[serde(default)]
    example: bool,
    kek: Vec<KeyEntry>,
    index: KeyEntry,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    version: u32,
    key: String,
}

impl Drop for KeyEntry {
    fn drop(&mut self) {
        self.key.zeroize();
    }
}

/// Why a key file could not be loaded. Never carries key bytes.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read key file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("key file does not parse: {0}")]
    Parse(String),
    #[error("key file: {0}")]
    Invalid(&'static str),
}

/// One key-encryption key.
pub(crate) struct Kek {
    pub(crate) cipher: Aes256Gcm,
    fingerprint: String,
}

/// The loaded keys.
pub struct Keyring {
    keks: BTreeMap<u32, Kek>,
    active: u32,
    index_root: SecretBox<[u8; 32]>,
    index_version: u32,
    example: bool,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keks: Vec<_> = self.keks.iter().map(|(v, k)| format!("v{v}:{}", k.fingerprint)).collect();
        f.debug_struct("Keyring")
            .field("keks", &keks)
            .field("active", &self.active)
            .field("index_version", &self.index_version)
            .field("example", &self.example)
            .finish()
    }
}

fn decode_key(b64: &str) -> Result<Zeroizing<[u8; 32]>, KeyFileError> {
    let bytes = Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|_| KeyFileError::Invalid("a key is not valid base64"))?,
    );
    if bytes.len() != 32 {
        return Err(KeyFileError::Invalid("every key must be exactly 32 bytes"));
    }
    let mut key = Zeroizing::new([0u8; 32]);
    key.copy_from_slice(&bytes);
    Ok(key)
}

/// A short, non-secret identifier of a key: the first 8 bytes of a domain-separated SHA-256.
pub fn fingerprint(key: &[u8; 32]) -> String {
    fingerprint_bytes(key)
}

/// [`fingerprint`] of key bytes of any length (public keys).
pub fn fingerprint_bytes(key: &[u8]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"custodia/key-fingerprint/v1\0");
    ctx.update(key);
    ctx.finish().as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect()
}

impl Keyring {
    /// Loads a key file.
    pub fn load(path: &Path) -> Result<Self, KeyFileError> {
        let text = Zeroizing::new(
            std::fs::read_to_string(path)
                .map_err(|source| KeyFileError::Read { path: path.display().to_string(), source })?,
        );
        Self::from_toml(&text)
    }

    pub fn from_toml(text: &str) -> Result<Self, KeyFileError> {
        // toml's error text can quote the offending line, which may hold a key: keep only
        // its position.
        let file: KeyFile = toml::from_str(text).map_err(|e| {
            KeyFileError::Parse(match e.span() {
                Some(span) => format!("syntax error at byte {}", span.start),
                None => "syntax error".to_owned(),
            })
        })?;
        let mut keks = BTreeMap::new();
        let mut example = file.example;
        for entry in &file.kek {
            if entry.version == 0 {
                return Err(KeyFileError::Invalid("KEK versions start at 1"));
            }
            let key = decode_key(&entry.key)?;
            let fp = fingerprint(&key);
            example |= EXAMPLE_KEK_FINGERPRINTS.contains(&fp.as_str());
            let cipher = Aes256Gcm::new_from_slice(key.as_ref())
                .map_err(|_| KeyFileError::Invalid("every key must be exactly 32 bytes"))?;
            if keks.insert(entry.version, Kek { cipher, fingerprint: fp }).is_some() {
                return Err(KeyFileError::Invalid("a KEK version appears twice"));
            }
        }
        let active = *keks.keys().next_back().ok_or(KeyFileError::Invalid("the key file holds no KEK"))?;
        let index_key = decode_key(&file.index.key)?;
        Ok(Keyring {
            keks,
            active,
            index_root: SecretBox::new(Box::new(*index_key)),
            index_version: file.index.version,
            example,
        })
    }

    /// Whether these are the public example keys.
    pub fn is_example(&self) -> bool {
        self.example
    }

    /// The KEK version that wraps new data keys.
    pub fn active_version(&self) -> u32 {
        self.active
    }

    /// Loaded KEK versions with their fingerprints.
    pub fn versions(&self) -> impl Iterator<Item = (u32, &str)> {
        self.keks.iter().map(|(v, k)| (*v, k.fingerprint.as_str()))
    }

    pub(crate) fn kek(&self, version: u32) -> Result<&Kek, CryptoError> {
        self.keks.get(&version).ok_or(CryptoError::UnknownKeyVersion(version))
    }

    /// Derives a 32-byte subkey of the blind-index root secret for `purpose` (HKDF-SHA256).
    pub fn derive_index_key(&self, purpose: &str) -> Result<Zeroizing<[u8; 32]>, CryptoError> {
        struct Len32;
        impl ring::hkdf::KeyType for Len32 {
            fn len(&self) -> usize {
                32
            }
        }
        let salt = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"custodia/blind-index/v1");
        let prk = salt.extract(self.index_root.expose_secret());
        let info = [purpose.as_bytes()];
        let mut out = Zeroizing::new([0u8; 32]);
        prk.expand(&info, Len32).and_then(|okm| okm.fill(out.as_mut())).map_err(|_| CryptoError::Derivation)?;
        Ok(out)
    }

    pub fn index_version(&self) -> u32 {
        self.index_version
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../keys-example/keys.toml");

    #[test]
    fn example_keys_are_recognised_by_fingerprint() {
        let stripped = EXAMPLE.replace("example = true", "example = false");
        let ring = Keyring::from_toml(&stripped).unwrap();
        assert!(ring.is_example(), "example fingerprints out of date: {ring:?}");
    }

    #[test]
    fn debug_never_shows_key_bytes() {
        let ring = Keyring::from_toml(EXAMPLE).unwrap();
        let dbg = format!("{ring:?}");
        assert!(!dbg.contains("NIQPheu") && !dbg.contains("J0CyEMy"));
    }

    #[test]
    fn parse_errors_do_not_quote_keys() {
        let broken = "[[kek]]\nversion = 1\nkey = \"SECRETSECRET\" junk\n";
        let err = Keyring::from_toml(broken).unwrap_err().to_string();
        assert!(!err.contains("SECRETSECRET"), "{err}");
        let short = "[[kek]]\nversion = 1\nkey = \"U0VDUkVU\"\n[index]\nversion = 1\nkey = \"U0VDUkVU\"\n";
        let err = Keyring::from_toml(short).unwrap_err().to_string();
        assert!(!err.contains("U0VDUkVU"), "{err}");
    }
}

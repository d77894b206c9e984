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
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use super::CryptoError;

/// Fingerprints of the KEKs in `keys-example/keys.toml`: whoever loads them is warned, whatever
/// the file they came from says.
const EXAMPLE_KEK_FINGERPRINTS: [&str; 1] = ["ecf3786ce586b3b3"];
/// Fingerprint of the blind-index root in `keys-example/keys.toml`: search digests under it can
/// be recomputed by anyone, so it is recognised (and warned about) wherever it is loaded from.
const EXAMPLE_INDEX_FINGERPRINTS: [&str; 1] = ["d12efe7b3c745749"];

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    #[serde(default)]
    example: bool,
    kek: Vec<KeyEntry>,
    /// One `[index]` table, or `[[index]]` versions after an index rotation.
    index: IndexEntries,
}

#[derive(Deserialize, Serialize)]
#[serde(untagged)]
enum IndexEntries {
    One(KeyEntry),
    Many(Vec<KeyEntry>),
}

impl IndexEntries {
    fn entries(&self) -> &[KeyEntry] {
        match self {
            IndexEntries::One(e) => std::slice::from_ref(e),
            IndexEntries::Many(v) => v,
        }
    }

    fn into_vec(self) -> Vec<KeyEntry> {
        match self {
            IndexEntries::One(e) => vec![e],
            IndexEntries::Many(v) => v,
        }
    }
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    version: u32,
    /// Absent once the version is retired: its material is destroyed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    key: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    retired: bool,
    /// Kept for retired versions, so that what they wrapped can be named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fingerprint: Option<String>,
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
    #[error("cannot write key file {path}: {source}")]
    Write { path: String, source: std::io::Error },
    #[error("key source is read-only: {0}")]
    ReadOnly(&'static str),
    #[error("key version {0} still wraps data keys; rewrap first (custodia keys rewrap)")]
    StillInUse(u32),
    #[error("no such key version {0}, or it is the active one")]
    NotRetirable(u32),
}

/// AES-256-GCM under one key-encryption key, wherever that key lives: in memory (key file,
/// environment) or inside an HSM that never releases it.
pub trait KekCipher: Send + Sync {
    /// Seals `plaintext`; returns ciphertext ‖ tag.
    fn seal(&self, nonce: &[u8; 12], aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError>;
    /// Opens ciphertext ‖ tag.
    fn open(&self, nonce: &[u8], aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError>;
}

impl KekCipher for Aes256Gcm {
    fn seal(&self, nonce: &[u8; 12], aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        use aes_gcm::aead::{Aead, Payload};
        self.encrypt(aes_gcm::Nonce::from_slice(nonce), Payload { msg: plaintext, aad })
            .map_err(|_| CryptoError::Integrity)
    }

    fn open(&self, nonce: &[u8], aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        use aes_gcm::aead::{Aead, Payload};
        self.decrypt(aes_gcm::Nonce::from_slice(nonce), Payload { msg: sealed, aad })
            .map(Zeroizing::new)
            .map_err(|_| CryptoError::Integrity)
    }
}

/// One key-encryption key.
pub(crate) struct Kek {
    pub(crate) cipher: Box<dyn KekCipher>,
    fingerprint: String,
}

/// The loaded keys.
pub struct Keyring {
    keks: BTreeMap<u32, Kek>,
    /// Retired versions and their fingerprints: their material is gone.
    retired: BTreeMap<u32, String>,
    active: u32,
    /// Live blind-index root secrets by version; the highest is current.
    index_roots: BTreeMap<u32, SecretBox<[u8; 32]>>,
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
        let mut retired = BTreeMap::new();
        let mut example = file.example;
        for entry in &file.kek {
            if entry.version == 0 {
                return Err(KeyFileError::Invalid("KEK versions start at 1"));
            }
            if entry.retired {
                if !entry.key.is_empty() {
                    return Err(KeyFileError::Invalid("a retired KEK must have its key material removed"));
                }
                retired.insert(entry.version, entry.fingerprint.clone().unwrap_or_default());
                continue;
            }
            let key = decode_key(&entry.key)?;
            let fp = fingerprint(&key);
            example |= EXAMPLE_KEK_FINGERPRINTS.contains(&fp.as_str());
            let cipher = Aes256Gcm::new_from_slice(key.as_ref())
                .map_err(|_| KeyFileError::Invalid("every key must be exactly 32 bytes"))?;
            if keks.insert(entry.version, Kek { cipher: Box::new(cipher), fingerprint: fp }).is_some() {
                return Err(KeyFileError::Invalid("a KEK version appears twice"));
            }
        }
        let active = *keks.keys().next_back().ok_or(KeyFileError::Invalid("the key file holds no live KEK"))?;
        if retired.keys().any(|v| keks.contains_key(v) || *v > active) {
            return Err(KeyFileError::Invalid("a retired version must be older than the active one and appear once"));
        }
        let mut index_roots = BTreeMap::new();
        for entry in file.index.entries().iter().filter(|e| !e.retired) {
            let key = decode_key(&entry.key)?;
            example |= EXAMPLE_INDEX_FINGERPRINTS.contains(&fingerprint(&key).as_str());
            if index_roots.insert(entry.version, SecretBox::new(Box::new(*key))).is_some() {
                return Err(KeyFileError::Invalid("an index version appears twice"));
            }
        }
        let index_version =
            *index_roots.keys().next_back().ok_or(KeyFileError::Invalid("the key file holds no live index key"))?;
        Ok(Keyring { keks, retired, active, index_roots, index_version, example })
    }

    /// A keyring from ciphers held elsewhere (an HSM): (version, cipher, fingerprint) for live
    /// versions, (version, fingerprint) for retired ones, and the blind-index roots by version.
    pub fn from_parts(
        keks: Vec<(u32, Box<dyn KekCipher>, String)>,
        retired: Vec<(u32, String)>,
        index_roots: Vec<(u32, Zeroizing<[u8; 32]>)>,
    ) -> Result<Self, KeyFileError> {
        let keks: BTreeMap<u32, Kek> =
            keks.into_iter().map(|(v, cipher, fingerprint)| (v, Kek { cipher, fingerprint })).collect();
        let active = *keks.keys().next_back().ok_or(KeyFileError::Invalid("the key source holds no live KEK"))?;
        let index_roots: BTreeMap<u32, SecretBox<[u8; 32]>> =
            index_roots.into_iter().map(|(v, k)| (v, SecretBox::new(Box::new(*k)))).collect();
        let index_version =
            *index_roots.keys().next_back().ok_or(KeyFileError::Invalid("the key source holds no index key"))?;
        Ok(Keyring { keks, retired: retired.into_iter().collect(), active, index_roots, index_version, example: false })
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
        match self.keks.get(&version) {
            Some(k) => Ok(k),
            None if self.retired.contains_key(&version) => Err(CryptoError::RetiredKeyVersion(version)),
            None => Err(CryptoError::UnknownKeyVersion(version)),
        }
    }

    /// Retired versions and their fingerprints.
    pub fn retired_versions(&self) -> impl Iterator<Item = (u32, &str)> {
        self.retired.iter().map(|(v, f)| (*v, f.as_str()))
    }

    /// The live blind-index versions.
    pub fn index_versions(&self) -> impl Iterator<Item = u32> + '_ {
        self.index_roots.keys().copied()
    }

    /// Derives a 32-byte subkey of blind-index root `version` for `purpose` (HKDF-SHA256).
    pub fn derive_index_key(&self, version: u32, purpose: &str) -> Result<Zeroizing<[u8; 32]>, CryptoError> {
        let root = self.index_roots.get(&version).ok_or(CryptoError::UnknownKeyVersion(version))?;
        struct Len32;
        impl ring::hkdf::KeyType for Len32 {
            fn len(&self) -> usize {
                32
            }
        }
        let salt = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"custodia/blind-index/v1");
        let prk = salt.extract(root.expose_secret());
        let info = [purpose.as_bytes()];
        let mut out = Zeroizing::new([0u8; 32]);
        prk.expand(&info, Len32).and_then(|okm| okm.fill(out.as_mut())).map_err(|_| CryptoError::Derivation)?;
        Ok(out)
    }

    pub fn index_version(&self) -> u32 {
        self.index_version
    }
}

const KEY_FILE_HEADER: &str =
    "# Custodia key file. Keep it out of the repository and out of database backups (docs/KEYS.md).\n\
# Rewritten by `custodia keys rotate` and `custodia keys retire`.\n";

fn random_key_b64() -> Result<String, KeyFileError> {
    let key =
        super::random_bytes::<32>().map_err(|_| KeyFileError::Invalid("system random number generator failed"))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(key.as_ref()))
}

fn render(file: &KeyFile) -> Result<Zeroizing<String>, KeyFileError> {
    let body = toml::to_string(file).map_err(|_| KeyFileError::Invalid("cannot serialise the key file"))?;
    Ok(Zeroizing::new(format!("{KEY_FILE_HEADER}{body}")))
}

/// Adds a new KEK version to key file text; returns the new text and version.
pub fn rotate_text(text: &str) -> Result<(Zeroizing<String>, u32), KeyFileError> {
    let mut file: KeyFile = toml::from_str(text).map_err(|_| KeyFileError::Parse("syntax error".into()))?;
    let version = file.kek.iter().map(|k| k.version).max().unwrap_or(0) + 1;
    file.kek.push(KeyEntry { version, key: random_key_b64()?, retired: false, fingerprint: None });
    // A rotated file is no longer the public example, though it may still hold example versions.
    file.example = false;
    Ok((render(&file)?, version))
}

/// Adds a new blind-index root version to key file text; returns the new text and version.
pub fn rotate_index_text(text: &str) -> Result<(Zeroizing<String>, u32), KeyFileError> {
    let mut file: KeyFile = toml::from_str(text).map_err(|_| KeyFileError::Parse("syntax error".into()))?;
    let mut entries = std::mem::replace(&mut file.index, IndexEntries::Many(Vec::new())).into_vec();
    let version = entries.iter().map(|k| k.version).max().unwrap_or(0) + 1;
    entries.push(KeyEntry { version, key: random_key_b64()?, retired: false, fingerprint: None });
    file.index = IndexEntries::Many(entries);
    file.example = false;
    Ok((render(&file)?, version))
}

/// Destroys the material of every blind-index version older than the current one.
pub fn retire_old_index_text(text: &str) -> Result<Zeroizing<String>, KeyFileError> {
    let mut file: KeyFile = toml::from_str(text).map_err(|_| KeyFileError::Parse("syntax error".into()))?;
    let mut entries = std::mem::replace(&mut file.index, IndexEntries::Many(Vec::new())).into_vec();
    let current = entries.iter().filter(|e| !e.retired).map(|e| e.version).max().unwrap_or(0);
    for e in entries.iter_mut().filter(|e| !e.retired && e.version < current) {
        let key = decode_key(&e.key)?;
        e.fingerprint = Some(fingerprint(&key));
        e.key.zeroize();
        e.key = String::new();
        e.retired = true;
    }
    file.index = IndexEntries::Many(entries);
    render(&file)
}

/// Destroys the material of KEK `version` in key file text, keeping its fingerprint.
pub fn retire_text(text: &str, version: u32) -> Result<Zeroizing<String>, KeyFileError> {
    let mut file: KeyFile = toml::from_str(text).map_err(|_| KeyFileError::Parse("syntax error".into()))?;
    let active = file.kek.iter().filter(|k| !k.retired).map(|k| k.version).max().unwrap_or(0);
    let entry =
        file.kek.iter_mut().find(|k| k.version == version && !k.retired).ok_or(KeyFileError::NotRetirable(version))?;
    if version == active {
        return Err(KeyFileError::NotRetirable(version));
    }
    let key = decode_key(&entry.key)?;
    entry.fingerprint = Some(fingerprint(&key));
    entry.key.zeroize();
    entry.key = String::new();
    entry.retired = true;
    render(&file)
}

/// Writes key file text next to `path` and renames it into place, owner-readable only.
pub fn write_key_file(path: &Path, text: &str) -> Result<(), KeyFileError> {
    let err = |source| KeyFileError::Write { path: path.display().to_string(), source };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".new");
    let tmp = std::path::PathBuf::from(tmp);
    {
        use std::io::Write;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut f = options.open(&tmp).map_err(err)?;
        f.write_all(text.as_bytes()).map_err(err)?;
        f.sync_all().map_err(err)?;
    }
    std::fs::rename(&tmp, path).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../keys-example/keys.toml");

    #[test]
    fn the_example_index_root_is_recognised_by_fingerprint() {
        // A real KEK beside the example index root: still the public example (search digests
        // under it can be recomputed by anyone).
        let text = EXAMPLE
            .replace("example = true", "example = false")
            .replace("NIQPheuChONN51ZCufgtmRJyEeRUXkq/QZ0PYO9FgF0=", "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=");
        assert!(Keyring::from_toml(&text).unwrap().is_example());
        let text = text
            .replace("J0CyEMy0mjSKTPlw+o67p8gGZFUCYwL8ahkhnYD5IUc=", "HyAhIiMkJSYnKCkqKywtLi8wMTIzNDU2Nzg5Ojs8PT4=");
        assert!(!Keyring::from_toml(&text).unwrap().is_example());
    }

    #[test]
    fn example_keys_are_recognised_by_fingerprint() {
        let stripped = EXAMPLE.replace("example = true", "example = false");
        let ring = Keyring::from_toml(&stripped).unwrap();
        assert!(ring.is_example(), "example fingerprints out of date: {ring:?}");
    }

    #[test]
    fn rotate_then_retire() {
        let (rotated, v) = rotate_text(EXAMPLE).unwrap();
        assert_eq!(v, 2);
        let ring = Keyring::from_toml(&rotated).unwrap();
        assert_eq!(ring.active_version(), 2);
        let id = uuid::Uuid::now_v7();
        let old = Keyring::from_toml(EXAMPLE).unwrap().generate_data_key(id).unwrap().1;
        assert!(ring.unwrap_data_key(id, &old).is_ok());
        let retired = retire_text(&rotated, 1).unwrap();
        assert!(!retired.contains("NIQPheu"), "retired material must be gone");
        let ring = Keyring::from_toml(&retired).unwrap();
        assert_eq!(ring.unwrap_data_key(id, &old).unwrap_err(), CryptoError::RetiredKeyVersion(1));
        assert!(matches!(retire_text(&retired, 2), Err(KeyFileError::NotRetirable(2))));
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

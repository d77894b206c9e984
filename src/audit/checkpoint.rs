//! Signed checkpoints: every N events or T seconds the vault signs (sequence number, chain
//! head, time) with Ed25519 (ring). A verifier holding the pinned public key can then tell a
//! genuine chain from one rewritten and re-hashed by someone with database access.

use std::path::Path;

use base64::Engine;
use chrono::{DateTime, Utc};
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};

use super::event::time_text;

/// A signed checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub seq: i64,
    pub chain_hash: Vec<u8>,
    pub time: DateTime<Utc>,
    pub key_id: String,
    pub signature: Vec<u8>,
}

/// Why a checkpoint key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointKeyError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{0} is not an Ed25519 key in PEM form")]
    Format(String),
}

/// The signed message.
pub fn message(seq: i64, chain_hash: &[u8], time: &DateTime<Utc>) -> Vec<u8> {
    let mut m = Vec::with_capacity(96);
    m.extend_from_slice(b"custodia/audit-checkpoint/v1\0");
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(chain_hash);
    m.extend_from_slice(time_text(time).as_bytes());
    m
}

fn pem_der(path: &Path) -> Result<Vec<u8>, CheckpointKeyError> {
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path)
            .map_err(|source| CheckpointKeyError::Read { path: path.display().to_string(), source })?,
    );
    let body: zeroize::Zeroizing<String> =
        zeroize::Zeroizing::new(text.lines().filter(|l| !l.starts_with("-----")).collect());
    base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .map_err(|_| CheckpointKeyError::Format(path.display().to_string()))
}

/// The key id (fingerprint) of the public example checkpoint key.
const EXAMPLE_AUDIT_KEY_ID: &str = "8e7c0b28988bf41e";

fn key_id(public: &[u8]) -> String {
    crate::crypto::keyring::fingerprint_bytes(public)
}

/// Signs checkpoints.
pub struct CheckpointSigner {
    key: Ed25519KeyPair,
    key_id: String,
}

impl std::fmt::Debug for CheckpointSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointSigner").field("key_id", &self.key_id).finish_non_exhaustive()
    }
}

impl CheckpointSigner {
    /// Loads a PKCS#8 PEM Ed25519 private key.
    pub fn load(path: &Path) -> Result<Self, CheckpointKeyError> {
        let der = zeroize::Zeroizing::new(pem_der(path)?);
        let key = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der)
            .map_err(|_| CheckpointKeyError::Format(path.display().to_string()))?;
        let key_id = key_id(key.public_key().as_ref());
        Ok(CheckpointSigner { key, key_id })
    }

    pub fn sign(&self, seq: i64, chain_hash: &[u8], time: DateTime<Utc>) -> Checkpoint {
        let signature = self.key.sign(&message(seq, chain_hash, &time)).as_ref().to_vec();
        Checkpoint { seq, chain_hash: chain_hash.to_vec(), time, key_id: self.key_id.clone(), signature }
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Whether this is the public example signing key (`keys-example/audit-ed25519.pem`),
    /// recognised by fingerprint wherever it was loaded from: anyone can forge its checkpoints.
    pub fn is_example(&self) -> bool {
        self.key_id == EXAMPLE_AUDIT_KEY_ID
    }
}

/// Verifies checkpoints against a pinned public key.
#[derive(Clone, Debug)]
pub struct CheckpointVerifier {
    public: Vec<u8>,
    key_id: String,
}

impl CheckpointVerifier {
    /// Loads an SPKI PEM Ed25519 public key.
    pub fn load(path: &Path) -> Result<Self, CheckpointKeyError> {
        let der = pem_der(path)?;
        if der.len() < 32 {
            return Err(CheckpointKeyError::Format(path.display().to_string()));
        }
        let public = der[der.len() - 32..].to_vec();
        Ok(CheckpointVerifier { key_id: key_id(&public), public })
    }

    pub fn verify(&self, cp: &Checkpoint) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.public)
            .verify(&message(cp.seq, &cp.chain_hash, &cp.time), &cp.signature)
            .is_ok()
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }
}

#[cfg(test)]
mod example_tests {
    #[test]
    fn the_example_signing_key_is_recognised_by_fingerprint_wherever_it_lies() {
        let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("signing.pem");
        std::fs::copy(root.join("keys-example/audit-ed25519.pem"), &copy).unwrap();
        assert!(super::CheckpointSigner::load(&copy).unwrap().is_example());
    }
}

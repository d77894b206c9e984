//! Key material and envelope encryption.
//!
//! Owns every secret byte the vault holds: key-encryption keys ([`keyring`]), per-record data
//! keys and the sealed field format ([`envelope`]). Key material is zeroized on drop and no
//! type here prints key bytes in `Debug`. This module never logs plaintext or keys and never
//! touches the database.

pub mod blind;
pub mod envelope;
pub mod keyring;
pub mod pkcs11;
pub mod source;

pub use blind::{BlindIndex, Digest};
pub use envelope::{DataKey, FieldContext, WrappedKey};
pub use keyring::{KeyFileError, Keyring};
pub use source::{EnvSource, FileSource, KeySource};

/// What can go wrong while sealing or opening.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    /// Authentication failed: the ciphertext was altered, truncated, or moved to another
    /// record, field or version.
    #[error("ciphertext failed authentication")]
    Integrity,
    /// The key version a ciphertext names is not loaded.
    #[error("key-encryption key version {0} is not loaded")]
    UnknownKeyVersion(u32),
    /// The version was retired: its material is destroyed, and what it wrapped is unreadable.
    #[error("key-encryption key version {0} is retired")]
    RetiredKeyVersion(u32),
    /// The system random number generator failed.
    #[error("system random number generator failed")]
    Random,
    /// Key derivation failed.
    #[error("key derivation failed")]
    Derivation,
}

pub(crate) fn random_bytes<const N: usize>() -> Result<zeroize::Zeroizing<[u8; N]>, CryptoError> {
    use ring::rand::SecureRandom;
    static RNG: std::sync::LazyLock<ring::rand::SystemRandom> = std::sync::LazyLock::new(ring::rand::SystemRandom::new);
    let mut out = zeroize::Zeroizing::new([0u8; N]);
    RNG.fill(out.as_mut()).map_err(|_| CryptoError::Random)?;
    Ok(out)
}

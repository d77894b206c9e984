//! Envelope encryption of customer records.
//!
//! Every record has its own random 256-bit data key, stored only wrapped (AES-256-GCM) by a
//! versioned KEK. Every field is sealed separately under the data key with AES-256-GCM and a
//! fresh random 96-bit nonce. The associated data binds each ciphertext to its place, so a
//! ciphertext moved to another record, another field, another key version or replayed from an
//! older version of the same record fails authentication instead of decrypting.
//!
//! Formats (all integers big-endian):
//! - wrapped data key v1: `0x01 ‖ nonce(12) ‖ AES-GCM(KEK, dek(32)) ‖ tag(16)`, associated data
//!   `"custodia/dek/v1\0" ‖ record id(16) ‖ kek version(u32)`;
//! - sealed field v1: `0x01 ‖ data key version(u32) ‖ nonce(12) ‖ ciphertext ‖ tag(16)`,
//!   associated data `"custodia/field/v1\0" ‖ record id(16) ‖ data key version(u32) ‖
//!   record version(u64) ‖ field name`.

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use uuid::Uuid;
use zeroize::Zeroizing;

use super::keyring::Keyring;
use super::{random_bytes, CryptoError};

const WRAP_FORMAT_V1: u8 = 1;
const FIELD_FORMAT_V1: u8 = 1;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const WRAPPED_LEN: usize = 1 + NONCE_LEN + 32 + TAG_LEN;
const FIELD_HEADER_LEN: usize = 1 + 4 + NONCE_LEN;

/// The generation of a record's data key. Every record has generation 1 until data keys are
/// rotated per record; it is in the field format so that such a rotation stays possible.
pub const DATA_KEY_VERSION: u32 = 1;

/// A data key wrapped under a KEK, as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrappedKey {
    pub kek_version: u32,
    pub bytes: Vec<u8>,
}

/// An unwrapped per-record data key. Its key schedule is zeroized on drop.
pub struct DataKey {
    cipher: Aes256Gcm,
    record: Uuid,
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataKey").field("record", &self.record).finish_non_exhaustive()
    }
}

/// Where a sealed field lives: the associated data is built from it.
#[derive(Clone, Copy, Debug)]
pub struct FieldContext<'a> {
    pub field: &'a str,
    pub record_version: i64,
}

fn wrap_aad(record: Uuid, kek_version: u32) -> Vec<u8> {
    let mut aad = Vec::with_capacity(40);
    aad.extend_from_slice(b"custodia/dek/v1\0");
    aad.extend_from_slice(record.as_bytes());
    aad.extend_from_slice(&kek_version.to_be_bytes());
    aad
}

fn field_aad(record: Uuid, key_version: u32, ctx: FieldContext<'_>) -> Vec<u8> {
    let mut aad = Vec::with_capacity(64 + ctx.field.len());
    aad.extend_from_slice(b"custodia/field/v1\0");
    aad.extend_from_slice(record.as_bytes());
    aad.extend_from_slice(&key_version.to_be_bytes());
    aad.extend_from_slice(&ctx.record_version.to_be_bytes());
    aad.extend_from_slice(ctx.field.as_bytes());
    aad
}

impl Keyring {
    /// Creates a fresh data key for `record`, wrapped under the active KEK.
    pub fn generate_data_key(&self, record: Uuid) -> Result<(DataKey, WrappedKey), CryptoError> {
        let dek = random_bytes::<32>()?;
        let wrapped = self.wrap(record, &dek, self.active_version())?;
        let cipher = Aes256Gcm::new_from_slice(dek.as_ref()).map_err(|_| CryptoError::Integrity)?;
        Ok((DataKey { cipher, record }, wrapped))
    }

    fn wrap(&self, record: Uuid, dek: &[u8; 32], kek_version: u32) -> Result<WrappedKey, CryptoError> {
        let kek = self.kek(kek_version)?;
        let nonce = random_bytes::<NONCE_LEN>()?;
        let aad = wrap_aad(record, kek_version);
        let ct = kek.cipher.seal(&nonce, &aad, dek)?;
        let mut bytes = Vec::with_capacity(WRAPPED_LEN);
        bytes.push(WRAP_FORMAT_V1);
        bytes.extend_from_slice(nonce.as_ref());
        bytes.extend_from_slice(&ct);
        Ok(WrappedKey { kek_version, bytes })
    }

    fn unwrap_raw(&self, record: Uuid, wrapped: &WrappedKey) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let kek = self.kek(wrapped.kek_version)?;
        if wrapped.bytes.len() != WRAPPED_LEN || wrapped.bytes[0] != WRAP_FORMAT_V1 {
            return Err(CryptoError::Integrity);
        }
        let aad = wrap_aad(record, wrapped.kek_version);
        let (nonce, ct) = wrapped.bytes[1..].split_at(NONCE_LEN);
        kek.cipher.open(nonce, &aad, ct)
    }

    /// Unwraps the data key of `record`.
    pub fn unwrap_data_key(&self, record: Uuid, wrapped: &WrappedKey) -> Result<DataKey, CryptoError> {
        let dek = self.unwrap_raw(record, wrapped)?;
        let cipher = Aes256Gcm::new_from_slice(&dek).map_err(|_| CryptoError::Integrity)?;
        Ok(DataKey { cipher, record })
    }

    /// Re-wraps a record's data key under the active KEK (key rotation).
    pub fn rewrap(&self, record: Uuid, wrapped: &WrappedKey) -> Result<WrappedKey, CryptoError> {
        let dek = self.unwrap_raw(record, wrapped)?;
        let mut key = Zeroizing::new([0u8; 32]);
        key.copy_from_slice(&dek);
        self.wrap(record, &key, self.active_version())
    }
}

impl DataKey {
    /// Seals one field value of this key's record.
    pub fn seal(&self, ctx: FieldContext<'_>, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let nonce = random_bytes::<NONCE_LEN>()?;
        let aad = field_aad(self.record, DATA_KEY_VERSION, ctx);
        let ct = self
            .cipher
            .encrypt(Nonce::from_slice(nonce.as_ref()), Payload { msg: plaintext, aad: &aad })
            .map_err(|_| CryptoError::Integrity)?;
        let mut out = Vec::with_capacity(FIELD_HEADER_LEN + ct.len());
        out.push(FIELD_FORMAT_V1);
        out.extend_from_slice(&DATA_KEY_VERSION.to_be_bytes());
        out.extend_from_slice(nonce.as_ref());
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Opens a sealed field of this key's record. Any mismatch of place or content is
    /// [`CryptoError::Integrity`].
    pub fn open(&self, ctx: FieldContext<'_>, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        if sealed.len() < FIELD_HEADER_LEN + TAG_LEN || sealed[0] != FIELD_FORMAT_V1 {
            return Err(CryptoError::Integrity);
        }
        let mut version = [0u8; 4];
        version.copy_from_slice(&sealed[1..5]);
        let key_version = u32::from_be_bytes(version);
        if key_version != DATA_KEY_VERSION {
            return Err(CryptoError::Integrity);
        }
        let aad = field_aad(self.record, key_version, ctx);
        let nonce = &sealed[5..FIELD_HEADER_LEN];
        self.cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: &sealed[FIELD_HEADER_LEN..], aad: &aad })
            .map(Zeroizing::new)
            .map_err(|_| CryptoError::Integrity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring() -> Keyring {
        Keyring::from_toml(include_str!("../../keys-example/keys.toml")).unwrap()
    }

    const CTX: FieldContext<'static> = FieldContext { field: "mobile", record_version: 1 };

    #[test]
    fn round_trip() {
        let ring = ring();
        let id = Uuid::now_v7();
        let (key, wrapped) = ring.generate_data_key(id).unwrap();
        let sealed = key.seal(CTX, b"13812345678").unwrap();
        let again = ring.unwrap_data_key(id, &wrapped).unwrap();
        assert_eq!(again.open(CTX, &sealed).unwrap().as_slice(), b"13812345678");
        // Fresh nonces: sealing twice never gives the same bytes.
        assert_ne!(sealed, key.seal(CTX, b"13812345678").unwrap());
    }

    #[test]
    fn ciphertext_is_bound_to_record_field_and_version() {
        let ring = ring();
        let (a, wa) = ring.generate_data_key(Uuid::now_v7()).unwrap();
        let sealed = a.seal(CTX, b"13812345678").unwrap();
        assert_eq!(
            a.open(FieldContext { field: "email", record_version: 1 }, &sealed).unwrap_err(),
            CryptoError::Integrity
        );
        assert_eq!(
            a.open(FieldContext { field: "mobile", record_version: 2 }, &sealed).unwrap_err(),
            CryptoError::Integrity
        );
        // The wrapped key of one record does not unwrap for another.
        assert_eq!(ring.unwrap_data_key(Uuid::now_v7(), &wa).unwrap_err(), CryptoError::Integrity);
        // Bit flips and truncation.
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert!(a.open(CTX, &bad).is_err(), "flip at {i} accepted");
        }
        assert!(a.open(CTX, &sealed[..sealed.len() - 1]).is_err());
        assert!(a.open(CTX, &[]).is_err());
    }

    #[test]
    fn unknown_kek_version_is_named() {
        let ring = ring();
        let id = Uuid::now_v7();
        let (_, mut wrapped) = ring.generate_data_key(id).unwrap();
        wrapped.kek_version = 9;
        assert_eq!(ring.unwrap_data_key(id, &wrapped).unwrap_err(), CryptoError::UnknownKeyVersion(9));
    }
}

//! A key source in a PKCS#11 token (an HSM; tested against SoftHSM): key-encryption keys are
//! non-extractable AES-256 keys labelled `custodia-kek-v{N}` that wrap and unwrap data keys
//! with AES-256-GCM inside the token; the blind-index root of version N is an HMAC-SHA256, made
//! inside the token with the non-extractable secret `custodia-index-v{N}`. No KEK ever leaves
//! the token; rotation generates a new one there, retirement destroys it there.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use zeroize::Zeroizing;

use super::keyring::{fingerprint_bytes, KekCipher, KeyFileError, Keyring};
use super::source::KeySource;
use super::CryptoError;

const KEK_LABEL: &str = "custodia-kek-v";
const INDEX_LABEL: &str = "custodia-index-v";

/// PKCS#11 settings.
#[derive(Clone)]
pub struct Pkcs11Source {
    pub module: PathBuf,
    pub token_label: String,
    pin: secrecy::SecretString,
}

impl std::fmt::Debug for Pkcs11Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Source")
            .field("module", &self.module)
            .field("token_label", &self.token_label)
            .finish_non_exhaustive()
    }
}

fn hsm_error(what: &'static str) -> impl Fn(cryptoki::error::Error) -> KeyFileError {
    move |e| {
        tracing::error!(error = %e, "PKCS#11: {what} failed");
        KeyFileError::Invalid(what)
    }
}

/// One initialised library per module path, for the whole process.
fn context(module: &Path) -> Result<Pkcs11, KeyFileError> {
    static CONTEXTS: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    let mut map = match CONTEXTS.get_or_init(|| Mutex::new(HashMap::new())).lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    if let Some(ctx) = map.get(module) {
        return Ok(ctx.clone());
    }
    let ctx = Pkcs11::new(module).map_err(hsm_error("loading the PKCS#11 module"))?;
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .map_err(hsm_error("initialising the PKCS#11 module"))?;
    map.insert(module.to_owned(), ctx.clone());
    Ok(ctx)
}

/// A KEK inside the token.
struct TokenKek {
    session: Arc<Mutex<Session>>,
    key: ObjectHandle,
}

impl KekCipher for TokenKek {
    fn seal(&self, nonce: &[u8; 12], aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut iv = *nonce;
        let params = GcmParams::new(&mut iv, aad, 128.into()).map_err(|_| CryptoError::Integrity)?;
        let session = self.session.lock().map_err(|_| CryptoError::Integrity)?;
        session.encrypt(&Mechanism::AesGcm(params), self.key, plaintext).map_err(|_| CryptoError::Integrity)
    }

    fn open(&self, nonce: &[u8], aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let mut iv = [0u8; 12];
        if nonce.len() != 12 {
            return Err(CryptoError::Integrity);
        }
        iv.copy_from_slice(nonce);
        let params = GcmParams::new(&mut iv, aad, 128.into()).map_err(|_| CryptoError::Integrity)?;
        let session = self.session.lock().map_err(|_| CryptoError::Integrity)?;
        session
            .decrypt(&Mechanism::AesGcm(params), self.key, sealed)
            .map(Zeroizing::new)
            .map_err(|_| CryptoError::Integrity)
    }
}

impl Pkcs11Source {
    pub fn new(module: PathBuf, token_label: String, pin: String) -> Self {
        Pkcs11Source { module, token_label, pin: secrecy::SecretString::from(pin) }
    }

    fn session(&self) -> Result<Session, KeyFileError> {
        let ctx = context(&self.module)?;
        let slots = ctx.get_slots_with_token().map_err(hsm_error("listing PKCS#11 slots"))?;
        let slot = slots
            .into_iter()
            .find(|s| ctx.get_token_info(*s).map(|i| i.label().trim() == self.token_label).unwrap_or(false))
            .ok_or(KeyFileError::Invalid("no PKCS#11 token with the configured label"))?;
        let session = ctx.open_rw_session(slot).map_err(hsm_error("opening a PKCS#11 session"))?;
        use secrecy::ExposeSecret;
        let pin = cryptoki::types::AuthPin::from(self.pin.expose_secret().to_owned());
        match session.login(UserType::User, Some(&pin)) {
            Ok(()) => {}
            Err(cryptoki::error::Error::Pkcs11(cryptoki::error::RvError::UserAlreadyLoggedIn, _)) => {}
            Err(e) => return Err(hsm_error("logging in to the PKCS#11 token")(e)),
        }
        Ok(session)
    }

    /// (version, handle) of the token's objects whose label starts with `prefix`.
    fn versions(session: &Session, prefix: &str) -> Result<Vec<(u32, ObjectHandle)>, KeyFileError> {
        let handles = session
            .find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY)])
            .map_err(hsm_error("searching PKCS#11 objects"))?;
        let mut out = Vec::new();
        for h in handles {
            let attrs = session.get_attributes(h, &[AttributeType::Label]).map_err(hsm_error("reading labels"))?;
            for a in attrs {
                if let Attribute::Label(l) = a {
                    if let Some(v) =
                        String::from_utf8_lossy(&l).strip_prefix(prefix).and_then(|v| v.parse::<u32>().ok())
                    {
                        out.push((v, h));
                    }
                }
            }
        }
        out.sort_by_key(|(v, _)| *v);
        Ok(out)
    }

    fn generate(session: &Session, label: String, kind: KeyType) -> Result<(), KeyFileError> {
        let (mechanism, usage) = if kind == KeyType::AES {
            (Mechanism::AesKeyGen, vec![Attribute::Encrypt(true), Attribute::Decrypt(true)])
        } else {
            (Mechanism::GenericSecretKeyGen, vec![Attribute::Sign(true)])
        };
        let mut template = vec![
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::ValueLen(32.into()),
            Attribute::Label(label.into_bytes()),
        ];
        template.extend(usage);
        session.generate_key(&mechanism, &template).map_err(hsm_error("generating a key in the token"))?;
        Ok(())
    }
}

impl KeySource for Pkcs11Source {
    fn describe(&self) -> String {
        format!("PKCS#11 token {} ({})", self.token_label, self.module.display())
    }

    fn load(&self) -> Result<Keyring, KeyFileError> {
        let session = self.session()?;
        let keks = Self::versions(&session, KEK_LABEL)?;
        let indexes = Self::versions(&session, INDEX_LABEL)?;
        let mut roots = Vec::new();
        for (v, h) in &indexes {
            let mac = session
                .sign(&Mechanism::Sha256Hmac, *h, b"custodia/index-root/v1")
                .map_err(hsm_error("deriving the blind-index root"))?;
            let mut root = Zeroizing::new([0u8; 32]);
            root.copy_from_slice(mac.get(..32).ok_or(KeyFileError::Invalid("short HMAC from the token"))?);
            roots.push((*v, root));
        }
        let session = Arc::new(Mutex::new(session));
        let ciphers: Vec<(u32, Box<dyn KekCipher>, String)> = keks
            .into_iter()
            .map(|(v, key)| {
                let fp = fingerprint_bytes(format!("pkcs11:{}:{KEK_LABEL}{v}", self.token_label).as_bytes());
                (v, Box::new(TokenKek { session: session.clone(), key }) as Box<dyn KekCipher>, fp)
            })
            .collect();
        Keyring::from_parts(ciphers, Vec::new(), roots)
    }

    fn rotate(&self) -> Result<u32, KeyFileError> {
        let session = self.session()?;
        let next = Self::versions(&session, KEK_LABEL)?.last().map_or(1, |(v, _)| v + 1);
        Self::generate(&session, format!("{KEK_LABEL}{next}"), KeyType::AES)?;
        if Self::versions(&session, INDEX_LABEL)?.is_empty() {
            Self::generate(&session, format!("{INDEX_LABEL}1"), KeyType::GENERIC_SECRET)?;
        }
        Ok(next)
    }

    fn retire(&self, version: u32) -> Result<(), KeyFileError> {
        let session = self.session()?;
        let keks = Self::versions(&session, KEK_LABEL)?;
        if keks.last().map(|(v, _)| *v) == Some(version) {
            return Err(KeyFileError::NotRetirable(version));
        }
        let (_, handle) = keks.into_iter().find(|(v, _)| *v == version).ok_or(KeyFileError::NotRetirable(version))?;
        session.destroy_object(handle).map_err(hsm_error("destroying a key in the token"))
    }

    fn rotate_index(&self) -> Result<u32, KeyFileError> {
        let session = self.session()?;
        let next = Self::versions(&session, INDEX_LABEL)?.last().map_or(1, |(v, _)| v + 1);
        Self::generate(&session, format!("{INDEX_LABEL}{next}"), KeyType::GENERIC_SECRET)?;
        Ok(next)
    }

    fn retire_old_index(&self) -> Result<(), KeyFileError> {
        let session = self.session()?;
        let versions = Self::versions(&session, INDEX_LABEL)?;
        for (_, h) in versions.iter().take(versions.len().saturating_sub(1)) {
            session.destroy_object(*h).map_err(hsm_error("destroying a key in the token"))?;
        }
        Ok(())
    }
}

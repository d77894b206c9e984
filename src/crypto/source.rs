//! Where key-encryption keys come from. A [`KeySource`] loads the keyring and, when it can,
//! rotates and retires versions. Two sources ship: a key file (the default; rotation rewrites it
//! atomically, owner-readable only) and an environment variable holding the same TOML (read-only:
//! rotate with the secret manager that sets it).
//!
//! An external KMS or HSM plugs in by implementing [`KeySource`]: `load` returns a [`Keyring`]
//! built from material the KMS releases (or, for an HSM that never releases keys, a keyring whose
//! wrap and unwrap call out — see docs/KEYS.md); `rotate` asks the KMS for a new version;
//! `retire` destroys a version there.

use std::path::PathBuf;

use super::keyring::{
    retire_old_index_text, retire_text, rotate_index_text, rotate_text, write_key_file, KeyFileError, Keyring,
};

/// A source of key-encryption keys.
pub trait KeySource: Send + Sync {
    /// A description for logs (a path or a variable name, never key material).
    fn describe(&self) -> String;
    /// Loads the current keyring.
    fn load(&self) -> Result<Keyring, KeyFileError>;
    /// Adds a new KEK version, which wraps every new data key from then on.
    fn rotate(&self) -> Result<u32, KeyFileError> {
        Err(KeyFileError::ReadOnly("this key source cannot rotate; rotate where its keys are managed"))
    }
    /// Destroys the material of an old version.
    fn retire(&self, _version: u32) -> Result<(), KeyFileError> {
        Err(KeyFileError::ReadOnly("this key source cannot retire versions; retire where its keys are managed"))
    }
    /// Adds a blind-index root version.
    fn rotate_index(&self) -> Result<u32, KeyFileError> {
        Err(KeyFileError::ReadOnly("this key source cannot rotate; rotate where its keys are managed"))
    }
    /// Destroys the material of every blind-index version but the current one.
    fn retire_old_index(&self) -> Result<(), KeyFileError> {
        Err(KeyFileError::ReadOnly("this key source cannot retire versions; retire where its keys are managed"))
    }
}

/// Keys in a TOML key file.
#[derive(Clone, Debug)]
pub struct FileSource {
    pub path: PathBuf,
}

impl FileSource {
    fn read(&self) -> Result<zeroize::Zeroizing<String>, KeyFileError> {
        std::fs::read_to_string(&self.path)
            .map(zeroize::Zeroizing::new)
            .map_err(|source| KeyFileError::Read { path: self.path.display().to_string(), source })
    }
}

impl KeySource for FileSource {
    fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }

    fn load(&self) -> Result<Keyring, KeyFileError> {
        Keyring::from_toml(&self.read()?)
    }

    fn rotate(&self) -> Result<u32, KeyFileError> {
        let (text, version) = rotate_text(&self.read()?)?;
        write_key_file(&self.path, &text)?;
        Ok(version)
    }

    fn retire(&self, version: u32) -> Result<(), KeyFileError> {
        let text = retire_text(&self.read()?, version)?;
        write_key_file(&self.path, &text)
    }

    fn rotate_index(&self) -> Result<u32, KeyFileError> {
        let (text, version) = rotate_index_text(&self.read()?)?;
        write_key_file(&self.path, &text)?;
        Ok(version)
    }

    fn retire_old_index(&self) -> Result<(), KeyFileError> {
        let text = retire_old_index_text(&self.read()?)?;
        write_key_file(&self.path, &text)
    }
}

/// Keys in an environment variable (the key file's TOML). Read-only.
#[derive(Clone, Debug)]
pub struct EnvSource {
    pub var: String,
}

impl KeySource for EnvSource {
    fn describe(&self) -> String {
        format!("environment variable {}", self.var)
    }

    fn load(&self) -> Result<Keyring, KeyFileError> {
        let text = zeroize::Zeroizing::new(std::env::var(&self.var).map_err(|_| KeyFileError::Read {
            path: format!("${}", self.var),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "not set or not unicode"),
        })?);
        Keyring::from_toml(&text)
    }
}

//! Loading the allow-list of token verification keys from PEM files and an optional JWKS
//! file. Only asymmetric keys are accepted; each key is pinned to one algorithm.

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};

use crate::config::{AuthConfig, TokenAlgorithm};

/// Why the key configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum KeyConfigError {
    #[error("cannot read token key file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("token key {kid}: not a valid {algorithm:?} public key in PEM form")]
    BadPem { kid: String, algorithm: TokenAlgorithm },
    #[error("JWKS file {path} does not parse")]
    BadJwks { path: String },
    #[error("JWKS key without kid, or of an unsupported type (only EdDSA, ES256 and RS256 public keys)")]
    UnsupportedJwk,
    #[error("two token keys share one kid")]
    DuplicateKid,
    #[error("no token verification key configured")]
    NoKeys,
}

pub(super) fn algorithm(a: TokenAlgorithm) -> Algorithm {
    match a {
        TokenAlgorithm::EdDSA => Algorithm::EdDSA,
        TokenAlgorithm::ES256 => Algorithm::ES256,
        TokenAlgorithm::RS256 => Algorithm::RS256,
    }
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, KeyConfigError> {
    std::fs::read(path).map_err(|source| KeyConfigError::Read { path: path.display().to_string(), source })
}

pub(super) fn load(config: &AuthConfig) -> Result<Vec<(String, Algorithm, DecodingKey)>, KeyConfigError> {
    let mut out = Vec::new();
    for k in &config.keys {
        let pem = read(&k.public_key_pem)?;
        let key = match k.algorithm {
            TokenAlgorithm::EdDSA => DecodingKey::from_ed_pem(&pem),
            TokenAlgorithm::ES256 => DecodingKey::from_ec_pem(&pem),
            TokenAlgorithm::RS256 => DecodingKey::from_rsa_pem(&pem),
        }
        .map_err(|_| KeyConfigError::BadPem { kid: k.kid.clone(), algorithm: k.algorithm })?;
        out.push((k.kid.clone(), algorithm(k.algorithm), key));
    }
    if let Some(path) = &config.jwks_file {
        let set: JwkSet = serde_json::from_slice(&read(path)?)
            .map_err(|_| KeyConfigError::BadJwks { path: path.display().to_string() })?;
        for jwk in &set.keys {
            let kid = jwk.common.key_id.clone().ok_or(KeyConfigError::UnsupportedJwk)?;
            let alg = match &jwk.algorithm {
                AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => Algorithm::EdDSA,
                AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
                AlgorithmParameters::RSA(_) => Algorithm::RS256,
                _ => return Err(KeyConfigError::UnsupportedJwk),
            };
            let key = DecodingKey::from_jwk(jwk).map_err(|_| KeyConfigError::UnsupportedJwk)?;
            out.push((kid, alg, key));
        }
    }
    if out.is_empty() {
        return Err(KeyConfigError::NoKeys);
    }
    Ok(out)
}

//! Loading the allow-list of token verification keys from PEM files and an optional JWKS
//! file. Only asymmetric keys are accepted; each key is pinned to one algorithm.

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse};
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

/// Fingerprint of the public example token key (`keys-example/jwt-ed25519.pub.pem`): anyone
/// can mint tokens it verifies, whatever kid or file it is configured under.
const EXAMPLE_TOKEN_KEY_FINGERPRINT: &str = "fe2ee5e8b1c6626f";

/// Whether raw Ed25519 public key bytes are the public example token key.
fn is_example_raw(raw: &[u8]) -> bool {
    crate::crypto::keyring::fingerprint_bytes(raw) == EXAMPLE_TOKEN_KEY_FINGERPRINT
}

/// The raw key of an Ed25519 SubjectPublicKeyInfo PEM (its last 32 bytes of 44).
fn ed25519_raw_from_pem(pem: &[u8]) -> Option<Vec<u8>> {
    use base64::Engine;
    let text = std::str::from_utf8(pem).ok()?;
    let body: String = text.lines().filter(|l| !l.starts_with("-----")).map(str::trim).collect();
    let der = base64::engine::general_purpose::STANDARD.decode(body).ok()?;
    (der.len() == 44).then(|| der[12..].to_vec())
}

/// The loaded keys: (kid, algorithm, key, whether it is the public example key).
pub(super) type LoadedKey = (String, Algorithm, DecodingKey, bool);

/// One JWK as an allowed key: EdDSA (Ed25519), ES256 (P-256) and RS256 only, with a `kid`,
/// for signatures, its algorithm pinned by its type (and matching its `alg` when it has one).
fn from_jwk(jwk: &Jwk) -> Result<LoadedKey, KeyConfigError> {
    let kid = jwk.common.key_id.clone().ok_or(KeyConfigError::UnsupportedJwk)?;
    if jwk.common.public_key_use.as_ref().is_some_and(|u| *u != PublicKeyUse::Signature) {
        return Err(KeyConfigError::UnsupportedJwk);
    }
    let mut example = false;
    let alg = match &jwk.algorithm {
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            use base64::Engine;
            example = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p.x.trim_end_matches('='))
                .is_ok_and(|raw| is_example_raw(&raw));
            Algorithm::EdDSA
        }
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        _ => return Err(KeyConfigError::UnsupportedJwk),
    };
    let declared_matches = match &jwk.common.key_algorithm {
        None => true,
        Some(KeyAlgorithm::EdDSA) => alg == Algorithm::EdDSA,
        Some(KeyAlgorithm::ES256) => alg == Algorithm::ES256,
        Some(KeyAlgorithm::RS256) => alg == Algorithm::RS256,
        Some(_) => false,
    };
    if !declared_matches {
        return Err(KeyConfigError::UnsupportedJwk);
    }
    let key = DecodingKey::from_jwk(jwk).map_err(|_| KeyConfigError::UnsupportedJwk)?;
    Ok((kid, alg, key, example))
}

/// The identity provider's signing keys from its published JWKS: keys of other kinds or uses
/// (encryption keys, PS256, …) are left out, not an error — the provider publishes them for
/// others.
pub(super) fn from_provider_jwks(set: &JwkSet) -> Vec<LoadedKey> {
    set.keys.iter().filter_map(|jwk| from_jwk(jwk).ok()).collect()
}

/// The configured keys (PEM files, JWKS file). None at all is an error unless the identity
/// provider's published keys are to be fetched (`provider_keys`).
pub(super) fn load(config: &AuthConfig, provider_keys: bool) -> Result<Vec<LoadedKey>, KeyConfigError> {
    let mut out = Vec::new();
    for k in &config.keys {
        let pem = read(&k.public_key_pem)?;
        let example =
            k.algorithm == TokenAlgorithm::EdDSA && ed25519_raw_from_pem(&pem).is_some_and(|r| is_example_raw(&r));
        let key = match k.algorithm {
            TokenAlgorithm::EdDSA => DecodingKey::from_ed_pem(&pem),
            TokenAlgorithm::ES256 => DecodingKey::from_ec_pem(&pem),
            TokenAlgorithm::RS256 => DecodingKey::from_rsa_pem(&pem),
        }
        .map_err(|_| KeyConfigError::BadPem { kid: k.kid.clone(), algorithm: k.algorithm })?;
        out.push((k.kid.clone(), algorithm(k.algorithm), key, example));
    }
    if let Some(path) = &config.jwks_file {
        let set: JwkSet = serde_json::from_slice(&read(path)?)
            .map_err(|_| KeyConfigError::BadJwks { path: path.display().to_string() })?;
        for jwk in &set.keys {
            out.push(from_jwk(jwk)?);
        }
    }
    if out.is_empty() && !provider_keys {
        return Err(KeyConfigError::NoKeys);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use crate::config::{AuthConfig, TokenAlgorithm, TokenKeyConfig};

    fn file(rel: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
    }

    #[test]
    fn the_example_token_key_is_recognised_by_fingerprint_under_any_kid_or_path() {
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("innocent.pem");
        std::fs::copy(file("keys-example/jwt-ed25519.pub.pem"), &copy).unwrap();
        let config = |kid: &str, path: PathBuf, algorithm| AuthConfig {
            keys: vec![TokenKeyConfig { kid: kid.into(), algorithm, public_key_pem: path }],
            ..AuthConfig::default()
        };
        let a = crate::auth::Authenticator::from_config(&config("prod-2026", copy, TokenAlgorithm::EdDSA)).unwrap();
        assert!(a.accepts_example_key());
        let b = crate::auth::Authenticator::from_config(&config(
            "example",
            file("tests/keys/es256.pub.pem"),
            TokenAlgorithm::ES256,
        ))
        .unwrap();
        assert!(!b.accepts_example_key(), "a kid alone does not make a key the example");
        // The same key in a JWKS.
        let jwks = dir.path().join("keys.jwks");
        std::fs::write(
            &jwks,
            r#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"k1","x":"XXX"}]}"#.replace("XXX", &example_x()),
        )
        .unwrap();
        let c = AuthConfig { keys: vec![], jwks_file: Some(jwks), ..AuthConfig::default() };
        assert!(crate::auth::Authenticator::from_config(&c).unwrap().accepts_example_key());
    }

    fn example_x() -> String {
        use base64::Engine;
        let pem = std::fs::read(file("keys-example/jwt-ed25519.pub.pem")).unwrap();
        let raw = super::ed25519_raw_from_pem(&pem).unwrap();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    }
}

//! Minting development access tokens (`custodia token`). The vault itself never issues
//! tokens in production: an identity provider does. This exists so that a fresh clone can be
//! tried out, and so that tests can sign tokens the way a real provider would.

use std::time::Duration;

use jsonwebtoken::{EncodingKey, Header};
use serde::Serialize;

use crate::config::TokenAlgorithm;

/// What goes into a minted token.
#[derive(Clone, Debug)]
pub struct TokenRequest<'a> {
    pub sub: &'a str,
    pub ttl: Duration,
    pub issuer: &'a str,
    pub audience: &'a str,
    pub kid: &'a str,
    pub algorithm: TokenAlgorithm,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    aud: &'a str,
    sub: &'a str,
    iat: i64,
    nbf: i64,
    exp: i64,
    jti: String,
}

/// Why a token could not be minted.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error("signing key is not a valid PKCS#8 PEM private key for the algorithm")]
    BadKey,
    #[error("signing failed")]
    Sign,
    #[error("subject must be 1-128 characters of A-Z a-z 0-9 . _ - @ : | +")]
    BadSubject,
}

/// Signs an access token (`typ: at+jwt`) with a PEM private key.
pub fn mint(request: &TokenRequest<'_>, private_key_pem: &[u8]) -> Result<String, MintError> {
    super::install_jwt_backend();
    if !super::valid_subject(request.sub) {
        return Err(MintError::BadSubject);
    }
    let key = match request.algorithm {
        TokenAlgorithm::EdDSA => EncodingKey::from_ed_pem(private_key_pem),
        TokenAlgorithm::ES256 => EncodingKey::from_ec_pem(private_key_pem),
        TokenAlgorithm::RS256 => EncodingKey::from_rsa_pem(private_key_pem),
    }
    .map_err(|_| MintError::BadKey)?;
    let mut header = Header::new(super::keys::algorithm(request.algorithm));
    header.typ = Some("at+jwt".into());
    header.kid = Some(request.kid.to_owned());
    let now = chrono::Utc::now().timestamp();
    let claims = Claims {
        iss: request.issuer,
        aud: request.audience,
        sub: request.sub,
        iat: now,
        nbf: now,
        exp: now + i64::try_from(request.ttl.as_secs()).unwrap_or(i64::MAX / 2),
        jti: uuid::Uuid::new_v4().to_string(),
    };
    jsonwebtoken::encode(&header, &claims, &key).map_err(|_| MintError::Sign)
}

/// Parses a duration such as `90s`, `15m`, `8h` or `1d`.
pub fn parse_ttl(s: &str) -> Option<Duration> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = num.parse().ok()?;
    let secs = match unit {
        "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        "d" => n.checked_mul(86_400)?,
        _ => return None,
    };
    (secs > 0).then(|| Duration::from_secs(secs))
}

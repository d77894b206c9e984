//! Console sign-in through the operator's OpenID Connect provider — the issuer already
//! configured for tokens (`auth.issuer`): its discovery document, the authorization code flow
//! with PKCE (S256), the code exchange as a confidential client (`console.client_id`,
//! `console.client_secret`, HTTP Basic), and the provider's published signing keys, which join
//! the token verifier's allow-list (so its access tokens are accepted on `/v1` too).
//!
//! A sign-in is accepted only when it was started by this vault in this browser (a random
//! `state`, kept hashed here and echoed in a cookie, used once, within ten minutes), the ID
//! token carries the sign-in's `nonce`, is signed by an allowed key with its pinned algorithm,
//! names this issuer and the console's client id, and the access token passes every rule an
//! API token passes (issuer, the vault's audience, `typ`, algorithm, expiry) for the same
//! subject. Nothing from the provider is kept: the session that follows holds only the
//! subject.
//!
//! Owns: talking to the provider and the sign-ins in flight. Must never: log or show a code,
//! token, client secret, state, nonce or PKCE verifier; follow a redirect from the provider;
//! or accept a token on the provider's word alone.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use ring::rand::{SecureRandom, SystemRandom};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::{AuthError, Authenticator, Principal};
use crate::config::{secure_or_loopback, Config};

/// How long a started sign-in may take (the user at the provider's login page).
pub const FLOW_LIFETIME: Duration = Duration::from_secs(600);
/// Most sign-ins in flight at once on this instance (each is a few hundred bytes; a flood of
/// starts cannot grow memory past this). Past it the oldest is dropped rather than new ones
/// refused, so a flood of starts cannot lock everyone out of signing in: it can only make a
/// slow sign-in start again.
const MAX_FLOWS: usize = 10_000;
/// Largest answer read from the provider.
const MAX_ANSWER: usize = 256 * 1024;
/// The provider's keys are fetched again at most this often when a token names a kid not
/// yet known (a key rotation at the provider).
const KEY_REFRESH_MIN_INTERVAL: Duration = Duration::from_secs(10);

/// Why a sign-in failed. None of the variants carries anything the provider or the browser
/// sent.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    /// The provider cannot be reached or answered something unusable.
    #[error("the identity provider is unavailable or misconfigured ({0})")]
    Unavailable(&'static str),
    /// The callback does not belong to a sign-in this vault started in this browser (wrong,
    /// missing, expired or already used `state`).
    #[error("the sign-in was not started here, has expired or was already completed")]
    UnknownSignIn,
    /// The provider refused the sign-in or the code (an error at the provider, a replayed or
    /// expired code, a PKCE mismatch).
    #[error("the identity provider refused the sign-in")]
    Refused,
    /// A token from the provider failed the vault's checks.
    #[error("the identity provider's token was rejected: {0}")]
    Token(AuthError),
}

impl OidcError {
    /// The stable problem code shown to the user.
    pub fn code(&self) -> &'static str {
        match self {
            OidcError::Unavailable(_) => "identity_provider_unavailable",
            OidcError::UnknownSignIn => "sign_in_state_invalid",
            OidcError::Refused => "sign_in_refused",
            OidcError::Token(_) => "sign_in_token_rejected",
        }
    }
}

/// The provider's endpoints, from its discovery document.
#[derive(Clone, Debug, Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
    #[serde(default)]
    code_challenge_methods_supported: Option<Vec<String>>,
}

struct Flow {
    verifier: String,
    nonce: String,
    started: Instant,
}

/// A started sign-in: where to send the browser, and the `state` to set in its flow cookie.
pub struct Started {
    pub authorization_url: String,
    pub state: String,
}

/// The console's client at the identity provider.
pub struct OidcClient {
    issuer: String,
    client_id: String,
    client_secret: SecretString,
    redirect_uri: String,
    http: reqwest::Client,
    discovery: tokio::sync::RwLock<Option<Discovery>>,
    flows: Mutex<HashMap<[u8; 32], Flow>>,
    last_key_fetch: Mutex<Option<Instant>>,
    rng: SystemRandom,
}

impl std::fmt::Debug for OidcClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcClient")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

fn digest(s: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, s.as_bytes()).as_ref());
    out
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// An answer's body, at most [`MAX_ANSWER`] bytes.
async fn read_capped(mut response: reqwest::Response) -> Result<Vec<u8>, OidcError> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|_| OidcError::Unavailable("answer cut short"))? {
        if body.len() + chunk.len() > MAX_ANSWER {
            return Err(OidcError::Unavailable("answer too large"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

impl OidcClient {
    /// The console's client, when `console.client_id` is configured (the configuration check
    /// has ensured the secret and redirect URI are there).
    pub fn from_config(config: &Config) -> Option<Result<Self, OidcError>> {
        let c = &config.console;
        let client_id = c.client_id.clone()?;
        let (Some(client_secret), Some(redirect_uri)) = (c.client_secret.clone(), c.redirect_uri.clone()) else {
            return Some(Err(OidcError::Unavailable("console.client_secret and console.redirect_uri are required")));
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(c.provider_timeout_ms))
            .redirect(reqwest::redirect::Policy::none())
            .build();
        let Ok(http) = http else { return Some(Err(OidcError::Unavailable("HTTP client"))) };
        Some(Ok(OidcClient {
            issuer: config.auth.issuer.clone(),
            client_id,
            client_secret,
            redirect_uri,
            http,
            discovery: tokio::sync::RwLock::new(None),
            flows: Mutex::new(HashMap::new()),
            last_key_fetch: Mutex::new(None),
            rng: SystemRandom::new(),
        }))
    }

    /// The provider's discovery document, fetched once and kept (fetched again after a
    /// failure).
    #[tracing::instrument(skip_all)]
    async fn discovery(&self) -> Result<Discovery, OidcError> {
        if let Some(d) = self.discovery.read().await.as_ref() {
            return Ok(d.clone());
        }
        let url = format!("{}/.well-known/openid-configuration", self.issuer.trim_end_matches('/'));
        let response = self.http.get(&url).send().await.map_err(|_| OidcError::Unavailable("discovery unreachable"))?;
        if !response.status().is_success() {
            return Err(OidcError::Unavailable("discovery answered an error"));
        }
        let d: Discovery = serde_json::from_slice(&read_capped(response).await?)
            .map_err(|_| OidcError::Unavailable("discovery document does not parse"))?;
        // OpenID Connect Discovery 1.0 §4.3: the document's issuer is the one it was fetched for.
        if d.issuer != self.issuer {
            return Err(OidcError::Unavailable("discovery names another issuer"));
        }
        if ![&d.authorization_endpoint, &d.token_endpoint, &d.jwks_uri].iter().all(|u| secure_or_loopback(u)) {
            return Err(OidcError::Unavailable("an endpoint is neither https nor loopback"));
        }
        if d.code_challenge_methods_supported.as_ref().is_some_and(|m| !m.iter().any(|m| m == "S256")) {
            return Err(OidcError::Unavailable("the provider does not support PKCE S256"));
        }
        *self.discovery.write().await = Some(d.clone());
        Ok(d)
    }

    /// Fetches the provider's JWKS and installs its signing keys in `auth`. Returns how many.
    #[tracing::instrument(skip_all)]
    pub async fn refresh_keys(&self, auth: &Authenticator) -> Result<usize, OidcError> {
        let d = self.discovery().await?;
        let response =
            self.http.get(&d.jwks_uri).send().await.map_err(|_| OidcError::Unavailable("JWKS unreachable"))?;
        if !response.status().is_success() {
            return Err(OidcError::Unavailable("JWKS answered an error"));
        }
        let set: jsonwebtoken::jwk::JwkSet = serde_json::from_slice(&read_capped(response).await?)
            .map_err(|_| OidcError::Unavailable("JWKS does not parse"))?;
        *self.last_key_fetch.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        let n = auth.install_provider_keys(&set);
        tracing::info!(keys = n, "identity provider's signing keys installed");
        Ok(n)
    }

    /// Fetches the keys again if `kid` is unknown and the last fetch is not too recent.
    async fn keys_for(&self, auth: &Authenticator, token: &str) -> Result<(), OidcError> {
        let kid = jsonwebtoken::decode_header(token).ok().and_then(|h| h.kid);
        let unknown = kid.is_some_and(|k| !auth.knows_key(&k));
        let recent = self
            .last_key_fetch
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|t| t.elapsed() < KEY_REFRESH_MIN_INTERVAL);
        if unknown && !recent {
            self.refresh_keys(auth).await?;
        }
        Ok(())
    }

    fn random(&self) -> Result<String, OidcError> {
        let mut bytes = [0u8; 32];
        self.rng.fill(&mut bytes).map_err(|_| OidcError::Unavailable("no randomness"))?;
        Ok(b64(&bytes))
    }

    /// Starts a sign-in: a fresh `state`, `nonce` and PKCE verifier, kept here (by the hash of
    /// the state) for [`FLOW_LIFETIME`]; returns the provider's authorization URL.
    #[tracing::instrument(skip_all)]
    pub async fn begin(&self) -> Result<Started, OidcError> {
        let d = self.discovery().await?;
        let (state, nonce, verifier) = (self.random()?, self.random()?, self.random()?);
        let challenge = b64(ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes()).as_ref());
        {
            let mut flows = self.flows.lock().unwrap_or_else(|p| p.into_inner());
            if flows.len() >= MAX_FLOWS {
                flows.retain(|_, f| f.started.elapsed() < FLOW_LIFETIME);
                let oldest = flows.iter().min_by_key(|(_, f)| f.started).map(|(k, _)| *k);
                if let (true, Some(oldest)) = (flows.len() >= MAX_FLOWS, oldest) {
                    flows.remove(&oldest);
                }
            }
            flows.insert(digest(&state), Flow { verifier, nonce: nonce.clone(), started: Instant::now() });
        }
        let url = reqwest::Url::parse_with_params(
            &d.authorization_endpoint,
            [
                ("response_type", "code"),
                ("client_id", self.client_id.as_str()),
                ("redirect_uri", self.redirect_uri.as_str()),
                ("scope", "openid"),
                ("state", state.as_str()),
                ("nonce", nonce.as_str()),
                ("code_challenge", challenge.as_str()),
                ("code_challenge_method", "S256"),
            ],
        )
        .map_err(|_| OidcError::Unavailable("authorization endpoint is not a URL"))?;
        Ok(Started { authorization_url: url.into(), state })
    }

    /// Completes a sign-in from the provider's callback: `state` from the query must match the
    /// browser's flow cookie and a sign-in started here (used once); the code is exchanged with
    /// the PKCE verifier; the ID token and the access token are checked (see the module
    /// comment). Returns the principal of the access token.
    #[tracing::instrument(skip_all)]
    pub async fn finish(
        &self,
        auth: &Authenticator,
        state: &str,
        cookie_state: Option<&str>,
        code: &str,
    ) -> Result<Principal, OidcError> {
        if !cookie_state.is_some_and(|c| super::same_secret(c, state)) {
            return Err(OidcError::UnknownSignIn);
        }
        let flow = self.flows.lock().unwrap_or_else(|p| p.into_inner()).remove(&digest(state));
        let Some(flow) = flow.filter(|f| f.started.elapsed() < FLOW_LIFETIME) else {
            return Err(OidcError::UnknownSignIn);
        };
        if code.is_empty() || code.len() > 2048 {
            return Err(OidcError::Refused);
        }
        let d = self.discovery().await?;
        let response = self
            .http
            .post(&d.token_endpoint)
            .basic_auth(&self.client_id, Some(self.client_secret.expose_secret()))
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", self.redirect_uri.as_str()),
                ("code_verifier", flow.verifier.as_str()),
            ])
            .send()
            .await
            .map_err(|_| OidcError::Unavailable("token endpoint unreachable"))?;
        let status = response.status();
        let body = read_capped(response).await?;
        if !status.is_success() {
            #[derive(Deserialize)]
            struct ErrorAnswer {
                error: String,
            }
            // The error code is a registered word (RFC 6749 §5.2), safe to log when it looks like one.
            let error = serde_json::from_slice::<ErrorAnswer>(&body).map(|e| e.error).unwrap_or_default();
            let error = if error.len() <= 40 && error.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
                error
            } else {
                "unrecognised".into()
            };
            tracing::info!(status = status.as_u16(), error = %error, "identity provider refused the code");
            return Err(if status.is_server_error() {
                OidcError::Unavailable("token endpoint failed")
            } else {
                OidcError::Refused
            });
        }
        #[derive(Deserialize)]
        struct Tokens {
            id_token: Option<String>,
            access_token: Option<String>,
        }
        let tokens: Tokens =
            serde_json::from_slice(&body).map_err(|_| OidcError::Unavailable("token answer does not parse"))?;
        let (Some(id_token), Some(access_token)) = (tokens.id_token, tokens.access_token) else {
            return Err(OidcError::Token(AuthError::Missing));
        };
        self.keys_for(auth, &id_token).await?;
        let id = auth.verify_id_token(&id_token, &self.client_id, &flow.nonce).map_err(|e| {
            tracing::info!(reason = %e, "sign-in: ID token rejected");
            OidcError::Token(e)
        })?;
        self.keys_for(auth, &access_token).await?;
        let principal = auth.verify(&access_token).map_err(|e| {
            tracing::info!(reason = %e, "sign-in: access token rejected");
            OidcError::Token(e)
        })?;
        if principal.sub != id.sub {
            tracing::warn!("sign-in: the ID token and the access token name different subjects");
            return Err(OidcError::Token(AuthError::Rejected(super::Rejection::Claims)));
        }
        Ok(principal)
    }
}

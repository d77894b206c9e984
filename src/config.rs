//! Configuration: built-in defaults (the development vault on SQLite with the example keys),
//! overridden by an optional TOML file, overridden by command-line flags and `CUSTODIA_*`
//! environment variables. See the configuration table in `README.md` and `custodia.example.toml`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use secrecy::SecretString;
use serde::Deserialize;

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The vault's configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address the HTTP API listens on.
    pub listen: SocketAddr,
    /// When set, Prometheus metrics are served at `http://ADDR/metrics` (a private address:
    /// the endpoint has no authentication; it carries no customer or principal data).
    pub metrics_listen: Option<SocketAddr>,
    /// `sqlite://PATH` or `postgres://…`.
    pub database_url: String,
    /// Maximum database connections (readers, for SQLite).
    pub max_connections: u32,
    /// PostgreSQL: the deadline of every database call, waiting for a connection included.
    /// Past it the call fails (503) and calls are refused at once until the database answers
    /// a probe again. Keep it well below `request_timeout_ms`.
    pub database_timeout_ms: u64,
    /// Key file with the key-encryption keys and the blind-index root.
    pub keys_file: PathBuf,
    /// When set, the keys come from this environment variable (the key file's TOML) instead.
    pub keys_env: Option<String>,
    /// When set, the key-encryption keys live in a PKCS#11 token (HSM) instead.
    pub keys_pkcs11: Option<Pkcs11Config>,
    pub retention: RetentionConfig,
    pub log_format: LogFormat,
    /// Whole-request time limit.
    pub request_timeout_ms: u64,
    /// On SIGTERM: how long the requests in flight may take to finish before the process
    /// exits anyway (with status 1 and an error saying so).
    pub shutdown_grace_ms: u64,
    /// Client connections open at once; past it, new ones wait in the kernel's backlog. Keep
    /// it below the process's file-descriptor limit (`ulimit -n`).
    pub max_client_connections: usize,
    /// Time a client has to send a request's headers before it is disconnected (slowloris);
    /// an idle keep-alive connection is closed after it too.
    pub header_read_timeout_ms: u64,
    /// Largest accepted request body.
    pub body_limit_bytes: usize,
    /// Reveals (and data-subject exports) allowed per principal per hour, across instances.
    pub reveals_per_hour: u32,
    /// Exact-match searches allowed per principal per hour, across instances (hits and misses
    /// alike); past it, 429 and a security alert.
    pub searches_per_hour: u32,
    /// Searches finding nothing, per principal per hour, that raise a security alert.
    pub search_miss_alarm: u32,
    /// How long a write's `Idempotency-Key` is remembered: a retry with the same key within
    /// it returns the first outcome instead of applying again.
    pub idempotency_window_seconds: u64,
    /// Peers (CIDR blocks) whose `X-Forwarded-For` is believed: load balancers, proxies.
    pub trusted_proxies: Vec<String>,
    pub auth: AuthConfig,
    pub audit: AuditConfig,
    pub console: ConsoleConfig,
}

/// The web console (`/console`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleConfig {
    /// A session ends after this long without a request (fractions allowed: 0.5 is 30 s).
    pub session_idle_minutes: f64,
    /// A session ends this long after sign-in, however busy.
    pub session_max_hours: u64,
    /// The console's client id at the identity provider (the issuer of `auth.issuer`, found
    /// through its discovery document). Setting it turns on OpenID Connect sign-in.
    pub client_id: Option<String>,
    /// The console's client secret (a confidential client). `CUSTODIA_CONSOLE_CLIENT_SECRET`
    /// overrides it, which keeps it out of the file.
    pub client_secret: Option<SecretString>,
    /// The console's sign-in callback as the browser reaches it, registered at the provider:
    /// `https://vault.example/console/sign-in/callback`.
    pub redirect_uri: Option<String>,
    /// How long a call to the identity provider (discovery, JWKS, code exchange) may take.
    pub provider_timeout_ms: u64,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            session_idle_minutes: 15.0,
            session_max_hours: 8,
            client_id: None,
            client_secret: None,
            redirect_uri: None,
            provider_timeout_ms: 5_000,
        }
    }
}

/// The path of the console's sign-in callback (what `console.redirect_uri` must end with).
pub const CONSOLE_CALLBACK_PATH: &str = "/console/sign-in/callback";

/// Whether `url` is `https://…`, or `http://` to a loopback address (a provider on the same
/// machine, as in development and tests): tokens and secrets never cross a network in clear.
pub fn secure_or_loopback(url: &str) -> bool {
    if url.starts_with("https://") {
        return true;
    }
    let Some(rest) = url.strip_prefix("http://") else { return false };
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = match host.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    };
    host == "localhost" || host.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A PKCS#11 token holding the key-encryption keys.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pkcs11Config {
    /// The PKCS#11 module, e.g. /usr/lib/softhsm/libsofthsm2.so.
    pub module: PathBuf,
    pub token_label: String,
    /// The environment variable holding the user PIN (never the PIN itself in the file).
    pub pin_env: String,
}

/// Retention periods, in days, by `"kind.status"` (e.g. `"individual.closed" = 1095`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    pub periods: std::collections::BTreeMap<String, u32>,
    /// How often `serve` runs retention, in seconds (0: only `custodia retention run`).
    pub interval_seconds: u64,
}

/// Audit settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Ed25519 private key (PKCS#8 PEM) that signs checkpoints.
    pub signing_key: PathBuf,
    /// The pinned Ed25519 public key (SPKI PEM) that verification checks checkpoints against.
    pub public_key: PathBuf,
    /// Sign a checkpoint at least every this many events…
    pub checkpoint_every: i64,
    /// …and every this many milliseconds while events are unsigned.
    pub checkpoint_interval_ms: u64,
    /// The least time between the starts of two audit group commits, in microseconds: while
    /// other `/v1` requests are under way whose events are still to come, the writer waits out
    /// the rest of it before taking the waiting events, so each commit's fixed cost (its sync,
    /// its pages) is shared by more events. With none under way (a client sending one request
    /// at a time, a quiet spell) an event commits at once. 0: commit as soon as the last commit
    /// returned.
    pub commit_min_interval_us: u64,
    /// Audit events per second (measured over the last 100 ms) from which every group commit
    /// waits out the whole `commit_min_interval_us`, whoever is under way: under sustained load
    /// the writer then commits at most once per spacing, so the disk sees fewer, larger commits
    /// and fewer flushes (each a chance to stall on a shared or virtual disk). Below it the
    /// spacing is waited only while events are still to come, as above. 0: never.
    pub commit_spacing_always_above: u64,
    /// Distinct customers one principal may be shown within the window before it is blocked.
    pub bulk_threshold: usize,
    pub bulk_window_seconds: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            signing_key: PathBuf::from("keys-example/audit-ed25519.pem"),
            public_key: PathBuf::from("keys-example/audit-ed25519.pub.pem"),
            checkpoint_every: 1000,
            checkpoint_interval_ms: 10_000,
            commit_min_interval_us: 2_000,
            commit_spacing_always_above: 3_000,
            bulk_threshold: 500,
            bulk_window_seconds: 3600,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            metrics_listen: None,
            database_url: "sqlite://data/custodia.db".into(),
            max_connections: 16,
            database_timeout_ms: 3_000,
            keys_file: PathBuf::from("keys-example/keys.toml"),
            keys_env: None,
            keys_pkcs11: None,
            retention: RetentionConfig::default(),
            log_format: LogFormat::Text,
            request_timeout_ms: 10_000,
            shutdown_grace_ms: 20_000,
            max_client_connections: 1_000,
            header_read_timeout_ms: 30_000,
            body_limit_bytes: 64 * 1024,
            reveals_per_hour: 20,
            searches_per_hour: 200,
            search_miss_alarm: 50,
            idempotency_window_seconds: 86_400,
            trusted_proxies: Vec::new(),
            auth: AuthConfig::default(),
            audit: AuditConfig::default(),
            console: ConsoleConfig::default(),
        }
    }
}

/// Token verification settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Required `iss` claim.
    pub issuer: String,
    /// Required `aud` claim.
    pub audience: String,
    /// Clock skew tolerated on `exp` and `nbf`, at most 30 seconds.
    pub leeway_seconds: u64,
    /// Accepted values of the JOSE `typ` header (RFC 9068 access tokens: `at+jwt`).
    pub token_types: Vec<String>,
    /// The allow-list of verification keys, chosen by `kid`.
    pub keys: Vec<TokenKeyConfig>,
    /// Optional JWKS file; its keys join the allow-list under their `kid`.
    pub jwks_file: Option<PathBuf>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            issuer: "custodia-dev".into(),
            audience: "custodia".into(),
            leeway_seconds: 30,
            token_types: vec!["at+jwt".into()],
            keys: vec![TokenKeyConfig {
                kid: EXAMPLE_TOKEN_KID.into(),
                algorithm: TokenAlgorithm::EdDSA,
                public_key_pem: PathBuf::from("keys-example/jwt-ed25519.pub.pem"),
            }],
            jwks_file: None,
        }
    }
}

/// The `kid` of the public example token key.
pub const EXAMPLE_TOKEN_KID: &str = "example";

/// An asymmetric token signature algorithm the vault accepts. HMAC is deliberately absent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum TokenAlgorithm {
    EdDSA,
    ES256,
    RS256,
}

/// One allowed verification key.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenKeyConfig {
    pub kid: String,
    pub algorithm: TokenAlgorithm,
    pub public_key_pem: PathBuf,
}

/// Why configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("config file {path} does not parse: {source}")]
    Parse { path: String, source: toml::de::Error },
    #[error("invalid configuration: {0}")]
    Invalid(&'static str),
}

impl Config {
    /// Defaults, overridden by `file` when given.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let config = match file {
            None => Config::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
                toml::from_str(&text)
                    .map_err(|source| ConfigError::Parse { path: path.display().to_string(), source })?
            }
        };
        let mut config = config;
        if let Ok(secret) = std::env::var("CUSTODIA_CONSOLE_CLIENT_SECRET") {
            config.console.client_secret = Some(SecretString::from(secret));
        }
        config.check()?;
        Ok(config)
    }

    pub fn check(&self) -> Result<(), ConfigError> {
        if self.auth.leeway_seconds > 30 {
            return Err(ConfigError::Invalid("auth.leeway_seconds may be at most 30"));
        }
        if self.auth.issuer.is_empty() || self.auth.audience.is_empty() {
            return Err(ConfigError::Invalid("auth.issuer and auth.audience are required"));
        }
        // With OpenID Connect sign-in, the provider's published keys are fetched (auth::oidc).
        if self.auth.keys.is_empty() && self.auth.jwks_file.is_none() && self.console.client_id.is_none() {
            return Err(ConfigError::Invalid("no token verification key configured"));
        }
        if self.audit.checkpoint_every < 1 || self.audit.checkpoint_interval_ms == 0 || self.audit.bulk_threshold == 0 {
            return Err(ConfigError::Invalid(
                "audit.checkpoint_every, checkpoint_interval_ms and bulk_threshold must be positive",
            ));
        }
        if self.audit.commit_min_interval_us > 100_000 {
            return Err(ConfigError::Invalid(
                "audit.commit_min_interval_us may be at most 100000 (every audited answer waits for it)",
            ));
        }
        for (key, days) in &self.retention.periods {
            let valid = key.split_once('.').is_some_and(|(k, s)| {
                crate::domain::CustomerKind::parse(k).is_some() && crate::domain::CustomerStatus::parse(s).is_some()
            });
            if !valid || *days == 0 {
                return Err(ConfigError::Invalid(
                    "retention.periods keys are \"kind.status\" with a positive number of days",
                ));
            }
        }
        // searches_per_hour and search_miss_alarm may be 0 (off) only when no role can search a
        // field its views mask or hide: the start-up view lint decides that.
        if self.reveals_per_hour == 0 {
            return Err(ConfigError::Invalid("reveals_per_hour must be positive"));
        }
        if self.trusted_proxies.iter().any(|c| c.parse::<crate::api::proxy::Cidr>().is_err()) {
            return Err(ConfigError::Invalid("trusted_proxies: every entry must be an address or CIDR block"));
        }
        if self.max_client_connections == 0 || self.header_read_timeout_ms == 0 {
            return Err(ConfigError::Invalid("max_client_connections and header_read_timeout_ms must be positive"));
        }
        if self.shutdown_grace_ms == 0 {
            return Err(ConfigError::Invalid("shutdown_grace_ms must be positive"));
        }
        if self.idempotency_window_seconds == 0 || self.idempotency_window_seconds > 30 * 86_400 {
            return Err(ConfigError::Invalid("idempotency_window_seconds must be between 1 and 2592000 (30 days)"));
        }
        if self.database_timeout_ms == 0 || self.database_timeout_ms >= self.request_timeout_ms {
            return Err(ConfigError::Invalid("database_timeout_ms must be positive and below request_timeout_ms"));
        }
        let c = &self.console;
        if !(c.session_idle_minutes > 0.0 && c.session_idle_minutes <= 24.0 * 60.0) || c.session_max_hours == 0 {
            return Err(ConfigError::Invalid(
                "console.session_idle_minutes must be above 0 and at most 1440, session_max_hours positive",
            ));
        }
        if c.client_id.is_some() {
            if c.client_secret.is_none() {
                return Err(ConfigError::Invalid(
                    "console.client_id needs console.client_secret (or CUSTODIA_CONSOLE_CLIENT_SECRET)",
                ));
            }
            let Some(redirect) = &c.redirect_uri else {
                return Err(ConfigError::Invalid("console.client_id needs console.redirect_uri"));
            };
            if !redirect.ends_with(CONSOLE_CALLBACK_PATH) || !secure_or_loopback(redirect) {
                return Err(ConfigError::Invalid(
                    "console.redirect_uri must be an https (or loopback http) URL ending in /console/sign-in/callback",
                ));
            }
            if !secure_or_loopback(&self.auth.issuer) {
                return Err(ConfigError::Invalid(
                    "OpenID Connect sign-in needs auth.issuer to be the provider's https URL (or a loopback http one)",
                ));
            }
            if c.provider_timeout_ms == 0 {
                return Err(ConfigError::Invalid("console.provider_timeout_ms must be positive"));
            }
        }
        if self.body_limit_bytes < 1024 || self.request_timeout_ms == 0 {
            return Err(ConfigError::Invalid("body_limit_bytes must be at least 1024 and request_timeout_ms positive"));
        }
        Ok(())
    }
}

impl RetentionConfig {
    /// The periods as (kind, status, days); invalid keys were refused by [`Config::check`].
    pub fn parsed(&self) -> Vec<(crate::domain::CustomerKind, crate::domain::CustomerStatus, u32)> {
        self.periods
            .iter()
            .filter_map(|(key, days)| {
                let (k, s) = key.split_once('.')?;
                Some((crate::domain::CustomerKind::parse(k)?, crate::domain::CustomerStatus::parse(s)?, *days))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_example_file_parses_and_states_the_defaults() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("custodia.example.toml");
        let c = super::Config::load(Some(&path)).unwrap();
        let d = super::Config::default();
        assert_eq!(
            (c.reveals_per_hour, c.searches_per_hour, c.search_miss_alarm, c.trusted_proxies.len()),
            (d.reveals_per_hour, d.searches_per_hour, d.search_miss_alarm, 0)
        );
        let bad = super::Config { trusted_proxies: vec!["10.0.0.0/99".into()], ..super::Config::default() };
        assert!(bad.check().is_err());
        assert_eq!(c.audit.commit_min_interval_us, d.audit.commit_min_interval_us);
        let mut slow = super::Config::default();
        slow.audit.commit_min_interval_us = 100_001;
        assert!(slow.check().is_err(), "a commit spacing past 100 ms must be refused");
    }
}

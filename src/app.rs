//! Assembling and running the vault: load keys, policies and configuration, open the store,
//! build the router, serve until shut down. Start-up refuses to run on anything inconsistent
//! and says loudly when it runs on the public example keys.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::api::{self, AppState, Limits};
use crate::audit::checkpoint::CheckpointKeyError;
use crate::audit::guard::GuardPolicy;
use crate::audit::writer::CheckpointPolicy;
use crate::audit::{AuditLog, CheckpointSigner, CheckpointVerifier};
use crate::auth::{Authenticator, KeyConfigError};
use crate::authz::{Policy, PolicyError};
use crate::config::Config;
use crate::crypto::pkcs11::Pkcs11Source;
use crate::crypto::{EnvSource, FileSource, KeyFileError, KeySource};
use crate::domain::catalogue::CatalogueError;
use crate::domain::{Catalogue, Regions};
use crate::mask::views::ViewError;
use crate::mask::ViewPolicy;
use crate::store::{self, StoreError, StoreOptions};
use crate::vault::{Vault, VaultError, VaultOptions, VaultParts};

/// Why the vault could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Keys(#[from] KeyFileError),
    #[error("token keys: {0}")]
    TokenKeys(#[from] KeyConfigError),
    #[error(transparent)]
    Catalogue(#[from] CatalogueError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Views(#[from] ViewError),
    #[error("audit keys: {0}")]
    AuditKeys(#[from] CheckpointKeyError),
    #[error("vault: {0}")]
    Vault(#[from] VaultError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Metrics(#[from] crate::telemetry::prometheus::TelemetryError),
    #[error(transparent)]
    Console(#[from] crate::api::console::i18n::CatalogueError),
    #[error("console sign-in: {0}")]
    Oidc(crate::auth::oidc::OidcError),
}

/// How often the identity provider's keys are fetched again (and, after a failure, retried).
const PROVIDER_KEYS_EVERY: Duration = Duration::from_secs(300);
const PROVIDER_KEYS_RETRY: Duration = Duration::from_secs(10);

/// Fetches the identity provider's signing keys now (a provider down at start is logged, not
/// fatal: the console's sign-in says it is unavailable until it answers), then keeps them
/// fresh in the background for as long as the vault lives.
async fn keep_provider_keys(client: &Arc<crate::auth::oidc::OidcClient>, auth: &Arc<Authenticator>) {
    let mut first = client.refresh_keys(auth).await;
    if let Err(e) = &first {
        tracing::warn!(error = %e, "identity provider not reachable at start; retrying in the background");
    }
    let (client, auth) = (Arc::downgrade(client), Arc::downgrade(auth));
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(if first.is_ok() { PROVIDER_KEYS_EVERY } else { PROVIDER_KEYS_RETRY }).await;
            let (Some(client), Some(auth)) = (client.upgrade(), auth.upgrade()) else { return };
            first = client.refresh_keys(&auth).await;
            if let Err(e) = &first {
                tracing::warn!(error = %e, "identity provider's keys not refreshed");
            }
        }
    });
}

const EXAMPLE_KEYS_WARNING: &str =
    "USING THE PUBLIC EXAMPLE KEYS (keys-example/). They are published with the source code: \
anyone can decrypt what this vault stores. NEVER use them for real customer data; configure keys_file (docs/KEYS.md).";

const EXAMPLE_TOKEN_WARNING: &str =
    "ACCEPTING TOKENS SIGNED WITH THE PUBLIC EXAMPLE KEY (keys-example/jwt-ed25519.pub.pem, \
recognised by its fingerprint): anyone can mint a token this vault accepts. Remove it from \
auth.keys / auth.jwks_file for any real deployment.";

/// The configured key source: a PKCS#11 token, an environment variable, or the key file.
pub fn key_source(config: &Config) -> Result<Arc<dyn KeySource>, StartError> {
    if let Some(p) = &config.keys_pkcs11 {
        let pin = std::env::var(&p.pin_env).map_err(|_| {
            StartError::Keys(KeyFileError::Invalid("the PKCS#11 PIN variable (keys_pkcs11.pin_env) is not set"))
        })?;
        return Ok(Arc::new(Pkcs11Source::new(p.module.clone(), p.token_label.clone(), pin)));
    }
    Ok(match &config.keys_env {
        Some(var) => Arc::new(EnvSource { var: var.clone() }),
        None => Arc::new(FileSource { path: config.keys_file.clone() }),
    })
}

/// Builds the application state from configuration.
pub async fn build(config: &Config) -> Result<(AppState, Limits), StartError> {
    let key_source = key_source(config)?;
    let keyring = key_source.load()?;
    tracing::info!(source = %key_source.describe(), "keys loaded");
    if keyring.is_example() {
        for _ in 0..3 {
            tracing::warn!("{EXAMPLE_KEYS_WARNING}");
        }
    }
    for (version, fingerprint) in keyring.versions() {
        tracing::info!(version, fingerprint, "key-encryption key loaded");
    }
    let authenticator = Arc::new(Authenticator::new(&config.auth, config.console.client_id.is_some())?);
    let oidc = match crate::auth::oidc::OidcClient::from_config(config) {
        Some(client) => {
            let client = Arc::new(client.map_err(StartError::Oidc)?);
            keep_provider_keys(&client, &authenticator).await;
            Some(client)
        }
        None => None,
    };
    let development_sign_in = authenticator.accepts_example_key();
    crate::api::console::i18n::load()?;
    if authenticator.accepts_example_key() {
        tracing::warn!("{EXAMPLE_TOKEN_WARNING}");
    }
    let catalogue = Catalogue::builtin()?;
    let options = StoreOptions {
        max_connections: config.max_connections,
        call_timeout: Duration::from_millis(config.database_timeout_ms),
        ..StoreOptions::default()
    };
    let store = store::open(&config.database_url, &options).await?;
    tracing::info!(backend = ?store.backend(), "database ready, migrations applied");
    let policy = Policy::builtin().await?;
    let views = ViewPolicy::builtin(&catalogue, &policy)?;
    views.check_search_budget(&catalogue, &policy, config.searches_per_hour, config.search_miss_alarm)?;
    for (role, field) in views.search_oracles(&catalogue, &policy) {
        tracing::debug!(role, field, "search of a field masked or hidden to the role: budgeted");
    }
    let options = VaultOptions {
        retention: config.retention.parsed(),
        idempotency_window: Duration::from_secs(config.idempotency_window_seconds),
        budgets: crate::vault::limits::BudgetPolicy {
            reveals_per_hour: config.reveals_per_hour,
            searches_per_hour: config.searches_per_hour,
            search_miss_alarm: config.search_miss_alarm,
        },
        guard: GuardPolicy {
            threshold: config.audit.bulk_threshold,
            window: Duration::from_secs(config.audit.bulk_window_seconds),
        },
    };
    let signer = CheckpointSigner::load(&config.audit.signing_key)?;
    let verifier = CheckpointVerifier::load(&config.audit.public_key)?;
    if signer.is_example() {
        tracing::warn!("SIGNING AUDIT CHECKPOINTS WITH THE PUBLIC EXAMPLE KEY: anyone can forge them. Configure audit.signing_key.");
    }
    let audit = AuditLog::start(
        store.clone(),
        Arc::new(signer),
        CheckpointPolicy {
            every: config.audit.checkpoint_every,
            interval: Duration::from_millis(config.audit.checkpoint_interval_ms),
            commit_spacing: Duration::from_micros(config.audit.commit_min_interval_us),
            spacing_always_above: config.audit.commit_spacing_always_above,
        },
    );
    let vault = Vault::open(VaultParts {
        store,
        keys: key_source,
        catalogue: Arc::new(catalogue),
        regions: Regions::builtin(),
        policy: Arc::new(policy),
        views: Arc::new(views),
        verifier: Some(verifier),
        audit: audit.clone(),
        options,
    })
    .await?;
    let trusted_proxies = config.trusted_proxies.iter().filter_map(|c| c.parse().ok()).collect();
    let state = AppState::new(crate::api::Shared {
        vault: Arc::new(vault),
        authenticator,
        oidc,
        audit,
        trusted_proxies,
        request_timeout: Duration::from_millis(config.request_timeout_ms),
        sessions: Arc::new(crate::auth::session::Sessions::new(crate::auth::session::SessionPolicy {
            idle: Duration::from_secs_f64(config.console.session_idle_minutes * 60.0),
            lifetime: Duration::from_secs(config.console.session_max_hours.max(1) * 3600),
        })),
        development_sign_in,
    });
    let limits = Limits { body_bytes: config.body_limit_bytes };
    Ok((state, limits))
}

/// A vault serving in the background (used by `serve` and by the tests).
pub struct RunningServer {
    pub addr: SocketAddr,
    pub state: AppState,
    /// The metrics endpoint, when `metrics_listen` is set (stops with the server).
    pub metrics: Option<crate::telemetry::prometheus::MetricsServer>,
    shutdown: Option<oneshot::Sender<()>>,
    handle: JoinHandle<std::io::Result<()>>,
}

impl RunningServer {
    /// Stops accepting connections and waits for in-flight requests.
    pub async fn stop(mut self) -> std::io::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.handle.await.unwrap_or_else(|e| Err(std::io::Error::other(e)))
    }

    /// Waits until the server ends (it ends on its own only on an I/O error).
    pub async fn wait(self) -> std::io::Result<()> {
        self.handle.await.unwrap_or_else(|e| Err(std::io::Error::other(e)))
    }
}

/// Builds the vault and starts serving on `config.listen` (port 0 picks a free port).
pub async fn start(config: &Config) -> Result<RunningServer, StartError> {
    let (state, limits) = build(config).await?;
    let listener =
        TcpListener::bind(config.listen).await.map_err(|source| StartError::Listen { addr: config.listen, source })?;
    let addr = listener.local_addr().map_err(|source| StartError::Listen { addr: config.listen, source })?;
    let router = api::router(state.clone(), limits);
    let metrics = match config.metrics_listen {
        Some(at) => Some(crate::telemetry::prometheus::serve(at).await?),
        None => None,
    };
    spawn_maintenance(
        Arc::downgrade(&state.vault),
        Duration::from_secs(config.retention.interval_seconds),
        metrics.is_some(),
    );
    let (tx, rx) = oneshot::channel::<()>();
    let limits = api::listener::ConnectionLimits {
        max_connections: config.max_client_connections,
        header_read_timeout: Duration::from_millis(config.header_read_timeout_ms),
    };
    let handle = tokio::spawn(api::listener::serve(listener, router, limits, rx));
    Ok(RunningServer { addr, state, metrics, shutdown: Some(tx), handle })
}

/// Background maintenance while serving: reload keys from their source and rewrap data keys to
/// the active version (every 5 s), prune budget counts older than their hour (every minute),
/// and run retention (at its interval); with metrics on, sample the database gauges (every 15 s).
/// Stops with the vault.
fn spawn_maintenance(vault: std::sync::Weak<Vault>, retention_every: Duration, gauges: bool) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_retention = tokio::time::Instant::now();
        let mut last_prune = tokio::time::Instant::now();
        let mut last_gauges: Option<tokio::time::Instant> = None;
        loop {
            tick.tick().await;
            let Some(vault) = vault.upgrade() else { return };
            // Every 15 s: the rewrap gauge counts data keys by version, an aggregate query.
            if gauges && last_gauges.is_none_or(|at| at.elapsed() >= Duration::from_secs(15)) {
                last_gauges = Some(tokio::time::Instant::now());
                vault.sample_gauges().await;
            }
            if let Err(e) = vault.reload_keys() {
                tracing::warn!(error = %e, "cannot reload keys; keeping the loaded ones");
            }
            match vault.rewrap_all().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(rewrapped = n, "data keys rewrapped to the active key version"),
                Err(e) => tracing::warn!(error = %e, "rewrap paused"),
            }
            match vault.reindex_all().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(reindexed = n, "records re-indexed under the current index version"),
                Err(e) => tracing::warn!(error = %e, "re-index paused"),
            }
            if last_prune.elapsed() >= Duration::from_secs(60) {
                last_prune = tokio::time::Instant::now();
                if let Err(e) = vault.prune_budgets().await {
                    tracing::warn!(error = %e, "budget counts not pruned");
                }
                if let Err(e) = vault.prune_idempotency().await {
                    tracing::warn!(error = %e, "expired idempotency keys not pruned");
                }
            }
            if !retention_every.is_zero() && last_retention.elapsed() >= retention_every {
                last_retention = tokio::time::Instant::now();
                if let Err(e) = vault.run_retention().await {
                    tracing::warn!(error = %e, "retention run failed");
                }
            }
        }
    });
}

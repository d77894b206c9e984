//! The `custodia` command line: `serve`, `migrate`, `backup`, `token`, `openapi`, and the
//! administration, key, retention and audit commands.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use custodia::config::{Config, LogFormat, TokenAlgorithm, EXAMPLE_TOKEN_KID};

/// jemalloc: requests allocate on one thread (a worker) and free on another (the audit writer,
/// the read combiner), which glibc's arenas serve with lock contention; measured in
/// docs/PERFORMANCE.md (server CPU per request, paired runs).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(name = "custodia", version, about = "Customer data vault")]
struct Cli {
    /// Configuration file (TOML); see custodia.example.toml.
    #[arg(long, global = true, env = "CUSTODIA_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the vault's HTTP API.
    Serve {
        /// Address to listen on, e.g. 127.0.0.1:8080 (port 0 picks a free one).
        #[arg(long, env = "CUSTODIA_LISTEN")]
        listen: Option<SocketAddr>,
        /// sqlite://PATH or postgres://USER@HOST/DB.
        #[arg(long, env = "CUSTODIA_DATABASE_URL")]
        database_url: Option<String>,
        #[arg(long, value_enum, env = "CUSTODIA_LOG_FORMAT")]
        log_format: Option<LogFormat>,
        /// Serve Prometheus metrics at http://ADDR/metrics (off unless given); keep ADDR on a
        /// private interface.
        #[arg(long, env = "CUSTODIA_METRICS_LISTEN")]
        metrics_listen: Option<SocketAddr>,
    },
    /// Apply pending database migrations and exit.
    Migrate {
        #[arg(long, env = "CUSTODIA_DATABASE_URL")]
        database_url: Option<String>,
    },
    /// Print a development access token signed with the example key.
    Token {
        /// The principal (JWT `sub`).
        #[arg(long)]
        sub: String,
        /// Lifetime: 90s, 15m, 8h, 1d.
        #[arg(long, default_value = "15m")]
        ttl: String,
        /// PKCS#8 PEM private key to sign with.
        #[arg(long, default_value = "keys-example/jwt-ed25519.pem")]
        key: PathBuf,
        /// Key id to put in the header; it must be in the vault's auth.keys.
        #[arg(long, default_value = EXAMPLE_TOKEN_KID)]
        kid: String,
    },
    /// Create N synthetic, valid customers (benchmarks, demos). Never on a vault with real data.
    Seed {
        #[arg(long, env = "CUSTODIA_DATABASE_URL")]
        database_url: Option<String>,
        #[arg(long)]
        customers: usize,
        /// Generator seed (the same seed gives the same customers).
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Print the OpenAPI document.
    Openapi,
    /// Administration.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Key lifecycle: rotate, status, rewrap, retire.
    Keys {
        #[arg(long, env = "CUSTODIA_DATABASE_URL", global = true)]
        database_url: Option<String>,
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Data retention.
    Retention {
        #[arg(long, env = "CUSTODIA_DATABASE_URL", global = true)]
        database_url: Option<String>,
        #[command(subcommand)]
        command: RetentionCommand,
    },
    /// Copy a SQLite vault, consistently, while it serves (PostgreSQL: see docs/OPERATIONS.md).
    Backup {
        /// The backup file to create; it must not exist.
        #[arg(long)]
        to: PathBuf,
        #[arg(long, env = "CUSTODIA_DATABASE_URL")]
        database_url: Option<String>,
    },
    /// The access audit.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Add a key-encryption key version (written to the key file); new data keys use it.
    Rotate,
    /// Key versions, their use, rewrap progress.
    Status,
    /// Move every data key to the active version now (resumable; `serve` also does it).
    Rewrap,
    /// Destroy an old version's key material once nothing is wrapped under it.
    Retire {
        #[arg(long)]
        version: u32,
    },
    /// Add a blind-index key version; records are re-indexed under it (`reindex`, or `serve`).
    RotateIndex,
    /// Re-index every record under the current blind-index version now.
    Reindex,
    /// Destroy older blind-index versions once nothing is indexed under them.
    RetireIndex,
}

#[derive(Subcommand)]
enum RetentionCommand {
    /// Erase every customer past its retention period (`retention.periods`).
    Run,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Recompute the hash chain and check every checkpoint signature; exit 1 when anything is wrong.
    Verify {
        #[arg(long, env = "CUSTODIA_DATABASE_URL")]
        database_url: Option<String>,
        /// The pinned Ed25519 public key (SPKI PEM) of the checkpoint signer.
        #[arg(long)]
        public_key: PathBuf,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Create the first administrator (role admin at CN, no expiry) on a vault that has none.
    Bootstrap {
        #[arg(long, env = "CUSTODIA_DATABASE_URL")]
        database_url: Option<String>,
        /// The principal (JWT `sub`).
        #[arg(long)]
        sub: String,
        /// `admin` (the first administrator) or `security_officer` (the first auditor, who
        /// appoints the other security officers: administrators cannot).
        #[arg(long, default_value = "admin")]
        role: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    if let Err(e) = &result {
        tracing::error!("{e:#}");
    }
    // Every queued log line out before the process ends.
    custodia::telemetry::finish();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut config = Config::load(cli.config.as_deref())?;
    match cli.command {
        Command::Serve { listen, database_url, log_format, metrics_listen } => {
            if let Some(l) = listen {
                config.listen = l;
            }
            if metrics_listen.is_some() {
                config.metrics_listen = metrics_listen;
            }
            if let Some(url) = database_url {
                config.database_url = url;
            }
            if let Some(f) = log_format {
                config.log_format = f;
            }
            custodia::telemetry::init(config.log_format).map_err(anyhow::Error::msg)?;
            serve(config).await
        }
        Command::Migrate { database_url } => {
            custodia::telemetry::init(config.log_format).map_err(anyhow::Error::msg)?;
            let url = database_url.unwrap_or(config.database_url);
            custodia::store::open(&url, &custodia::store::StoreOptions::default()).await?;
            println!("migrations applied");
            Ok(())
        }
        Command::Token { sub, ttl, key, kid } => {
            let ttl = custodia::auth::token::parse_ttl(&ttl)
                .ok_or_else(|| anyhow::anyhow!("--ttl must look like 90s, 15m, 8h or 1d"))?;
            let algorithm =
                config.auth.keys.iter().find(|k| k.kid == kid).map(|k| k.algorithm).unwrap_or(TokenAlgorithm::EdDSA);
            let pem = std::fs::read(&key).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", key.display()))?;
            let request = custodia::auth::token::TokenRequest {
                sub: &sub,
                ttl,
                issuer: &config.auth.issuer,
                audience: &config.auth.audience,
                kid: &kid,
                algorithm,
            };
            println!("{}", custodia::auth::token::mint(&request, &pem)?);
            Ok(())
        }
        Command::Admin { command: AdminCommand::Bootstrap { database_url, sub, role } } => {
            custodia::telemetry::init(config.log_format).map_err(anyhow::Error::msg)?;
            if let Some(url) = database_url {
                config.database_url = url;
            }
            let (state, _) = custodia::app::build(&config).await?;
            match state.vault.bootstrap(&sub, &role).await {
                Ok(Some(grant)) => {
                    println!(
                        "bootstrap grant {} created: {} is {} at CN (no expiry)",
                        grant.id, grant.principal, grant.role
                    );
                    Ok(())
                }
                Ok(None) if role == "admin" => {
                    anyhow::bail!("refused: this vault already has a live bootstrap administrator")
                }
                Ok(None) => anyhow::bail!("refused: this vault already has a live bootstrap security officer"),
                Err(custodia::vault::VaultError::Validation(v)) if v.0.iter().any(|e| e.field == "role") => {
                    anyhow::bail!("--role must be admin or security_officer")
                }
                Err(custodia::vault::VaultError::Validation(_)) => {
                    anyhow::bail!("--sub must be 1-128 characters of A-Z a-z 0-9 . _ - @ : | +")
                }
                Err(custodia::vault::VaultError::Denied(custodia::authz::Denied::SeparationOfDuties)) => {
                    anyhow::bail!("refused: {sub} holds grants of another duty (separation of duties)")
                }
                Err(e) => Err(e.into()),
            }
        }
        Command::Backup { to, database_url } => {
            let url = database_url.unwrap_or(config.database_url);
            let report = custodia::store::backup(&url, &to).await?;
            let keys = if config.keys_pkcs11.is_some() {
                "the PKCS#11 token".to_owned()
            } else if let Some(var) = &config.keys_env {
                format!("the environment variable {var}")
            } else {
                config.keys_file.display().to_string()
            };
            println!("{}", serde_json::to_string_pretty(&report)?);
            eprintln!(
                "backup written: {} ({} bytes, {} customers, audit through event {}). It holds sealed \
                 fields and wrapped data keys only: keep the key-encryption keys ({}) backed up apart \
                 from it; without them it cannot be read.",
                report.path.display(),
                report.bytes,
                report.customers,
                report.audit_seq,
                keys
            );
            Ok(())
        }
        Command::Audit { command: AuditCommand::Verify { database_url, public_key } } => {
            let url = database_url.unwrap_or(config.database_url);
            let verifier = custodia::audit::CheckpointVerifier::load(&public_key)?;
            let store = custodia::store::open(&url, &custodia::store::StoreOptions::default()).await?;
            let report = custodia::audit::verify::verify(&store, &verifier).await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            if report.ok {
                eprintln!(
                    "audit OK: {} events, {} checkpoints verified in {} ms ({} events after the last checkpoint)",
                    report.events, report.checkpoints, report.elapsed_ms, report.unsigned_events
                );
                Ok(())
            } else {
                anyhow::bail!(
                    "AUDIT TAMPERED: first bad sequence number {}: {}",
                    report.first_bad_seq.unwrap_or_default(),
                    report.problem.unwrap_or_default()
                )
            }
        }
        Command::Keys { database_url, command } => {
            custodia::telemetry::init(config.log_format).map_err(anyhow::Error::msg)?;
            if let Some(url) = database_url {
                config.database_url = url;
            }
            // Rotation works on an empty key source (a fresh HSM token) too.
            let rotated = match command {
                KeysCommand::Rotate => Some(custodia::app::key_source(&config)?.rotate()?),
                _ => None,
            };
            let (state, _) = custodia::app::build(&config).await?;
            let vault = &state.vault;
            let actor = "custodia:cli";
            match command {
                KeysCommand::Rotate => {
                    let version = rotated.unwrap_or_default();
                    vault.record_key_operation(actor, "keys.rotate").await?;
                    println!("key-encryption key version {version} added and active; run `custodia keys rewrap` (serve also rewraps in the background)");
                }
                KeysCommand::Status => {}
                KeysCommand::Rewrap => {
                    let moved = vault.rewrap_all().await?;
                    println!("{moved} data keys rewrapped");
                }
                KeysCommand::RotateIndex => {
                    let version = vault.rotate_index_as(actor).await?;
                    println!(
                        "blind-index version {version} added; run `custodia keys reindex` (serve also re-indexes)"
                    );
                }
                KeysCommand::Reindex => {
                    let done = vault.reindex_all().await?;
                    println!("{done} records re-indexed");
                }
                KeysCommand::RetireIndex => {
                    vault.retire_old_index_as(actor).await?;
                    println!("older blind-index versions retired");
                }
                KeysCommand::Retire { version } => {
                    vault.retire_key_as(actor, version).await?;
                    println!("key-encryption key version {version} retired: its material is destroyed");
                }
            }
            println!("{}", serde_json::to_string_pretty(&vault.key_status_unchecked().await?)?);
            Ok(())
        }
        Command::Retention { database_url, command: RetentionCommand::Run } => {
            custodia::telemetry::init(config.log_format).map_err(anyhow::Error::msg)?;
            if let Some(url) = database_url {
                config.database_url = url;
            }
            let (state, _) = custodia::app::build(&config).await?;
            let erased = state.vault.run_retention().await?;
            println!("{erased} customers erased past retention");
            Ok(())
        }
        Command::Seed { database_url, customers, seed } => {
            custodia::telemetry::init(config.log_format).map_err(anyhow::Error::msg)?;
            if let Some(url) = database_url {
                config.database_url = url;
            }
            let (state, _) = custodia::app::build(&config).await?;
            let started = std::time::Instant::now();
            let ids = state.vault.seed(customers, seed, "custodia:seed").await?;
            let secs = started.elapsed().as_secs_f64();
            println!(
                "{} customers seeded in {secs:.2} s ({:.0} records/s)",
                ids.len(),
                ids.len() as f64 / secs.max(1e-9)
            );
            Ok(())
        }
        Command::Openapi => {
            println!("{}", custodia::api::openapi::document());
            Ok(())
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let server = custodia::app::start(&config).await?;
    tracing::info!(addr = %server.addr, "custodia listening");
    if let Some(metrics) = &server.metrics {
        println!("custodia metrics on http://{}/metrics", metrics.addr);
    }
    println!("custodia listening on http://{}", server.addr);
    tracing::info!(
        "development token: `cargo run --release -- token --sub alice` (or `custodia token --sub alice --ttl 15m`), \
         then send it as `Authorization: Bearer <token>`"
    );
    let shutdown = async {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! { r = ctrl_c => r, _ = term.recv() => Ok(()) }
        }
        #[cfg(not(unix))]
        ctrl_c.await
    };
    shutdown.await?;
    let audit = server.state.audit.clone();
    let grace = std::time::Duration::from_millis(config.shutdown_grace_ms);
    tracing::info!(
        grace_ms = config.shutdown_grace_ms,
        "shutting down: no new connections, finishing requests in flight"
    );
    match tokio::time::timeout(grace, server.stop()).await {
        Ok(stopped) => {
            stopped?;
            // Every answered request's event is committed; seal them with a last checkpoint.
            match audit.checkpoint_now().await {
                Ok(seq) => tracing::info!(seq, "stopped: every request answered, audit checkpointed"),
                Err(e) => tracing::warn!(error = %e, "stopped: every request answered; no final audit checkpoint"),
            }
            Ok(())
        }
        Err(_) => anyhow::bail!(
            "requests still in flight after the {} ms shutdown grace period (shutdown_grace_ms); exiting without them",
            config.shutdown_grace_ms
        ),
    }
}

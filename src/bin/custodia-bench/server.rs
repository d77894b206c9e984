//! The vault under test, in a process of its own: the production router on a seeded database,
//! plus two reference routes (no work; JWT verification only) that exist only here. It writes
//! what a load driver needs (base URL, tokens, ids, mobiles to search) to a JSON file, then
//! serves until SIGTERM or Ctrl-C.
//!
//! Owns: setting the vault up for measurement. Must never: drive load.

use std::path::Path;
use std::time::{Duration, Instant};

use axum::routing::get;
use serde_json::json;
use tokio::net::TcpListener;

use custodia::api;
use custodia::auth::token::{mint, TokenRequest};
use custodia::auth::Principal;
use custodia::config::{Config, TokenAlgorithm, EXAMPLE_TOKEN_KID};

/// The seed of the synthetic customers (the baseline regenerates the same ones).
pub const SEED: u64 = 1;

/// Ids handed to the driver (reads cycle through them).
const IDS_IN_FACTS: usize = 1000;

fn token(config: &Config, sub: &str, pem: &[u8]) -> anyhow::Result<String> {
    let request = TokenRequest {
        sub,
        ttl: Duration::from_secs(3 * 3600),
        issuer: &config.auth.issuer,
        audience: &config.auth.audience,
        kid: EXAMPLE_TOKEN_KID,
        algorithm: TokenAlgorithm::EdDSA,
    };
    Ok(mint(&request, pem)?)
}

/// Sets the vault up, writes the facts, serves until told to stop.
pub async fn hold(mut config: Config, customers: usize, facts: &Path) -> anyhow::Result<()> {
    // The limits stay in force (their counting is part of each request's cost) but never trip.
    config.audit.bulk_threshold = usize::MAX / 2;
    config.reveals_per_hour = u32::MAX;
    config.searches_per_hour = u32::MAX;
    config.search_miss_alarm = u32::MAX;
    let (state, limits) = custodia::app::build(&config).await?;
    // Prometheus metrics when the configuration asks for them (`metrics_listen`), served as
    // long as this process: group-commit sizes and commit latency during a soak.
    let _metrics = match config.metrics_listen {
        Some(at) => Some(custodia::telemetry::prometheus::serve(at).await?),
        None => None,
    };
    let vault = state.vault.clone();
    let started = Instant::now();
    let ids = vault.seed(customers, SEED, "custodia:bench").await?;
    let seed_seconds = started.elapsed().as_secs_f64();
    vault.bootstrap_admin("bench-admin").await?;

    let router = api::router(state.clone(), limits)
        .route("/_bench/none", get(|| async { "ok" }))
        .route("/_bench/jwt", get(|_p: Principal| async { "ok" }).with_state(state.clone()));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, router.into_make_service_with_connect_info::<std::net::SocketAddr>()).await;
    });
    let base = format!("http://{addr}");
    let pem = std::fs::read("keys-example/jwt-ed25519.pem")
        .map_err(|e| anyhow::anyhow!("keys-example/jwt-ed25519.pem (run from the repository root): {e}"))?;
    let admin = token(&config, "bench-admin", &pem)?;
    let client = reqwest::Client::new();
    for (who, role) in
        [("bench-agent", "agent"), ("bench-manager", "account_manager"), ("bench-service", "crm_service")]
    {
        let expires = chrono::Utc::now() + chrono::Duration::hours(3);
        let body = json!({"principal": who, "role": role, "region": "CN", "expires_at": expires.to_rfc3339()});
        let r = client.post(format!("{base}/v1/grants")).bearer_auth(&admin).json(&body).send().await?;
        anyhow::ensure!(r.status() == 201, "granting {role} failed: {}", r.status());
    }
    let agent = token(&config, "bench-agent", &pem)?;
    let manager = token(&config, "bench-manager", &pem)?;
    let service = token(&config, "bench-service", &pem)?;
    // Mobiles to search for, read back through the API once (the manager sees them plain).
    let mut mobiles = Vec::new();
    for id in ids.iter().take(200) {
        let v: serde_json::Value = client
            .get(format!("{base}/v1/customers/{id}"))
            .bearer_auth(&manager)
            .header("X-Purpose", "customer_service")
            .send()
            .await?
            .json()
            .await?;
        if let Some(m) = v["fields"]["mobile"].as_str() {
            mobiles.push(m.to_owned());
        }
    }
    let facts_json = json!({
        "base": base, "agent": agent, "manager": manager, "service": service,
        "ids": ids.iter().take(IDS_IN_FACTS).map(|x| x.to_string()).collect::<Vec<_>>(),
        "mobiles": mobiles, "seeded": ids.len(), "seed_seconds": seed_seconds,
    });
    // Written whole, then renamed: a driver polling for the file never reads half of it.
    let partial = facts.with_extension("partial");
    std::fs::write(&partial, facts_json.to_string())?;
    std::fs::rename(&partial, facts)?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    // The audit of every answered request is committed already (synchronous = FULL).
    Ok(())
}

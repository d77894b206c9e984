//! `custodia bench`: starts a vault on a fresh database, seeds it, and drives it over loopback
//! HTTP at several concurrencies, printing requests/s and latency percentiles per scenario,
//! each also as a ratio of two reference endpoints of the same server (no work, and JWT
//! verification only). Then verifies the audit chain and prints the verification rate. The
//! reference route exists only in the benchmark's own router. With `--baseline` it also
//! measures the do-it-yourself PostgreSQL alternative on the same synthetic customers
//! (`baseline`) and prints custodia ÷ baseline at equal concurrency; `plot` draws the figures.

pub mod baseline;
pub mod plot;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::get;
use serde_json::json;
use tokio::net::TcpListener;

use crate::api;
use crate::auth::token::{mint, TokenRequest};
use crate::auth::Principal;
use crate::config::{Config, TokenAlgorithm, EXAMPLE_TOKEN_KID};

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub customers: usize,
    pub concurrency: Vec<usize>,
    pub seconds: f64,
    /// Set up, then serve until interrupted instead of driving load (for external drivers
    /// such as wrk); the set-up facts are written to this file.
    pub hold: Option<std::path::PathBuf>,
    /// Also run this do-it-yourself baseline script (see `baseline`).
    pub baseline: Option<std::path::PathBuf>,
}

/// The seed of the synthetic customers (the baseline regenerates the same ones).
const SEED: u64 = 1;

/// One measured row.
#[derive(Clone, Debug)]
pub struct Row {
    pub scenario: &'static str,
    pub concurrency: usize,
    pub requests: usize,
    pub errors: usize,
    pub per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

/// One request of a scenario.
struct Request {
    method: &'static str,
    path: String,
    bearer: Option<Arc<String>>,
    body: Option<Vec<u8>>,
}

impl Request {
    fn get(path: String, bearer: &Arc<String>) -> Self {
        Request { method: "GET", path, bearer: Some(bearer.clone()), body: None }
    }

    fn post(path: String, bearer: &Arc<String>, body: &serde_json::Value) -> Self {
        Request { method: "POST", path, bearer: Some(bearer.clone()), body: Some(body.to_string().into_bytes()) }
    }

    /// The request as HTTP/1.1 bytes (keep-alive; every scenario states a purpose).
    fn encode(&self, out: &mut Vec<u8>) {
        use std::io::Write;
        out.clear();
        let _ =
            write!(out, "{} {} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Purpose: customer_service\r\n", self.method, self.path);
        if let Some(t) = &self.bearer {
            let _ = write!(out, "Authorization: Bearer {t}\r\n");
        }
        if let Some(b) = &self.body {
            let _ = write!(out, "Content-Type: application/json\r\nContent-Length: {}\r\n", b.len());
        }
        out.extend_from_slice(b"\r\n");
        if let Some(b) = &self.body {
            out.extend_from_slice(b);
        }
    }
}

type MakeRequest = Arc<dyn Fn(usize) -> Request + Send + Sync>;

/// A minimal HTTP/1.1 keep-alive client: the load driver shares the machine with the server,
/// so it must cost as little as possible (a general-purpose client costs several times more
/// per request than the server's no-work route). Returns the response status.
struct Connection {
    addr: std::net::SocketAddr,
    stream: Option<tokio::net::TcpStream>,
    out: Vec<u8>,
    buf: Vec<u8>,
}

impl Connection {
    fn new(addr: std::net::SocketAddr) -> Self {
        Connection { addr, stream: None, out: Vec::with_capacity(1024), buf: Vec::with_capacity(64 * 1024) }
    }

    async fn send(&mut self, request: &Request) -> std::io::Result<u16> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let result = async {
            if self.stream.is_none() {
                let s = tokio::net::TcpStream::connect(self.addr).await?;
                s.set_nodelay(true)?;
                self.stream = Some(s);
            }
            let stream = self.stream.as_mut().ok_or(std::io::ErrorKind::NotConnected)?;
            request.encode(&mut self.out);
            stream.write_all(&self.out).await?;
            self.buf.clear();
            let (status, total) = loop {
                if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = std::str::from_utf8(&self.buf[..end]).map_err(|_| std::io::ErrorKind::InvalidData)?;
                    let status = head.get(9..12).and_then(|s| s.parse::<u16>().ok());
                    let length = head.lines().find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length").then(|| value.trim().parse::<usize>().ok())?
                    });
                    match (status, length) {
                        (Some(s), Some(l)) => break (s, end + 4 + l),
                        _ => return Err(std::io::ErrorKind::InvalidData.into()),
                    }
                }
                if stream.read_buf(&mut self.buf).await? == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
            };
            while self.buf.len() < total {
                if stream.read_buf(&mut self.buf).await? == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
            }
            Ok(status)
        }
        .await;
        if result.is_err() {
            self.stream = None;
        }
        result
    }
}

async fn drive(
    scenario: &'static str,
    addr: std::net::SocketAddr,
    concurrency: usize,
    seconds: f64,
    make: MakeRequest,
    ok: u16,
) -> Row {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let make = make.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = Connection::new(addr);
            let mut lat = Vec::new();
            let mut errors = 0usize;
            let mut i = worker;
            while Instant::now() < deadline {
                let request = make(i);
                let started = Instant::now();
                match conn.send(&request).await {
                    Ok(status) if status == ok => lat.push(started.elapsed()),
                    _ => errors += 1,
                }
                i += concurrency;
            }
            (lat, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        if let Ok((lat, e)) = t.await {
            all.extend(lat);
            errors += e;
        }
    }
    all.sort();
    Row {
        scenario,
        concurrency,
        requests: all.len(),
        errors,
        per_second: all.len() as f64 / seconds,
        p50_ms: percentile(&all, 0.50),
        p99_ms: percentile(&all, 0.99),
        p999_ms: percentile(&all, 0.999),
    }
}

fn token(config: &Config, sub: &str, pem: &[u8]) -> anyhow::Result<String> {
    let request = TokenRequest {
        sub,
        ttl: Duration::from_secs(3600),
        issuer: &config.auth.issuer,
        audience: &config.auth.audience,
        kid: EXAMPLE_TOKEN_KID,
        algorithm: TokenAlgorithm::EdDSA,
    };
    Ok(mint(&request, pem)?)
}

/// The process's resident set now and at its peak (Linux), for the table.
fn memory_report() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or("unknown".to_owned(), |kb| format!("{:.0} MB", kb / 1024.0))
    };
    format!(
        "Memory (vault and load driver in one process): resident {} after the load, peak {}.\n",
        field("VmRSS:"),
        field("VmHWM:")
    )
}

/// Runs the benchmark; returns the rows and a Markdown table.
pub async fn run(mut config: Config, options: BenchOptions) -> anyhow::Result<(Vec<Row>, String)> {
    let dir = tempfile::tempdir()?;
    if !config.database_url.starts_with("postgres") {
        config.database_url = format!("sqlite://{}", dir.path().join("bench.db").display());
    }
    // The limits stay in force (their counting is part of each request's cost) but never trip.
    config.audit.bulk_threshold = usize::MAX / 2;
    config.reveals_per_hour = u32::MAX;
    config.searches_per_hour = u32::MAX;
    config.search_miss_alarm = u32::MAX;
    let (state, limits) = crate::app::build(&config).await?;
    let vault = state.vault.clone();
    let started = Instant::now();
    let ids = Arc::new(vault.seed(options.customers, SEED, "custodia:bench").await?);
    let seeded = format!(
        "Seeded {} customers in {:.1} s ({:.0} records/s).\n\n",
        ids.len(),
        started.elapsed().as_secs_f64(),
        ids.len() as f64 / started.elapsed().as_secs_f64().max(1e-9)
    );
    vault.bootstrap_admin("bench-admin").await?;

    // The benchmark's router: the real one, plus a JWT-only reference route.
    let router = api::router(state.clone(), limits)
        .route("/_bench/none", get(|| async { "ok" }))
        .route("/_bench/jwt", get(|_p: Principal| async { "ok" }).with_state(state.clone()));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, router.into_make_service_with_connect_info::<std::net::SocketAddr>()).await;
    });
    let base = format!("http://{addr}");
    let pem = std::fs::read("keys-example/jwt-ed25519.pem")?;
    let admin = token(&config, "bench-admin", &pem)?;
    let client = reqwest::Client::new();
    for (who, role) in
        [("bench-agent", "agent"), ("bench-manager", "account_manager"), ("bench-service", "crm_service")]
    {
        let body = json!({"principal": who, "role": role, "region": "CN", "expires_at": (chrono::Utc::now() + chrono::Duration::hours(2)).to_rfc3339()});
        let r = client.post(format!("{base}/v1/grants")).bearer_auth(&admin).json(&body).send().await?;
        anyhow::ensure!(r.status() == 201, "granting {role} failed: {}", r.status());
    }
    let agent = Arc::new(token(&config, "bench-agent", &pem)?);
    let manager = Arc::new(token(&config, "bench-manager", &pem)?);
    let service = Arc::new(token(&config, "bench-service", &pem)?);
    // Mobiles to search for, read back through the API once.
    let mut mobiles = Vec::new();
    for id in ids.iter().take(200) {
        let v: serde_json::Value = client
            .get(format!("{base}/v1/customers/{id}"))
            .bearer_auth(&*manager)
            .header("X-Purpose", "customer_service")
            .send()
            .await?
            .json()
            .await?;
        if let Some(m) = v["fields"]["mobile"].as_str() {
            mobiles.push(m.to_owned());
        }
    }
    let mobiles = Arc::new(mobiles);
    if let Some(path) = &options.hold {
        let facts = json!({"base": base, "agent": *agent, "manager": *manager, "service": *service,
            "ids": ids.iter().take(1000).map(|x| x.to_string()).collect::<Vec<_>>(), "mobiles": *mobiles});
        std::fs::write(path, facts.to_string())?;
        tokio::signal::ctrl_c().await?;
        return Ok((Vec::new(), String::new()));
    }

    let mut rows = Vec::new();
    for &c in &options.concurrency {
        let scenario = |name, make: MakeRequest, ok| drive(name, addr, c, options.seconds, make, ok);
        rows.push(
            scenario(
                "reference: no work",
                Arc::new(move |_| Request { method: "GET", path: "/_bench/none".into(), bearer: None, body: None }),
                200,
            )
            .await,
        );
        let t = agent.clone();
        rows.push(
            scenario("reference: JWT only", Arc::new(move |_| Request::get("/_bench/jwt".into(), &t)), 200).await,
        );
        let (t, ids2) = (agent.clone(), ids.clone());
        rows.push(
            scenario(
                "masked read",
                Arc::new(move |i| Request::get(format!("/v1/customers/{}", ids2[i % ids2.len()]), &t)),
                200,
            )
            .await,
        );
        let (t, m) = (agent.clone(), mobiles.clone());
        rows.push(
            scenario(
                "search by mobile",
                Arc::new(move |i| {
                    Request::post(
                        "/v1/customers/search".into(),
                        &t,
                        &json!({"match": {"mobile": m[i % m.len().max(1)]}}),
                    )
                }),
                200,
            )
            .await,
        );
        let t = manager.clone();
        let body = json!({"region": "3201", "kind": "individual", "fields": {"name": "张三", "mobile": "13812345678", "resident_id": "11010519491231002X", "email": "a@example.cn", "address": "江苏省南京市玄武区中山路1号", "birth_date": "1949-12-31", "bank_card": "6222021234567890128"}});
        rows.push(scenario("create", Arc::new(move |_| Request::post("/v1/customers".into(), &t, &body)), 201).await);
        let (t, ids2) = (service.clone(), ids.clone());
        rows.push(
            scenario(
                "batch-get 100",
                Arc::new(move |i| {
                    let start = (i * 100) % ids2.len().saturating_sub(100).max(1);
                    let batch: Vec<String> =
                        ids2[start..(start + 100).min(ids2.len())].iter().map(|x| x.to_string()).collect();
                    Request::post("/v1/customers/batch-get".into(), &t, &json!({"ids": batch}))
                }),
                200,
            )
            .await,
        );
    }

    let memory = memory_report();
    let mut baseline_rows = Vec::new();
    if let Some(script) = options.baseline.clone() {
        let (customers, seconds, levels) = (options.customers, options.seconds, options.concurrency.clone());
        baseline_rows =
            tokio::task::spawn_blocking(move || baseline::run(&script, customers, SEED, seconds, &levels)).await??;
    }

    // Audit verification rate.
    let verifier = crate::audit::CheckpointVerifier::load(&config.audit.public_key)?;
    let report = crate::audit::verify::verify(vault.store(), &verifier).await?;
    let rate = report.events as f64 / (report.elapsed_ms.max(1) as f64 / 1000.0);

    let mut table = seeded;
    table.push_str(
        "| scenario | conc. | req/s | p50 ms | p99 ms | p999 ms | errors | vs no-work | vs JWT-only |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in &rows {
        let base_none = rows
            .iter()
            .find(|x| x.concurrency == r.concurrency && x.scenario == "reference: no work")
            .map_or(1.0, |x| x.per_second);
        let base_jwt = rows
            .iter()
            .find(|x| x.concurrency == r.concurrency && x.scenario == "reference: JWT only")
            .map_or(1.0, |x| x.per_second);
        table.push_str(&format!(
            "| {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {:.3} | {:.3} |\n",
            r.scenario,
            r.concurrency,
            r.per_second,
            r.p50_ms,
            r.p99_ms,
            r.p999_ms,
            r.errors,
            r.per_second / base_none.max(1e-9),
            r.per_second / base_jwt.max(1e-9)
        ));
    }
    for r in &baseline_rows {
        table.push_str(&format!(
            "| {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {} | — | — |\n",
            r.scenario, r.concurrency, r.per_second, r.p50_ms, r.p99_ms, r.p999_ms, r.errors
        ));
    }
    if !baseline_rows.is_empty() {
        table.push_str(
            "\nAudited masked reads, custodia ÷ baseline at equal concurrency:\n\n\
             | conc. | custodia req/s | ÷ pgaudit baseline | ÷ durable-audit-row baseline |\n|---:|---:|---:|---:|\n",
        );
        for &c in &options.concurrency {
            let find = |name: &str, rows: &[Row]| {
                rows.iter().find(|r| r.scenario == name && r.concurrency == c).map(|r| r.per_second)
            };
            if let Some(ours) = find("masked read", &rows) {
                let ratio =
                    |theirs: Option<f64>| theirs.map_or("—".to_owned(), |t| format!("{:.2}", ours / t.max(1e-9)));
                table.push_str(&format!(
                    "| {c} | {ours:.0} | {} | {} |\n",
                    ratio(find(baseline::PGAUDIT, &baseline_rows)),
                    ratio(find(baseline::DURABLE, &baseline_rows))
                ));
            }
        }
    }
    table.push_str(&format!(
        "\nAudit verification: {} events, {} checkpoints, ok = {}, in {} ms ({rate:.0} events/s).\n",
        report.events, report.checkpoints, report.ok, report.elapsed_ms
    ));
    table.push_str(&memory);
    rows.extend(baseline_rows);
    Ok((rows, table))
}

//! `custodia-bench`: the benchmark, a binary of its own (the production `custodia` binary
//! serves, administers and migrates, nothing else).
//!
//! It starts the vault under test as a child process (`custodia-bench --hold`, see `server`)
//! on a fresh seeded database, drives it over loopback HTTP from this process at several
//! concurrencies, and reports per scenario requests/s and latency percentiles beside what the
//! server process alone spent per request (CPU in total and per thread, context switches,
//! read/write system calls, from /proc). req/s is reported as a ratio to the same run's
//! no-work route; CPU per request is the figure to compare across runs. Then it verifies the
//! audit chain and prints the rate. With `--baseline` it also measures the do-it-yourself
//! PostgreSQL alternative (`baseline`); `plot` draws the figures.

mod baseline;
mod driver;
mod plot;
mod probe;
mod server;
mod soak;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::json;

use custodia::config::Config;
use driver::{drive, MakeRequest, Request};
use probe::ServerUse;

/// The same allocator as the production binary: the server under test must be that binary's
/// twin.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(name = "custodia-bench", about = "Benchmark a custodia vault over loopback HTTP")]
struct Cli {
    /// Configuration file (TOML) for the vault under test; see custodia.example.toml.
    #[arg(long, env = "CUSTODIA_CONFIG")]
    config: Option<PathBuf>,
    /// Customers to seed.
    #[arg(long, default_value_t = 10_000)]
    customers: usize,
    /// Seconds per scenario and concurrency.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Concurrencies, comma-separated.
    #[arg(long, default_value = "1,16,64", value_delimiter = ',')]
    concurrency: Vec<usize>,
    /// Benchmark against this database (PostgreSQL, or a SQLite file) instead of a fresh
    /// SQLite file.
    #[arg(long)]
    database_url: Option<String>,
    /// Also write the table here, and the plot beside it (.svg).
    #[arg(long)]
    output: Option<PathBuf>,
    /// Only serve: set up, write the base URL, tokens and ids to this JSON file, then serve
    /// until SIGTERM or Ctrl-C (the driver runs this as its child; external drivers such as
    /// wrk use it too, see bench/cpu-per-request.sh).
    #[arg(long)]
    hold: Option<PathBuf>,
    /// Also measure the do-it-yourself PostgreSQL baseline (pgcrypto, RLS, masking view,
    /// pgaudit; durable audit row) with pgbench, using this script (installs what it needs).
    #[arg(long, num_args = 0..=1, default_missing_value = "bench/baseline.sh")]
    baseline: Option<PathBuf>,
    /// Soak instead: measure the peak of a mixed load (9 reads : 1 create), then hold
    /// `--soak-fraction` of it for MINUTES, writing throughput, p99 and resident memory per
    /// interval (to `--output` and its .svg plot).
    #[arg(long, value_name = "MINUTES")]
    soak: Option<f64>,
    /// The soak's share of the measured peak.
    #[arg(long, default_value_t = 0.8)]
    soak_fraction: f64,
    /// Hold this many requests per second instead of `--soak-fraction` of the peak (the peak
    /// is still measured and reported): to compare two builds at one rate.
    #[arg(long, value_name = "REQ_PER_S")]
    soak_rate: Option<f64>,
    /// Seconds over which the soak measures its peak. A few seconds on a fresh database
    /// overstate what it sustains (no checkpoint, small B-trees yet): a target taken from
    /// them can exceed the sustainable rate, and a paced load above it only builds a backlog.
    #[arg(long, default_value_t = 60.0)]
    soak_peak_seconds: f64,
    /// Seconds per soak interval (one line of the results each).
    #[arg(long, default_value_t = 60)]
    soak_interval: u64,
    /// Connections of the soak's paced load, a pool: each due request goes out on a free
    /// connection; while none is free it waits, and the wait counts in its latency. Deep enough
    /// that a stall of the disk (tens of ms here) finds the requests due during it already in
    /// the server, which works on them while its audit commit waits, instead of in the pool,
    /// where they would wait idle and be worked on only after it (256 held ≈ 25 ms of traffic
    /// at 10,000 req/s; 960 ≈ 100 ms). Below the server's default `max_client_connections`
    /// (1,000): past it, connections would wait in the kernel's backlog.
    #[arg(long, default_value_t = 960)]
    soak_connections: usize,
    /// What the soak's target is a share of: `paced`, the highest rate of the soak's own paced
    /// load that the vault kept up with (searched in steps from the closed-loop peak down), or
    /// `closed`, the closed-loop peak itself (as until 2026-12-07; it can exceed what a paced
    /// load is served at).
    #[arg(long, value_enum, default_value_t = PeakKind::Paced)]
    soak_peak: PeakKind,
    /// Seconds per step of the paced peak's search.
    #[arg(long, default_value_t = 20)]
    soak_step_seconds: u64,
    /// The p99 (ms, from the due time) a paced step must stay within to count as kept up
    /// with: the latency budget that the paced peak is the highest rate within. The default
    /// only rules out a building backlog; a tighter budget (e.g. 25, with 60-s steps, as in the
    /// committed soaks of 2026-12-07) makes the soak's share of the peak a share of a rate
    /// served within that budget.
    #[arg(long, default_value_t = soak::KEPT_UP_P99_MS)]
    soak_peak_p99_ms: f64,
    /// Run the vault under test on these CPUs only (a `taskset -c` list, e.g. `0`): with
    /// `--driver-cpus`, the load driver and the server stop competing for cores, as with a
    /// driver on another machine. Needs taskset (util-linux).
    #[arg(long, value_name = "LIST")]
    server_cpus: Option<String>,
    /// Run this process, the load driver, on these CPUs only (a `taskset -c` list, e.g. `1`).
    #[arg(long, value_name = "LIST")]
    driver_cpus: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum PeakKind {
    Paced,
    Closed,
}

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
    /// What the server process spent per request (absent for the baseline's rows).
    pub server: Option<ServerUse>,
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
    if let Some(cpus) = &cli.driver_cpus {
        // Every thread of this process (-a); threads started later inherit their creator's CPUs.
        let status = std::process::Command::new("taskset")
            .args(["-a", "-p", "-c", cpus, &std::process::id().to_string()])
            .stdout(std::process::Stdio::null())
            .status()
            .map_err(|e| anyhow::anyhow!("--driver-cpus needs taskset (util-linux): {e}"))?;
        anyhow::ensure!(status.success(), "taskset could not move the driver to CPUs {cpus}");
    }
    let mut config = Config::load(cli.config.as_deref())?;
    if let Some(url) = &cli.database_url {
        config.database_url = url.clone();
    }
    // A fresh SQLite file unless a database was named: never the configured one, which may
    // hold real data (and a reused file would skew every figure).
    let dir = tempfile::tempdir()?;
    if cli.database_url.is_none() {
        config.database_url = format!("sqlite://{}", dir.path().join("bench.db").display());
    }
    if let Some(facts) = &cli.hold {
        custodia::telemetry::init(config.log_format).map_err(anyhow::Error::msg)?;
        return server::hold(config, cli.customers, facts).await;
    }
    if let Some(minutes) = cli.soak {
        return soak_run(&cli, &config, dir.path(), minutes).await;
    }
    let (rows, table) = measure(&cli, &config, dir.path()).await?;
    println!("{table}");
    if let Some(path) = &cli.output {
        std::fs::write(path, &table)?;
        let plot = path.with_extension("svg");
        let caption = format!("custodia-bench, {} customers, {} s per point", cli.customers, cli.seconds);
        std::fs::write(&plot, plot::svg(&rows, &caption))?;
        println!("Wrote {} and {}.", path.display(), plot.display());
    }
    Ok(())
}

/// The server process; stopped (SIGTERM, then SIGKILL) when dropped.
struct Server {
    child: std::process::Child,
    /// The end of the server's log (its standard error), for the report when it exits early.
    log_tail: Arc<std::sync::Mutex<Vec<u8>>>,
}

/// How much of the end of the server's log is kept.
const LOG_TAIL_BYTES: usize = 64 * 1024;

/// Reads the server's log from its pipe until the server closes it, keeping only its last
/// [`LOG_TAIL_BYTES`]. The log never touches a disk here: the per-request lines (≈ 1.5–3 MB a
/// second under load) written to a file beside the database went back to the disk in 60–80 MB
/// bursts every 30 s, with commits' syncs queued behind them (2026-12-06 traces; it was not
/// what most of the soak's slow audit turns wait for, docs/PERFORMANCE.md). Operators are told
/// to keep that log off the database's disk (docs/OPERATIONS.md, "Logs"); the benchmark does
/// as they do, and the server still formats and writes every line.
fn drain_log(mut from: impl std::io::Read, tail: Arc<std::sync::Mutex<Vec<u8>>>) {
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => {
                let mut kept = tail.lock().unwrap_or_else(|p| p.into_inner());
                kept.extend_from_slice(&chunk[..n]);
                let excess = kept.len().saturating_sub(LOG_TAIL_BYTES);
                kept.drain(..excess);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// The last `lines` lines of a log tail (the first may be cut).
fn last_lines(tail: &[u8], lines: usize) -> String {
    let text = String::from_utf8_lossy(tail);
    let kept: Vec<&str> = text.lines().rev().take(lines).collect();
    kept.into_iter().rev().collect::<Vec<_>>().join("\n")
}

impl Server {
    fn start(cli: &Cli, config: &Config, facts: &Path, log: &Path) -> anyhow::Result<Self> {
        let exe = std::env::current_exe()?;
        let mut command = match &cli.server_cpus {
            // From its first instruction: the runtime sizes its workers to the CPUs it may use.
            Some(cpus) => {
                let mut c = std::process::Command::new("taskset");
                c.arg("-c").arg(cpus).arg(exe);
                c
            }
            None => std::process::Command::new(exe),
        };
        command
            .arg("--hold")
            .arg(facts)
            .arg("--customers")
            .arg(cli.customers.to_string())
            .arg("--database-url")
            .arg(&config.database_url)
            .stdin(std::process::Stdio::null())
            .stdout(std::fs::File::create(log)?)
            .stderr(std::process::Stdio::piped());
        if let Some(c) = &cli.config {
            command.arg("--config").arg(c);
        }
        let mut child = command.spawn()?;
        let log_tail = Arc::new(std::sync::Mutex::new(Vec::new()));
        if let Some(stderr) = child.stderr.take() {
            let tail = log_tail.clone();
            std::thread::Builder::new().name("server-log".into()).spawn(move || drain_log(stderr, tail))?;
        }
        Ok(Server { child, log_tail })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the facts file while the server lives.
    async fn facts(&mut self, facts: &Path) -> anyhow::Result<serde_json::Value> {
        loop {
            if let Ok(text) = std::fs::read_to_string(facts) {
                return Ok(serde_json::from_str(&text)?);
            }
            if let Some(status) = self.child.try_wait()? {
                // The log's reader may still be taking the last bytes from the pipe.
                tokio::time::sleep(Duration::from_millis(200)).await;
                let tail = last_lines(&self.log_tail.lock().unwrap_or_else(|p| p.into_inner()), 20);
                anyhow::bail!("the server exited ({status}) before it was ready:\n{tail}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM (through kill(1): this crate has no unsafe code), then waits up to 10 s.
    fn stop(&mut self) {
        let _ = std::process::Command::new("kill").arg("-TERM").arg(self.pid().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}

fn text(v: &serde_json::Value, key: &str) -> anyhow::Result<Arc<String>> {
    Ok(Arc::new(v[key].as_str().ok_or_else(|| anyhow::anyhow!("facts: no {key}"))?.to_owned()))
}

fn texts(v: &serde_json::Value, key: &str) -> Arc<Vec<String>> {
    Arc::new(v[key].as_array().into_iter().flatten().filter_map(|x| x.as_str().map(str::to_owned)).collect())
}

/// The scenarios, in the order they run at each concurrency: (name, request maker, expected
/// status).
fn scenarios(facts: &serde_json::Value) -> anyhow::Result<Vec<(&'static str, MakeRequest, u16)>> {
    let (agent, manager, service) = (text(facts, "agent")?, text(facts, "manager")?, text(facts, "service")?);
    let (ids, mobiles) = (texts(facts, "ids"), texts(facts, "mobiles"));
    anyhow::ensure!(!ids.is_empty() && !mobiles.is_empty(), "facts: no ids or mobiles");
    let mut list: Vec<(&'static str, MakeRequest, u16)> = Vec::new();
    list.push((
        "reference: no work",
        Arc::new(|_| Request { method: "GET", path: "/_bench/none".into(), bearer: None, body: None }),
        200,
    ));
    let t = agent.clone();
    list.push(("reference: JWT only", Arc::new(move |_| Request::get("/_bench/jwt".into(), &t)), 200));
    let (t, i2) = (agent.clone(), ids.clone());
    list.push(("masked read", Arc::new(move |i| Request::get(format!("/v1/customers/{}", i2[i % i2.len()]), &t)), 200));
    let t = agent.clone();
    list.push((
        "search by mobile",
        Arc::new(move |i| {
            Request::post("/v1/customers/search".into(), &t, &json!({"match": {"mobile": mobiles[i % mobiles.len()]}}))
        }),
        200,
    ));
    let body = json!({"region": "3201", "kind": "individual", "fields": {"name": "张三", "mobile": "13812345678",
        "resident_id": "11010519491231002X", "email": "a@example.cn", "address": "江苏省南京市玄武区中山路1号",
        "birth_date": "1949-12-31", "bank_card": "6222021234567890128"}});
    list.push(("create", Arc::new(move |_| Request::post("/v1/customers".into(), &manager, &body)), 201));
    list.push((
        "batch-get 100",
        Arc::new(move |i| {
            let start = (i * 100) % ids.len().saturating_sub(100).max(1);
            let batch = &ids[start..(start + 100).min(ids.len())];
            Request::post("/v1/customers/batch-get".into(), &service, &json!({ "ids": batch }))
        }),
        200,
    ));
    Ok(list)
}

/// The soak's mixed load: nine masked reads to one create.
fn mixed(facts: &serde_json::Value) -> anyhow::Result<MakeRequest> {
    let (agent, manager) = (text(facts, "agent")?, text(facts, "manager")?);
    let ids = texts(facts, "ids");
    anyhow::ensure!(!ids.is_empty(), "facts: no ids");
    let body = json!({"region": "3201", "kind": "individual", "fields": {"name": "张三", "mobile": "13812345678",
        "email": "a@example.cn", "birth_date": "1949-12-31"}});
    Ok(Arc::new(move |i| {
        if i % 10 == 9 {
            Request::post("/v1/customers".into(), &manager, &body)
        } else {
            Request::get(format!("/v1/customers/{}", ids[(i * 7919) % ids.len()]), &agent)
        }
    }))
}

/// Measures the mixed load's peak, holds a fraction of it for `minutes`, and reports.
async fn soak_run(cli: &Cli, config: &Config, dir: &Path, minutes: f64) -> anyhow::Result<()> {
    anyhow::ensure!(minutes > 0.0 && cli.soak_interval > 0, "--soak and --soak-interval must be positive");
    anyhow::ensure!(cli.soak_fraction > 0.0 && cli.soak_fraction <= 1.0, "--soak-fraction must be in (0, 1]");
    anyhow::ensure!(cli.soak_connections > 0, "--soak-connections must be positive");
    anyhow::ensure!(cli.soak_peak_p99_ms > 0.0, "--soak-peak-p99-ms must be positive");
    // Past the server's limit, the extra connections would wait in the kernel's backlog, and
    // their wait would count as the server's latency.
    anyhow::ensure!(
        cli.soak_connections <= config.max_client_connections,
        "--soak-connections ({}) is above the server's max_client_connections ({}): lower it, or raise the limit in --config",
        cli.soak_connections,
        config.max_client_connections
    );
    anyhow::ensure!(cli.soak_rate.is_none_or(|r| r >= 1.0), "--soak-rate must be at least 1 request per second");
    anyhow::ensure!(cli.soak_peak_seconds >= 1.0, "--soak-peak-seconds must be at least 1");
    let (facts_path, log) = (dir.join("facts.json"), dir.join("server.log"));
    let mut server = Server::start(cli, config, &facts_path, &log)?;
    let facts = server.facts(&facts_path).await?;
    let addr: std::net::SocketAddr = facts["base"]
        .as_str()
        .and_then(|b| b.strip_prefix("http://"))
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("facts: no base address"))?;
    let make = mixed(&facts)?;
    eprintln!("soak: measuring the peak over {:.0} s", cli.soak_peak_seconds);
    let measured = drive("mixed", addr, soak::PEAK_CONNECTIONS, cli.soak_peak_seconds, make.clone(), 200).await;
    // drive counts only the expected status as a success: creates (201) count as errors there.
    let closed = (measured.requests + measured.errors) as f64 / cli.soak_peak_seconds;
    let step = Duration::from_secs(cli.soak_step_seconds.max(1));
    let paced = match (cli.soak_peak, cli.soak_rate) {
        (PeakKind::Paced, None) => {
            eprintln!("soak: closed-loop peak {closed:.0} req/s; searching the paced peak");
            soak::paced_peak(addr, server.pid(), make.clone(), closed, cli.soak_connections, step, cli.soak_peak_p99_ms)
                .await
        }
        _ => Vec::new(),
    };
    anyhow::ensure!(
        cli.soak_peak == PeakKind::Closed || cli.soak_rate.is_some() || paced.iter().any(|s| s.kept_up),
        "the vault kept up with no paced rate down to 30 % of its closed-loop peak ({closed:.0} req/s): see the steps above"
    );
    let peak = soak::Peak {
        per_second: closed,
        seconds: cli.soak_peak_seconds,
        paced,
        step_seconds: step.as_secs_f64(),
        p99_budget_ms: cli.soak_peak_p99_ms,
    };
    let interval = Duration::from_secs(cli.soak_interval);
    let plan = soak::Plan {
        target_per_second: cli.soak_rate.unwrap_or(peak.reference() * cli.soak_fraction),
        intervals: ((minutes * 60.0) / interval.as_secs_f64()).ceil().max(1.0) as usize,
        interval,
        connections: cli.soak_connections,
    };
    eprintln!("soak: peak {:.0} req/s, holding {:.0} req/s", peak.reference(), plan.target_per_second);
    let (intervals, seconds) = soak::run(addr, server.pid(), make, &plan).await;
    server.stop();
    let store = custodia::store::open(&config.database_url, &custodia::store::StoreOptions::default()).await?;
    let verifier = custodia::audit::CheckpointVerifier::load(&config.audit.public_key)?;
    let verified = custodia::audit::verify::verify(&store, &verifier).await?;
    let header = format!(
        "Soak: {} customers seeded, {minutes} min on {}; audit verified after the run: {} events, ok = {}.\n",
        facts["seeded"],
        if config.database_url.starts_with("postgres") { "PostgreSQL" } else { "SQLite" },
        verified.events,
        verified.ok
    );
    let mut text = soak::report(&peak, &plan, &intervals, &header);
    let (stalled, longest) = soak::stalls(&seconds, plan.target_per_second);
    text.push_str(&format!(
        "Seconds in which fewer than half the target completed: {stalled} (longest run {longest} s).\n"
    ));
    println!("{text}");
    if let Some(path) = &cli.output {
        std::fs::write(path, &text)?;
        let plot = path.with_extension("svg");
        let caption = format!(
            "custodia-bench --soak {minutes}: {:.0} req/s held, per {} s interval",
            plan.target_per_second,
            interval.as_secs()
        );
        std::fs::write(&plot, plot::soak_svg(&intervals, &caption))?;
        let trace = path.with_extension("seconds.tsv");
        std::fs::write(&trace, soak::seconds_tsv(&seconds))?;
        println!("Wrote {}, {} and {}.", path.display(), plot.display(), trace.display());
    }
    anyhow::ensure!(verified.ok, "audit verification failed after the soak");
    Ok(())
}

/// Runs the whole benchmark; returns the rows and the Markdown report.
async fn measure(cli: &Cli, config: &Config, dir: &Path) -> anyhow::Result<(Vec<Row>, String)> {
    let (facts_path, log) = (dir.join("facts.json"), dir.join("server.log"));
    let mut server = Server::start(cli, config, &facts_path, &log)?;
    let facts = server.facts(&facts_path).await?;
    let addr: std::net::SocketAddr = facts["base"]
        .as_str()
        .and_then(|b| b.strip_prefix("http://"))
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("facts: no base address"))?;
    let pid = server.pid();
    let list = scenarios(&facts)?;
    // On PostgreSQL a request's cost is split between two kinds of process: report both.
    let on_postgres = config.database_url.starts_with("postgres");
    let mut rows = Vec::new();
    for &c in &cli.concurrency {
        for (name, make, ok) in &list {
            let before = probe::sample(pid).ok_or_else(|| anyhow::anyhow!("cannot read /proc/{pid}"))?;
            let database_before = on_postgres.then(probe::database_ticks);
            let mut row = drive(name, addr, c, cli.seconds, make.clone(), *ok).await;
            if let Some(after) = probe::sample(pid) {
                let mut used = probe::per_request(&before, &after, row.requests);
                used.database_cpu_us =
                    database_before.map(|b| probe::database_per_request(b, probe::database_ticks(), row.requests));
                row.server = Some(used);
            }
            rows.push(row);
        }
    }
    let resident = probe::resident_mb(pid);
    server.stop();

    let mut baseline_rows = Vec::new();
    if let Some(script) = cli.baseline.clone() {
        let (customers, seconds, levels) = (cli.customers, cli.seconds, cli.concurrency.clone());
        baseline_rows =
            tokio::task::spawn_blocking(move || baseline::run(&script, customers, server::SEED, seconds, &levels))
                .await??;
    }

    // Audit verification, from this process, on the database the server wrote.
    let store = custodia::store::open(&config.database_url, &custodia::store::StoreOptions::default()).await?;
    let verifier = custodia::audit::CheckpointVerifier::load(&config.audit.public_key)?;
    let report = custodia::audit::verify::verify(&store, &verifier).await?;
    let rate = report.events as f64 / (report.elapsed_ms.max(1) as f64 / 1000.0);

    let mut out = format!(
        "Seeded {} customers in {:.1} s. Load driver and server in separate processes; server figures from /proc.\n\n",
        facts["seeded"],
        facts["seed_seconds"].as_f64().unwrap_or(0.0)
    );
    report_rows(&mut out, &rows);
    report_threads(&mut out, &rows);
    report_baseline(&mut out, &rows, &baseline_rows, &cli.concurrency);
    out.push_str(&format!(
        "\nAudit verification: {} events, {} checkpoints, ok = {}, in {} ms ({rate:.0} events/s).\n",
        report.events, report.checkpoints, report.ok, report.elapsed_ms
    ));
    out.push_str(&format!(
        "Server resident memory after the load: {}.\n",
        resident.map_or("unknown".to_owned(), |mb| format!("{mb:.0} MB"))
    ));
    anyhow::ensure!(report.ok, "audit verification failed:\n{out}");
    rows.extend(baseline_rows);
    Ok((rows, out))
}

fn report_rows(out: &mut String, rows: &[Row]) {
    out.push_str(
        "| scenario | conc. | req/s | vs no-work | p50 ms | p99 ms | p999 ms | errors | server CPU µs/req | ctx sw/req | r/w syscalls/req | + database CPU µs/req |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let none = rows
            .iter()
            .find(|x| x.concurrency == r.concurrency && x.scenario == "reference: no work")
            .map_or(1.0, |x| x.per_second);
        let s = r.server.clone().unwrap_or_default();
        out.push_str(&format!(
            "| {} | {} | {:.0} | {:.3} | {:.2} | {:.2} | {:.2} | {} | {:.1} | {:.2} | {:.1} | {} |\n",
            r.scenario,
            r.concurrency,
            r.per_second,
            r.per_second / none.max(1e-9),
            r.p50_ms,
            r.p99_ms,
            r.p999_ms,
            r.errors,
            s.cpu_us,
            s.context_switches,
            s.io_calls,
            // Vault and PostgreSQL together; "—" on SQLite, where the database is the vault.
            s.database_cpu_us.map_or("—".to_owned(), |db| format!("{:.1} (database {db:.1})", s.cpu_us + db))
        ));
    }
}

/// Server CPU per request by thread, one line per scenario and concurrency.
fn report_threads(out: &mut String, rows: &[Row]) {
    out.push_str("\nServer CPU µs per request by thread:\n\n| scenario | conc. | threads |\n|---|---:|---|\n");
    for r in rows {
        let Some(s) = &r.server else { continue };
        let parts: Vec<String> = s.by_thread.iter().map(|(name, us)| format!("{name} {us:.1}")).collect();
        out.push_str(&format!("| {} | {} | {} |\n", r.scenario, r.concurrency, parts.join(", ")));
    }
}

fn report_baseline(out: &mut String, rows: &[Row], baseline_rows: &[Row], levels: &[usize]) {
    if baseline_rows.is_empty() {
        return;
    }
    out.push_str(
        "\n| baseline | conc. | req/s | p50 ms | p99 ms | p999 ms | errors |\n|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in baseline_rows {
        out.push_str(&format!(
            "| {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {} |\n",
            r.scenario, r.concurrency, r.per_second, r.p50_ms, r.p99_ms, r.p999_ms, r.errors
        ));
    }
    out.push_str(
        "\nAudited masked reads, custodia ÷ baseline at equal concurrency:\n\n\
         | conc. | custodia req/s | ÷ pgaudit baseline | ÷ durable-audit-row baseline |\n|---:|---:|---:|---:|\n",
    );
    for &c in levels {
        let find = |name: &str, rows: &[Row]| {
            rows.iter().find(|r| r.scenario == name && r.concurrency == c).map(|r| r.per_second)
        };
        if let Some(ours) = find("masked read", rows) {
            let ratio = |theirs: Option<f64>| theirs.map_or("—".to_owned(), |t| format!("{:.2}", ours / t.max(1e-9)));
            out.push_str(&format!(
                "| {c} | {ours:.0} | {} | {} |\n",
                ratio(find(baseline::PGAUDIT, baseline_rows)),
                ratio(find(baseline::DURABLE, baseline_rows))
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_reader_keeps_only_the_end_and_stops_at_the_end_of_the_pipe() {
        let log: String = (0..20_000).map(|i| format!("line {i}\n")).collect();
        assert!(log.len() > 2 * LOG_TAIL_BYTES);
        let tail = Arc::new(std::sync::Mutex::new(Vec::new()));
        // Returns: the reader's end is the pipe's end.
        drain_log(std::io::Cursor::new(log.clone().into_bytes()), tail.clone());
        let kept = tail.lock().unwrap().clone();
        assert_eq!(kept.len(), LOG_TAIL_BYTES);
        assert!(log.as_bytes().ends_with(&kept));
        assert_eq!(last_lines(&kept, 2), "line 19998\nline 19999");
    }

    #[test]
    fn a_short_log_is_reported_whole() {
        assert_eq!(last_lines(b"starting\nno database\n", 20), "starting\nno database");
        assert_eq!(last_lines(b"", 20), "");
    }
}

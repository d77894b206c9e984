//! A database that goes away: a private PostgreSQL cluster stopped mid-load, and a sick
//! network (latency, resets, a black hole) between the vault and PostgreSQL. The promise:
//! requests fail fast with 503, `/readyz` says not ready, nothing is served without its audit
//! event, nothing acknowledged is lost, and the vault recovers without a restart.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::support::*;

/// What a load client saw of one request.
#[derive(Clone, Debug)]
struct Outcome {
    at: Instant,
    request_id: String,
    status: u16,
    latency: Duration,
    /// The id a 201 answered with.
    created: Option<String>,
}

/// Clients creating and reading customers until told to stop.
struct Load {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Outcome>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(h: &Harness, known: &str, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for c in 0..clients {
            let (stop, seen) = (stop.clone(), seen.clone());
            let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
            let (base, known) = (h.base.clone(), known.to_owned());
            tasks.push(tokio::spawn(async move {
                let token = mint(ALICE);
                let mut n = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let request_id = format!("fault-{c}-{n}");
                    let started = Instant::now();
                    let request = if n.is_multiple_of(2) {
                        client.post(format!("{base}/v1/customers")).json(&individual("3201"))
                    } else {
                        client.get(format!("{base}/v1/customers/{known}"))
                    };
                    let r = request
                        .bearer_auth(&token)
                        .header("X-Purpose", PURPOSE)
                        .header("x-request-id", &request_id)
                        .send()
                        .await
                        .expect("the vault answers (with 503 at worst)");
                    let status = r.status().as_u16();
                    let body = r.text().await.unwrap();
                    let latency = started.elapsed();
                    if status != 200 && status != 201 {
                        assert!(!body.contains("欧阳") && !body.contains("5678"), "a refusal carried data: {body}");
                    }
                    let created = (status == 201)
                        .then(|| serde_json::from_str::<Value>(&body).unwrap()["id"].as_str().unwrap().to_owned());
                    seen.lock().unwrap().push(Outcome { at: started, request_id, status, latency, created });
                    // A paced client: a few hundred requests a second in all, not a flood.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }));
        }
        Load { stop, seen, tasks }
    }

    /// What the clients saw from `since` on.
    fn since(&self, since: Instant) -> Vec<Outcome> {
        self.seen.lock().unwrap().iter().filter(|o| o.at >= since).cloned().collect()
    }

    async fn finish(self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.expect("a load client failed");
        }
        Arc::try_unwrap(self.seen).unwrap().into_inner().unwrap()
    }
}

fn percentile(outcomes: &[&Outcome], p: f64) -> Duration {
    let mut l: Vec<Duration> = outcomes.iter().map(|o| o.latency).collect();
    l.sort();
    l.get(((l.len() as f64 - 1.0) * p) as usize).copied().unwrap_or_default()
}

async fn ready(h: &Harness) -> u16 {
    h.client.get(h.url("/readyz")).send().await.unwrap().status().as_u16()
}

/// Waits until a read and a create succeed again; returns how long that took.
async fn recovered(h: &Harness, known: &str, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < within {
        let read = h.get(&format!("/v1/customers/{known}"), ALICE).send().await.unwrap().status();
        let create = h.post("/v1/customers", ALICE, &individual("3201")).send().await.unwrap().status();
        if read == 200 && create == 201 && ready(h).await == 200 {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// The faults' common ending: every answer was 2xx or 503, every 2xx has exactly one audit
/// event, every acknowledged create is there, and the chain verifies.
async fn nothing_lost_nothing_unaudited(h: &Harness, outcomes: &[Outcome]) {
    let unexpected: Vec<_> = outcomes.iter().filter(|o| ![200, 201, 503].contains(&o.status)).collect();
    assert!(unexpected.is_empty(), "answers other than 2xx or 503: {unexpected:?}");
    let served: Vec<_> = outcomes.iter().filter(|o| o.status < 300).collect();
    for o in &served {
        assert_eq!(
            h.audit_rows(&o.request_id).await.len(),
            1,
            "{} was answered {} without its event",
            o.request_id,
            o.status
        );
    }
    for id in outcomes.iter().filter_map(|o| o.created.as_ref()) {
        let r = h.get(&format!("/v1/customers/{id}"), ALICE).send().await.unwrap();
        assert_eq!(r.status(), 200, "acknowledged create {id} is missing");
    }
    h.grant("so-faults", "security_officer", "CN").await;
    let r = h.client.get(h.url("/v1/audit/verify")).bearer_auth(mint("so-faults")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let report: Value = r.json().await.unwrap();
    assert_eq!(report["ok"], true, "{report}");
}

/// The refusals of a fault: 503 problems, fast once the breaker is open.
fn refused_fast(during: &[Outcome], deadline: Duration, fault: &str) {
    let refused: Vec<&Outcome> = during.iter().filter(|o| o.status == 503).collect();
    assert!(refused.len() >= 10, "{fault}: only {} refusals in {} answers", refused.len(), during.len());
    let (p50, max) = (percentile(&refused, 0.5), percentile(&refused, 1.0));
    eprintln!("{fault}: {} answers, {} refused with 503: p50 {p50:?}, max {max:?}", during.len(), refused.len());
    // The breaker: without it (remove the `open` check at the top of Breaker::call) every
    // refusal waits out the deadline and p50 is the deadline itself.
    assert!(p50 < Duration::from_millis(200), "{fault}: refusals are not fast (p50 {p50:?})");
    // The deadline: without it (remove the `tokio::time::timeout` in Breaker::call) a black
    // hole holds requests until the request timeout, and the audit writer with them.
    assert!(max < deadline * 2 + Duration::from_millis(500), "{fault}: a refusal took {max:?}");
}

// ---------------------------------------------------------------------------------------------
// A private PostgreSQL cluster, stopped and started by the test.

struct ScratchCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
}

impl ScratchCluster {
    /// `initdb` on a scratch directory and `pg_ctl start` on a free port, as the `postgres`
    /// user when running as root (PostgreSQL refuses to run as root). `None`, said loudly,
    /// where PostgreSQL's server binaries are not installed.
    fn create() -> Option<ScratchCluster> {
        let bin = std::fs::read_dir("/usr/lib/postgresql").ok().and_then(|d| {
            d.filter_map(|e| e.ok()).map(|e| e.path().join("bin")).filter(|b| b.join("initdb").exists()).max()
        });
        let Some(bin) = bin else {
            eprintln!("\n*** SKIPPED: no PostgreSQL server binaries under /usr/lib/postgresql/*/bin ***\n");
            return None;
        };
        let root = std::process::Command::new("id").arg("-u").output().map(|o| o.stdout == b"0\n").unwrap_or(false);
        let dir = tempfile::tempdir().unwrap();
        if root {
            let status = std::process::Command::new("chown").arg("postgres:postgres").arg(dir.path()).status().unwrap();
            assert!(status.success(), "chown of the scratch cluster's directory");
        }
        let port = free_loopback_addr().port();
        let cluster = ScratchCluster { dir, bin, port, as_postgres: root };
        let data = cluster.data();
        cluster.run("initdb", &["-D", &data, "-U", "postgres", "-A", "trust", "--no-sync"]);
        cluster.start();
        Some(cluster)
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let exe = self.bin.join(tool);
        let mut cmd = if self.as_postgres {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            std::process::Command::new(&exe)
        };
        let out = cmd.args(args).current_dir(self.dir.path()).output().unwrap();
        assert!(out.status.success(), "{tool} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn start(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=40",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("server.log").display().to_string();
        self.run("pg_ctl", &["-D", &self.data(), "-l", &log, "-o", &options, "-w", "start"]);
    }

    /// A fast shutdown: sessions are terminated, as when the server is restarted or fails over.
    fn stop(&self) {
        self.run("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"]);
    }

    fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }
}

impl Drop for ScratchCluster {
    fn drop(&mut self) {
        let exe = self.bin.join("pg_ctl");
        let data = self.data();
        let mut cmd = if self.as_postgres {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            std::process::Command::new(&exe)
        };
        let _ = cmd.args(["-D", &data, "-m", "immediate", "stop"]).output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_outage_is_refused_fast_and_recovered_from_without_restart() {
    let Some(cluster) = ScratchCluster::create() else { return };
    let mut admin = {
        use sqlx::Connection;
        sqlx::PgConnection::connect(&cluster.url("postgres")).await.unwrap()
    };
    sqlx::query("CREATE DATABASE vault").execute(&mut admin).await.unwrap();
    drop(admin);
    let db = Db::Postgres { admin_url: cluster.url("postgres"), name: "vault".into(), url: cluster.url("vault") };
    let deadline = Duration::from_millis(1000);
    let h = Harness::start_with(db, |c| {
        c.database_timeout_ms = deadline.as_millis() as u64;
        c.request_timeout_ms = 5_000;
    })
    .await;
    let known = h.create(individual("3201")).await.to_string();
    let load = Load::start(&h, &known, 4);
    tokio::time::sleep(Duration::from_millis(1500)).await;

    cluster.stop();
    let down = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(ready(&h).await, 503, "/readyz while the database is down");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let during = load.since(down + Duration::from_millis(300));
    cluster.start();
    let up = Instant::now();

    refused_fast(&during, deadline, "outage");
    assert!(during.iter().all(|o| o.status == 503), "served while the database was down");
    let took = recovered(&h, &known, Duration::from_secs(15)).await.expect("no recovery within 15 s of the restart");
    eprintln!("outage: recovered {took:?} after the database came back");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let outcomes = load.finish().await;
    assert!(outcomes.iter().any(|o| o.at > up && o.status < 300), "nothing served after the restart");
    nothing_lost_nothing_unaudited(&h, &outcomes).await;
}

// ---------------------------------------------------------------------------------------------
// A TCP proxy between the vault and PostgreSQL that makes the network sick on command.

#[derive(Clone, Copy, Debug, PartialEq)]
enum Network {
    Healthy,
    /// Each chunk is held this long before it is forwarded, both ways.
    Latency(Duration),
    /// Every connection is reset (RST), and so is every new one, until the mode changes.
    Reset,
    /// Nothing moves: bytes wait in the kernel's buffers, new connections are accepted and
    /// left hanging. Healing resumes the flow (TCP loses nothing).
    BlackHole,
}

struct FaultProxy {
    addr: SocketAddr,
    network: watch::Sender<Network>,
}

impl FaultProxy {
    async fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (network, watching) = watch::channel(Network::Healthy);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let watching = watching.clone();
                tokio::spawn(async move {
                    reset_on_drop(&client);
                    let now = *watching.borrow();
                    if now == Network::Reset {
                        return; // dropped with linger 0: a reset
                    }
                    relay(client, upstream, watching).await;
                });
            }
        });
        FaultProxy { addr, network }
    }

    fn set(&self, network: Network) {
        self.network.send_replace(network);
    }
}

/// Linger 0: the socket is reset (RST) when dropped. (Deprecated in tokio because a non-zero
/// linger blocks the dropping thread; a zero one does not.)
#[allow(deprecated)]
fn reset_on_drop(stream: &TcpStream) {
    let _ = stream.set_linger(Some(Duration::ZERO));
}

/// Waits while the network is a black hole; false when it turned to resets.
async fn passable(watching: &mut watch::Receiver<Network>) -> bool {
    loop {
        let now = *watching.borrow_and_update();
        match now {
            Network::Reset => return false,
            Network::BlackHole => {
                if watching.changed().await.is_err() {
                    return false;
                }
            }
            _ => return true,
        }
    }
}

async fn relay(mut client: TcpStream, upstream: SocketAddr, mut watching: watch::Receiver<Network>) {
    if !passable(&mut watching).await {
        return;
    }
    let Ok(mut server) = TcpStream::connect(upstream).await else { return };
    reset_on_drop(&server);
    let (mut cr, mut cw) = client.split();
    let (mut sr, mut sw) = server.split();
    let mut reset = watching.clone();
    tokio::select! {
        _ = pump(&mut cr, &mut sw, watching.clone()) => {}
        _ = pump(&mut sr, &mut cw, watching) => {}
        _ = async { while reset.changed().await.is_ok() { if *reset.borrow() == Network::Reset { return } } } => {}
    }
    // Both sockets are dropped here with linger 0: a reset when the network said so.
}

async fn pump<R, W>(from: &mut R, to: &mut W, mut watching: watch::Receiver<Network>)
where
    R: AsyncReadExt + Unpin,
    W: AsyncWriteExt + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if !passable(&mut watching).await {
            return;
        }
        // Read only while the network passes: a black hole that starts now stops the next read.
        let n = tokio::select! {
            n = from.read(&mut buf) => match n { Ok(0) | Err(_) => return, Ok(n) => n },
            _ = watching.changed() => continue,
        };
        let now = *watching.borrow();
        if let Network::Latency(d) = now {
            tokio::time::sleep(d).await;
        }
        if !passable(&mut watching).await || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sick_network_to_the_database_is_refused_fast_and_healed_from() {
    let Some(db) = Db::postgres().await else { return };
    let direct = db.url();
    let upstream: SocketAddr = {
        let url = reqwest::Url::parse(&direct).unwrap();
        let host = url.host_str().unwrap().to_owned();
        tokio::net::lookup_host((host, url.port().unwrap_or(5432))).await.unwrap().next().unwrap()
    };
    let proxy = FaultProxy::start(upstream).await;
    let mut proxied = reqwest::Url::parse(&direct).unwrap();
    proxied.set_ip_host(proxy.addr.ip()).unwrap();
    proxied.set_port(Some(proxy.addr.port())).unwrap();
    let deadline = Duration::from_millis(1000);
    let h = Harness::start_with(db, |c| {
        c.database_url = proxied.to_string();
        c.database_timeout_ms = deadline.as_millis() as u64;
        c.request_timeout_ms = 5_000;
    })
    .await;
    let known = h.create(individual("3201")).await.to_string();
    let load = Load::start(&h, &known, 4);
    tokio::time::sleep(Duration::from_millis(1000)).await;

    // Latency well inside the deadline: slower, still served.
    proxy.set(Network::Latency(Duration::from_millis(5)));
    let slow = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = load.since(slow + Duration::from_millis(100));
    let served = during.iter().filter(|o| o.status < 300).count();
    eprintln!("latency: {served} of {} served", during.len());
    assert!(
        !during.is_empty() && served * 5 >= during.len() * 4,
        "latency well inside the deadline refused requests: {served}/{}",
        during.len()
    );
    proxy.set(Network::Healthy);

    // A black hole: refused fast, not ready, healed from once the path is back.
    proxy.set(Network::BlackHole);
    let hole = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(ready(&h).await, 503, "/readyz inside a black hole");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let during = load.since(hole + deadline + Duration::from_millis(100));
    proxy.set(Network::Healthy);
    refused_fast(&during, deadline, "black hole");
    let took = recovered(&h, &known, Duration::from_secs(15)).await.expect("no recovery within 15 s of the black hole");
    eprintln!("black hole: recovered {took:?} after the path came back");

    // Resets: every connection cut, new ones too, for two seconds.
    proxy.set(Network::Reset);
    let cut = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = load.since(cut + Duration::from_millis(300));
    proxy.set(Network::Healthy);
    refused_fast(&during, deadline, "resets");
    let took = recovered(&h, &known, Duration::from_secs(15)).await.expect("no recovery within 15 s of the resets");
    eprintln!("resets: recovered {took:?} after they stopped");

    tokio::time::sleep(Duration::from_millis(500)).await;
    let outcomes = load.finish().await;
    nothing_lost_nothing_unaudited(&h, &outcomes).await;
}

//! kill -9 under write load: the real `custodia serve` process is killed at a random moment
//! while clients create, update, erase, read and reveal, then started again, round after
//! round. Every write answered 2xx is there at the acknowledged version (or the next one, when
//! an unanswered update of that record was in flight); every answer that carried data has its
//! audit event; the chain verifies.
//!
//! The suite runs `CUSTODIA_CRASH_ROUNDS` rounds (default 2) per backend; the documented long
//! run is 20 (docs/OPERATIONS.md):
//!
//! ```text
//! CUSTODIA_CRASH_ROUNDS=20 CUSTODIA_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/postgres \
//!     cargo test --release --test it crash -- --nocapture
//! ```
//!
//! The protection: each write commits with its event, and every other request's event is
//! committed before its answer leaves (src/api/audit.rs `record`). Answer first and append
//! after (spawn `state.audit.append` on a task that sleeps 5 ms) and answers that carried data
//! have no event after the kill: this test fails. (A kill -9 leaves the OS's page cache intact;
//! what `synchronous = FULL` adds, survival of a power loss, is not what this test shows.)

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

const CLIENTS: usize = 4;
const RISK: &str = "crash-ro";

/// A random number below `n` (from a v4 UUID's random bits).
fn random(n: u64) -> u64 {
    (uuid::Uuid::new_v4().as_u128() % u128::from(n)) as u64
}

fn rounds() -> usize {
    std::env::var("CUSTODIA_CRASH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(2)
}

async fn custodia(args: &[&str]) -> (bool, String) {
    let (ok, out, err) = custodia_cli(args).await;
    (ok, format!("{out}{err}"))
}

async fn serve(config: &str) -> (tokio::process::Child, String) {
    let (child, addr) = serve_binary(config, std::process::Stdio::null()).await;
    (child, format!("http://{addr}"))
}

/// What the clients know for certain, and what they cannot know.
#[derive(Default)]
struct Ledger {
    /// Acknowledged state of each record: its version, or `None` once erased.
    acked: BTreeMap<String, Option<i64>>,
    /// Records with a write in flight when the server died (outcome unknown).
    in_doubt: BTreeSet<String>,
    /// Request ids of answers that carried customer data.
    disclosed: Vec<String>,
    writes: usize,
}

async fn client_round(base: String, c: usize, round: usize, stop: Arc<AtomicBool>, ledger: Arc<Mutex<Ledger>>) {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let (alice, ro) = (mint(ALICE), mint(RISK));
    let mut mine: Vec<(String, i64)> = {
        let l = ledger.lock().unwrap();
        l.acked
            .iter()
            .filter(|(id, v)| v.is_some() && id.ends_with(&format!("#{c}")))
            .map(|(id, v)| (id.clone(), v.unwrap_or(0)))
            .collect()
    };
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let rid = format!("crash-{round}-{c}-{n}");
        let pick = random(10);
        let target = (!mine.is_empty()).then(|| random(mine.len() as u64) as usize);
        let (request, op) = match (pick, target) {
            (0..=3, _) | (_, None) => {
                (http.post(format!("{base}/v1/customers")).json(&individual("3201")).bearer_auth(&alice), "create")
            }
            (4..=5, Some(i)) => {
                let (id, v) = &mine[i];
                let r = http
                    .patch(format!("{base}/v1/customers/{}", id.split('#').next().unwrap()))
                    .header("If-Match", format!("\"{v}\""))
                    .json(&json!({"vip_level": (n % 5) as i16}))
                    .bearer_auth(&alice);
                (r, "update")
            }
            (6, Some(i)) => {
                let id = &mine[i].0;
                let r = http
                    .delete(format!("{base}/v1/customers/{}", id.split('#').next().unwrap()))
                    .header("X-Purpose", "data_subject_request")
                    .bearer_auth(&alice);
                (r, "erase")
            }
            (7, Some(i)) => {
                let id = &mine[i].0;
                let r = http
                    .post(format!("{base}/v1/customers/{}/reveal", id.split('#').next().unwrap()))
                    .header("X-Purpose", "fraud_investigation")
                    .json(&json!({"fields": ["mobile"], "justification": "CRASH-1"}))
                    .bearer_auth(&ro);
                (r, "reveal")
            }
            (_, Some(i)) => {
                let id = &mine[i].0;
                (http.get(format!("{base}/v1/customers/{}", id.split('#').next().unwrap())).bearer_auth(&alice), "read")
            }
        };
        let target_id = target.map(|i| mine[i].0.clone());
        let request = request.header("x-request-id", &rid);
        let request = if op == "erase" || op == "reveal" { request } else { request.header("X-Purpose", PURPOSE) };
        let answer = match request.send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                r.text().await.ok().map(|body| (status, body))
            }
            Err(_) => None,
        };
        let mut l = ledger.lock().unwrap();
        let Some((status, body)) = answer else {
            // No answer: the server died with this request in flight.
            if let Some(id) = target_id {
                if op == "update" || op == "erase" {
                    l.in_doubt.insert(id);
                }
            }
            break;
        };
        assert!(status < 300, "{op} answered {status} before the kill: {body}");
        match op {
            "create" => {
                let v: Value = serde_json::from_str(&body).unwrap();
                let id = format!("{}#{c}", v["id"].as_str().unwrap());
                l.acked.insert(id.clone(), Some(1));
                l.writes += 1;
                mine.push((id, 1));
            }
            "update" => {
                let i = target.unwrap();
                let v: Value = serde_json::from_str(&body).unwrap();
                let version = v["version"].as_i64().unwrap();
                mine[i].1 = version;
                l.acked.insert(mine[i].0.clone(), Some(version));
                l.writes += 1;
            }
            "erase" => {
                let i = target.unwrap();
                let (id, _) = mine.swap_remove(i);
                l.acked.insert(id, None);
                l.writes += 1;
            }
            _ => l.disclosed.push(rid),
        }
    }
}

/// Checks the ledger against the restarted server; the records in doubt take their stored
/// state as the acknowledged one from now on.
async fn check(base: &str, ledger: &Mutex<Ledger>) {
    let http = reqwest::Client::new();
    let token = mint(ALICE);
    let (acked, in_doubt): (Vec<(String, Option<i64>)>, BTreeSet<String>) = {
        let l = ledger.lock().unwrap();
        (l.acked.iter().map(|(k, v)| (k.clone(), *v)).collect(), l.in_doubt.clone())
    };
    for (key, version) in acked {
        let id = key.split('#').next().unwrap();
        let r = http
            .get(format!("{base}/v1/customers/{id}"))
            .bearer_auth(&token)
            .header("X-Purpose", PURPOSE)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let stored =
            if status == 200 { Some(r.json::<Value>().await.unwrap()["version"].as_i64().unwrap()) } else { None };
        assert!(status == 200 || status == 404, "reading {id} after the crash: {status}");
        let doubt = in_doubt.contains(&key);
        match (version, stored) {
            (Some(v), Some(s)) if s == v || (doubt && s == v + 1) => {}
            (Some(v), None) if doubt => {
                let _ = v; // an erasure in flight took effect
            }
            (None, None) => {}
            (acked, stored) => panic!("{id}: acknowledged {acked:?}, stored {stored:?} (in doubt: {doubt})"),
        }
        ledger.lock().unwrap().acked.insert(key.clone(), stored);
    }
    ledger.lock().unwrap().in_doubt.clear();
}

async fn request_ids_in_audit(url: &str) -> BTreeSet<String> {
    if let Some(path) = url.strip_prefix("sqlite://") {
        on_sqlite(Path::new(path), |c| {
            let mut s = c.prepare("SELECT request_id FROM audit_events").unwrap();
            s.query_map([], |r| r.get::<_, String>(0)).unwrap().map(Result::unwrap).collect()
        })
        .await
    } else {
        use sqlx::{Connection, Row};
        let mut c = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::query("SELECT request_id FROM audit_events")
            .fetch_all(&mut c)
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<String, _>(0))
            .collect()
    }
}

async fn kill_rounds(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let url = db.url();
    let config = dir.path().join("custodia.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\ndatabase_url = \"{url}\"\nkeys_file = \"{}\"\nreveals_per_hour = 1000000\n\
             searches_per_hour = 1000000\n[audit]\nbulk_threshold = 1000000\n",
            root_path("keys-example/keys.toml").display()
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap().to_owned();
    let (ok, out) = custodia(&["--config", &config, "admin", "bootstrap", "--sub", ROOT_ADMIN]).await;
    assert!(ok, "{out}");

    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let (mut child, mut base) = serve(&config).await;
    let http = reqwest::Client::new();
    let expires = (chrono::Utc::now() + chrono::Duration::days(1)).to_rfc3339();
    for (who, role) in [(ALICE, "account_manager"), (RISK, "risk_officer")] {
        let r = http
            .post(format!("{base}/v1/grants"))
            .bearer_auth(mint(ROOT_ADMIN))
            .json(&json!({"principal": who, "role": role, "region": "CN", "expires_at": expires}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    let total = rounds();
    for round in 0..total {
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (0..CLIENTS)
            .map(|c| tokio::spawn(client_round(base.clone(), c, round, stop.clone(), ledger.clone())))
            .collect();
        let after = Duration::from_millis(300 + random(1200));
        tokio::time::sleep(after).await;
        child.start_kill().unwrap(); // SIGKILL
        child.wait().await.unwrap();
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            c.await.expect("a client's expectation failed");
        }
        (child, base) = serve(&config).await;
        check(&base, &ledger).await;
        let l = ledger.lock().unwrap();
        eprintln!(
            "round {}/{total}: killed after {after:?}; {} records acknowledged, {} writes, {} disclosures",
            round + 1,
            l.acked.len(),
            l.writes,
            l.disclosed.len()
        );
    }
    child.start_kill().unwrap();
    child.wait().await.unwrap();

    let audited = request_ids_in_audit(&url).await;
    {
        let ledger = ledger.lock().unwrap();
        let missing: Vec<_> = ledger.disclosed.iter().filter(|rid| !audited.contains(*rid)).collect();
        assert!(missing.is_empty(), "answers that carried data without their audit event: {missing:?}");
        assert!(ledger.writes > 0 && !ledger.disclosed.is_empty(), "the load did nothing");
    }
    let (ok, out) =
        custodia(&["--config", &config, "audit", "verify", "--public-key", "keys-example/audit-ed25519.pub.pem"]).await;
    assert!(ok, "audit verify after {total} kill rounds: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_under_write_load_loses_no_acknowledged_write_sqlite() {
    kill_rounds(Db::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_under_write_load_loses_no_acknowledged_write_postgres() {
    let Some(db) = Db::postgres().await else { return };
    kill_rounds(db).await;
}

//! No PII and no token in any log line at any level: the real binary runs at TRACE, requests
//! carry canary values through every path (success, validation failure, malformed body, bad
//! token, integrity failure), and the captured output is grepped.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use serde_json::json;

use crate::support::*;

const CANARIES: [&str; 6] = [
    "金丝雀日志",
    "19955501234",
    "canary.log@example.cn",
    "CANARY-LOG-ADDR-长江路",
    "6222021234567890128",
    "CANARYHOBBY",
];

struct Server {
    child: Child,
    base: String,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
    db: std::path::PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(format: &str) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("vault.db");
    let log = dir.path().join("vault.log");
    // The first administrator, through the CLI as an operator would.
    let out = Command::new(env!("CARGO_BIN_EXE_custodia"))
        .current_dir(ROOT)
        .args(["admin", "bootstrap", "--sub", ROOT_ADMIN, "--database-url"])
        .arg(format!("sqlite://{}", db.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut child = Command::new(env!("CARGO_BIN_EXE_custodia"))
        .current_dir(ROOT)
        .args(["serve", "--listen", "127.0.0.1:0", "--log-format", format, "--database-url"])
        .arg(format!("sqlite://{}", db.display()))
        .env("RUST_LOG", "trace")
        .env_remove("CUSTODIA_CONFIG")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let base = line
        .trim()
        .strip_prefix("custodia listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    Server { child, base, log, _dir: dir, db }
}

async fn exercise(s: &Server) -> Vec<String> {
    let c = reqwest::Client::new();
    let token = mint("log-tester");
    let expires = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let r = c
        .post(format!("{}/v1/grants", s.base))
        .bearer_auth(mint(ROOT_ADMIN))
        .json(&json!({"principal": "log-tester", "role": "account_manager", "region": "32", "expires_at": expires}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let fields = json!({"name": CANARIES[0], "mobile": CANARIES[1], "email": CANARIES[2], "address": CANARIES[3], "bank_card": CANARIES[4]});
    let r = c
        .post(format!("{}/v1/customers", s.base))
        .bearer_auth(&token)
        .header("X-Purpose", "customer_service")
        .json(&json!({"region": "3201", "kind": "individual", "fields": fields}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let id = r.json::<serde_json::Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let r = c
        .get(format!("{}/v1/customers/{id}", s.base))
        .bearer_auth(&token)
        .header("X-Purpose", "customer_service")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .patch(format!("{}/v1/customers/{id}", s.base))
        .bearer_auth(&token)
        .header("X-Purpose", "customer_service")
        .header("If-Match", "1")
        .json(&json!({"fields": {"address": CANARIES[3]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Validation failures, malformed JSON and mistyped values carrying canaries.
    let r = c.post(format!("{}/v1/customers", s.base)).bearer_auth(&token).header("X-Purpose", "customer_service")
        .json(&json!({"region": "3201", "kind": "individual", "fields": {"name": CANARIES[0], "mobile": "1405550123", "hobby": CANARIES[5]}})).send().await.unwrap();
    assert_eq!(r.status(), 422);
    let r = c
        .post(format!("{}/v1/customers", s.base))
        .bearer_auth(&token)
        .header("X-Purpose", "customer_service")
        .header("content-type", "application/json")
        .body(format!("{{\"region\": \"3201\", \"fields\": {{\"name\": \"{}\", \"mobile\": 19955501234", CANARIES[0]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // A token whose subject is a canary, and a forged one.
    let bad = mint_with(CANARIES[5], json!({"aud": "elsewhere"}));
    let r = c
        .get(format!("{}/v1/customers/{id}", s.base))
        .bearer_auth(&bad)
        .header("X-Purpose", "customer_service")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Tamper with a record so that reading it raises an integrity alert.
    on_sqlite(&s.db, |c| {
        c.execute("UPDATE customer_fields SET field = 'email' || field WHERE field = 'mobile'", []).unwrap();
        c.execute("UPDATE customer_fields SET field = 'mobile' WHERE field = 'email'", []).unwrap();
    })
    .await;
    let r = c
        .get(format!("{}/v1/customers/{id}", s.base))
        .bearer_auth(&token)
        .header("X-Purpose", "customer_service")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    vec![token, bad]
}

async fn check(format: &str) {
    let mut s = spawn(format);
    let tokens = exercise(&s).await;
    let _ = s.child.kill();
    let _ = s.child.wait();
    let log = std::fs::read_to_string(&s.log).unwrap();
    assert!(log.lines().count() > 20, "too little was logged to be a meaningful test");
    assert!(log.contains("TRACE") || log.contains("\"level\":\"TRACE\""), "not running at TRACE");
    assert!(log.contains("INTEGRITY ALERT"), "integrity alert not logged");
    assert!(log.contains("request completed"));
    for canary in CANARIES {
        assert!(!log.contains(canary), "canary {canary} found in {format} logs");
    }
    for token in tokens {
        for part in token.split('.') {
            assert!(!log.contains(part), "token found in {format} logs");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_logs_carry_no_pii_or_tokens_text() {
    check("text").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_logs_carry_no_pii_or_tokens_json() {
    check("json").await;
}

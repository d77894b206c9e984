//! The shared harness: a vault started in-process on 127.0.0.1:0 over a fresh database,
//! an HTTP client, token minting, and raw database access for tampering and scanning.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Once;
use std::time::Duration;

use custodia::config::{Config, TokenAlgorithm, TokenKeyConfig};
use serde_json::{json, Value};
use uuid::Uuid;

pub const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The bootstrap administrator of every test vault.
pub const ROOT_ADMIN: &str = "root-admin";
/// The bootstrap security officer of every test vault (appoints the other officers).
pub const ROOT_OFFICER: &str = "root-officer";
/// An account manager at `CN`, the default caller of customer requests.
pub const ALICE: &str = "alice";
/// The purpose the request helpers state.
pub const PURPOSE: &str = "customer_service";

pub fn root_path(rel: &str) -> PathBuf {
    PathBuf::from(ROOT).join(rel)
}

/// The test configuration: example keys, plus ES256 and RS256 test keys under their own kids.
pub fn test_config(database_url: String) -> Config {
    let mut c = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url,
        max_connections: 4,
        keys_file: root_path("keys-example/keys.toml"),
        ..Config::default()
    };
    c.auth.keys[0].public_key_pem = root_path("keys-example/jwt-ed25519.pub.pem");
    c.auth.keys.push(TokenKeyConfig {
        kid: "test-es256".into(),
        algorithm: TokenAlgorithm::ES256,
        public_key_pem: root_path("tests/keys/es256.pub.pem"),
    });
    c.auth.keys.push(TokenKeyConfig {
        kid: "test-rs256".into(),
        algorithm: TokenAlgorithm::RS256,
        public_key_pem: root_path("tests/keys/rs256.pub.pem"),
    });
    c
}

/// A loopback address with a free port, for a server whose URL must be known before it starts.
///
/// The port comes from below the kernel's ephemeral range (32768–60999 on Linux): a port taken
/// from `bind(:0)` and released could be handed to any other test's ephemeral socket before the
/// server binds it (seen in CI as `AddrInUse`). Ports here are never handed out implicitly; a
/// per-process counter keeps this binary's callers apart and the probe skips any port already
/// bound by another process.
pub fn free_loopback_addr() -> std::net::SocketAddr {
    use std::sync::atomic::{AtomicU16, Ordering};
    const FIRST: u16 = 20_000;
    const SPAN: u16 = 12_000;
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let start = (std::process::id() % u32::from(SPAN)) as u16;
    for _ in 0..SPAN {
        let step = NEXT.fetch_add(1, Ordering::Relaxed) % SPAN;
        let port = FIRST + (start + step) % SPAN;
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            return l.local_addr().unwrap();
        }
    }
    panic!("no free loopback port in {FIRST}..{}", FIRST + SPAN)
}

/// A private copy of the example key file (for tests that rotate or retire keys).
pub fn temp_keys() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.toml");
    std::fs::copy(root_path("keys-example/keys.toml"), &path).unwrap();
    (dir, path)
}

/// Where a test's database lives.
pub enum Db {
    Sqlite { _dir: tempfile::TempDir, path: PathBuf },
    Postgres { admin_url: String, name: String, url: String },
}

impl Db {
    pub fn url(&self) -> String {
        match self {
            Db::Sqlite { path, .. } => format!("sqlite://{}", path.display()),
            Db::Postgres { url, .. } => url.clone(),
        }
    }

    pub fn sqlite() -> Db {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vault.db");
        Db::Sqlite { _dir: dir, path }
    }

    /// A fresh PostgreSQL database, or `None` (reported once) when none is configured.
    pub async fn postgres() -> Option<Db> {
        let Ok(admin_url) = std::env::var("CUSTODIA_TEST_POSTGRES_URL") else {
            static SKIP: Once = Once::new();
            SKIP.call_once(|| {
                // Written to the real stderr, past the test harness's capture, so it is seen.
                let _ = writeln!(
                    std::io::stderr(),
                    "\n*** PostgreSQL tests SKIPPED: set CUSTODIA_TEST_POSTGRES_URL (e.g. postgres://postgres@127.0.0.1:5432/postgres) to run them ***\n"
                );
            });
            return None;
        };
        let name = format!("custodia_t_{}", Uuid::new_v4().simple());
        let mut admin = pg_connect(&admin_url).await;
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await.expect("CREATE DATABASE");
        let url = match admin_url.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{name}"),
            None => panic!("CUSTODIA_TEST_POSTGRES_URL must name a database"),
        };
        Some(Db::Postgres { admin_url, name, url })
    }
}

async fn pg_connect(url: &str) -> sqlx::PgConnection {
    use sqlx::Connection;
    sqlx::PgConnection::connect(url)
        .await
        .unwrap_or_else(|e| panic!("CUSTODIA_TEST_POSTGRES_URL is set but PostgreSQL is unreachable: {e}"))
}

impl Drop for Db {
    fn drop(&mut self) {
        if let Db::Postgres { admin_url, name, .. } = self {
            let (admin_url, name) = (admin_url.clone(), name.clone());
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                rt.block_on(async {
                    let mut admin = pg_connect(&admin_url).await;
                    let _ =
                        sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut admin).await;
                });
            })
            .join();
        }
    }
}

/// A running vault and a client for it.
pub struct Harness {
    pub base: String,
    pub client: reqwest::Client,
    pub db: Db,
    pub server: custodia::app::RunningServer,
}

impl Harness {
    pub async fn start(db: Db) -> Harness {
        Self::start_with(db, |_| {}).await
    }

    pub async fn start_with(db: Db, adjust: impl FnOnce(&mut Config)) -> Harness {
        let h = Self::start_plain(db, adjust).await;
        h.grant(ALICE, "account_manager", "CN").await;
        h
    }

    /// A vault with only the bootstrap administrator and officer (made directly, not through
    /// a token: for configurations where the example tokens are not accepted).
    pub async fn start_plain(db: Db, adjust: impl FnOnce(&mut Config)) -> Harness {
        let mut config = test_config(db.url());
        adjust(&mut config);
        let server = custodia::app::start(&config).await.expect("vault starts");
        server.state.vault.bootstrap_admin(ROOT_ADMIN).await.unwrap();
        server.state.vault.bootstrap(ROOT_OFFICER, "security_officer").await.unwrap();
        Harness {
            base: format!("http://{}", server.addr),
            client: reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap(),
            db,
            server,
        }
    }

    /// The in-process vault behind the server.
    pub fn vault(&self) -> &std::sync::Arc<custodia::vault::Vault> {
        &self.server.state.vault
    }

    /// Starts another vault instance on the same database.
    pub async fn another_instance(&self) -> custodia::app::RunningServer {
        self.another_instance_with(|_| {}).await
    }

    /// Starts another vault instance on the same database, its configuration adjusted.
    pub async fn another_instance_with(&self, adjust: impl FnOnce(&mut Config)) -> custodia::app::RunningServer {
        let mut config = test_config(self.db.url());
        adjust(&mut config);
        custodia::app::start(&config).await.expect("second instance starts")
    }

    /// Grants `role` at `region` to `principal` for a day, as the bootstrap administrator (or,
    /// for security officers, the bootstrap officer: auditors are appointed along their line).
    pub async fn grant(&self, principal: &str, role: &str, region: &str) -> Uuid {
        let by = if role == "security_officer" { ROOT_OFFICER } else { ROOT_ADMIN };
        self.grant_by(by, principal, role, region, chrono::Utc::now() + chrono::Duration::days(1)).await
    }

    /// Grants as `by`, asserting success.
    pub async fn grant_by(
        &self,
        by: &str,
        principal: &str,
        role: &str,
        region: &str,
        expires_at: chrono::DateTime<chrono::Utc>,
    ) -> Uuid {
        let body =
            json!({"principal": principal, "role": role, "region": region, "expires_at": expires_at.to_rfc3339()});
        let r = self.client.post(self.url("/v1/grants")).bearer_auth(mint(by)).json(&body).send().await.unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        assert_eq!(status, 201, "grant {role}@{region} to {principal} by {by}: {text}");
        serde_json::from_str::<Value>(&text).unwrap()["id"].as_str().unwrap().parse().unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn token(&self, sub: &str) -> String {
        mint(sub)
    }

    pub fn get(&self, path: &str, sub: &str) -> reqwest::RequestBuilder {
        self.client.get(self.url(path)).bearer_auth(self.token(sub)).header("X-Purpose", PURPOSE)
    }

    pub fn post(&self, path: &str, sub: &str, body: &Value) -> reqwest::RequestBuilder {
        self.client.post(self.url(path)).bearer_auth(self.token(sub)).header("X-Purpose", PURPOSE).json(body)
    }

    pub fn patch(&self, path: &str, sub: &str, version: i64, body: &Value) -> reqwest::RequestBuilder {
        self.client
            .patch(self.url(path))
            .bearer_auth(self.token(sub))
            .header("X-Purpose", PURPOSE)
            .header("If-Match", format!("\"{version}\""))
            .json(body)
    }

    /// Creates a customer and returns its id.
    pub async fn create(&self, body: Value) -> Uuid {
        let r = self.post("/v1/customers", "alice", &body).send().await.unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        assert_eq!(status, 201, "create failed: {text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        v["id"].as_str().unwrap().parse().unwrap()
    }

    /// Runs raw SQL against the vault's database with UUID and byte parameters, as an
    /// attacker with database access would.
    pub async fn sql(&self, statement: &str, binds: &[Bind]) -> u64 {
        macro_rules! run {
            ($conn:expr) => {{
                let mut q = sqlx::query(statement);
                for b in binds {
                    q = match b {
                        Bind::Id(u) => q.bind(*u),
                        Bind::Bytes(v) => q.bind(v.clone()),
                        Bind::Time(t) => q.bind(*t),
                    };
                }
                q.execute(&mut $conn).await.unwrap().rows_affected()
            }};
        }
        use sqlx::Connection;
        match &self.db {
            Db::Sqlite { path, .. } => {
                let (statement, params) = (statement.to_owned(), binds.iter().map(Bind::sqlite).collect::<Vec<_>>());
                on_sqlite(path, move |c| c.execute(&statement, rusqlite::params_from_iter(params)).unwrap() as u64)
                    .await
            }
            Db::Postgres { url, .. } => {
                let mut c = sqlx::PgConnection::connect(url).await.unwrap();
                run!(c)
            }
        }
    }

    /// The audit rows of one request: (action, outcome, status, principal, fields).
    pub async fn audit_rows(&self, request_id: &str) -> Vec<(String, String, i64, Option<String>, String)> {
        self.audit_rows_where("request_id = $1", request_id)
            .await
            .into_iter()
            .map(|(_, a, o, s, p, f)| (a, o, s, p, f))
            .collect()
    }

    /// The audit rows whose request id starts with `prefix`, with their request ids.
    pub async fn audit_rows_prefixed(&self, prefix: &str) -> Vec<AuditRow> {
        self.audit_rows_where("substr(request_id, 1, length($1)) = $1", prefix).await
    }

    async fn audit_rows_where(&self, condition: &str, value: &str) -> Vec<AuditRow> {
        use sqlx::{Connection, Row};
        let sql = format!(
            "SELECT request_id, action, outcome, status, principal, fields FROM audit_events WHERE {condition} ORDER BY seq"
        );
        macro_rules! fetch {
            ($c:expr) => {
                sqlx::query(&sql)
                    .bind(value)
                    .fetch_all(&mut $c)
                    .await
                    .unwrap()
                    .iter()
                    .map(|r| (r.get(0), r.get(1), r.get(2), i64::from(r.get::<i32, _>(3)), r.get(4), r.get(5)))
                    .collect()
            };
        }
        match &self.db {
            Db::Sqlite { path, .. } => {
                let value = value.to_owned();
                on_sqlite(path, move |c| {
                    let mut stmt = c.prepare(&sql).unwrap();
                    let rows = stmt
                        .query_map([value], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)))
                        .unwrap();
                    rows.map(Result::unwrap).collect()
                })
                .await
            }
            Db::Postgres { url, .. } => {
                let mut c = sqlx::PgConnection::connect(url).await.unwrap();
                fetch!(c)
            }
        }
    }

    /// One integer from the database.
    pub async fn scalar(&self, sql: &str) -> i64 {
        use sqlx::{Connection, Row};
        match &self.db {
            Db::Sqlite { path, .. } => {
                let sql = sql.to_owned();
                on_sqlite(path, move |c| c.query_row(&sql, [], |r| r.get::<_, i64>(0)).unwrap()).await
            }
            Db::Postgres { url, .. } => {
                let mut c = sqlx::PgConnection::connect(url).await.unwrap();
                sqlx::query(sql).fetch_one(&mut c).await.unwrap().get::<i64, _>(0)
            }
        }
    }

    /// Runs statements as a database owner would, with the audit's append-only triggers out
    /// of the way (the attacker this simulates has full database access).
    pub async fn sql_as_owner(&self, statements: &[&str]) {
        let (off, on): (Vec<String>, Vec<String>) = match &self.db {
            Db::Sqlite { .. } => (
                [
                    "audit_events_no_update",
                    "audit_events_no_delete",
                    "audit_checkpoints_no_update",
                    "audit_checkpoints_no_delete",
                    "audit_event_customers_no_update",
                    "audit_event_customers_no_delete",
                    "ix.audit_customer_index_no_update",
                    "ix.audit_customer_index_no_delete",
                    "ix.audit_customer_index_state_forward",
                    "ix.audit_customer_index_state_no_delete",
                ]
                .iter()
                .map(|t| format!("DROP TRIGGER IF EXISTS {t}"))
                .collect(),
                vec![],
            ),
            Db::Postgres { .. } => (
                vec![
                    "ALTER TABLE audit_events DISABLE TRIGGER USER".into(),
                    "ALTER TABLE audit_checkpoints DISABLE TRIGGER USER".into(),
                    "ALTER TABLE audit_event_customers DISABLE TRIGGER USER".into(),
                ],
                vec![
                    "ALTER TABLE audit_events ENABLE TRIGGER USER".into(),
                    "ALTER TABLE audit_checkpoints ENABLE TRIGGER USER".into(),
                    "ALTER TABLE audit_event_customers ENABLE TRIGGER USER".into(),
                ],
            ),
        };
        for s in off.iter().map(String::as_str).chain(statements.iter().copied()).chain(on.iter().map(String::as_str)) {
            self.sql(s, &[]).await;
        }
    }

    /// Reads one sealed field straight from the database.
    pub async fn sealed(&self, id: Uuid, field: &str) -> Vec<u8> {
        use sqlx::{Connection, Row};
        let sql = "SELECT sealed FROM customer_fields WHERE customer_id = $1 AND field = $2";
        match &self.db {
            Db::Sqlite { path, .. } => {
                let field = field.to_owned();
                on_sqlite(path, move |c| {
                    c.query_row(sql, rusqlite::params![id.as_bytes().as_slice(), field], |r| r.get(0)).unwrap()
                })
                .await
            }
            Db::Postgres { url, .. } => {
                let mut c = sqlx::PgConnection::connect(url).await.unwrap();
                sqlx::query(sql).bind(id).bind(field).fetch_one(&mut c).await.unwrap().get(0)
            }
        }
    }

    /// Every byte the database holds, as text: the SQLite file and its WAL, or every column of
    /// every table in PostgreSQL (bytea rendered as hex, so hex-encoded needles are checked too).
    pub async fn raw_dump(&self) -> Vec<u8> {
        use sqlx::{Connection, Row};
        match &self.db {
            Db::Sqlite { path, .. } => {
                let mut out = Vec::new();
                for suffix in ["", "-wal", "-shm", "-audit-index", "-audit-index-wal"] {
                    let mut p = path.as_os_str().to_owned();
                    p.push(suffix);
                    if let Ok(bytes) = std::fs::read(PathBuf::from(p)) {
                        out.extend(bytes);
                    }
                }
                out
            }
            Db::Postgres { url, .. } => {
                let mut c = sqlx::PgConnection::connect(url).await.unwrap();
                let cols = sqlx::query(
                    "SELECT table_name::text, column_name::text FROM information_schema.columns WHERE table_schema = 'public'",
                )
                .fetch_all(&mut c)
                .await
                .unwrap();
                assert!(cols.len() > 5, "no columns found to scan");
                let mut out = Vec::new();
                for col in cols {
                    let (t, c2): (String, String) = (col.get(0), col.get(1));
                    let q = format!("SELECT coalesce(string_agg(\"{c2}\"::text, '|'), '') FROM \"{t}\"");
                    let s: String = sqlx::query(&q).fetch_one(&mut c).await.unwrap().get(0);
                    out.extend(s.into_bytes());
                    out.push(b'\n');
                }
                out
            }
        }
    }
}

/// An audit row: (request id, action, outcome, status, principal, fields).
pub type AuditRow = (String, String, String, i64, Option<String>, String);

/// Every role of `policies/roles.toml`.
pub const ROLES: [&str; 8] = [
    "agent",
    "account_manager",
    "marketing",
    "risk_officer",
    "crm_service",
    "admin",
    "local_admin",
    "security_officer",
];

/// A raw SQL parameter.
pub enum Bind {
    Id(Uuid),
    Bytes(Vec<u8>),
    Time(chrono::DateTime<chrono::Utc>),
}

impl Bind {
    /// The value as the vault's SQLite store encodes it (UUIDs as 16-byte BLOBs, timestamps as
    /// RFC 3339 text).
    fn sqlite(&self) -> rusqlite::types::Value {
        use rusqlite::types::Value;
        match self {
            Bind::Id(u) => Value::Blob(u.as_bytes().to_vec()),
            Bind::Bytes(v) => Value::Blob(v.clone()),
            Bind::Time(t) => Value::Text(t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false)),
        }
    }
}

/// A connection to a vault's SQLite file, as an attacker with file access (or a test) opens it.
pub fn sqlite_at(path: &std::path::Path) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(path).unwrap();
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    // The access log's customer index, in its own file once the vault opened the database.
    let index = sqlite_index_path(path);
    if index.exists() {
        c.execute("ATTACH DATABASE ?1 AS ix", [index.to_str().unwrap()]).unwrap();
    }
    c
}

/// The file of SQLite's customer index of the access log, beside the database (attached as
/// `ix` by [`sqlite_at`]).
pub fn sqlite_index_path(path: &std::path::Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push("-audit-index");
    PathBuf::from(p)
}

/// Runs `f` on a fresh connection to the SQLite file, off the async runtime.
pub async fn on_sqlite<R: Send + 'static>(
    path: &std::path::Path,
    f: impl FnOnce(&rusqlite::Connection) -> R + Send + 'static,
) -> R {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || f(&sqlite_at(&path))).await.unwrap()
}

/// Whether `haystack` contains `needle`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A valid development token for `sub`, signed with the example key.
pub fn mint(sub: &str) -> String {
    mint_with(sub, json!({}))
}

/// A token for `sub` with claims overridden or removed (`null`) by `changes`.
pub fn mint_with(sub: &str, changes: Value) -> String {
    let header = example_header();
    sign(
        &header,
        claims(sub, changes),
        &std::fs::read(root_path("keys-example/jwt-ed25519.pem")).unwrap(),
        jsonwebtoken::Algorithm::EdDSA,
    )
}

pub fn example_header() -> jsonwebtoken::Header {
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    h.typ = Some("at+jwt".into());
    h.kid = Some("example".into());
    h
}

pub fn claims(sub: &str, changes: Value) -> Value {
    let now = chrono::Utc::now().timestamp();
    let mut c = json!({"iss": "custodia-dev", "aud": "custodia", "sub": sub, "iat": now, "nbf": now, "exp": now + 600});
    if let (Some(map), Some(ch)) = (c.as_object_mut(), changes.as_object()) {
        for (k, v) in ch {
            if v.is_null() {
                map.remove(k);
            } else {
                map.insert(k.clone(), v.clone());
            }
        }
    }
    c
}

pub fn sign(header: &jsonwebtoken::Header, claims: Value, pem: &[u8], alg: jsonwebtoken::Algorithm) -> String {
    custodia::auth::install_jwt_backend();
    let key = match alg {
        jsonwebtoken::Algorithm::EdDSA => jsonwebtoken::EncodingKey::from_ed_pem(pem).unwrap(),
        jsonwebtoken::Algorithm::ES256 => jsonwebtoken::EncodingKey::from_ec_pem(pem).unwrap(),
        jsonwebtoken::Algorithm::RS256 => jsonwebtoken::EncodingKey::from_rsa_pem(pem).unwrap(),
        _ => jsonwebtoken::EncodingKey::from_secret(pem),
    };
    jsonwebtoken::encode(header, &claims, &key).unwrap()
}

/// A valid individual customer with every field, using the given canary-able values.
pub fn individual(region: &str) -> Value {
    json!({
        "region": region,
        "kind": "individual",
        "vip_level": 2,
        "fields": {
            "name": "欧阳娜娜",
            "resident_id": "11010519491231002X",
            "mobile": "13812345678",
            "email": "nana@example.cn",
            "address": "江苏省南京市玄武区中山路1号",
            "birth_date": "1949-12-31",
            "bank_card": "6222021234567890128"
        }
    })
}

/// Runs a test body against SQLite and against PostgreSQL (skipped without a server).
macro_rules! on_both {
    ($(async fn $name:ident($h:ident) $body:block)*) => {
        $(
            mod $name {
                #[allow(unused_imports)]
                use super::*;

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    let $h = $crate::support::Harness::start($crate::support::Db::sqlite()).await;
                    $body
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    let Some(db) = $crate::support::Db::postgres().await else { return };
                    let $h = $crate::support::Harness::start(db).await;
                    $body
                }
            }
        )*
    };
}

/// A customer id as a SQL literal of the harness's database.
pub fn id_literal(db: &Db, id: Uuid) -> String {
    match db {
        Db::Sqlite { .. } => format!("x'{}'", id.simple()),
        Db::Postgres { .. } => format!("'{id}'"),
    }
}

/// Runs the `custodia` binary from the repository root with the CUSTODIA_* variables that
/// would override its flags unset: (success, stdout, stderr).
pub async fn custodia_cli(args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_custodia"))
        .current_dir(ROOT)
        .env_remove("CUSTODIA_DATABASE_URL")
        .env_remove("CUSTODIA_LISTEN")
        .args(args)
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `custodia --config CONFIG serve` as a process of its own (the real binary and its signal
/// handling); returns it and its address (`127.0.0.1:PORT`) once it listens. Its standard
/// output is drained; its standard error goes to `stderr` (piped only for a short-lived server
/// whose log the test reads: an unread pipe fills and blocks a busy one).
pub async fn serve_binary(config: &str, stderr: std::process::Stdio) -> (tokio::process::Child, String) {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_custodia"))
        .current_dir(ROOT)
        .env_remove("CUSTODIA_DATABASE_URL")
        .env_remove("CUSTODIA_LISTEN")
        .args(["--config", config, "serve"])
        .stdout(std::process::Stdio::piped())
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(a) = line.strip_prefix("custodia listening on http://") {
                return a.to_owned();
            }
        }
        panic!("the server ended before listening");
    })
    .await
    .expect("the server listens");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, addr)
}

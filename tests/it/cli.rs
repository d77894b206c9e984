//! The command line contract: `token`, `migrate` (also several at once), and refusals.

use std::process::{Command, Output};

use crate::support::*;

fn custodia(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_custodia"))
        .current_dir(ROOT)
        .env_remove("CUSTODIA_CONFIG")
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn token_command_mints_a_token_the_default_vault_accepts() {
    let out = custodia(&["token", "--sub", "alice", "--ttl", "1m"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let auth = custodia::auth::Authenticator::from_config(&test_config(String::new()).auth).unwrap();
    let p = auth.verify(&token).unwrap();
    assert_eq!(p.sub, "alice");
    let ttl = p.expires_at - p.issued_at.unwrap();
    assert_eq!(ttl.num_seconds(), 60);
    let bad = custodia(&["token", "--sub", "alice", "--ttl", "forever"]);
    assert!(!bad.status.success());
    let bad = custodia(&["token", "--sub", "a b"]);
    assert!(!bad.status.success());
}

#[test]
fn in_memory_sqlite_is_refused_clearly() {
    let out = custodia(&["migrate", "--database-url", "sqlite::memory:"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("in-memory SQLite is not supported"));
}

async fn count_migrations(url: &str) -> i64 {
    use sqlx::{Connection, Row};
    let q = "SELECT count(*) FROM _sqlx_migrations WHERE success";
    if let Some(path) = url.strip_prefix("sqlite://") {
        on_sqlite(std::path::Path::new(path), move |c| c.query_row(q, [], |r| r.get(0)).unwrap()).await
    } else {
        let mut c = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::query(q).fetch_one(&mut c).await.unwrap().get(0)
    }
}

fn migration_files(dir: &str) -> i64 {
    std::fs::read_dir(root_path(dir))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "sql"))
        .count() as i64
}

async fn concurrent_migrate(db: &Db, dir: &str) {
    let url = db.url();
    let running: Vec<_> = (0..4)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_custodia"))
                .current_dir(ROOT)
                .args(["migrate", "--database-url", &url])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in running {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    assert_eq!(count_migrations(&url).await, migration_files(dir));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_migrations_sqlite() {
    let db = Db::sqlite();
    concurrent_migrate(&db, "migrations/sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_migrations_postgres() {
    let Some(db) = Db::postgres().await else { return };
    concurrent_migrate(&db, "migrations/postgres").await;
}

#[test]
fn migrations_have_the_same_numbering_on_both_databases() {
    let names = |dir: &str| {
        let mut v: Vec<String> = std::fs::read_dir(root_path(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names("migrations/sqlite"), names("migrations/postgres"));
}

/// `admin bootstrap` creates exactly one first administrator, also when several run at once.
async fn bootstrap_once(db: &Db) {
    let url = db.url();
    let bad = custodia(&["admin", "bootstrap", "--database-url", &url, "--sub", "not valid"]);
    assert!(!bad.status.success());
    let running: Vec<_> = (0..3)
        .map(|i| {
            Command::new(env!("CARGO_BIN_EXE_custodia"))
                .current_dir(ROOT)
                .args(["admin", "bootstrap", "--database-url", &url, "--sub", &format!("first-admin-{i}")])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outputs: Vec<Output> = running.into_iter().map(|c| c.wait_with_output().unwrap()).collect();
    let winners = outputs.iter().filter(|o| o.status.success()).count();
    assert_eq!(winners, 1, "exactly one bootstrap must succeed");
    for o in outputs.iter().filter(|o| !o.status.success()) {
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("already has a live bootstrap administrator"), "{err}");
    }
    let again = custodia(&["admin", "bootstrap", "--database-url", &url, "--sub", "late-admin"]);
    assert!(!again.status.success());
    // The audit line has a root of its own: the first security officer, at CN.
    let wrong = custodia(&["admin", "bootstrap", "--database-url", &url, "--sub", "x", "--role", "agent"]);
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("--role must be admin or security_officer"));
    let admin = outputs.iter().position(|o| o.status.success()).unwrap();
    let clash = custodia(&[
        "admin",
        "bootstrap",
        "--database-url",
        &url,
        "--sub",
        &format!("first-admin-{admin}"),
        "--role",
        "security_officer",
    ]);
    assert!(!clash.status.success(), "an administrator may not also be the first auditor");
    assert!(
        String::from_utf8_lossy(&clash.stderr).contains("separation of duties"),
        "{}",
        String::from_utf8_lossy(&clash.stderr)
    );
    let so = custodia(&[
        "admin",
        "bootstrap",
        "--database-url",
        &url,
        "--sub",
        "first-officer",
        "--role",
        "security_officer",
    ]);
    assert!(so.status.success(), "{}", String::from_utf8_lossy(&so.stderr));
    assert!(String::from_utf8_lossy(&so.stdout).contains("first-officer is security_officer at CN"));
    let again = custodia(&[
        "admin",
        "bootstrap",
        "--database-url",
        &url,
        "--sub",
        "second-officer",
        "--role",
        "security_officer",
    ]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already has a live bootstrap security officer"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_sqlite() {
    bootstrap_once(&Db::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_postgres() {
    let Some(db) = Db::postgres().await else { return };
    bootstrap_once(&db).await;
}

/// The soak holds its share of the measured peak and writes one line per interval, the
/// flatness verdicts and the plot (a short run here; the committed one is 30 minutes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_soak_writes_a_line_per_interval_and_its_plot() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("soak.md");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_custodia-bench"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "--customers",
            "200",
            "--seconds",
            "1",
            "--soak",
            "0.05",
            "--soak-interval",
            "1",
            "--soak-fraction",
            "0.5",
            "--soak-peak-seconds",
            "1",
            "--soak-step-seconds",
            "1",
        ])
        .arg("--output")
        .arg(&output)
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    let written = std::fs::read_to_string(&output).unwrap();
    // The interval table: the rows after its header (the paced steps' table comes before it).
    let lines: Vec<Vec<&str>> = written
        .lines()
        .skip_while(|l| !l.starts_with("| interval"))
        .skip(2)
        .take_while(|l| l.starts_with("| "))
        .map(|l| l.split('|').map(str::trim).collect())
        .collect();
    assert_eq!(lines.len(), 3, "{written}");
    // The paced search steps down until one is kept up with: every step but the last fell behind.
    let steps: Vec<bool> = written
        .lines()
        .filter(|l| l.ends_with("| kept up |") || l.ends_with("| fell behind |"))
        .map(|l| l.ends_with("| kept up |"))
        .collect();
    assert!(steps.last() == Some(&true) && steps.iter().filter(|k| **k).count() == 1, "paced steps: {written}");
    for l in &lines {
        assert!(l[2].parse::<u64>().unwrap() > 0, "an interval without requests: {l:?}");
        assert_eq!(l[4], "0", "errors in the soak: {l:?}");
        assert!(l[8].parse::<f64>().unwrap() > 0.0, "no resident memory reading: {l:?}");
    }
    assert!(written.contains("largest distance from the mean") && written.contains("ok = true"), "{written}");
    let svg = std::fs::read_to_string(output.with_extension("svg")).unwrap();
    assert_eq!(svg.matches("<polyline").count(), 3);
}

/// A soak with more connections than the server admits is refused before it starts: the extra
/// connections would wait in the kernel's backlog and their wait would count as the server's
/// latency. (Remove the `max_client_connections` check in `soak_run` to see this fail.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_soak_with_more_connections_than_the_server_admits_is_refused() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_custodia-bench"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["--customers", "50", "--soak", "0.05", "--soak-interval", "1", "--soak-peak-seconds", "1"])
        .args(["--soak-connections", "1001"])
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the soak ran: {err}");
    assert!(err.contains("--soak-connections (1001) is above the server's max_client_connections (1000)"), "{err}");
}

/// The benchmark runs every scenario against a server in a process of its own without a failed
/// request, reports the server's CPU per request, and ends with a verified audit chain. The
/// production binary has no benchmark in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_runs_every_scenario_in_its_own_binary() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_custodia-bench"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["--customers", "300", "--concurrency", "2", "--seconds", "0.3"])
        .output()
        .await
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}\n{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<Vec<&str>> = table
        .lines()
        .filter(|l| l.starts_with("| ") && l.contains(" | 2 | "))
        .map(|l| l.split('|').map(str::trim).collect())
        .filter(|cells: &Vec<&str>| cells.len() == 14)
        .collect();
    let names: Vec<&str> = rows.iter().map(|r| r[1]).collect();
    assert_eq!(
        names,
        ["reference: no work", "reference: JWT only", "masked read", "search by mobile", "create", "batch-get 100"],
        "{table}"
    );
    for r in &rows {
        assert!(r[3].parse::<f64>().unwrap() > 0.0, "no requests: {r:?}");
        assert_eq!(r[8], "0", "failed requests: {r:?}");
        // On SQLite the database is the vault's own process: no separate database CPU.
        assert_eq!(r[12], "—", "database CPU on SQLite: {r:?}");
    }
    let read_cpu: f64 = rows[2][9].parse().unwrap();
    assert!(read_cpu > 0.0, "no server CPU measured: {table}");
    assert!(table.contains("ok = true"), "{table}");
    assert!(table.contains("Server CPU µs per request by thread"), "{table}");

    let production = tokio::process::Command::new(env!("CARGO_BIN_EXE_custodia")).arg("bench").output().await.unwrap();
    assert!(!production.status.success(), "custodia still has a bench command");
}

/// A SQLite file written by the store before it left sqlx (`tests/fixtures/sqlx-era.db`: commit
/// ba7cfc9's `custodia seed --customers 3` and `custodia admin bootstrap --sub fixture-admin`,
/// then `VACUUM INTO`). The rusqlite store opens it without re-running or refusing a migration,
/// reads its records and grant back (timestamps and UUIDs as sqlx encoded them), and its audit
/// chain verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_written_through_sqlx_opens_reads_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sqlx-era.db");
    std::fs::copy(root_path("tests/fixtures/sqlx-era.db"), &path).unwrap();
    let url = format!("sqlite://{}", path.display());
    let store = custodia::store::open(&url, &custodia::store::StoreOptions::default()).await.unwrap();
    assert_eq!(count_migrations(&url).await, migration_files("migrations/sqlite"));

    let grants = store.authz_state().await.unwrap().grants;
    assert_eq!(grants.len(), 1, "{grants:?}");
    assert_eq!((grants[0].principal.as_str(), grants[0].role.as_str()), ("fixture-admin", "admin"));
    assert!(grants[0].created_at > chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").unwrap());

    let keys = store.wrapped_below(u32::MAX, 10).await.unwrap();
    assert_eq!(keys.len(), 3);
    let ids: Vec<uuid::Uuid> = keys.iter().map(|(id, _)| *id).collect();
    let everywhere = custodia::domain::Regions::builtin().parse("CN").unwrap();
    let records = store.customers_by_ids(&ids, &[everywhere]).await.unwrap();
    assert_eq!(records.len(), 3);
    assert!(records.iter().all(|r| r.fields.len() >= 5), "{records:?}");

    let config = test_config(url.clone());
    let verifier =
        custodia::audit::CheckpointVerifier::load(&root_path(config.audit.public_key.to_str().unwrap())).unwrap();
    let report = custodia::audit::verify::verify(&store, &verifier).await.unwrap();
    assert!(report.ok && report.events >= 2, "{report:?}");
}

//! The access audit as an attacker tries to evade or alter it (threats §7, §9): every request
//! leaves exactly one event whatever its outcome; edits, deletions, insertions, reorderings and
//! truncations by SQL are named by verification with the first bad sequence number; an
//! unwritable audit store serves nothing; a concurrent load leaves a chain that verifies; a
//! principal walking a province is stopped.

use std::process::Command;

use reqwest::Method;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::support::*;

const SO: &str = "sec.officer";

/// method, path, caller, purpose, body, expected status, expected action, expected outcome.
type RequestCase =
    (Method, String, Option<&'static str>, Option<&'static str>, Option<Value>, u16, &'static str, &'static str);

async fn verify(h: &Harness) -> Value {
    let r = h.client.get(h.url("/v1/audit/verify")).bearer_auth(mint(SO)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

fn cli_verify(h: &Harness) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_custodia"))
        .current_dir(ROOT)
        .args(["audit", "verify", "--public-key", "keys-example/audit-ed25519.pub.pem", "--database-url", &h.db.url()])
        .output()
        .unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// A vault checkpointing every 10 events, with a security officer and some traffic.
async fn with_traffic(db: Db) -> Harness {
    let h = Harness::start_with(db, |c| c.audit.checkpoint_every = 10).await;
    h.grant(SO, "security_officer", "CN").await;
    for _ in 0..12 {
        let id = h.create(individual("3201")).await;
        assert_eq!(h.get(&format!("/v1/customers/{id}"), ALICE).send().await.unwrap().status(), 200);
    }
    h
}

async fn request(
    h: &Harness,
    method: Method,
    path: &str,
    who: Option<&str>,
    purpose: Option<&str>,
    body: Option<Value>,
) -> (String, u16) {
    let rid = format!("t-{}", Uuid::new_v4().simple());
    let mut req =
        h.client.request(method, h.url(path)).header("x-request-id", &rid).header("user-agent", "audit-test/1.0");
    if let Some(w) = who {
        req = req.bearer_auth(mint(w));
    }
    if let Some(p) = purpose {
        req = req.header("X-Purpose", p);
    }
    if let Some(b) = body {
        req = req.header("If-Match", "\"1\"").json(&b);
    }
    let status = req.send().await.unwrap().status().as_u16();
    (rid, status)
}

on_both! {
    async fn every_request_leaves_exactly_one_event(h) {
        h.grant(SO, "security_officer", "CN").await;
        h.grant("ag", "agent", "32").await;
        h.grant("ro", "risk_officer", "32").await;
        let js = h.create(individual("3201")).await;
        let gd = h.create(individual("4401")).await;
        let p = |id: Uuid| format!("/v1/customers/{id}");
        let cases: Vec<RequestCase> = vec![
            (Method::GET, p(js), Some(ALICE), Some(PURPOSE), None, 200, "customer.read", "allowed"),
            (Method::GET, p(js), None, Some(PURPOSE), None, 401, "customer.read", "denied"),
            (Method::GET, p(js), Some("ag"), None, None, 403, "customer.read", "denied"),
            (Method::GET, p(gd), Some("ag"), Some(PURPOSE), None, 404, "customer.read", "not_found"),
            (Method::GET, "/v1/customers/not-an-id".into(), Some(ALICE), Some(PURPOSE), None, 404, "customer.read", "not_found"),
            (Method::POST, "/v1/customers".into(), Some(ALICE), Some(PURPOSE), Some(json!({"region": "3201"})), 400, "customer.create", "invalid"),
            (Method::POST, "/v1/customers".into(), Some(ALICE), Some(PURPOSE), Some(json!({"region": "32", "kind": "individual", "fields": {}})), 422, "customer.create", "invalid"),
            (Method::POST, "/v1/customers".into(), Some(ALICE), Some(PURPOSE), Some(individual("3201")), 201, "customer.create", "allowed"),
            (Method::PATCH, p(js), Some(ALICE), Some(PURPOSE), Some(json!({"vip_level": 3})), 200, "customer.update", "allowed"),
            (Method::PATCH, p(js), Some(ALICE), Some(PURPOSE), Some(json!({"vip_level": 4})), 412, "customer.update", "invalid"),
            (Method::POST, "/v1/customers/search".into(), Some("ag"), Some(PURPOSE), Some(json!({"match": {"mobile": "13812345678"}})), 200, "customer.search", "allowed"),
            (Method::POST, "/v1/customers/search".into(), Some("ag"), Some(PURPOSE), Some(json!({"match": {"mobile": "138*"}})), 400, "customer.search", "invalid"),
            (Method::POST, "/v1/customers/batch-get".into(), Some("ag"), Some(PURPOSE), Some(json!({"ids": [js]})), 403, "customer.batch_get", "denied"),
            (Method::POST, format!("{}/reveal", p(js)), Some("ro"), Some("fraud_investigation"), Some(json!({"fields": ["mobile"], "justification": "CASE-1"})), 200, "customer.reveal", "allowed"),
            (Method::POST, "/v1/grants".into(), Some(ROOT_ADMIN), None, Some(json!({"principal": "new.agent", "role": "agent", "region": "32", "expires_at": (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339()})), 201, "grant.create", "allowed"),
            (Method::POST, "/v1/grants".into(), Some(SO), None, Some(json!({"principal": "x", "role": "agent", "region": "32", "expires_at": "2030-01-01T00:00:00Z"})), 403, "grant.create", "denied"),
            (Method::GET, "/v1/grants".into(), Some(ROOT_ADMIN), None, None, 200, "grant.list", "allowed"),
            (Method::POST, "/v1/principals/ag/revoke-tokens".into(), Some(ROOT_ADMIN), None, None, 200, "principal.revoke_tokens", "allowed"),
            (Method::GET, "/v1/audit/events".into(), Some(SO), None, None, 200, "audit.read", "allowed"),
            (Method::GET, "/v1/audit/events".into(), Some(ALICE), None, None, 403, "audit.read", "denied"),
            (Method::GET, "/v1/audit/alerts".into(), Some(SO), None, None, 200, "audit.alerts", "allowed"),
            (Method::GET, "/v1/nowhere".into(), Some(ALICE), None, None, 404, "unknown", "not_found"),
            (Method::DELETE, "/v1/customers".into(), Some(ALICE), None, None, 405, "unknown", "invalid"),
        ];
        for (method, path, who, purpose, body, status, action, outcome) in cases {
            let label = format!("{method} {path} as {who:?}");
            let (rid, got) = request(&h, method, &path, who, purpose, body).await;
            assert_eq!(got, status, "{label}");
            let rows = h.audit_rows(&rid).await;
            assert_eq!(rows.len(), 1, "{label}: exactly one event, got {rows:?}");
            let (a, o, s, principal, fields) = &rows[0];
            assert_eq!((a.as_str(), o.as_str(), *s), (action, outcome, i64::from(status)), "{label}");
            // An unauthenticated request, or one no route took (its token is never verified),
            // has no principal: the audit records only identities it has checked.
            let authenticated = status != 401 && action != "unknown";
            assert_eq!(principal.as_deref(), if authenticated { who } else { None }, "{label}");
            if action == "customer.read" && status == 200 {
                assert!(fields.contains("[\"mobile\",\"plain\"]") && fields.contains("[\"resident_id\",\"masked\"]"), "{fields}");
            }
            if action == "customer.reveal" {
                assert_eq!(fields, "[[\"mobile\",\"revealed\"]]");
            }
            if outcome != "allowed" {
                assert_eq!(fields, "[]", "{label}: nothing disclosed");
            }
        }
        // The chain of all that verifies.
        let report = verify(&h).await;
        assert_eq!(report["ok"], true, "{report}");
    }

    async fn events_carry_context_but_no_pii(h) {
        h.grant(SO, "security_officer", "CN").await;
        let mut canary = individual("3201");
        canary["fields"]["name"] = json!("审计金丝雀");
        canary["fields"]["mobile"] = json!("19987654321");
        let id = h.create(canary).await;
        let (rid, _) = request(&h, Method::GET, &format!("/v1/customers/{id}"), Some(ALICE), Some(PURPOSE), None).await;
        request(&h, Method::POST, "/v1/customers/search", Some(ALICE), Some(PURPOSE), Some(json!({"match": {"mobile": "19987654321"}}))).await;
        let r = h.client.get(h.url(&format!("/v1/audit/events?customer={id}&action=customer.read"))).bearer_auth(mint(SO)).send().await.unwrap();
        let page: Value = r.json().await.unwrap();
        let e = &page["items"][0];
        assert_eq!(e["request_id"], rid);
        assert_eq!(e["principal"], ALICE);
        assert_eq!(e["purpose"], PURPOSE);
        assert_eq!(e["customer_ids"], json!([id]));
        assert!(e["grant_id"].is_string());
        assert_eq!(e["client"], "127.0.0.1");
        assert_eq!(e["user_agent"], "audit-test/1.0");
        // Searches are recorded by digest; nothing in the audit tables is PII.
        let r = h.client.get(h.url("/v1/audit/events?action=customer.search")).bearer_auth(mint(SO)).send().await.unwrap();
        let page: Value = r.json().await.unwrap();
        assert!(page["items"][0]["query"].as_str().unwrap().contains("\"mobile\":\""));
        let text = page.to_string();
        assert!(!text.contains("19987654321"));
        let dump = h.raw_dump().await;
        for c in ["审计金丝雀", "19987654321"] {
            assert!(!contains(&dump, c.as_bytes()), "{c} at rest");
        }
        // Filters and the NDJSON export.
        let r = h.client.get(h.url(&format!("/v1/audit/events?principal={ALICE}&outcome=allowed"))).bearer_auth(mint(SO)).send().await.unwrap();
        let page: Value = r.json().await.unwrap();
        assert!(page["items"].as_array().unwrap().iter().all(|e| e["principal"] == ALICE && e["outcome"] == "allowed"));
        let r = h.client.get(h.url("/v1/audit/events")).bearer_auth(mint(SO)).header("accept", "application/x-ndjson").send().await.unwrap();
        assert_eq!(r.headers()["content-type"], "application/x-ndjson");
        let body = r.text().await.unwrap();
        let lines: Vec<Value> = body.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert!(lines.len() >= 4);
        assert!(lines.windows(2).all(|w| w[0]["seq"].as_i64() < w[1]["seq"].as_i64()));
    }

    async fn append_only_is_enforced_by_the_database(h) {
        h.create(individual("3201")).await;
        let n = h.scalar("SELECT count(*) FROM audit_event_customers").await;
        assert!(n > 0);
        for stmt in [
            "UPDATE audit_events SET principal = 'x' WHERE seq = 1",
            "DELETE FROM audit_events WHERE seq = 1",
            // The links behind access logs are protected the same way.
            "DELETE FROM audit_event_customers",
            "UPDATE audit_event_customers SET seq = seq + 1",
        ] {
            let result = match &h.db {
                Db::Sqlite { path, .. } => on_sqlite(path, move |c| c.execute(stmt, []).map(|_| ()).map_err(|e| e.to_string())).await,
                Db::Postgres { url, .. } => {
                    use sqlx::Connection;
                    let mut c = sqlx::PgConnection::connect(url).await.unwrap();
                    sqlx::query(stmt).execute(&mut c).await.map(|_| ()).map_err(|e| e.to_string())
                }
            };
            assert!(result.is_err(), "{stmt} was allowed");
        }
        assert_eq!(h.scalar("SELECT count(*) FROM audit_event_customers").await, n);
    }
}

/// Each tampering, done by SQL with full database access, named with the first bad sequence
/// number by the API and by the command line.
async fn tampering(db_maker: impl Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<Db>>>>) {
    // Untouched, the audit verifies, through the API and the command line.
    let Some(db) = db_maker().await else { return };
    let h = with_traffic(db).await;
    let report = verify(&h).await;
    assert_eq!(report["ok"], true, "{report}");
    assert!(report["checkpoints"].as_i64().unwrap() >= 2, "{report}");
    let (ok, out) = cli_verify(&h);
    assert!(ok, "{out}");
    type Case = (&'static str, Vec<&'static str>, i64);
    let cases: Vec<Case> = vec![
        ("edit", vec!["UPDATE audit_events SET principal = 'someone-else' WHERE seq = 5"], 5),
        ("delete", vec!["DELETE FROM audit_events WHERE seq = 7"], 7),
        (
            "reorder",
            vec![
                "UPDATE audit_events SET seq = -3 WHERE seq = 3",
                "UPDATE audit_events SET seq = 3 WHERE seq = 4",
                "UPDATE audit_events SET seq = 4 WHERE seq = -3",
            ],
            3,
        ),
        (
            "truncate",
            vec!["DELETE FROM audit_events WHERE seq > 15", "DELETE FROM audit_event_customers WHERE seq > 15"],
            16,
        ),
        // The links behind access logs and `?customer=` (outside the chain's rows, checked
        // against it): seq 6 is the first read, seq 8 the second.
        ("prune the access log", vec!["DELETE FROM audit_event_customers WHERE seq = 6"], 6),
        (
            "forge an access-log link",
            vec!["INSERT INTO audit_event_customers (customer_id, seq) SELECT customer_id, 8 FROM audit_event_customers WHERE seq = 6"],
            8,
        ),
        (
            "edit a checkpoint",
            vec!["UPDATE audit_checkpoints SET seq = seq + 1 WHERE seq = (SELECT min(seq) FROM audit_checkpoints)"],
            1,
        ),
    ];
    for (name, statements, first_bad) in cases {
        let Some(db) = db_maker().await else { return };
        let h = with_traffic(db).await;
        h.sql_as_owner(&statements).await;
        let report = verify(&h).await;
        assert_eq!(report["ok"], false, "{name}: {report}");
        assert_eq!(report["first_bad_seq"], first_bad, "{name}: {report}");
        let (ok, out) = cli_verify(&h);
        assert!(!ok, "{name}: CLI accepted a tampered audit");
        assert!(out.contains(&format!("first bad sequence number {first_bad}")), "{name}: {out}");
    }
    // Inserting an event at the end without the chain key material.
    let Some(db) = db_maker().await else { return };
    let h = with_traffic(db).await;
    let next = h.scalar("SELECT max(seq) FROM audit_events").await + 1;
    let forged = format!(
        "INSERT INTO audit_events (seq, time, request_id, principal, action, customer_ids, fields, outcome, status, chain_hash) \
         SELECT {next}, time, 'forged', 'ghost', 'customer.read', '[]', '[]', 'allowed', 200, chain_hash FROM audit_events WHERE seq = 1"
    );
    h.sql_as_owner(&[&forged, "UPDATE audit_head SET seq = seq + 1"]).await;
    let report = verify(&h).await;
    assert_eq!((report["ok"].clone(), report["first_bad_seq"].clone()), (json!(false), json!(next)), "{report}");
    // Rewriting an event and recomputing every hash after it: the signed checkpoint catches it.
    let Some(db) = db_maker().await else { return };
    let h = with_traffic(db).await;
    let store = custodia::store::open(&h.db.url(), &custodia::store::StoreOptions::default()).await.unwrap();
    let events = store.audit_events_after(0, 10_000).await.unwrap();
    let mut head = custodia::audit::chain::GENESIS.to_vec();
    let mut statements = Vec::new();
    for mut e in events {
        if e.seq == 5 {
            e.event.principal = Some("someone-else".into());
            statements.push("UPDATE audit_events SET principal = 'someone-else' WHERE seq = 5".to_owned());
        }
        let h2 = custodia::audit::chain::next(&head, e.seq, &e.event, &e.customer_ids_text, &e.fields_text);
        statements.push(format!("UPDATE audit_events SET chain_hash = {} WHERE seq = {}", blob(&h.db, &h2), e.seq));
        head = h2.to_vec();
    }
    let refs: Vec<&str> = statements.iter().map(String::as_str).collect();
    h.sql_as_owner(&refs).await;
    let report = verify(&h).await;
    assert_eq!(report["ok"], false, "{report}");
    assert_eq!(report["first_bad_seq"], 1, "{report}");
    assert!(report["problem"].as_str().unwrap().contains("rewritten"), "{report}");
}

fn blob(db: &Db, bytes: &[u8]) -> String {
    match db {
        Db::Sqlite { .. } => format!("X'{}'", hex(bytes)),
        Db::Postgres { .. } => format!("'\\x{}'::bytea", hex(bytes)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampering_is_named_sqlite() {
    tampering(|| Box::pin(async { Some(Db::sqlite()) })).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampering_is_named_postgres() {
    tampering(|| Box::pin(Db::postgres())).await;
}

/// Waits until SQLite's customer index of the access log holds every link written so far.
async fn customer_index_caught_up(h: &Harness) {
    for _ in 0..100 {
        let through = h.scalar("SELECT through FROM ix.audit_customer_index_state").await;
        if through >= h.scalar("SELECT coalesce(max(seq), 0) FROM audit_event_customers").await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the customer index did not catch up within 10 s");
}

/// The sequence numbers a security officer's `?customer=` search lists for `id`.
async fn customer_events(h: &Harness, id: Uuid) -> Vec<i64> {
    let r = h.client.get(h.url(&format!("/v1/audit/events?customer={id}"))).bearer_auth(mint(SO)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let page: Value = r.json().await.unwrap();
    page["items"].as_array().unwrap().iter().map(|e| e["seq"].as_i64().unwrap()).collect()
}

/// SQLite indexes the access log by customer in a file of its own (`store/sqlite/links.rs`). A customer's
/// events are listed the same before and after the index caught up, and the index is checked
/// against the chain like the links written with the events: drop the second copy returned by
/// `SqliteStore::audit_links` and the two tamperings below verify as ok.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_customer_index_lists_and_verifies_like_the_links_sqlite() {
    let h = with_traffic(Db::sqlite()).await;
    let id = h.create(individual("3201")).await;
    let events = || customer_events(&h, id);
    for n in 1..=3 {
        assert_eq!(h.get(&format!("/v1/customers/{id}"), ALICE).send().await.unwrap().status(), 200);
        // Listed at once, indexed or not: the create and every read so far.
        assert_eq!(events().await.len(), 1 + n);
    }
    let listed = events().await;
    customer_index_caught_up(&h).await;
    assert_eq!(events().await, listed);
    let indexed =
        h.scalar(&format!("SELECT count(*) FROM ix.audit_customer_index WHERE customer_id = X'{}'", id.simple())).await;
    assert_eq!(indexed, 4);
    // One more read: two copies answer one list.
    assert_eq!(h.get(&format!("/v1/customers/{id}"), ALICE).send().await.unwrap().status(), 200);
    let mut expected = listed.clone();
    expected.push(*events().await.last().unwrap());
    assert_eq!(events().await, expected);
    let report = verify(&h).await;
    assert_eq!(report["ok"], true, "{report}");

    // seq 6 is the first read of `with_traffic`, seq 8 the second (of another customer).
    type Case = (&'static str, &'static str, i64);
    let cases: [Case; 2] = [
        ("prune the customer index", "DELETE FROM ix.audit_customer_index WHERE seq = 6", 6),
        (
            "forge a link in the customer index",
            "INSERT INTO ix.audit_customer_index (customer_id, seq) SELECT customer_id, 8 FROM ix.audit_customer_index WHERE seq = 6",
            8,
        ),
    ];
    for (name, statement, first_bad) in cases {
        let h = with_traffic(Db::sqlite()).await;
        customer_index_caught_up(&h).await;
        h.sql_as_owner(&[statement]).await;
        let report = verify(&h).await;
        assert_eq!(report["ok"], false, "{name}: {report}");
        assert_eq!(report["first_bad_seq"], first_bad, "{name}: {report}");
        assert!(report["problem"].as_str().unwrap().contains("customer index"), "{name}: {report}");
        let (ok, out) = cli_verify(&h);
        assert!(!ok, "{name}: CLI accepted a tampered index");
        assert!(out.contains(&format!("first bad sequence number {first_bad}")), "{name}: {out}");
    }
}

/// SQLite's customer index is derived, so removing its file while the vault runs costs neither
/// a request nor a restart: reads go on (200), the index thread recreates the file and refills
/// it from the links, and the server's readers let go of the removed file. Fails when the
/// thread stops recreating the file (it never comes back), or when readers keep their old
/// connections (the pruning below goes unseen: verification reads the removed file).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_index_file_removed_while_running_is_recreated_sqlite() {
    let h = with_traffic(Db::sqlite()).await;
    let Db::Sqlite { path, .. } = &h.db else { unreachable!() };
    let id = h.create(individual("3201")).await;
    let events = || customer_events(&h, id);
    assert_eq!(h.get(&format!("/v1/customers/{id}"), ALICE).send().await.unwrap().status(), 200);
    customer_index_caught_up(&h).await;
    let listed = events().await;
    assert_eq!(listed.len(), 2);

    let index = sqlite_index_path(path);
    for suffix in ["", "-wal", "-shm"] {
        let mut file = index.clone().into_os_string();
        file.push(suffix);
        let _ = std::fs::remove_file(file);
    }
    assert!(!index.exists());
    // Reads and lists go on meanwhile.
    for _ in 0..3 {
        assert_eq!(h.get(&format!("/v1/customers/{id}"), ALICE).send().await.unwrap().status(), 200);
    }
    assert_eq!(events().await.len(), 5);
    // Back once the file is there with its tables: the vault creates the file a moment before it
    // commits their schema, and a read in between finds the file but not the tables.
    let mut back = false;
    for _ in 0..100 {
        back = index.exists()
            && on_sqlite(path, |c| {
                c.query_row("SELECT through FROM ix.audit_customer_index_state", [], |r| r.get::<_, i64>(0)).is_ok()
            })
            .await;
        if back {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(back, "the index file was not recreated within 10 s");
    customer_index_caught_up(&h).await;
    let indexed =
        h.scalar(&format!("SELECT count(*) FROM ix.audit_customer_index WHERE customer_id = X'{}'", id.simple())).await;
    assert_eq!(indexed, 5, "the recreated index holds the events from before its removal too");
    let all = events().await;
    assert_eq!(&all[..2], &listed[..]);
    assert_eq!(verify(&h).await["ok"], true);
    // The server reads the new file: a tampering of it is seen.
    h.sql_as_owner(&[&format!("DELETE FROM ix.audit_customer_index WHERE seq = {}", all[0])]).await;
    let report = verify(&h).await;
    assert_eq!(report["ok"], false, "{report}");
    assert_eq!(report["first_bad_seq"], all[0], "{report}");
}

/// Makes every audit insert fail, as a full disk or a broken audit table would.
async fn break_audit(h: &Harness) {
    match &h.db {
        Db::Sqlite { .. } => {
            h.sql(
                "CREATE TRIGGER audit_down BEFORE INSERT ON audit_events BEGIN SELECT RAISE(ABORT, 'disk full'); END",
                &[],
            )
            .await;
        }
        Db::Postgres { .. } => {
            h.sql("CREATE FUNCTION audit_down() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'disk full'; END $$", &[]).await;
            h.sql(
                "CREATE TRIGGER audit_down BEFORE INSERT ON audit_events FOR EACH ROW EXECUTE FUNCTION audit_down()",
                &[],
            )
            .await;
        }
    }
}

async fn mend_audit(h: &Harness) {
    match &h.db {
        Db::Sqlite { .. } => h.sql("DROP TRIGGER audit_down", &[]).await,
        Db::Postgres { .. } => h.sql("DROP TRIGGER audit_down ON audit_events", &[]).await,
    };
}

on_both! {
    async fn an_unwritable_audit_serves_nothing(h) {
        h.grant(SO, "security_officer", "CN").await;
        let id = h.create(individual("3201")).await;
        let customers_before = h.scalar("SELECT count(*) FROM customers").await;
        break_audit(&h).await;
        let path = format!("/v1/customers/{id}");
        let attempts = vec![
            h.get(&path, ALICE),
            h.post("/v1/customers", ALICE, &individual("3201")),
            h.patch(&path, ALICE, 1, &json!({"fields": {"mobile": "13900000000"}})),
            h.post("/v1/customers/search", ALICE, &json!({"match": {"mobile": "13812345678"}})),
            h.client.get(h.url("/v1/audit/events")).bearer_auth(mint(SO)),
        ];
        for req in attempts {
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 503);
            let body = r.text().await.unwrap();
            let v: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["code"], "audit_unavailable");
            for leak in ["13812345678", "欧阳", "11010519491231002X", "110***", "nana"] {
                assert!(!body.contains(leak), "served {leak} without an audit event");
            }
        }
        // Writes rolled back with their events.
        assert_eq!(h.scalar("SELECT count(*) FROM customers").await, customers_before);
        assert_eq!(h.scalar("SELECT max(version) FROM customers").await, 1);
        mend_audit(&h).await;
        assert_eq!(h.get(&path, ALICE).send().await.unwrap().status(), 200);
        let report = verify(&h).await;
        assert_eq!(report["ok"], true, "{report}");
    }

    async fn concurrent_load_on_two_instances_keeps_one_chain(h) {
        h.grant(SO, "security_officer", "CN").await;
        h.grant("ag", "agent", "32").await;
        let other = h.another_instance().await;
        let bases = [h.base.clone(), format!("http://{}", other.addr)];
        let id = h.create(individual("3201")).await;
        let before = h.scalar("SELECT count(*) FROM audit_events").await;
        let mut tasks = Vec::new();
        for i in 0..120usize {
            let base = bases[i % 2].clone();
            let client = h.client.clone();
            tasks.push(tokio::spawn(async move {
                let req = match i % 4 {
                    0 => client.get(format!("{base}/v1/customers/{id}")).bearer_auth(mint("ag")).header("X-Purpose", PURPOSE),
                    1 => client.post(format!("{base}/v1/customers")).bearer_auth(mint(ALICE)).header("X-Purpose", PURPOSE).json(&individual("3202")),
                    2 => client.get(format!("{base}/v1/customers/{id}")).bearer_auth(mint("ag")),
                    _ => client.get(format!("{base}/v1/customers/{}", Uuid::now_v7())).bearer_auth(mint(ALICE)).header("X-Purpose", PURPOSE),
                };
                req.send().await.unwrap().status().as_u16()
            }));
        }
        for (i, t) in tasks.into_iter().enumerate() {
            let expected = [200, 201, 403, 404][i % 4];
            assert_eq!(t.await.unwrap(), expected);
        }
        assert_eq!(h.scalar("SELECT count(*) FROM audit_events").await, before + 120);
        let report = verify(&h).await;
        assert_eq!(report["ok"], true, "{report}");
        other.stop().await.unwrap();
    }

    async fn access_log_tells_the_customer_who_looked(h) {
        let id = h.create(individual("3201")).await;
        h.grant("ag", "agent", "32").await;
        h.grant("gd.manager", "account_manager", "44").await;
        assert_eq!(h.get(&format!("/v1/customers/{id}"), "ag").send().await.unwrap().status(), 200);
        let log = |who: &str, purpose: &str| {
            h.client.get(h.url(&format!("/v1/customers/{id}/access-log"))).bearer_auth(mint(who)).header("X-Purpose", purpose).send()
        };
        let r = log(ALICE, "data_subject_request").await.unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        let read = v["items"].as_array().unwrap().iter().find(|e| e["principal"] == "ag").expect("the agent's read is listed");
        assert_eq!(read["action"], "customer.read");
        assert_eq!(read["purpose"], PURPOSE);
        assert!(read["fields"].as_array().unwrap().iter().any(|f| f["field"] == "mobile" && f["view"] == "masked"));
        assert_eq!(log(ALICE, "customer_service").await.unwrap().status(), 403);
        assert_eq!(log("ag", "data_subject_request").await.unwrap().status(), 403);
        assert_eq!(log("gd.manager", "data_subject_request").await.unwrap().status(), 404);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn walking_a_province_triggers_the_guard() {
    let h = Harness::start_with(Db::sqlite(), |c| c.audit.bulk_threshold = 5).await;
    h.grant(SO, "security_officer", "CN").await;
    h.grant("walker", "agent", "32").await;
    let mut ids = Vec::new();
    for _ in 0..7 {
        ids.push(h.create(individual("3201")).await);
    }
    for id in &ids[..5] {
        assert_eq!(h.get(&format!("/v1/customers/{id}"), "walker").send().await.unwrap().status(), 200);
    }
    // Re-reading a customer already seen does not count twice.
    assert_eq!(h.get(&format!("/v1/customers/{}", ids[0]), "walker").send().await.unwrap().status(), 200);
    // The sixth distinct customer is refused, and from then on everything is.
    let r = h.get(&format!("/v1/customers/{}", ids[5]), "walker").send().await.unwrap();
    assert_eq!(r.status(), 429);
    let body = r.text().await.unwrap();
    assert!(body.contains("bulk_access_blocked") && !body.contains("138"), "{body}");
    assert_eq!(h.get(&format!("/v1/customers/{}", ids[0]), "walker").send().await.unwrap().status(), 429);
    let r =
        h.post("/v1/customers/search", "walker", &json!({"match": {"mobile": "13812345678"}})).send().await.unwrap();
    assert_eq!(r.status(), 429);
    // Other principals are unaffected.
    assert_eq!(h.get(&format!("/v1/customers/{}", ids[6]), ALICE).send().await.unwrap().status(), 200);
    // The security officer sees the alert, and its event is in the audit.
    let alerts: Value =
        h.client.get(h.url("/v1/audit/alerts")).bearer_auth(mint(SO)).send().await.unwrap().json().await.unwrap();
    let alert = &alerts[0];
    assert_eq!((alert["principal"].as_str(), alert["status"].as_str()), (Some("walker"), Some("open")));
    let events: Value = h
        .client
        .get(h.url("/v1/audit/events?action=audit.alert_raised"))
        .bearer_auth(mint(SO))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(events["items"][0]["principal"], "walker");
    // Nobody but a security officer clears it.
    let clear = |who: &str| {
        h.client
            .post(h.url(&format!("/v1/audit/alerts/{}/clear", alert["id"].as_str().unwrap())))
            .bearer_auth(mint(who))
            .send()
    };
    assert_eq!(clear("walker").await.unwrap().status(), 403);
    assert_eq!(clear(ROOT_ADMIN).await.unwrap().status(), 403);
    let r = clear(SO).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(clear(SO).await.unwrap().status(), 404);
    assert_eq!(h.get(&format!("/v1/customers/{}", ids[5]), "walker").send().await.unwrap().status(), 200);
}

on_both! {
    // Verification reads several pages ahead by sequence number; a deletion in a later page or
    // a truncation at a page boundary must still be named exactly, and an intact log spanning
    // several pages must verify whole.
    async fn verification_spans_pages(h) {
        use custodia::audit::{AuditEvent, CheckpointVerifier};
        let store = h.vault().store().clone();
        let before = h.scalar("SELECT count(*) FROM audit_events").await;
        let events: Vec<AuditEvent> =
            (0..2500).map(|i| AuditEvent::now(format!("bulk-{i}"), "customer.read")).collect();
        for _ in 0..10 {
            store.append_audit(custodia::store::AuditBatch::events(events.clone())).await.unwrap();
        }
        let total = before + 25_000;
        let verifier = CheckpointVerifier::load(std::path::Path::new(&root_path("keys-example/audit-ed25519.pub.pem"))).unwrap();
        let report = custodia::audit::verify::verify(&store, &verifier).await.unwrap();
        assert!(report.ok, "{report:?}");
        assert_eq!(report.events, total);
        // Deep in the second page.
        h.sql_as_owner(&["DELETE FROM audit_event_customers WHERE seq = 17003", "DELETE FROM audit_events WHERE seq = 17003"]).await;
        let report = custodia::audit::verify::verify(&store, &verifier).await.unwrap();
        assert!(!report.ok);
        assert_eq!(report.first_bad_seq, Some(17003), "{report:?}");
        // Truncated exactly at a page boundary: the head says more events existed.
        h.sql_as_owner(&["DELETE FROM audit_event_customers WHERE seq > 10000", "DELETE FROM audit_events WHERE seq > 10000"]).await;
        let report = custodia::audit::verify::verify(&store, &verifier).await.unwrap();
        assert!(!report.ok);
        assert_eq!(report.first_bad_seq, Some(10001), "{report:?}");
    }

    // On SQLite a create's event is written by the sqlx writer with the record, a read's by the
    // audit writer's own connection: both must store the same encoding, so the time filters
    // (compared as stored text) and every column read back alike, and the chain verifies.
    async fn events_of_both_write_paths_read_back_alike(h) {
        h.grant(SO, "security_officer", "CN").await;
        let id = h.create(individual("3201")).await;
        assert_eq!(h.get(&format!("/v1/customers/{id}"), ALICE).send().await.unwrap().status(), 200);
        let events = |params: Vec<(&'static str, String)>| {
            let req = h.client.get(h.url("/v1/audit/events")).bearer_auth(mint(SO)).query(&params);
            async move {
                let r = req.send().await.unwrap();
                assert_eq!(r.status(), 200);
                r.json::<Value>().await.unwrap()["items"].as_array().unwrap().clone()
            }
        };
        let all = events(vec![("customer", id.to_string())]).await;
        let actions: Vec<&str> = all.iter().map(|e| e["action"].as_str().unwrap()).collect();
        assert_eq!(actions, ["customer.create", "customer.read"], "{all:?}");
        for e in &all {
            assert!(e["grant_id"].as_str().and_then(|g| g.parse::<Uuid>().ok()).is_some(), "{e}");
            assert_eq!(e["customer_ids"], json!([id.to_string()]));
            let time: chrono::DateTime<chrono::Utc> = e["time"].as_str().unwrap().parse().unwrap();
            let next = time + chrono::Duration::microseconds(1);
            let at = |from: chrono::DateTime<chrono::Utc>, to: chrono::DateTime<chrono::Utc>| {
                events(vec![("customer", id.to_string()), ("from", from.to_rfc3339()), ("to", to.to_rfc3339())])
            };
            // `from` is inclusive and `to` exclusive, to the microsecond.
            let hit = at(time, next).await;
            assert_eq!(hit.len(), 1, "{e}");
            assert_eq!(&hit[0], e);
            assert!(at(time - chrono::Duration::microseconds(1), time).await.is_empty(), "{e}");
        }
        let read = &all[1];
        assert_eq!(read["principal"], ALICE);
        assert_eq!(read["purpose"], PURPOSE);
        assert_eq!(read["status"], 200);
        assert_eq!(read["outcome"], "allowed");
        assert!(read["fields"].as_array().is_some_and(|f| !f.is_empty()), "{read}");
        if h.vault().store().backend() == custodia::store::Backend::Sqlite {
            // Stored as sqlx writes timestamps (RFC 3339, `+00:00`), whichever path wrote them.
            assert_eq!(h.scalar("SELECT count(*) FROM audit_events WHERE time NOT LIKE '%+00:00'").await, 0);
        }
        assert_eq!(verify(&h).await["ok"], true);
    }
}

//! Customer records over HTTP: create, read, update with optimistic concurrency, validation
//! that names the rule and never the value, and malicious input (threats §8).

use serde_json::{json, Value};

use crate::support::*;

async fn problem(r: reqwest::Response) -> (u16, Value, String) {
    let status = r.status().as_u16();
    assert_eq!(r.headers()["content-type"], "application/problem+json", "status {status}");
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap(), text)
}

on_both! {
    async fn create_read_update_round_trip(h) {
        let r = h.post("/v1/customers", "alice", &individual("3201")).send().await.unwrap();
        assert_eq!(r.status(), 201);
        let location = r.headers()["location"].to_str().unwrap().to_owned();
        assert_eq!(r.headers()["etag"], "\"1\"");
        let created: Value = r.json().await.unwrap();
        assert_eq!(location, format!("/v1/customers/{}", created["id"].as_str().unwrap()));
        assert_eq!(created["version"], 1);
        assert_eq!(created["status"], "active");
        assert!(created.get("fields").is_none(), "create must not echo field values");
        let id: uuid::Uuid = created["id"].as_str().unwrap().parse().unwrap();
        assert_eq!(id.get_version_num(), 7);

        let r = h.get(&location, "alice").send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["cache-control"], "no-store");
        let got: Value = r.json().await.unwrap();
        assert_eq!(got["region"], "3201");
        assert_eq!(got["kind"], "individual");
        assert_eq!(got["vip_level"], 2);
        assert_eq!(got["fields"]["mobile"], "13812345678");
        assert_eq!(got["fields"]["name"], "欧阳娜娜");

        // Normalisation on write: separators, +86, lowercase x, full-width digits.
        let r = h.patch(&location, "alice", 1, &json!({"fields": {"mobile": "+86 139-0000-1111", "email": null}})).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["etag"], "\"2\"");
        let got: Value = h.get(&location, "alice").send().await.unwrap().json().await.unwrap();
        assert_eq!(got["version"], 2);
        assert_eq!(got["fields"]["mobile"], "13900001111");
        assert!(got["fields"].get("email").is_none());
        // An account manager sees the resident ID masked (first 3, last 4).
        assert_eq!(got["fields"]["resident_id"], "110***********002X");
        assert_eq!(got["views"]["resident_id"], "masked");
        assert_eq!(got["views"]["mobile"], "plain");

        // Enterprise customers.
        let id = h.create(json!({"region": "4403", "kind": "enterprise", "fields": {
            "company_name": "深圳某某科技有限公司", "credit_code": "91350100m000100y43", "mobile": "１３８００１３８０００"}})).await;
        let got: Value = h.get(&format!("/v1/customers/{id}"), "alice").send().await.unwrap().json().await.unwrap();
        assert_eq!(got["fields"]["credit_code"], "91350100M000100Y43");
        assert_eq!(got["fields"]["mobile"], "13800138000");
    }

    // Creates and reads arriving together are group-committed and combined into shared
    // statements; each caller must still get exactly its own record and its own audit event.
    async fn concurrent_creates_and_reads_each_get_their_own(h) {
        let n = 48usize;
        let mobile = |i: usize| format!("1381234{:04}", 1000 + i);
        let creates = (0..n).map(|i| {
            let mut body = individual("3201");
            body["fields"]["mobile"] = json!(mobile(i));
            let h = &h;
            async move {
                let r = h.post("/v1/customers", "alice", &body).send().await.unwrap();
                assert_eq!(r.status(), 201);
                let v: Value = r.json().await.unwrap();
                (i, v["id"].as_str().unwrap().to_owned())
            }
        });
        let created = futures::future::join_all(creates).await;
        let missing = uuid::Uuid::now_v7().to_string();
        let reads = created.iter().map(|(i, id)| {
            let h = &h;
            let missing = missing.clone();
            async move {
                let (a, b) = tokio::join!(
                    h.get(&format!("/v1/customers/{id}"), "alice").send(),
                    h.get(&format!("/v1/customers/{missing}"), "alice").send()
                );
                let (a, b) = (a.unwrap(), b.unwrap());
                assert_eq!(b.status(), 404);
                assert_eq!(a.status(), 200);
                let v: Value = a.json().await.unwrap();
                assert_eq!(v["id"], id.as_str());
                assert_eq!(v["fields"]["mobile"], mobile(*i), "customer {i} got another record");
            }
        });
        futures::future::join_all(reads).await;
        let events = h.scalar("SELECT count(*) FROM audit_events WHERE action = 'customer.create' AND status = 201").await;
        assert_eq!(events, n as i64);
        let linked = h
            .scalar(
                "SELECT count(DISTINCT l.customer_id) FROM audit_event_customers l \
                 JOIN audit_events e ON e.seq = l.seq WHERE e.action = 'customer.create'",
            )
            .await;
        assert_eq!(linked, n as i64);
    }

    // When a group commit of the audit writer fails on a constraint, its creates are retried one
    // by one: a record that cannot be inserted (here: an id that exists) fails alone, and its
    // neighbours are committed. (Remove `separately`'s arm in `audit/writer.rs` to see it fail.)
    async fn a_failing_create_does_not_fail_its_batch(h) {
        use custodia::audit::AuditEvent;
        let existing = h.create(individual("3201")).await;
        let store = h.vault().store().clone();
        let template = store.customer(existing).await.unwrap().unwrap();
        let queue = h.server.state.audit.clone();
        let jobs = (0..20).map(|i| {
            let mut record = template.clone();
            if i % 2 == 1 {
                record.id = uuid::Uuid::now_v7();
            }
            let queue = queue.clone();
            async move { (record.id, queue.create(record, AuditEvent::now(format!("batch-{i}"), "customer.create")).await) }
        });
        let results = futures::future::join_all(jobs).await;
        for (id, result) in &results {
            if *id == existing {
                assert!(result.is_err(), "a duplicate id must fail");
            } else {
                assert!(result.is_ok(), "a valid record failed with its batch: {result:?}");
                assert!(store.customer(*id).await.unwrap().is_some());
            }
        }
        let committed = h.scalar("SELECT count(*) FROM audit_events WHERE request_id LIKE 'batch-%'").await;
        assert_eq!(committed, 10, "only the committed creates have events");
    }

    async fn optimistic_concurrency(h) {
        let id = h.create(individual("3201")).await;
        let path = format!("/v1/customers/{id}");
        let change = json!({"fields": {"address": "江苏省南京市鼓楼区"}});
        // No If-Match: 428. Garbage If-Match: 400. Stale: 412.
        let r = h.client.patch(h.url(&path)).bearer_auth(mint("alice")).header("X-Purpose", PURPOSE).json(&change).send().await.unwrap();
        let (status, v, _) = problem(r).await;
        assert_eq!((status, v["code"].as_str().unwrap()), (428, "precondition_required"));
        let r = h.client.patch(h.url(&path)).bearer_auth(mint("alice")).header("X-Purpose", PURPOSE).header("If-Match", "*").json(&change).send().await.unwrap();
        assert_eq!(problem(r).await.0, 400);
        let r = h.patch(&path, "alice", 7, &change).send().await.unwrap();
        let (status, v, _) = problem(r).await;
        assert_eq!((status, v["code"].as_str().unwrap()), (412, "version_conflict"));

        // Eight writers race on version 1: exactly one wins.
        let mut tasks = Vec::new();
        for i in 0..8 {
            let req = h.patch(&path, "alice", 1, &json!({"vip_level": i}));
            tasks.push(tokio::spawn(async move { req.send().await.unwrap().status().as_u16() }));
        }
        let mut statuses = Vec::new();
        for t in tasks {
            statuses.push(t.await.unwrap());
        }
        statuses.sort();
        assert_eq!(statuses, vec![200, 412, 412, 412, 412, 412, 412, 412]);
        let got: Value = h.get(&path, "alice").send().await.unwrap().json().await.unwrap();
        assert_eq!(got["version"], 2);
    }

    async fn invalid_input_names_the_rule_never_the_value(h) {
        let canaries = ["110105194912310021", "6222021234567890127", "14012345678", "CANARY-UNKNOWN-VALUE", "CANARY_KEY_NAME"];
        let body = json!({"region": "3201", "kind": "individual", "fields": {
            "name": "张三", "resident_id": canaries[0], "bank_card": canaries[1], "mobile": canaries[2],
            "hobby": canaries[3], "CANARY_KEY_NAME<script>": "x", "company_name": "某公司"}});
        let (status, v, text) = problem(h.post("/v1/customers", "alice", &body).send().await.unwrap()).await;
        assert_eq!(status, 422);
        assert_eq!(v["code"], "validation_failed");
        for c in canaries {
            assert!(!text.contains(c), "value echoed in {text}");
        }
        let rules: Vec<(String, String)> = v["errors"].as_array().unwrap().iter()
            .map(|e| (e["field"].as_str().unwrap().to_owned(), e["rule"].as_str().unwrap().to_owned())).collect();
        for expected in [("fields.resident_id", "check_character"), ("fields.bank_card", "check_character"),
                         ("fields.mobile", "unallocated_prefix"), ("fields.hobby", "unknown_field"),
                         ("fields", "unknown_field"), ("fields.company_name", "not_applicable")] {
            assert!(rules.contains(&(expected.0.into(), expected.1.into())), "{expected:?} missing from {rules:?}");
        }

        for (region, rule) in [("32", "city_required"), ("CN", "city_required"), ("9901", "unknown_region"), ("' OR 1=1 --", "unknown_region")] {
            let mut b = individual("3201");
            b["region"] = json!(region);
            let (status, v, _) = problem(h.post("/v1/customers", "alice", &b).send().await.unwrap()).await;
            assert_eq!(status, 422);
            assert_eq!(v["errors"][0]["rule"], rule);
        }
        let mut missing_name = individual("3201");
        missing_name["fields"].as_object_mut().unwrap().remove("name");
        let (_, v, _) = problem(h.post("/v1/customers", "alice", &missing_name).send().await.unwrap()).await;
        assert_eq!(v["errors"][0], json!({"field": "fields.name", "rule": "required", "message": "the field is required"}));

        // Unicode tricks in free text: bidi override, zero-width, log-injection newline.
        for name in ["张\u{202E}三", "张\u{200B}三", "张三\nINFO admin logged in"] {
            let mut b = individual("3201");
            b["fields"]["name"] = json!(name);
            let (status, v, _) = problem(h.post("/v1/customers", "alice", &b).send().await.unwrap()).await;
            assert_eq!((status, v["errors"][0]["rule"].as_str().unwrap()), (422, "forbidden_character"));
        }
        // Impossible and future dates.
        for (date, rule) in [("1985-02-29", "invalid_date"), ("2999-01-01", "future_date"), ("19840101", "format")] {
            let mut b = individual("3201");
            b["fields"]["birth_date"] = json!(date);
            let (_, v, _) = problem(h.post("/v1/customers", "alice", &b).send().await.unwrap()).await;
            assert_eq!(v["errors"][0]["rule"], rule, "{date}");
        }
        // Removing a required field.
        let id = h.create(individual("3201")).await;
        let (status, v, _) = problem(h.patch(&format!("/v1/customers/{id}"), "alice", 1, &json!({"fields": {"name": null}})).send().await.unwrap()).await;
        assert_eq!((status, v["errors"][0]["rule"].as_str().unwrap()), (422, "required"));
    }

    async fn malformed_requests(h) {
        let send_raw = |body: Vec<u8>, ctype: &'static str| {
            h.client.post(h.url("/v1/customers")).bearer_auth(mint("alice")).header("X-Purpose", PURPOSE).header("content-type", ctype).body(body).send()
        };
        // Broken JSON; values that are numbers; unknown and duplicate members.
        let cases: Vec<&[u8]> = vec![
            b"{\"region\": \"3201\",",
            b"{\"region\": \"3201\", \"kind\": \"individual\", \"fields\": {\"mobile\": 13812345678}}",
            b"{\"region\": \"3201\", \"kind\": \"individual\", \"fields\": {}, \"admin\": true}",
            b"{\"region\": \"3201\", \"kind\": \"individual\", \"fields\": {\"name\": \"a\", \"name\": \"b\"}}",
            b"{\"region\": \"3201\", \"region\": \"4401\", \"kind\": \"individual\", \"fields\": {\"name\": \"a\"}}",
        ];
        for body in cases {
            let (status, v, text) = problem(send_raw(body.to_vec(), "application/json").await.unwrap()).await;
            assert_eq!((status, v["code"].as_str().unwrap()), (400, "malformed_body"), "{}", String::from_utf8_lossy(body));
            assert!(!text.contains("13812345678"));
        }
        // Deeply nested JSON is refused without crashing the server.
        let deep = format!("{{\"region\": {}{}}}", "[".repeat(30_000), "]".repeat(30_000));
        let (status, v, _) = problem(send_raw(deep.into_bytes(), "application/json").await.unwrap()).await;
        assert_eq!((status, v["code"].as_str().unwrap()), (400, "malformed_body"));
        // Oversized body (default limit 64 KiB).
        let mut big = individual("3201");
        big["fields"]["address"] = json!("路".repeat(40_000));
        let (status, v, _) = problem(send_raw(serde_json::to_vec(&big).unwrap(), "application/json").await.unwrap()).await;
        assert_eq!((status, v["code"].as_str().unwrap()), (413, "body_too_large"));
        // Not JSON.
        let (status, _, _) = problem(send_raw(b"region=3201".to_vec(), "application/x-www-form-urlencoded").await.unwrap()).await;
        assert_eq!(status, 415);
        // Ids that are not UUIDs, SQL in the path: simply not found.
        for path in ["/v1/customers/1", "/v1/customers/'%20OR%201=1%20--", "/v1/customers/01900000-0000-7000-8000-000000000000"] {
            let (status, v, _) = problem(h.get(path, "alice").send().await.unwrap()).await;
            assert_eq!((status, v["code"].as_str().unwrap()), (404, "not_found"), "{path}");
        }
        // Wrong method and unknown route are problems too.
        let r = h.client.delete(h.url("/v1/customers")).bearer_auth(mint("alice")).header("X-Purpose", PURPOSE).send().await.unwrap();
        assert_eq!(problem(r).await.0, 405);
        let r = h.client.get(h.url("/v2/nothing")).send().await.unwrap();
        assert_eq!(problem(r).await.0, 404);
        // SQL text in a value is data, stored and returned as is.
        let mut b = individual("3201");
        b["fields"]["name"] = json!("Robert'); DROP TABLE customers;--");
        let id = h.create(b).await;
        let got: Value = h.get(&format!("/v1/customers/{id}"), "alice").send().await.unwrap().json().await.unwrap();
        assert_eq!(got["fields"]["name"], "Robert'); DROP TABLE customers;--");
    }

    async fn probes_and_request_ids(h) {
        let r = h.client.get(h.url("/healthz")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.headers().contains_key("x-request-id"));
        let r = h.client.get(h.url("/readyz")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        // A plain client request id is kept; a hostile one is replaced.
        let r = h.client.get(h.url("/healthz")).header("x-request-id", "crm-42.abc").send().await.unwrap();
        assert_eq!(r.headers()["x-request-id"], "crm-42.abc");
        let r = h.client.get(h.url("/healthz")).header("x-request-id", "a b\"c").send().await.unwrap();
        assert_ne!(r.headers()["x-request-id"], "a b\"c");
    }
}

/// Readiness reports a database that stops accepting connections (PostgreSQL only: an
/// open SQLite file cannot be taken away from under the process).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_when_the_database_refuses_connections() {
    let Some(db) = Db::postgres().await else { return };
    let h = Harness::start(db).await;
    assert_eq!(h.client.get(h.url("/readyz")).send().await.unwrap().status(), 200);
    let Db::Postgres { admin_url, name, .. } = &h.db else { unreachable!() };
    use sqlx::Connection;
    let mut admin = sqlx::PgConnection::connect(admin_url).await.unwrap();
    sqlx::query(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false")).execute(&mut admin).await.unwrap();
    sqlx::query(&format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"))
        .execute(&mut admin)
        .await
        .unwrap();
    let r = h.client.get(h.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let id = "01900000-0000-7000-8000-000000000000";
    let r = h.get(&format!("/v1/customers/{id}"), "alice").send().await.unwrap();
    // The request cannot even be audited: refused, nothing served.
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["code"], "audit_unavailable");
    sqlx::query(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true")).execute(&mut admin).await.unwrap();
}

/// A create whose caller gave up while it waited in the audit writer's queue (here: behind a
/// writer holding the database lock) is dropped, never committed behind the caller's back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_abandoned_while_queued_is_never_committed() {
    use custodia::audit::AuditEvent;
    let h = Harness::start(Db::sqlite()).await;
    let existing = h.create(individual("3201")).await;
    let store = h.vault().store().clone();
    let template = store.customer(existing).await.unwrap().unwrap();
    let queue = h.server.state.audit.clone();
    // Another writer holds the lock: the first create waits for it inside its batch.
    let Db::Sqlite { path, .. } = &h.db else { unreachable!() };
    let locker = sqlite_at(path);
    locker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let mut first = template.clone();
    first.id = uuid::Uuid::now_v7();
    let waiting = tokio::spawn({
        let (queue, first) = (queue.clone(), first.clone());
        async move { queue.create(first, AuditEvent::now("kept".into(), "customer.create")).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    // The second create queues behind it, and its caller gives up.
    let mut abandoned = template.clone();
    abandoned.id = uuid::Uuid::now_v7();
    let gave_up = tokio::time::timeout(
        std::time::Duration::from_millis(300),
        queue.create(abandoned.clone(), AuditEvent::now("abandoned".into(), "customer.create")),
    )
    .await;
    assert!(gave_up.is_err(), "the second create should still be queued");
    locker.execute_batch("ROLLBACK").unwrap();
    assert!(waiting.await.unwrap().is_ok());
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(store.customer(first.id).await.unwrap().is_some());
    assert!(store.customer(abandoned.id).await.unwrap().is_none(), "an abandoned create was committed");
    assert_eq!(h.scalar("SELECT count(*) FROM audit_events WHERE request_id = 'abandoned'").await, 0);
}

/// A client that sends its headers and then trickles the body is cut off by the request
/// timeout with a problem, not allowed to hold a worker forever (threats §10).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_timed_out() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = Harness::start_with(Db::sqlite(), |c| c.request_timeout_ms = 300).await;
    let addr = h.base.trim_start_matches("http://").to_owned();
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /v1/customers HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: 500\r\n\r\n{{\"region\"",
        mint("alice")
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let started = std::time::Instant::now();
    let mut response = vec![0u8; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), tcp.read(&mut response))
        .await
        .expect("no answer")
        .unwrap();
    let text = String::from_utf8_lossy(&response[..n]);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(text.contains("application/problem+json") && text.contains("\"code\":\"timeout\""), "{text}");
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
    // The request cut short left its event, under its route's action.
    let n = h.scalar("SELECT count(*) FROM audit_events WHERE action = 'customer.create' AND status = 503 AND outcome = 'failed'").await;
    assert_eq!(n, 1);
}

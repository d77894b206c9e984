//! Prometheus metrics on their own address: off by default; when on, requests by route and
//! status, latency histograms, the audit writer's queue, batches and commits, denials by
//! reason, budget refusals, open alerts, rewrap progress and pool occupancy — and no label
//! that carries a principal, a customer id, a request id or a field value.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::*;

async fn scrape(h: &Harness) -> String {
    let addr = h.server.metrics.as_ref().expect("metrics are on").addr;
    let r = h.client.get(format!("http://{addr}/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/plain; version=0.0.4"));
    r.text().await.unwrap()
}

/// The value of the sample whose line starts with `series` (name and labels as rendered).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok()).flatten()
    })
}

async fn with_metrics(db: Db) -> Harness {
    Harness::start_with(db, |c| c.metrics_listen = Some("127.0.0.1:0".parse().unwrap())).await
}

async fn metrics_count_what_happened(h: Harness) {
    let id = h.create(individual("3201")).await;
    let before = scrape(&h).await;
    let read = r#"custodia_http_requests_total{route="/v1/customers/{id}",method="GET",status="200"}"#;
    let forbidden = r#"custodia_denials_total{reason="forbidden"}"#;
    let reads_before = sample(&before, read).unwrap_or(0.0);
    let denials_before = sample(&before, forbidden).unwrap_or(0.0);
    let stages = ["read", "read_resume", "audit", "audit_resume"]
        .map(|stage| format!(r#"custodia_request_stage_seconds_count{{stage="{stage}"}}"#));
    let stages_before = stages.clone().map(|s| sample(&before, &s).unwrap_or(0.0));

    for _ in 0..3 {
        assert_eq!(h.get(&format!("/v1/customers/{id}"), ALICE).send().await.unwrap().status(), 200);
    }
    // An agent asking for a reveal: refused by the gate.
    h.grant("metrics-agent", "agent", "32").await;
    let r = h
        .client
        .post(h.url(&format!("/v1/customers/{id}/reveal")))
        .bearer_auth(mint("metrics-agent"))
        .header("X-Purpose", PURPOSE)
        .json(&json!({"fields": ["mobile"], "justification": "T-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    let after = scrape(&h).await;
    assert!(sample(&after, read).unwrap() >= reads_before + 3.0, "reads not counted:\n{after}");
    assert!(sample(&after, forbidden).unwrap() > denials_before, "denial not counted:\n{after}");
    // Where the reads waited on other threads: each read's record from the read queue and its
    // event's commit from the audit writer, each timed to its answer and to the request running
    // again. Remove the `resumed` call in `ReadQueue::customer` (store/group.rs) or in
    // `AuditLog::append` (audit/writer.rs) to see this fail.
    for (series, before) in stages.iter().zip(stages_before) {
        assert!(sample(&after, series).is_some_and(|n| n >= before + 3.0), "{series} not counted:\n{after}");
    }
    for family in [
        "custodia_http_request_duration_seconds_bucket",
        "custodia_audit_batch_events_bucket",
        "custodia_audit_commit_seconds_bucket",
        "custodia_audit_queue_depth",
    ] {
        assert!(after.lines().any(|l| l.starts_with(family)), "{family} missing:\n{after}");
    }
    // The gauges sampled from the database (at start, then every 15 s).
    let started = Instant::now();
    let gauges = loop {
        let text = scrape(&h).await;
        if text.contains("custodia_db_pool_max_connections") && text.contains("custodia_rewrap_pending") {
            break text;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "database gauges never sampled:\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        gauges.contains("custodia_open_alerts") && gauges.contains(r#"custodia_db_pool_connections{state="busy"}"#)
    );

    // Nothing identifying in any label or value.
    let ids = h.scalar("SELECT COUNT(*) FROM audit_events").await;
    assert!(ids > 0);
    for secret in [id.to_string().as_str(), ALICE, "metrics-agent", "13812345678", "欧阳", "customer_service"] {
        assert!(!after.contains(secret) && !gauges.contains(secret), "metrics carry {secret:?}");
    }
    let routes: Vec<&str> =
        after.lines().filter_map(|l| l.split("route=\"").nth(1).and_then(|r| r.split('"').next())).collect();
    assert!(
        routes.iter().all(|r| !r.contains(&id.to_string()) && (r.starts_with('/') || *r == "<unmatched>")),
        "{routes:?}"
    );
}

on_both! {
    async fn metrics_are_off_by_default(h) {
        assert!(h.server.metrics.is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_happened_sqlite() {
    let h = with_metrics(Db::sqlite()).await;
    let id = h.create(individual("3202")).await;
    // The writer's turns by kind: the create and the read commit in audit turns (the audit
    // writer's group commits carry the creates).
    // Remove the `metrics::histogram!` calls in `Writer::write_with` (store/sqlite/connections.rs)
    // to see this fail.
    let held = r#"custodia_sqlite_write_seconds_count{kind="audit"}"#;
    let waited = r#"custodia_sqlite_write_wait_seconds_count{kind="audit"}"#;
    let before = scrape(&h).await;
    let (held_before, waited_before) = (sample(&before, held).unwrap_or(0.0), sample(&before, waited).unwrap_or(0.0));
    assert!(held_before >= 1.0, "the create's commit not timed as an audit turn:\n{before}");
    assert_eq!(h.get(&format!("/v1/customers/{id}"), ALICE).send().await.unwrap().status(), 200);
    let after = scrape(&h).await;
    assert!(sample(&after, held).is_some_and(|n| n > held_before), "audit commits not timed:\n{after}");
    assert!(sample(&after, waited).is_some_and(|n| n > waited_before), "audit waits not timed:\n{after}");
    metrics_count_what_happened(h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_happened_postgres() {
    let Some(db) = Db::postgres().await else { return };
    let h = with_metrics(db).await;
    metrics_count_what_happened(h).await;
}

/// The real binary: `--metrics-listen` serves the endpoint, and nothing else answers on it.
#[tokio::test]
async fn the_metrics_flag_serves_prometheus_text_on_its_own_address() {
    use tokio::io::AsyncBufReadExt;
    let dir = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_custodia"))
        .current_dir(ROOT)
        .env("CUSTODIA_DATABASE_URL", format!("sqlite://{}", dir.path().join("v.db").display()))
        .args(["serve", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut metrics, mut api) = (None, None);
    while let Some(line) = lines.next_line().await.unwrap() {
        if let Some(a) = line.strip_prefix("custodia metrics on ") {
            metrics = Some(a.to_owned());
        }
        if let Some(a) = line.strip_prefix("custodia listening on ") {
            api = Some(a.to_owned());
            break;
        }
    }
    let (metrics, api) = (metrics.expect("metrics address printed"), api.expect("api address printed"));
    let client = reqwest::Client::new();
    assert_eq!(client.get(format!("{api}/healthz")).send().await.unwrap().status(), 200);
    let text = client.get(&metrics).send().await.unwrap().text().await.unwrap();
    assert!(text.contains(r#"custodia_http_requests_total{route="/healthz",method="GET",status="200"} "#), "{text}");
    // The SQLite checkpointer's rounds (one every 100 ms; an idle WAL is caught up at once).
    // Remove the `metrics::counter!` in `spawn_checkpointer` (store/sqlite/connections.rs) to see
    // this fail.
    let synced = r#"custodia_sqlite_checkpoint_rounds_total{outcome="synced"}"#;
    let started = Instant::now();
    loop {
        let text = client.get(&metrics).send().await.unwrap().text().await.unwrap();
        if sample(&text, synced).is_some_and(|n| n > 0.0) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "no synced checkpoint round counted:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The customer index's lag, sampled after each turn of its thread (store/sqlite/links.rs):
    // caught up on an idle database.
    let lag = "custodia_sqlite_audit_index_lag_events";
    loop {
        let text = client.get(&metrics).send().await.unwrap().text().await.unwrap();
        if sample(&text, lag) == Some(0.0) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "no index lag sampled:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let base = metrics.trim_end_matches("/metrics");
    assert_eq!(client.get(format!("{base}/v1/customers")).send().await.unwrap().status(), 404);
    assert_eq!(client.get(format!("{api}/metrics")).send().await.unwrap().status(), 404, "metrics on the API port");
}

//! Key lifecycle and data-subject rights as an attacker (or an auditor) would test them:
//! rotation and rewrap without downtime, erasure that a backup cannot undo once the old key
//! version is retired, export, restriction, retention, and the read-only environment source.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use uuid::Uuid;

use crate::support::*;

const DSR: &str = "data_subject_request";

fn as_dsr(h: &Harness, method: reqwest::Method, path: &str, who: &str) -> reqwest::RequestBuilder {
    h.client.request(method, h.url(path)).bearer_auth(mint(who)).header("X-Purpose", DSR)
}

async fn wait_rewrapped(h: &Harness) -> Value {
    let started = Instant::now();
    loop {
        let status: Value = h
            .client
            .get(h.url("/v1/admin/keys"))
            .bearer_auth(mint(ROOT_ADMIN))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if status["rewrap_pending"] == 0 {
            return status;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "rewrap did not finish: {status}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

on_both! {
    async fn erasure_leaves_only_a_tombstone(h) {
        let id = h.create(individual("3201")).await;
        let other = h.create(individual("3201")).await;
        h.grant("ag", "agent", "32").await;
        h.grant("gd.manager", "account_manager", "44").await;
        let path = format!("/v1/customers/{id}");
        assert_eq!(as_dsr(&h, reqwest::Method::DELETE, &path, "ag").send().await.unwrap().status(), 403);
        assert_eq!(as_dsr(&h, reqwest::Method::DELETE, &path, "gd.manager").send().await.unwrap().status(), 404);
        let r = h.client.delete(h.url(&path)).bearer_auth(mint(ALICE)).header("X-Purpose", PURPOSE).send().await.unwrap();
        assert_eq!(r.status(), 403, "erasure needs the data_subject_request purpose");
        assert_eq!(as_dsr(&h, reqwest::Method::DELETE, &path, ALICE).send().await.unwrap().status(), 204);
        assert_eq!(h.get(&path, ALICE).send().await.unwrap().status(), 404);
        assert_eq!(as_dsr(&h, reqwest::Method::DELETE, &path, ALICE).send().await.unwrap().status(), 404);
        // Nothing of it is left but the tombstone; its neighbour is untouched.
        for table in ["customers WHERE id", "customer_fields WHERE customer_id", "blind_index WHERE customer_id"] {
            let n = h.scalar(&format!("SELECT count(*) FROM {table} = {}", id_literal(&h.db, id))).await;
            assert_eq!(n, 0, "{table}");
        }
        assert_eq!(h.scalar(&format!("SELECT count(*) FROM customer_tombstones WHERE id = {}", id_literal(&h.db, id))).await, 1);
        assert_eq!(h.get(&format!("/v1/customers/{other}"), ALICE).send().await.unwrap().status(), 200);
        let found: Value = h.post("/v1/customers/search", ALICE, &json!({"match": {"mobile": "13812345678"}})).send().await.unwrap().json().await.unwrap();
        let ids: Vec<&str> = found["items"].as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap()).collect();
        assert_eq!(ids, vec![other.to_string()]);
    }

    async fn export_gives_everything_to_the_data_subject_only(h) {
        let id = h.create(individual("3201")).await;
        h.grant("ag", "agent", "32").await;
        let path = format!("/v1/customers/{id}/export");
        // An export is a plaintext disclosure: without a justification (ticket reference) it
        // is refused, and a malformed one is neither accepted nor echoed.
        for bad in [None, Some(""), Some("<script>alert(1)</script>"), Some("x")] {
            let mut req = as_dsr(&h, reqwest::Method::GET, &path, ALICE);
            if let Some(j) = bad {
                req = req.header("X-Justification", j);
            }
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 422, "{bad:?}");
            let text = r.text().await.unwrap();
            assert!(!text.contains("13812345678") && !text.contains("<script>"), "{text}");
        }
        let r = as_dsr(&h, reqwest::Method::GET, &path, ALICE)
            .header("X-Justification", "DSR-2026-0042")
            .header("X-Request-Id", "export-1")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["cache-control"], "no-store");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["fields"], individual("3201")["fields"]);
        assert_eq!(v["id"], id.to_string());
        let r = h.get(&path, ALICE).header("X-Justification", "DSR-2026-0042").send().await.unwrap();
        assert_eq!(r.status(), 403, "export needs the data_subject_request purpose");
        let r = as_dsr(&h, reqwest::Method::GET, &path, "ag").header("X-Justification", "DSR-2026-0042").send().await.unwrap();
        assert_eq!(r.status(), 403, "export needs a role that policy allows to export");
        // The justification is recorded in the event.
        let n = h.scalar("SELECT count(*) FROM audit_events WHERE request_id = 'export-1' AND justification = 'DSR-2026-0042' AND action = 'customer.export'").await;
        assert_eq!(n, 1);
    }

    async fn exports_count_against_the_reveal_budget(h) {
        // The default budget is 20 plaintext disclosures per hour; exports spend it like reveals.
        let id = h.create(individual("3201")).await;
        let path = format!("/v1/customers/{id}/export");
        for i in 0..20 {
            let r = as_dsr(&h, reqwest::Method::GET, &path, ALICE).header("X-Justification", "DSR-1").send().await.unwrap();
            assert_eq!(r.status(), 200, "export {i}");
        }
        let r = as_dsr(&h, reqwest::Method::GET, &path, ALICE).header("X-Justification", "DSR-1").send().await.unwrap();
        assert_eq!(r.status(), 429);
        let text = r.text().await.unwrap();
        assert!(text.contains("rate_limited") && !text.contains("13812345678"), "{text}");
    }

    async fn restriction_limits_reads_to_legal_requests(h) {
        let id = h.create(individual("3201")).await;
        h.grant("ag", "agent", "32").await;
        h.grant("ro", "risk_officer", "32").await;
        let path = format!("/v1/customers/{id}");
        assert_eq!(as_dsr(&h, reqwest::Method::POST, &format!("{path}/restrict"), "ag").send().await.unwrap().status(), 403);
        let r = as_dsr(&h, reqwest::Method::POST, &format!("{path}/restrict"), ALICE).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.json::<Value>().await.unwrap()["status"], "restricted");
        let r = h.get(&path, "ag").send().await.unwrap();
        assert_eq!(r.status(), 403);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["code"], "customer_restricted");
        assert!(v.get("fields").is_none());
        // Reveal applies the same restriction as a read (it used to hand out plaintext here).
        let reveal = |purpose: &'static str| {
            h.client
                .post(h.url(&format!("{path}/reveal")))
                .bearer_auth(mint("ro"))
                .header("X-Purpose", purpose)
                .json(&json!({"fields": ["mobile", "resident_id"], "justification": "FRAUD-2026-7"}))
                .send()
        };
        let r = reveal("fraud_investigation").await.unwrap();
        assert_eq!(r.status(), 403);
        let text = r.text().await.unwrap();
        assert!(text.contains("customer_restricted") && !text.contains("13812345678") && !text.contains("11010519491231002X"), "{text}");
        // And so does export.
        let r = as_dsr(&h, reqwest::Method::GET, &format!("{path}/export"), ALICE).header("X-Justification", "DSR-9").send().await.unwrap();
        assert_eq!(r.status(), 403);
        // A legal request may still reveal, as it may read.
        let r = reveal("legal_request").await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(h.get(&path, ALICE).send().await.unwrap().status(), 403);
        let r = h.client.get(h.url(&path)).bearer_auth(mint("ro")).header("X-Purpose", "legal_request").send().await.unwrap();
        assert_eq!(r.status(), 200);
        let found: Value = h.post("/v1/customers/search", "ag", &json!({"match": {"mobile": "13812345678"}})).send().await.unwrap().json().await.unwrap();
        assert_eq!(found["items"], json!([]));
        assert_eq!(as_dsr(&h, reqwest::Method::POST, &format!("{path}/unrestrict"), ALICE).send().await.unwrap().status(), 200);
        assert_eq!(h.get(&path, "ag").send().await.unwrap().status(), 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_run_erases_closed_customers_past_the_period() {
    let h = Harness::start_with(Db::sqlite(), |c| {
        c.retention.periods.insert("individual.closed".into(), 365);
    })
    .await;
    let old = h.create(individual("3201")).await;
    let recent = h.create(individual("3201")).await;
    let active = h.create(individual("3201")).await;
    let long_ago = chrono::Utc::now() - chrono::Duration::days(400);
    for id in [old, recent] {
        h.sql("UPDATE customers SET status = 'closed' WHERE id = $1", &[Bind::Id(id)]).await;
    }
    for id in [old, active] {
        h.sql("UPDATE customers SET updated_at = $1 WHERE id = $2", &[Bind::Time(long_ago), Bind::Id(id)]).await;
    }
    assert_eq!(h.vault().run_retention().await.unwrap(), 1);
    assert_eq!(h.get(&format!("/v1/customers/{old}"), ALICE).send().await.unwrap().status(), 404);
    for id in [recent, active] {
        assert_eq!(h.get(&format!("/v1/customers/{id}"), ALICE).send().await.unwrap().status(), 200);
    }
    assert_eq!(
        h.scalar(
            "SELECT count(*) FROM audit_events WHERE principal = 'custodia:retention' AND action = 'customer.erase'"
        )
        .await,
        1
    );
}

/// Rotation through the API while serving; the background rewrap moves every data key; reads
/// and writes go on throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_and_background_rewrap() {
    let (_keys_dir, keys) = temp_keys();
    let h = Harness::start_with(Db::sqlite(), |c| c.keys_file = keys.clone()).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(h.create(individual("3201")).await);
    }
    h.grant_by(ROOT_ADMIN, "js.admin", "admin", "32", chrono::Utc::now() + chrono::Duration::hours(1)).await;
    for who in ["js.admin", ALICE] {
        let r = h.client.post(h.url("/v1/admin/keys/rotate")).bearer_auth(mint(who)).send().await.unwrap();
        assert_eq!(r.status(), 403, "{who} rotated the keys");
    }
    let r = h.client.post(h.url("/v1/admin/keys/rotate")).bearer_auth(mint(ROOT_ADMIN)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let status: Value = r.json().await.unwrap();
    assert_eq!(status["active_version"], 2);
    // New records use the new version at once; old ones keep reading while they move.
    ids.push(h.create(individual("3201")).await);
    for id in &ids {
        assert_eq!(h.get(&format!("/v1/customers/{id}"), ALICE).send().await.unwrap().status(), 200);
    }
    let status = wait_rewrapped(&h).await;
    assert_eq!(status["rewrap_progress"], 100.0);
    let v2 = status["versions"].as_array().unwrap().iter().find(|v| v["version"] == 2).unwrap().clone();
    assert_eq!((v2["state"].as_str(), v2["data_keys"].as_i64()), (Some("active"), Some(6)));
    assert!(std::fs::read_to_string(&keys).unwrap().contains("version = 2"));
}

/// The erased record stays unreadable in a copy of the database taken before the erasure,
/// once the key version it was wrapped under has been rotated away and retired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_survives_an_old_backup() {
    let (_keys_dir, keys) = temp_keys();
    let h = Harness::start_with(Db::sqlite(), |c| c.keys_file = keys.clone()).await;
    let erased = h.create(individual("3201")).await;
    let kept = h.create(individual("3201")).await;
    let Db::Sqlite { path, .. } = &h.db else { unreachable!() };
    let backup = path.with_file_name("backup.db");
    h.sql(&format!("VACUUM INTO '{}'", backup.display()), &[]).await;
    let r = h
        .client
        .delete(h.url(&format!("/v1/customers/{erased}")))
        .bearer_auth(mint(ALICE))
        .header("X-Purpose", DSR)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    // Rotate, rewrap everything left, retire the old version.
    let vault = h.vault();
    vault.rotate_keys_as("test").await.unwrap();
    vault.rewrap_all().await.unwrap();
    let refused = vault.retire_key_as("test", 2).await;
    assert!(refused.is_err(), "the active version cannot be retired");
    vault.retire_key_as("test", 1).await.unwrap();
    assert_eq!(h.get(&format!("/v1/customers/{kept}"), ALICE).send().await.unwrap().status(), 200);
    let text = std::fs::read_to_string(&keys).unwrap();
    assert!(!text.contains("NIQPheu"), "retired key material is still in the key file");
    // The backup, served with today's keys: the erased customer cannot be decrypted.
    let restored = Harness::start_with(Db::Sqlite { _dir: tempfile::tempdir().unwrap(), path: backup.clone() }, |c| {
        c.keys_file = keys.clone()
    })
    .await;
    let r = restored.get(&format!("/v1/customers/{erased}"), ALICE).send().await.unwrap();
    assert_eq!(r.status(), 500);
    let body = r.text().await.unwrap();
    assert!(body.contains("key_unavailable") && !body.contains("13812345678"), "{body}");
    // And directly: the wrapped data key in the backup names a retired version.
    let store = custodia::store::open(&format!("sqlite://{}", backup.display()), &Default::default()).await.unwrap();
    let record = store.customer(erased).await.unwrap().expect("the backup still holds the ciphertext");
    let ring = custodia::crypto::Keyring::load(&keys).unwrap();
    assert_eq!(
        ring.unwrap_data_key(erased, &record.wrapped_key).unwrap_err(),
        custodia::crypto::CryptoError::RetiredKeyVersion(1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_key_source_is_read_only() {
    let var = format!("CUSTODIA_TEST_KEYS_{}", Uuid::new_v4().simple());
    // The variable is unique to this test, so setting it races with nothing.
    std::env::set_var(&var, std::fs::read_to_string(root_path("keys-example/keys.toml")).unwrap());
    let h = Harness::start_with(Db::sqlite(), |c| {
        c.keys_env = Some(var.clone());
        c.keys_file = "/nonexistent/keys.toml".into();
    })
    .await;
    let id = h.create(individual("3201")).await;
    assert_eq!(h.get(&format!("/v1/customers/{id}"), ALICE).send().await.unwrap().status(), 200);
    let r = h.client.post(h.url("/v1/admin/keys/rotate")).bearer_auth(mint(ROOT_ADMIN)).send().await.unwrap();
    assert_eq!(r.status(), 409);
    let status: Value =
        h.client.get(h.url("/v1/admin/keys")).bearer_auth(mint(ROOT_ADMIN)).send().await.unwrap().json().await.unwrap();
    assert!(status["source"].as_str().unwrap().contains(&var));
}

/// Rotating the blind-index key: search keeps finding every record while re-indexing runs,
/// and after it, with the old index version retired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blind_index_rotation_and_reindex() {
    let (_keys_dir, keys) = temp_keys();
    let h = Harness::start_with(Db::sqlite(), |c| c.keys_file = keys.clone()).await;
    let before = h.create(individual("3201")).await;
    let search = || async {
        let v: Value = h
            .post("/v1/customers/search", ALICE, &json!({"match": {"mobile": "13812345678"}}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let mut ids: Vec<String> =
            v["items"].as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap().to_owned()).collect();
        ids.sort();
        ids
    };
    let vault = h.vault();
    assert_eq!(vault.rotate_index_as("test").await.unwrap(), 2);
    let after = h.create(individual("3201")).await;
    let mut both = vec![before.to_string(), after.to_string()];
    both.sort();
    // Old entries (version 1) and new ones (version 2) are both found.
    assert_eq!(search().await, both);
    let old_digest_rows = h.scalar("SELECT count(*) FROM blind_index WHERE key_version = 1").await;
    assert!(old_digest_rows > 0);
    assert!(vault.retire_old_index_as("test").await.is_err(), "retired while records still used it");
    assert_eq!(vault.reindex_all().await.unwrap(), 1);
    assert_eq!(h.scalar("SELECT count(*) FROM blind_index WHERE key_version = 1").await, 0);
    vault.retire_old_index_as("test").await.unwrap();
    assert_eq!(search().await, both);
    let status = vault.key_status_unchecked().await.unwrap();
    assert_eq!((status.index_version, status.index_versions.clone(), status.reindex_pending), (2, vec![2], 0));
}

/// The key-encryption keys in an HSM (SoftHSM through PKCS#11): they wrap and unwrap inside the
/// token, cannot be extracted, rotate and retire there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pkcs11_key_source_with_softhsm() {
    use custodia::crypto::KeySource;
    const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
    if !std::path::Path::new(MODULE).exists() {
        assert!(std::env::var("CI").is_err(), "SoftHSM must be installed in CI (.ci/run installs softhsm2)");
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "\n*** PKCS#11 test SKIPPED: install softhsm2 to run it ***\n");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::create_dir(&tokens).unwrap();
    let conf = dir.path().join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!("directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n", tokens.display()),
    )
    .unwrap();
    // Only this test uses SoftHSM, and it sets the variable before the module is loaded.
    std::env::set_var("SOFTHSM2_CONF", &conf);
    let out = std::process::Command::new("softhsm2-util")
        .args(["--init-token", "--free", "--label", "custodia-test", "--so-pin", "0000", "--pin", "1234"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::env::set_var("CUSTODIA_TEST_HSM_PIN", "1234");
    let source = custodia::crypto::pkcs11::Pkcs11Source::new(MODULE.into(), "custodia-test".into(), "1234".into());
    assert_eq!(source.rotate().unwrap(), 1);

    let h = Harness::start_with(Db::sqlite(), |c| {
        c.keys_pkcs11 = Some(custodia::config::Pkcs11Config {
            module: MODULE.into(),
            token_label: "custodia-test".into(),
            pin_env: "CUSTODIA_TEST_HSM_PIN".into(),
        });
    })
    .await;
    let id = h.create(individual("3201")).await;
    let v: Value = h.get(&format!("/v1/customers/{id}"), ALICE).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["fields"]["mobile"], "13812345678");
    let found: Value = h
        .post("/v1/customers/search", ALICE, &json!({"match": {"mobile": "13812345678"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(found["items"][0]["id"], id.to_string());
    // Rotate in the token through the API, rewrap, retire the first version there.
    let r = h.client.post(h.url("/v1/admin/keys/rotate")).bearer_auth(mint(ROOT_ADMIN)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["active_version"], 2);
    h.vault().rewrap_all().await.unwrap();
    h.vault().retire_key_as("test", 1).await.unwrap();
    let v: Value = h.get(&format!("/v1/customers/{id}"), ALICE).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["fields"]["mobile"], "13812345678");
    let status = h.vault().key_status_unchecked().await.unwrap();
    assert_eq!(status.versions.iter().map(|v| v.version).collect::<Vec<_>>(), vec![2]);
    assert!(status.source.contains("PKCS#11"));
    assert_eq!(h.scalar("SELECT count(*) FROM customers WHERE kek_version = 2").await, 1);
}

on_both! {
    async fn seeded_customers_are_real_records(h) {
        let ids = h.vault().seed(250, 7, "test").await.unwrap();
        assert_eq!(ids.len(), 250);
        for id in ids.iter().step_by(25) {
            let r = h.get(&format!("/v1/customers/{id}"), ALICE).send().await.unwrap();
            assert_eq!(r.status(), 200);
            let v: Value = r.json().await.unwrap();
            assert!(v["fields"]["mobile"].as_str().unwrap().len() == 11);
        }
        // Searchable through the blind index like any record.
        let v: Value = h.get(&format!("/v1/customers/{}", ids[0]), ALICE).send().await.unwrap().json().await.unwrap();
        let found: Value = h.post("/v1/customers/search", ALICE, &json!({"match": {"mobile": v["fields"]["mobile"]}})).send().await.unwrap().json().await.unwrap();
        assert!(found["items"].as_array().unwrap().iter().any(|i| i["id"] == ids[0].to_string()));
        assert_eq!(h.scalar("SELECT count(*) FROM audit_events WHERE action = 'customer.seed'").await, 1);
    }
}

//! Retries without duplicates: a write retried with the same `Idempotency-Key` and request
//! returns the first outcome and applies nothing; the same key with another request is 422;
//! concurrent retries apply once; keys are per principal and expire.
//!
//! The protection is `Vault::replay` and the key's primary key (migration 0008): remove the
//! `replay` call in `create_customer` (src/vault/customers.rs) and a retried create makes a
//! second customer; remove the key's insert (`remember` in the stores) and concurrent retries
//! each apply.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

const DSR: &str = "data_subject_request";

fn with_key(r: reqwest::RequestBuilder, key: &str) -> reqwest::RequestBuilder {
    r.header("Idempotency-Key", key)
}

async fn create_with_key(h: &Harness, who: &str, key: &str, body: &Value) -> (u16, Value) {
    let r = with_key(h.post("/v1/customers", who, body), key).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

async fn customers(h: &Harness) -> i64 {
    h.scalar("SELECT COUNT(*) FROM customers").await
}

on_both! {
    async fn a_retried_create_returns_the_first_customer_and_creates_nothing(h) {
        let body = individual("3201");
        let before = customers(&h).await;
        let (status, first) = create_with_key(&h, ALICE, "create-7f3a", &body).await;
        assert_eq!(status, 201, "{first}");
        let (status, again) = create_with_key(&h, ALICE, "create-7f3a", &body).await;
        assert_eq!(status, 201, "{again}");
        assert_eq!(again, first, "the retry answered another outcome");
        assert_eq!(customers(&h).await, before + 1, "the retry created a second customer");

        // The same key with another request: refused, the key not echoed.
        let mut other = body.clone();
        other["region"] = json!("3202");
        let r = with_key(h.post("/v1/customers", ALICE, &other), "create-7f3a").send().await.unwrap();
        assert_eq!(r.status(), 422);
        assert_eq!(r.headers()["content-type"], "application/problem+json");
        let text = r.text().await.unwrap();
        assert!(text.contains("idempotency_key_reused") && !text.contains("create-7f3a"), "{text}");
        assert_eq!(customers(&h).await, before + 1);

        // Keys are per principal: another principal's same key is its own.
        h.grant("bob", "account_manager", "32").await;
        let (status, bobs) = create_with_key(&h, "bob", "create-7f3a", &body).await;
        assert_eq!(status, 201, "{bobs}");
        assert_ne!(bobs["id"], first["id"]);
        assert_eq!(customers(&h).await, before + 2);
    }

    async fn concurrent_retries_with_one_key_apply_once(h) {
        let body = individual("3201");
        let before = customers(&h).await;
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let request = with_key(h.post("/v1/customers", ALICE, &body), "burst-1");
            tasks.push(tokio::spawn(async move {
                let r = request.send().await.unwrap();
                (r.status().as_u16(), r.json::<Value>().await.unwrap())
            }));
        }
        let mut ids = std::collections::BTreeSet::new();
        for t in tasks {
            let (status, v) = t.await.unwrap();
            assert_eq!(status, 201, "{v}");
            ids.insert(v["id"].as_str().unwrap().to_owned());
        }
        assert_eq!(ids.len(), 1, "concurrent retries answered different customers: {ids:?}");
        assert_eq!(customers(&h).await, before + 1, "concurrent retries created more than one customer");
    }

    async fn a_retried_update_erase_restrict_and_grant_apply_once(h) {
        let id = h.create(individual("3201")).await;
        let path = format!("/v1/customers/{id}");
        let change = json!({"vip_level": 3});
        let first = with_key(h.patch(&path, ALICE, 1, &change), "upd-1").send().await.unwrap();
        assert_eq!(first.status(), 200);
        let first: Value = first.json().await.unwrap();
        assert_eq!(first["version"], 2);
        // A retry with the stale If-Match it was sent with: the first outcome, not 412.
        let again = with_key(h.patch(&path, ALICE, 1, &change), "upd-1").send().await.unwrap();
        assert_eq!(again.status(), 200);
        assert_eq!(again.json::<Value>().await.unwrap(), first);
        let now: Value = h.get(&path, ALICE).send().await.unwrap().json().await.unwrap();
        assert_eq!(now["version"], 2, "the retried update applied twice");
        let other = with_key(h.patch(&path, ALICE, 1, &json!({"vip_level": 4})), "upd-1").send().await.unwrap();
        assert_eq!(other.status(), 422);

        let restrict = || {
            let r = h.client.post(h.url(&format!("{path}/restrict"))).bearer_auth(mint(ALICE)).header("X-Purpose", DSR);
            with_key(r, "restrict-1")
        };
        let first = restrict().send().await.unwrap();
        assert_eq!(first.status(), 200);
        let first: Value = first.json().await.unwrap();
        let again = restrict().send().await.unwrap();
        assert_eq!(again.status(), 200);
        assert_eq!(again.json::<Value>().await.unwrap(), first);
        let r = h.client.post(h.url(&format!("{path}/unrestrict"))).bearer_auth(mint(ALICE)).header("X-Purpose", DSR);
        assert_eq!(r.send().await.unwrap().status(), 200);

        let erase = || {
            let r = h.client.delete(h.url(&path)).bearer_auth(mint(ALICE)).header("X-Purpose", DSR);
            with_key(r, "erase-1")
        };
        assert_eq!(erase().send().await.unwrap().status(), 204);
        assert_eq!(erase().send().await.unwrap().status(), 204, "a retried erasure must answer as the first did");
        let r = h.client.delete(h.url(&path)).bearer_auth(mint(ALICE)).header("X-Purpose", DSR).send().await.unwrap();
        assert_eq!(r.status(), 404, "without the key, the record is gone");

        let expires = (chrono::Utc::now() + chrono::Duration::days(1)).to_rfc3339();
        let grant = json!({"principal": "carol", "role": "agent", "region": "3201", "expires_at": expires});
        let send = || {
            let r = h.client.post(h.url("/v1/grants")).bearer_auth(mint(ROOT_ADMIN)).json(&grant);
            with_key(r, "grant-1")
        };
        let first = send().send().await.unwrap();
        assert_eq!(first.status(), 201);
        let first: Value = first.json().await.unwrap();
        let again = send().send().await.unwrap();
        assert_eq!(again.status(), 201);
        assert_eq!(again.json::<Value>().await.unwrap()["id"], first["id"]);
        assert_eq!(h.scalar("SELECT COUNT(*) FROM grants WHERE principal = 'carol'").await, 1, "the retried grant applied twice");

        // Every request, replays included, left its audit event.
        let events = h.scalar("SELECT COUNT(*) FROM audit_events WHERE action = 'grant.create' AND status = 201").await;
        assert!(events >= 2, "{events} grant events");
    }

    async fn a_malformed_key_is_refused_and_audited(h) {
        for key in ["has space", &"k".repeat(256)] {
            let r = h
                .post("/v1/customers", ALICE, &individual("3201"))
                .header("Idempotency-Key", key)
                .header("x-request-id", "bad-key")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 400);
            let text = r.text().await.unwrap();
            assert!(text.contains("invalid_idempotency_key") && !text.contains("has space"), "{text}");
        }
        let rows = h.audit_rows("bad-key").await;
        assert_eq!(rows.len(), 2);
        assert!(rows.iter().all(|r| r.0 == "customer.create"), "{rows:?}");
    }
}

#[tokio::test]
async fn a_key_past_its_window_is_a_new_request() {
    let h = Harness::start_with(Db::sqlite(), |c| c.idempotency_window_seconds = 1).await;
    let body = individual("3201");
    let (_, first) = create_with_key(&h, ALICE, "short-lived", &body).await;
    let (_, again) = create_with_key(&h, ALICE, "short-lived", &body).await;
    assert_eq!(again["id"], first["id"]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, later) = create_with_key(&h, ALICE, "short-lived", &body).await;
    assert_eq!(status, 201, "{later}");
    assert_ne!(later["id"], first["id"], "an expired key still replayed");
    // And the new write took the key over: its retry replays the new outcome.
    let (_, retry) = create_with_key(&h, ALICE, "short-lived", &body).await;
    assert_eq!(retry["id"], later["id"]);
}

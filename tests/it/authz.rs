//! Tiered authorization as an attacker tries it (threats §2–4): a role × scope × action
//! matrix, purposes, cross-city and cross-province access, delegation beyond scope, role or
//! expiry, separation of duties, revocation and expiry — also across two instances.

use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::support::*;

const SCOPES: [&str; 3] = ["CN", "32", "3201"];
const CITIES: [&str; 3] = ["3201", "3202", "4401"];

/// The purpose each role states in the matrix.
fn purpose_of(role: &str) -> &'static str {
    match role {
        "marketing" => "marketing",
        "risk_officer" => "fraud_investigation",
        _ => "customer_service",
    }
}

/// Whether `scope` contains `city` (independent of the vault's own code).
fn covers(scope: &str, city: &str) -> bool {
    scope == "CN" || city.starts_with(scope)
}

async fn call(
    h: &Harness,
    method: reqwest::Method,
    path: &str,
    sub: &str,
    purpose: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = h.client.request(method, h.url(path)).bearer_auth(mint(sub));
    if let Some(p) = purpose {
        req = req.header("X-Purpose", p);
    }
    if let Some(b) = body {
        req = req.header("If-Match", "\"999\"").json(&b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn read_status(h: &Harness, sub: &str, id: Uuid) -> u16 {
    call(h, reqwest::Method::GET, &format!("/v1/customers/{id}"), sub, Some(PURPOSE), None).await.0
}

fn customer_in(city: &str) -> Value {
    individual(city)
}

on_both! {
    async fn role_scope_action_matrix(h) {
        let mut customers = Vec::new();
        for city in CITIES {
            customers.push((city, h.create(customer_in(city)).await));
        }
        for role in ROLES {
            for scope in SCOPES {
                let who = format!("{role}.{scope}");
                h.grant(&who, role, scope).await;
                let purpose = purpose_of(role);
                let reads = ["agent", "account_manager", "marketing", "risk_officer", "crm_service"].contains(&role);
                let writes = role == "account_manager";
                for (city, id) in &customers {
                    let path = format!("/v1/customers/{id}");
                    let (status, body) = call(&h, reqwest::Method::GET, &path, &who, Some(purpose), None).await;
                    let expected = if !reads { 403 } else if covers(scope, city) { 200 } else { 404 };
                    assert_eq!(status, expected, "{who} reading a customer of {city}: {body}");
                    if status == 200 {
                        assert_eq!(body["region"], *city);
                    } else {
                        assert!(body.get("fields").is_none() && body.get("region").is_none(), "leak: {body}");
                    }
                    let (status, body) = call(&h, reqwest::Method::PATCH, &path, &who, Some(purpose), Some(json!({"vip_level": 1}))).await;
                    // 412: authorized, then stopped by the deliberately stale If-Match.
                    let expected = if !writes { 403 } else if covers(scope, city) { 412 } else { 404 };
                    assert_eq!(status, expected, "{who} updating a customer of {city}: {body}");
                }
                let (status, body) = call(&h, reqwest::Method::POST, "/v1/customers", &who, Some(purpose), None).await;
                assert!(status == 400 || status == 403 || status == 415, "{who}: {status} {body}");
                let r = h.client.post(h.url("/v1/customers")).bearer_auth(mint(&who)).header("X-Purpose", purpose)
                    .json(&customer_in("3201")).send().await.unwrap();
                let status = r.status().as_u16();
                let body: Value = r.json().await.unwrap();
                let expected = if !writes { 403 } else if covers(scope, "3201") { 201 } else { 403 };
                assert_eq!(status, expected, "{who} creating in 3201: {body}");
                if status == 403 && writes {
                    assert_eq!(body["code"], "region_out_of_scope");
                }
            }
        }
    }

    async fn out_of_scope_is_indistinguishable_from_missing(h) {
        let gd = h.create(customer_in("4401")).await;
        h.grant("js.agent", "agent", "32").await;
        let (s1, out_of_scope) = call(&h, reqwest::Method::GET, &format!("/v1/customers/{gd}"), "js.agent", Some(PURPOSE), None).await;
        let (s2, missing) = call(&h, reqwest::Method::GET, &format!("/v1/customers/{}", Uuid::now_v7()), "js.agent", Some(PURPOSE), None).await;
        assert_eq!((s1, s2), (404, 404));
        assert_eq!(out_of_scope, missing);
        // Cross-city inside one province, by a city-level grant.
        let wx = h.create(customer_in("3202")).await;
        h.grant("nj.manager", "account_manager", "3201").await;
        assert_eq!(read_status(&h, "nj.manager", wx).await, 404);
        let r = h.patch(&format!("/v1/customers/{wx}"), "nj.manager", 1, &json!({"vip_level": 5})).send().await.unwrap();
        assert_eq!(r.status(), 404);
        // Nothing changed.
        let got: Value = h.get(&format!("/v1/customers/{wx}"), ALICE).send().await.unwrap().json().await.unwrap();
        assert_eq!(got["version"], 1);
    }

    async fn purposes_are_required_and_limited(h) {
        let id = h.create(customer_in("3201")).await;
        h.grant("p.agent", "agent", "32").await;
        let path = format!("/v1/customers/{id}");
        let code = |v: &Value| v["code"].as_str().unwrap_or_default().to_owned();
        let (s, v) = call(&h, reqwest::Method::GET, &path, "p.agent", None, None).await;
        assert_eq!((s, code(&v).as_str()), (403, "purpose_required"));
        for bad in ["marketing", "fraud_investigation", "hacking", "administration", "audit", "customer service", "Customer_Service"] {
            let (s, v) = call(&h, reqwest::Method::GET, &path, "p.agent", Some(bad), None).await;
            assert_eq!((s, code(&v).as_str()), (403, "purpose_not_allowed"), "{bad}");
            assert!(!v.to_string().contains(bad) || bad == "marketing" && !v.to_string().contains("\"marketing\""), "purpose echoed");
        }
        assert_eq!(call(&h, reqwest::Method::GET, &path, "p.agent", Some("customer_service"), None).await.0, 200);
        // A principal with no grant at all, with a valid token.
        let (s, v) = call(&h, reqwest::Method::GET, &path, "nobody", Some(PURPOSE), None).await;
        assert_eq!((s, code(&v).as_str()), (403, "forbidden"));
    }

    async fn administrators_and_auditors_read_no_pii(h) {
        let id = h.create(customer_in("3201")).await;
        h.grant("so", "security_officer", "CN").await;
        for who in [ROOT_ADMIN, "so"] {
            for purpose in ["customer_service", "data_subject_request", "legal_request", "fraud_investigation"] {
                let (s, v) = call(&h, reqwest::Method::GET, &format!("/v1/customers/{id}"), who, Some(purpose), None).await;
                assert_eq!((s, v["code"].as_str().unwrap()), (403, "forbidden"), "{who} {purpose}");
                assert!(v.get("fields").is_none());
            }
        }
        // A security officer manages nothing…
        let body = json!({"principal": "mole", "role": "agent", "region": "32", "expires_at": (Utc::now() + chrono::Duration::hours(1)).to_rfc3339()});
        let r = h.client.post(h.url("/v1/grants")).bearer_auth(mint("so")).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 403);
        let grant = h.grant("victim", "agent", "32").await;
        let r = h.client.delete(h.url(&format!("/v1/grants/{grant}"))).bearer_auth(mint("so")).send().await.unwrap();
        assert_eq!(r.status(), 403);
        let r = h.client.post(h.url("/v1/principals/victim/revoke-tokens")).bearer_auth(mint("so")).send().await.unwrap();
        assert_eq!(r.status(), 403);
        // …but reviews grants.
        let r = h.client.get(h.url("/v1/grants")).bearer_auth(mint("so")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        // And data roles manage nothing.
        let r = h.client.post(h.url("/v1/grants")).bearer_auth(mint(ALICE)).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 403);
    }

    async fn delegation_stays_within_scope_role_and_expiry(h) {
        let now = Utc::now();
        let hours = |n: i64| now + chrono::Duration::hours(n);
        let post = |by: &'static str, principal: &str, role: &str, region: &str, expires: Option<String>| {
            let mut body = json!({"principal": principal, "role": role, "region": region});
            if let Some(e) = expires {
                body["expires_at"] = json!(e);
            }
            h.client.post(h.url("/v1/grants")).bearer_auth(mint(by)).json(&body).send()
        };
        async fn outcome(r: reqwest::Response) -> (u16, String) {
            let s = r.status().as_u16();
            let v: Value = r.json().await.unwrap();
            (s, v["code"].as_str().unwrap_or_default().to_owned())
        }
        // HQ → province → city → agent.
        h.grant_by(ROOT_ADMIN, "prov.admin", "admin", "32", hours(4)).await;
        h.grant_by("prov.admin", "city.admin", "admin", "3201", hours(2)).await;
        h.grant_by("city.admin", "nj.agent", "agent", "3201", hours(1)).await;
        let nj = h.create(customer_in("3201")).await;
        let wx = h.create(customer_in("3202")).await;
        assert_eq!(read_status(&h, "nj.agent", nj).await, 200);
        assert_eq!(read_status(&h, "nj.agent", wx).await, 404);

        // Outside one's subtree.
        for (by, region) in [("prov.admin", "44"), ("prov.admin", "4401"), ("prov.admin", "CN"), ("city.admin", "32"), ("city.admin", "3202")] {
            let r = post(by, "x.agent", "agent", region, Some(hours(1).to_rfc3339())).await.unwrap();
            assert_eq!(outcome(r).await, (403, "region_out_of_scope".into()), "{by} at {region}");
        }
        // Beyond one's own expiry, without expiry, in the past, malformed.
        let r = post("prov.admin", "x.agent", "agent", "32", Some(hours(5).to_rfc3339())).await.unwrap();
        assert_eq!(outcome(r).await, (403, "delegation_expiry_exceeded".into()));
        let r = post("prov.admin", "x.agent", "agent", "32", None).await.unwrap();
        assert_eq!(outcome(r).await, (422, "validation_failed".into()));
        let r = post("prov.admin", "x.agent", "agent", "32", Some((now - chrono::Duration::minutes(1)).to_rfc3339())).await.unwrap();
        assert_eq!(outcome(r).await, (422, "validation_failed".into()));
        let r = post("prov.admin", "x.agent", "agent", "32", Some("tomorrow".into())).await.unwrap();
        assert_eq!(outcome(r).await, (422, "validation_failed".into()));
        let r = post("prov.admin", "x.agent", "superuser", "32", Some(hours(1).to_rfc3339())).await.unwrap();
        assert_eq!(outcome(r).await, (422, "validation_failed".into()));
        // A role one's policy does not let one hand out.
        h.grant_by(ROOT_ADMIN, "loc.admin", "local_admin", "32", hours(4)).await;
        for role in ["risk_officer", "admin", "local_admin", "security_officer"] {
            let r = post("loc.admin", "x.other", role, "32", Some(hours(1).to_rfc3339())).await.unwrap();
            assert_eq!(outcome(r).await, (403, "delegation_role_not_allowed".into()), "{role}");
        }
        h.grant_by("loc.admin", "loc.agent", "agent", "3202", hours(1)).await;
        // Re-delegating without grant management at all.
        let r = post("nj.agent", "nj.agent2", "agent", "3201", Some(hours(1).to_rfc3339())).await.unwrap();
        assert_eq!(outcome(r).await, (403, "forbidden".into()));
        // Granting to oneself.
        let r = post("prov.admin", "prov.admin", "agent", "32", Some(hours(1).to_rfc3339())).await.unwrap();
        assert_eq!(outcome(r).await, (403, "self_grant".into()));
        // Separation of duties: an administrator may not also hold a data or audit role.
        let r = post(ROOT_ADMIN, "city.admin", "agent", "3201", Some(hours(1).to_rfc3339())).await.unwrap();
        assert_eq!(outcome(r).await, (409, "separation_of_duties".into()));
        let r = post(ROOT_OFFICER, "nj.agent", "security_officer", "CN", Some(hours(1).to_rfc3339())).await.unwrap();
        assert_eq!(outcome(r).await, (409, "separation_of_duties".into()));
        // Auditors are not appointed by the audited: no administrator may hand out
        // security_officer, at any level.
        for admin in [ROOT_ADMIN, "prov.admin", "loc.admin"] {
            let r = post(admin, "x.auditor", "security_officer", "32", Some(hours(1).to_rfc3339())).await.unwrap();
            assert_eq!(outcome(r).await, (403, "delegation_role_not_allowed".into()), "{admin}");
        }
    }

    async fn revocation_and_expiry_cascade(h) {
        let now = Utc::now();
        let prov = h.grant_by(ROOT_ADMIN, "prov.admin", "admin", "32", now + chrono::Duration::hours(4)).await;
        h.grant_by("prov.admin", "city.admin", "admin", "3201", now + chrono::Duration::hours(2)).await;
        h.grant_by("city.admin", "nj.agent", "agent", "3201", now + chrono::Duration::hours(1)).await;
        let nj = h.create(customer_in("3201")).await;
        assert_eq!(read_status(&h, "nj.agent", nj).await, 200);
        // A province admin cannot revoke outside its scope; unknown ids look the same.
        let gd = h.grant("gd.agent", "agent", "44").await;
        for id in [gd, Uuid::now_v7()] {
            let r = h.client.delete(h.url(&format!("/v1/grants/{id}"))).bearer_auth(mint("prov.admin")).send().await.unwrap();
            assert_eq!(r.status(), 404);
        }
        let r = h.client.delete(h.url("/v1/grants/not-a-uuid")).bearer_auth(mint("prov.admin")).send().await.unwrap();
        assert_eq!(r.status(), 404);
        // Revoking the province admin's grant disables everything delegated under it.
        let r = h.client.delete(h.url(&format!("/v1/grants/{prov}"))).bearer_auth(mint(ROOT_ADMIN)).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["status"], "revoked");
        assert_eq!(read_status(&h, "nj.agent", nj).await, 403);
        let body = json!({"principal": "late.agent", "role": "agent", "region": "3201", "expires_at": (now + chrono::Duration::minutes(30)).to_rfc3339()});
        let r = h.client.post(h.url("/v1/grants")).bearer_auth(mint("city.admin")).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 403);
        let list: Value = h.client.get(h.url("/v1/grants?principal=nj.agent")).bearer_auth(mint(ROOT_ADMIN)).send().await.unwrap().json().await.unwrap();
        assert_eq!(list["items"][0]["status"], "suspended");

        // Expiry: a grant that runs out stops working without any write.
        h.grant_by(ROOT_ADMIN, "brief.agent", "agent", "32", Utc::now() + chrono::Duration::seconds(2)).await;
        assert_eq!(read_status(&h, "brief.agent", nj).await, 200);
        tokio::time::sleep(Duration::from_millis(2300)).await;
        assert_eq!(read_status(&h, "brief.agent", nj).await, 403);
    }

    async fn grant_listing_is_scoped_in_sql_and_paginated(h) {
        h.grant("a.3201", "agent", "3201").await;
        h.grant("a.3202", "agent", "3202").await;
        h.grant("a.32", "agent", "32").await;
        h.grant("a.4401", "agent", "4401").await;
        h.grant("a.44", "agent", "44").await;
        h.grant_by(ROOT_ADMIN, "js.admin", "admin", "32", Utc::now() + chrono::Duration::hours(1)).await;
        let list = |sub: &'static str, query: &str| {
            let (client, url) = (h.client.clone(), h.url(&format!("/v1/grants{query}")));
            async move { client.get(url).bearer_auth(mint(sub)).send().await.unwrap().json::<Value>().await.unwrap() }
        };
        let regions = |v: &Value| {
            let mut r: Vec<String> = v["items"].as_array().unwrap().iter().map(|g| g["region"].as_str().unwrap().to_owned()).collect();
            r.sort();
            r
        };
        assert_eq!(regions(&list("js.admin", "").await), vec!["32", "32", "3201", "3202"]);
        assert_eq!(regions(&list(ROOT_ADMIN, "").await).len(), 9, "eight grants and the root officer's");
        // Pages of one, following the cursor, visit each visible grant once.
        let mut seen = Vec::new();
        let mut query = "?page_size=1".to_owned();
        loop {
            let page = list("js.admin", &query).await;
            assert!(page["items"].as_array().unwrap().len() <= 1);
            seen.extend(page["items"].as_array().unwrap().iter().map(|g| g["id"].as_str().unwrap().to_owned()));
            match page["next_cursor"].as_str() {
                Some(c) => query = format!("?page_size=1&cursor={c}"),
                None => break,
            }
        }
        assert_eq!(seen.len(), 4);
        // Bad parameters are refused without echo.
        for q in ["?cursor=xyz", "?page_size=many", "?evil=1"] {
            let r = h.client.get(h.url(&format!("/v1/grants{q}"))).bearer_auth(mint("js.admin")).send().await.unwrap();
            assert_eq!(r.status(), 400, "{q}");
        }
        // Data roles cannot list grants.
        let r = h.client.get(h.url("/v1/grants")).bearer_auth(mint("a.32")).send().await.unwrap();
        assert_eq!(r.status(), 403);
    }

    async fn token_revocation(h) {
        let id = h.create(customer_in("3201")).await;
        h.grant("victim", "agent", "32").await;
        h.grant("gd.victim", "agent", "44").await;
        h.grant_by(ROOT_ADMIN, "js.admin", "admin", "32", Utc::now() + chrono::Duration::hours(1)).await;
        let old = mint("victim");
        let read = |token: String| {
            let (client, url) = (h.client.clone(), h.url(&format!("/v1/customers/{id}")));
            async move { client.get(url).bearer_auth(token).header("X-Purpose", PURPOSE).send().await.unwrap() }
        };
        assert_eq!(read(old.clone()).await.status(), 200);
        // Only an administrator whose scope covers the principal's grants may do it.
        let r = h.client.post(h.url("/v1/principals/gd.victim/revoke-tokens")).bearer_auth(mint("js.admin")).send().await.unwrap();
        assert_eq!(r.status(), 403);
        let r = h.client.post(h.url("/v1/principals/victim/revoke-tokens")).bearer_auth(mint("victim")).send().await.unwrap();
        assert_eq!(r.status(), 403);
        let r = h.client.post(h.url("/v1/principals/victim/revoke-tokens")).bearer_auth(mint("js.admin")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let r = read(old.clone()).await;
        assert_eq!(r.status(), 401);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["code"], "token_revoked");
        // Tokens issued afterwards work (iat has one-second resolution).
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(read(mint("victim")).await.status(), 200);
        assert_eq!(read(old).await.status(), 401);
    }

    async fn changes_reach_every_instance_within_a_second(h) {
        let other = h.another_instance().await;
        let other_url = format!("http://{}", other.addr);
        let id = h.create(customer_in("3201")).await;
        // Tokens are minted once, before the changes, as a client would hold them.
        let (roamer, roamer2) = (mint("roamer"), mint("roamer2"));
        let read_on = |base: String, token: &String| {
            let (client, token) = (h.client.clone(), token.clone());
            async move {
                client.get(format!("{base}/v1/customers/{id}")).bearer_auth(token).header("X-Purpose", PURPOSE)
                    .send().await.unwrap().status().as_u16()
            }
        };
        async fn within_a_second<F: std::future::Future<Output = u16>>(expected: u16, mut probe: impl FnMut() -> F) -> Duration {
            let started = Instant::now();
            loop {
                if probe().await == expected {
                    return started.elapsed();
                }
                assert!(started.elapsed() < Duration::from_secs(1), "change not seen within a second");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        assert_eq!(read_on(other_url.clone(), &roamer).await, 403);
        // Granted through the first instance, usable on the second.
        let grant = h.grant("roamer", "agent", "32").await;
        within_a_second(200, || read_on(other_url.clone(), &roamer)).await;
        // Revoked through the second instance, refused on the first.
        let r = h.client.delete(format!("{other_url}/v1/grants/{grant}")).bearer_auth(mint(ROOT_ADMIN)).send().await.unwrap();
        assert_eq!(r.status(), 200);
        within_a_second(403, || read_on(h.base.clone(), &roamer)).await;
        // Token revocation likewise.
        h.grant("roamer2", "agent", "32").await;
        within_a_second(200, || read_on(other_url.clone(), &roamer2)).await;
        let r = h.client.post(h.url("/v1/principals/roamer2/revoke-tokens")).bearer_auth(mint(ROOT_ADMIN)).send().await.unwrap();
        assert_eq!(r.status(), 200);
        within_a_second(401, || read_on(other_url.clone(), &roamer2)).await;
        other.stop().await.unwrap();
    }
}

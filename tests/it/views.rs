//! Field-level views as an attacker tries to get around them (threats §5): the role × field
//! view matrix, minimum-necessary selection, justified and rate-limited reveal, exact-match
//! search and batch fetch inside scope only, no pattern search, no unkeyed hashes at rest.

use serde_json::{json, Value};
use uuid::Uuid;

use crate::support::*;

const PURPOSES: [(&str, &str); 5] = [
    ("agent", "customer_service"),
    ("account_manager", "customer_service"),
    ("marketing", "marketing"),
    ("risk_officer", "fraud_investigation"),
    ("crm_service", "customer_service"),
];

/// What each data role sees of `individual("3201")` (None: absent).
fn expected(role: &str, field: &str) -> Option<&'static str> {
    let plain = |f: &str| match f {
        "name" => "欧阳娜娜",
        "mobile" => "13812345678",
        "email" => "nana@example.cn",
        "address" => "江苏省南京市玄武区中山路1号",
        _ => unreachable!(),
    };
    let masked = |f: &str| match f {
        "name" => "欧阳**",
        "mobile" => "138****5678",
        "email" => "n***@example.cn",
        "address" => "江苏省南京市玄武区****",
        "resident_id" => "110***********002X",
        "birth_date" => "1949-**-**",
        "bank_card" => "622202*********0128",
        _ => unreachable!(),
    };
    let contact = ["name", "mobile", "email", "address"].contains(&field);
    match (role, field) {
        ("agent", "birth_date" | "bank_card") => None,
        ("agent", f) => Some(masked(f)),
        ("account_manager", f) if contact => Some(plain(f)),
        ("account_manager", f) => Some(masked(f)),
        ("marketing", "resident_id" | "bank_card") => None,
        ("marketing", f) => Some(masked(f)),
        ("risk_officer", f) => Some(masked(f)),
        ("crm_service", "birth_date") => None,
        ("crm_service", f) if contact => Some(plain(f)),
        ("crm_service", f) => Some(masked(f)),
        _ => None,
    }
}

async fn send(h: &Harness, req: reqwest::RequestBuilder) -> (u16, Value, reqwest::header::HeaderMap) {
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    let _ = h;
    (status, serde_json::from_str(&text).unwrap_or(Value::Null), headers)
}

fn as_role(h: &Harness, method: reqwest::Method, path: &str, who: &str, purpose: &str) -> reqwest::RequestBuilder {
    h.client.request(method, h.url(path)).bearer_auth(mint(who)).header("X-Purpose", purpose)
}

on_both! {
    async fn role_field_view_matrix(h) {
        let id = h.create(individual("3201")).await;
        for (role, purpose) in PURPOSES {
            let who = format!("{role}.js");
            h.grant(&who, role, "32").await;
            let (status, v, headers) = send(&h, as_role(&h, reqwest::Method::GET, &format!("/v1/customers/{id}"), &who, purpose)).await;
            assert_eq!(status, 200, "{role}: {v}");
            assert_eq!(headers["cache-control"], "no-store");
            for field in ["name", "mobile", "email", "address", "resident_id", "birth_date", "bank_card"] {
                assert_eq!(v["fields"].get(field).and_then(Value::as_str), expected(role, field), "{role} sees {field}");
                let view = v["views"].get(field).and_then(Value::as_str);
                match expected(role, field) {
                    None => assert_eq!(view, None),
                    Some(shown) => assert_eq!(view == Some("plain"), shown == individual("3201")["fields"][field], "{role} {field}"),
                }
            }
        }
    }

    async fn minimum_necessary_fields(h) {
        let id = h.create(individual("3201")).await;
        h.grant("mk", "marketing", "32").await;
        let get = |q: &str, who: &str, purpose: &str| as_role(&h, reqwest::Method::GET, &format!("/v1/customers/{id}{q}"), who, purpose);
        let (s, v, _) = send(&h, get("?fields=name,mobile", ALICE, PURPOSE)).await;
        assert_eq!(s, 200);
        let keys: Vec<&String> = v["fields"].as_object().unwrap().keys().collect();
        assert_eq!(keys, vec!["mobile", "name"]);
        // A hidden field asked for by name is refused outright (403, naming no value), not
        // silently dropped: the caller learns its request was beyond its views.
        for q in ["?fields=resident_id,bank_card", "?fields=name,resident_id"] {
            let r = get(q, "mk", "marketing").header("X-Request-Id", "hidden-ask").send().await.unwrap();
            assert_eq!(r.status(), 403, "{q}");
            let text = r.text().await.unwrap();
            let v: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v["code"], "field_not_visible");
            assert!(!text.contains("11010519491231002X") && !text.contains("欧阳") && v.get("fields").is_none(), "{text}");
        }
        let rows = h.audit_rows("hidden-ask").await;
        assert!(rows.iter().all(|r| r.0 == "customer.read" && r.1 == "denied" && r.4 == "[]"), "{rows:?}");
        for q in ["?fields=hobby", "?fields=", "?fields=name,,mobile", "?fields=name&fields=mobile", "?sort=mobile"] {
            let (s, v, _) = send(&h, get(q, ALICE, PURPOSE)).await;
            assert!(s == 400 || s == 422, "{q}: {s} {v}");
            assert!(!v.to_string().contains("hobby"));
        }
    }

    async fn justified_reveal(h) {
        let js = h.create(individual("3201")).await;
        let gd = h.create(individual("4401")).await;
        h.grant("ro", "risk_officer", "32").await;
        h.grant("ag", "agent", "32").await;
        let reveal = |who: &str, purpose: &str, id: Uuid, body: Value| {
            as_role(&h, reqwest::Method::POST, &format!("/v1/customers/{id}/reveal"), who, purpose).json(&body)
        };
        let body = json!({"fields": ["resident_id", "bank_card"], "justification": "FRAUD-2026-00042"});
        let (s, v, headers) = send(&h, reveal("ro", "fraud_investigation", js, body.clone())).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(headers["cache-control"], "no-store");
        assert_eq!(v["fields"], json!({"resident_id": "11010519491231002X", "bank_card": "6222021234567890128"}));
        // Out of scope looks missing; a role without reveal, or the wrong purpose, is refused.
        assert_eq!(send(&h, reveal("ro", "fraud_investigation", gd, body.clone())).await.0, 404);
        let (s, v, _) = send(&h, reveal("ag", "customer_service", js, body.clone())).await;
        assert_eq!((s, v["code"].as_str().unwrap()), (403, "forbidden"));
        let (s, v, _) = send(&h, reveal("ro", "customer_service", js, body.clone())).await;
        assert_eq!((s, v["code"].as_str().unwrap()), (403, "purpose_not_allowed"));
        let (s, v, _) = send(&h, reveal(ALICE, "customer_service", js, body.clone())).await;
        assert_eq!((s, v["code"].as_str().unwrap()), (403, "forbidden"));
        // The justification is required and is a ticket reference, not free text.
        for j in [json!(null), json!(""), json!("x"), json!("because I want to"), json!("A".repeat(65)), json!("TICKET\n1")] {
            let (s, v, _) = send(&h, reveal("ro", "fraud_investigation", js, json!({"fields": ["mobile"], "justification": j}))).await;
            assert_eq!((s, v["errors"][0]["field"].as_str().unwrap()), (422, "justification"), "{j}");
            assert!(!v.to_string().contains("because"));
        }
        let (s, _, _) = send(&h, reveal("ro", "fraud_investigation", js, json!({"fields": ["hobby"], "justification": "T-1"}))).await;
        assert_eq!(s, 422);
    }

    async fn search_finds_exact_values_in_scope_only(h) {
        let js = h.create(individual("3201")).await;
        let gd = h.create(individual("4401")).await;
        let ent = h.create(json!({"region": "3202", "kind": "enterprise", "fields": {"company_name": "某某科技有限公司", "credit_code": "91350100M000100Y43", "mobile": "13912345678"}})).await;
        h.grant("ag.js", "agent", "32").await;
        let search = |who: &str, body: Value| as_role(&h, reqwest::Method::POST, "/v1/customers/search", who, PURPOSE).json(&body);
        let ids = |v: &Value| -> Vec<String> { v["items"].as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap().to_owned()).collect() };

        // Each searchable field, with input normalised the way writes are.
        for m in [json!({"mobile": "+86 138-1234-5678"}), json!({"resident_id": "11010519491231002x"}), json!({"email": "nana@EXAMPLE.cn"}),
                  json!({"mobile": "13812345678", "resident_id": "11010519491231002X"})] {
            let (s, v, headers) = send(&h, search("ag.js", json!({"match": m}))).await;
            assert_eq!(s, 200, "{v}");
            assert_eq!(headers["cache-control"], "no-store");
            assert_eq!(ids(&v), vec![js.to_string()], "{m}");
            // Results are masked per view.
            assert_eq!(v["items"][0]["fields"]["mobile"], "138****5678");
        }
        let (_, v, _) = send(&h, search("ag.js", json!({"match": {"credit_code": "91350100M000100Y43"}}))).await;
        assert_eq!(ids(&v), vec![ent.to_string()]);
        // HQ sees both namesakes; filters narrow in SQL.
        let (_, v, _) = send(&h, search(ALICE, json!({"match": {"mobile": "13812345678"}}))).await;
        let mut both = vec![js.to_string(), gd.to_string()];
        both.sort();
        let mut found = ids(&v);
        found.sort();
        assert_eq!(found, both);
        let (_, v, _) = send(&h, search(ALICE, json!({"match": {"mobile": "13812345678"}, "region": "44"}))).await;
        assert_eq!(ids(&v), vec![gd.to_string()]);
        let (_, v, _) = send(&h, search(ALICE, json!({"match": {"mobile": "13812345678"}, "kind": "enterprise"}))).await;
        assert!(ids(&v).is_empty());
        let (_, v, _) = send(&h, search(ALICE, json!({"match": {"mobile": "13812345678"}, "status": "closed"}))).await;
        assert!(ids(&v).is_empty());
        // A region filter cannot widen the caller's scope.
        let (_, v, _) = send(&h, search("ag.js", json!({"match": {"mobile": "13812345678"}, "region": "44"}))).await;
        assert!(ids(&v).is_empty());
        // Pagination by cursor, one at a time.
        let (_, p1, _) = send(&h, search(ALICE, json!({"match": {"mobile": "13812345678"}, "page_size": 1}))).await;
        let cursor = p1["next_cursor"].as_str().unwrap().to_owned();
        let (_, p2, _) = send(&h, search(ALICE, json!({"match": {"mobile": "13812345678"}, "page_size": 1, "cursor": cursor}))).await;
        assert_eq!(p2["next_cursor"], Value::Null);
        let mut paged = [ids(&p1), ids(&p2)].concat();
        paged.sort();
        assert_eq!(paged, both);
    }

    async fn no_pattern_range_or_ordering_search(h) {
        h.create(individual("3201")).await;
        let search = |body: Value| as_role(&h, reqwest::Method::POST, "/v1/customers/search", ALICE, PURPOSE).json(&body);
        for body in [
            json!({"match": {"mobile": "138*"}}),
            json!({"match": {"mobile": "138%"}}),
            json!({"match": {"mobile": "138????5678"}}),
            json!({"match": {"mobile": {"gte": "13800000000"}}}),
            json!({"match": {"mobile": ["13812345678"]}}),
            json!({"match": {"name": "欧阳娜娜"}}),
            json!({"match": {"birth_date": "1949-12-31"}}),
            json!({"match": {}}),
            json!({"match": {"mobile": "13812345678"}, "sort": "mobile"}),
            json!({"match": {"mobile": "13812345678"}, "order_by": "resident_id"}),
            json!({"match": {"mobile": "13812345678"}, "mobile_prefix": "138"}),
        ] {
            let (s, v, _) = send(&h, search(body.clone())).await;
            assert_eq!(s, 400, "{body}: {v}");
            assert!(!v.to_string().contains("1380") && !v.to_string().contains("欧阳"), "echo in {v}");
        }
        for size in [0, 101, 100_000] {
            let (s, _, _) = send(&h, search(json!({"match": {"mobile": "13812345678"}, "page_size": size}))).await;
            assert_eq!(s, 422, "page_size {size}");
        }
        // A prefix is not a valid value either: it is refused, never treated as a range.
        let (s, v, _) = send(&h, search(json!({"match": {"mobile": "138"}}))).await;
        assert_eq!((s, v["errors"][0]["field"].as_str().unwrap()), (422, "match.mobile"));
    }

    async fn batch_get_in_scope_only(h) {
        let js = h.create(individual("3201")).await;
        let gd = h.create(individual("4401")).await;
        let missing = Uuid::now_v7();
        h.grant("svc", "crm_service", "32").await;
        h.grant("ag", "agent", "32").await;
        let batch = |who: &str, body: Value| as_role(&h, reqwest::Method::POST, "/v1/customers/batch-get", who, PURPOSE).json(&body);
        let (s, v, headers) = send(&h, batch("svc", json!({"ids": [js, gd, missing, js]}))).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(headers["cache-control"], "no-store");
        assert_eq!(v["items"].as_array().unwrap().len(), 1);
        assert_eq!(v["items"][0]["id"], js.to_string());
        assert_eq!(v["items"][0]["fields"]["mobile"], "13812345678");
        assert!(v["items"][0]["fields"].get("birth_date").is_none());
        let mut nf: Vec<String> = v["not_found"].as_array().unwrap().iter().map(|x| x.as_str().unwrap().to_owned()).collect();
        nf.sort();
        let mut expect = vec![gd.to_string(), missing.to_string()];
        expect.sort();
        assert_eq!(nf, expect, "out-of-scope and missing ids come back together");
        let (s, v, _) = send(&h, batch("svc", json!({"ids": [js], "fields": ["name"]}))).await;
        assert_eq!((s, v["items"][0]["fields"].as_object().unwrap().len()), (200, 1));
        let many: Vec<String> = (0..101).map(|_| Uuid::now_v7().to_string()).collect();
        assert_eq!(send(&h, batch("svc", json!({"ids": many}))).await.0, 422);
        assert_eq!(send(&h, batch("svc", json!({"ids": []}))).await.0, 422);
        assert_eq!(send(&h, batch("svc", json!({"ids": ["1 OR 1=1"]}))).await.0, 400);
        let (s, v, _) = send(&h, batch("ag", json!({"ids": [js]}))).await;
        assert_eq!((s, v["code"].as_str().unwrap()), (403, "forbidden"));
        // A city-level grant sees its city only, not the rest of its province.
        let sz = h.create(individual("3205")).await;
        h.grant("svc-nj", "crm_service", "3201").await;
        let (s, v, _) = send(&h, batch("svc-nj", json!({"ids": [js, sz, gd]}))).await;
        assert_eq!(s, 200, "{v}");
        let items: Vec<&str> = v["items"].as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap()).collect();
        assert_eq!(items, [js.to_string()]);
        assert!(!v.to_string().contains("3205"), "nothing of the out-of-scope record leaks: {v}");
    }

    async fn no_unkeyed_hash_at_rest(h) {
        h.create(individual("3201")).await;
        let dump = h.raw_dump().await;
        for value in ["13812345678", "11010519491231002X", "nana@example.cn"] {
            for digest in [&ring::digest::SHA256, &ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &ring::digest::SHA512] {
                let d = ring::digest::digest(digest, value.as_bytes());
                assert!(!contains(&dump, d.as_ref()), "unkeyed hash of {value} at rest");
                assert!(!contains(&dump, hex(d.as_ref()).as_bytes()), "unkeyed hex hash of {value} at rest");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reveals_are_rate_limited() {
    let h = Harness::start_with(Db::sqlite(), |c| c.reveals_per_hour = 3).await;
    let id = h.create(individual("3201")).await;
    h.grant("ro", "risk_officer", "CN").await;
    let body = json!({"fields": ["mobile"], "justification": "CASE-7"});
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let r = as_role(&h, reqwest::Method::POST, &format!("/v1/customers/{id}/reveal"), "ro", "fraud_investigation")
            .json(&body);
        let (s, v, _) = send(&h, r).await;
        if s == 429 {
            assert_eq!(v["code"], "rate_limited");
            assert!(v.get("fields").is_none());
        }
        statuses.push(s);
    }
    assert_eq!(statuses, vec![200, 200, 200, 429, 429]);
}

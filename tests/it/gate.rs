//! The disclosure gate as an attacker tries it: a matrix generated from the router itself
//! (every declared route and method, HEAD included, × role × scope × record state × purpose),
//! and one test per bypass the review found (issue: one gate for every disclosure).
//!
//! The matrix's expectations come from its own model of the policy below, not from the vault:
//! a route added to `api::routes()` without a row here fails `every_route_has_a_matrix_row`.

use std::collections::HashMap;

use chrono::Utc;
use reqwest::Method;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::support::*;

const DSR: &str = "data_subject_request";

/// A role and its (action, purposes) lines.
type RoleLines = (&'static str, &'static [(&'static str, &'static [&'static str])]);

/// The policy as this test expects it: role → action → purposes (empty: a non-data action).
fn model() -> HashMap<&'static str, HashMap<&'static str, Vec<&'static str>>> {
    const CS: &str = "customer_service";
    const TABLE: [RoleLines; 8] = [
        ("agent", &[("customer.read", &[CS]), ("customer.search", &[CS])]),
        (
            "account_manager",
            &[
                ("customer.create", &[CS, "account_management"]),
                ("customer.read", &[CS, "account_management", "billing", DSR]),
                ("customer.update", &[CS, "account_management", DSR]),
                ("customer.search", &[CS, "account_management"]),
                ("customer.access_log", &[DSR]),
                ("customer.export", &[DSR]),
                ("customer.erase", &[DSR]),
                ("customer.restrict", &[DSR]),
            ],
        ),
        ("marketing", &[("customer.read", &["marketing"]), ("customer.search", &["marketing"])]),
        (
            "risk_officer",
            &[
                ("customer.read", &["fraud_investigation", "legal_request"]),
                ("customer.search", &["fraud_investigation", "legal_request"]),
                ("customer.reveal", &["fraud_investigation", "legal_request"]),
            ],
        ),
        (
            "crm_service",
            &[
                ("customer.read", &[CS, "billing"]),
                ("customer.batch_get", &[CS, "billing"]),
                ("customer.search", &[CS, "billing"]),
            ],
        ),
        (
            "admin",
            &[
                ("grant.create", &[]),
                ("grant.list", &[]),
                ("grant.revoke", &[]),
                ("principal.revoke_tokens", &[]),
                ("keys.manage", &[]),
            ],
        ),
        ("local_admin", &[("grant.create", &[]), ("grant.list", &[]), ("grant.revoke", &[])]),
        (
            "security_officer",
            &[
                ("audit.read", &[]),
                ("audit.verify", &[]),
                ("audit.alerts", &[]),
                ("grant.list", &[]),
                ("grant.create", &[]),
                ("grant.revoke", &[]),
            ],
        ),
    ];
    TABLE.iter().map(|(r, acts)| (*r, acts.iter().map(|(a, p)| (*a, p.to_vec())).collect())).collect()
}

/// A purpose none of the role's lines allow for `action` (a data action), if there is one.
fn disallowed_purpose(allowed: &[&str]) -> &'static str {
    ["marketing", "legal_request", "billing", "customer_service"].into_iter().find(|p| !allowed.contains(p)).unwrap()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum State {
    Active,
    Restricted,
    Erased,
}

/// How a route is exercised and what it should answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// One customer record by id in the path; the status when allowed.
    Record {
        ok: u16,
        mutates: bool,
        lifts_restriction: bool,
    },
    Create,
    Search,
    BatchGet,
    GrantCreate,
    GrantList,
    GrantRevoke,
    RevokeTokens,
    /// Key management: only an administrator at CN (the matrix's principals are at a province).
    Keys,
    /// Audit endpoints on nothing in particular.
    Audit {
        ok: u16,
    },
}

/// The matrix row of a declared route: its model, or `None` (and the test fails).
fn row(method: &Method, path: &str) -> Option<Kind> {
    use Kind::*;
    let rec = |ok, mutates, lifts_restriction| Record { ok, mutates, lifts_restriction };
    Some(match (method.as_str(), path) {
        ("POST", "/customers") => Create,
        ("POST", "/customers/search") => Search,
        ("POST", "/customers/batch-get") => BatchGet,
        ("GET", "/customers/{id}") => rec(200, false, false),
        ("PATCH", "/customers/{id}") => rec(412, false, false),
        ("DELETE", "/customers/{id}") => rec(204, true, true),
        ("GET", "/customers/{id}/export") => rec(200, false, false),
        ("POST", "/customers/{id}/restrict") => rec(200, true, true),
        ("POST", "/customers/{id}/unrestrict") => rec(200, true, true),
        ("POST", "/customers/{id}/reveal") => rec(200, false, false),
        ("GET", "/customers/{id}/access-log") => rec(200, false, false),
        ("GET", "/admin/keys") | ("POST", "/admin/keys/rotate") => Keys,
        ("POST", "/grants") => GrantCreate,
        ("GET", "/grants") => GrantList,
        ("DELETE", "/grants/{id}") => GrantRevoke,
        ("POST", "/principals/{sub}/revoke-tokens") => RevokeTokens,
        ("GET", "/audit/events") | ("GET", "/audit/verify") | ("GET", "/audit/alerts") => Audit { ok: 200 },
        // No alert with a random id: an officer is told it is missing.
        ("POST", "/audit/alerts/{id}/clear") => Audit { ok: 404 },
        _ => return None,
    })
}

#[test]
fn every_route_has_a_matrix_row() {
    let routes = custodia::api::routes();
    assert!(routes.len() >= 21, "{routes:?}");
    for r in &routes {
        assert!(row(&r.method, r.path).is_some(), "route {} /v1{} has no row in the gate matrix", r.method, r.path);
    }
    // One declaration per method and path.
    for (i, a) in routes.iter().enumerate() {
        assert!(!routes[i + 1..].iter().any(|b| b.method == a.method && b.path == a.path), "{a:?} declared twice");
    }
}

/// One cell of the matrix.
struct Cell {
    rid: String,
    method: Method,
    path: String,
    action: &'static str,
    status: u16,
}

struct Matrix<'a> {
    h: &'a Harness,
    shared: HashMap<(bool, State), (Uuid, String)>,
    cells: Vec<Cell>,
    missing_body: String,
    n: usize,
}

fn city(in_scope: bool) -> &'static str {
    if in_scope {
        "3201"
    } else {
        "4401"
    }
}

impl Matrix<'_> {
    /// A customer in the given scope and state with a mobile of its own.
    async fn customer(&mut self, in_scope: bool, state: State) -> (Uuid, String) {
        self.n += 1;
        let mobile = format!("1391{:07}", self.n);
        let mut body = individual(city(in_scope));
        body["fields"]["mobile"] = json!(mobile);
        let id = self.h.create(body).await;
        let dsr = |m: Method, p: String| {
            self.h.client.request(m, self.h.url(&p)).bearer_auth(mint(ALICE)).header("X-Purpose", DSR)
        };
        match state {
            State::Active => {}
            State::Restricted => {
                let r = dsr(Method::POST, format!("/v1/customers/{id}/restrict")).send().await.unwrap();
                assert_eq!(r.status(), 200);
            }
            State::Erased => {
                let r = dsr(Method::DELETE, format!("/v1/customers/{id}")).send().await.unwrap();
                assert_eq!(r.status(), 204);
            }
        }
        (id, mobile)
    }

    /// A grant the role could have made (so may revoke, when in scope): an hour long.
    async fn grant_target(&self, role: &str, in_scope: bool) -> Uuid {
        let (target_role, by) =
            if role == "security_officer" { ("security_officer", ROOT_OFFICER) } else { ("agent", ROOT_ADMIN) };
        let who = format!("target.{}", Uuid::new_v4().simple());
        self.h.grant_by(by, &who, target_role, city(in_scope), Utc::now() + chrono::Duration::hours(1)).await
    }

    #[allow(clippy::too_many_arguments)]
    async fn send(
        &mut self,
        method: Method,
        path: String,
        action: &'static str,
        who: Option<&str>,
        purpose: Option<&str>,
        body: Option<Value>,
        expected: u16,
        context: &str,
    ) -> Value {
        let rid = format!("mx-{}", Uuid::new_v4().simple());
        let mut req =
            self.h.client.request(method.clone(), self.h.url(&format!("/v1{path}"))).header("X-Request-Id", &rid);
        if let Some(w) = who {
            req = req.bearer_auth(mint(w));
        }
        if let Some(p) = purpose {
            req = req.header("X-Purpose", p);
        }
        req = req.header("If-Match", "\"999\"").header("X-Justification", "TICKET-1");
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        assert_eq!(status, expected, "{context}: {method} /v1{path} answered {text}");
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status == 404 && method != Method::HEAD {
            assert_eq!(text, self.missing_body, "{context}: a 404 differs from a missing record's, byte for byte");
        }
        if status >= 400 && method != Method::HEAD {
            assert!(
                !text.contains("1391") && !text.contains("欧阳") && !text.contains("11010519491231002X"),
                "{context}: leak {text}"
            );
        }
        self.cells.push(Cell { rid, method, path, action, status });
        v
    }
}

async fn h_grant(h: &Harness, who: &str, role: &str, region: &str) -> Uuid {
    h.grant(who, role, region).await
}

/// The matrix needs budgets out of the way (they are tested on their own below).
async fn matrix_harness(db: Db) -> Harness {
    Harness::start_with(db, |c| {
        c.reveals_per_hour = 1_000_000;
        c.searches_per_hour = 1_000_000;
        c.search_miss_alarm = 1_000_000;
        c.audit.bulk_threshold = 1_000_000;
    })
    .await
}

async fn matrix(h: Harness) {
    let model = model();
    for role in ROLES {
        h.grant(&format!("m.{role}"), role, "32").await;
    }
    let missing =
        h.get(&format!("/v1/customers/{}", Uuid::now_v7()), ALICE).send().await.unwrap().text().await.unwrap();
    let mut m = Matrix { h: &h, shared: HashMap::new(), cells: Vec::new(), missing_body: missing, n: 0 };
    for in_scope in [true, false] {
        for state in [State::Active, State::Restricted, State::Erased] {
            let c = m.customer(in_scope, state).await;
            m.shared.insert((in_scope, state), c);
        }
    }
    let routes = custodia::api::routes();
    for route in &routes {
        let kind = row(&route.method, route.path).unwrap();
        let action = route.action.as_str();
        let methods: Vec<Method> =
            if route.method == Method::GET { vec![Method::GET, Method::HEAD] } else { vec![route.method.clone()] };
        for method in methods {
            // Without a token: 401, audited under the route's action.
            let path = route.path.replace("{id}", &Uuid::now_v7().to_string()).replace("{sub}", "nobody");
            m.send(method.clone(), path, action, None, Some("customer_service"), None, 401, "anonymous").await;
            for role in ROLES {
                let who = format!("m.{role}");
                let allowed = model[role].get(action);
                let is_data = action.starts_with("customer.");
                // Purposes: one the role may use for the action (or its first purpose for
                // anything), and one it may not.
                let purposes: Vec<(&str, bool)> = match (is_data, allowed) {
                    (true, Some(ps)) => vec![(ps[0], true), (disallowed_purpose(ps), false)],
                    (true, None) => vec![("customer_service", false)],
                    (false, _) => vec![("customer_service", allowed.is_some())],
                };
                for (purpose, purpose_ok) in purposes {
                    let permitted = allowed.is_some() && purpose_ok;
                    for in_scope in [true, false] {
                        for state in [State::Active, State::Restricted, State::Erased] {
                            let ctx = format!("{role} {purpose} in_scope={in_scope} {state:?}");
                            match kind {
                                Kind::Record { ok, mutates, lifts_restriction } => {
                                    let hidden = !in_scope || state == State::Erased;
                                    let restricted =
                                        state == State::Restricted && !lifts_restriction && purpose != "legal_request";
                                    let expected = if !permitted {
                                        403
                                    } else if hidden {
                                        404
                                    } else if restricted {
                                        403
                                    } else {
                                        ok
                                    };
                                    let (id, _) = if mutates && expected < 300 {
                                        m.customer(in_scope, state).await
                                    } else {
                                        m.shared[&(in_scope, state)].clone()
                                    };
                                    let body = match route.path {
                                        "/customers/{id}/reveal" => {
                                            Some(json!({"fields": ["mobile"], "justification": "FRAUD-1"}))
                                        }
                                        "/customers/{id}" if route.method == Method::PATCH => {
                                            Some(json!({"vip_level": 1}))
                                        }
                                        _ => None,
                                    };
                                    let path = route.path.replace("{id}", &id.to_string());
                                    let v = m
                                        .send(
                                            method.clone(),
                                            path,
                                            action,
                                            Some(&who),
                                            Some(purpose),
                                            body,
                                            expected,
                                            &ctx,
                                        )
                                        .await;
                                    if expected == 200 && method == Method::GET && route.path == "/customers/{id}" {
                                        assert_eq!(v["id"], id.to_string(), "{ctx}");
                                    }
                                }
                                Kind::Create => {
                                    if state != State::Active {
                                        continue;
                                    }
                                    let expected = if !permitted {
                                        403
                                    } else if in_scope {
                                        201
                                    } else {
                                        403
                                    };
                                    let v = m
                                        .send(
                                            method.clone(),
                                            route.path.into(),
                                            action,
                                            Some(&who),
                                            Some(purpose),
                                            Some(individual(city(in_scope))),
                                            expected,
                                            &ctx,
                                        )
                                        .await;
                                    if expected == 403 && permitted {
                                        assert_eq!(v["code"], "region_out_of_scope", "{ctx}");
                                    }
                                }
                                Kind::Search | Kind::BatchGet => {
                                    let (id, mobile) = m.shared[&(in_scope, state)].clone();
                                    let body = if kind == Kind::Search {
                                        json!({"match": {"mobile": mobile}})
                                    } else {
                                        json!({"ids": [id.to_string()]})
                                    };
                                    let expected = if permitted { 200 } else { 403 };
                                    let v = m
                                        .send(
                                            method.clone(),
                                            route.path.into(),
                                            action,
                                            Some(&who),
                                            Some(purpose),
                                            Some(body),
                                            expected,
                                            &ctx,
                                        )
                                        .await;
                                    if expected == 200 {
                                        let found =
                                            v["items"].as_array().unwrap().iter().any(|i| i["id"] == id.to_string());
                                        let visible = in_scope && state == State::Active;
                                        assert_eq!(found, visible, "{ctx}: {v}");
                                        if kind == Kind::BatchGet {
                                            assert_eq!(
                                                v["not_found"].as_array().unwrap().len(),
                                                usize::from(!visible),
                                                "{ctx}"
                                            );
                                        }
                                    }
                                }
                                Kind::GrantCreate => {
                                    if state != State::Active {
                                        continue;
                                    }
                                    let target_role =
                                        if role == "security_officer" { "security_officer" } else { "agent" };
                                    let body = json!({"principal": format!("new.{}", Uuid::new_v4().simple()), "role": target_role,
                                        "region": city(in_scope), "expires_at": (Utc::now() + chrono::Duration::hours(1)).to_rfc3339()});
                                    let expected = if !permitted {
                                        403
                                    } else if in_scope {
                                        201
                                    } else {
                                        403
                                    };
                                    m.send(
                                        method.clone(),
                                        route.path.into(),
                                        action,
                                        Some(&who),
                                        None,
                                        Some(body),
                                        expected,
                                        &ctx,
                                    )
                                    .await;
                                }
                                Kind::GrantList => {
                                    if state != State::Active || !in_scope {
                                        continue;
                                    }
                                    let expected = if permitted { 200 } else { 403 };
                                    m.send(
                                        method.clone(),
                                        route.path.into(),
                                        action,
                                        Some(&who),
                                        None,
                                        None,
                                        expected,
                                        &ctx,
                                    )
                                    .await;
                                }
                                Kind::GrantRevoke => {
                                    if state != State::Active {
                                        continue;
                                    }
                                    let target = m.grant_target(role, in_scope).await;
                                    let expected = if !permitted {
                                        403
                                    } else if in_scope {
                                        200
                                    } else {
                                        404
                                    };
                                    let path = route.path.replace("{id}", &target.to_string());
                                    m.send(method.clone(), path, action, Some(&who), None, None, expected, &ctx).await;
                                }
                                Kind::RevokeTokens => {
                                    if state != State::Active {
                                        continue;
                                    }
                                    let sub = format!("tok.{}", Uuid::new_v4().simple());
                                    h_grant(&h, &sub, "agent", city(in_scope)).await;
                                    let expected = if !permitted {
                                        403
                                    } else if in_scope {
                                        200
                                    } else {
                                        403
                                    };
                                    let path = route.path.replace("{sub}", &sub);
                                    m.send(method.clone(), path, action, Some(&who), None, None, expected, &ctx).await;
                                }
                                Kind::Keys => {
                                    if state != State::Active || !in_scope {
                                        continue;
                                    }
                                    // Permitted or not, a province is not CN.
                                    m.send(
                                        method.clone(),
                                        route.path.into(),
                                        action,
                                        Some(&who),
                                        None,
                                        None,
                                        403,
                                        &ctx,
                                    )
                                    .await;
                                }
                                Kind::Audit { ok } => {
                                    if state != State::Active || !in_scope {
                                        continue;
                                    }
                                    let expected = if permitted { ok } else { 403 };
                                    let path = route.path.replace("{id}", &Uuid::now_v7().to_string());
                                    m.send(method.clone(), path, action, Some(&who), None, None, expected, &ctx).await;
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    // Every request left exactly one event, under its route's declared action (HEAD as GET),
    // with the status it answered.
    let mut events: HashMap<String, Vec<(String, i64)>> = HashMap::new();
    for (rid, action, _, status, ..) in h.audit_rows_prefixed("mx-").await {
        events.entry(rid).or_default().push((action, status));
    }
    assert!(m.cells.len() > 900, "the matrix ran {} cells", m.cells.len());
    for c in &m.cells {
        let got = events.get(&c.rid).cloned().unwrap_or_default();
        assert_eq!(got, vec![(c.action.to_owned(), i64::from(c.status))], "{} /v1{}: audit", c.method, c.path);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_sqlite() {
    matrix(matrix_harness(Db::sqlite()).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_postgres() {
    let Some(db) = Db::postgres().await else { return };
    matrix(matrix_harness(db).await).await;
}

/// Runs `$test(h)` against SQLite and PostgreSQL, each vault configured by `$adjust`.
macro_rules! both_with {
    ($name:ident, $adjust:expr, $test:ident) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$test(Harness::start_with(Db::sqlite(), $adjust).await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some(db) = Db::postgres().await else { return };
                super::$test(Harness::start_with(db, $adjust).await).await;
            }
        }
    };
}

/// Sends a request as `who` with `purpose`; returns (status, body text, parsed body).
async fn call(
    h: &Harness,
    base: Option<&str>,
    method: Method,
    path: &str,
    who: &str,
    purpose: Option<&str>,
    body: Option<Value>,
) -> (u16, String, Value) {
    let url = format!("{}{path}", base.unwrap_or(&h.base));
    let mut req = h.client.request(method, url).bearer_auth(mint(who));
    if let Some(p) = purpose {
        req = req.header("X-Purpose", p);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    let v = serde_json::from_str(&text).unwrap_or(Value::Null);
    (status, text, v)
}

fn customer_with_mobile(city: &str, mobile: &str) -> Value {
    let mut c = individual(city);
    c["fields"]["mobile"] = json!(mobile);
    c
}

/// Item 2: every search is charged, hit or miss; past the budget, 429 and an alert that blocks
/// the principal; misses past the alarm raise an alert too. (The attack: an agent who sees
/// `139****4321` tried all 10,000 completions.)
async fn searches_are_budgeted(h: Harness) {
    let id = h.create(customer_with_mobile("3201", "13900004321")).await;
    h.grant("guesser", "agent", "32").await;
    h.grant("prober", "agent", "32").await;
    h.grant("so.cn", "security_officer", "CN").await;
    let search = |who: &'static str, mobile: String| {
        let h = &h;
        async move {
            call(
                h,
                None,
                Method::POST,
                "/v1/customers/search",
                who,
                Some("customer_service"),
                Some(json!({"match": {"mobile": mobile}})),
            )
            .await
        }
    };
    // The budget (5 an hour here): hits count like misses.
    for i in 0..5 {
        let (s, _, v) = search("guesser", "13900004321".into()).await;
        assert_eq!(s, 200, "search {i}");
        assert_eq!(v["items"][0]["id"], id.to_string());
    }
    let (s, text, v) = search("guesser", "13900000000".into()).await;
    assert_eq!(s, 429, "{text}");
    assert_eq!(v["code"], "search_budget_exceeded");
    assert!(!text.contains("13900000000"), "{text}");
    // The alert blocks every data request of the principal until an officer clears it.
    let (s, _, v) =
        call(&h, None, Method::GET, &format!("/v1/customers/{id}"), "guesser", Some("customer_service"), None).await;
    assert_eq!((s, v["code"].as_str()), (429, Some("bulk_access_blocked")));
    let (_, _, alerts) = call(&h, None, Method::GET, "/v1/audit/alerts", "so.cn", None, None).await;
    let alert = alerts.as_array().unwrap().iter().find(|a| a["principal"] == "guesser").cloned().unwrap();
    assert_eq!(
        (alert["kind"].as_str(), alert["status"].as_str(), alert["region"].as_str()),
        (Some("search_budget"), Some("open"), Some("32"))
    );
    // Misses: the third miss within the hour (the alarm, here 3) raises an alert.
    for i in 0..3 {
        let (s, _, v) = search("prober", format!("1390000{i:04}")).await;
        assert_eq!((s, v["items"].as_array().map(Vec::len)), (200, Some(0)), "miss {i}");
    }
    let (s, _, _) = search("prober", "13900004321".into()).await;
    assert_eq!(s, 429, "the miss alarm blocks the prober");
    let (_, _, alerts) = call(&h, None, Method::GET, "/v1/audit/alerts", "so.cn", None, None).await;
    assert!(
        alerts.as_array().unwrap().iter().any(|a| a["principal"] == "prober" && a["kind"] == "search_misses"),
        "{alerts}"
    );
    // Each search left its event, with the term as a digest only.
    let n =
        h.scalar("SELECT count(*) FROM audit_events WHERE action = 'customer.search' AND principal = 'guesser'").await;
    assert_eq!(n, 6);
    assert!(!contains(&h.raw_dump().await, b"13900000000"));
}

both_with!(
    search_budget,
    |c| {
        c.searches_per_hour = 5;
        c.search_miss_alarm = 3;
    },
    searches_are_budgeted
);

/// Item 2: the start-up lint refuses to run without a search budget while roles may search
/// fields their views mask or hide.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_search_budget_no_start() {
    for (budget, alarm) in [(0, 50), (200, 0)] {
        let db = Db::sqlite();
        let mut config = test_config(db.url());
        config.searches_per_hour = budget;
        config.search_miss_alarm = alarm;
        let err = custodia::app::start(&config).await.err().expect("refused").to_string();
        assert!(err.contains("searches_per_hour") && err.contains("may search"), "{err}");
    }
}

/// Item 3: revoking is bounded exactly like granting (scope, role, expiry); a refused
/// revocation cascades nothing.
async fn revocation_is_bounded_like_granting(h: Harness) {
    let hours = |n| Utc::now() + chrono::Duration::hours(n);
    let id = h.create(individual("3201")).await;
    h.grant_by(ROOT_ADMIN, "loc.admin", "local_admin", "32", hours(2)).await;
    let prov = h.grant_by(ROOT_ADMIN, "prov.admin", "admin", "32", hours(4)).await;
    let city = h.grant_by("prov.admin", "city.admin", "admin", "3201", hours(3)).await;
    h.grant_by("city.admin", "nj.agent", "agent", "3201", hours(1)).await;
    let so = h.grant_by(ROOT_OFFICER, "so.32", "security_officer", "32", hours(4)).await;
    let short = h.grant_by("prov.admin", "agent.short", "agent", "3202", hours(1)).await;
    let long = h.grant_by(ROOT_ADMIN, "agent.long", "agent", "3202", hours(72)).await;
    let revoke = |who: &'static str, g: Uuid| {
        let h = &h;
        async move { call(h, None, Method::DELETE, &format!("/v1/grants/{g}"), who, None, None).await }
    };
    for (g, what) in [(prov, "an admin grant"), (city, "a delegated admin grant"), (so, "a security officer's grant")] {
        let (s, text, v) = revoke("loc.admin", g).await;
        assert_eq!((s, v["code"].as_str()), (403, Some("delegation_role_not_allowed")), "{what}: {text}");
    }
    // Nothing cascaded: the agent under the city admin still reads.
    let (s, _, _) =
        call(&h, None, Method::GET, &format!("/v1/customers/{id}"), "nj.agent", Some("customer_service"), None).await;
    assert_eq!(s, 200);
    // Within its role and expiry it may; beyond its own expiry it may not.
    assert_eq!(revoke("loc.admin", short).await.0, 200);
    let (s, _, v) = revoke("loc.admin", long).await;
    assert_eq!((s, v["code"].as_str()), (403, Some("delegation_expiry_exceeded")));
    // Outside its subtree a grant is as missing.
    let gd = h.grant_by(ROOT_ADMIN, "gd.agent", "agent", "44", hours(1)).await;
    assert_eq!(revoke("loc.admin", gd).await.0, 404);
    // The audit line: an officer revokes officers in its subtree, nothing else.
    let so_city = h.grant_by("so.32", "so.3201", "security_officer", "3201", hours(1)).await;
    let (s, _, v) = revoke("so.32", gd).await;
    assert_eq!(s, 404, "{v}");
    let agent = h.grant_by(ROOT_ADMIN, "js.agent", "agent", "3201", hours(1)).await;
    assert_eq!(revoke("so.32", agent).await.2["code"], "delegation_role_not_allowed");
    assert_eq!(revoke("so.32", so_city).await.0, 200);
}

both_with!(bounded_revocation, |_| {}, revocation_is_bounded_like_granting);

/// Item 4: an officer sees and acts on the events, alerts and principals of its subtree only.
async fn officers_see_their_subtree(h: Harness) {
    let js = h.create(individual("3201")).await;
    let gd = h.create(individual("4401")).await;
    h.grant("js.agent", "agent", "32").await;
    h.grant("gd.agent", "agent", "44").await;
    h.grant("so.32", "security_officer", "32").await;
    h.grant("so.3201", "security_officer", "3201").await;
    h.grant("so.cn", "security_officer", "CN").await;
    let read = |who: &'static str, id: Uuid| {
        let h = &h;
        async move {
            call(h, None, Method::GET, &format!("/v1/customers/{id}"), who, Some("customer_service"), None).await.0
        }
    };
    assert_eq!(read("js.agent", js).await, 200);
    assert_eq!(read("gd.agent", gd).await, 200);
    // The bulk guard (threshold 2 here) raises an alert about the Guangdong agent.
    let more: Vec<Uuid> = futures_join(&h, "4401", 2).await;
    for id in &more {
        read("gd.agent", *id).await;
    }
    let events = |who: &'static str, q: String| {
        let h = &h;
        async move { call(h, None, Method::GET, &format!("/v1/audit/events{q}"), who, None, None).await }
    };
    for officer in ["so.32", "so.3201"] {
        let (s, _, v) = events(officer, format!("?customer={gd}")).await;
        assert_eq!(s, 200);
        assert_eq!(v["items"], json!([]), "{officer} sees events about a Guangdong customer: {v}");
        let (_, _, v) = events(officer, String::new()).await;
        let items = v["items"].as_array().unwrap();
        assert!(!items.is_empty());
        for e in items {
            assert_ne!(e["principal"], "gd.agent", "{officer}: {e}");
            let ours = |k: &str| e[k].as_str().is_some_and(|r| r.starts_with("32"));
            assert!(ours("actor_region") || ours("subject_region"), "{officer}: {e}");
        }
        let (_, _, v) = events(officer, format!("?customer={js}")).await;
        assert!(v["items"].as_array().unwrap().iter().any(|e| e["principal"] == "js.agent"), "{officer}: {v}");
    }
    let (_, _, v) = events("so.cn", format!("?customer={gd}")).await;
    assert!(v["items"].as_array().unwrap().iter().any(|e| e["principal"] == "gd.agent"), "{v}");
    // Alerts: listed and cleared only within the subtree.
    let (_, _, all) = call(&h, None, Method::GET, "/v1/audit/alerts", "so.cn", None, None).await;
    let alert = all.as_array().unwrap().iter().find(|a| a["principal"] == "gd.agent").cloned().expect("alert raised");
    assert_eq!(alert["region"], "44");
    let (_, _, mine) = call(&h, None, Method::GET, "/v1/audit/alerts", "so.32", None, None).await;
    assert!(mine.as_array().unwrap().iter().all(|a| a["principal"] != "gd.agent"), "{mine}");
    let clear = |who: &'static str| {
        let h = &h;
        let path = format!("/v1/audit/alerts/{}/clear", alert["id"].as_str().unwrap());
        async move { call(h, None, Method::POST, &path, who, None, None).await.0 }
    };
    assert_eq!(clear("so.32").await, 404);
    assert_eq!(read("gd.agent", gd).await, 429, "still blocked");
    assert_eq!(clear("so.cn").await, 200);
}

/// Creates `n` customers in `city` and returns their ids.
async fn futures_join(h: &Harness, city: &str, n: usize) -> Vec<Uuid> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(h.create(individual(city)).await);
    }
    out
}

both_with!(officer_scope, |c| c.audit.bulk_threshold = 2, officers_see_their_subtree);

/// Item 5: separation of duties cannot be raced: two concurrent grants of roles of different
/// duties to one principal, five times, and exactly one of each pair lands (the database
/// refuses the other).
async fn duties_cannot_be_raced(h: Harness) {
    let expires = (Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    for i in 0..5 {
        let who = format!("racer.{i}");
        let grant = |role: &'static str| {
            let body = json!({"principal": who.clone(), "role": role, "region": "32", "expires_at": expires.clone()});
            let h = &h;
            async move { call(h, None, Method::POST, "/v1/grants", ROOT_ADMIN, None, Some(body)).await }
        };
        let (a, b) = tokio::join!(grant("admin"), grant("risk_officer"));
        let mut statuses = [a.0, b.0];
        statuses.sort_unstable();
        assert_eq!(statuses, [201, 409], "try {i}: {} / {}", a.1, b.1);
        let loser = if a.0 == 409 { &a.2 } else { &b.2 };
        assert_eq!(loser["code"], "separation_of_duties");
        let duties = h.scalar(&format!("SELECT count(DISTINCT duty) FROM grants WHERE principal = '{who}'")).await;
        assert_eq!(duties, 1, "try {i}");
    }
}

both_with!(duty_race, |_| {}, duties_cannot_be_raced);

/// Item 6: the first security officer comes from `custodia admin bootstrap --role
/// security_officer`, at CN; officers then appoint officers within their subtree.
async fn auditors_are_appointed_along_their_line(h: Harness) {
    let hours = |n| Utc::now() + chrono::Duration::hours(n);
    h.grant_by(ROOT_OFFICER, "so.32", "security_officer", "32", hours(2)).await;
    h.grant_by("so.32", "so.3201", "security_officer", "3201", hours(1)).await;
    let body =
        json!({"principal": "so.gd", "role": "security_officer", "region": "44", "expires_at": hours(1).to_rfc3339()});
    let (s, _, v) = call(&h, None, Method::POST, "/v1/grants", "so.32", None, Some(body)).await;
    assert_eq!((s, v["code"].as_str()), (403, Some("region_out_of_scope")));
    let body = json!({"principal": "x.agent", "role": "agent", "region": "32", "expires_at": hours(1).to_rfc3339()});
    let (s, _, v) = call(&h, None, Method::POST, "/v1/grants", "so.32", None, Some(body)).await;
    assert_eq!((s, v["code"].as_str()), (403, Some("delegation_role_not_allowed")));
    // An administrator, at any level, cannot.
    let body =
        json!({"principal": "x.so", "role": "security_officer", "region": "3201", "expires_at": hours(1).to_rfc3339()});
    let (s, _, v) = call(&h, None, Method::POST, "/v1/grants", ROOT_ADMIN, None, Some(body)).await;
    assert_eq!((s, v["code"].as_str()), (403, Some("delegation_role_not_allowed")));
}

both_with!(audit_line, |_| {}, auditors_are_appointed_along_their_line);

/// Item 8: a batch-get records every id asked for and which were not disclosed, so probing
/// for records leaves a trace (also in the probed customer's access log).
async fn probing_leaves_a_trace(h: Harness) {
    let js = h.create(individual("3201")).await;
    let gd = h.create(individual("4401")).await;
    let missing = Uuid::now_v7();
    h.grant("crm.js", "crm_service", "32").await;
    h.grant("so.cn", "security_officer", "CN").await;
    let body = json!({"ids": [js.to_string(), gd.to_string(), missing.to_string()]});
    let (s, _, v) =
        call(&h, None, Method::POST, "/v1/customers/batch-get", "crm.js", Some("customer_service"), Some(body)).await;
    assert_eq!(s, 200);
    assert_eq!(v["items"].as_array().unwrap().len(), 1);
    let (_, _, page) =
        call(&h, None, Method::GET, "/v1/audit/events?action=customer.batch_get", "so.cn", None, None).await;
    let e = &page["items"][0];
    let ids: Vec<&str> = e["customer_ids"].as_array().unwrap().iter().map(|i| i.as_str().unwrap()).collect();
    for id in [js, gd, missing] {
        assert!(ids.contains(&id.to_string().as_str()), "{id} asked for but not recorded: {e}");
    }
    let mut undisclosed: Vec<String> =
        e["not_disclosed"].as_array().unwrap().iter().map(|i| i.as_str().unwrap().to_owned()).collect();
    undisclosed.sort();
    let mut expected = vec![gd.to_string(), missing.to_string()];
    expected.sort();
    assert_eq!(undisclosed, expected);
    // The Guangdong customer's access log shows the probe, disclosing nothing.
    let (s, _, log) =
        call(&h, None, Method::GET, &format!("/v1/customers/{gd}/access-log"), ALICE, Some(DSR), None).await;
    assert_eq!(s, 200);
    let probe = log["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["principal"] == "crm.js")
        .cloned()
        .expect("probe in the log");
    assert_eq!((probe["outcome"].as_str(), probe["fields"].clone()), (Some("not_found"), json!([])));
    // The chain covers it.
    let (_, _, report) = call(&h, None, Method::GET, "/v1/audit/verify", "so.cn", None, None).await;
    assert_eq!(report["ok"], true, "{report}");
}

both_with!(batch_probe, |_| {}, probing_leaves_a_trace);

/// Items 10a and 10b: an update's event names the fields changed; a re-index that read a
/// record before an update cannot put the previous value's digest back.
async fn updates_name_fields_and_reindex_cannot_race(h: Harness) {
    let id = h.create(individual("3201")).await;
    let r = h
        .patch(&format!("/v1/customers/{id}"), ALICE, 1, &json!({"fields": {"mobile": "13900001111", "email": null}}))
        .header("X-Request-Id", "upd-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let rows = h.audit_rows("upd-1").await;
    assert_eq!(rows.len(), 1);
    let fields: Vec<(String, String)> = serde_json::from_str(&rows[0].4).unwrap();
    assert!(
        fields.contains(&("mobile".into(), "changed".into())) && fields.contains(&("email".into(), "changed".into())),
        "{fields:?}"
    );
    assert!(!rows[0].4.contains("13900001111"));
    // A re-index working from version 1 (read before the update) is refused.
    let before =
        h.scalar(&format!("SELECT count(*) FROM blind_index WHERE customer_id = {}", id_literal(&h.db, id))).await;
    let stale = custodia::store::IndexEntry { field: "mobile".into(), digest: vec![7; 32], key_version: 1 };
    let store = h.vault().store();
    assert!(!store.replace_index(id, 1, std::slice::from_ref(&stale)).await.unwrap());
    let after =
        h.scalar(&format!("SELECT count(*) FROM blind_index WHERE customer_id = {}", id_literal(&h.db, id))).await;
    assert_eq!(before, after);
    let digest = match h.db {
        Db::Sqlite { .. } => format!("x'{}'", "07".repeat(32)),
        Db::Postgres { .. } => format!("'\\x{}'::bytea", "07".repeat(32)),
    };
    let planted = h.scalar(&format!("SELECT count(*) FROM blind_index WHERE digest = {digest}")).await;
    assert_eq!(planted, 0);
    let (_, _, v) = call(
        &h,
        None,
        Method::POST,
        "/v1/customers/search",
        ALICE,
        Some("customer_service"),
        Some(json!({"match": {"mobile": "13812345678"}})),
    )
    .await;
    assert_eq!(v["items"], json!([]), "the previous value's digest is gone");
    assert!(store.replace_index(id, 2, &[]).await.unwrap(), "at the current version it applies");
}

both_with!(update_audit_and_reindex, |_| {}, updates_name_fields_and_reindex_cannot_race);

/// Item 11: the reveal budget, the search budget and the bulk guard hold across instances
/// sharing the database (a principal spreading its requests gets no more than on one).
async fn limits_hold_across_instances(h: Harness) {
    let adjust = |c: &mut custodia::config::Config| {
        c.reveals_per_hour = 3;
        c.searches_per_hour = 3;
        c.audit.bulk_threshold = 4;
    };
    let ids: Vec<Uuid> = futures_join(&h, "3201", 6).await;
    h.create(customer_with_mobile("3201", "13900007777")).await;
    h.grant("ro", "risk_officer", "32").await;
    h.grant("ag", "agent", "32").await;
    h.grant("reader", "agent", "32").await;
    h.grant("so.cn", "security_officer", "CN").await;
    // Started after the grants, so that it loads them at once.
    let other = h.another_instance_with(adjust).await;
    let b = format!("http://{}", other.addr);
    let reveal = |base: Option<String>, id: Uuid| {
        let h = &h;
        async move {
            let body = json!({"fields": ["mobile"], "justification": "FRAUD-11"});
            call(
                h,
                base.as_deref(),
                Method::POST,
                &format!("/v1/customers/{id}/reveal"),
                "ro",
                Some("fraud_investigation"),
                Some(body),
            )
            .await
        }
    };
    assert_eq!(reveal(None, ids[0]).await.0, 200);
    assert_eq!(reveal(Some(b.clone()), ids[0]).await.0, 200);
    assert_eq!(reveal(None, ids[0]).await.0, 200);
    let (s, text, _) = reveal(Some(b.clone()), ids[0]).await;
    assert_eq!(s, 429, "the fourth reveal, on the other instance: {text}");
    assert!(!text.contains("13812345678"));
    let search = |base: Option<String>| {
        let h = &h;
        async move {
            call(
                h,
                base.as_deref(),
                Method::POST,
                "/v1/customers/search",
                "ag",
                Some("customer_service"),
                Some(json!({"match": {"mobile": "13900007777"}})),
            )
            .await
            .0
        }
    };
    assert_eq!(search(None).await, 200);
    assert_eq!(search(Some(b.clone())).await, 200);
    assert_eq!(search(None).await, 200);
    assert_eq!(search(Some(b.clone())).await, 429, "the fourth search, on the other instance");
    // The bulk guard: two customers here, then (once the counts were exchanged) three there.
    let read = |base: Option<String>, id: Uuid| {
        let h = &h;
        async move {
            call(
                h,
                base.as_deref(),
                Method::GET,
                &format!("/v1/customers/{id}"),
                "reader",
                Some("customer_service"),
                None,
            )
            .await
            .0
        }
    };
    assert_eq!(read(None, ids[0]).await, 200);
    assert_eq!(read(None, ids[1]).await, 200);
    tokio::time::sleep(custodia::vault::limits::GUARD_SYNC * 3).await;
    assert_eq!(read(Some(b.clone()), ids[2]).await, 200);
    assert_eq!(read(Some(b.clone()), ids[3]).await, 200);
    assert_eq!(
        read(Some(b.clone()), ids[4]).await,
        429,
        "a fifth distinct customer across both instances passes the threshold of 4"
    );
    // Cleared on this instance, the count starts afresh on the other one too: three distinct
    // customers there now pass, where its old window (two) would have made five.
    let (s, text, alerts) = call(&h, None, Method::GET, "/v1/audit/alerts", "so.cn", None, None).await;
    assert_eq!(s, 200, "{text}");
    let alert = alerts
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["principal"] == "reader")
        .cloned()
        .unwrap_or_else(|| panic!("{alerts}"));
    let path = format!("/v1/audit/alerts/{}/clear", alert["id"].as_str().unwrap());
    assert_eq!(call(&h, None, Method::POST, &path, "so.cn", None, None).await.0, 200);
    tokio::time::sleep(custodia::vault::limits::GUARD_SYNC * 3).await;
    for id in [ids[5], ids[0], ids[1]] {
        assert_eq!(read(Some(b.clone()), id).await, 200, "counting restarted on every instance");
    }
    other.stop().await.unwrap();
}

both_with!(
    limits_across_instances,
    |c| {
        c.reveals_per_hour = 3;
        c.searches_per_hour = 3;
        c.audit.bulk_threshold = 4;
    },
    limits_hold_across_instances
);

/// Item 12: `X-Forwarded-For` is believed only from a trusted proxy, and then the audit
/// records both hops (chained).
async fn forwarded_clients_from_trusted_proxies(h: Harness) {
    let id = h.create(individual("3201")).await;
    h.grant("so.cn", "security_officer", "CN").await;
    let read_via = |base: String, rid: &'static str, forwarded: &'static str| {
        let h = &h;
        async move {
            let r = h
                .client
                .get(format!("{base}/v1/customers/{id}"))
                .bearer_auth(mint(ALICE))
                .header("X-Purpose", "customer_service")
                .header("X-Request-Id", rid)
                .header("X-Forwarded-For", forwarded)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
    };
    read_via(h.base.clone(), "fwd-1", "198.51.100.66, 203.0.113.7").await;
    let (_, _, page) = call(&h, None, Method::GET, "/v1/audit/events?action=customer.read", "so.cn", None, None).await;
    let e = page["items"].as_array().unwrap().iter().find(|e| e["request_id"] == "fwd-1").cloned().unwrap();
    // Only the hop the trusted proxy saw; what the client wrote further left proves nothing.
    assert_eq!((e["client"].as_str(), e["proxy"].as_str()), (Some("203.0.113.7"), Some("127.0.0.1")));
    let (_, _, report) = call(&h, None, Method::GET, "/v1/audit/verify", "so.cn", None, None).await;
    assert_eq!(report["ok"], true, "{report}");
    // A vault that trusts no proxy records the peer, whatever the header says.
    let plain = h.another_instance().await;
    read_via(format!("http://{}", plain.addr), "fwd-3", "203.0.113.7").await;
    let (_, _, page) = call(&h, None, Method::GET, "/v1/audit/events?action=customer.read", "so.cn", None, None).await;
    let e = page["items"].as_array().unwrap().iter().find(|e| e["request_id"] == "fwd-3").cloned().unwrap();
    assert_eq!((e["client"].as_str(), e["proxy"].clone()), (Some("127.0.0.1"), Value::Null));
    plain.stop().await.unwrap();
}

both_with!(trusted_proxies, |c| c.trusted_proxies = vec!["127.0.0.0/8".into()], forwarded_clients_from_trusted_proxies);

/// Item 10c: an NDJSON export whose page fails mid-stream does not end like a complete one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_export_is_visibly_incomplete() {
    let h = Harness::start(Db::sqlite()).await;
    h.grant("so.cn", "security_officer", "CN").await;
    // 1,100 events (the export reads pages of 1,000), one of them unreadable past the first page.
    h.sql_as_owner(&[
        "WITH RECURSIVE n(i) AS (SELECT 100 UNION ALL SELECT i + 1 FROM n WHERE i < 1200) \
         INSERT INTO audit_events (seq, time, request_id, action, customer_ids, fields, outcome, status, chain_hash) \
         SELECT i, '2026-01-01T00:00:00+00:00', 'bulk-' || i, 'customer.read', '[]', '[]', 'allowed', 200, x'00' FROM n",
        "UPDATE audit_events SET time = 'not a time' WHERE seq = 1150",
    ])
    .await;
    // A connection of its own (not one the pool kept from before the tampering).
    let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    // The client is told: the body (or, if the failure came before the headers left, the
    // response) ends in an error, never in a clean end of stream.
    let sent = client
        .get(h.url("/v1/audit/events"))
        .bearer_auth(mint("so.cn"))
        .header("Accept", "application/x-ndjson")
        .send()
        .await;
    if let Ok(r) = sent {
        assert_eq!(r.status(), 200);
        let body = r.bytes().await;
        assert!(body.is_err(), "the export ended like a complete one ({} bytes)", body.map(|b| b.len()).unwrap_or(0));
    }
    // Untampered, the same export completes.
    let h2 = Harness::start(Db::sqlite()).await;
    h2.grant("so.cn", "security_officer", "CN").await;
    let r = h2
        .client
        .get(h2.url("/v1/audit/events"))
        .bearer_auth(mint("so.cn"))
        .header("Accept", "application/x-ndjson")
        .send()
        .await
        .unwrap();
    let text = r.text().await.unwrap();
    assert!(text.lines().count() >= 3 && text.lines().all(|l| serde_json::from_str::<Value>(l).is_ok()), "{text}");
}

/// Budget and guard counts older than their hour are pruned (the tables do not grow forever),
/// and newer ones are kept.
async fn old_counts_are_pruned(h: Harness) {
    let store = h.vault().store();
    let minute = Utc::now().timestamp().div_euclid(60);
    store.charge_budget("p.old", "searches", minute - 120, minute - 180, 1).await.unwrap();
    store.charge_budget("p.new", "searches", minute, minute - 60, 1).await.unwrap();
    store.publish_guard_counts("gone-instance", &[("p.old".into(), 3)], (minute - 120) * 60).await.unwrap();
    store.publish_guard_counts("live-instance", &[("p.new".into(), 2)], minute * 60).await.unwrap();
    h.vault().prune_budgets().await.unwrap();
    assert_eq!(h.scalar("SELECT count(*) FROM budget_usage WHERE principal = 'p.old'").await, 0);
    assert_eq!(h.scalar("SELECT count(*) FROM budget_usage WHERE principal = 'p.new'").await, 1);
    assert_eq!(h.scalar("SELECT count(*) FROM guard_counts WHERE instance = 'gone-instance'").await, 0);
    assert_eq!(h.scalar("SELECT count(*) FROM guard_counts WHERE instance = 'live-instance'").await, 1);
}

both_with!(pruning, |_| {}, old_counts_are_pruned);

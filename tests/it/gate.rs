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

const ROLES: [&str; 8] =
    ["agent", "account_manager", "marketing", "risk_officer", "crm_service", "admin", "local_admin", "security_officer"];
const DSR: &str = "data_subject_request";

/// The policy as this test expects it: role → action → purposes (empty: a non-data action).
fn model() -> HashMap<&'static str, HashMap<&'static str, Vec<&'static str>>> {
    let cs = "customer_service";
    let table: [(&str, &[(&str, &[&str])]); 8] = [
        ("agent", &[("customer.read", &[cs]), ("customer.search", &[cs])]),
        (
            "account_manager",
            &[
                ("customer.create", &[cs, "account_management"]),
                ("customer.read", &[cs, "account_management", "billing", DSR]),
                ("customer.update", &[cs, "account_management", DSR]),
                ("customer.search", &[cs, "account_management"]),
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
                ("customer.read", &[cs, "billing"]),
                ("customer.batch_get", &[cs, "billing"]),
                ("customer.search", &[cs, "billing"]),
            ],
        ),
        (
            "admin",
            &[("grant.create", &[]), ("grant.list", &[]), ("grant.revoke", &[]), ("principal.revoke_tokens", &[]), ("keys.manage", &[])],
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
    table.iter().map(|(r, acts)| (*r, acts.iter().map(|(a, p)| (*a, p.to_vec())).collect())).collect()
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
    Record { ok: u16, mutates: bool, lifts_restriction: bool },
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
    Audit { ok: u16 },
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
    missing_body: Value,
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
        let (target_role, by) = if role == "security_officer" { ("security_officer", ROOT_OFFICER) } else { ("agent", ROOT_ADMIN) };
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
        let mut req = self.h.client.request(method.clone(), self.h.url(&format!("/v1{path}"))).header("X-Request-Id", &rid);
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
            assert_eq!(v, self.missing_body, "{context}: a 404 differs from a missing record's");
        }
        if status >= 400 && method != Method::HEAD {
            assert!(!text.contains("1391") && !text.contains("欧阳") && !text.contains("11010519491231002X"), "{context}: leak {text}");
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
    let missing: Value = h.get(&format!("/v1/customers/{}", Uuid::now_v7()), ALICE).send().await.unwrap().json().await.unwrap();
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
                                    let restricted = state == State::Restricted && !lifts_restriction && purpose != "legal_request";
                                    let expected = if !permitted { 403 } else if hidden { 404 } else if restricted { 403 } else { ok };
                                    let (id, _) = if mutates && expected < 300 {
                                        m.customer(in_scope, state).await
                                    } else {
                                        m.shared[&(in_scope, state)].clone()
                                    };
                                    let body = match route.path {
                                        "/customers/{id}/reveal" => Some(json!({"fields": ["mobile"], "justification": "FRAUD-1"})),
                                        "/customers/{id}" if route.method == Method::PATCH => Some(json!({"vip_level": 1})),
                                        _ => None,
                                    };
                                    let path = route.path.replace("{id}", &id.to_string());
                                    let v = m.send(method.clone(), path, action, Some(&who), Some(purpose), body, expected, &ctx).await;
                                    if expected == 200 && method == Method::GET && route.path == "/customers/{id}" {
                                        assert_eq!(v["id"], id.to_string(), "{ctx}");
                                    }
                                }
                                Kind::Create => {
                                    if state != State::Active {
                                        continue;
                                    }
                                    let expected = if !permitted { 403 } else if in_scope { 201 } else { 403 };
                                    let v = m.send(method.clone(), route.path.into(), action, Some(&who), Some(purpose), Some(individual(city(in_scope))), expected, &ctx).await;
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
                                    let v = m.send(method.clone(), route.path.into(), action, Some(&who), Some(purpose), Some(body), expected, &ctx).await;
                                    if expected == 200 {
                                        let found = v["items"].as_array().unwrap().iter().any(|i| i["id"] == id.to_string());
                                        let visible = in_scope && state == State::Active;
                                        assert_eq!(found, visible, "{ctx}: {v}");
                                        if kind == Kind::BatchGet {
                                            assert_eq!(v["not_found"].as_array().unwrap().len(), usize::from(!visible), "{ctx}");
                                        }
                                    }
                                }
                                Kind::GrantCreate => {
                                    if state != State::Active {
                                        continue;
                                    }
                                    let target_role = if role == "security_officer" { "security_officer" } else { "agent" };
                                    let body = json!({"principal": format!("new.{}", Uuid::new_v4().simple()), "role": target_role,
                                        "region": city(in_scope), "expires_at": (Utc::now() + chrono::Duration::hours(1)).to_rfc3339()});
                                    let expected = if !permitted { 403 } else if in_scope { 201 } else { 403 };
                                    m.send(method.clone(), route.path.into(), action, Some(&who), None, Some(body), expected, &ctx).await;
                                }
                                Kind::GrantList => {
                                    if state != State::Active || !in_scope {
                                        continue;
                                    }
                                    let expected = if permitted { 200 } else { 403 };
                                    m.send(method.clone(), route.path.into(), action, Some(&who), None, None, expected, &ctx).await;
                                }
                                Kind::GrantRevoke => {
                                    if state != State::Active {
                                        continue;
                                    }
                                    let target = m.grant_target(role, in_scope).await;
                                    let expected = if !permitted { 403 } else if in_scope { 200 } else { 404 };
                                    let path = route.path.replace("{id}", &target.to_string());
                                    m.send(method.clone(), path, action, Some(&who), None, None, expected, &ctx).await;
                                }
                                Kind::RevokeTokens => {
                                    if state != State::Active {
                                        continue;
                                    }
                                    let sub = format!("tok.{}", Uuid::new_v4().simple());
                                    h_grant(&h, &sub, "agent", city(in_scope)).await;
                                    let expected = if !permitted { 403 } else if in_scope { 200 } else { 403 };
                                    let path = route.path.replace("{sub}", &sub);
                                    m.send(method.clone(), path, action, Some(&who), None, None, expected, &ctx).await;
                                }
                                Kind::Keys => {
                                    if state != State::Active || !in_scope {
                                        continue;
                                    }
                                    // Permitted or not, a province is not CN.
                                    m.send(method.clone(), route.path.into(), action, Some(&who), None, None, 403, &ctx).await;
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
    for (rid, action, status) in audit_by_prefix(&h, "mx-").await {
        events.entry(rid).or_default().push((action, status));
    }
    assert!(m.cells.len() > 900, "the matrix ran {} cells", m.cells.len());
    for c in &m.cells {
        let got = events.get(&c.rid).cloned().unwrap_or_default();
        assert_eq!(got, vec![(c.action.to_owned(), i64::from(c.status))], "{} /v1{}: audit", c.method, c.path);
    }
}

/// (request id, action, status) of every event whose request id starts with `prefix`.
async fn audit_by_prefix(h: &Harness, prefix: &str) -> Vec<(String, String, i64)> {
    use sqlx::{Connection, Row};
    let sql = "SELECT request_id, action, status FROM audit_events WHERE request_id LIKE $1";
    let pattern = format!("{prefix}%");
    macro_rules! fetch {
        ($c:expr) => {
            sqlx::query(sql)
                .bind(&pattern)
                .fetch_all(&mut $c)
                .await
                .unwrap()
                .iter()
                .map(|r| (r.get(0), r.get(1), i64::from(r.get::<i32, _>(2))))
                .collect()
        };
    }
    match &h.db {
        Db::Sqlite { path, .. } => {
            let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display())).await.unwrap();
            fetch!(c)
        }
        Db::Postgres { url, .. } => {
            let mut c = sqlx::PgConnection::connect(url).await.unwrap();
            fetch!(c)
        }
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

//! The web console over HTTP, as an attacker and as its users would try it: the development
//! sign-in exists only with the public example keys; sessions are server-side, cookie-bound,
//! ended by sign-out and by token revocation, and never accepted on `/v1`; every page carries
//! the strict headers; state-changing forms need the session's CSRF token and refuse
//! cross-site posts; data pages go through the gate and the audit like `/v1`; an officer at a
//! province sees only its subtree's events; both languages.

use reqwest::header::{HeaderMap, ACCEPT_LANGUAGE, COOKIE, LOCATION, SET_COOKIE};

use crate::support::*;

fn client() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

/// Signs in through the development form; returns the `Cookie` header value.
async fn sign_in(h: &Harness, sub: &str) -> String {
    let r = client().post(h.url("/console/sign-in/development")).form(&[("sub", sub)]).send().await.unwrap();
    assert_eq!(r.status(), 303, "development sign-in");
    let set = r.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    set.split(';').next().unwrap().to_owned()
}

async fn page(h: &Harness, path: &str, cookie: &str) -> (u16, HeaderMap, String) {
    let r = client().get(h.url(path)).header(COOKIE, cookie).send().await.unwrap();
    let (status, headers) = (r.status().as_u16(), r.headers().clone());
    (status, headers, r.text().await.unwrap())
}

/// The CSRF token of the page's forms.
fn csrf_of(html: &str) -> String {
    let at = html.find(r#"name="csrf" value=""#).expect("a form with a CSRF token");
    html[at + 19..].split('"').next().unwrap().to_owned()
}

fn assert_strict_headers(headers: &HeaderMap, what: &str) {
    let csp = headers["content-security-policy"].to_str().unwrap();
    for part in ["default-src 'none'", "frame-ancestors 'none'", "form-action 'self'"] {
        assert!(csp.contains(part), "{what}: CSP {csp}");
    }
    assert!(!csp.contains("unsafe-inline") && !csp.contains("http"), "{what}: CSP {csp}");
    assert_eq!(headers["x-content-type-options"], "nosniff", "{what}");
    assert_eq!(headers["referrer-policy"], "no-referrer", "{what}");
    assert_eq!(headers["cache-control"], "no-store", "{what}");
}

#[tokio::test]
async fn every_console_response_carries_the_strict_headers() {
    let h = Harness::start(Db::sqlite()).await;
    for path in ["/console/sign-in", "/console/static/console.css", "/console/nothing-here", "/console"] {
        let r = client().get(h.url(path)).send().await.unwrap();
        assert_strict_headers(r.headers(), path);
    }
    // Not signed in: the pages send you to sign-in, and nothing else.
    let r = client().get(h.url("/console/audit")).send().await.unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()[LOCATION], "/console/sign-in");
}

#[tokio::test]
async fn a_session_is_a_server_side_cookie_that_sign_out_and_revocation_end() {
    let h = Harness::start(Db::sqlite()).await;
    h.grant("so-console", "security_officer", "CN").await;
    let r = client().post(h.url("/console/sign-in/development")).form(&[("sub", "so-console")]).send().await.unwrap();
    let set = r.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/console"] {
        assert!(set.contains(attr), "{set}");
    }
    assert!(!set.contains("Secure"), "plain HTTP from an untrusted peer: {set}");
    let cookie = set.split(';').next().unwrap().to_owned();

    let (status, _, html) = page(&h, "/console", &cookie).await;
    assert_eq!(status, 200, "{html}");
    assert!(html.contains("so-console"));
    // The session is not a credential for the API.
    let r = client().get(h.url("/v1/audit/events")).header(COOKIE, &cookie).send().await.unwrap();
    assert_eq!(r.status(), 401);

    // Sign-out needs the token, then ends the session on the server: the old cookie is dead.
    let csrf = csrf_of(&html);
    let r = client()
        .post(h.url("/console/sign-out"))
        .header(COOKIE, &cookie)
        .form(&[("csrf", "forged")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = client()
        .post(h.url("/console/sign-out"))
        .header(COOKIE, &cookie)
        .form(&[("csrf", &csrf)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let (status, headers, _) = page(&h, "/console/audit", &cookie).await;
    assert_eq!((status, headers[LOCATION].to_str().unwrap()), (303, "/console/sign-in"));

    // Revoking the principal's tokens ends its sessions too (alice: an administrator may
    // revoke hers; her session is refused by the gate on this page, then not even signed in).
    let cookie = sign_in(&h, ALICE).await;
    assert_eq!(page(&h, "/console", &cookie).await.0, 403);
    let r =
        h.client.post(h.url("/v1/principals/alice/revoke-tokens")).bearer_auth(mint(ROOT_ADMIN)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let (status, _, html) = page(&h, "/console", &cookie).await;
    assert_eq!(status, 401, "{html}");
    assert!(html.contains("<code>token_revoked</code>"), "{html}");

    // Sign-in and sign-out are audited under the principal.
    let n = h
        .scalar("SELECT COUNT(*) FROM audit_events WHERE action = 'console.sign_in' AND principal = 'so-console'")
        .await;
    assert_eq!(n, 1);
    let n = h
        .scalar("SELECT COUNT(*) FROM audit_events WHERE action = 'console.sign_out' AND principal = 'so-console'")
        .await;
    assert_eq!(n, 2, "the forged sign-out and the real one");
}

#[tokio::test]
async fn behind_a_trusted_https_proxy_the_cookie_is_secure() {
    let h = Harness::start_with(Db::sqlite(), |c| c.trusted_proxies = vec!["127.0.0.0/8".into()]).await;
    let r = client()
        .post(h.url("/console/sign-in/development"))
        .header("X-Forwarded-Proto", "https")
        .form(&[("sub", "someone")])
        .send()
        .await
        .unwrap();
    assert!(r.headers()[SET_COOKIE].to_str().unwrap().contains("; Secure"));
}

#[tokio::test]
async fn without_the_example_keys_there_is_no_development_sign_in() {
    let h = Harness::start(Db::sqlite()).await;
    let real = h.another_instance_with(|c| c.auth.keys.retain(|k| k.kid != "example")).await;
    let url = |path: &str| format!("http://{}{path}", real.addr);
    let r = client().post(url("/console/sign-in/development")).form(&[("sub", ROOT_OFFICER)]).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.headers().get(SET_COOKIE).is_none());
    let html = client().get(url("/console/sign-in")).send().await.unwrap().text().await.unwrap();
    assert!(!html.contains("sign-in/development"), "the form is offered: {html}");
}

#[tokio::test]
async fn forms_refuse_cross_site_posts_and_missing_tokens() {
    let h = Harness::start(Db::sqlite()).await;
    h.grant("so-csrf", "security_officer", "CN").await;
    let cookie = sign_in(&h, "so-csrf").await;
    let (_, _, html) = page(&h, "/console/verify", &cookie).await;
    let csrf = csrf_of(&html);
    let post = |form: Vec<(&'static str, String)>| {
        client().post(h.url("/console/verify")).header(COOKIE, cookie.clone()).form(&form)
    };
    assert_eq!(post(vec![]).send().await.unwrap().status(), 403, "no token at all");
    assert_eq!(post(vec![("csrf", "x".repeat(43))]).send().await.unwrap().status(), 403);
    let r = post(vec![("csrf", csrf.clone())]).header("Origin", "https://evil.example").send().await.unwrap();
    assert_eq!(r.status(), 403, "a cross-origin post");
    let r = post(vec![("csrf", csrf.clone())]).header("Sec-Fetch-Site", "cross-site").send().await.unwrap();
    assert_eq!(r.status(), 403, "a cross-site post");
    let r = post(vec![("csrf", csrf)]).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let html = r.text().await.unwrap();
    assert!(html.contains(r#"id="verify-result""#) && html.contains("class=\"ok\""), "{html}");
    // Framing is refused by the CSP and X-Frame-Options on every page.
    let (_, headers, _) = page(&h, "/console/verify", &cookie).await;
    assert_eq!(headers["x-frame-options"], "DENY");
}

#[tokio::test]
async fn the_gate_decides_console_pages_and_the_audit_records_them() {
    let h = Harness::start(Db::sqlite()).await;
    // An account manager has no audit grant: refused, as on /v1, and audited.
    let cookie = sign_in(&h, ALICE).await;
    let r = client()
        .get(h.url("/console/audit"))
        .header(COOKIE, &cookie)
        .header("x-request-id", "console-denied")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let html = r.text().await.unwrap();
    assert!(html.contains("<code>forbidden</code>"), "{html}");
    let rows = h.audit_rows("console-denied").await;
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].0.as_str(), rows[0].1.as_str(), rows[0].2), ("audit.read", "denied", 403));
    assert_eq!(page(&h, "/console/verify", &cookie).await.0, 403, "no verify button for a non-officer");
}

#[tokio::test]
async fn an_officer_at_a_province_sees_only_its_subtree() {
    let h = Harness::start(Db::sqlite()).await;
    h.grant("js-agent", "agent", "32").await;
    h.grant("gd-agent", "agent", "44").await;
    let js = h.create(individual("3201")).await;
    let gd = h.create(individual("4401")).await;
    for (who, id) in [("js-agent", js), ("gd-agent", gd)] {
        let r = h.get(&format!("/v1/customers/{id}"), who).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    h.grant("so-js", "security_officer", "32").await;
    let cookie = sign_in(&h, "so-js").await;
    let (status, _, html) = page(&h, "/console/audit?action=customer.read", &cookie).await;
    assert_eq!(status, 200, "{html}");
    assert!(html.contains("js-agent"), "{html}");
    assert!(!html.contains("gd-agent"), "another province's events are shown");
    // No customer PII on the page.
    for pii in ["13812345678", "欧阳", "11010519491231002X"] {
        assert!(!html.contains(pii), "PII on the console: {pii}");
    }
}

#[tokio::test]
async fn pages_speak_simplified_chinese_or_english() {
    let h = Harness::start(Db::sqlite()).await;
    h.grant("so-lang", "security_officer", "CN").await;
    let cookie = sign_in(&h, "so-lang").await;
    let (_, _, zh) = page(&h, "/console", &cookie).await;
    assert!(
        zh.contains(r#"<html lang="zh-CN">"#) && zh.contains("概览") && zh.contains(r#"href="/console/lang/en""#),
        "{zh}"
    );
    let r = client()
        .get(h.url("/console"))
        .header(COOKIE, &cookie)
        .header(ACCEPT_LANGUAGE, "en-US,en;q=0.9")
        .send()
        .await
        .unwrap();
    let en = r.text().await.unwrap();
    assert!(
        en.contains(r#"<html lang="en">"#) && en.contains("Overview") && en.contains(r#"href="/console/lang/zh-CN""#)
    );
    // The switch sets a preference cookie that wins over Accept-Language.
    let r = client().get(h.url("/console/lang/zh-CN")).send().await.unwrap();
    assert_eq!(r.status(), 303);
    let lang = r.headers()[SET_COOKIE].to_str().unwrap().split(';').next().unwrap().to_owned();
    let r = client()
        .get(h.url("/console"))
        .header(COOKIE, format!("{cookie}; {lang}"))
        .header(ACCEPT_LANGUAGE, "en")
        .send()
        .await
        .unwrap();
    assert!(r.text().await.unwrap().contains(r#"<html lang="zh-CN">"#));
}

/// The console's declared routes × every role, generated from the router's own table: only a
/// security officer is let through (audit pages), everyone else is refused by the gate, and
/// nobody gets anything without a session. A console route added without a row here fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_route_matrix() {
    let h = Harness::start(Db::sqlite()).await;
    let routes = custodia::api::console::routes();
    assert!(routes.len() >= 4, "{routes:?}");
    for role in ROLES {
        h.grant(&format!("c.{role}"), role, "32").await;
    }
    for route in &routes {
        let action = route.action.as_str();
        let officer_only = match action {
            "audit.read" | "audit.verify" | "audit.alerts" => true,
            other => panic!("console route {} {} ({other}) has no row in the console matrix", route.method, route.path),
        };
        let path =
            format!("/console{}", route.path.trim_end_matches('/')).replace("{id}", &uuid::Uuid::now_v7().to_string());
        // Without a session: sent to sign-in.
        let r = client().request(route.method.clone(), h.url(&path)).send().await.unwrap();
        assert_eq!(r.status(), 303, "{} {path} without a session", route.method);
        for role in ROLES {
            let cookie = sign_in(&h, &format!("c.{role}")).await;
            // Every signed-in page, a refusal too, carries the sign-out form and its token.
            let (_, _, html) = page(&h, "/console", &cookie).await;
            let csrf = csrf_of(&html);
            let request = client().request(route.method.clone(), h.url(&path)).header(COOKIE, &cookie);
            let request = if route.method == reqwest::Method::POST {
                request.form(&[("csrf", csrf.as_str()), ("reason", "TICKET-1")])
            } else {
                request
            };
            let status = request.send().await.unwrap().status().as_u16();
            // An officer clearing an alert that does not exist is told it is missing.
            let ok = if route.path.contains("{id}") { 404 } else { 200 };
            let expected = if officer_only && role != "security_officer" { 403 } else { ok };
            assert_eq!(status, expected, "{} {path} as {role}", route.method);
        }
    }
}

/// An officer at CN finds the alert a burst of reads raised, and clears it with a ticket: the
/// principal is served again, and the clearing is audited with the ticket as justification.
#[tokio::test]
async fn an_officer_clears_an_alert_with_a_ticket() {
    let h = Harness::start_with(Db::sqlite(), |c| c.audit.bulk_threshold = 3).await;
    h.grant("burst-agent", "agent", "32").await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(h.create(individual("3201")).await);
    }
    let mut statuses = Vec::new();
    for id in &ids {
        statuses.push(h.get(&format!("/v1/customers/{id}"), "burst-agent").send().await.unwrap().status().as_u16());
    }
    assert_eq!(statuses.last(), Some(&429), "the burst was not blocked: {statuses:?}");
    h.grant("so-alerts", "security_officer", "CN").await;
    let cookie = sign_in(&h, "so-alerts").await;
    let (status, _, html) = page(&h, "/console/alerts", &cookie).await;
    assert_eq!(status, 200, "{html}");
    assert!(html.contains("burst-agent") && html.contains("bulk_access"), "{html}");
    let at = html.find("/console/alerts/").unwrap();
    let action = html[at..].split('"').next().unwrap().to_owned();
    let csrf = csrf_of(&html);
    // Without a ticket: refused in words.
    let r = client()
        .post(h.url(&action))
        .header(COOKIE, &cookie)
        .form(&[("csrf", csrf.as_str()), ("reason", "no")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    assert!(r.text().await.unwrap().contains("<code>invalid_reason</code>"));
    let r = client()
        .post(h.url(&action))
        .header(COOKIE, &cookie)
        .header("x-request-id", "console-clear")
        .form(&[("csrf", csrf.as_str()), ("reason", "SEC-2026-0042")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let rows = h.audit_rows("console-clear").await;
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].0.as_str(), rows[0].1.as_str()), ("audit.alerts", "allowed"));
    let n = h
        .scalar(
            "SELECT COUNT(*) FROM audit_events WHERE request_id = 'console-clear' AND justification = 'SEC-2026-0042'",
        )
        .await;
    assert_eq!(n, 1, "the ticket is not in the audit");
    let r = h.get(&format!("/v1/customers/{}", ids[0]), "burst-agent").send().await.unwrap();
    assert_eq!(r.status(), 200, "the principal is still blocked after the clear");
}

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
    // `Origin: null` (what a browser sends under no-referrer, and what a sandboxed attacker page
    // sends): only with Sec-Fetch-Site saying same-origin.
    let r = post(vec![("csrf", csrf.clone())]).header("Origin", "null").send().await.unwrap();
    assert_eq!(r.status(), 403, "an opaque origin without fetch metadata");
    let r = post(vec![("csrf", csrf.clone())])
        .header("Origin", "null")
        .header("Sec-Fetch-Site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "an opaque origin from another site");
    let r = post(vec![("csrf", csrf.clone())])
        .header("Origin", "null")
        .header("Sec-Fetch-Site", "same-origin")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the console's own form, as a browser posts it");
    let r = post(vec![("csrf", csrf)]).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let html = r.text().await.unwrap();
    assert!(html.contains(r#"id="verify-result""#) && html.contains("class=\"ok\""), "{html}");
    // The overview now says through which sequence number the chain was verified.
    let (_, _, overview) = page(&h, "/console", &cookie).await;
    let verified = overview.split(r#"<td id="verified">"#).nth(1).unwrap().split("</td>").next().unwrap();
    assert!(verified.contains(r#"<span class="ok">#"#), "{verified}");
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

/// The console's declared routes × every role (granted at a province), generated from the
/// router's own table: each role is let through exactly where its policy lets it through on
/// `/v1`, refused by the gate (403) elsewhere, and nobody gets anything without a session. A
/// console route added without a row here fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_route_matrix() {
    let (_keys, keys_file) = temp_keys();
    let h = Harness::start_with(Db::sqlite(), |c| c.keys_file = keys_file).await;
    let routes = custodia::api::console::routes();
    assert!(routes.len() >= 15, "{routes:?}");
    for role in ROLES {
        h.grant(&format!("c.{role}"), role, "32").await;
    }
    for route in &routes {
        let action = route.action.as_str();
        let permitted: &[&str] = match action {
            "audit.read" | "audit.verify" | "audit.alerts" => &["security_officer"],
            "grant.list" | "grant.create" | "grant.revoke" => &["admin", "local_admin", "security_officer"],
            "principal.revoke_tokens" => &["admin"],
            // Keys are managed at the group level only: an administrator at a province is refused.
            "keys.manage" => &[],
            other => panic!("console route {} {} ({other}) has no row in the console matrix", route.method, route.path),
        };
        // What a permitted role gets: the page, or for these the answer to the matrix's
        // placeholder (a grant or alert that does not exist: 404; a grant form without values:
        // 422; ending the tokens of a principal without grants: done, back to its page).
        let ok = match (route.method.as_str(), route.path) {
            ("POST", "/alerts/{id}/clear")
            | ("GET", "/alerts/{id}")
            | (_, "/grants/{id}/revoke")
            | (_, "/audit/events/{seq}") => 404,
            ("POST", "/grants") => 422,
            ("POST", "/principals/{sub}/revoke-tokens") => 303,
            _ => 200,
        };
        let path = format!("/console{}", route.path.trim_end_matches('/'))
            .replace("{id}", &uuid::Uuid::now_v7().to_string())
            .replace("{sub}", "nobody-here")
            .replace("{seq}", "999999999");
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
            let expected = if permitted.contains(&role) { ok } else { 403 };
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
    // The alert's own page: what raised it and a link to the principal's events in its window.
    let at = html.find(r#"<a href="/console/alerts/"#).expect("a link to the alert");
    let link = html[at + 9..].split('"').next().unwrap().to_owned();
    let (status, _, detail) = page(&h, &link, &cookie).await;
    assert_eq!(status, 200, "{detail}");
    let events =
        detail.split(r#"id="alert-events" href=""#).nth(1).unwrap().split('"').next().unwrap().replace("&amp;", "&");
    let (_, _, found) = page(&h, &events, &cookie).await;
    assert!(found.contains("burst-agent") && found.contains("customer.read"), "the window's events: {found}");
    h.grant("so-other", "security_officer", "44").await;
    let other = sign_in(&h, "so-other").await;
    assert_eq!(page(&h, &link, &other).await.0, 404, "another province's alert is missing, as an unknown one");
    let at = html.find(r#"action="/console/alerts/"#).unwrap() + 8;
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

/// The first day after tomorrow's start that a one-day grant still covers: tomorrow (UTC).
fn tomorrow() -> String {
    (chrono::Utc::now() + chrono::Duration::days(1)).format("%Y-%m-%d").to_string()
}

/// A province administrator grants an agent in a city through the form, which offers only its
/// own subtree and roles; the HQ administrator then sees what revoking the province
/// administrator's grant would suspend (both agents it delegated), revokes it, and the agents
/// are refused from then on.
#[tokio::test]
async fn an_admin_grants_in_a_city_sees_the_cascade_and_revokes() {
    let h = Harness::start(Db::sqlite()).await;
    let province = h.grant("js-admin", "admin", "32").await;
    h.grant_by("js-admin", "nj-agent", "agent", "3201", chrono::Utc::now() + chrono::Duration::hours(12)).await;
    let nj_customer = h.create(individual("3201")).await;

    let cookie = sign_in(&h, "js-admin").await;
    let (status, _, html) = page(&h, "/console/grants/new", &cookie).await;
    assert_eq!(status, 200, "{html}");
    assert!(html.contains(r#"<option value="agent">"#) && html.contains(r#"<option value="3202">"#), "{html}");
    for outside in [r#"<option value="CN">"#, r#"<option value="44">"#, r#"<option value="4401">"#] {
        assert!(!html.contains(outside), "the form offers {outside} outside the subtree");
    }
    let csrf = csrf_of(&html);
    let grant = |principal: &'static str, region: &'static str, expires: String| {
        let form = [
            ("csrf", csrf.clone()),
            ("principal", principal.into()),
            ("role", "agent".into()),
            ("region", region.into()),
            ("expires", expires),
        ];
        client().post(h.url("/console/grants")).header(COOKIE, cookie.clone()).form(&form).send()
    };
    let r = grant("wx-agent", "3202", tomorrow()).await.unwrap();
    assert_eq!((r.status().as_u16(), r.headers()[LOCATION].to_str().unwrap()), (303, "/console/grants"));
    // Outside its subtree, or past its own expiry: refused in words, with the API's code.
    let r = grant("gd-agent", "4401", tomorrow()).await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("<code>"), "the refusal names its problem code");
    let far = (chrono::Utc::now() + chrono::Duration::days(30)).format("%Y-%m-%d").to_string();
    let r = grant("late-agent", "3202", far).await.unwrap();
    assert_eq!(r.status(), 403);
    let (_, _, tree) = page(&h, "/console/grants", &cookie).await;
    assert!(tree.contains("wx-agent") && tree.contains("nj-agent") && tree.contains(r#"id="region-3202""#), "{tree}");
    assert!(!tree.contains("late-agent") && !tree.contains("gd-agent"));

    // The HQ administrator previews the revocation of the province's grant: both agents.
    let root = sign_in(&h, ROOT_ADMIN).await;
    let (status, _, preview) = page(&h, &format!("/console/grants/{province}/revoke"), &root).await;
    assert_eq!(status, 200, "{preview}");
    assert!(
        preview.contains(r#"id="cascade""#) && preview.contains("nj-agent") && preview.contains("wx-agent"),
        "{preview}"
    );
    assert!(h.get(&format!("/v1/customers/{nj_customer}"), "nj-agent").send().await.unwrap().status() == 200);
    let r = client()
        .post(h.url(&format!("/console/grants/{province}/revoke")))
        .header(COOKIE, &root)
        .form(&[("csrf", csrf_of(&preview))])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let r = h.get(&format!("/v1/customers/{nj_customer}"), "nj-agent").send().await.unwrap();
    assert_eq!(r.status(), 403, "a grant delegated under a revoked one is suspended");
    let n = h.scalar("SELECT COUNT(*) FROM audit_events WHERE action = 'grant.revoke' AND principal = 'root-admin' AND status = 200").await;
    assert_eq!(n, 1, "the revocation is audited as on /v1");
}

/// A local administrator is offered no `admin` role, and a forged form asking for one is
/// refused by the gate.
#[tokio::test]
async fn a_local_admin_sees_no_way_to_grant_admin() {
    let h = Harness::start(Db::sqlite()).await;
    h.grant("js-local", "local_admin", "32").await;
    let cookie = sign_in(&h, "js-local").await;
    let (status, _, html) = page(&h, "/console/grants/new", &cookie).await;
    assert_eq!(status, 200, "{html}");
    assert!(!html.contains(r#"<option value="admin">"#) && !html.contains(r#"<option value="local_admin">"#), "{html}");
    let form = [
        ("csrf", csrf_of(&html)),
        ("principal", "x-admin".into()),
        ("role", "admin".into()),
        ("region", "3201".into()),
        ("expires", tomorrow()),
    ];
    let r = client().post(h.url("/console/grants")).header(COOKIE, &cookie).form(&form).send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(h.scalar("SELECT COUNT(*) FROM grants WHERE principal = 'x-admin'").await, 0);
}

/// A principal's page shows its grants with the chain they were delegated along (only as far
/// up as the viewer's own scope), and ends its tokens.
#[tokio::test]
async fn the_principal_page_shows_the_chain_and_revokes_tokens() {
    let h = Harness::start(Db::sqlite()).await;
    h.grant("js-admin", "admin", "32").await;
    h.grant_by("js-admin", "nj-agent", "agent", "3201", chrono::Utc::now() + chrono::Duration::hours(12)).await;
    let id = h.create(individual("3201")).await;
    let token = mint("nj-agent");

    let root = sign_in(&h, ROOT_ADMIN).await;
    let (status, _, html) = page(&h, "/console/principals/nj-agent", &root).await;
    assert_eq!(status, 200, "{html}");
    assert!(html.contains("js-admin") && html.contains("中国 (HQ)"), "the whole chain up to HQ: {html}");
    let province = sign_in(&h, "js-admin").await;
    let (_, _, html) = page(&h, "/console/principals/nj-agent", &province).await;
    assert!(
        html.contains("3201") && !html.contains("中国 (HQ)"),
        "the chain above the viewer's scope is not shown: {html}"
    );

    let r = client()
        .post(h.url("/console/principals/nj-agent/revoke-tokens"))
        .header(COOKIE, &root)
        .form(&[("csrf", csrf_of(&page(&h, "/console/principals/nj-agent", &root).await.2))])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let r = h
        .client
        .get(h.url(&format!("/v1/customers/{id}")))
        .bearer_auth(&token)
        .header("X-Purpose", PURPOSE)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "the agent's token issued before is refused");
}

/// The HQ administrator's keys page: versions and rewrap progress; rotation only after the
/// confirmation is ticked.
#[tokio::test]
async fn an_hq_admin_rotates_the_keys_after_confirming() {
    let (_keys, keys_file) = temp_keys();
    let h = Harness::start_with(Db::sqlite(), |c| c.keys_file = keys_file).await;
    h.create(individual("3201")).await;
    let cookie = sign_in(&h, ROOT_ADMIN).await;
    let (status, _, html) = page(&h, "/console/keys", &cookie).await;
    assert_eq!(status, 200, "{html}");
    assert!(html.contains(r#"<strong id="active-version">1</strong>"#), "{html}");
    let csrf = csrf_of(&html);
    let rotate = |form: Vec<(&'static str, String)>| {
        client().post(h.url("/console/keys/rotate")).header(COOKIE, cookie.clone()).form(&form).send()
    };
    let r = rotate(vec![("csrf", csrf.clone())]).await.unwrap();
    assert_eq!(r.status(), 422);
    assert!(r.text().await.unwrap().contains("<code>confirmation_required</code>"));
    assert!(
        page(&h, "/console/keys", &cookie).await.2.contains(r#"<strong id="active-version">1</strong>"#),
        "not rotated"
    );
    let r = rotate(vec![("csrf", csrf), ("confirm", "rotate".into())]).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains(r#"<strong id="active-version">2</strong>"#));
    // A province administrator has no keys page.
    h.grant("js-admin", "admin", "32").await;
    let province = sign_in(&h, "js-admin").await;
    assert_eq!(page(&h, "/console/keys", &province).await.0, 403);
}

/// An officer opens an event in full, exports the search as NDJSON and CSV (a principal named
/// like a spreadsheet formula stays text), and reads a customer's access report; a province
/// officer cannot open another province's event. No PII in any of it.
#[tokio::test]
async fn an_officer_opens_events_exports_them_and_reports_a_customers_access() {
    let h = Harness::start(Db::sqlite()).await;
    h.grant("+cmd|calc", "agent", "32").await;
    let id = h.create(individual("3201")).await;
    let r = h
        .get(&format!("/v1/customers/{id}"), "+cmd|calc")
        .header("x-request-id", "evidence-read")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    h.grant("so-evidence", "security_officer", "CN").await;
    let cookie = sign_in(&h, "so-evidence").await;

    let (status, _, html) = page(&h, &format!("/console/audit?customer={id}&action=customer.read"), &cookie).await;
    assert_eq!(status, 200, "{html}");
    let at = html.find("/console/audit/events/").expect("a link to the event");
    let link = html[at..].split('"').next().unwrap().to_owned();
    let (status, _, detail) = page(&h, &link, &cookie).await;
    assert_eq!(status, 200, "{detail}");
    for part in ["evidence-read", "customer_service", "mobile: masked", &id.to_string()] {
        assert!(detail.contains(part), "the event's detail lacks {part}: {detail}");
    }

    let r = client()
        .get(h.url(&format!("/console/audit/export.ndjson?customer={id}")))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/x-ndjson");
    let body = r.text().await.unwrap();
    let lines: Vec<serde_json::Value> = body.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(lines.len() >= 2, "the create and the read: {body}");
    assert!(lines.iter().all(|l| l["customer_ids"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c == &serde_json::json!(id.to_string()))));
    let r = client()
        .get(h.url(&format!("/console/audit/export.csv?customer={id}")))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let csv = r.text().await.unwrap();
    assert!(csv.contains("'+cmd|calc"), "the formula-like principal is neutralised: {csv}");
    assert!(!csv.contains(",+cmd|calc"), "{csv}");
    for pii in ["13812345678", "欧阳", "11010519491231002X"] {
        assert!(!body.contains(pii) && !csv.contains(pii) && !detail.contains(pii), "PII in an export: {pii}");
    }
    let n = h.scalar("SELECT COUNT(*) FROM audit_events WHERE action = 'audit.read' AND principal = 'so-evidence' AND status = 200").await;
    assert!(n >= 4, "every page and export is audited: {n}");

    // The search filters by purpose too.
    let (_, _, by_purpose) =
        page(&h, &format!("/console/audit?customer={id}&purpose=fraud_investigation"), &cookie).await;
    assert!(by_purpose.contains(r#"id="no-events""#), "no event of this customer has that purpose: {by_purpose}");
    let (_, _, by_purpose) = page(&h, &format!("/console/audit?customer={id}&purpose=customer_service"), &cookie).await;
    assert!(by_purpose.contains("+cmd|calc"), "{by_purpose}");
    let (status, _, report) = page(&h, &format!("/console/customers/access?customer={id}"), &cookie).await;
    assert_eq!(status, 200, "{report}");
    assert!(
        report.contains("+cmd|calc") && report.contains("customer_service") && report.contains("mobile (masked)"),
        "{report}"
    );

    h.grant("so-gd", "security_officer", "44").await;
    let gd = sign_in(&h, "so-gd").await;
    assert_eq!(page(&h, &link, &gd).await.0, 404, "another province's event is missing, as an unknown one");
    let (_, _, report) = page(&h, &format!("/console/customers/access?customer={id}"), &gd).await;
    assert!(!report.contains("+cmd|calc"), "another province's access is not reported");
}

// The officer's overview counts the subtree's events by outcome (charts), its reveals and
// exports, its open alerts, and names the principals touching the most customers.
on_both! {
    async fn the_overview_counts_outcomes_reveals_and_lists_the_busiest_principals(h) {
        h.grant("ro-overview", "risk_officer", "32").await;
        h.grant("ag-overview", "agent", "32").await;
        let mut ids = Vec::new();
        for _ in 0..3 {
            ids.push(h.create(individual("3201")).await);
        }
        for id in &ids {
            assert_eq!(h.get(&format!("/v1/customers/{id}"), "ag-overview").send().await.unwrap().status(), 200);
        }
        let r = h
            .client
            .post(h.url(&format!("/v1/customers/{}/reveal", ids[0])))
            .bearer_auth(mint("ro-overview"))
            .header("X-Purpose", "fraud_investigation")
            .json(&serde_json::json!({"fields": ["mobile"], "justification": "CASE-9"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        // A denial: an agent of another province reading a Jiangsu customer.
        h.grant("gd-overview", "agent", "44").await;
        assert_eq!(h.get(&format!("/v1/customers/{}", ids[0]), "gd-overview").send().await.unwrap().status(), 404);
        h.grant("so-overview", "security_officer", "CN").await;
        let cookie = sign_in(&h, "so-overview").await;
        let (status, _, html) = page(&h, "/console", &cookie).await;
        assert_eq!(status, 200, "{html}");
        assert!(html.contains(r#"<figure id="chart-day"><svg"#) && html.contains("<rect"), "no chart: {html}");
        let reveals = html.split(r#"id="reveals"><span class="n">"#).nth(1).unwrap().split('<').next().unwrap();
        assert_eq!(reveals, "1", "{html}");
        let leaders = html.split(r#"id="leaders""#).nth(1).expect("a leak-warning list");
        let first = leaders.split("principal=").nth(1).unwrap().split('"').next().unwrap();
        // The agent read three customers, alice created them (three), the risk officer one.
        assert!(first == "ag-overview" || first == "alice", "the busiest principal first: {leaders}");
        assert!(leaders.contains("ro-overview"));
        assert!(!html.contains("13812345678"), "PII on the overview");
    }
}

//! Console sign-in through a real OpenID Connect provider (npm `oidc-provider`, started from
//! tests/oidc/provider.mjs on a loopback port), end to end over HTTP as a browser would do it:
//! the authorization code flow with PKCE, then the attacks on it — a wrong or missing `state`
//! (login CSRF), a replayed code, a token for another audience, a provider that is not the
//! configured issuer — and the session's end by sign-out and by idling.
//!
//! Where Node.js or the provider's package is absent the tests say they were skipped; CI sets
//! `CUSTODIA_REQUIRE_OIDC=1` (and installs it), so there they cannot skip.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::Once;

use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use tokio::io::AsyncBufReadExt;

use crate::support::*;

const CLIENT_ID: &str = "custodia-console";
const CLIENT_SECRET: &str = "test-client-secret-not-for-production";
const AUDIENCE: &str = "custodia";

/// The provider process (stopped when dropped).
pub struct Provider {
    pub issuer: String,
    _child: tokio::process::Child,
}

/// Starts the provider for a vault whose callback is `redirect_uri`, or `None` (reported) when
/// it cannot run here.
pub async fn provider(redirect_uri: &str) -> Option<Provider> {
    let script = root_path("tests/oidc/provider.mjs");
    let installed = root_path("tests/oidc/node_modules/oidc-provider/package.json").exists();
    let node = std::process::Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success());
    if !installed || !node {
        if std::env::var("CUSTODIA_REQUIRE_OIDC").is_ok_and(|v| v == "1") {
            panic!(
                "CUSTODIA_REQUIRE_OIDC=1 but node or tests/oidc/node_modules is missing (npm ci --prefix tests/oidc)"
            );
        }
        static SKIP: Once = Once::new();
        SKIP.call_once(|| {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "\n*** OpenID Connect sign-in tests SKIPPED: needs node and `npm ci --prefix tests/oidc` ***\n"
            );
        });
        return None;
    }
    let mut child = tokio::process::Command::new("node")
        .arg(script)
        .env("OIDC_CLIENT_ID", CLIENT_ID)
        .env("OIDC_CLIENT_SECRET", CLIENT_SECRET)
        .env("OIDC_REDIRECT_URI", redirect_uri)
        .env("OIDC_AUDIENCE", AUDIENCE)
        .stdout(Stdio::piped())
        // Its warnings (an in-memory store, Node.js 20) are the test setup's, not the vault's.
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("node starts");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(std::time::Duration::from_secs(20), lines.next_line())
        .await
        .expect("the provider starts within 20 s")
        .unwrap()
        .expect("the provider prints its issuer");
    // The rest of its output is read and dropped (a closed pipe would end the provider).
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    Some(Provider { issuer: v["issuer"].as_str().unwrap().to_owned(), _child: child })
}

/// A vault (SQLite) with OpenID Connect sign-in against a fresh provider, whose published keys
/// are the only token keys it accepts.
pub async fn vault_with_provider(
    adjust: impl FnOnce(&mut custodia::config::Config, &str),
) -> Option<(Harness, Provider)> {
    let addr = free_loopback_addr();
    let redirect = format!("http://{addr}/console/sign-in/callback");
    let p = provider(&redirect).await?;
    let issuer = p.issuer.clone();
    let h = Harness::start_plain(Db::sqlite(), |c| {
        c.listen = addr;
        c.auth.issuer = issuer.clone();
        c.auth.audience = AUDIENCE.into();
        c.auth.keys.clear();
        c.console.client_id = Some(CLIENT_ID.into());
        c.console.client_secret = Some(CLIENT_SECRET.into());
        c.console.redirect_uri = Some(redirect.clone());
        adjust(c, &issuer);
    })
    .await;
    Some((h, p))
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

/// A browser's cookies for one site (names are unique enough here; paths are ignored).
#[derive(Default, Clone)]
struct Jar(BTreeMap<String, String>);

impl Jar {
    fn take(&mut self, r: &reqwest::Response) {
        for full in r.headers().get_all(SET_COOKIE) {
            let full = full.to_str().unwrap();
            let (k, v) = full.split(';').next().unwrap().split_once('=').unwrap();
            if v.is_empty() || full.contains("Max-Age=0") {
                self.0.remove(k);
            } else {
                self.0.insert(k.to_owned(), v.to_owned());
            }
        }
    }

    fn header(&self) -> String {
        self.0.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ")
    }
}

/// What a browser does from "Sign in with your organisation's account" until the provider
/// sends it back: returns the callback URL (with `code` and `state`) and the vault's cookies.
async fn through_provider(h: &Harness, p: &Provider, user: &str) -> (String, Jar) {
    let mut vault = Jar::default();
    let r = client().get(h.url("/console/sign-in/oidc")).send().await.unwrap();
    assert_eq!(r.status(), 303, "the sign-in starts with a redirect to the provider");
    vault.take(&r);
    assert!(vault.0.contains_key("custodia_sign_in"), "the flow cookie is set");
    let flow_cookie =
        r.headers().get_all(SET_COOKIE).iter().map(|v| v.to_str().unwrap().to_owned()).collect::<Vec<_>>();
    assert!(flow_cookie.iter().any(|c| c.contains("HttpOnly") && c.contains("SameSite=Lax")), "{flow_cookie:?}");
    let mut url = r.headers()[LOCATION].to_str().unwrap().to_owned();
    assert!(url.starts_with(&p.issuer), "{url}");
    for part in ["code_challenge_method=S256", "code_challenge=", "nonce=", "state=", "response_type=code"] {
        assert!(url.contains(part), "authorization request lacks {part}: {url}");
    }
    let mut at_provider = Jar::default();
    for _ in 0..20 {
        let absolute = if url.starts_with("http") { url.clone() } else { format!("{}{}", p.issuer, url) };
        if absolute.starts_with(&h.base) {
            return (absolute, vault);
        }
        let r = client().get(&absolute).header(COOKIE, at_provider.header()).send().await.unwrap();
        at_provider.take(&r);
        if r.status().is_redirection() {
            url = r.headers()[LOCATION].to_str().unwrap().to_owned();
            continue;
        }
        // The provider's login form: sign in as `user`.
        assert_eq!(r.status(), 200, "provider page {absolute}");
        let r = client()
            .post(&absolute)
            .header(COOKIE, at_provider.header())
            .form(&[("login", user)])
            .send()
            .await
            .unwrap();
        at_provider.take(&r);
        assert!(r.status().is_redirection(), "login answered {}", r.status());
        url = r.headers()[LOCATION].to_str().unwrap().to_owned();
    }
    panic!("the provider never sent the browser back");
}

/// Opens the callback URL as the browser would; returns the status, the body and the cookies.
async fn callback(url: &str, jar: &Jar) -> (u16, String, Jar) {
    let r = client().get(url).header(COOKIE, jar.header()).send().await.unwrap();
    let mut out = jar.clone();
    out.take(&r);
    let status = r.status().as_u16();
    (status, r.text().await.unwrap(), out)
}

fn problem_code(html: &str) -> String {
    let at = html.find("<code>").expect("an error page with a problem code");
    html[at + 6..].split('<').next().unwrap().to_owned()
}

#[tokio::test]
async fn an_officer_signs_in_through_the_provider_with_pkce_and_nothing_else_is_kept() {
    let Some((h, p)) = vault_with_provider(|_, _| {}).await else { return };
    // Only the provider's keys: the example key is not accepted, so there is no development
    // sign-in, and the console works through the provider alone.
    let r = client().get(h.url("/console/sign-in")).send().await.unwrap();
    let html = r.text().await.unwrap();
    assert!(html.contains("/console/sign-in/oidc") && !html.contains("/console/sign-in/development"), "{html}");
    let r = client().post(h.url("/console/sign-in/development")).form(&[("sub", ROOT_OFFICER)]).send().await.unwrap();
    assert_eq!(r.status(), 404);

    let (url, jar) = through_provider(&h, &p, ROOT_OFFICER).await;
    assert!(url.contains("code=") && url.contains("state="), "{url}");
    let code = url.split("code=").nth(1).unwrap().split('&').next().unwrap().to_owned();
    let (status, body, jar) = callback(&url, &jar).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#"http-equiv="refresh""#), "the callback page moves on to the console itself");
    assert!(!body.contains(&code), "the code is not echoed");
    assert!(jar.0.contains_key("custodia_session"), "a session starts");
    assert!(!jar.0.contains_key("custodia_sign_in"), "the flow cookie is cleared");

    let r = client().get(h.url("/console")).header(COOKIE, jar.header()).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let html = r.text().await.unwrap();
    assert!(html.contains(ROOT_OFFICER), "signed in as the provider's subject");
    let events = h.audit_rows_prefixed("").await;
    let sign_in = events.iter().rev().find(|e| e.1 == "console.sign_in").expect("the sign-in is audited");
    assert_eq!((sign_in.4.as_deref(), sign_in.2.as_str()), (Some(ROOT_OFFICER), "allowed"));
    // Nothing from the provider reached the audit or the page: no code, no token.
    let dump = h.raw_dump().await;
    assert!(!contains(&dump, code.as_bytes()), "the code is not stored");
}

#[tokio::test]
async fn a_callback_with_a_wrong_or_missing_state_is_refused() {
    let Some((h, p)) = vault_with_provider(|_, _| {}).await else { return };
    let (url, jar) = through_provider(&h, &p, ROOT_OFFICER).await;
    // Another state than this browser's: a forged callback (login CSRF).
    let state = url.split("state=").nth(1).unwrap().split('&').next().unwrap().to_owned();
    let forged = url.replace(&format!("state={state}"), "state=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    let (status, body, after) = callback(&forged, &jar).await;
    assert_eq!((status, problem_code(&body).as_str()), (400, "sign_in_state_invalid"), "{body}");
    assert!(!after.0.contains_key("custodia_session"));
    // The right state, but from a browser that did not start the sign-in (no flow cookie): an
    // attacker's callback URL opened in a victim's browser.
    let (status, body, after) = callback(&url, &Jar::default()).await;
    assert_eq!((status, problem_code(&body).as_str()), (400, "sign_in_state_invalid"), "{body}");
    assert!(!after.0.contains_key("custodia_session"));
    let denied =
        h.audit_rows_prefixed("").await.into_iter().filter(|e| e.1 == "console.sign_in" && e.2 == "invalid").count();
    assert_eq!(denied, 2, "both refusals are audited");
}

#[tokio::test]
async fn a_replayed_code_is_refused() {
    let Some((h, p)) = vault_with_provider(|_, _| {}).await else { return };
    let (url, jar) = through_provider(&h, &p, ROOT_OFFICER).await;
    let (status, _, _) = callback(&url, &jar).await;
    assert_eq!(status, 200);
    // The same callback again: its sign-in is used up.
    let (status, body, after) = callback(&url, &jar).await;
    assert_eq!((status, problem_code(&body).as_str()), (400, "sign_in_state_invalid"));
    assert!(!after.0.contains_key("custodia_session") || after.0 == jar.0);
    // The old code inside a fresh sign-in of this browser: the provider refuses it (used, and
    // issued for another PKCE challenge).
    let code = url.split("code=").nth(1).unwrap().split('&').next().unwrap().to_owned();
    let (fresh, fresh_jar) = through_provider(&h, &p, ROOT_OFFICER).await;
    let fresh_code = fresh.split("code=").nth(1).unwrap().split('&').next().unwrap().to_owned();
    let replay = fresh.replace(&fresh_code, &code);
    let (status, body, after) = callback(&replay, &fresh_jar).await;
    assert_eq!((status, problem_code(&body).as_str()), (401, "sign_in_refused"), "{body}");
    assert!(!after.0.contains_key("custodia_session"));
}

#[tokio::test]
async fn a_token_for_another_audience_is_refused() {
    let Some((h, p)) = vault_with_provider(|_, _| {}).await else { return };
    let r = client().post(format!("{}/_test/audience?value=another-api", p.issuer)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let (url, jar) = through_provider(&h, &p, ROOT_OFFICER).await;
    let (status, body, after) = callback(&url, &jar).await;
    assert_eq!((status, problem_code(&body).as_str()), (401, "sign_in_token_rejected"), "{body}");
    assert!(!after.0.contains_key("custodia_session"));
    let refused = h.audit_rows_prefixed("").await.into_iter().rev().find(|e| e.1 == "console.sign_in").unwrap();
    assert_eq!(refused.2, "denied");
}

#[tokio::test]
async fn a_provider_that_is_not_the_configured_issuer_is_not_used() {
    // The same provider under another name (localhost for 127.0.0.1): its discovery document
    // names another issuer, so the vault does not trust it.
    let Some((h, _p)) = vault_with_provider(|c, issuer| {
        c.auth.issuer = issuer.replace("127.0.0.1", "localhost");
    })
    .await
    else {
        return;
    };
    let r = client().get(h.url("/console/sign-in/oidc")).send().await.unwrap();
    let status = r.status().as_u16();
    let body = r.text().await.unwrap();
    assert_eq!((status, problem_code(&body).as_str()), (502, "identity_provider_unavailable"), "{body}");
}

#[tokio::test]
async fn sign_out_and_idling_end_a_provider_session() {
    let Some((h, p)) = vault_with_provider(|c, _| c.console.session_idle_minutes = 0.05).await else { return };
    // Idle: 3 s without a request.
    let (url, jar) = through_provider(&h, &p, ROOT_OFFICER).await;
    let (_, _, jar) = callback(&url, &jar).await;
    let r = client().get(h.url("/console")).header(COOKIE, jar.header()).send().await.unwrap();
    assert_eq!(r.status(), 200);
    tokio::time::sleep(std::time::Duration::from_millis(3500)).await;
    let r = client().get(h.url("/console")).header(COOKIE, jar.header()).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.headers()[LOCATION].to_str().unwrap()), (303, "/console/sign-in"));

    // Sign-out: the session ends on the server; the old cookie is dead.
    let (url, jar) = through_provider(&h, &p, ROOT_OFFICER).await;
    let (_, _, jar) = callback(&url, &jar).await;
    let r = client().get(h.url("/console")).header(COOKIE, jar.header()).send().await.unwrap();
    let html = r.text().await.unwrap();
    let at = html.find(r#"name="csrf" value=""#).unwrap();
    let csrf = html[at + 19..].split('"').next().unwrap().to_owned();
    let r = client()
        .post(h.url("/console/sign-out"))
        .header(COOKIE, jar.header())
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let r = client().get(h.url("/console")).header(COOKIE, jar.header()).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.headers()[LOCATION].to_str().unwrap()), (303, "/console/sign-in"));
}

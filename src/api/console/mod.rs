//! The web console under `/console`, for security officers and administrators: server-rendered
//! pages (askama templates, checked at compile time), every asset in the binary, two languages.
//!
//! The console is a client of the vault like any other: its data pages are routes declared
//! with their action, decided by the same gate and audited by the same layer as `/v1`, with
//! the signed-in principal as the caller. Sessions live on the server ([`crate::auth::session`]);
//! the cookie is `HttpOnly`, `SameSite=Strict`, `Secure` when the request came over HTTPS
//! (through a trusted proxy's `X-Forwarded-Proto`). Every state-changing form carries the
//! session's CSRF token, and cross-site posts are refused before that. Every response carries
//! a strict `Content-Security-Policy` (no script at all, no external origin, no framing),
//! `X-Content-Type-Options`, `Referrer-Policy` and `Cache-Control: no-store`.
//!
//! Owns: the console's HTTP. Must never: show customer PII, decide access itself, or accept a
//! session on `/v1` (the session reaches the `Principal` extractor only through this router).

mod admin;
mod charts;
mod evidence;
pub mod i18n;

use askama::Template;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, on, post, MethodFilter};
use axum::{Form, Router};
use serde::Deserialize;

use super::problem::ApiError;
use super::{audit, AppState};
use crate::auth::session::{csrf_matches, Session};
use crate::authz::Action;
use crate::vault::Caller;
use i18n::{Labels, Lang};

/// The session cookie.
pub const SESSION_COOKIE: &str = "custodia_session";
/// The cookie binding a sign-in at the identity provider to the browser that started it
/// (its `state`). `SameSite=Lax`: the provider's redirect back is a cross-site navigation.
pub const FLOW_COOKIE: &str = "custodia_sign_in";

/// The language preference cookie.
pub const LANG_COOKIE: &str = "custodia_lang";

const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
                   frame-ancestors 'none'; base-uri 'none'";

/// The signed-in session of a console request (in request extensions, set by [`session`]).
#[derive(Clone, Debug)]
pub struct SessionPrincipal(pub Session);

/// A cookie's value from the request's `Cookie` headers.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        (k == name).then(|| v.to_owned())
    })
}

/// The console's routes (paths under `/console`) that disclose or change audit or grant data:
/// each is decided by the gate under its action and audited.
pub fn routes() -> Vec<super::RouteDecl> {
    declared().into_iter().map(|d| d.0).collect()
}

type Handler = axum::routing::MethodRouter<AppState>;

fn declared() -> Vec<(super::RouteDecl, Handler)> {
    fn d(method: Method, path: &'static str, action: Action, handler: Handler) -> (super::RouteDecl, Handler) {
        (super::RouteDecl { method, path, action }, handler.layer(audit::Declare(action)))
    }
    vec![
        d(Method::GET, "/", Action::ReadAudit, on(MethodFilter::GET, overview)),
        d(Method::GET, "/audit", Action::ReadAudit, on(MethodFilter::GET, audit_search)),
        d(Method::GET, "/audit/events/{seq}", Action::ReadAudit, on(MethodFilter::GET, evidence::event_detail)),
        d(Method::GET, "/audit/export.ndjson", Action::ReadAudit, on(MethodFilter::GET, evidence::export_ndjson)),
        d(Method::GET, "/audit/export.csv", Action::ReadAudit, on(MethodFilter::GET, evidence::export_csv)),
        d(Method::GET, "/customers/access", Action::ReadAudit, on(MethodFilter::GET, evidence::customer_access)),
        d(Method::GET, "/verify", Action::VerifyAudit, on(MethodFilter::GET, verify_page)),
        d(Method::POST, "/verify", Action::VerifyAudit, on(MethodFilter::POST, verify_run)),
        d(Method::GET, "/alerts", Action::AuditAlerts, on(MethodFilter::GET, alerts_page)),
        d(Method::GET, "/alerts/{id}", Action::AuditAlerts, on(MethodFilter::GET, alert_page)),
        d(Method::POST, "/alerts/{id}/clear", Action::AuditAlerts, on(MethodFilter::POST, clear_alert)),
        d(Method::GET, "/grants", Action::GrantList, on(MethodFilter::GET, admin::grants_page)),
        d(Method::GET, "/grants/new", Action::GrantList, on(MethodFilter::GET, admin::grant_new)),
        d(Method::POST, "/grants", Action::CreateGrant, on(MethodFilter::POST, admin::grant_create)),
        d(Method::GET, "/grants/{id}/revoke", Action::GrantList, on(MethodFilter::GET, admin::revoke_preview)),
        d(Method::POST, "/grants/{id}/revoke", Action::RevokeGrant, on(MethodFilter::POST, admin::revoke)),
        d(Method::GET, "/principals/{sub}", Action::GrantList, on(MethodFilter::GET, admin::principal_page)),
        d(
            Method::POST,
            "/principals/{sub}/revoke-tokens",
            Action::RevokeTokens,
            on(MethodFilter::POST, admin::revoke_tokens),
        ),
        d(Method::GET, "/keys", Action::ManageKeys, on(MethodFilter::GET, admin::keys_page)),
        d(Method::POST, "/keys/rotate", Action::ManageKeys, on(MethodFilter::POST, admin::rotate_keys)),
    ]
}

/// The console router, nested at `/console`.
pub fn router(state: AppState) -> Router<AppState> {
    let mut pages = Router::new();
    for (decl, handler) in declared() {
        pages = pages.route(decl.path, handler);
    }
    // Sign-in and sign-out are audited (as `console.sign_in`, `console.sign_out`); the sign-in
    // form, the language switch and the stylesheet disclose nothing and are not.
    let audited = pages
        .route("/sign-in/development", post(development_sign_in))
        .route("/sign-in/callback", get(provider_callback))
        .route("/sign-out", post(sign_out))
        .layer(axum::middleware::from_fn_with_state(state.clone(), audit::record));
    Router::new()
        .merge(audited)
        .route("/sign-in", get(sign_in_page))
        .route("/sign-in/oidc", get(provider_sign_in))
        .route("/home", get(home))
        .route("/lang/{tag}", get(switch_language))
        .route("/static/console.css", get(stylesheet))
        .fallback(|| async { StatusCode::NOT_FOUND })
        .layer(axum::middleware::from_fn_with_state(state, session))
        .layer(axum::middleware::from_fn(security_headers))
}

/// Headers on every console response.
async fn security_headers(req: Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    let h = response.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

/// Finds the request's session (if its cookie names a live one) for the `Principal`
/// extractor and the pages.
async fn session(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    if let Some(id) = cookie(req.headers(), SESSION_COOKIE) {
        if let Some(found) = state.sessions.find(&id) {
            req.extensions_mut().insert(SessionPrincipal(found));
        }
    }
    next.run(req).await
}

/// Whether a state-changing request comes from the console's own pages: not a cross-site
/// request (`Sec-Fetch-Site`), and an `Origin` naming this host. Under the console's
/// `Referrer-Policy: no-referrer` browsers send `Origin: null` even for the console's own
/// forms (Fetch, "serializing a request origin"), so `null` is accepted only together with
/// `Sec-Fetch-Site: same-origin`. Forms of a session also carry its CSRF token
/// ([`form_allowed`]).
fn same_origin(headers: &HeaderMap) -> bool {
    let fetch_site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    let site_ok = fetch_site.is_none_or(|s| s == "same-origin" || s == "none");
    let origin_ok = match (headers.get(header::ORIGIN), headers.get(header::HOST)) {
        (None, _) => true,
        (Some(o), _) if o.as_bytes() == b"null" => fetch_site == Some("same-origin"),
        (Some(o), Some(host)) => {
            let (o, host) = (o.to_str().unwrap_or(""), host.to_str().unwrap_or("-"));
            o.strip_prefix("http://").or_else(|| o.strip_prefix("https://")) == Some(host)
        }
        (Some(_), None) => false,
    };
    site_ok && origin_ok
}

/// Whether the request reached the vault over HTTPS (a trusted proxy says so).
fn over_https(state: &AppState, peer: Option<std::net::IpAddr>, headers: &HeaderMap) -> bool {
    let trusted = peer.is_some_and(|ip| state.trusted_proxies.iter().any(|c| c.contains(ip)));
    trusted && headers.get("x-forwarded-proto").and_then(|v| v.to_str().ok()) == Some("https")
}

fn session_cookie(value: &str, secure: bool, max_age: Option<u64>) -> HeaderValue {
    let mut c = format!("{SESSION_COOKIE}={value}; Path=/console; HttpOnly; SameSite=Strict");
    if secure {
        c.push_str("; Secure");
    }
    if let Some(age) = max_age {
        c.push_str(&format!("; Max-Age={age}"));
    }
    HeaderValue::from_str(&c).unwrap_or_else(|_| HeaderValue::from_static("custodia_session=; Max-Age=0"))
}

/// What every page needs.
struct Frame {
    l: &'static Labels,
    lang: &'static str,
    who: Option<String>,
    csrf: String,
}

/// The frame of a page (`None` only if the catalogues were never loaded: see [`broken`]).
fn frame(headers: &HeaderMap, session: Option<&Session>) -> Option<Frame> {
    let lang = Lang::choose(headers);
    let l = i18n::labels(lang)?;
    Some(Frame {
        l,
        lang: lang.tag(),
        who: session.map(|s| s.principal.sub.clone()),
        csrf: session.map(|s| s.csrf.clone()).unwrap_or_default(),
    })
}

fn render(t: &impl Template, status: StatusCode) -> Response {
    match t.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "console template failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

#[derive(Template)]
#[template(path = "console/error.html")]
struct ErrorPage {
    l: &'static Labels,
    lang: &'static str,
    who: Option<String>,
    csrf: String,
    code: &'static str,
    detail: String,
}

/// A refusal or failure as a page, with the API's problem code and the same status.
fn error_page(f: Frame, e: ApiError) -> Response {
    let status = e.status();
    let detail = e.to_problem().detail.map(|d| d.into_owned()).unwrap_or_default();
    render(&ErrorPage { l: f.l, lang: f.lang, who: f.who, csrf: f.csrf, code: e.code(), detail }, status)
}

/// The request's session, if it has one (pages without one send the user to [`to_sign_in`]).
fn signed_in(s: Option<axum::Extension<SessionPrincipal>>) -> Option<Session> {
    s.map(|e| e.0 .0)
}

fn to_sign_in() -> Response {
    Redirect::to("/console/sign-in").into_response()
}

/// The catalogues are loaded at start-up; a page without them cannot be drawn.
fn broken() -> Response {
    tracing::error!("console catalogues not loaded");
    StatusCode::INTERNAL_SERVER_ERROR.into_response()
}

/// A signed-in page's context: its session, its frame, and the caller the gate decides for.
/// Without a session the request is sent to sign-in; a caller the vault refuses (a revoked
/// principal) gets the refusal as a page.
struct Page {
    session: Session,
    f: Frame,
    caller: Caller,
}

impl axum::extract::FromRequestParts<AppState> for Page {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &AppState) -> Result<Self, Response> {
        let Some(SessionPrincipal(session)) = parts.extensions.get::<SessionPrincipal>().cloned() else {
            return Err(to_sign_in());
        };
        let Some(f) = frame(&parts.headers, Some(&session)) else { return Err(broken()) };
        match Caller::from_request_parts(parts, state).await {
            Ok(caller) => Ok(Page { session, f, caller }),
            Err(e) => Err(error_page(f, e)),
        }
    }
}

/// Whether a state-changing form of `session` may proceed: same origin and its CSRF token.
fn form_allowed(headers: &HeaderMap, session: &Session, csrf: &str) -> bool {
    same_origin(headers) && csrf_matches(session, csrf)
}

/// [`form_allowed`] for a form that carries nothing but its CSRF token (a missing or
/// malformed form is refused like a wrong token).
fn token_form_allowed(
    headers: &HeaderMap,
    session: &Session,
    form: Result<Form<CsrfForm>, axum::extract::rejection::FormRejection>,
) -> bool {
    form.is_ok_and(|f| form_allowed(headers, session, &f.0.csrf))
}

#[derive(Template)]
#[template(path = "console/sign_in.html")]
struct SignInPage {
    l: &'static Labels,
    lang: &'static str,
    who: Option<String>,
    csrf: String,
    development: bool,
    provider: bool,
}

async fn sign_in_page(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let Some(f) = frame(&headers, None) else { return broken() };
    let (development, provider) = (state.development_sign_in, state.oidc.is_some());
    render(&SignInPage { l: f.l, lang: f.lang, who: None, csrf: String::new(), development, provider }, StatusCode::OK)
}

fn flow_cookie(value: &str, secure: bool, max_age: u64) -> Option<HeaderValue> {
    let mut c = format!("{FLOW_COOKIE}={value}; Path=/console/sign-in; HttpOnly; SameSite=Lax; Max-Age={max_age}");
    if secure {
        c.push_str("; Secure");
    }
    HeaderValue::from_str(&c).ok()
}

/// A sign-in failure as a page: the problem code, in words, with its status.
fn sign_in_failed(f: Frame, e: &crate::auth::oidc::OidcError) -> Response {
    use crate::auth::oidc::OidcError;
    let (status, title) = match e {
        OidcError::UnknownSignIn => (StatusCode::BAD_REQUEST, "Sign-in not recognised"),
        OidcError::Refused | OidcError::Token(_) => (StatusCode::UNAUTHORIZED, "Sign-in refused"),
        OidcError::Unavailable(_) => (StatusCode::BAD_GATEWAY, "Identity provider unavailable"),
    };
    let detail = match e {
        OidcError::UnknownSignIn => {
            "this sign-in was not started in this browser, has expired or was already used; start again"
        }
        OidcError::Refused => "the identity provider refused the sign-in; start again",
        OidcError::Token(_) => {
            "the identity provider's token does not meet the vault's rules (issuer, audience, signature, expiry)"
        }
        OidcError::Unavailable(_) => "the identity provider cannot be reached; try again later",
    };
    error_page(f, ApiError::new(status, e.code(), title).detail(detail))
}

/// Starts a sign-in at the identity provider: a fresh state in the flow cookie, then the
/// provider's authorization URL. Not audited: it discloses nothing and names no principal
/// (the callback is).
async fn provider_sign_in(
    State(state): State<AppState>,
    peer: Option<axum::Extension<ConnectInfo<std::net::SocketAddr>>>,
    headers: HeaderMap,
) -> Response {
    let Some(f) = frame(&headers, None) else { return broken() };
    let Some(oidc) = state.oidc.clone() else { return StatusCode::NOT_FOUND.into_response() };
    match oidc.begin().await {
        Ok(started) => {
            let secure = over_https(&state, peer.map(|p| p.0 .0.ip()), &headers);
            let mut r = Redirect::to(&started.authorization_url).into_response();
            let lifetime = crate::auth::oidc::FLOW_LIFETIME.as_secs();
            if let Some(c) = flow_cookie(&started.state, secure, lifetime) {
                r.headers_mut().insert(header::SET_COOKIE, c);
            }
            r
        }
        Err(e) => {
            tracing::warn!(error = %e, "console: cannot start a sign-in at the identity provider");
            sign_in_failed(f, &e)
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ProviderCallback {
    code: String,
    state: String,
    error: String,
}

#[derive(Template)]
#[template(path = "console/signed_in.html")]
struct SignedInPage {
    l: &'static Labels,
    lang: &'static str,
    who: Option<String>,
    csrf: String,
}

/// The identity provider's redirect back (audited as `console.sign_in`): the sign-in is
/// completed (see [`crate::auth::oidc`]) and the vault's own rules applied to the principal
/// (revoked tokens), then a session starts. The answer is a page that moves on to the console
/// itself, so that the first console request is a same-site one and carries the
/// `SameSite=Strict` session cookie.
async fn provider_callback(
    State(state): State<AppState>,
    peer: Option<axum::Extension<ConnectInfo<std::net::SocketAddr>>>,
    headers: HeaderMap,
    handle: Option<axum::Extension<crate::audit::AuditHandle>>,
    query: Result<axum::extract::Query<ProviderCallback>, axum::extract::rejection::QueryRejection>,
) -> Response {
    use crate::auth::oidc::OidcError;
    if let Some(h) = &handle {
        h.set_action("console.sign_in");
    }
    let Some(f) = frame(&headers, None) else { return broken() };
    let Some(oidc) = state.oidc.clone() else { return StatusCode::NOT_FOUND.into_response() };
    let secure = over_https(&state, peer.map(|p| p.0 .0.ip()), &headers);
    let q = query.map(|q| q.0).unwrap_or_default();
    let cookie_state = cookie(&headers, FLOW_COOKIE);
    let result = if !q.error.is_empty() {
        tracing::info!("console: the identity provider answered the sign-in with an error");
        Err(OidcError::Refused)
    } else {
        oidc.finish(&state.authenticator, &q.state, cookie_state.as_deref(), &q.code).await
    };
    let mut response = match result {
        Ok(principal) => {
            if let Some(h) = &handle {
                h.set_principal(&principal.sub);
            }
            if state.vault.authorizer().token_revoked(&principal) {
                tracing::info!("console sign-in refused: the principal's tokens were revoked");
                return error_page(f, crate::auth::AuthError::Revoked.into());
            }
            let Some(id) = state.sessions.create(&principal.sub) else {
                return StatusCode::SERVICE_UNAVAILABLE.into_response();
            };
            tracing::info!(principal = %principal.sub, "console: signed in through the identity provider");
            let mut r = render(&SignedInPage { l: f.l, lang: f.lang, who: None, csrf: String::new() }, StatusCode::OK);
            r.headers_mut().append(header::SET_COOKIE, session_cookie(&id, secure, None));
            r
        }
        Err(e) => {
            tracing::info!(error = %e, "console: sign-in through the identity provider failed");
            sign_in_failed(f, &e)
        }
    };
    // The flow is over either way: its cookie goes.
    if let Some(c) = flow_cookie("", secure, 0) {
        response.headers_mut().append(header::SET_COOKIE, c);
    }
    response
}

#[derive(Deserialize)]
struct DevelopmentSignIn {
    sub: String,
}

/// The development sign-in: only while the public example token key is accepted (the
/// embedded default, already announced loudly at start); 404 otherwise.
async fn development_sign_in(
    State(state): State<AppState>,
    peer: Option<axum::Extension<ConnectInfo<std::net::SocketAddr>>>,
    headers: HeaderMap,
    handle: Option<axum::Extension<crate::audit::AuditHandle>>,
    Form(form): Form<DevelopmentSignIn>,
) -> Response {
    if let Some(h) = &handle {
        h.set_action("console.sign_in");
    }
    if !state.development_sign_in {
        return StatusCode::NOT_FOUND.into_response();
    }
    if !same_origin(&headers) {
        return StatusCode::FORBIDDEN.into_response();
    }
    if !crate::auth::valid_subject(&form.sub) {
        return Redirect::to("/console/sign-in").into_response();
    }
    if let Some(h) = &handle {
        h.set_principal(&form.sub);
    }
    let Some(id) = state.sessions.create(&form.sub) else {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    tracing::warn!(principal = %form.sub, "console: development sign-in (public example keys in use)");
    let secure = over_https(&state, peer.map(|p| p.0 .0.ip()), &headers);
    let mut r = Redirect::to("/console/home").into_response();
    r.headers_mut().insert(header::SET_COOKIE, session_cookie(&id, secure, None));
    r
}

#[derive(Deserialize)]
struct CsrfForm {
    /// Missing is refused like wrong (403), not as a malformed form.
    #[serde(default)]
    csrf: String,
}

async fn sign_out(
    State(state): State<AppState>,
    headers: HeaderMap,
    s: Option<axum::Extension<SessionPrincipal>>,
    handle: Option<axum::Extension<crate::audit::AuditHandle>>,
    form: Result<Form<CsrfForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    if let Some(h) = &handle {
        h.set_action("console.sign_out");
    }
    let form = form.map(|f| f.0).unwrap_or(CsrfForm { csrf: String::new() });
    let Some(session) = signed_in(s) else { return to_sign_in() };
    if let Some(h) = &handle {
        h.set_principal(&session.principal.sub);
    }
    if !form_allowed(&headers, &session, &form.csrf) {
        return StatusCode::FORBIDDEN.into_response();
    }
    if let Some(id) = cookie(&headers, SESSION_COOKIE) {
        state.sessions.end(&id);
    }
    let mut r = Redirect::to("/console/sign-in").into_response();
    r.headers_mut().insert(header::SET_COOKIE, session_cookie("", false, Some(0)));
    r
}

/// Where a signed-in person starts: the overview for a security officer, the region tree for
/// an administrator (asked of the gate; the redirect discloses nothing).
async fn home(State(state): State<AppState>, s: Option<axum::Extension<SessionPrincipal>>) -> Response {
    let Some(session) = signed_in(s) else { return to_sign_in() };
    let may = |a| state.vault.gate().admit(&session.principal, a, a, None).is_ok();
    let to = if !may(Action::ReadAudit) && may(Action::GrantList) { "/console/grants" } else { "/console" };
    Redirect::to(to).into_response()
}

async fn switch_language(Path(tag): Path<String>) -> Response {
    let Some(lang) = Lang::parse(&tag) else { return StatusCode::NOT_FOUND.into_response() };
    let mut r = Redirect::to("/console").into_response();
    let c = format!("{LANG_COOKIE}={}; Path=/console; SameSite=Strict; Max-Age=31536000", lang.tag());
    if let Ok(v) = HeaderValue::from_str(&c) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

async fn stylesheet() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], include_str!("console.css")).into_response()
}

#[derive(Template)]
#[template(path = "console/overview.html")]
struct OverviewPage {
    l: &'static Labels,
    lang: &'static str,
    who: Option<String>,
    csrf: String,
    head_seq: i64,
    /// The newest checkpoint: sequence number, time, age.
    checkpoint: Option<(i64, String, String)>,
    unsigned: i64,
    open_alerts: usize,
    reveals_day: i64,
    reveals_month: i64,
    exports_day: i64,
    exports_month: i64,
    chart_day: String,
    chart_month: String,
    leaders: Vec<(String, i64)>,
    /// The newest verification on this instance: ok, through (or first bad) sequence number,
    /// age.
    verified: Option<(bool, i64, String)>,
}

/// An age in words a person reads at a glance: `45 s`, `12 min`, `3 h`, `2 d`.
fn age(since: chrono::DateTime<chrono::Utc>) -> String {
    let s = (chrono::Utc::now() - since).num_seconds().max(0);
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        3600..86_400 => format!("{} h", s / 3600),
        _ => format!("{} d", s / 86_400),
    }
}

async fn overview(State(state): State<AppState>, Page { f, caller, .. }: Page) -> Response {
    use crate::store::Bucket;
    let o = match state.vault.audit_overview(&caller).await {
        Ok(o) => o,
        Err(e) => return error_page(f, e.into()),
    };
    let now = chrono::Utc::now();
    let count = |t: &crate::store::AuditTallies, action: &str| {
        t.disclosures.iter().filter(|(a, _)| a == action).map(|(_, n)| n).sum::<i64>()
    };
    let chart = |t, bucket, n| {
        charts::stacked_bars(&charts::Series::from_tallies(t, bucket, n, now), 900, 220).unwrap_or_else(|e| {
            tracing::error!(error = %e, "console chart not drawn");
            String::new()
        })
    };
    render(
        &OverviewPage {
            l: f.l,
            lang: f.lang,
            who: f.who,
            csrf: f.csrf,
            head_seq: o.chain.head_seq,
            unsigned: o.chain.head_seq - o.chain.checkpoint.as_ref().map_or(0, |c| c.0),
            checkpoint: o.chain.checkpoint.map(|(seq, at)| (seq, at.to_rfc3339(), age(at))),
            open_alerts: o.open_alerts,
            reveals_day: count(&o.day, "customer.reveal"),
            reveals_month: count(&o.month, "customer.reveal"),
            exports_day: count(&o.day, "customer.export"),
            exports_month: count(&o.month, "customer.export"),
            chart_day: chart(&o.day, Bucket::Hour, 24),
            chart_month: chart(&o.month, Bucket::Day, 30),
            leaders: o.day.leaders,
            verified: o.verified.map(|v| (v.ok, if v.ok { v.events } else { v.first_bad_seq.unwrap_or(0) }, age(v.at))),
        },
        StatusCode::OK,
    )
}

/// One row of the audit table: no customer data (ids stay in the event's detail).
struct EventRow {
    seq: i64,
    time: String,
    principal: String,
    action: String,
    outcome: &'static str,
    status: u16,
    purpose: String,
    client: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct AuditFilter {
    principal: String,
    customer: String,
    action: String,
    outcome: String,
    purpose: String,
    from: String,
    to: String,
    after: Option<i64>,
}

impl AuditFilter {
    /// The audit search this filter asks for (the vault adds the officer's subtree).
    fn to_query(&self, after_seq: i64, limit: u32) -> Result<crate::store::AuditQuery, ApiError> {
        let time = |s: &str| -> Result<Option<chrono::DateTime<chrono::Utc>>, ApiError> {
            opt(s)
                .map(|t| {
                    chrono::DateTime::parse_from_rfc3339(&t).map(|t| t.with_timezone(&chrono::Utc)).map_err(|_| {
                        ApiError::bad_request("bad_query", "times are RFC 3339, e.g. 2026-12-01T00:00:00Z")
                    })
                })
                .transpose()
        };
        Ok(crate::store::AuditQuery {
            principal: opt(&self.principal),
            customer: opt(&self.customer)
                .map(|c| c.parse().map_err(|_| ApiError::bad_request("bad_query", "a customer id is a UUID")))
                .transpose()?,
            action: opt(&self.action),
            outcome: opt(&self.outcome),
            purpose: opt(&self.purpose),
            from: time(&self.from)?,
            to: time(&self.to)?,
            after_seq,
            limit,
            scopes: None,
        })
    }

    /// The filter as a query string (without a cursor), for links that keep it.
    fn query_string(&self) -> String {
        let mut q: Vec<String> = Vec::new();
        for (k, v) in [
            ("principal", &self.principal),
            ("customer", &self.customer),
            ("action", &self.action),
            ("outcome", &self.outcome),
            ("purpose", &self.purpose),
            ("from", &self.from),
            ("to", &self.to),
        ] {
            if !v.is_empty() {
                q.push(format!("{k}={}", percent_encode(v)));
            }
        }
        q.join("&")
    }
}

#[derive(Template)]
#[template(path = "console/audit.html")]
struct AuditPage {
    l: &'static Labels,
    lang: &'static str,
    who: Option<String>,
    csrf: String,
    filter: AuditFilter,
    rows: Vec<EventRow>,
    next: Option<String>,
    /// The filter's query string for the export links (`?…`, or empty).
    export: String,
}

/// A query-string value, percent-encoded (everything but RFC 3986's unreserved characters).
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn opt(s: &str) -> Option<String> {
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_owned())
}

async fn audit_search(
    State(state): State<AppState>,
    Page { f, caller, .. }: Page,
    filter: Result<axum::extract::Query<AuditFilter>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(axum::extract::Query(filter)) = filter else {
        return error_page(f, ApiError::bad_request("bad_query", "the filter has unknown or mistyped fields"));
    };
    let query = match filter.to_query(filter.after.unwrap_or(0), 50) {
        Ok(q) => q,
        Err(e) => return error_page(f, e),
    };
    match state.vault.audit_events(&caller, query).await {
        Ok(page) => {
            let rows = page
                .items
                .iter()
                .map(|e| EventRow {
                    seq: e.seq,
                    time: e.event.time.format("%Y-%m-%d %H:%M:%S").to_string(),
                    principal: e.event.principal.clone().unwrap_or_default(),
                    action: e.event.action.clone(),
                    outcome: e.event.outcome.as_str(),
                    status: e.event.status,
                    purpose: e.event.purpose.clone().unwrap_or_default(),
                    client: e.event.client.clone().unwrap_or_default(),
                })
                .collect();
            let kept = filter.query_string();
            let next = page.next_cursor.map(|after| {
                let sep = if kept.is_empty() { "" } else { "&" };
                format!("/console/audit?{kept}{sep}after={after}")
            });
            let export = if kept.is_empty() { String::new() } else { format!("?{kept}") };
            render(
                &AuditPage { l: f.l, lang: f.lang, who: f.who, csrf: f.csrf, filter, rows, next, export },
                StatusCode::OK,
            )
        }
        Err(e) => error_page(f, e.into()),
    }
}

/// A verification's outcome, as the page shows it.
struct VerifyResult {
    ok: bool,
    events: i64,
    checkpoints: i64,
    first_bad: i64,
}

#[derive(Template)]
#[template(path = "console/verify.html")]
struct VerifyPage {
    l: &'static Labels,
    lang: &'static str,
    who: Option<String>,
    csrf: String,
    result: Option<VerifyResult>,
}

async fn verify_page(State(state): State<AppState>, Page { f, caller, .. }: Page) -> Response {
    // The page itself is gated: only those who may verify see the button.
    match state.vault.may(&caller, Action::VerifyAudit) {
        Ok(()) => render(&VerifyPage { l: f.l, lang: f.lang, who: f.who, csrf: f.csrf, result: None }, StatusCode::OK),
        Err(e) => error_page(f, e.into()),
    }
}

async fn verify_run(
    State(state): State<AppState>,
    headers: HeaderMap,
    Page { session, f, caller }: Page,
    form: Result<Form<CsrfForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    if !token_form_allowed(&headers, &session, form) {
        return StatusCode::FORBIDDEN.into_response();
    }
    match state.vault.verify_audit(&caller).await {
        Ok(r) => {
            let result = VerifyResult {
                ok: r.ok,
                events: r.events,
                checkpoints: r.checkpoints as i64,
                first_bad: r.first_bad_seq.unwrap_or(0),
            };
            render(&VerifyPage { l: f.l, lang: f.lang, who: f.who, csrf: f.csrf, result: Some(result) }, StatusCode::OK)
        }
        Err(e) => error_page(f, e.into()),
    }
}

/// One alert as the page shows it (principals and regions only: no customer data).
struct AlertRow {
    id: uuid::Uuid,
    kind: String,
    principal: String,
    region: String,
    raised: String,
    customers: i32,
    status: &'static str,
    open: bool,
}

#[derive(Template)]
#[template(path = "console/alerts.html")]
struct AlertsPage {
    l: &'static Labels,
    lang: &'static str,
    who: Option<String>,
    csrf: String,
    rows: Vec<AlertRow>,
}

async fn alerts_page(State(state): State<AppState>, Page { f, caller, .. }: Page) -> Response {
    match state.vault.alerts(&caller).await {
        Ok(alerts) => {
            let rows = alerts
                .into_iter()
                .map(|a| AlertRow {
                    id: a.id,
                    kind: a.kind,
                    principal: a.principal,
                    region: a.region.unwrap_or_default(),
                    raised: a.raised_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                    customers: a.distinct_customers,
                    status: if a.cleared_at.is_some() { "cleared" } else { "open" },
                    open: a.cleared_at.is_none(),
                })
                .collect();
            render(&AlertsPage { l: f.l, lang: f.lang, who: f.who, csrf: f.csrf, rows }, StatusCode::OK)
        }
        Err(e) => error_page(f, e.into()),
    }
}

#[derive(Template)]
#[template(path = "console/alert.html")]
struct AlertPage {
    l: &'static Labels,
    lang: &'static str,
    who: Option<String>,
    csrf: String,
    a: AlertRow,
    window_minutes: i32,
    cleared_by: String,
    cleared_at: String,
    /// The audit search of the principal's events in the alert's window.
    events: String,
}

/// One alert: what raised it, its window, who cleared it when, a link to the principal's events
/// in that window, and (while open) the form to clear it.
async fn alert_page(State(state): State<AppState>, Path(id): Path<String>, Page { f, caller, .. }: Page) -> Response {
    let Ok(id) = uuid::Uuid::try_parse(&id) else { return error_page(f, ApiError::not_found()) };
    match state.vault.alert(&caller, id).await {
        Ok(a) => {
            let from = a.raised_at - chrono::Duration::seconds(i64::from(a.window_seconds));
            let events = format!(
                "/console/audit?principal={}&from={}&to={}",
                percent_encode(&a.principal),
                percent_encode(&from.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
                percent_encode(
                    &(a.raised_at + chrono::Duration::seconds(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                ),
            );
            let page = AlertPage {
                l: f.l,
                lang: f.lang,
                who: f.who,
                csrf: f.csrf,
                window_minutes: a.window_seconds / 60,
                cleared_by: a.cleared_by.clone().unwrap_or_default(),
                cleared_at: a.cleared_at.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string()).unwrap_or_default(),
                events,
                a: AlertRow {
                    id: a.id,
                    kind: a.kind,
                    principal: a.principal,
                    region: a.region.unwrap_or_default(),
                    raised: a.raised_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                    customers: a.distinct_customers,
                    status: if a.cleared_at.is_some() { "cleared" } else { "open" },
                    open: a.cleared_at.is_none(),
                },
            };
            render(&page, StatusCode::OK)
        }
        Err(e) => error_page(f, e.into()),
    }
}

#[derive(Deserialize)]
struct ClearForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    reason: String,
}

/// Clears an alert with a ticket reference, which the audit event records as its
/// justification.
async fn clear_alert(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Page { session, f, caller }: Page,
    form: Result<Form<ClearForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let form = form.map(|f| f.0).unwrap_or(ClearForm { csrf: String::new(), reason: String::new() });
    if !form_allowed(&headers, &session, &form.csrf) {
        return StatusCode::FORBIDDEN.into_response();
    }
    // The gate first: a non-officer learns nothing, not even about the form.
    if let Err(e) = state.vault.may(&caller, Action::AuditAlerts) {
        return error_page(f, e.into());
    }
    if !crate::vault::valid_justification(&form.reason) {
        return error_page(
            f,
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_reason", "Invalid reason")
                .detail("clearing an alert needs a ticket reference: 3 to 64 letters, digits and - _ . : / #"),
        );
    }
    let Ok(id) = uuid::Uuid::try_parse(&id) else { return error_page(f, ApiError::not_found()) };
    caller.audit.set_justification(&form.reason);
    match state.vault.clear_alert(&caller, id).await {
        Ok(_) => Redirect::to("/console/alerts").into_response(),
        Err(e) => error_page(f, e.into()),
    }
}

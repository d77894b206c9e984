//! The administrator's console pages: the region tree with its grants, the grant form (only
//! the roles, regions and expiry the signed-in administrator may hand out), revocation with a
//! preview of the grants it suspends, a principal's grants with their delegation chains and
//! token revocation, and the keys (versions, data keys, rewrap; rotation with a confirmation).
//!
//! Like every console page these are declared routes (see [`super::declared`]): the gate
//! decides them and the audit records them as on `/v1`. Owns: the HTML of administration.
//! Must never: decide who may grant what (the vault does, and refuses in words shown here).

use askama::Template;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;

use super::{error_page, form_allowed, render, CsrfForm, Page};
use crate::api::problem::ApiError;
use crate::api::AppState;
use crate::domain::{GrantDraft, RegionId, RegionLevel, Regions};
use crate::vault::GrantView;

use super::i18n::Labels;

/// A grant as a row of a page (principals, roles and regions: no customer data).
pub(super) struct GrantRow {
    id: String,
    principal: String,
    role: String,
    region: String,
    region_name: String,
    granted_by: String,
    expires: String,
    status: &'static str,
    live: bool,
}

fn region_name(code: &str) -> String {
    let regions = Regions::builtin();
    match regions.parse(code).map(|r| r.level()) {
        Some(RegionLevel::Group) => "中国 (HQ)".to_owned(),
        Some(RegionLevel::Province) => regions.province(code).map(|p| p.name.clone()).unwrap_or_default(),
        Some(RegionLevel::City) => regions.city(code).map(|c| c.name.clone()).unwrap_or_default(),
        None => String::new(),
    }
}

fn row(g: &GrantView) -> GrantRow {
    let r = &g.record;
    GrantRow {
        id: r.id.to_string(),
        principal: r.principal.clone(),
        role: r.role.clone(),
        region: r.region.clone(),
        region_name: region_name(&r.region),
        granted_by: r.granted_by.clone(),
        expires: r.expires_at.map(|e| e.format("%Y-%m-%d %H:%M").to_string()).unwrap_or_default(),
        status: g.status.as_str(),
        live: g.status == crate::authz::GrantStatus::Active,
    }
}

/// One node of the region tree as drawn: its grants and its children.
pub(super) struct Node {
    code: String,
    name: String,
    grants: Vec<GrantRow>,
    /// Grants in the node's whole subtree (shown on the collapsed node).
    total: usize,
    children: Vec<Node>,
}

fn node(code: &str, grants: &[GrantView]) -> Node {
    let regions = Regions::builtin();
    let here: Vec<GrantRow> = grants.iter().filter(|g| g.record.region == code).map(row).collect();
    let children: Vec<Node> = match regions.parse(code).map(|r| r.level()) {
        Some(RegionLevel::Group) => regions.provinces().map(|p| node(&p.code, grants)).collect(),
        Some(RegionLevel::Province) => regions.cities_of(code).map(|c| node(&c.code, grants)).collect(),
        _ => Vec::new(),
    };
    let total = here.len() + children.iter().map(|c| c.total).sum::<usize>();
    Node { code: code.to_owned(), name: region_name(code), grants: here, total, children }
}

#[derive(Template)]
#[template(path = "console/grants.html")]
struct GrantsPage {
    l: &'static Labels,
    lang: &'static str,
    who: Option<String>,
    csrf: String,
    roots: Vec<Node>,
    truncated: bool,
}

pub(super) async fn grants_page(State(state): State<AppState>, Page { f, caller, .. }: Page) -> Response {
    match state.vault.grant_tree(&caller).await {
        Ok((scopes, grants)) => {
            let truncated = grants.len() >= crate::vault::Vault::TREE_LIMIT;
            let roots = scopes.iter().map(|s| node(s.as_str(), &grants)).collect();
            render(&GrantsPage { l: f.l, lang: f.lang, who: f.who, csrf: f.csrf, roots, truncated }, StatusCode::OK)
        }
        Err(e) => error_page(f, e.into()),
    }
}

/// A region the grant form offers.
pub(super) struct RegionChoice {
    code: String,
    label: String,
}

#[derive(Template)]
#[template(path = "console/grant_new.html")]
struct GrantNewPage {
    l: &'static Labels,
    lang: &'static str,
    who: Option<String>,
    csrf: String,
    roles: Vec<String>,
    regions: Vec<RegionChoice>,
    /// The latest expiry the form may ask for (`yyyy-mm-dd`), empty for no limit.
    latest: String,
}

#[derive(Deserialize, Default, Clone)]
#[serde(default)]
pub(super) struct GrantForm {
    csrf: String,
    principal: String,
    role: String,
    region: String,
    /// `yyyy-mm-dd` (the grant ends at the start of that day, UTC).
    expires: String,
}

/// The regions under `scope` (itself first), as the form lists them.
fn regions_under(scope: &RegionId, out: &mut Vec<RegionChoice>) {
    let regions = Regions::builtin();
    let mut push = |code: &str, depth: usize| {
        if !out.iter().any(|c| c.code == code) {
            let indent = "\u{2003}".repeat(depth);
            out.push(RegionChoice { code: code.to_owned(), label: format!("{indent}{code} {}", region_name(code)) });
        }
    };
    match scope.level() {
        RegionLevel::Group => {
            push(scope.as_str(), 0);
            for p in regions.provinces() {
                push(&p.code, 1);
                for c in regions.cities_of(&p.code) {
                    push(&c.code, 2);
                }
            }
        }
        RegionLevel::Province => {
            push(scope.as_str(), 0);
            for c in regions.cities_of(scope.as_str()) {
                push(&c.code, 1);
            }
        }
        RegionLevel::City => push(scope.as_str(), 0),
    }
}

/// The grant form: only the roles the signed-in administrator may hand out, the regions of
/// its subtrees, and no expiry past its own.
pub(super) async fn grant_new(State(state): State<AppState>, Page { f, caller, .. }: Page) -> Response {
    let options = match state.vault.delegation_options(&caller).await {
        Ok(o) => o,
        Err(e) => return error_page(f, e.into()),
    };
    let mut roles: Vec<String> = options.iter().map(|d| d.role.clone()).collect();
    roles.sort();
    roles.dedup();
    let mut regions = Vec::new();
    for d in &options {
        regions_under(&d.scope, &mut regions);
    }
    let latest = if options.iter().any(|d| d.until.is_none()) {
        String::new()
    } else {
        options.iter().filter_map(|d| d.until).max().map(|u| u.format("%Y-%m-%d").to_string()).unwrap_or_default()
    };
    render(&GrantNewPage { l: f.l, lang: f.lang, who: f.who, csrf: f.csrf, roles, regions, latest }, StatusCode::OK)
}

/// The expiry of the form as RFC 3339 (`yyyy-mm-dd` → that day at 00:00 UTC); anything else is
/// passed on as typed, for the vault to refuse in words.
fn expiry(s: &str) -> Option<String> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    Some(match chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        Ok(d) => format!("{d}T00:00:00Z"),
        Err(_) => s.to_owned(),
    })
}

/// Grants as the form says; a refusal (by the gate, or of the form's values) is shown in words
/// with the API's problem code and status.
pub(super) async fn grant_create(
    State(state): State<AppState>,
    headers: HeaderMap,
    Page { session, f, caller }: Page,
    form: Result<Form<GrantForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let form = form.map(|f| f.0).unwrap_or_default();
    if !form_allowed(&headers, &session, &form.csrf) {
        return StatusCode::FORBIDDEN.into_response();
    }
    let draft = GrantDraft {
        principal: form.principal.trim().to_owned(),
        role: form.role,
        region: form.region,
        expires_at: expiry(&form.expires),
    };
    match state.vault.create_grant(&caller, draft).await {
        Ok(_) => Redirect::to("/console/grants").into_response(),
        Err(e) => error_page(f, e.into()),
    }
}

#[derive(Template)]
#[template(path = "console/revoke.html")]
struct RevokePage {
    l: &'static Labels,
    lang: &'static str,
    who: Option<String>,
    csrf: String,
    grant: GrantRow,
    suspended: Vec<GrantRow>,
}

fn grant_id(id: &str) -> Option<uuid::Uuid> {
    uuid::Uuid::try_parse(id).ok()
}

pub(super) async fn revoke_preview(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Page { f, caller, .. }: Page,
) -> Response {
    let Some(id) = grant_id(&id) else { return error_page(f, ApiError::not_found()) };
    match state.vault.revocation_preview(&caller, id).await {
        Ok((grant, suspended)) => render(
            &RevokePage {
                l: f.l,
                lang: f.lang,
                who: f.who,
                csrf: f.csrf,
                grant: row(&grant),
                suspended: suspended.iter().map(row).collect(),
            },
            StatusCode::OK,
        ),
        Err(e) => error_page(f, e.into()),
    }
}

pub(super) async fn revoke(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Page { session, f, caller }: Page,
    form: Result<Form<CsrfForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    if !super::token_form_allowed(&headers, &session, form) {
        return StatusCode::FORBIDDEN.into_response();
    }
    let Some(id) = grant_id(&id) else { return error_page(f, ApiError::not_found()) };
    match state.vault.revoke_grant(&caller, id).await {
        Ok(_) => Redirect::to("/console/grants").into_response(),
        Err(e) => error_page(f, e.into()),
    }
}

/// One of a principal's grants with the chain it was delegated along.
pub(super) struct ChainRow {
    /// The grant itself (a list of one, for the shared table).
    own: Vec<GrantRow>,
    above: Vec<GrantRow>,
}

#[derive(Template)]
#[template(path = "console/principal.html")]
struct PrincipalPage {
    l: &'static Labels,
    lang: &'static str,
    who: Option<String>,
    csrf: String,
    sub: String,
    grants: Vec<ChainRow>,
}

pub(super) async fn principal_page(
    State(state): State<AppState>,
    Path(sub): Path<String>,
    Page { f, caller, .. }: Page,
) -> Response {
    match state.vault.principal_grants(&caller, &sub).await {
        Ok(list) => {
            let grants = list
                .iter()
                .map(|(g, above)| ChainRow { own: vec![row(g)], above: above.iter().map(row).collect() })
                .collect();
            render(&PrincipalPage { l: f.l, lang: f.lang, who: f.who, csrf: f.csrf, sub, grants }, StatusCode::OK)
        }
        Err(e) => error_page(f, e.into()),
    }
}

pub(super) async fn revoke_tokens(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(sub): Path<String>,
    Page { session, f, caller }: Page,
    form: Result<Form<CsrfForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    if !super::token_form_allowed(&headers, &session, form) {
        return StatusCode::FORBIDDEN.into_response();
    }
    match state.vault.revoke_tokens(&caller, &sub).await {
        Ok(_) => {
            let target = format!("/console/principals/{}", super::percent_encode(&sub));
            Redirect::to(&target).into_response()
        }
        Err(e) => error_page(f, e.into()),
    }
}

/// A key version as a row.
pub(super) struct KeyRow {
    version: u32,
    fingerprint: String,
    state: &'static str,
    data_keys: i64,
}

#[derive(Template)]
#[template(path = "console/keys.html")]
struct KeysPage {
    l: &'static Labels,
    lang: &'static str,
    who: Option<String>,
    csrf: String,
    source: String,
    active: u32,
    rows: Vec<KeyRow>,
    rewrap_pending: i64,
    rewrap_progress: String,
    index_version: u32,
    reindex_pending: i64,
}

fn keys_view(f: super::Frame, status: crate::vault::keys::KeyStatus) -> Response {
    let rows = status
        .versions
        .iter()
        .map(|v| KeyRow {
            version: v.version,
            fingerprint: v.fingerprint.clone(),
            state: v.state,
            data_keys: v.data_keys,
        })
        .collect();
    render(
        &KeysPage {
            l: f.l,
            lang: f.lang,
            who: f.who,
            csrf: f.csrf,
            source: status.source,
            active: status.active_version,
            rows,
            rewrap_pending: status.rewrap_pending,
            rewrap_progress: format!("{:.1}", status.rewrap_progress),
            index_version: status.index_version,
            reindex_pending: status.reindex_pending,
        },
        StatusCode::OK,
    )
}

pub(super) async fn keys_page(State(state): State<AppState>, Page { f, caller, .. }: Page) -> Response {
    match state.vault.key_status(&caller).await {
        Ok(status) => keys_view(f, status),
        Err(e) => error_page(f, e.into()),
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct RotateForm {
    csrf: String,
    /// The confirmation checkbox.
    confirm: String,
}

pub(super) async fn rotate_keys(
    State(state): State<AppState>,
    headers: HeaderMap,
    Page { session, f, caller }: Page,
    form: Result<Form<RotateForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let form = form.map(|f| f.0).unwrap_or_default();
    if !form_allowed(&headers, &session, &form.csrf) {
        return StatusCode::FORBIDDEN.into_response();
    }
    // The gate first: someone who may not manage keys learns nothing about the form.
    if let Err(e) = state.vault.may_manage_keys(&caller) {
        return error_page(f, e.into());
    }
    if form.confirm != "rotate" {
        return error_page(
            f,
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "confirmation_required", "Confirmation required")
                .detail("tick the confirmation to rotate the key-encryption key"),
        );
    }
    match state.vault.rotate_keys(&caller).await {
        Ok(status) => keys_view(f, status),
        Err(e) => error_page(f, e.into()),
    }
}

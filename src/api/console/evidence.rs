//! The security officer's evidence pages: one event in full (fields and the view each was
//! disclosed in, purpose, justification, client, request id, sequence number), the export of
//! an audit search as NDJSON or CSV, and the customer access report (PIPL's right to know: who
//! touched a customer, when, for what purpose, which fields).
//!
//! All of it comes from the vault's audit search, so it is limited to the officer's subtree
//! like the search page, and each page or file is itself an audited `audit.read`. Owns: these
//! pages' HTML and the export formats. Must never: show or export a customer's data (events
//! hold ids, field names and views, never values), or let a CSV cell start a formula.

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::i18n::Labels;
use super::{error_page, percent_encode, render, AuditFilter, Page};
use crate::api::problem::ApiError;
use crate::api::AppState;
use crate::audit::StoredEvent;

/// Most events one export file holds; past it the file says it was cut (a narrower filter, or
/// the API's paging, gets the rest).
pub const EXPORT_LIMIT: usize = 10_000;
/// Events fetched per page while exporting.
const EXPORT_PAGE: u32 = 1_000;

/// One event as the detail page shows it.
pub(super) struct EventDetail {
    seq: i64,
    time: String,
    principal: String,
    action: String,
    outcome: &'static str,
    status: u16,
    purpose: String,
    justification: String,
    customers: Vec<String>,
    fields: Vec<(String, String)>,
    client: String,
    user_agent: String,
    request_id: String,
    actor_region: String,
    subject_region: String,
    grant: String,
}

#[derive(Template)]
#[template(path = "console/event.html")]
struct EventPage {
    l: &'static Labels,
    lang: &'static str,
    who: Option<String>,
    csrf: String,
    e: EventDetail,
}

pub(super) async fn event_detail(
    State(state): State<AppState>,
    Path(seq): Path<String>,
    Page { f, caller, .. }: Page,
) -> Response {
    let Some(seq) = seq.parse::<i64>().ok().filter(|s| *s > 0) else { return error_page(f, ApiError::not_found()) };
    let query = crate::store::AuditQuery { after_seq: seq - 1, limit: 1, ..Default::default() };
    match state.vault.audit_events(&caller, query).await {
        // The officer's subtree filters the search: an event outside it is missing, as an
        // event that does not exist.
        Ok(page) => match page.items.into_iter().next().filter(|e| e.seq == seq) {
            Some(s) => {
                let e = s.event;
                let detail = EventDetail {
                    seq: s.seq,
                    time: e.time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                    principal: e.principal.unwrap_or_default(),
                    action: e.action,
                    outcome: e.outcome.as_str(),
                    status: e.status,
                    purpose: e.purpose.unwrap_or_default(),
                    justification: e.justification.unwrap_or_default(),
                    customers: e.customer_ids.iter().map(|c| c.to_string()).collect(),
                    fields: e.fields,
                    client: e.client.unwrap_or_default(),
                    user_agent: e.user_agent.unwrap_or_default(),
                    request_id: e.request_id,
                    actor_region: e.actor_region.unwrap_or_default(),
                    subject_region: e.subject_region.unwrap_or_default(),
                    grant: e.grant_id.map(|g| g.to_string()).unwrap_or_default(),
                };
                render(&EventPage { l: f.l, lang: f.lang, who: f.who, csrf: f.csrf, e: detail }, StatusCode::OK)
            }
            None => error_page(f, ApiError::not_found()),
        },
        Err(e) => error_page(f, e.into()),
    }
}

/// The events of a filter, up to [`EXPORT_LIMIT`]; whether there were more.
async fn collect(
    state: &AppState,
    caller: &crate::vault::Caller,
    filter: &AuditFilter,
) -> Result<(Vec<StoredEvent>, bool), ApiError> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let query = filter.to_query(after, EXPORT_PAGE)?;
        let page = state.vault.audit_events(caller, query).await.map_err(ApiError::from)?;
        out.extend(page.items);
        match page.next_cursor {
            Some(next) if out.len() < EXPORT_LIMIT => after = next,
            Some(_) => return Ok((out, true)),
            None => return Ok((out, false)),
        }
    }
}

/// A CSV cell that a spreadsheet would not run: a value starting with `=`, `+`, `-`, `@`, a tab
/// or a carriage return gets a leading apostrophe (OWASP's CSV injection advice).
pub fn neutralise(cell: &str) -> String {
    match cell.chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r') => format!("'{cell}"),
        _ => cell.to_owned(),
    }
}

fn file(body: Vec<u8>, content_type: &'static str, name: &str, truncated: bool) -> Response {
    let mut r = (StatusCode::OK, body).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    if truncated {
        h.insert("x-custodia-truncated", HeaderValue::from_static("true"));
    }
    r
}

fn json_line(s: &StoredEvent) -> serde_json::Value {
    let e = &s.event;
    serde_json::json!({
        "seq": s.seq,
        "time": e.time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "request_id": e.request_id,
        "principal": e.principal,
        "action": e.action,
        "outcome": e.outcome.as_str(),
        "status": e.status,
        "purpose": e.purpose,
        "justification": e.justification,
        "customer_ids": e.customer_ids,
        "fields": e.fields.iter().map(|(f, v)| serde_json::json!({"field": f, "view": v})).collect::<Vec<_>>(),
        "client": e.client,
        "actor_region": e.actor_region,
        "subject_region": e.subject_region,
        "grant_id": e.grant_id,
    })
}

pub(super) async fn export_ndjson(
    State(state): State<AppState>,
    Page { f, caller, .. }: Page,
    filter: Result<Query<AuditFilter>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(filter)) = filter else {
        return error_page(f, ApiError::bad_request("bad_query", "the filter has unknown or mistyped fields"));
    };
    match collect(&state, &caller, &filter).await {
        Ok((events, truncated)) => {
            let mut body = Vec::new();
            for e in &events {
                if serde_json::to_writer(&mut body, &json_line(e)).is_err() {
                    return StatusCode::INTERNAL_SERVER_ERROR.into_response();
                }
                body.push(b'\n');
            }
            file(body, "application/x-ndjson", "custodia-audit.ndjson", truncated)
        }
        Err(e) => error_page(f, e),
    }
}

pub(super) async fn export_csv(
    State(state): State<AppState>,
    Page { f, caller, .. }: Page,
    filter: Result<Query<AuditFilter>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(filter)) = filter else {
        return error_page(f, ApiError::bad_request("bad_query", "the filter has unknown or mistyped fields"));
    };
    let (events, truncated) = match collect(&state, &caller, &filter).await {
        Ok(x) => x,
        Err(e) => return error_page(f, e),
    };
    let mut w = csv::Writer::from_writer(Vec::new());
    let header = [
        "seq",
        "time",
        "request_id",
        "principal",
        "action",
        "outcome",
        "status",
        "purpose",
        "justification",
        "customer_ids",
        "fields",
        "client",
        "actor_region",
        "subject_region",
    ];
    if w.write_record(header).is_err() {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    for s in &events {
        let e = &s.event;
        let ids: Vec<String> = e.customer_ids.iter().map(|c| c.to_string()).collect();
        let fields: Vec<String> = e.fields.iter().map(|(f, v)| format!("{f}:{v}")).collect();
        let record = [
            s.seq.to_string(),
            e.time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            e.request_id.clone(),
            e.principal.clone().unwrap_or_default(),
            e.action.clone(),
            e.outcome.as_str().to_owned(),
            e.status.to_string(),
            e.purpose.clone().unwrap_or_default(),
            e.justification.clone().unwrap_or_default(),
            ids.join(" "),
            fields.join(" "),
            e.client.clone().unwrap_or_default(),
            e.actor_region.clone().unwrap_or_default(),
            e.subject_region.clone().unwrap_or_default(),
        ];
        if w.write_record(record.iter().map(|c| neutralise(c))).is_err() {
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    }
    match w.into_inner() {
        Ok(body) => file(body, "text/csv; charset=utf-8", "custodia-audit.csv", truncated),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// One line of the access report.
pub(super) struct AccessRow {
    seq: i64,
    time: String,
    principal: String,
    action: String,
    purpose: String,
    fields: String,
    outcome: &'static str,
}

#[derive(Template)]
#[template(path = "console/access.html")]
struct AccessPage {
    l: &'static Labels,
    lang: &'static str,
    who: Option<String>,
    csrf: String,
    customer: String,
    rows: Vec<AccessRow>,
    next: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct AccessQuery {
    customer: String,
    after: Option<i64>,
}

/// Who touched a customer, when, for what purpose and which fields (events in the officer's
/// subtree, oldest first).
pub(super) async fn customer_access(
    State(state): State<AppState>,
    Page { f, caller, .. }: Page,
    query: Result<Query<AccessQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return error_page(f, ApiError::bad_request("bad_query", "the form has unknown or mistyped fields"));
    };
    let customer = q.customer.trim().to_owned();
    if customer.is_empty() {
        // The form alone: discloses nothing, but only an officer is shown it.
        return match state.vault.may(&caller, crate::authz::Action::ReadAudit) {
            Ok(()) => render(
                &AccessPage { l: f.l, lang: f.lang, who: f.who, csrf: f.csrf, customer, rows: Vec::new(), next: None },
                StatusCode::OK,
            ),
            Err(e) => error_page(f, e.into()),
        };
    }
    let filter = AuditFilter { customer: customer.clone(), ..AuditFilter::default() };
    let query = match filter.to_query(q.after.unwrap_or(0), 50) {
        Ok(q) => q,
        Err(e) => return error_page(f, e),
    };
    match state.vault.audit_events(&caller, query).await {
        Ok(page) => {
            let rows = page
                .items
                .iter()
                .map(|s| AccessRow {
                    seq: s.seq,
                    time: s.event.time.format("%Y-%m-%d %H:%M:%S").to_string(),
                    principal: s.event.principal.clone().unwrap_or_default(),
                    action: s.event.action.clone(),
                    purpose: s.event.purpose.clone().unwrap_or_default(),
                    fields: s.event.fields.iter().map(|(f, v)| format!("{f} ({v})")).collect::<Vec<_>>().join(", "),
                    outcome: s.event.outcome.as_str(),
                })
                .collect();
            let next = page
                .next_cursor
                .map(|after| format!("/console/customers/access?customer={}&after={after}", percent_encode(&customer)));
            render(&AccessPage { l: f.l, lang: f.lang, who: f.who, csrf: f.csrf, customer, rows, next }, StatusCode::OK)
        }
        Err(e) => error_page(f, e.into()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn formula_cells_are_neutralised() {
        for cell in ["=1+1", "+1", "-2", "@SUM(A1)", "\tx", "\rx"] {
            assert!(super::neutralise(cell).starts_with('\''), "{cell:?}");
        }
        for cell in ["alice", "customer.read", "2026-12-04T00:00:00Z", ""] {
            assert_eq!(super::neutralise(cell), cell);
        }
    }
}

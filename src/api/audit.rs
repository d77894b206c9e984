//! The audit over HTTP: the middleware that gives every `/v1` request exactly one event and
//! holds the response until that event is committed, and the endpoints that search, export
//! and verify the audit, manage bulk-access alerts and show a customer's access log.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::extract::{ApiQuery, CustomerId};
use super::middleware::RequestId;
use super::problem::{ApiError, Problem};
use super::AppState;
use crate::audit::{AuditEvent, AuditHandle, StoredEvent, VerifyReport};
use crate::authz::Action;
use crate::store::{AlertRecord, AuditQuery};
use crate::vault::Caller;

/// Stamps the route's declared action on the request: on its audit event, and in the
/// extensions where the `Caller` extractor takes it for the gate. Runs for `HEAD` too, so a
/// `HEAD` of a `GET` route is decided and audited as that `GET`. A plain layer (no boxed
/// future): it runs on every request.
#[derive(Clone, Copy, Debug)]
pub struct Declare(pub Action);

impl<S> tower::Layer<S> for Declare {
    type Service = Declared<S>;

    fn layer(&self, inner: S) -> Declared<S> {
        Declared { inner, action: self.0 }
    }
}

/// The service of [`Declare`].
#[derive(Clone, Debug)]
pub struct Declared<S> {
    inner: S,
    action: Action,
}

impl<S, B> tower::Service<http::Request<B>> for Declared<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        if let Some(handle) = req.extensions().get::<AuditHandle>() {
            handle.set_action(self.action.as_str());
        }
        req.extensions_mut().insert(super::DeclaredAction(self.action));
        self.inner.call(req)
    }
}

/// A user agent kept for the audit: printable ASCII, at most 256 characters.
fn user_agent(headers: &HeaderMap) -> Option<String> {
    let ua = headers.get(header::USER_AGENT)?.to_str().ok()?;
    Some(ua.chars().filter(|c| c.is_ascii_graphic() || *c == ' ').take(256).collect())
}

/// Gives the request its audit event, lets the handlers fill it in within the request's time
/// limit, and commits it before the response leaves. When the event cannot be committed the
/// caller gets 503 and nothing else.
pub async fn record(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let request_id = req.extensions().get::<RequestId>().map(|r| r.0.clone()).unwrap_or_default();
    // The action stays empty until a route declares one (an unrouted request closes as `unknown`).
    let mut event = AuditEvent::now(request_id, "");
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    (event.client, event.proxy) = super::proxy::client_of(peer, req.headers(), &state.trusted_proxies);
    event.user_agent = user_agent(req.headers());
    // Counted by the audit writer as an event to come until it is closed: a group commit
    // under load waits a little for it (`audit.commit_min_interval_us`).
    let handle = AuditHandle::expected(event, state.audit.expect());
    req.extensions_mut().insert(handle.clone());
    // The request's time limit, inside the audit: a request cut short is answered and audited.
    let response = match tokio::time::timeout(state.request_timeout, next.run(req)).await {
        Ok(response) => response,
        Err(_) => super::middleware::timed_out(state.request_timeout),
    };
    if handle.is_recorded() {
        return response;
    }
    match state.audit.append(handle.take_closed(response.status().as_u16())).await {
        Ok(_) => response,
        Err(e) => {
            tracing::error!(error = %e, "audit event not committed: response withheld");
            ApiError::audit_unavailable().into_response()
        }
    }
}

/// A field disclosed, and how.
#[derive(Serialize, ToSchema)]
pub struct DisclosedField {
    pub field: String,
    /// `plain`, `masked` or `revealed`.
    pub view: String,
}

/// An audit event.
#[derive(Serialize, ToSchema)]
pub struct Event {
    pub seq: i64,
    pub time: DateTime<Utc>,
    pub request_id: String,
    pub principal: Option<String>,
    pub grant_id: Option<Uuid>,
    pub action: String,
    pub customer_ids: Vec<Uuid>,
    pub fields: Vec<DisclosedField>,
    pub purpose: Option<String>,
    pub justification: Option<String>,
    /// Search terms as blind-index digests.
    pub query: Option<String>,
    pub outcome: &'static str,
    pub status: u16,
    /// The client's address (forwarded by a trusted proxy, or the peer).
    pub client: Option<String>,
    /// The trusted proxy the request came through, when `client` was forwarded.
    pub proxy: Option<String>,
    pub user_agent: Option<String>,
    /// Where the principal acted from: the smallest region node containing its live grants.
    pub actor_region: Option<String>,
    /// The region of what the request concerned (customers, grant, alert).
    pub subject_region: Option<String>,
    /// Ids asked for but not disclosed (missing, out of scope or restricted); they are in
    /// `customer_ids` too, so that probing shows in the access log.
    pub not_disclosed: Vec<Uuid>,
}

impl From<StoredEvent> for Event {
    fn from(s: StoredEvent) -> Self {
        let e = s.event;
        Event {
            seq: s.seq,
            time: e.time,
            request_id: e.request_id,
            principal: e.principal,
            grant_id: e.grant_id,
            action: e.action,
            customer_ids: e.customer_ids,
            fields: e.fields.into_iter().map(|(field, view)| DisclosedField { field, view }).collect(),
            purpose: e.purpose,
            justification: e.justification,
            query: e.query,
            outcome: e.outcome.as_str(),
            status: e.status,
            client: e.client,
            proxy: e.proxy,
            user_agent: e.user_agent,
            actor_region: e.actor_region,
            subject_region: e.subject_region,
            not_disclosed: e.undisclosed.as_deref().and_then(|u| serde_json::from_str(u).ok()).unwrap_or_default(),
        }
    }
}

/// A page of events.
#[derive(Serialize, ToSchema)]
pub struct EventPage {
    pub items: Vec<Event>,
    pub next_cursor: Option<String>,
}

/// Filters of `GET /v1/audit/events`.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventParams {
    pub principal: Option<String>,
    /// A customer id.
    pub customer: Option<Uuid>,
    pub action: Option<String>,
    /// `allowed`, `denied`, `not_found`, `invalid` or `failed`.
    pub outcome: Option<String>,
    /// The purpose the events were recorded with (`X-Purpose`, or `administration` / `audit`).
    pub purpose: Option<String>,
    /// RFC 3339, inclusive.
    pub from: Option<DateTime<Utc>>,
    /// RFC 3339, exclusive.
    pub to: Option<DateTime<Utc>>,
    pub cursor: Option<String>,
    /// 1 to 1000 (default 100).
    pub page_size: Option<u32>,
}

fn cursor(c: Option<&str>) -> Result<i64, ApiError> {
    match c {
        None => Ok(0),
        Some(c) => c
            .parse::<i64>()
            .ok()
            .filter(|v| *v >= 0)
            .ok_or_else(|| ApiError::bad_request("bad_cursor", "the cursor is not one this API issued")),
    }
}

/// Search the audit (security officers). `Accept: application/x-ndjson` streams every match.
#[utoipa::path(
    get, path = "/v1/audit/events", tag = "audit",
    params(EventParams),
    responses(
        (status = 200, description = "A page of the events whose actor or subject lies in the officer's subtree, or with Accept: application/x-ndjson an export of every match (a failure mid-stream ends the body without its chunked terminator)", body = EventPage),
        (status = 400, description = "Bad query", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not a security officer", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn events(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiQuery(p): ApiQuery<EventParams>,
) -> Result<Response, ApiError> {
    let query = AuditQuery {
        principal: p.principal,
        customer: p.customer,
        action: p.action,
        outcome: p.outcome,
        purpose: p.purpose,
        from: p.from,
        to: p.to,
        after_seq: cursor(p.cursor.as_deref())?,
        limit: p.page_size.unwrap_or(100),
        // The vault narrows this to the officer's subtree.
        scopes: None,
    };
    let ndjson =
        headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("application/x-ndjson"));
    if !ndjson {
        let page = state.vault.audit_events(&caller, query).await?;
        let body = EventPage {
            items: page.items.into_iter().map(Event::from).collect(),
            next_cursor: page.next_cursor.map(|c| c.to_string()),
        };
        return Ok((no_store(), Json(body)).into_response());
    }
    // Export: the first page is read (and authorized) now; the rest stream page by page.
    let mut first = query.clone();
    first.limit = crate::vault::audit_max_page();
    let page = state.vault.audit_events(&caller, first).await?;
    // Each page is sent before the next is read. A page that fails mid-stream ends the body
    // with an error: the connection is closed without the chunked terminator, so no client can
    // take a truncated export for a complete one (and nothing is appended that a parser could
    // mistake for an event).
    enum Next {
        Page(crate::vault::AuditPage),
        After(i64),
        Done,
    }
    let stream = futures::stream::unfold(
        (Next::Page(page), state.vault.clone(), caller, query),
        |(next, vault, caller, mut query)| async move {
            let page = match next {
                Next::Done => return None,
                Next::Page(page) => page,
                Next::After(cursor) => {
                    query.after_seq = cursor;
                    query.limit = crate::vault::audit_max_page();
                    match vault.audit_events(&caller, query.clone()).await {
                        Ok(page) => page,
                        Err(e) => {
                            tracing::error!(error = %e, "audit export failed mid-stream: ended incomplete");
                            let failed = Err(std::io::Error::other("audit export failed"));
                            return Some((failed, (Next::Done, vault, caller, query)));
                        }
                    }
                }
            };
            let mut chunk = Vec::new();
            for e in page.items {
                if let Ok(line) = serde_json::to_vec(&Event::from(e)) {
                    chunk.extend(line);
                    chunk.push(b'\n');
                }
            }
            let next = page.next_cursor.map_or(Next::Done, Next::After);
            Some((Ok::<_, std::io::Error>(chunk), (next, vault, caller, query)))
        },
    );
    let mut response = Body::from_stream(stream).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

fn no_store() -> [(header::HeaderName, HeaderValue); 1] {
    [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))]
}

/// Recompute the chain and check every checkpoint signature against the pinned key.
#[utoipa::path(
    get, path = "/v1/audit/verify", tag = "audit",
    responses(
        (status = 200, description = "The verification report (ok false names the first bad sequence number)", body = VerifyReport),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not a security officer", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn verify(State(state): State<AppState>, caller: Caller) -> Result<Json<VerifyReport>, ApiError> {
    Ok(Json(state.vault.verify_audit(&caller).await?))
}

/// A bulk-access alert.
#[derive(Serialize, ToSchema)]
pub struct Alert {
    pub id: Uuid,
    /// What raised it: `bulk_access`, `search_budget` or `search_misses`.
    pub kind: String,
    pub principal: String,
    /// Where the principal acted from when it was raised (officers see their subtree's).
    pub region: Option<String>,
    pub raised_at: DateTime<Utc>,
    pub distinct_customers: i32,
    pub window_seconds: i32,
    pub cleared_at: Option<DateTime<Utc>>,
    pub cleared_by: Option<String>,
    /// `open` (the principal is blocked) or `cleared`.
    pub status: &'static str,
}

impl From<AlertRecord> for Alert {
    fn from(a: AlertRecord) -> Self {
        Alert {
            status: if a.cleared_at.is_some() { "cleared" } else { "open" },
            id: a.id,
            kind: a.kind,
            principal: a.principal,
            region: a.region,
            raised_at: a.raised_at,
            distinct_customers: a.distinct_customers,
            window_seconds: a.window_seconds,
            cleared_at: a.cleared_at,
            cleared_by: a.cleared_by,
        }
    }
}

/// Recent bulk-access alerts.
#[utoipa::path(
    get, path = "/v1/audit/alerts", tag = "audit",
    responses(
        (status = 200, description = "Alerts about principals in the officer's subtree, newest first", body = [Alert]),
        (status = 403, description = "Not a security officer", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn alerts(State(state): State<AppState>, caller: Caller) -> Result<Json<Vec<Alert>>, ApiError> {
    Ok(Json(state.vault.alerts(&caller).await?.into_iter().map(Alert::from).collect()))
}

/// Clear an open alert: its principal's data requests are served again.
#[utoipa::path(
    post, path = "/v1/audit/alerts/{id}/clear", tag = "audit",
    params(("id" = Uuid, Path, description = "Alert id")),
    responses(
        (status = 200, description = "Cleared", body = Alert),
        (status = 403, description = "Not a security officer", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No open alert with that id about a principal in the officer's subtree", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn clear_alert(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Alert>, ApiError> {
    let id = Uuid::try_parse(&id).map_err(|_| ApiError::not_found())?;
    Ok(Json(state.vault.clear_alert(&caller, id).await?.into()))
}

/// One access to the customer's data.
#[derive(Serialize, ToSchema)]
pub struct Access {
    pub time: DateTime<Utc>,
    pub principal: Option<String>,
    pub action: String,
    pub fields: Vec<DisclosedField>,
    pub purpose: Option<String>,
    pub outcome: String,
}

/// The customer's access log.
#[derive(Serialize, ToSchema)]
pub struct AccessLog {
    pub items: Vec<Access>,
    pub next_cursor: Option<String>,
}

/// Paging of the access log.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AccessLogParams {
    pub cursor: Option<String>,
    pub page_size: Option<u32>,
}

/// Who accessed this customer's data and how (PIPL right to know; purpose data_subject_request).
#[utoipa::path(
    get, path = "/v1/customers/{id}/access-log", tag = "audit",
    params(("id" = Uuid, Path, description = "Customer id"), ("X-Purpose" = String, Header, description = "data_subject_request"), AccessLogParams),
    responses(
        (status = 200, description = "Accesses, oldest first", body = AccessLog),
        (status = 403, description = "Not permitted for this purpose", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such customer in the caller's scope", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn access_log(
    State(state): State<AppState>,
    caller: Caller,
    CustomerId(id): CustomerId,
    ApiQuery(p): ApiQuery<AccessLogParams>,
) -> Result<Response, ApiError> {
    let (entries, next) =
        state.vault.access_log(&caller, id, cursor(p.cursor.as_deref())?, p.page_size.unwrap_or(100)).await?;
    let body = AccessLog {
        items: entries
            .into_iter()
            .map(|e| Access {
                time: e.time,
                principal: e.principal,
                action: e.action,
                fields: e.fields.into_iter().map(|(field, view)| DisclosedField { field, view }).collect(),
                purpose: e.purpose,
                outcome: e.outcome,
            })
            .collect(),
        next_cursor: next.map(|c| c.to_string()),
    };
    Ok((no_store(), Json(body)).into_response())
}

//! The HTTP API (axum). HTTP only: routing, extraction, status codes and problem documents.
//! Handlers translate requests into [`crate::vault`] calls and results into responses; no SQL,
//! no cryptography and no authorization decisions live here.

pub mod audit;
pub mod console;
pub mod customers;
pub mod extract;
pub mod grants;
pub mod health;
pub mod idempotency;
pub mod lifecycle;
pub mod listener;
pub mod middleware;
pub mod openapi;
pub mod problem;
pub mod proxy;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::{Method, StatusCode};
use axum::routing::{get, on, MethodFilter, MethodRouter};
use axum::Router;
use tower_http::catch_panic::CatchPanicLayer;

use crate::audit::AuditLog;
use crate::auth::Authenticator;
use crate::authz::Action;
use crate::vault::Vault;
use problem::ApiError;

/// What handlers share: one reference-counted pointer, since axum clones the state for every
/// `State` extraction and middleware of every request.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

/// The contents of [`AppState`].
pub struct Shared {
    pub vault: Arc<Vault>,
    pub authenticator: Arc<Authenticator>,
    pub audit: AuditLog,
    /// Peers whose `X-Forwarded-For` is believed (load balancers, reverse proxies).
    pub trusted_proxies: Vec<proxy::Cidr>,
    /// Whole-request time limit of `/v1` requests (503 `timeout`, audited).
    pub request_timeout: Duration,
    /// The console's sessions.
    pub sessions: Arc<crate::auth::session::Sessions>,
    /// The console's development sign-in: on only while the public example token key is
    /// accepted (the embedded default).
    pub development_sign_in: bool,
    /// The console's OpenID Connect client, when `console.client_id` is configured.
    pub oidc: Option<Arc<crate::auth::oidc::OidcClient>>,
}

impl AppState {
    pub fn new(shared: Shared) -> Self {
        AppState(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// HTTP limits applied by the router (the request time limit is in [`Shared`]).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub body_bytes: usize,
}

/// The action a route declares, in request extensions for the extractors and the gate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeclaredAction(pub Action);

/// One `/v1` route as declared: method, path (under `/v1`) and the action that the gate
/// decides and the audit records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteDecl {
    pub method: Method,
    pub path: &'static str,
    pub action: Action,
}

/// One route with its handler.
struct Declared {
    decl: RouteDecl,
    handler: MethodRouter<AppState>,
}

fn declare<H, T>(method: Method, path: &'static str, action: Action, handler: H) -> Declared
where
    H: axum::handler::Handler<T, AppState>,
    T: 'static,
{
    let filter = match method.as_str() {
        "GET" => MethodFilter::GET,
        "POST" => MethodFilter::POST,
        "PATCH" => MethodFilter::PATCH,
        "DELETE" => MethodFilter::DELETE,
        _ => MethodFilter::PUT,
    };
    let handler = on(filter, handler).layer(audit::Declare(action));
    Declared { decl: RouteDecl { method, path, action }, handler }
}

/// Every `/v1` route, each with its action declared once, here, beside it. The router is
/// built from this table, and the router-generated matrix test walks it: a route added here
/// without its row in the matrix fails the test suite. `GET` routes answer `HEAD` as the `GET`
/// they are (same decision, same audited action, no body).
fn v1_table() -> Vec<Declared> {
    use Action as A;
    vec![
        declare(Method::POST, "/customers", A::CreateCustomer, customers::create),
        declare(Method::POST, "/customers/search", A::SearchCustomers, customers::search),
        declare(Method::POST, "/customers/batch-get", A::BatchGetCustomers, customers::batch_get),
        declare(Method::GET, "/customers/{id}", A::ReadCustomer, customers::read),
        declare(Method::PATCH, "/customers/{id}", A::UpdateCustomer, customers::update),
        declare(Method::DELETE, "/customers/{id}", A::EraseCustomer, lifecycle::erase),
        declare(Method::GET, "/customers/{id}/export", A::ExportCustomer, lifecycle::export),
        declare(Method::POST, "/customers/{id}/restrict", A::RestrictCustomer, lifecycle::restrict),
        declare(Method::POST, "/customers/{id}/unrestrict", A::RestrictCustomer, lifecycle::unrestrict),
        declare(Method::POST, "/customers/{id}/reveal", A::RevealFields, customers::reveal),
        declare(Method::GET, "/customers/{id}/access-log", A::AccessLog, audit::access_log),
        declare(Method::GET, "/admin/keys", A::ManageKeys, lifecycle::key_status),
        declare(Method::POST, "/admin/keys/rotate", A::ManageKeys, lifecycle::rotate_keys),
        declare(Method::POST, "/grants", A::CreateGrant, grants::create),
        declare(Method::GET, "/grants", A::GrantList, grants::list),
        declare(Method::DELETE, "/grants/{id}", A::RevokeGrant, grants::revoke),
        declare(Method::POST, "/principals/{sub}/revoke-tokens", A::RevokeTokens, grants::revoke_tokens),
        declare(Method::GET, "/audit/events", A::ReadAudit, audit::events),
        declare(Method::GET, "/audit/verify", A::VerifyAudit, audit::verify),
        declare(Method::GET, "/audit/alerts", A::AuditAlerts, audit::alerts),
        declare(Method::POST, "/audit/alerts/{id}/clear", A::AuditAlerts, audit::clear_alert),
    ]
}

/// The declared `/v1` routes (paths under `/v1`), as the router serves them.
pub fn routes() -> Vec<RouteDecl> {
    v1_table().into_iter().map(|d| d.decl).collect()
}

/// The application's router with its middleware.
pub fn router(state: AppState, limits: Limits) -> Router {
    let mut v1 = Router::new();
    for d in v1_table() {
        v1 = v1.route(d.decl.path, d.handler);
    }
    let v1 = v1
        .fallback(|| async { ApiError::not_found() })
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(move |req, next| idempotency::fingerprint(limits.body_bytes, req, next)))
        // Inside the audit layer (which also bounds the request's time), so that panics and
        // timeouts are audited too.
        .layer(CatchPanicLayer::custom(middleware::panic_response))
        .layer(axum::middleware::from_fn_with_state(state.clone(), audit::record));
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/openapi.json", get(openapi::serve))
        .nest("/v1", v1)
        .nest("/console", console::router(state.clone()))
        .fallback(|| async { ApiError::not_found() })
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limits.body_bytes))
        .layer(CatchPanicLayer::custom(middleware::panic_response))
        .layer(axum::middleware::from_fn(middleware::request_context))
        .with_state(state)
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "Method not allowed")
}

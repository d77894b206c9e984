//! The HTTP API (axum). HTTP only: routing, extraction, status codes and problem documents.
//! Handlers translate requests into [`crate::vault`] calls and results into responses; no SQL,
//! no cryptography and no authorization decisions live here.

pub mod audit;
pub mod customers;
pub mod extract;
pub mod grants;
pub mod health;
pub mod lifecycle;
pub mod middleware;
pub mod openapi;
pub mod problem;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use tower_http::catch_panic::CatchPanicLayer;

use crate::audit::AuditLog;
use crate::auth::Authenticator;
use crate::vault::Vault;
use problem::ApiError;

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    pub vault: Arc<Vault>,
    pub authenticator: Arc<Authenticator>,
    pub audit: AuditLog,
}

/// HTTP limits.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub body_bytes: usize,
    pub request_timeout: Duration,
}

/// The application's router with its middleware.
pub fn router(state: AppState, limits: Limits) -> Router {
    let v1 = Router::new()
        .route("/customers", post(customers::create))
        .route("/customers/search", post(customers::search))
        .route("/customers/batch-get", post(customers::batch_get))
        .route("/customers/{id}", get(customers::read).patch(customers::update).delete(lifecycle::erase))
        .route("/customers/{id}/export", get(lifecycle::export))
        .route("/customers/{id}/restrict", post(lifecycle::restrict))
        .route("/customers/{id}/unrestrict", post(lifecycle::unrestrict))
        .route("/admin/keys", get(lifecycle::key_status))
        .route("/admin/keys/rotate", post(lifecycle::rotate_keys))
        .route("/customers/{id}/reveal", post(customers::reveal))
        .route("/grants", post(grants::create).get(grants::list))
        .route("/grants/{id}", axum::routing::delete(grants::revoke))
        .route("/principals/{sub}/revoke-tokens", post(grants::revoke_tokens))
        .route("/customers/{id}/access-log", get(audit::access_log))
        .route("/audit/events", get(audit::events))
        .route("/audit/verify", get(audit::verify))
        .route("/audit/alerts", get(audit::alerts))
        .route("/audit/alerts/{id}/clear", post(audit::clear_alert))
        .fallback(|| async { ApiError::not_found() })
        .method_not_allowed_fallback(method_not_allowed)
        // Inside the audit layer, so that timeouts and panics are audited too.
        .layer(axum::middleware::from_fn_with_state(limits.request_timeout, middleware::timeout))
        .layer(CatchPanicLayer::custom(middleware::panic_response))
        .layer(axum::middleware::from_fn_with_state(state.clone(), audit::record));
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/openapi.json", get(openapi::serve))
        .nest("/v1", v1)
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

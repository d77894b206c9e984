//! Data-subject rights and key administration over HTTP: erasure, export, restriction, and the
//! key status and rotation endpoints.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use super::customers::CustomerMeta;
use super::extract::CustomerId;
use super::problem::{ApiError, Problem};
use super::AppState;
use crate::vault::keys::KeyStatus;
use crate::vault::Caller;

/// Everything held about a customer, in plaintext.
#[derive(Serialize, ToSchema)]
pub struct CustomerExport {
    #[serde(flatten)]
    pub meta: CustomerMeta,
    pub fields: BTreeMap<String, String>,
    pub exported_at: DateTime<Utc>,
}

/// Erase a customer (crypto-shredding; a tombstone remains).
#[utoipa::path(
    delete, path = "/v1/customers/{id}", tag = "customers",
    params(("id" = uuid::Uuid, Path, description = "Customer id"), ("X-Purpose" = String, Header, description = "data_subject_request"), ("Idempotency-Key" = Option<String>, Header, description = "Retry safely: a retry with the same key and request returns the first outcome and applies nothing (422 with another request); per principal, remembered for idempotency_window_seconds")),
    responses(
        (status = 400, description = "Malformed Idempotency-Key", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Idempotency-Key used before with another request", body = Problem, content_type = "application/problem+json"),
        (status = 204, description = "Erased"),
        (status = 403, description = "Not permitted for this purpose", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such customer in the caller's scope", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn erase(
    State(state): State<AppState>,
    caller: Caller,
    CustomerId(id): CustomerId,
) -> Result<StatusCode, ApiError> {
    state.vault.erase_customer(&caller, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Export all of a customer's data in plaintext (data-subject request).
#[utoipa::path(
    get, path = "/v1/customers/{id}/export", tag = "customers",
    params(
        ("id" = uuid::Uuid, Path, description = "Customer id"),
        ("X-Purpose" = String, Header, description = "data_subject_request"),
        ("X-Justification" = String, Header, description = "The data-subject request's ticket reference (3–64 characters of letters, digits, `-_.:/#`); recorded in the audit"),
    ),
    responses(
        (status = 200, description = "The customer's data", body = CustomerExport),
        (status = 403, description = "Not permitted for this purpose, or the customer is restricted", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such customer in the caller's scope", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "X-Justification missing or malformed", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Reveal budget spent (exports count as reveals)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn export(
    State(state): State<AppState>,
    caller: Caller,
    CustomerId(id): CustomerId,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    // Not echoed anywhere but the audit, which keeps only a well-formed ticket reference.
    let justification = headers.get("x-justification").and_then(|v| v.to_str().ok()).unwrap_or("");
    let (summary, fields) = state.vault.export_customer(&caller, id, justification).await?;
    let body = CustomerExport {
        meta: summary.into(),
        fields: fields.iter().map(|(k, v)| (k.clone(), v.expose().to_owned())).collect(),
        exported_at: Utc::now(),
    };
    let headers = [
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        (header::CONTENT_DISPOSITION, HeaderValue::from_static("attachment; filename=\"customer-export.json\"")),
    ];
    Ok((headers, Json(body)).into_response())
}

/// Restrict a customer (PIPL art. 47): kept, readable only for legal_request.
#[utoipa::path(
    post, path = "/v1/customers/{id}/restrict", tag = "customers",
    params(("id" = uuid::Uuid, Path, description = "Customer id"), ("X-Purpose" = String, Header, description = "data_subject_request"), ("Idempotency-Key" = Option<String>, Header, description = "Retry safely: a retry with the same key and request returns the first outcome and applies nothing (422 with another request); per principal, remembered for idempotency_window_seconds")),
    responses(
        (status = 400, description = "Malformed Idempotency-Key", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Idempotency-Key used before with another request", body = Problem, content_type = "application/problem+json"),
        (status = 200, description = "Restricted", body = CustomerMeta),
        (status = 403, description = "Not permitted for this purpose", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such customer in the caller's scope", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn restrict(
    State(state): State<AppState>,
    caller: Caller,
    CustomerId(id): CustomerId,
) -> Result<Json<CustomerMeta>, ApiError> {
    Ok(Json(state.vault.restrict_customer(&caller, id, true).await?.into()))
}

/// Lift a restriction.
#[utoipa::path(
    post, path = "/v1/customers/{id}/unrestrict", tag = "customers",
    params(("id" = uuid::Uuid, Path, description = "Customer id"), ("X-Purpose" = String, Header, description = "data_subject_request"), ("Idempotency-Key" = Option<String>, Header, description = "Retry safely: a retry with the same key and request returns the first outcome and applies nothing (422 with another request); per principal, remembered for idempotency_window_seconds")),
    responses(
        (status = 400, description = "Malformed Idempotency-Key", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Idempotency-Key used before with another request", body = Problem, content_type = "application/problem+json"),
        (status = 200, description = "Active again", body = CustomerMeta),
        (status = 403, description = "Not permitted for this purpose", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such customer in the caller's scope", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn unrestrict(
    State(state): State<AppState>,
    caller: Caller,
    CustomerId(id): CustomerId,
) -> Result<Json<CustomerMeta>, ApiError> {
    Ok(Json(state.vault.restrict_customer(&caller, id, false).await?.into()))
}

/// Key versions, their use and rewrap progress (administrators at CN).
#[utoipa::path(
    get, path = "/v1/admin/keys", tag = "keys",
    responses(
        (status = 200, description = "Key status", body = KeyStatus),
        (status = 403, description = "Not a key manager at CN", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn key_status(State(state): State<AppState>, caller: Caller) -> Result<Json<KeyStatus>, ApiError> {
    Ok(Json(state.vault.key_status(&caller).await?))
}

/// Add a key-encryption key version; data keys are rewrapped to it in the background.
#[utoipa::path(
    post, path = "/v1/admin/keys/rotate", tag = "keys",
    responses(
        (status = 200, description = "Rotated", body = KeyStatus),
        (status = 403, description = "Not a key manager at CN", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The key source cannot rotate", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn rotate_keys(State(state): State<AppState>, caller: Caller) -> Result<Json<KeyStatus>, ApiError> {
    Ok(Json(state.vault.rotate_keys(&caller).await?))
}

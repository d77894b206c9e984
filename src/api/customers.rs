//! `/v1/customers`: create, read and update customer records.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::extract::{ApiJson, CustomerId, FieldMap, IfMatch, PatchFieldMap};
use super::problem::{ApiError, Problem};
use super::AppState;
use crate::domain::{CustomerDraft, CustomerKind, CustomerPatch, CustomerStatus};
use crate::vault::Caller;
use crate::vault::{CustomerSummary, CustomerView};

/// A new customer.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCustomerRequest {
    /// The customer's city: a four-digit GB/T 2260 code such as `3201`.
    #[schema(example = "3201")]
    pub region: String,
    /// `individual` or `enterprise`.
    #[schema(example = "individual")]
    pub kind: String,
    /// 0 (none) to 9.
    #[serde(default)]
    pub vip_level: Option<i64>,
    /// Field name → value, from the field catalogue (`policies/fields.toml`).
    #[schema(value_type = BTreeMap<String, String>, example = json!({"name": "张三", "mobile": "13812345678"}))]
    pub fields: FieldMap,
}

/// A change to a customer. A field set to `null` is removed.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateCustomerRequest {
    #[serde(default)]
    pub vip_level: Option<i64>,
    #[serde(default)]
    #[schema(value_type = BTreeMap<String, Option<String>>)]
    pub fields: PatchFieldMap,
}

/// A customer's routing and lifecycle data (no field values).
#[derive(Serialize, ToSchema)]
pub struct CustomerMeta {
    pub id: Uuid,
    pub region: String,
    pub kind: CustomerKind,
    pub vip_level: i16,
    pub status: CustomerStatus,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A customer with its fields.
#[derive(Serialize, ToSchema)]
pub struct Customer {
    #[serde(flatten)]
    pub meta: CustomerMeta,
    pub fields: BTreeMap<String, String>,
}

impl From<CustomerSummary> for CustomerMeta {
    fn from(s: CustomerSummary) -> Self {
        CustomerMeta {
            id: s.id,
            region: s.region,
            kind: s.kind,
            vip_level: s.vip_level,
            status: s.status,
            version: s.version,
            created_at: s.created_at,
            updated_at: s.updated_at,
        }
    }
}

fn etag(version: i64) -> HeaderValue {
    // invariant: a formatted integer is always a valid header value.
    HeaderValue::from_str(&format!("\"{version}\"")).unwrap_or(HeaderValue::from_static("\"0\""))
}

/// Headers on every response that carries customer data.
fn data_headers(version: i64) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(header::ETAG, etag(version));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h
}

/// Create a customer record.
#[utoipa::path(
    post, path = "/v1/customers", tag = "customers",
    params(("X-Purpose" = String, Header, description = "The purpose of the request, from policies/purposes.toml")),
    request_body = CreateCustomerRequest,
    responses(
        (status = 201, description = "Created", body = CustomerMeta,
         headers(("Location" = String, description = "/v1/customers/{id}"), ("ETag" = String))),
        (status = 400, description = "Malformed body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "No grant permits this action for this purpose (or region)", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid input", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateCustomerRequest>,
) -> Result<Response, ApiError> {
    let draft =
        CustomerDraft { region: body.region, kind: body.kind, vip_level: body.vip_level, fields: body.fields.0 };
    let created = state.vault.create_customer(&caller, draft).await?;
    let mut headers = data_headers(created.version);
    let location = HeaderValue::from_str(&format!("/v1/customers/{}", created.id)).map_err(|_| ApiError::internal())?;
    headers.insert(header::LOCATION, location);
    Ok((StatusCode::CREATED, headers, Json(CustomerMeta::from(created))).into_response())
}

/// Read a customer record.
#[utoipa::path(
    get, path = "/v1/customers/{id}", tag = "customers",
    params(("id" = Uuid, Path, description = "Customer id"), ("X-Purpose" = String, Header, description = "The purpose of the request, from policies/purposes.toml")),
    responses(
        (status = 200, description = "The customer", body = Customer, headers(("ETag" = String))),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "No grant permits this action for this purpose (or region)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such customer in the caller's scope", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "Integrity failure", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn read(
    State(state): State<AppState>,
    caller: Caller,
    CustomerId(id): CustomerId,
) -> Result<Response, ApiError> {
    let view: CustomerView = state.vault.read_customer(&caller, id).await?;
    let fields = view.fields.iter().map(|(k, v)| (k.clone(), v.expose().to_owned())).collect();
    let headers = data_headers(view.summary.version);
    Ok((headers, Json(Customer { meta: view.summary.into(), fields })).into_response())
}

/// Update a customer record (optimistic concurrency through `If-Match`).
#[utoipa::path(
    patch, path = "/v1/customers/{id}", tag = "customers",
    params(
        ("id" = Uuid, Path, description = "Customer id"),
        ("If-Match" = String, Header, description = "The version being changed, as in the ETag"),
        ("X-Purpose" = String, Header, description = "The purpose of the request, from policies/purposes.toml"),
    ),
    request_body = UpdateCustomerRequest,
    responses(
        (status = 200, description = "Updated", body = CustomerMeta, headers(("ETag" = String))),
        (status = 400, description = "Malformed body or If-Match", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "No grant permits this action for this purpose (or region)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such customer in the caller's scope", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "Version conflict", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid input", body = Problem, content_type = "application/problem+json"),
        (status = 428, description = "If-Match missing", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    CustomerId(id): CustomerId,
    IfMatch(expected): IfMatch,
    ApiJson(body): ApiJson<UpdateCustomerRequest>,
) -> Result<Response, ApiError> {
    let patch = CustomerPatch { vip_level: body.vip_level, fields: body.fields.0 };
    let updated = state.vault.update_customer(&caller, id, expected, patch).await?;
    let headers = data_headers(updated.version);
    Ok((headers, Json(CustomerMeta::from(updated))).into_response())
}

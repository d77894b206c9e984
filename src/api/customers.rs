//! `/v1/customers`: create, read and update customer records.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::extract::{ApiJson, ApiQuery, CustomerId, FieldMap, IfMatch, PatchFieldMap};
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

/// A customer as the caller's views show it.
#[derive(Serialize, ToSchema)]
pub struct Customer {
    #[serde(flatten)]
    pub meta: CustomerMeta,
    /// Field → value, plain or masked (`138****5678`); hidden fields are absent.
    pub fields: BTreeMap<String, String>,
    /// Field → `plain` or `masked`, for every field in `fields`.
    pub views: BTreeMap<String, &'static str>,
}

impl From<CustomerView> for Customer {
    fn from(v: CustomerView) -> Self {
        let mut fields = BTreeMap::new();
        let mut views = BTreeMap::new();
        for (name, shown) in v.fields {
            views.insert(name.clone(), shown.view.as_str());
            fields.insert(name, shown.value.expose().to_owned());
        }
        Customer { meta: v.summary.into(), fields, views }
    }
}

/// `?fields=name,mobile`: only these fields (minimum necessity).
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ReadParams {
    /// Comma-separated field names; default: every field the caller's views show.
    pub fields: Option<String>,
}

fn selection(fields: Option<&str>) -> Result<Option<Vec<String>>, ApiError> {
    match fields {
        None => Ok(None),
        Some(list) => {
            let names: Vec<String> = list.split(',').map(|f| f.trim().to_owned()).collect();
            if names.is_empty() || names.len() > 32 || names.iter().any(|n| n.is_empty()) {
                return Err(ApiError::bad_request("bad_query", "fields must be a comma-separated list of field names"));
            }
            Ok(Some(names))
        }
    }
}

/// A search by exact value of searchable fields.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    /// Searchable field → exact value (mobile, resident_id, email, credit_code). No patterns.
    #[serde(rename = "match")]
    #[schema(value_type = BTreeMap<String, String>, example = json!({"mobile": "13812345678"}))]
    pub matches: FieldMap,
    /// Only customers in this region node's subtree (`CN`, `32`, `3201`).
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    /// 1 to 100 (default 50).
    #[serde(default)]
    pub page_size: Option<u32>,
    /// `next_cursor` of the previous page.
    #[serde(default)]
    pub cursor: Option<String>,
}

/// A page of search results.
#[derive(Serialize, ToSchema)]
pub struct SearchResults {
    pub items: Vec<Customer>,
    pub next_cursor: Option<String>,
}

/// Customers by id.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchGetRequest {
    /// 1 to 100 customer ids.
    pub ids: Vec<String>,
    /// Only these fields.
    #[serde(default)]
    pub fields: Option<Vec<String>>,
}

/// Customers found, and ids not found (missing or out of scope: indistinguishable).
#[derive(Serialize, ToSchema)]
pub struct BatchGetResponse {
    pub items: Vec<Customer>,
    pub not_found: Vec<Uuid>,
}

/// A justified request for plaintext.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevealRequest {
    pub fields: Vec<String>,
    /// The ticket reference the reveal is for (3–64 characters of letters, digits, `-_.:/#`).
    #[schema(example = "FRAUD-2026-00042")]
    #[serde(default)]
    pub justification: Option<String>,
}

/// Revealed plaintext.
#[derive(Serialize, ToSchema)]
pub struct Revealed {
    pub id: Uuid,
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
    params(("X-Purpose" = String, Header, description = "The purpose of the request, from policies/purposes.toml"), ("Idempotency-Key" = Option<String>, Header, description = "Retry safely: a retry with the same key and request returns the first outcome and applies nothing (422 with another request); per principal, remembered for idempotency_window_seconds")),
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
    params(("id" = Uuid, Path, description = "Customer id"), ("X-Purpose" = String, Header, description = "The purpose of the request, from policies/purposes.toml"), ReadParams),
    responses(
        (status = 200, description = "The customer, masked per the caller's views", body = Customer, headers(("ETag" = String))),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "No grant permits this action for this purpose; the customer is restricted (customer_restricted); or a field the caller's views hide was asked for by name (field_not_visible)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such customer in the caller's scope", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Blocked by a security alert until an officer clears it", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "Integrity failure", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn read(
    State(state): State<AppState>,
    caller: Caller,
    CustomerId(id): CustomerId,
    ApiQuery(params): ApiQuery<ReadParams>,
) -> Result<Response, ApiError> {
    let only = selection(params.fields.as_deref())?;
    let view = state.vault.read_customer(&caller, id, only.as_deref()).await?;
    let headers = data_headers(view.summary.version);
    Ok((headers, Json(Customer::from(view))).into_response())
}

fn no_store() -> [(header::HeaderName, HeaderValue); 1] {
    [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))]
}

/// Find customers by exact mobile, resident ID, e-mail or credit code (blind index).
#[utoipa::path(
    post, path = "/v1/customers/search", tag = "customers",
    params(("X-Purpose" = String, Header, description = "The purpose of the request")),
    request_body = SearchRequest,
    responses(
        (status = 200, description = "A page of customers in the caller's scope, masked per view", body = SearchResults),
        (status = 400, description = "Malformed, or a prefix, wildcard, range, ordering or unsearchable field", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "No grant permits search for this purpose", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A match value or filter is invalid", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "The principal's search budget is spent (search_budget_exceeded: a security alert was raised), or it is blocked by an alert (bulk_access_blocked)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn search(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<SearchRequest>,
) -> Result<Response, ApiError> {
    let after = match body.cursor.as_deref() {
        None => None,
        Some(c) => Some(
            Uuid::try_parse(c)
                .map_err(|_| ApiError::bad_request("bad_cursor", "the cursor is not one this API issued"))?,
        ),
    };
    let request = crate::vault::SearchRequest {
        matches: body.matches.0,
        region: body.region,
        kind: body.kind,
        status: body.status,
        page_size: body.page_size,
        after,
    };
    let page = state.vault.search_customers(&caller, request).await?;
    let results = SearchResults {
        items: page.items.into_iter().map(Customer::from).collect(),
        next_cursor: page.next_cursor.map(|c| c.to_string()),
    };
    Ok((no_store(), Json(results)).into_response())
}

/// Fetch up to 100 customers by id (CRM service accounts).
#[utoipa::path(
    post, path = "/v1/customers/batch-get", tag = "customers",
    params(("X-Purpose" = String, Header, description = "The purpose of the request")),
    request_body = BatchGetRequest,
    responses(
        (status = 200, description = "Customers found in scope, masked per view; the rest in not_found", body = BatchGetResponse),
        (status = 400, description = "Malformed body or ids", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "No grant permits batch fetch for this purpose, or a field the caller's views hide was asked for by name (field_not_visible)", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Blocked by a security alert (bulk access)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "No ids, more than 100, or unknown fields", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn batch_get(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<BatchGetRequest>,
) -> Result<Response, ApiError> {
    let ids = body
        .ids
        .iter()
        .map(|i| Uuid::try_parse(i))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| ApiError::bad_request("bad_ids", "every id must be a customer id (UUID)"))?;
    let batch = state.vault.batch_get(&caller, ids, body.fields.as_deref()).await?;
    let response =
        BatchGetResponse { items: batch.items.into_iter().map(Customer::from).collect(), not_found: batch.not_found };
    Ok((no_store(), Json(response)).into_response())
}

/// Reveal fields in plaintext, with a justification (risk officers; rate-limited).
#[utoipa::path(
    post, path = "/v1/customers/{id}/reveal", tag = "customers",
    params(("id" = Uuid, Path, description = "Customer id"), ("X-Purpose" = String, Header, description = "The purpose of the request")),
    request_body = RevealRequest,
    responses(
        (status = 200, description = "Plaintext of the requested fields", body = Revealed),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not permitted to reveal (these fields, for this purpose), or the customer is restricted and the purpose is not legal_request (customer_restricted)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such customer in the caller's scope", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Missing or malformed justification, unknown fields", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Reveal limit reached", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn reveal(
    State(state): State<AppState>,
    caller: Caller,
    CustomerId(id): CustomerId,
    ApiJson(body): ApiJson<RevealRequest>,
) -> Result<Response, ApiError> {
    let revealed = state.vault.reveal(&caller, id, &body.fields, body.justification.as_deref().unwrap_or("")).await?;
    let fields = revealed.iter().map(|(k, v)| (k.clone(), v.expose().to_owned())).collect();
    Ok((no_store(), Json(Revealed { id, fields })).into_response())
}

/// Update a customer record (optimistic concurrency through `If-Match`).
#[utoipa::path(
    patch, path = "/v1/customers/{id}", tag = "customers",
    params(
        ("id" = Uuid, Path, description = "Customer id"),
        ("If-Match" = String, Header, description = "The version being changed, as in the ETag"),
        ("X-Purpose" = String, Header, description = "The purpose of the request, from policies/purposes.toml"),
        ("Idempotency-Key" = Option<String>, Header, description = "Retry safely: a retry with the same key and request returns the first outcome and applies nothing (422 with another request); per principal, remembered for idempotency_window_seconds"),
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

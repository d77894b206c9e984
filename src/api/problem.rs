//! RFC 9457 problem responses (`application/problem+json`).
//!
//! Every error the API returns is an [`ApiError`] with a stable `code`. A problem never echoes a
//! submitted value, and a missing record and an out-of-scope one produce the same problem.

use std::borrow::Cow;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::AuthError;
use crate::authz::Denied;
use crate::domain::ValidationErrors;
use crate::vault::VaultError;

/// One broken input rule.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct FieldProblem {
    /// Which input, e.g. `region` or `fields.mobile`.
    pub field: String,
    /// Stable rule code, e.g. `check_character`.
    pub rule: &'static str,
    pub message: &'static str,
}

/// The problem document.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Problem {
    /// `urn:custodia:problem:<code>`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: &'static str,
    pub status: u16,
    /// Stable machine-readable error code.
    pub code: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<Cow<'static, str>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldProblem>,
}

/// An error response.
#[derive(Clone, Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    title: &'static str,
    detail: Option<Cow<'static, str>>,
    errors: Vec<FieldProblem>,
    bearer_error: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, title: &'static str) -> Self {
        ApiError { status, code, title, detail: None, errors: Vec::new(), bearer_error: None }
    }

    pub fn detail(mut self, detail: impl Into<Cow<'static, str>>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn code(&self) -> &'static str {
        self.code
    }

    pub fn not_found() -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", "Not found")
    }

    pub fn malformed_body(detail: impl Into<Cow<'static, str>>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "malformed_body", "Malformed request body").detail(detail)
    }

    pub fn bad_request(code: &'static str, detail: &'static str) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, code, "Bad request").detail(detail)
    }

    /// The audit event could not be committed: nothing is served.
    pub fn audit_unavailable() -> Self {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "audit_unavailable", "Audit unavailable")
            .detail("the request could not be recorded in the audit, so nothing was served")
    }

    pub fn internal() -> Self {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", "Internal error")
    }

    pub fn unavailable(detail: &'static str) -> Self {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "Service unavailable").detail(detail)
    }

    pub fn to_problem(&self) -> Problem {
        Problem {
            kind: format!("urn:custodia:problem:{}", self.code),
            title: self.title,
            status: self.status.as_u16(),
            code: self.code,
            detail: self.detail.clone(),
            errors: self.errors.clone(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.to_problem()).unwrap_or_default();
        let mut response = (self.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(error) = self.bearer_error {
            let value = match error {
                "" => HeaderValue::from_static("Bearer realm=\"custodia\""),
                _ => HeaderValue::from_static("Bearer realm=\"custodia\", error=\"invalid_token\""),
            };
            headers.insert(header::WWW_AUTHENTICATE, value);
        }
        response
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        let (code, title, bearer) = match e {
            AuthError::Missing => ("missing_token", "Authentication required", ""),
            AuthError::Malformed => ("malformed_token", "Malformed bearer token", "invalid_token"),
            AuthError::Expired => ("token_expired", "Token expired", "invalid_token"),
            AuthError::Revoked => ("token_revoked", "Token revoked", "invalid_token"),
            AuthError::Rejected(_) => ("invalid_token", "Invalid bearer token", "invalid_token"),
        };
        let mut err = ApiError::new(StatusCode::UNAUTHORIZED, code, title);
        err.bearer_error = Some(bearer);
        err
    }
}

impl From<ValidationErrors> for ApiError {
    fn from(e: ValidationErrors) -> Self {
        let mut err = ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed", "Invalid input")
            .detail("one or more inputs break a rule; see errors");
        err.errors =
            e.0.into_iter()
                .map(|v| FieldProblem { field: v.field, rule: v.rule.code(), message: v.rule.message() })
                .collect();
        err
    }
}

impl From<VaultError> for ApiError {
    fn from(e: VaultError) -> Self {
        use crate::telemetry::prometheus::{BUDGET_REFUSALS, DENIALS};
        let budget = match e {
            VaultError::SearchBudget => Some("searches"),
            VaultError::RateLimited => Some("reveals"),
            _ => None,
        };
        let refused = budget.is_some()
            || matches!(e, VaultError::Denied(_) | VaultError::BulkAccessBlocked | VaultError::Restricted);
        let api = Self::from_vault(e);
        if refused {
            metrics::counter!(DENIALS, "reason" => api.code).increment(1);
        }
        if let Some(budget) = budget {
            metrics::counter!(BUDGET_REFUSALS, "budget" => budget).increment(1);
        }
        api
    }
}

impl ApiError {
    fn from_vault(e: VaultError) -> Self {
        match e {
            VaultError::Validation(v) => v.into(),
            VaultError::NotFound => ApiError::not_found(),
            VaultError::Denied(d) => denied(d),
            VaultError::UnsupportedQuery(why) => {
                ApiError::new(StatusCode::BAD_REQUEST, "unsupported_query", "Unsupported query").detail(why)
            }
            VaultError::BulkAccessBlocked => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "bulk_access_blocked", "Blocked")
                    .detail("bulk access detected: data requests are refused until a security officer clears the alert")
            }
            VaultError::AuditUnavailable => ApiError::audit_unavailable(),
            VaultError::IdempotencyKeyReused => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused", "Idempotency-Key reused")
                    .detail("this Idempotency-Key was used with another request; use a new key for a new request")
            }
            VaultError::Restricted => ApiError::new(StatusCode::FORBIDDEN, "customer_restricted", "Restricted")
                .detail("the customer's data is restricted (PIPL art. 47): readable only for legal_request"),
            VaultError::Keys(ref inner) => {
                tracing::warn!(error = %inner, "key operation refused");
                ApiError::new(StatusCode::CONFLICT, "key_operation_refused", "Key operation refused")
                    .detail("the key source refused the operation; see the vault's log")
            }
            VaultError::SearchBudget => ApiError::new(StatusCode::TOO_MANY_REQUESTS, "search_budget_exceeded", "Blocked")
                .detail("the search budget is spent: a security alert was raised and data requests are refused until a security officer clears it"),
            VaultError::RateLimited => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "Too many requests")
                    .detail("the reveal limit for this principal is reached; try again later")
            }
            VaultError::VersionConflict => {
                ApiError::new(StatusCode::PRECONDITION_FAILED, "version_conflict", "Version conflict")
                    .detail("the record has changed; read it again and retry with its current version in If-Match")
            }
            VaultError::Integrity => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "integrity_error", "Integrity check failed")
                    .detail("stored data failed its integrity check; nothing was served and the incident was logged")
            }
            VaultError::KeyUnavailable(ref inner) => {
                tracing::error!(error = %inner, "key unavailable");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "key_unavailable", "Key unavailable")
            }
            VaultError::Crypto(ref inner) => {
                tracing::error!(error = %inner, "cryptographic failure");
                ApiError::internal()
            }
            VaultError::Store(ref inner) => {
                tracing::error!(error = %inner, "storage failure");
                if inner.is_unavailable() {
                    ApiError::unavailable("the database is unavailable")
                } else {
                    ApiError::internal()
                }
            }
        }
    }
}

fn denied(d: Denied) -> ApiError {
    let forbidden = |code, detail| ApiError::new(StatusCode::FORBIDDEN, code, "Forbidden").detail(detail);
    match d {
        Denied::Blocked => ApiError::new(StatusCode::TOO_MANY_REQUESTS, "bulk_access_blocked", "Blocked")
            .detail("bulk access detected: data requests are refused until a security officer clears the alert"),
        Denied::Action => forbidden("forbidden", "no live grant of the caller permits this action"),
        Denied::PurposeRequired => forbidden("purpose_required", "state the purpose of a data request in X-Purpose"),
        Denied::PurposeNotAllowed => {
            forbidden("purpose_not_allowed", "the stated purpose is unknown or not allowed for the caller's roles")
        }
        // Out-of-scope records are answered as missing before reaching this point.
        Denied::OutOfScope => ApiError::not_found(),
        Denied::RegionOutOfScope => forbidden("region_out_of_scope", "the region lies outside the caller's scope"),
        Denied::DelegationRole => {
            forbidden("delegation_role_not_allowed", "the caller's grants in that region may not hand out this role")
        }
        Denied::DelegationExpiry => {
            forbidden("delegation_expiry_exceeded", "a delegated grant may not outlast the grant it is made under")
        }
        Denied::SelfGrant => forbidden("self_grant", "a principal may not grant roles to itself"),
        Denied::RevealNotAllowed => {
            forbidden("reveal_not_allowed", "the caller's roles may not reveal one of the requested fields")
        }
        Denied::Restricted => ApiError::new(StatusCode::FORBIDDEN, "customer_restricted", "Restricted")
            .detail("the customer's data is restricted (PIPL art. 47): readable only for legal_request"),
        Denied::FieldHidden => forbidden("field_not_visible", "a field asked for is hidden from the caller's views"),
        Denied::SeparationOfDuties => {
            ApiError::new(StatusCode::CONFLICT, "separation_of_duties", "Separation of duties")
                .detail("the principal holds live grants of a role with another duty")
        }
    }
}

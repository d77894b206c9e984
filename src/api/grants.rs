//! `/v1/grants` and `/v1/principals/{sub}/revoke-tokens`: delegated administration.

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::extract::{ApiJson, ApiQuery};
use super::problem::{ApiError, Problem};
use super::AppState;
use crate::domain::GrantDraft;
use crate::vault::{Caller, GrantView};

/// A grant to create.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateGrantRequest {
    /// The grantee (its tokens' `sub`).
    #[schema(example = "zhang.wei")]
    pub principal: String,
    /// A role of `policies/roles.toml`.
    #[schema(example = "agent")]
    pub role: String,
    /// `CN`, a province (`32`) or a city (`3201`); the grant covers the node's subtree.
    #[schema(example = "3201")]
    pub region: String,
    /// RFC 3339; required, and no later than the expiry of the caller's own grant.
    #[schema(example = "2026-12-31T00:00:00Z")]
    #[serde(default)]
    pub expires_at: Option<String>,
}

/// A grant.
#[derive(Serialize, ToSchema)]
pub struct Grant {
    pub id: Uuid,
    pub principal: String,
    pub role: String,
    pub region: String,
    pub granted_by: String,
    /// The grant this one was delegated under (absent for the bootstrap grant).
    pub parent_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// `active`, `expired`, `revoked`, or `suspended` (a grant up its delegation chain is not live).
    pub status: &'static str,
}

impl From<GrantView> for Grant {
    fn from(v: GrantView) -> Self {
        let r = v.record;
        Grant {
            id: r.id,
            principal: r.principal,
            role: r.role,
            region: r.region,
            granted_by: r.granted_by,
            parent_id: r.parent_id,
            created_at: r.created_at,
            expires_at: r.expires_at,
            revoked_at: r.revoked_at,
            status: v.status.as_str(),
        }
    }
}

/// A page of grants.
#[derive(Serialize, ToSchema)]
pub struct GrantList {
    pub items: Vec<Grant>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Filters and paging of `GET /v1/grants`.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct GrantListParams {
    /// Only this principal's grants.
    pub principal: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// 1 to 100 (default 50).
    pub page_size: Option<u32>,
}

/// The outcome of a token revocation.
#[derive(Serialize, ToSchema)]
pub struct TokensRevoked {
    pub principal: String,
    /// Tokens issued at or before this instant are refused.
    pub not_after: DateTime<Utc>,
}

const FORBIDDEN: &str = "Not permitted: no grant, or delegation outside scope, role or expiry";

/// Grant a role at a region node (delegation).
#[utoipa::path(
    post, path = "/v1/grants", tag = "grants",
    params(("Idempotency-Key" = Option<String>, Header, description = "Retry safely: a retry with the same key and request returns the first outcome and applies nothing (422 with another request); per principal, remembered for idempotency_window_seconds")),
    request_body = CreateGrantRequest,
    responses(
        (status = 201, description = "Created", body = Grant, headers(("Location" = String))),
        (status = 400, description = "Malformed body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = FORBIDDEN, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Separation of duties: the grantee holds grants of another duty (enforced by the database too)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid input", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateGrantRequest>,
) -> Result<Response, ApiError> {
    let draft =
        GrantDraft { principal: body.principal, role: body.role, region: body.region, expires_at: body.expires_at };
    let view = state.vault.create_grant(&caller, draft).await?;
    let location =
        HeaderValue::from_str(&format!("/v1/grants/{}", view.record.id)).map_err(|_| ApiError::internal())?;
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(Grant::from(view))).into_response())
}

/// The grants inside the caller's administrative scope.
#[utoipa::path(
    get, path = "/v1/grants", tag = "grants",
    params(GrantListParams),
    responses(
        (status = 200, description = "A page of grants", body = GrantList),
        (status = 400, description = "Bad query or cursor", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not a grant manager or auditor", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(params): ApiQuery<GrantListParams>,
) -> Result<Json<GrantList>, ApiError> {
    let after = match params.cursor.as_deref() {
        None => None,
        Some(c) => Some(
            Uuid::try_parse(c)
                .map_err(|_| ApiError::bad_request("bad_cursor", "the cursor is not one this API issued"))?,
        ),
    };
    let page = state.vault.list_grants(&caller, params.principal, after, params.page_size).await?;
    Ok(Json(GrantList {
        items: page.items.into_iter().map(Grant::from).collect(),
        next_cursor: page.next_cursor.map(|c| c.to_string()),
    }))
}

/// Revoke a grant; every grant delegated under it stops too.
#[utoipa::path(
    delete, path = "/v1/grants/{id}", tag = "grants",
    params(("id" = Uuid, Path, description = "Grant id")),
    responses(
        (status = 200, description = "Revoked", body = Grant),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not a grant manager, or a grant the caller could not have made: a role its grant may not hand out (delegation_role_not_allowed) or lasting beyond it (delegation_expiry_exceeded); nothing is revoked", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such grant in the caller's scope", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Grant>, ApiError> {
    let id = Uuid::try_parse(&id).map_err(|_| ApiError::not_found())?;
    Ok(Json(state.vault.revoke_grant(&caller, id).await?.into()))
}

/// Make every token of a principal issued until now fail.
#[utoipa::path(
    post, path = "/v1/principals/{sub}/revoke-tokens", tag = "grants",
    params(("sub" = String, Path, description = "The principal")),
    responses(
        (status = 200, description = "Revoked", body = TokensRevoked),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not permitted, or the principal holds grants outside the caller's scope or of a role the caller may not hand out", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not a valid principal name", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn revoke_tokens(
    State(state): State<AppState>,
    caller: Caller,
    Path(sub): Path<String>,
) -> Result<Json<TokensRevoked>, ApiError> {
    let not_after = state.vault.revoke_tokens(&caller, &sub).await?;
    Ok(Json(TokensRevoked { principal: sub, not_after }))
}

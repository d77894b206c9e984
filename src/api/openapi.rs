//! The OpenAPI document, generated from the handlers and types (utoipa) and served at
//! `/openapi.json`. `docs/openapi.json` is a committed copy that a test keeps in sync.

use axum::response::IntoResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{audit, customers, grants, health, lifecycle, problem};

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build()),
        );
    }
}

/// The answers every `/v1` operation can give besides its own, added where an operation does
/// not document them itself: the extractors, the gate, the guard and the audit layer answer
/// them before or around any handler.
struct CommonResponses;

impl Modify for CommonResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let problem = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/problem+json",
                    ContentBuilder::new().schema(Some(Ref::from_schema_name("Problem"))).build(),
                )
                .build()
        };
        for (path, item) in openapi.paths.paths.iter_mut() {
            if !path.starts_with("/v1/") {
                continue;
            }
            let has_id = path.contains('{');
            for op in
                [&mut item.get, &mut item.post, &mut item.put, &mut item.patch, &mut item.delete].into_iter().flatten()
            {
                let body = op.request_body.is_some();
                let responses = &mut op.responses.responses;
                let mut add = |status: &str, description: &str| {
                    responses.entry(status.to_owned()).or_insert_with(|| problem(description).into());
                };
                add("400", "Malformed request: a query parameter, header or body that cannot be read");
                add("401", "Not authenticated: no bearer token, or one that is invalid, expired or revoked");
                add("403", "Refused by the gate: no live grant permits this action for this purpose");
                if has_id {
                    add(
                        "404",
                        "No such record in the caller's scope (a missing and an out-of-scope record look alike)",
                    );
                }
                add("429", "Blocked: a budget is spent or the bulk-access guard holds the principal");
                add("503", "The database or the audit is unavailable, or the request timed out: nothing was disclosed");
                add(
                    "422",
                    "Invalid input: a value that breaks a rule (the problem lists the fields, never the values)",
                );
                if body {
                    add("413", "Body too large");
                    add("415", "Not JSON");
                }
            }
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Custodia",
        description = "Customer data vault: encrypted records, tiered authorization, field-level masking, full access audit. Every /v1 request needs a bearer JWT.",
        license(name = "Apache-2.0")
    ),
    paths(
        health::healthz,
        health::readyz,
        customers::create,
        customers::read,
        customers::update,
        customers::search,
        customers::batch_get,
        customers::reveal,
        grants::create,
        grants::list,
        grants::revoke,
        grants::revoke_tokens,
        audit::events,
        audit::verify,
        audit::alerts,
        audit::clear_alert,
        audit::access_log,
        lifecycle::erase,
        lifecycle::export,
        lifecycle::restrict,
        lifecycle::unrestrict,
        lifecycle::key_status,
        lifecycle::rotate_keys
    ),
    components(schemas(problem::Problem, problem::FieldProblem)),
    modifiers(&BearerAuth, &CommonResponses),
    tags(
        (name = "customers", description = "Customer records"),
        (name = "grants", description = "Delegated administration"),
        (name = "audit", description = "The access audit"),
        (name = "keys", description = "Key lifecycle"),
        (name = "health", description = "Probes"),
    )
)]
pub struct ApiDoc;

/// The document as pretty JSON (what `custodia openapi` prints and `docs/openapi.json` holds).
pub fn document() -> String {
    ApiDoc::openapi().to_pretty_json().unwrap_or_default()
}

pub async fn serve() -> impl IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], document())
}

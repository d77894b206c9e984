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
    modifiers(&BearerAuth),
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

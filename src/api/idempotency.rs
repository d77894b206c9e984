//! The `Idempotency-Key` header: its syntax, and the fingerprint of the request it came with
//! (method, path and query, `If-Match`, body), computed before the handlers consume the body.
//! What a key does is the vault's ([`crate::vault::idempotency`]).
//!
//! Owns: reading the header and hashing the request. Must never: decide anything about the
//! write, or keep the body.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::problem::ApiError;
use crate::vault::idempotency::IdempotencyRequest;

/// The header's name.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// What the header said: a usable key with the request's fingerprint, or a malformed key (the
/// `Caller` extractor refuses it, inside the route, so that its audit event names the action).
#[derive(Clone, Debug)]
pub enum IdempotencyHeader {
    Valid(IdempotencyRequest),
    Malformed,
}

/// The 400 for a malformed key (the key is not echoed).
pub fn malformed() -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_idempotency_key", "Invalid Idempotency-Key")
        .detail("an Idempotency-Key is 1 to 255 visible ASCII characters")
}

/// Fingerprints writes that carry an `Idempotency-Key`; other requests pass untouched.
pub async fn fingerprint(body_limit: usize, req: Request, next: Next) -> Response {
    let writes = matches!(req.method(), &Method::POST | &Method::PATCH | &Method::DELETE | &Method::PUT);
    let Some(value) = req.headers().get(IDEMPOTENCY_KEY).filter(|_| writes) else { return next.run(req).await };
    let key = value.to_str().ok().filter(|k| IdempotencyRequest::valid_key(k)).map(str::to_owned);
    let (mut parts, body) = req.into_parts();
    let Some(key) = key else {
        parts.extensions.insert(IdempotencyHeader::Malformed);
        return next.run(Request::from_parts(parts, body)).await;
    };
    let Ok(bytes) = axum::body::to_bytes(body, body_limit).await else {
        return ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "Payload too large")
            .detail("the request body exceeds the vault's limit")
            .into_response();
    };
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    let if_match = parts.headers.get(header::IF_MATCH).map(|v| v.as_bytes()).unwrap_or_default();
    let target = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or_default();
    for piece in [parts.method.as_str().as_bytes(), target.as_bytes(), if_match, &bytes[..]] {
        // Length-prefixed: no two different requests hash the same pieces.
        digest.update(&(piece.len() as u64).to_be_bytes());
        digest.update(piece);
    }
    let mut fingerprint = [0u8; 32];
    fingerprint.copy_from_slice(digest.finish().as_ref());
    parts.extensions.insert(IdempotencyHeader::Valid(IdempotencyRequest { key, fingerprint }));
    next.run(Request::from_parts(parts, Body::from(bytes))).await
}

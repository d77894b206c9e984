//! Request extractors whose failures are problem documents that echo nothing submitted:
//! JSON bodies ([`ApiJson`]), the bearer principal, customer ids, `If-Match`, and field maps
//! that refuse duplicate keys.

use std::fmt;

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header;
use axum::http::request::Parts;
use serde::de::{DeserializeOwned, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use uuid::Uuid;

use super::problem::ApiError;
use super::AppState;
use crate::audit::AuditHandle;
use crate::auth::{AuthError, Principal};
use crate::domain::FieldValue;
use crate::vault::Caller;

/// A JSON body. Wrong content type → 415; too large → 413; anything that does not parse →
/// 400 with the position and class of the error only (serde's messages quote values).
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"));
        if !is_json {
            return Err(ApiError::new(
                axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "Unsupported media type",
            )
            .detail("send the body as application/json"));
        }
        let bytes = axum::body::Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(e.status(), "body_too_large", "Request body too large")
            } else {
                ApiError::malformed_body("the request body could not be read")
            }
        })?;
        serde_json::from_slice(&bytes).map(ApiJson).map_err(|e| {
            use serde_json::error::Category;
            let class = match e.classify() {
                Category::Syntax => "invalid JSON syntax",
                Category::Eof => "unexpected end of JSON",
                Category::Data => {
                    "JSON does not match the expected shape (unknown, duplicate, missing or mistyped member)"
                }
                Category::Io => "unreadable body",
            };
            ApiError::malformed_body(format!("{class} at line {} column {}", e.line(), e.column()))
        })
    }
}

/// A query string. Anything that does not parse is a 400 that names no value.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::try_from_uri(&parts.uri).map(|q| ApiQuery(q.0)).map_err(|_| {
            ApiError::bad_request("bad_query", "the query string has unknown, repeated or mistyped parameters")
        })
    }
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        // A console session (set only by the console's router: `/v1` never reads cookies).
        if let Some(super::console::SessionPrincipal(session)) =
            parts.extensions.get::<super::console::SessionPrincipal>()
        {
            let principal = session.principal.clone();
            tracing::Span::current().record("principal", principal.sub.as_str());
            if state.vault.authorizer().token_revoked(&principal) {
                tracing::info!("console session refused: the principal's tokens were revoked");
                return Err(AuthError::Revoked.into());
            }
            return Ok(principal);
        }
        let value = parts.headers.get(header::AUTHORIZATION).ok_or(AuthError::Missing)?;
        let value = value.to_str().map_err(|_| AuthError::Malformed)?;
        let (scheme, token) = value.split_once(' ').ok_or(AuthError::Malformed)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::Missing.into());
        }
        let principal = state.authenticator.verify(token.trim()).map_err(|e| {
            tracing::info!(reason = %e, "authentication failed");
            ApiError::from(e)
        })?;
        tracing::Span::current().record("principal", principal.sub.as_str());
        if state.vault.authorizer().token_revoked(&principal) {
            tracing::info!("authentication failed: token revoked");
            return Err(AuthError::Revoked.into());
        }
        Ok(principal)
    }
}

/// The purpose header of data requests.
pub const PURPOSE: &str = "x-purpose";

/// The authenticated principal with the purpose it states in `X-Purpose`. A purpose that is
/// not a plain identifier is kept as an empty string, which no policy allows.
impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let audit =
            parts.extensions.get::<AuditHandle>().cloned().unwrap_or_else(|| AuditHandle::detached("unaudited"));
        // The action its route declared: what the gate decides. A route without one is a
        // programming error, refused rather than guessed.
        let Some(super::DeclaredAction(action)) = parts.extensions.get::<super::DeclaredAction>().copied() else {
            tracing::error!("request reached a use case without a declared action: refused");
            return Err(ApiError::internal());
        };
        let principal = Principal::from_request_parts(parts, state).await?;
        audit.set_principal(&principal.sub);
        audit.set_actor_region(state.vault.gate().home_region(&principal.sub));
        let purpose = parts.headers.get(PURPOSE).map(|v| {
            let s = v.to_str().unwrap_or("");
            let plain = !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
            if plain {
                tracing::Span::current().record("purpose", s);
                audit.set_purpose(s);
                s.to_owned()
            } else {
                audit.set_purpose("<invalid>");
                String::new()
            }
        });
        let idempotency = match parts.extensions.get::<super::idempotency::IdempotencyHeader>() {
            None => None,
            Some(super::idempotency::IdempotencyHeader::Valid(request)) => Some(request.clone()),
            Some(super::idempotency::IdempotencyHeader::Malformed) => return Err(super::idempotency::malformed()),
        };
        Ok(Caller { principal, purpose, action, audit, idempotency })
    }
}

/// A customer id from the path. Anything that is not a UUID is simply not found.
pub struct CustomerId(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for CustomerId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Path(raw) =
            axum::extract::Path::<String>::from_request_parts(parts, state).await.map_err(|_| ApiError::not_found())?;
        Uuid::try_parse(&raw).map(CustomerId).map_err(|_| ApiError::not_found())
    }
}

/// The record version named by `If-Match` (`"3"`, `W/"3"` or `3`). Missing → 428.
pub struct IfMatch(pub i64);

impl<S: Send + Sync> FromRequestParts<S> for IfMatch {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let Some(value) = parts.headers.get(header::IF_MATCH) else {
            return Err(ApiError::new(
                axum::http::StatusCode::PRECONDITION_REQUIRED,
                "precondition_required",
                "If-Match required",
            )
            .detail("send the record's current version (its ETag) in If-Match"));
        };
        let bad = || ApiError::bad_request("bad_if_match", "If-Match must be the record version, e.g. \"3\"");
        let text = value.to_str().map_err(|_| bad())?.trim();
        let text = text.strip_prefix("W/").unwrap_or(text);
        let text = text.strip_prefix('"').and_then(|t| t.strip_suffix('"')).unwrap_or(text);
        text.parse::<i64>().ok().filter(|v| *v >= 1).map(IfMatch).ok_or_else(bad)
    }
}

/// A JSON object of field name → string value; duplicate names are refused.
#[derive(Default)]
pub struct FieldMap(pub Vec<(String, FieldValue)>);

/// A JSON object of field name → string value or `null` (remove); duplicates refused.
#[derive(Default)]
pub struct PatchFieldMap(pub Vec<(String, Option<FieldValue>)>);

struct MapVisitor<V>(std::marker::PhantomData<V>);

impl<'de, V: Deserialize<'de>> Visitor<'de> for MapVisitor<V> {
    type Value = Vec<(String, V)>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object of field names to values")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out: Vec<(String, V)> = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.iter().any(|(k, _)| *k == key) {
                return Err(serde::de::Error::custom("duplicate field name"));
            }
            if out.len() >= 64 {
                return Err(serde::de::Error::custom("too many fields"));
            }
            let value = map.next_value::<V>()?;
            out.push((key, value));
        }
        Ok(out)
    }
}

impl<'de> Deserialize<'de> for FieldMap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let pairs = d.deserialize_map(MapVisitor::<String>(std::marker::PhantomData))?;
        Ok(FieldMap(pairs.into_iter().map(|(k, v)| (k, FieldValue::new(v))).collect()))
    }
}

impl<'de> Deserialize<'de> for PatchFieldMap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let pairs = d.deserialize_map(MapVisitor::<Option<String>>(std::marker::PhantomData))?;
        Ok(PatchFieldMap(pairs.into_iter().map(|(k, v)| (k, v.map(FieldValue::new))).collect()))
    }
}

//! Cross-cutting HTTP concerns: the request id and request span, the access log line, the
//! request timeout and panics. None of these log headers, bodies, query strings or tokens.

use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::Instrument;

use super::problem::ApiError;

/// The request id header.
pub const REQUEST_ID: &str = "x-request-id";

/// The id of the current request, in request extensions.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

/// A client-supplied request id is kept only when it is short and plain.
fn acceptable_request_id(v: &HeaderValue) -> Option<String> {
    let s = v.to_str().ok()?;
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    ok.then(|| s.to_owned())
}

/// This process's prefix of generated request ids: random once at start, so that ids of
/// instances (and restarts) sharing an audit do not collide.
fn instance_prefix() -> &'static str {
    static PREFIX: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PREFIX.get_or_init(|| uuid::Uuid::new_v4().simple().to_string()[..12].to_owned())
}

/// A request id for a request that brought none: the instance prefix and a counter (unique
/// within the instance; no random draw, and so no system call, per request).
fn generated_request_id() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}-{n:010}", instance_prefix())
}

/// Assigns the request id, opens the request span and logs one line per request.
pub async fn request_context(mut req: Request, next: Next) -> Response {
    let id = req.headers().get(REQUEST_ID).and_then(acceptable_request_id).unwrap_or_else(generated_request_id);
    let route =
        req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "<unmatched>".into());
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %req.method(),
        route = %route,
        principal = tracing::field::Empty,
        purpose = tracing::field::Empty,
    );
    req.extensions_mut().insert(RequestId(id.clone()));
    let method = req.method().clone();
    let started = Instant::now();
    let mut response = next.run(req).instrument(span.clone()).await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    let micros = elapsed.as_micros() as u64;
    if crate::telemetry::prometheus::enabled() {
        record_request(route, method, status, elapsed);
    }
    span.in_scope(|| tracing::info!(status, latency_us = micros, "request completed"));
    response
}

/// Counts the request and its latency by route template (never the path, which holds ids).
fn record_request(route: String, method: axum::http::Method, status: u16, elapsed: Duration) {
    use crate::telemetry::prometheus::{HTTP_DURATION, HTTP_REQUESTS};
    let method = method.as_str().to_owned();
    metrics::counter!(HTTP_REQUESTS, "route" => route.clone(), "method" => method.clone(), "status" => status.to_string())
        .increment(1);
    metrics::histogram!(HTTP_DURATION, "route" => route, "method" => method).record(elapsed.as_secs_f64());
}

/// The answer to a request that took longer than the configured limit: 503 `timeout`.
pub fn timed_out(limit: Duration) -> Response {
    tracing::warn!(limit_ms = limit.as_millis() as u64, "request timed out");
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "timeout", "Request timed out").into_response()
}

/// Turns a panic in a handler into a 500 problem without its message (which could hold data).
pub fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("handler panicked");
    ApiError::internal().into_response()
}

#[cfg(test)]
mod tests {
    #[test]
    fn generated_request_ids_are_distinct_and_plain() {
        let (a, b) = (super::generated_request_id(), super::generated_request_id());
        assert_ne!(a, b);
        assert!(a.starts_with(super::instance_prefix()) && a.len() <= 64);
        let v = axum::http::HeaderValue::from_str(&a).unwrap();
        assert_eq!(
            super::acceptable_request_id(&v).as_deref(),
            Some(a.as_str()),
            "a generated id is one a client may send back"
        );
    }
}

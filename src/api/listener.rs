//! The vault's listener: accepting TCP connections and serving HTTP/1.1 on them, within
//! limits that hostile clients cannot stretch — at most `max_connections` connections at once
//! (past it, new ones wait in the kernel's backlog instead of costing memory), and a
//! header-read timeout (a client trickling its headers byte by byte is disconnected). On
//! shutdown it stops accepting at once and lets the requests in flight finish.
//!
//! Owns: sockets and connections. Must never: decide anything about a request (the router
//! and its layers do), or read a body.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, Semaphore};
use tower::ServiceExt;

/// What one listener allows.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// Open client connections at once.
    pub max_connections: usize,
    /// Time a client has to send a request's headers, counted from when the connection is
    /// ready for one (so an idle connection is closed after it too).
    pub header_read_timeout: Duration,
}

/// Serves `router` on `listener` until `shutdown` fires (or its sender is dropped), then waits
/// for the connections' requests in flight.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    mut shutdown: oneshot::Receiver<()>,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break, // never closed; stop rather than spin
            },
            _ = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        tracing::trace!(
            open = limits.max_connections.saturating_sub(permits.available_permits()),
            "connection accepted"
        );
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo::<std::net::SocketAddr>(peer));
            let router = router.clone();
            async move {
                Ok::<_, Infallible>(router.oneshot(req.map(axum::body::Body::new)).await.unwrap_or_else(|e| match e {}))
            }
        });
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            match connection.await {
                Ok(()) => tracing::trace!("connection closed"),
                Err(e) => tracing::debug!(error = %e, "connection ended with an error"),
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

//! The HTTP endpoints: `/metrics`, `/healthz`, `/readyz` and `/status`.
//!
//! - `/healthz` answers 200 while the runtime is responsive (answering at all
//!   proves it): the liveness probe.
//! - `/readyz` answers 200 once the lease table and the streams were reached
//!   and the coordinator runs, and 503 before that and during shutdown: the
//!   readiness probe, so a rolling deploy waits for a replica that works.
//! - `/status` is this worker's leases and shard positions as JSON.
//! - `/metrics` is the Prometheus exposition of [`super::metrics`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What the health endpoints report, shared between the coordinator (which
/// updates it) and the server (which reads it).
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
    status: Mutex<serde_json::Value>,
}

impl Health {
    /// Not ready, with an empty status.
    pub fn new() -> Arc<Health> {
        Arc::new(Health::default())
    }

    /// Marks the worker ready (or not) to count as a healthy replica.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// Whether `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// Replaces what `/status` shows.
    pub fn set_status(&self, status: serde_json::Value) {
        *self.status.lock().unwrap_or_else(|p| p.into_inner()) = status;
    }

    /// What `/status` shows.
    pub fn status(&self) -> serde_json::Value {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Binds the endpoints' address; a failure here is a configuration problem
/// the caller reports at start-up.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

fn respond(
    status: StatusCode,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

fn route(
    request: &Request<Incoming>,
    metrics: &PrometheusHandle,
    health: &Health,
) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return respond(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n");
    }
    match request.uri().path() {
        "/metrics" => respond(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            metrics.render(),
        ),
        "/healthz" => respond(StatusCode::OK, "text/plain", "ok\n"),
        "/readyz" if health.is_ready() => respond(StatusCode::OK, "text/plain", "ready\n"),
        "/readyz" => respond(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready\n"),
        "/status" => respond(
            StatusCode::OK,
            "application/json",
            serde_json::to_vec_pretty(&health.status()).unwrap_or_default(),
        ),
        _ => respond(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics, /healthz, /readyz or /status\n",
        ),
    }
}

/// Serves the endpoints on `listener` until `stop` fires, then waits for the
/// connections in progress.
pub async fn serve(
    listener: TcpListener,
    metrics: PrometheusHandle,
    health: Arc<Health>,
    stop: CancellationToken,
) {
    let connections = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (socket, _) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                tracing::debug!(error = %err, "could not accept a connection on the metrics port");
                continue;
            }
        };
        let metrics = metrics.clone();
        let health = Arc::clone(&health);
        let stop = stop.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let response = route(&request, &metrics, &health);
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(socket), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
    connections.close();
    connections.wait().await;
}

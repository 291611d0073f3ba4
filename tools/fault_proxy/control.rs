//! The control endpoint: JSON over HTTP/1.1.
//!
//! - `POST /rules` with a [`RuleSpec`] adds a rule: `201 {"id": N}`, or
//!   `400 {"error": "..."}` naming what is wrong;
//! - `GET /rules` lists the rules with their `id` and how often each `fired`;
//! - `DELETE /rules/<id>` removes one (`204`, or `404`); `DELETE /rules`
//!   removes them all (`204`); a request held by a removed rule is released;
//! - `GET /stats` gives, per API, `forwarded`, `upstream_errors` and
//!   `injected` by fault kind; `DELETE /stats` sets them back to nothing.

use std::convert::Infallible;
use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::CONTENT_TYPE;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::rules::{RuleSpec, State};

/// Serves the control endpoint on `listener` until the process ends.
pub async fn serve(listener: TcpListener, state: Arc<State>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let state = Arc::clone(&state);
                async move { Ok::<_, Infallible>(handle(&state, request).await) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn handle(state: &State, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = request.method().clone();
    let path = request.uri().path().trim_end_matches('/').to_owned();
    match (method, path.as_str()) {
        (Method::POST, "/rules") => {
            let body = match request.into_body().collect().await {
                Ok(body) => body.to_bytes(),
                Err(e) => return error(StatusCode::BAD_REQUEST, format!("reading the body: {e}")),
            };
            let spec: RuleSpec = match serde_json::from_slice(&body) {
                Ok(spec) => spec,
                Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad rule: {e}")),
            };
            if let Err(message) = spec.validate() {
                return error(StatusCode::BAD_REQUEST, message);
            }
            let id = state.add(spec);
            answer(StatusCode::CREATED, json!({ "id": id }))
        }
        (Method::GET, "/rules") => answer(StatusCode::OK, state.rules_json()),
        (Method::DELETE, "/rules") => {
            state.clear();
            empty(StatusCode::NO_CONTENT)
        }
        (Method::GET, "/stats") => answer(StatusCode::OK, state.stats_json()),
        (Method::DELETE, "/stats") => {
            state.reset_stats();
            empty(StatusCode::NO_CONTENT)
        }
        (Method::DELETE, other) if other.starts_with("/rules/") => {
            match other["/rules/".len()..].parse::<u64>() {
                Ok(id) if state.remove(id) => empty(StatusCode::NO_CONTENT),
                Ok(id) => error(StatusCode::NOT_FOUND, format!("no rule {id}")),
                Err(_) => error(StatusCode::BAD_REQUEST, "a rule id is a number".into()),
            }
        }
        (method, other) => error(StatusCode::NOT_FOUND, format!("no route {method} {other}")),
    }
}

fn answer(status: StatusCode, value: Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

fn error(status: StatusCode, message: String) -> Response<Full<Bytes>> {
    answer(status, json!({ "error": message }))
}

fn empty(status: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}

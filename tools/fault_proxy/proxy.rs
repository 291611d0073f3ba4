//! The data plane: accepts HTTP/1.1 requests, lets the rules pick a fault,
//! and forwards the rest unchanged (method, path, headers, body) to the
//! upstream, streaming its answer back.
//!
//! `Host` is rewritten to the upstream's authority. The AWS SDK signs it
//! (SigV4), so the signature no longer matches; DynamoDB Local and the
//! scripted streams endpoint do not check signatures, real AWS would.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderName, HeaderValue, CONNECTION, CONTENT_TYPE, HOST};
use hyper::http::uri::{Authority, PathAndQuery, Scheme};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::rules::{default_throttle_code, FaultKind, Fired, State, NO_TARGET};

type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// The namespace of DynamoDB's and DynamoDB Streams' error types on the wire.
const ERROR_NAMESPACE: &str = "com.amazonaws.dynamodb.v20120810#";
/// Headers that belong to one hop and are not forwarded.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
];

/// Where requests go.
#[derive(Debug, Clone)]
pub struct Upstream {
    scheme: Scheme,
    authority: Authority,
}

impl Upstream {
    /// Parses `http://host:port`; only plain HTTP, no path.
    pub fn parse(text: &str) -> Result<Upstream, String> {
        let uri: Uri = text.parse().map_err(|e| format!("{text}: {e}"))?;
        if uri.scheme() != Some(&Scheme::HTTP) {
            return Err(format!("{text}: only http:// upstreams are supported"));
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("{text}: no host"))?;
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(format!("{text}: an upstream has no path"));
        }
        Ok(Upstream {
            scheme: Scheme::HTTP,
            authority,
        })
    }
}

/// The proxy's shared parts.
pub struct Proxy {
    state: Arc<State>,
    upstream: Upstream,
    client: Client<HttpConnector, Incoming>,
    request_ids: AtomicU64,
}

impl Proxy {
    /// A proxy to `upstream` applying `state`'s rules.
    pub fn new(state: Arc<State>, upstream: Upstream) -> Proxy {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        Proxy {
            state,
            upstream,
            client: Client::builder(TokioExecutor::new()).build(connector),
            request_ids: AtomicU64::new(0),
        }
    }
}

/// Serves the proxy on `listener` until the process ends.
pub async fn serve(listener: TcpListener, proxy: Arc<Proxy>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(connection(Arc::clone(&proxy), stream));
    }
}

/// How a request handler ends its connection without answering.
#[derive(Default)]
struct Hangup {
    token: CancellationToken,
    reset: AtomicBool,
}

impl Hangup {
    /// Closes the connection (with a TCP reset if `reset`) and never returns.
    async fn now(&self, reset: bool) -> ! {
        self.reset.store(reset, Ordering::SeqCst);
        self.token.cancel();
        std::future::pending().await
    }
}

async fn connection(proxy: Arc<Proxy>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    // A second handle on the socket, to set a zero linger (a reset on close)
    // after hyper owns the first.
    let Ok(std_stream) = stream.into_std() else {
        return;
    };
    let twin = std_stream.try_clone();
    let Ok(stream) = TcpStream::from_std(std_stream) else {
        return;
    };
    let hangup = Arc::new(Hangup::default());
    let service = {
        let hangup = Arc::clone(&hangup);
        service_fn(move |request| {
            let proxy = Arc::clone(&proxy);
            let hangup = Arc::clone(&hangup);
            async move { Ok::<_, Infallible>(handle(&proxy, &hangup, request).await) }
        })
    };
    let served = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        _ = served => {}
        _ = hangup.token.cancelled() => {
            if hangup.reset.load(Ordering::SeqCst) {
                if let Ok(twin) = twin.and_then(TcpStream::from_std) {
                    let _ = twin.set_zero_linger();
                }
            }
        }
    }
}

async fn handle(proxy: &Proxy, hangup: &Hangup, request: Request<Incoming>) -> Response<ProxyBody> {
    let api = request
        .headers()
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or(NO_TARGET)
        .to_owned();
    let state = &proxy.state;
    let fired = state.pick(&api);
    let mut rewrite = None;
    if let Some(Fired { id, kind, code, ms }) = fired {
        match kind {
            FaultKind::Throttle | FaultKind::Error500 => {
                state.count_injected(&api, kind);
                // Read the request first, so the connection stays usable.
                let _ = request.into_body().collect().await;
                let (status, code) = if kind == FaultKind::Throttle {
                    let code = code.unwrap_or_else(|| default_throttle_code(&api).to_owned());
                    (StatusCode::BAD_REQUEST, code)
                } else {
                    let code = code.unwrap_or_else(|| "InternalServerError".to_owned());
                    (StatusCode::INTERNAL_SERVER_ERROR, code)
                };
                return aws_error(proxy, status, &code);
            }
            FaultKind::Latency => {
                state.count_injected(&api, kind);
                tokio::time::sleep(Duration::from_millis(ms.unwrap_or(0))).await;
            }
            FaultKind::Stall => {
                state.count_injected(&api, kind);
                match ms {
                    Some(ms) => {
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_millis(ms)) => {}
                            _ = state.removed(id) => {}
                        }
                    }
                    None => state.removed(id).await,
                }
                hangup.now(false).await
            }
            FaultKind::Reset => {
                state.count_injected(&api, kind);
                hangup.now(true).await
            }
            FaultKind::Blackhole => {
                state.count_injected(&api, kind);
                state.removed(id).await;
                hangup.now(false).await
            }
            FaultKind::Rewrite => rewrite = code,
        }
    }
    let answer = match forward(proxy, request).await {
        Ok(answer) => answer,
        Err(e) => {
            // The upstream is down or cut the call: so does the proxy.
            state.count_upstream_error(&api);
            eprintln!("dynastream-fault-proxy: {api}: upstream failed: {e}");
            hangup.now(false).await
        }
    };
    state.count_forwarded(&api);
    match rewrite {
        Some(code) if answer.status().is_success() => {
            state.count_injected(&api, FaultKind::Rewrite);
            // Drain the real answer so the upstream connection can be reused.
            let _ = answer.into_body().collect().await;
            aws_error(proxy, StatusCode::BAD_REQUEST, &code)
        }
        _ => answer.map(BodyExt::boxed),
    }
}

async fn forward(
    proxy: &Proxy,
    request: Request<Incoming>,
) -> Result<Response<Incoming>, hyper_util::client::legacy::Error> {
    let (mut parts, body) = request.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    parts.uri = Uri::builder()
        .scheme(proxy.upstream.scheme.clone())
        .authority(proxy.upstream.authority.clone())
        .path_and_query(path)
        .build()
        .expect("scheme, authority and path make a URI");
    strip_hop_by_hop(&mut parts.headers);
    let host = HeaderValue::from_str(proxy.upstream.authority.as_str())
        .expect("an authority is a valid header value");
    parts.headers.insert(HOST, host);
    let mut answer = proxy
        .client
        .request(Request::from_parts(parts, body))
        .await?;
    strip_hop_by_hop(answer.headers_mut());
    Ok(answer)
}

fn strip_hop_by_hop(headers: &mut hyper::HeaderMap) {
    // Headers named by `Connection` are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(*name);
    }
}

/// An AWS JSON 1.0 error answer, as DynamoDB and DynamoDB Streams send them.
fn aws_error(proxy: &Proxy, status: StatusCode, code: &str) -> Response<ProxyBody> {
    let body = serde_json::json!({
        "__type": format!("{ERROR_NAMESPACE}{code}"),
        "message": "injected",
    });
    let mut response = Response::new(
        Full::new(Bytes::from(body.to_string()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/x-amz-json-1.0"),
    );
    let id = proxy.request_ids.fetch_add(1, Ordering::Relaxed);
    if let Ok(value) = HeaderValue::from_str(&format!("fault-proxy-{id}")) {
        headers.insert("x-amzn-requestid", value);
    }
    response
}

//! The `http` processor: POSTs each batch, as Lambda's event, to a URL.
//!
//! The request body is exactly what a Lambda handler receives,
//! `{"Records": [...]}`, with `content-type: application/json`. The answer
//! follows Lambda's contract for stream event sources with
//! `ReportBatchItemFailures`:
//!
//! - a 2xx answer whose body is empty, not JSON, or JSON without
//!   `batchItemFailures` (or with `null` or `[]` there) is a success;
//! - a 2xx answer `{"batchItemFailures": [{"itemIdentifier": "<sequence
//!   number>"}, ...]}` is a partial failure: the engine retries from the
//!   earliest named record on;
//! - a `batchItemFailures` entry whose `itemIdentifier` is missing, empty,
//!   not a string or not a record of the batch fails the whole batch, as
//!   Lambda does; so does Lambda's error shape, `{"errorMessage": ...}` (what
//!   the Lambda runtime interface emulator answers when a handler raises);
//! - any other status, a timeout, a connection error or an answer larger
//!   than [`MAX_RESPONSE_BYTES`] fails the whole batch, retryably.
//!
//! One client lives as long as the processor, so connections are kept alive
//! and reused from batch to batch. Record contents are never logged.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Bytes;
use hyper::header::{HeaderValue, ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, USER_AGENT};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use super::{Batch, BatchOutcome, Processor, ProcessorError};
use crate::record::SequenceNumber;

/// The largest answer a handler may give to one batch. A partial-failure
/// answer naming every record of a 10,000-record batch is about 640 KiB.
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// How much of an unexpected answer goes into an error message.
const BODY_EXCERPT_CHARS: usize = 200;

/// How long an idle kept-alive connection stays in the pool.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// POSTs Lambda's event to a URL.
pub struct HttpProcessor {
    uri: Uri,
    /// The URL without credentials or query, for messages.
    shown_url: String,
    timeout: Duration,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl std::fmt::Debug for HttpProcessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpProcessor")
            .field("url", &self.shown_url)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl HttpProcessor {
    /// A processor posting to `url`, waiting at most `timeout` per batch
    /// (connecting, sending and reading the whole answer).
    ///
    /// Fails if `url` is not an absolute `http://` or `https://` URL, or if an
    /// `https://` URL is given and the system has no CA certificates.
    pub fn new(url: &str, timeout: Duration) -> Result<HttpProcessor, ProcessorError> {
        let uri: Uri = url
            .trim()
            .parse()
            .map_err(|e| ProcessorError::fatal(format!("invalid URL {url:?}: {e}")))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => {
                return Err(ProcessorError::fatal(format!(
                    "invalid URL {url:?}: expected an http:// or https:// URL"
                )))
            }
        };
        if uri.host().is_none_or(str::is_empty) {
            return Err(ProcessorError::fatal(format!(
                "invalid URL {url:?}: no host"
            )));
        }
        let shown_url = shown_url(&uri);

        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(timeout));
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let tls = match hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(provider.clone())
        {
            Ok(builder) => builder,
            Err(err) if https => {
                return Err(ProcessorError::fatal(format!(
                    "{shown_url}: no usable CA certificates for https ({err}); install the \
                     ca-certificates package or set SSL_CERT_FILE"
                )))
            }
            // A plain-http URL never uses TLS: an empty trust store will do.
            Err(_) => hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(
                rustls::ClientConfig::builder_with_provider(provider.into())
                    .with_safe_default_protocol_versions()
                    .map_err(|e| ProcessorError::fatal(format!("TLS setup: {e}")))?
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth(),
            ),
        };
        let connector = tls.https_or_http().enable_http1().wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build(connector);
        Ok(HttpProcessor {
            uri,
            shown_url,
            timeout,
            client,
        })
    }

    /// Sends one batch and reads the whole answer, without a time limit.
    async fn exchange(&self, body: Vec<u8>) -> Result<(StatusCode, Bytes), ProcessorError> {
        let request = Request::builder()
            .method(Method::POST)
            .uri(self.uri.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header(ACCEPT, HeaderValue::from_static("application/json"))
            .header(
                USER_AGENT,
                HeaderValue::from_static(concat!("dynastream/", env!("CARGO_PKG_VERSION"))),
            )
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| ProcessorError::fatal(format!("POST {}: {e}", self.shown_url)))?;
        let response = self.client.request(request).await.map_err(|e| {
            ProcessorError::retryable(format!("POST {}: {}", self.shown_url, error_chain(&e)))
        })?;
        let status = response.status();
        let declared = response
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > MAX_RESPONSE_BYTES as u64) {
            return Err(self.too_large(status));
        }
        let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<LengthLimitError>() {
                    self.too_large(status)
                } else {
                    ProcessorError::retryable(format!(
                        "POST {}: HTTP {status}: reading the answer: {}",
                        self.shown_url,
                        error_chain(e.as_ref())
                    ))
                }
            })?
            .to_bytes();
        Ok((status, body))
    }

    fn too_large(&self, status: StatusCode) -> ProcessorError {
        ProcessorError::retryable(format!(
            "POST {}: HTTP {status}: the answer is larger than {MAX_RESPONSE_BYTES} bytes; the \
             whole batch failed",
            self.shown_url
        ))
    }
}

#[async_trait]
impl Processor for HttpProcessor {
    fn name(&self) -> &str {
        "http"
    }

    async fn process(&self, batch: &Batch) -> Result<BatchOutcome, ProcessorError> {
        let body = batch.to_lambda_json();
        let (status, answer) = tokio::time::timeout(self.timeout, self.exchange(body))
            .await
            .map_err(|_| {
                ProcessorError::retryable(format!(
                    "POST {}: no complete answer within {} ms",
                    self.shown_url,
                    self.timeout.as_millis()
                ))
            })??;
        if !status.is_success() {
            return Err(ProcessorError::retryable(format!(
                "POST {}: HTTP {status}: {}",
                self.shown_url,
                excerpt(&answer)
            )));
        }
        tracing::debug!(
            url = %self.shown_url,
            records = batch.len(),
            status = status.as_u16(),
            answer = %excerpt(&answer),
            "batch posted"
        );
        let text = answer.trim_ascii();
        if text.is_empty() {
            return Ok(BatchOutcome::Success);
        }
        match serde_json::from_slice::<Value>(text) {
            // Not JSON: an endpoint that answers "OK" processed the batch.
            Err(_) => Ok(BatchOutcome::Success),
            Ok(value) => outcome_of_response(&value, batch).map_err(|message| {
                ProcessorError::retryable(format!("{}: {message}", self.shown_url))
            }),
        }
    }
}

/// What a handler's answer (Lambda's `StreamsEventResponse`, or Lambda's
/// error shape) means for a batch. Shared by the `http` and `exec` processors.
///
/// - `null`, an object without `batchItemFailures`, or with `null` or `[]`
///   there, and any non-object value: success;
/// - an object with `errorMessage`: the handler failed, the whole batch fails;
/// - `batchItemFailures` naming records of the batch: a partial failure, the
///   records in batch order, each once;
/// - `batchItemFailures` that is not a list, or an entry whose
///   `itemIdentifier` is missing, `null`, empty, not a string or not a
///   sequence number of the batch: the whole batch fails (Lambda's rule).
///
/// The error is a one-line message; the caller wraps it as retryable.
pub(crate) fn outcome_of_response(value: &Value, batch: &Batch) -> Result<BatchOutcome, String> {
    let Some(object) = value.as_object() else {
        return Ok(BatchOutcome::Success);
    };
    if let Some(message) = object.get("errorMessage") {
        let kind = object
            .get("errorType")
            .and_then(Value::as_str)
            .unwrap_or("Error");
        let message = match message {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        return Err(format!(
            "the handler failed with {}: {}",
            one_line(kind, 80),
            one_line(&message, BODY_EXCERPT_CHARS)
        ));
    }
    let failures = match object.get("batchItemFailures") {
        None | Some(Value::Null) => return Ok(BatchOutcome::Success),
        Some(Value::Array(failures)) if failures.is_empty() => return Ok(BatchOutcome::Success),
        Some(Value::Array(failures)) => failures,
        Some(other) => {
            return Err(format!(
                "batchItemFailures is not a list ({}); the whole batch failed",
                one_line(&other.to_string(), 60)
            ))
        }
    };
    // Sequence numbers compare as numbers, so "007" names record "7".
    let positions: HashMap<&str, usize> = batch
        .records
        .iter()
        .enumerate()
        .map(|(i, r)| (r.sequence_number().as_str().trim_start_matches('0'), i))
        .collect();
    let mut failed = Vec::with_capacity(failures.len());
    for entry in failures {
        let identifier = entry.get("itemIdentifier");
        let position = match identifier {
            Some(Value::String(text)) if !text.is_empty() => {
                positions.get(text.trim_start_matches('0')).copied()
            }
            _ => None,
        };
        let Some(position) = position else {
            let shown = identifier.map_or_else(|| "missing".to_owned(), Value::to_string);
            return Err(format!(
                "batchItemFailures names itemIdentifier {}, not a sequence number of this \
                 batch; the whole batch failed",
                one_line(&shown, 60)
            ));
        };
        failed.push(position);
    }
    failed.sort_unstable();
    failed.dedup();
    Ok(BatchOutcome::PartialFailure(
        failed
            .into_iter()
            .map(|i| batch.records[i].sequence_number().clone())
            .collect::<Vec<SequenceNumber>>(),
    ))
}

/// The first [`BODY_EXCERPT_CHARS`] characters of an answer, on one line.
pub(crate) fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = one_line(text.trim(), BODY_EXCERPT_CHARS);
    if text.is_empty() {
        "(empty body)".to_owned()
    } else {
        text
    }
}

/// `text` with control characters as spaces, cut to `max` characters.
fn one_line(text: &str, max: usize) -> String {
    let mut out: String = text
        .chars()
        .take(max)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().nth(max).is_some() {
        out.push('…');
    }
    out
}

/// An error and its causes, `outer: inner: innermost`.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// `scheme://host[:port]/path`, leaving out credentials and the query, which
/// may hold secrets.
fn shown_url(uri: &Uri) -> String {
    let scheme = uri.scheme_str().unwrap_or("http");
    let host = uri.host().unwrap_or("");
    let port = uri.port_u16().map(|p| format!(":{p}")).unwrap_or_default();
    format!("{scheme}://{host}{port}{}", uri.path())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::EventName;
    use crate::streams::memory::test_record;
    use serde_json::json;
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use hyper::body::Incoming;
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    use hyper::Response;
    use hyper_util::rt::TokioIo;
    use tokio::net::TcpListener;

    fn batch(sequence_numbers: &[&str]) -> Batch {
        Batch {
            stream_arn: Arc::from("arn:s"),
            shard_id: Arc::from("shard-1"),
            records: sequence_numbers
                .iter()
                .map(|s| Arc::new(test_record("arn:s", &(*s).into(), EventName::Insert, s)))
                .collect(),
        }
    }

    /// What the test server saw.
    #[derive(Default)]
    struct Seen {
        connections: AtomicUsize,
        requests: Mutex<Vec<(String, Option<String>, Value)>>,
    }

    /// A canned answer: status, body, and how long to wait before answering.
    #[derive(Clone)]
    struct Answer {
        status: u16,
        body: Vec<u8>,
        delay: Duration,
    }

    fn answer(status: u16, body: impl Into<Vec<u8>>) -> Answer {
        Answer {
            status,
            body: body.into(),
            delay: Duration::ZERO,
        }
    }

    /// Serves HTTP/1.1 on 127.0.0.1 with keep-alive, answering every request
    /// with `answer`; returns the URL and what the server saw.
    async fn serve(answer: Answer) -> (String, Arc<Seen>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/hook?token=secret",
            listener.local_addr().unwrap()
        );
        let seen = Arc::new(Seen::default());
        let server_seen = Arc::clone(&seen);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                server_seen.connections.fetch_add(1, Ordering::SeqCst);
                let seen = Arc::clone(&server_seen);
                let answer = answer.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let seen = Arc::clone(&seen);
                        let answer = answer.clone();
                        async move {
                            let method = request.method().to_string();
                            let content_type = request
                                .headers()
                                .get(CONTENT_TYPE)
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_owned);
                            let body = request.into_body().collect().await.unwrap().to_bytes();
                            let value: Value = serde_json::from_slice(&body).unwrap();
                            seen.requests
                                .lock()
                                .unwrap()
                                .push((method, content_type, value));
                            tokio::time::sleep(answer.delay).await;
                            Ok::<_, Infallible>(
                                Response::builder()
                                    .status(answer.status)
                                    .body(Full::new(Bytes::from(answer.body)))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (url, seen)
    }

    async fn post(answer: Answer, batch: &Batch) -> Result<BatchOutcome, ProcessorError> {
        let (url, _) = serve(answer).await;
        HttpProcessor::new(&url, Duration::from_secs(5))
            .unwrap()
            .process(batch)
            .await
    }

    #[tokio::test]
    async fn posts_lambdas_event_and_an_empty_answer_is_success() {
        let (url, seen) = serve(answer(200, "")).await;
        let processor = HttpProcessor::new(&url, Duration::from_secs(5)).unwrap();
        let batch = batch(&["100", "200"]);
        assert_eq!(
            processor.process(&batch).await.unwrap(),
            BatchOutcome::Success
        );
        let requests = seen.requests.lock().unwrap();
        let (method, content_type, body) = &requests[0];
        assert_eq!(method, "POST");
        assert_eq!(content_type.as_deref(), Some("application/json"));
        let expected: Value = serde_json::from_slice(&batch.to_lambda_json()).unwrap();
        assert_eq!(body, &expected);
        assert_eq!(body["Records"][1]["dynamodb"]["SequenceNumber"], "200");
    }

    #[tokio::test]
    async fn answers_that_are_not_partial_failures_are_success() {
        let batch = batch(&["1"]);
        for body in [
            "OK",
            "null",
            "{}",
            r#"{"batchItemFailures": []}"#,
            r#"{"batchItemFailures": null}"#,
            r#"{"status": "done"}"#,
            "[1, 2]",
        ] {
            assert_eq!(
                post(answer(200, body), &batch).await.unwrap(),
                BatchOutcome::Success,
                "{body}"
            );
        }
        assert_eq!(
            post(answer(204, ""), &batch).await.unwrap(),
            BatchOutcome::Success
        );
    }

    #[tokio::test]
    async fn batch_item_failures_are_a_partial_failure_in_batch_order() {
        let batch = batch(&["100", "200", "300"]);
        let body = json!({"batchItemFailures": [
            {"itemIdentifier": "300"},
            {"itemIdentifier": "200"},
            {"itemIdentifier": "300"},
        ]})
        .to_string();
        assert_eq!(
            post(answer(200, body), &batch).await.unwrap(),
            BatchOutcome::PartialFailure(vec!["200".into(), "300".into()])
        );
    }

    #[tokio::test]
    async fn an_unknown_or_empty_item_identifier_fails_the_whole_batch() {
        let batch = batch(&["100", "200"]);
        for failures in [
            json!([{"itemIdentifier": "999"}]),
            json!([{"itemIdentifier": "200"}, {"itemIdentifier": ""}]),
            json!([{"itemIdentifier": null}]),
            json!([{"itemIdentifier": 200}]),
            json!([{"id": "200"}]),
            json!("200"),
        ] {
            let body = json!({ "batchItemFailures": failures }).to_string();
            let error = post(answer(200, body), &batch).await.unwrap_err();
            assert!(error.retryable, "{error}");
            assert!(error.message.contains("whole batch failed"), "{error}");
            assert!(!error.message.contains("secret"), "{error}");
        }
    }

    #[tokio::test]
    async fn lambdas_error_shape_fails_the_whole_batch() {
        let body = r#"{"errorMessage": "boom\nat line 3", "errorType": "ValueError"}"#;
        let error = post(answer(200, body), &batch(&["1"])).await.unwrap_err();
        assert!(error.retryable);
        assert!(
            error.message.contains("ValueError: boom at line 3"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_server_error_is_a_retryable_error_with_status_and_body_excerpt() {
        let body = format!("database down\n{}", "x".repeat(500));
        let error = post(answer(500, body), &batch(&["1"])).await.unwrap_err();
        assert!(error.retryable);
        assert!(error.message.contains("HTTP 500"), "{error}");
        assert!(error.message.contains("database down x"), "{error}");
        assert!(!error.message.contains('\n'));
        assert!(error.message.len() < 400, "{} chars", error.message.len());
        assert!(!error.message.contains("secret"), "{error}");
    }

    #[tokio::test]
    async fn a_slow_answer_times_out() {
        let (url, _) = serve(Answer {
            delay: Duration::from_secs(10),
            ..answer(200, "")
        })
        .await;
        let processor = HttpProcessor::new(&url, Duration::from_millis(200)).unwrap();
        let started = tokio::time::Instant::now();
        let error = processor.process(&batch(&["1"])).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(error.retryable);
        assert!(error.message.contains("within 200 ms"), "{error}");
    }

    #[tokio::test]
    async fn an_oversized_answer_fails_the_batch() {
        let body = format!(
            r#"{{"batchItemFailures": [], "padding": "{}"}}"#,
            "x".repeat(MAX_RESPONSE_BYTES)
        );
        let error = post(answer(200, body), &batch(&["1"])).await.unwrap_err();
        assert!(error.retryable);
        assert!(
            error.message.contains("larger than 1048576 bytes"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn an_oversized_answer_without_a_length_fails_the_batch() {
        // Body until the connection closes: only the reading limit can stop it.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = vec![0u8; 64 * 1024];
            let _ = stream.read(&mut request).await;
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n")
                .await;
            let chunk = vec![b' '; 64 * 1024];
            for _ in 0..40 {
                if stream.write_all(&chunk).await.is_err() {
                    return;
                }
            }
        });
        let processor = HttpProcessor::new(&url, Duration::from_secs(5)).unwrap();
        let error = processor.process(&batch(&["1"])).await.unwrap_err();
        assert!(error.retryable);
        assert!(
            error.message.contains("larger than 1048576 bytes"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_retryable_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        drop(listener);
        let processor = HttpProcessor::new(&url, Duration::from_secs(5)).unwrap();
        let error = processor.process(&batch(&["1"])).await.unwrap_err();
        assert!(error.retryable);
        assert!(error.message.contains("POST http://127.0.0.1:"), "{error}");
        assert!(!error.message.contains('\n'), "{error}");
    }

    #[tokio::test]
    async fn one_connection_serves_many_batches() {
        let (url, seen) = serve(answer(200, "{}")).await;
        let processor = HttpProcessor::new(&url, Duration::from_secs(5)).unwrap();
        for i in 0..5 {
            let batch = batch(&[&i.to_string()]);
            assert_eq!(
                processor.process(&batch).await.unwrap(),
                BatchOutcome::Success
            );
        }
        assert_eq!(seen.requests.lock().unwrap().len(), 5);
        assert_eq!(seen.connections.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn bad_urls_are_rejected() {
        for url in ["", "ftp://host/", "/relative", "http://"] {
            assert!(
                HttpProcessor::new(url, Duration::from_secs(1)).is_err(),
                "{url}"
            );
        }
        let processor = HttpProcessor::new(
            "https://user:pw@example.com:8443/p?k=v",
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(processor.shown_url, "https://example.com:8443/p");
    }
}

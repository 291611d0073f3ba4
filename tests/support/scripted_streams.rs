//! A scripted DynamoDB Streams endpoint: an HTTP server on loopback that
//! speaks the service's JSON 1.0 protocol well enough for the real AWS SDK for
//! Rust, and so for the built `dynastream` binary pointed at it with
//! `AWS_ENDPOINT_URL_DYNAMODB_STREAMS`.
//!
//! It is backed by [`MemoryStreams`]: a test scripts shards, records and
//! failures through the model's methods (`create_stream`, `add_shard`,
//! `close_shard`, `put`, `fail_next`, ...) and the server translates each
//! request into one [`StreamsApi`] call and its result back into wire JSON.
//! On top of the model it keeps a log of every call with its arrival time (to
//! assert call rates) and can serve inconsistent shard listings, as the real
//! service sometimes does right after a split.
//!
//! Wire details the SDK relies on:
//! - requests are `POST /` with `X-Amz-Target: DynamoDBStreams_20120810.<Op>`
//!   and a JSON body; they are signed, and the signature is ignored here;
//! - answers carry `Content-Type: application/x-amz-json-1.0` and an
//!   `x-amzn-RequestId`;
//! - errors are `{"__type": "com.amazonaws.dynamodb.v20120810#<Code>",
//!   "message": ...}`, status 400 (500 for `InternalServerError`); the SDK
//!   keeps what follows `#` as the error code;
//! - records are Lambda's shape without `eventSourceARN` (GetRecords does not
//!   return it), except `userIdentity`, whose members are `Type` and
//!   `PrincipalId` on the wire but `type` and `principalId` in Lambda's event.
//!
//! The server runs on a task of the runtime that called [`ScriptedStreams::start`],
//! so that runtime must keep running while a client talks to it: a test that
//! blocks its thread (a `std` sleep, a blocking wait on a child process) should
//! use `#[tokio::test(flavor = "multi_thread")]`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use aws_sdk_dynamodbstreams as ddbs;
use dynastream::aws::FailureKind;
use dynastream::record::{SequenceNumber, StreamRecord};
use dynastream::streams::memory::{MemoryStreams, Operation};
use dynastream::streams::sdk::SdkStreams;
use dynastream::streams::{
    IteratorPosition, ShardInfo, StreamPage, StreamStatus, StreamsApi, StreamsError,
    MAX_RECORDS_PER_READ,
};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The prefix of every `X-Amz-Target` the service accepts.
const TARGET_PREFIX: &str = "DynamoDBStreams_20120810.";
/// The namespace of the service's error types on the wire.
const ERROR_NAMESPACE: &str = "com.amazonaws.dynamodb.v20120810#";
/// The JSON 1.0 protocol's content type.
const CONTENT_TYPE_JSON: &str = "application/x-amz-json-1.0";
/// DescribeStream returns at most 100 shards per page (its `Limit` range).
const MAX_SHARDS_PER_PAGE: usize = 100;

/// One request the server received, logged before the model answered it
/// (failed calls count: the real service counts them against its limits).
#[derive(Debug, Clone)]
pub struct Call {
    /// The operation named by `X-Amz-Target`.
    pub operation: Operation,
    /// When the request arrived, on the server runtime's tokio clock.
    pub at: Instant,
    /// The request's JSON body.
    pub request: Value,
}

#[derive(Debug)]
struct Shared {
    model: MemoryStreams,
    calls: Mutex<Vec<Call>>,
    inconsistent_listings: Mutex<usize>,
    next_request_id: AtomicU64,
}

impl Shared {
    fn calls(&self) -> MutexGuard<'_, Vec<Call>> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn inconsistent_listings(&self) -> MutexGuard<'_, usize> {
        self.inconsistent_listings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}

/// A running scripted endpoint. Dropping it (or [`ScriptedStreams::shutdown`])
/// stops the server and closes its connections.
#[derive(Debug)]
pub struct ScriptedStreams {
    /// `http://127.0.0.1:<port>`, for `endpoint_url` or
    /// `AWS_ENDPOINT_URL_DYNAMODB_STREAMS`.
    pub endpoint: String,
    /// The model behind the endpoint; script the service through it. A clone
    /// of the model passed to [`ScriptedStreams::start`]: both share state.
    pub model: MemoryStreams,
    shared: Arc<Shared>,
    stop: CancellationToken,
    server: Option<JoinHandle<()>>,
}

impl ScriptedStreams {
    /// Binds a free port on 127.0.0.1 and serves `model` there on a task of
    /// the current tokio runtime.
    pub async fn start(model: MemoryStreams) -> ScriptedStreams {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port for the scripted streams endpoint");
        let address = listener.local_addr().expect("bound address");
        let shared = Arc::new(Shared {
            model: model.clone(),
            calls: Mutex::new(Vec::new()),
            inconsistent_listings: Mutex::new(0),
            next_request_id: AtomicU64::new(1),
        });
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve(listener, Arc::clone(&shared), stop.clone()));
        ScriptedStreams {
            endpoint: format!("http://{address}"),
            model,
            shared,
            stop,
            server: Some(server),
        }
    }

    /// Stops accepting requests, closes open connections and waits for the
    /// server task to end.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
    }

    /// The variable that points a `dynastream` process (or any SDK client
    /// built from the environment) at this endpoint for DynamoDB Streams only;
    /// `AWS_ENDPOINT_URL` can keep pointing at DynamoDB Local for the leases.
    pub fn endpoint_env(&self) -> (String, String) {
        (
            "AWS_ENDPOINT_URL_DYNAMODB_STREAMS".into(),
            self.endpoint.clone(),
        )
    }

    /// An SDK client for this endpoint: region us-east-1, static test
    /// credentials, no SDK retries (as [`dynastream::aws::load_sdk_config`]).
    /// Built from the service's own config builder, without `aws_config`'s
    /// loader, so nothing in the environment or in profile files (region,
    /// credentials, IMDS) is read.
    pub fn sdk_client(&self) -> ddbs::Client {
        let config = ddbs::Config::builder()
            .behavior_version(ddbs::config::BehaviorVersion::latest())
            .region(ddbs::config::Region::new("us-east-1"))
            .credentials_provider(ddbs::config::Credentials::new(
                "scripted",
                "scripted",
                None,
                None,
                "scripted-streams",
            ))
            .endpoint_url(&self.endpoint)
            .retry_config(ddbs::config::retry::RetryConfig::disabled())
            .timeout_config(
                ddbs::config::timeout::TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(3))
                    .operation_timeout(Duration::from_secs(10))
                    .build(),
            )
            .build();
        ddbs::Client::from_conf(config)
    }

    /// dynastream's SDK adapter over [`ScriptedStreams::sdk_client`].
    pub fn sdk_streams(&self) -> SdkStreams {
        SdkStreams::new(self.sdk_client())
    }

    /// Every call received so far, in arrival order.
    pub fn call_log(&self) -> Vec<Call> {
        self.shared.calls().clone()
    }

    /// When each call of `operation` arrived, in order.
    pub fn calls(&self, operation: Operation) -> Vec<Instant> {
        self.shared
            .calls()
            .iter()
            .filter(|c| c.operation == operation)
            .map(|c| c.at)
            .collect()
    }

    /// When each DescribeStream call arrived, in order.
    pub fn describe_stream_calls(&self) -> Vec<Instant> {
        self.calls(Operation::DescribeStream)
    }

    /// The JSON bodies of the calls of `operation`, in order.
    pub fn requests(&self, operation: Operation) -> Vec<Value> {
        self.shared
            .calls()
            .iter()
            .filter(|c| c.operation == operation)
            .map(|c| c.request.clone())
            .collect()
    }

    /// The most calls of `operation` that arrived within any `window` (a
    /// sliding window): `max_calls_in_window(DescribeStream, 1s) <= 10`
    /// asserts the rate stayed at or under 10 a second.
    pub fn max_calls_in_window(&self, operation: Operation, window: Duration) -> usize {
        let times = self.calls(operation);
        let mut most = 0;
        let mut first = 0;
        for (last, &at) in times.iter().enumerate() {
            while at.duration_since(times[first]) >= window {
                first += 1;
            }
            most = most.max(last + 1 - first);
        }
        most
    }

    /// Forgets the calls logged so far.
    pub fn clear_calls(&self) {
        self.shared.calls().clear();
    }

    /// Makes the next `n` full listings inconsistent: every unfiltered
    /// DescribeStream page shows each closed shard as open (no
    /// `EndingSequenceNumber`), so a closed parent appears open beside its
    /// child. A listing ends with its last page (no `LastEvaluatedShardId`);
    /// each such page served counts one off `n`. Pages asked for with the
    /// `CHILD_SHARDS` filter are served as the model has them.
    pub fn set_inconsistent_listings(&self, n: usize) {
        *self.shared.inconsistent_listings() = n;
    }

    /// How many inconsistent listings are still to be served.
    pub fn inconsistent_listings_left(&self) -> usize {
        *self.shared.inconsistent_listings()
    }
}

impl Drop for ScriptedStreams {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

/// Accepts connections until `stop`; dropping the set of connection tasks on
/// the way out closes the connections still open.
async fn serve(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => {
                let Ok((socket, _)) = accepted else {
                    // Out of file descriptors or similar: try again shortly.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let shared = Arc::clone(&shared);
                connections.spawn(async move {
                    let service = service_fn(move |request| handle(Arc::clone(&shared), request));
                    // A connection ends with an error when a scripted transport
                    // failure drops it, or when the client goes away.
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(socket), service)
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// A scripted transport failure: returned from the service, it makes hyper
/// close the connection without answering.
#[derive(Debug)]
struct DropConnection;

impl std::fmt::Display for DropConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("scripted transport failure: connection dropped")
    }
}

impl std::error::Error for DropConnection {}

/// An answer before it is put on the wire.
enum Answer {
    Ok(Value),
    Error {
        status: StatusCode,
        code: &'static str,
        message: String,
    },
    Drop,
}

impl Answer {
    fn client_error(code: &'static str, message: impl Into<String>) -> Answer {
        Answer::Error {
            status: StatusCode::BAD_REQUEST,
            code,
            message: message.into(),
        }
    }

    fn validation(message: impl Into<String>) -> Answer {
        Answer::client_error("ValidationException", message)
    }
}

impl From<StreamsError> for Answer {
    fn from(error: StreamsError) -> Answer {
        match error {
            StreamsError::ExpiredIterator(message) => {
                Answer::client_error("ExpiredIteratorException", message)
            }
            StreamsError::TrimmedData(message) => {
                Answer::client_error("TrimmedDataAccessException", message)
            }
            StreamsError::NotFound(message) => {
                Answer::client_error("ResourceNotFoundException", message)
            }
            StreamsError::Transient { kind, message, .. } => match kind {
                FailureKind::Throttled => Answer::client_error("LimitExceededException", message),
                FailureKind::ServiceUnavailable => Answer::Error {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    code: "InternalServerError",
                    message,
                },
                FailureKind::Transport => Answer::Drop,
                FailureKind::Rejected => Answer::validation(message),
            },
            StreamsError::Rejected { message, .. } => Answer::validation(message),
            other => Answer::validation(other.to_string()),
        }
    }
}

async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, DropConnection> {
    let request_id = format!(
        "scripted-{:08}",
        shared.next_request_id.fetch_add(1, Ordering::Relaxed)
    );
    let answer = answer(&shared, request).await;
    let (status, body) = match answer {
        Answer::Ok(body) => (StatusCode::OK, body),
        Answer::Error {
            status,
            code,
            message,
        } => (
            status,
            json!({ "__type": format!("{ERROR_NAMESPACE}{code}"), "message": message }),
        ),
        Answer::Drop => return Err(DropConnection),
    };
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE_JSON));
    headers.insert(
        "x-amzn-RequestId",
        HeaderValue::from_str(&request_id).expect("ASCII request id"),
    );
    Ok(response)
}

async fn answer(shared: &Shared, request: Request<Incoming>) -> Answer {
    if request.method() != hyper::Method::POST || request.uri().path() != "/" {
        return Answer::client_error(
            "UnknownOperationException",
            format!("{} {} is not an operation", request.method(), request.uri()),
        );
    }
    let target = request
        .headers()
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let operation = match target.strip_prefix(TARGET_PREFIX) {
        Some("ListStreams") => Operation::ListStreams,
        Some("DescribeStream") => Operation::DescribeStream,
        Some("GetShardIterator") => Operation::GetShardIterator,
        Some("GetRecords") => Operation::GetRecords,
        _ => {
            return Answer::client_error(
                "UnknownOperationException",
                format!("unknown X-Amz-Target {target:?}"),
            )
        }
    };
    let body = match request.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return Answer::Drop,
    };
    let input: Value = if body.is_empty() {
        json!({})
    } else {
        match serde_json::from_slice(&body) {
            Ok(value @ Value::Object(_)) => value,
            _ => {
                return Answer::client_error(
                    "SerializationException",
                    "the request body is not a JSON object",
                )
            }
        }
    };
    shared.calls().push(Call {
        operation,
        at: Instant::now(),
        request: input.clone(),
    });
    let result = match operation {
        Operation::ListStreams => list_streams(shared, &input).await,
        Operation::DescribeStream => describe_stream(shared, &input).await,
        Operation::GetShardIterator => get_shard_iterator(shared, &input).await,
        Operation::GetRecords => get_records(shared, &input).await,
    };
    result.unwrap_or_else(|answer| answer)
}

fn string<'a>(input: &'a Value, field: &str) -> Option<&'a str> {
    input.get(field).and_then(Value::as_str)
}

fn required<'a>(input: &'a Value, field: &str) -> Result<&'a str, Answer> {
    string(input, field).ok_or_else(|| Answer::validation(format!("{field} is required")))
}

fn limit(input: &Value, max: u64) -> Result<Option<u64>, Answer> {
    match input.get("Limit") {
        None | Some(Value::Null) => Ok(None),
        Some(value) => match value.as_u64() {
            Some(n) if (1..=max).contains(&n) => Ok(Some(n)),
            _ => Err(Answer::validation(format!(
                "Limit must be between 1 and {max}, got {value}"
            ))),
        },
    }
}

async fn list_streams(shared: &Shared, input: &Value) -> Result<Answer, Answer> {
    // The model lists the streams of one table; the real service can list
    // every stream of the account, which dynastream never asks for.
    let table = required(input, "TableName")?;
    let limit = limit(input, 100)?.unwrap_or(100) as usize;
    let streams = shared.model.list_streams(table).await?;
    let start = match string(input, "ExclusiveStartStreamArn") {
        Some(arn) => streams
            .iter()
            .position(|s| s.stream_arn == arn)
            .map_or(0, |i| i + 1),
        None => 0,
    };
    let page = &streams[start.min(streams.len())..];
    let shown = &page[..limit.min(page.len())];
    let mut output = json!({
        "Streams": shown
            .iter()
            .map(|s| json!({
                "StreamArn": s.stream_arn,
                "TableName": s.table_name,
                "StreamLabel": s.stream_label,
            }))
            .collect::<Vec<_>>(),
    });
    if page.len() > shown.len() {
        if let Some(last) = shown.last() {
            output["LastEvaluatedStreamArn"] = json!(last.stream_arn);
        }
    }
    Ok(Answer::Ok(output))
}

async fn describe_stream(shared: &Shared, input: &Value) -> Result<Answer, Answer> {
    let stream_arn = required(input, "StreamArn")?;
    let limit = limit(input, MAX_SHARDS_PER_PAGE as u64)?.unwrap_or(MAX_SHARDS_PER_PAGE as u64);
    let children_of = match input.get("ShardFilter") {
        None | Some(Value::Null) => None,
        Some(filter) => {
            if string(filter, "Type") != Some("CHILD_SHARDS") {
                return Err(Answer::validation(format!(
                    "ShardFilter.Type must be CHILD_SHARDS, got {}",
                    filter.get("Type").unwrap_or(&Value::Null)
                )));
            }
            Some(required(filter, "ShardId")?)
        }
    };
    let mut page = shared
        .model
        .describe_stream(
            stream_arn,
            string(input, "ExclusiveStartShardId"),
            children_of,
        )
        .await?;
    if page.shards.len() > limit as usize {
        page.shards.truncate(limit as usize);
        page.last_evaluated_shard_id = page.shards.last().map(|s| s.shard_id.clone());
    }
    if children_of.is_none() {
        let mut left = shared.inconsistent_listings();
        if *left > 0 {
            for shard in &mut page.shards {
                shard.ending_sequence_number = None;
            }
            if page.last_evaluated_shard_id.is_none() {
                *left -= 1;
            }
        }
    }
    let label = shared.model.stream_label(stream_arn).unwrap_or_default();
    Ok(Answer::Ok(
        json!({ "StreamDescription": stream_description(&page, &label) }),
    ))
}

fn stream_description(page: &StreamPage, label: &str) -> Value {
    let status = match page.status {
        StreamStatus::Enabling => "ENABLING",
        StreamStatus::Enabled => "ENABLED",
        StreamStatus::Disabling => "DISABLING",
        StreamStatus::Disabled => "DISABLED",
    };
    let mut description = json!({
        "StreamArn": page.stream_arn,
        "StreamLabel": label,
        "StreamStatus": status,
        "StreamViewType": "NEW_AND_OLD_IMAGES",
        "CreationRequestDateTime": 1_700_000_000,
        "KeySchema": [{ "AttributeName": "pk", "KeyType": "HASH" }],
        "Shards": page.shards.iter().map(shard).collect::<Vec<_>>(),
    });
    if let Some(table) = &page.table_name {
        description["TableName"] = json!(table);
    }
    if let Some(last) = &page.last_evaluated_shard_id {
        description["LastEvaluatedShardId"] = json!(last);
    }
    description
}

fn shard(shard: &ShardInfo) -> Value {
    let mut range = Map::new();
    if let Some(start) = &shard.starting_sequence_number {
        range.insert("StartingSequenceNumber".into(), json!(start.as_str()));
    }
    if let Some(end) = &shard.ending_sequence_number {
        range.insert("EndingSequenceNumber".into(), json!(end.as_str()));
    }
    let mut value = json!({
        "ShardId": shard.shard_id,
        "SequenceNumberRange": range,
    });
    if let Some(parent) = &shard.parent_shard_id {
        value["ParentShardId"] = json!(parent);
    }
    value
}

async fn get_shard_iterator(shared: &Shared, input: &Value) -> Result<Answer, Answer> {
    let stream_arn = required(input, "StreamArn")?;
    let shard_id = required(input, "ShardId")?;
    let sequence = || required(input, "SequenceNumber").map(|s| SequenceNumber(s.to_owned()));
    let position = match required(input, "ShardIteratorType")? {
        "TRIM_HORIZON" => IteratorPosition::TrimHorizon,
        "LATEST" => IteratorPosition::Latest,
        "AT_SEQUENCE_NUMBER" => IteratorPosition::AtSequenceNumber(sequence()?),
        "AFTER_SEQUENCE_NUMBER" => IteratorPosition::AfterSequenceNumber(sequence()?),
        other => {
            return Err(Answer::validation(format!(
                "unknown ShardIteratorType {other:?}"
            )))
        }
    };
    let iterator = shared
        .model
        .get_shard_iterator(stream_arn, shard_id, &position)
        .await?;
    Ok(Answer::Ok(match iterator {
        Some(iterator) => json!({ "ShardIterator": iterator }),
        None => json!({}),
    }))
}

async fn get_records(shared: &Shared, input: &Value) -> Result<Answer, Answer> {
    let iterator = required(input, "ShardIterator")?;
    let limit = limit(input, u64::from(MAX_RECORDS_PER_READ))?
        .unwrap_or(u64::from(MAX_RECORDS_PER_READ)) as u32;
    // The model reads the stream from the iterator; the ARN argument only
    // stamps records, and the wire shape has no ARN.
    let page = shared.model.get_records("", iterator, limit).await?;
    let mut output = json!({
        "Records": page.records.iter().map(wire_record).collect::<Vec<_>>(),
    });
    if let Some(next) = page.next_iterator {
        output["NextShardIterator"] = json!(next);
    }
    Ok(Answer::Ok(output))
}

/// A record as GetRecords puts it on the wire: Lambda's shape without
/// `eventSourceARN`, and `userIdentity` with the API's member names.
pub fn wire_record(record: &StreamRecord) -> Value {
    let mut value = serde_json::to_value(record).expect("a record serializes");
    let fields = value.as_object_mut().expect("a record is an object");
    fields.remove("eventSourceARN");
    if let Some(identity) = fields.remove("userIdentity") {
        fields.insert(
            "userIdentity".into(),
            json!({ "Type": identity["type"], "PrincipalId": identity["principalId"] }),
        );
    }
    value
}

//! The consumer-bound endpoint: a DynamoDB Streams server that answers from
//! memory, fast enough that the consumer reading it is the bottleneck, and a
//! Kinesis PutRecords sink that accepts everything.
//!
//! DynamoDB Local cannot show a consumer's own speed: it serves a few tens of
//! thousands of records a second and shares the machine's cores. This server
//! serves one stream per item size (`bench-consumer-<bytes>`), each of N open
//! shards holding M records, and builds every GetRecords answer by copying
//! one prepared record per page slot and writing the record's numbers into
//! it (sequence number, event id, item key): serving a page costs about a
//! memcpy of its bytes, and nothing is held per record. It runs as its own
//! process (`suite --endpoint ...`), so its CPU is counted in neither
//! consumer and it shares no runtime with them.
//!
//! Wire notes (see also `tests/support/scripted_streams.rs`): requests are
//! `POST /` with `X-Amz-Target: DynamoDBStreams_20120810.<Op>` (JSON 1.0) or
//! `Kinesis_20131202.PutRecords` (JSON 1.1); signatures are not checked. A
//! GetRecords page holds at most 1,000 records and at most 1 MiB of record
//! bytes, as the real service's; once a shard's records are read, the shard
//! (open, like a table's live stream) answers empty pages with a next
//! iterator, so a consumer knows it is done by counting records.
//! `GET /stats` answers the calls and records served so far, for the
//! suite's measurements.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;

/// The account and region of every ARN served.
const ARN_PREFIX: &str = "arn:aws:dynamodb:us-east-1:000000000000:table/";
/// Every stream's label (its creation time in the ARN).
const STREAM_LABEL: &str = "2026-01-01T00:00:00.000";
/// GetRecords returns at most this many records ...
const MAX_RECORDS_PER_PAGE: usize = 1000;
/// ... and at most this many bytes of them.
const MAX_PAGE_BYTES: usize = 1024 * 1024;
/// DescribeStream returns at most 100 shards per page.
const MAX_SHARDS_PER_PAGE: usize = 100;

/// The table served for items of `bytes` bytes.
pub fn table_name(bytes: u64) -> String {
    format!("bench-consumer-{bytes}")
}

/// The ARN of the stream of `table`.
pub fn stream_arn(table: &str) -> String {
    format!("{ARN_PREFIX}{table}/stream/{STREAM_LABEL}")
}

/// What the endpoint serves: one stream per entry of `streams`, each of
/// `shards` shards, all INSERTs or all MODIFYs.
#[derive(Debug, Clone)]
pub struct Setup {
    pub shards: u32,
    pub streams: Vec<StreamSetup>,
    pub modify: bool,
}

/// One stream: items of about `item_bytes` bytes, `records_per_shard`
/// records in each shard.
#[derive(Debug, Clone, Copy)]
pub struct StreamSetup {
    pub item_bytes: u64,
    pub records_per_shard: u64,
}

impl Setup {
    /// The arguments of `suite --endpoint` that serve this setup.
    pub fn to_args(&self) -> Vec<String> {
        let mut args = vec!["--shards".to_owned(), self.shards.to_string()];
        for stream in &self.streams {
            args.push("--stream".to_owned());
            args.push(format!(
                "{}:{}",
                stream.item_bytes, stream.records_per_shard
            ));
        }
        if self.modify {
            args.push("--modify".to_owned());
        }
        args
    }

    /// Reads the arguments of `suite --endpoint`: `--shards N`,
    /// `--stream ITEM_BYTES:RECORDS_PER_SHARD` (repeated), `--modify`.
    pub fn from_args(args: &[String]) -> Setup {
        let mut setup = Setup {
            shards: 32,
            streams: Vec::new(),
            modify: false,
        };
        let mut rest = args.iter();
        while let Some(arg) = rest.next() {
            let mut value = || rest.next().unwrap_or_else(|| panic!("{arg} needs a value"));
            match arg.as_str() {
                "--shards" => setup.shards = value().parse().expect("--shards N"),
                "--stream" => {
                    let text = value();
                    let parsed = text.split_once(':').and_then(|(bytes, records)| {
                        Some((bytes.parse().ok()?, records.parse().ok()?))
                    });
                    let (item_bytes, records_per_shard) = parsed.unwrap_or_else(|| {
                        panic!("--stream ITEM_BYTES:RECORDS_PER_SHARD, got {text}")
                    });
                    assert!(
                        records_per_shard < SEQUENCE_SPAN,
                        "at most {SEQUENCE_SPAN} records a shard"
                    );
                    setup.streams.push(StreamSetup {
                        item_bytes,
                        records_per_shard,
                    });
                }
                "--modify" => setup.modify = true,
                other => panic!("unknown endpoint argument {other}"),
            }
        }
        assert!(
            (1..=9999).contains(&setup.shards),
            "--shards must be 1 to 9999"
        );
        assert!(!setup.streams.is_empty(), "at least one --stream");
        setup
    }
}

/// A shard's sequence numbers are `<shard + 1, 6 digits><index, 15 digits>`:
/// 21 digits, increasing within the shard, as DynamoDB Local's are.
const SEQUENCE_SPAN: u64 = 1_000_000_000_000_000;

fn sequence_number(shard: u32, index: u64) -> u64 {
    (u64::from(shard) + 1) * SEQUENCE_SPAN + index
}

/// Where in the prepared record a per-record value goes.
#[derive(Debug, Clone, Copy)]
enum Slot {
    /// The 21-digit sequence number.
    Sequence,
    /// The 32-digit event id: shard (8 digits), then index (24).
    EventId,
    /// The item key's 16 digits: shard (4), then index (12). Every record
    /// has its own item, so a target that sends one change per item per
    /// request (Kinesis) still fills its requests.
    Key,
}

impl Slot {
    /// The placeholder written where the value goes: characters that neither
    /// base64 nor the item's text use, so each is found exactly where meant.
    fn placeholder(self) -> &'static str {
        match self {
            Slot::Sequence => "$$$$$$$$$$$$$$$$$$$$$",
            Slot::EventId => "@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@",
            Slot::Key => "################",
        }
    }
}

/// Writes `value` as decimal digits filling `out`, zero-padded on the left.
fn write_digits(out: &mut [u8], mut value: u64) {
    for byte in out.iter_mut().rev() {
        *byte = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// One stream's prepared record: its wire JSON with placeholders, and where
/// each placeholder stands.
#[derive(Debug)]
struct Template {
    bytes: Vec<u8>,
    slots: Vec<(usize, Slot)>,
    records_per_page: usize,
}

impl Template {
    fn new(record: &Value) -> Template {
        let bytes = serde_json::to_vec(record).expect("a record serializes");
        let mut slots = Vec::new();
        for slot in [Slot::Sequence, Slot::EventId, Slot::Key] {
            let needle = slot.placeholder().as_bytes();
            let mut at = 0;
            while let Some(found) = bytes[at..]
                .windows(needle.len())
                .position(|window| window == needle)
            {
                slots.push((at + found, slot));
                at += found + needle.len();
            }
        }
        let count = |wanted: fn(&Slot) -> bool| slots.iter().filter(|(_, s)| wanted(s)).count();
        assert_eq!(
            count(|s| matches!(s, Slot::Sequence)),
            1,
            "one sequence slot"
        );
        assert_eq!(
            count(|s| matches!(s, Slot::EventId)),
            1,
            "one event id slot"
        );
        assert!(
            count(|s| matches!(s, Slot::Key)) >= 2,
            "the key and the image"
        );
        let records_per_page = (MAX_PAGE_BYTES / (bytes.len() + 1)).clamp(1, MAX_RECORDS_PER_PAGE);
        Template {
            bytes,
            slots,
            records_per_page,
        }
    }

    /// Appends record `index` of `shard` to `out`.
    fn write(&self, out: &mut Vec<u8>, shard: u32, index: u64) {
        let start = out.len();
        out.extend_from_slice(&self.bytes);
        let record = &mut out[start..];
        for &(at, slot) in &self.slots {
            match slot {
                Slot::Sequence => {
                    write_digits(&mut record[at..at + 21], sequence_number(shard, index))
                }
                Slot::EventId => {
                    write_digits(&mut record[at..at + 8], u64::from(shard));
                    write_digits(&mut record[at + 8..at + 32], index);
                }
                Slot::Key => {
                    write_digits(&mut record[at..at + 4], u64::from(shard));
                    write_digits(&mut record[at + 4..at + 16], index);
                }
            }
        }
    }
}

/// An item of about `target` bytes as DynamoDB counts them (attribute names
/// plus values), in the drain dataset's mix: a string key, numbers, a
/// boolean, a string set, binary, a map, a list and a text; items of 4 KB
/// and more also carry a list of line items (maps), as an order would.
/// `version` varies the non-key attributes (a MODIFY's old image is
/// version 0, its new image version 1). Returns the item in wire JSON.
pub fn item(target: u64, version: u64) -> Value {
    let blob_bytes = match target {
        0..=511 => 8,
        512..=4095 => 96,
        _ => 512,
    };
    let blob: Vec<u8> = (0..blob_bytes).map(|i| (i * 7 + version) as u8).collect();
    let mut item = json!({
        "pk": { "S": format!("item-{}", Slot::Key.placeholder()) },
        "seq": { "N": (1000 + version).to_string() },
        "price": { "N": format!("{}.{:02}", 19 + version, 99 - version) },
        "active": { "BOOL": version % 2 == 0 },
        "tags": { "SS": ["bench", format!("t{version}"), "cdc"] },
        "blob": { "B": STANDARD.encode(&blob) },
        "address": { "M": { "city": { "S": "Lisbon" }, "zip": { "N": "1100" } } },
        "history": { "L": [{ "N": "1" }, { "S": "created" }, { "NULL": true }] },
    });
    if target >= 4096 {
        let lines: Vec<Value> = (0..(target / 200))
            .map(|i| {
                json!({ "M": {
                    "sku": { "S": format!("SKU-{:06}", i * 37 + version) },
                    "qty": { "N": (1 + i % 9).to_string() },
                    "price": { "N": format!("{}.{:02}", 3 + i % 50, i % 100) },
                }})
            })
            .collect();
        item["lines"] = json!({ "L": lines });
    }
    let without_text = item_size(&item) + "payload".len();
    let length = target.saturating_sub(without_text as u64).max(16);
    // Words of letters that differ along the text, so nothing compresses
    // it away.
    let text: String = (0..length)
        .map(|i| match i % 7 {
            6 => ' ',
            _ => char::from(b'a' + ((i * 11 + version * 7) % 26) as u8),
        })
        .collect();
    item["payload"] = json!({ "S": text });
    item
}

/// An item's size as DynamoDB counts it: names plus values (wire JSON).
pub fn item_size(item: &Value) -> usize {
    let object = item.as_object().expect("an item is an object");
    object
        .iter()
        .map(|(name, value)| name.len() + value_size(value))
        .sum()
}

fn value_size(value: &Value) -> usize {
    let (kind, inner) = value
        .as_object()
        .and_then(|o| o.iter().next())
        .expect("an attribute value has one member");
    match (kind.as_str(), inner) {
        ("S" | "N", Value::String(s)) => s.len(),
        ("B", Value::String(s)) => STANDARD.decode(s).map_or(0, |b| b.len()),
        ("SS" | "NS", Value::Array(list)) => {
            list.iter().filter_map(Value::as_str).map(str::len).sum()
        }
        ("M", Value::Object(map)) => {
            3 + map
                .iter()
                .map(|(k, v)| k.len() + 1 + value_size(v))
                .sum::<usize>()
        }
        ("L", Value::Array(list)) => 3 + list.iter().map(|v| 1 + value_size(v)).sum::<usize>(),
        _ => 1,
    }
}

/// A record of the stream of items of `target` bytes, as GetRecords puts it
/// on the wire, with placeholders for its numbers. Returns it and the item's
/// size in bytes.
fn wire_record(target: u64, modify: bool, created: u64) -> (Value, usize) {
    let new_image = item(target, 1);
    let keys = json!({ "pk": new_image["pk"].clone() });
    let mut size = item_size(&keys) + item_size(&new_image);
    let mut dynamodb = json!({
        "ApproximateCreationDateTime": created,
        "Keys": keys,
        "NewImage": new_image,
        "SequenceNumber": Slot::Sequence.placeholder(),
        "StreamViewType": "NEW_AND_OLD_IMAGES",
    });
    if modify {
        let old_image = item(target, 0);
        size += item_size(&old_image);
        dynamodb["OldImage"] = old_image;
    }
    dynamodb["SizeBytes"] = json!(size);
    let record = json!({
        "awsRegion": "us-east-1",
        "dynamodb": dynamodb,
        "eventID": Slot::EventId.placeholder(),
        "eventName": if modify { "MODIFY" } else { "INSERT" },
        "eventSource": "aws:dynamodb",
        "eventVersion": "1.1",
    });
    (record, size)
}

/// One stream served.
#[derive(Debug)]
struct Stream {
    table: String,
    arn: String,
    template: Template,
    records_per_shard: u64,
}

/// The server's state: the streams and what it has served.
#[derive(Debug)]
struct Server {
    streams: Vec<Stream>,
    shards: u32,
    get_records_calls: AtomicU64,
    records_served: AtomicU64,
    kinesis_records: AtomicU64,
    next_request_id: AtomicU64,
}

/// The endpoint as a process: prepares the streams, prints
/// `listening http://127.0.0.1:<port>` (and each stream's record size on
/// standard error), then serves until killed.
pub async fn run_process(setup: Setup) {
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let streams = setup
        .streams
        .iter()
        .map(|stream| {
            let (record, item_bytes) = wire_record(stream.item_bytes, setup.modify, created);
            let template = Template::new(&record);
            let table = table_name(stream.item_bytes);
            eprintln!(
                "endpoint: {table}: {} shards x {} records, items of {item_bytes} bytes, \
                 {} bytes a record on the wire, {} records a page",
                setup.shards,
                stream.records_per_shard,
                template.bytes.len(),
                template.records_per_page
            );
            Stream {
                arn: stream_arn(&table),
                table,
                template,
                records_per_shard: stream.records_per_shard,
            }
        })
        .collect();
    let server = Arc::new(Server {
        streams,
        shards: setup.shards,
        get_records_calls: AtomicU64::new(0),
        records_served: AtomicU64::new(0),
        kinesis_records: AtomicU64::new(0),
        next_request_id: AtomicU64::new(1),
    });
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port for the endpoint");
    let address = listener.local_addr().expect("bound address");
    println!("listening http://{address}");
    loop {
        let Ok((socket, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        let _ = socket.set_nodelay(true);
        let server = Arc::clone(&server);
        tokio::spawn(async move {
            let service = service_fn(move |request| handle(Arc::clone(&server), request));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(socket), service)
                .await;
        });
    }
}

/// An answer: status, content type and body.
struct Answer {
    status: StatusCode,
    content_type: &'static str,
    body: Vec<u8>,
}

const JSON_1_0: &str = "application/x-amz-json-1.0";
const JSON_1_1: &str = "application/x-amz-json-1.1";

impl Answer {
    fn ok(value: &Value) -> Answer {
        Answer {
            status: StatusCode::OK,
            content_type: JSON_1_0,
            body: serde_json::to_vec(value).expect("an answer serializes"),
        }
    }

    fn error(code: &str, message: &str) -> Answer {
        Answer {
            status: StatusCode::BAD_REQUEST,
            content_type: JSON_1_0,
            body: serde_json::to_vec(&json!({
                "__type": format!("com.amazonaws.dynamodb.v20120810#{code}"),
                "message": message,
            }))
            .expect("an error serializes"),
        }
    }
}

async fn handle(
    server: Arc<Server>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let answer = if request.method() == hyper::Method::GET && request.uri().path() == "/stats" {
        Answer::ok(&json!({
            "get_records_calls": server.get_records_calls.load(Ordering::Relaxed),
            "records_served": server.records_served.load(Ordering::Relaxed),
            "kinesis_records": server.kinesis_records.load(Ordering::Relaxed),
        }))
    } else {
        let target = request
            .headers()
            .get("x-amz-target")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        match request.into_body().collect().await {
            Ok(body) => answer(&server, &target, &body.to_bytes()),
            Err(_) => Answer::error("SerializationException", "the body could not be read"),
        }
    };
    let mut response = Response::new(Full::new(Bytes::from(answer.body)));
    *response.status_mut() = answer.status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(answer.content_type));
    let id = server.next_request_id.fetch_add(1, Ordering::Relaxed);
    headers.insert(
        "x-amzn-RequestId",
        HeaderValue::from_str(&format!("bench-{id:010}")).expect("ASCII request id"),
    );
    Ok(response)
}

fn answer(server: &Server, target: &str, body: &[u8]) -> Answer {
    if target == "Kinesis_20131202.PutRecords" {
        return put_records(server, body);
    }
    let input: Value = if body.is_empty() {
        json!({})
    } else {
        match serde_json::from_slice(body) {
            Ok(value) => value,
            Err(_) => return Answer::error("SerializationException", "the body is not JSON"),
        }
    };
    let result = match target.strip_prefix("DynamoDBStreams_20120810.") {
        Some("ListStreams") => Ok(list_streams(server, &input)),
        Some("DescribeStream") => describe_stream(server, &input),
        Some("GetShardIterator") => get_shard_iterator(server, &input),
        Some("GetRecords") => get_records(server, &input),
        _ => Err(Answer::error(
            "UnknownOperationException",
            &format!("unknown X-Amz-Target {target:?}"),
        )),
    };
    result.unwrap_or_else(|error| error)
}

fn field<'a>(input: &'a Value, name: &str) -> Result<&'a str, Answer> {
    input
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| Answer::error("ValidationException", &format!("{name} is required")))
}

fn stream<'a>(server: &'a Server, arn: &str) -> Result<(usize, &'a Stream), Answer> {
    server
        .streams
        .iter()
        .enumerate()
        .find(|(_, s)| s.arn == arn)
        .ok_or_else(|| {
            Answer::error(
                "ResourceNotFoundException",
                &format!("no stream {arn:?} here"),
            )
        })
}

fn shard_id(shard: u32) -> String {
    format!("shardId-00000001767225600000-{shard:08x}")
}

fn shard_index(id: &str) -> Option<u32> {
    let hex = id.strip_prefix("shardId-00000001767225600000-")?;
    u32::from_str_radix(hex, 16).ok()
}

fn list_streams(server: &Server, input: &Value) -> Answer {
    let table = input.get("TableName").and_then(Value::as_str);
    let streams: Vec<Value> = server
        .streams
        .iter()
        .filter(|s| table.is_none_or(|t| t == s.table))
        .map(|s| json!({ "StreamArn": s.arn, "TableName": s.table, "StreamLabel": STREAM_LABEL }))
        .collect();
    Answer::ok(&json!({ "Streams": streams }))
}

fn describe_stream(server: &Server, input: &Value) -> Result<Answer, Answer> {
    let (_, stream) = stream(server, field(input, "StreamArn")?)?;
    // Every shard is a root: a child-shard filter finds nothing.
    let children_only = input.get("ShardFilter").is_some_and(|f| !f.is_null());
    let first = match input.get("ExclusiveStartShardId").and_then(Value::as_str) {
        Some(id) => shard_index(id).map_or(0, |i| i + 1),
        None => 0,
    };
    let limit = input
        .get("Limit")
        .and_then(Value::as_u64)
        .map_or(MAX_SHARDS_PER_PAGE, |l| {
            (l as usize).min(MAX_SHARDS_PER_PAGE)
        });
    let last = if children_only {
        first
    } else {
        server.shards.min(first + limit as u32)
    };
    let shards: Vec<Value> = (first..last)
        .map(|shard| {
            json!({
                "ShardId": shard_id(shard),
                "SequenceNumberRange": {
                    "StartingSequenceNumber": format!("{:021}", sequence_number(shard, 0)),
                },
            })
        })
        .collect();
    let mut description = json!({
        "StreamArn": stream.arn,
        "StreamLabel": STREAM_LABEL,
        "StreamStatus": "ENABLED",
        "StreamViewType": "NEW_AND_OLD_IMAGES",
        "CreationRequestDateTime": 1_767_225_600,
        "TableName": stream.table,
        "KeySchema": [{ "AttributeName": "pk", "KeyType": "HASH" }],
        "Shards": shards,
    });
    if last < server.shards && !children_only {
        description["LastEvaluatedShardId"] = json!(shard_id(last - 1));
    }
    Ok(Answer::ok(&json!({ "StreamDescription": description })))
}

/// An iterator names the stream, the shard and the next record's index.
fn iterator(stream: usize, shard: u32, index: u64) -> String {
    format!("bench/{stream}/{shard}/{index}")
}

fn parse_iterator(text: &str) -> Option<(usize, u32, u64)> {
    let mut parts = text.strip_prefix("bench/")?.split('/');
    let stream = parts.next()?.parse().ok()?;
    let shard = parts.next()?.parse().ok()?;
    let index = parts.next()?.parse().ok()?;
    Some((stream, shard, index))
}

fn get_shard_iterator(server: &Server, input: &Value) -> Result<Answer, Answer> {
    let (stream_index, stream) = stream(server, field(input, "StreamArn")?)?;
    let shard = shard_index(field(input, "ShardId")?)
        .filter(|&s| s < server.shards)
        .ok_or_else(|| Answer::error("ResourceNotFoundException", "no such shard"))?;
    let index_of = |field_name: &str| -> Result<u64, Answer> {
        let text = field(input, field_name)?;
        let number: u64 = text
            .parse()
            .map_err(|_| Answer::error("ValidationException", "bad SequenceNumber"))?;
        Ok(number % SEQUENCE_SPAN)
    };
    let index = match field(input, "ShardIteratorType")? {
        "TRIM_HORIZON" => 0,
        "LATEST" => stream.records_per_shard,
        "AT_SEQUENCE_NUMBER" => index_of("SequenceNumber")?,
        "AFTER_SEQUENCE_NUMBER" => index_of("SequenceNumber")? + 1,
        other => {
            return Err(Answer::error(
                "ValidationException",
                &format!("unknown ShardIteratorType {other:?}"),
            ))
        }
    };
    Ok(Answer::ok(
        &json!({ "ShardIterator": iterator(stream_index, shard, index) }),
    ))
}

fn get_records(server: &Server, input: &Value) -> Result<Answer, Answer> {
    server.get_records_calls.fetch_add(1, Ordering::Relaxed);
    let (stream_index, shard, index) = parse_iterator(field(input, "ShardIterator")?)
        .filter(|(s, shard, _)| *s < server.streams.len() && *shard < server.shards)
        .ok_or_else(|| Answer::error("ValidationException", "not an iterator of this server"))?;
    let stream = &server.streams[stream_index];
    let limit = input
        .get("Limit")
        .and_then(Value::as_u64)
        .map_or(MAX_RECORDS_PER_PAGE, |l| l as usize);
    let left = stream.records_per_shard.saturating_sub(index);
    let count = (stream.template.records_per_page.min(limit) as u64).min(left);
    let mut body = Vec::with_capacity(64 + count as usize * (stream.template.bytes.len() + 1));
    body.extend_from_slice(b"{\"Records\":[");
    for i in 0..count {
        if i > 0 {
            body.push(b',');
        }
        stream.template.write(&mut body, shard, index + i);
    }
    body.extend_from_slice(b"],\"NextShardIterator\":\"");
    body.extend_from_slice(iterator(stream_index, shard, index + count).as_bytes());
    body.extend_from_slice(b"\"}");
    server.records_served.fetch_add(count, Ordering::Relaxed);
    Ok(Answer {
        status: StatusCode::OK,
        content_type: JSON_1_0,
        body,
    })
}

/// PutRecords' request: only the number of records matters here.
#[derive(Deserialize)]
struct PutRecordsRequest {
    #[serde(rename = "Records")]
    records: Vec<serde::de::IgnoredAny>,
}

/// Kinesis PutRecords: every record accepted, on one shard.
fn put_records(server: &Server, body: &[u8]) -> Answer {
    let Ok(request) = serde_json::from_slice::<PutRecordsRequest>(body) else {
        return Answer {
            status: StatusCode::BAD_REQUEST,
            content_type: JSON_1_1,
            body: br#"{"__type":"SerializationException","message":"not a PutRecords request"}"#
                .to_vec(),
        };
    };
    let count = request.records.len() as u64;
    let first = server.kinesis_records.fetch_add(count, Ordering::Relaxed);
    let mut body = Vec::with_capacity(40 + count as usize * 100);
    body.extend_from_slice(b"{\"FailedRecordCount\":0,\"Records\":[");
    for i in 0..count {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(
            format!(
                "{{\"SequenceNumber\":\"{:056}\",\"ShardId\":\"shardId-000000000000\"}}",
                first + i
            )
            .as_bytes(),
        );
    }
    body.extend_from_slice(b"]}");
    Answer {
        status: StatusCode::OK,
        content_type: JSON_1_1,
        body,
    }
}

/// What `GET /stats` answers.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct Stats {
    pub get_records_calls: u64,
    pub kinesis_records: u64,
}

/// The endpoint running as a child process of a scenario.
pub struct EndpointProcess {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    child: tokio::process::Child,
}

impl EndpointProcess {
    /// Starts `suite --endpoint` for `setup` and waits until it listens.
    pub async fn start(setup: &Setup) -> EndpointProcess {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new(std::env::current_exe().expect("own path"))
            .arg("--endpoint")
            .args(setup.to_args())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start the endpoint process");
        let stdout = child.stdout.take().expect("piped stdout");
        let line = tokio::io::BufReader::new(stdout)
            .lines()
            .next_line()
            .await
            .expect("read the endpoint's output")
            .expect("the endpoint exited before it listened");
        let url = line
            .strip_prefix("listening ")
            .unwrap_or_else(|| panic!("unexpected endpoint output: {line}"))
            .to_owned();
        EndpointProcess { url, child }
    }

    /// The process id, for `/proc`.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("the endpoint is running")
    }

    /// What the endpoint has served so far.
    pub async fn stats(&self) -> Stats {
        let body = crate::measure::http_get(&format!("{}/stats", self.url))
            .await
            .expect("the endpoint answers /stats");
        serde_json::from_str(&body).expect("stats are JSON")
    }
}

//! Shared support for the integration tests: a DynamoDB Local per test
//! binary, SDK clients pointed at it, tables with streams, and dynastream
//! worker processes whose output the tests read.
//!
//! DynamoDB Local slows down as stream data piles up, so each test binary (a
//! test group) starts its own fresh instance through `scripts/dynamodb-local`
//! and a watchdog stops it when the test process exits, however it exits.

#![allow(dead_code)]

pub mod fault_proxy;
pub mod scripted_streams;
pub mod wait;

// Each test binary uses its own subset.
#[allow(unused_imports)]
pub use wait::{eventually, eventually_every, lazy, poll, POLL, WAIT};

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType, StreamSpecification, StreamViewType,
};
use serde_json::Value;

/// A running DynamoDB Local.
pub struct DynamoDbLocal {
    /// Its endpoint URL.
    pub endpoint: String,
    /// Outlives this process on purpose: it stops DynamoDB Local once we are gone.
    _watchdog: Mutex<Child>,
}

/// The repository's root: scripts, adapters, dashboards and deploy files
/// the tests run or read.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A loopback port free at the time of asking, for a server the test starts.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// This test binary's DynamoDB Local, started on first use.
pub fn dynamodb_local() -> &'static DynamoDbLocal {
    static INSTANCE: OnceLock<DynamoDbLocal> = OnceLock::new();
    INSTANCE.get_or_init(|| {
        let (endpoint, watchdog) = start_local_service("dynamodb-local");
        DynamoDbLocal {
            endpoint,
            _watchdog: Mutex::new(watchdog),
        }
    })
}

/// Starts a local service through `scripts/<script> start --port auto` and
/// a watchdog that stops it when this test process ends, however it ends.
/// Returns the service's endpoint and the watchdog.
fn start_local_service(script: &str) -> (String, Child) {
    let script = repo().join("scripts").join(script);
    let output = Command::new(&script)
        .args(["start", "--port", "auto"])
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
    assert!(output.status.success(), "{} start failed", script.display());
    let endpoint = String::from_utf8(output.stdout)
        .expect("endpoint is text")
        .trim()
        .to_owned();
    let port = endpoint
        .rsplit(':')
        .next()
        .expect("endpoint has a port")
        .to_owned();
    let watchdog = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; '{script}' stop --port {port} >/dev/null 2>&1",
        pid = std::process::id(),
        script = script.display(),
    );
    let watchdog = Command::new("sh")
        .args(["-c", &watchdog])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the watchdog");
    (endpoint, watchdog)
}

/// A table name no other test uses.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}-{:08x}", rand::random::<u32>())
}

/// The environment a worker or SDK client needs to reach DynamoDB Local.
pub fn aws_env() -> Vec<(String, String)> {
    vec![
        ("AWS_ENDPOINT_URL".into(), dynamodb_local().endpoint.clone()),
        ("AWS_REGION".into(), "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID".into(), "local".into()),
        ("AWS_SECRET_ACCESS_KEY".into(), "local".into()),
        // Never ask the EC2 metadata service: tests talk only to loopback.
        ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
    ]
}

/// SDK configuration for a local service: its endpoint, us-east-1 and
/// static test credentials, nothing read from the environment.
async fn local_sdk_config(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "local", "local", None, None, "tests",
        ))
        .load()
        .await
}

/// An SDK client for DynamoDB Local.
pub async fn dynamodb() -> aws_sdk_dynamodb::Client {
    let local = dynamodb_local();
    let config = local_sdk_config(&local.endpoint).await;
    aws_sdk_dynamodb::Client::new(&config)
}

/// Creates a table keyed by `pk` (string) with a NEW_AND_OLD_IMAGES stream
/// and returns the stream's ARN.
pub async fn create_table(client: &aws_sdk_dynamodb::Client, name: &str) -> String {
    let answer = client
        .create_table()
        .table_name(name)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("pk")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("pk")
                .key_type(KeyType::Hash)
                .build()
                .unwrap(),
        )
        .billing_mode(BillingMode::PayPerRequest)
        .stream_specification(
            StreamSpecification::builder()
                .stream_enabled(true)
                .stream_view_type(StreamViewType::NewAndOldImages)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .expect("create table");
    answer
        .table_description()
        .and_then(|t| t.latest_stream_arn())
        .expect("the table has a stream")
        .to_owned()
}

/// Creates a table without a stream, keyed by the string attribute `key`.
pub async fn create_plain_table(client: &aws_sdk_dynamodb::Client, name: &str, key: &str) {
    client
        .create_table()
        .table_name(name)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name(key)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name(key)
                .key_type(KeyType::Hash)
                .build()
                .unwrap(),
        )
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await
        .expect("create table");
}

/// Puts an item `{pk: key, n: value}`.
pub async fn put(client: &aws_sdk_dynamodb::Client, table: &str, key: &str, value: i64) {
    client
        .put_item()
        .table_name(table)
        .item("pk", AttributeValue::S(key.into()))
        .item("n", AttributeValue::N(value.to_string()))
        .send()
        .await
        .expect("put item");
}

/// Puts a whole item.
pub async fn put_item(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    item: HashMap<String, AttributeValue>,
) {
    client
        .put_item()
        .table_name(table)
        .set_item(Some(item))
        .send()
        .await
        .expect("put item");
}

/// Deletes the item with key `key`.
pub async fn delete(client: &aws_sdk_dynamodb::Client, table: &str, key: &str) {
    client
        .delete_item()
        .table_name(table)
        .key("pk", AttributeValue::S(key.into()))
        .send()
        .await
        .expect("delete item");
}

/// A dynastream worker process.
pub struct Worker {
    child: Child,
    records: Arc<Mutex<Vec<Value>>>,
    arrivals: Arc<Mutex<Vec<tokio::time::Instant>>>,
    logs: Arc<Mutex<Vec<String>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

/// Settings for a worker: the AWS variables plus `settings`.
pub fn worker_env(settings: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env = aws_env();
    env.push(("DYNASTREAM_LOG_FORMAT".into(), "json".into()));
    // Many workers share this host: each serves its endpoints on a free port.
    env.push(("DYNASTREAM_METRICS_ADDR".into(), "127.0.0.1:0".into()));
    env.push(("DYNASTREAM_LOG".into(), "info".into()));
    env.extend(settings.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    env
}

impl Worker {
    /// Starts the built binary with exactly this environment (nothing inherited
    /// but PATH and HOME).
    pub fn start(env: &[(String, String)]) -> Worker {
        Worker::start_with_stdout(env, None)
    }

    /// Starts the built binary as [`Worker::start`] does, its standard output
    /// written to `stdout` when given (then [`Worker::records`] stays empty):
    /// how a benchmark measures the `stdout` processor without this process
    /// parsing every line.
    pub fn start_with_stdout(env: &[(String, String)], stdout: Option<std::fs::File>) -> Worker {
        let to_file = stdout.is_some();
        let mut command = Command::new(env!("CARGO_BIN_EXE_dynastream"));
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", std::env::temp_dir())
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(stdout.map_or_else(Stdio::piped, Stdio::from))
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("start dynastream");
        let records = Arc::new(Mutex::new(Vec::new()));
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let logs = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr piped");
        let out_records = Arc::clone(&records);
        let out_arrivals = Arc::clone(&arrivals);
        let out_logs = Arc::clone(&logs);
        let mut readers = Vec::new();
        if !to_file {
            let stdout = child.stdout.take().expect("stdout piped");
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    let value: Value = serde_json::from_str(&line)
                        .unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {line}"));
                    out_arrivals
                        .lock()
                        .unwrap()
                        .push(tokio::time::Instant::now());
                    out_records.lock().unwrap().push(value);
                }
            }));
        }
        readers.push(std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if std::env::var_os("DYNASTREAM_TEST_LOGS").is_some() {
                    eprintln!("[worker] {line}");
                }
                out_logs.lock().unwrap().push(line);
            }
        }));
        Worker {
            child,
            records,
            arrivals,
            logs,
            readers,
        }
    }

    /// The records received so far.
    pub fn records(&self) -> Vec<Value> {
        self.records.lock().unwrap().clone()
    }

    /// When each record of [`Worker::records`] was read from the worker's
    /// stdout, in the same order.
    pub fn arrival_times(&self) -> Vec<tokio::time::Instant> {
        self.arrivals.lock().unwrap().clone()
    }

    /// The log lines so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// Waits until at least `count` records arrived; panics with the logs after `timeout`.
    pub async fn wait_for_records(&self, count: usize, timeout: Duration) -> Vec<Value> {
        let what = lazy(|| {
            let records = self.records();
            format!(
                "{count} records, got {}: {records:#?}\nlogs:\n{}",
                records.len(),
                self.logs().join("\n")
            )
        });
        eventually(timeout, what, || async {
            let records = self.records();
            (records.len() >= count).then_some(records)
        })
        .await
    }

    /// Waits until `count` log lines contain `needle`.
    pub async fn wait_for_log(&self, needle: &str, count: usize, timeout: Duration) {
        let found = || self.logs().iter().filter(|l| l.contains(needle)).count();
        let what = lazy(|| {
            format!(
                "{count} log lines with {needle:?}, got {}\nlogs:\n{}",
                found(),
                self.logs().join("\n")
            )
        });
        eventually(timeout, what, || async { found() >= count }).await
    }

    /// The base URL of the worker's metrics and health endpoints, from its
    /// start-up log line.
    pub async fn endpoints(&self) -> String {
        self.wait_for_log(
            "metrics and health endpoints listening",
            1,
            Duration::from_secs(30),
        )
        .await;
        let line = self
            .logs()
            .into_iter()
            .find(|l| l.contains("metrics and health endpoints listening"))
            .expect("the line was just seen");
        let value: Value = serde_json::from_str(&line).expect("JSON log line");
        format!("http://{}", value["addr"].as_str().expect("addr field"))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub async fn terminate(mut self) -> (ExitStatus, Vec<Value>, Vec<String>) {
        signal(self.child.id(), "TERM");
        self.wait(Duration::from_secs(30)).await
    }

    /// Sends SIGKILL and waits for the process to exit.
    pub async fn kill(mut self) -> (ExitStatus, Vec<Value>, Vec<String>) {
        signal(self.child.id(), "KILL");
        self.wait(Duration::from_secs(30)).await
    }

    /// Waits for the process to exit by itself.
    pub async fn wait(&mut self, timeout: Duration) -> (ExitStatus, Vec<Value>, Vec<String>) {
        // On a timeout the panic drops `self`, which kills the process.
        let logs = &self.logs;
        let what = lazy(|| {
            format!(
                "dynastream to exit\nlogs:\n{}",
                logs.lock().unwrap().join("\n")
            )
        });
        let child = &mut self.child;
        let status = eventually(timeout, what, || {
            let exited = child.try_wait().expect("wait for dynastream");
            async move { exited }
        })
        .await;
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        (status, self.records(), self.logs())
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Sends signal `name` (`TERM`, `KILL`, `STOP`, ...) to process `pid`.
pub fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} {pid}");
}

/// (HTTP status, body) of a GET, through curl; status 0 when nothing answered
/// within 2 s.
pub fn http_get(url: &str) -> (u16, String) {
    let output = Command::new("curl")
        .args(["-s", "-m", "2", "-w", "\n%{http_code}", url])
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// Waits until `url` answers with status `expected`.
pub async fn wait_for_http(url: &str, expected: u16) {
    let what = format!("{url} to answer {expected}");
    eventually(WAIT, what, || async {
        match http_get(url).0 {
            code if code == expected => Ok(()),
            code => Err(code),
        }
    })
    .await
}

/// The value of a Prometheus sample line `name{labels} value` whose text
/// contains every needle.
pub fn sample(metrics: &str, name: &str, needles: &[&str]) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && needles.iter().all(|n| l.contains(n)))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

/// The `pk` string of each record's keys, in order.
pub fn keys_of(records: &[Value]) -> Vec<String> {
    records
        .iter()
        .map(|r| {
            r["dynamodb"]["Keys"]["pk"]["S"]
                .as_str()
                .unwrap_or("?")
                .to_owned()
        })
        .collect()
}

/// An SDK client for DynamoDB Local's streams.
pub async fn dynamodb_streams() -> aws_sdk_dynamodbstreams::Client {
    let local = dynamodb_local();
    let config = local_sdk_config(&local.endpoint).await;
    aws_sdk_dynamodbstreams::Client::new(&config)
}

/// The single shard of a DynamoDB Local stream and the sequence numbers of
/// the records it holds, read from TRIM_HORIZON.
pub async fn shard_and_sequence_numbers(stream_arn: &str) -> (String, Vec<String>) {
    use aws_sdk_dynamodbstreams::types::ShardIteratorType;
    let client = dynamodb_streams().await;
    let description = client
        .describe_stream()
        .stream_arn(stream_arn)
        .send()
        .await
        .expect("describe stream");
    let shard_id = description
        .stream_description()
        .and_then(|d| d.shards().first())
        .and_then(|s| s.shard_id())
        .expect("a shard")
        .to_owned();
    let mut iterator = client
        .get_shard_iterator()
        .stream_arn(stream_arn)
        .shard_id(&shard_id)
        .shard_iterator_type(ShardIteratorType::TrimHorizon)
        .send()
        .await
        .expect("get shard iterator")
        .shard_iterator;
    let mut sequence_numbers = Vec::new();
    while let Some(current) = iterator.take() {
        let page = client
            .get_records()
            .shard_iterator(current)
            .send()
            .await
            .expect("get records");
        let records = page.records();
        if records.is_empty() {
            break;
        }
        sequence_numbers.extend(
            records
                .iter()
                .filter_map(|r| r.dynamodb().and_then(|d| d.sequence_number()))
                .map(str::to_owned),
        );
        iterator = page.next_shard_iterator;
    }
    (shard_id, sequence_numbers)
}

/// The owner of each shard lease in `store`, by lease key; empty until a
/// worker has created the lease table.
pub async fn lease_owners(
    store: &dynastream::lease::dynamo::DynamoLeaseStore,
) -> std::collections::BTreeMap<String, Option<String>> {
    use dynastream::lease::{ItemKind, LeaseError, LeaseStore};
    let scan = match store.list_leases().await {
        Ok(scan) => scan,
        Err(LeaseError::TableNotFound { .. }) => return Default::default(),
        Err(err) => panic!("scan the lease table: {err}"),
    };
    scan.leases
        .into_iter()
        .filter(|l| l.kind() == ItemKind::Shard)
        .map(|l| (l.key, l.owner))
        .collect()
}

/// Runs `dynastream status` with `args` for `application`, against DynamoDB Local.
pub fn dynastream_status(application: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_dynastream"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(aws_env())
        .env("DYNASTREAM_APPLICATION", application)
        .arg("status")
        .args(args)
        .output()
        .expect("run dynastream status")
}

/// A lease store over `table` in DynamoDB Local.
pub async fn lease_store(table: &str) -> dynastream::lease::dynamo::DynamoLeaseStore {
    dynastream::lease::dynamo::DynamoLeaseStore::new(dynamodb().await, table)
}

/// This test binary's local AWS services (moto's server: SQS, SNS,
/// EventBridge, Kinesis, Firehose, S3, Step Functions, ... on one port, with
/// the fault hook of `tools/aws_local`), started on first use through
/// `scripts/aws-local` and stopped by a watchdog when the test process ends.
pub fn aws_local() -> &'static str {
    static INSTANCE: OnceLock<(String, Mutex<Child>)> = OnceLock::new();
    let (endpoint, _) = INSTANCE.get_or_init(|| {
        let (endpoint, watchdog) = start_local_service("aws-local");
        (endpoint, Mutex::new(watchdog))
    });
    endpoint
}

/// SDK configuration for the local AWS services.
pub async fn aws_local_config() -> aws_config::SdkConfig {
    local_sdk_config(aws_local()).await
}

/// An SDK client for the local SQS server.
pub async fn sqs() -> aws_sdk_sqs::Client {
    aws_sdk_sqs::Client::new(&aws_local_config().await)
}

/// The SDK's service-specific endpoint variables pointing every service but
/// DynamoDB at the local AWS services.
pub fn aws_local_env() -> Vec<(String, String)> {
    [
        "SQS",
        "SNS",
        "EVENTBRIDGE",
        "KINESIS",
        "FIREHOSE",
        "S3",
        "SFN",
    ]
    .iter()
    .map(|service| {
        (
            format!("AWS_ENDPOINT_URL_{service}"),
            aws_local().to_owned(),
        )
    })
    .collect()
}

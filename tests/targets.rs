//! The delivery targets end to end: the built binary reads DynamoDB Local's
//! stream and delivers to a real local implementation of each service's
//! API (moto's server for SQS, SNS, EventBridge, Kinesis, Firehose, S3 and
//! Step Functions; `tools/lambda_local` for Lambda's Invoke, running a
//! handler through the Python adapter). Each target test writes an INSERT,
//! a MODIFY and a REMOVE and reads back exactly those three from the
//! service. Partial failures come from the fault hook of `tools/aws_local`,
//! which keeps an entry from moto and reports it failed in the service's
//! own answer shape.

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use serde_json::{json, Value};
use support::*;

/// A worker reading `table` from its start and delivering with `processor`.
fn start_worker(table: &str, processor: &str, settings: &[(&str, &str)]) -> Worker {
    let mut env = worker_env(&[
        ("DYNASTREAM_TABLES", table),
        ("DYNASTREAM_APPLICATION", &unique_name("targets-app")),
        ("DYNASTREAM_STARTING_POSITION", "TRIM_HORIZON"),
        ("DYNASTREAM_PROCESSOR", processor),
        ("DYNASTREAM_MAX_RETRY_ATTEMPTS", "-1"),
    ]);
    env.extend(aws_local_env());
    env.extend(settings.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Worker::start(&env)
}

/// A table with a stream, and an INSERT, a MODIFY and a REMOVE of `key`.
async fn table_with_three_changes(key: &str) -> String {
    let client = dynamodb().await;
    let table = unique_name("targets");
    create_table(&client, &table).await;
    put(&client, &table, key, 1).await;
    put(&client, &table, key, 2).await;
    delete(&client, &table, key).await;
    table
}

/// Receives (and deletes) messages until `count` arrived or the wait ends.
async fn receive(sqs: &aws_sdk_sqs::Client, queue_url: &str, count: usize) -> Vec<Value> {
    let bodies = std::sync::Mutex::new(Vec::new());
    let _ = poll(POLL, WAIT, || async {
        let answer = sqs
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
            .expect("receive");
        for message in answer.messages.unwrap_or_default() {
            let body: Value = serde_json::from_str(message.body().unwrap()).expect("JSON body");
            bodies.lock().unwrap().push(body);
            sqs.delete_message()
                .queue_url(queue_url)
                .receipt_handle(message.receipt_handle().unwrap())
                .send()
                .await
                .expect("delete");
        }
        bodies.lock().unwrap().len() >= count
    })
    .await;
    bodies.into_inner().unwrap()
}

/// Nothing more arrives for a moment: what was received is all there is.
async fn assert_nothing_more(sqs: &aws_sdk_sqs::Client, queue_url: &str) {
    let more = sqs
        .receive_message()
        .queue_url(queue_url)
        .max_number_of_messages(10)
        .wait_time_seconds(2)
        .send()
        .await
        .expect("receive");
    assert!(
        more.messages.unwrap_or_default().is_empty(),
        "more messages than records"
    );
}

async fn create_queue(sqs: &aws_sdk_sqs::Client, fifo: bool) -> (String, String) {
    let name = unique_name("q") + if fifo { ".fifo" } else { "" };
    let mut call = sqs.create_queue().queue_name(&name);
    if fifo {
        call = call.attributes(aws_sdk_sqs::types::QueueAttributeName::FifoQueue, "true");
    }
    let url = call.send().await.expect("create queue").queue_url.unwrap();
    let arn = sqs
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .expect("queue attributes")
        .attributes
        .unwrap()[&aws_sdk_sqs::types::QueueAttributeName::QueueArn]
        .clone();
    (url, arn)
}

fn event_names(records: &[Value], field: &str) -> Vec<String> {
    records
        .iter()
        .map(|r| r[field].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Sorts documents or Lambda records by sequence number, as numbers.
fn by_sequence(mut records: Vec<Value>) -> Vec<Value> {
    let sequence = |r: &Value| {
        let text = r["sequenceNumber"]
            .as_str()
            .or_else(|| r["dynamodb"]["SequenceNumber"].as_str())
            .unwrap_or_default()
            .to_owned();
        (text.len(), text)
    };
    records.sort_by_key(sequence);
    records
}

async fn stop(worker: Worker) -> Vec<String> {
    let (status, _, logs) = worker.terminate().await;
    assert!(status.success(), "{}", logs.join("\n"));
    logs
}

fn assert_three_documents(records: &[Value], table: &str, key: &str) {
    assert_eq!(
        event_names(records, "eventName"),
        ["INSERT", "MODIFY", "REMOVE"]
    );
    for record in records {
        assert_eq!(record["table"], table);
        assert_eq!(record["keys"], json!({ "pk": key }));
    }
    assert_eq!(records[0]["newImage"], json!({"pk": key, "n": 1}));
    assert!(records[0].get("oldImage").is_none());
    assert_eq!(records[1]["oldImage"]["n"], 1);
    assert_eq!(records[1]["newImage"]["n"], 2);
    assert!(records[2].get("newImage").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_gets_each_change_as_a_document() {
    let sqs = sqs().await;
    let (queue_url, _) = create_queue(&sqs, false).await;
    let table = table_with_three_changes("doc-1").await;
    let worker = start_worker(
        &table,
        &format!("sqs://{queue_url}"),
        &[("DYNASTREAM_FORMAT", "document")],
    );
    let records = by_sequence(receive(&sqs, &queue_url, 3).await);
    assert_nothing_more(&sqs, &queue_url).await;
    stop(worker).await;
    assert_eq!(records.len(), 3, "{records:?}");
    assert_three_documents(&records, &table, "doc-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_queue_gets_every_item_in_order_without_duplicates() {
    let sqs = sqs().await;
    let (queue_url, _) = create_queue(&sqs, true).await;
    let client = dynamodb().await;
    let table = unique_name("fifo");
    create_table(&client, &table).await;
    for change in 1..=20 {
        for item in 0..5 {
            put(&client, &table, &format!("item-{item}"), change).await;
        }
    }
    let worker = start_worker(
        &table,
        &format!("sqs://{queue_url}"),
        &[
            ("DYNASTREAM_PARALLELIZATION_FACTOR", "10"),
            ("DYNASTREAM_BATCH_SIZE", "25"),
        ],
    );
    let received = receive(&sqs, &queue_url, 100).await;
    assert_nothing_more(&sqs, &queue_url).await;
    stop(worker).await;
    assert_eq!(received.len(), 100, "every change once");
    let mut per_item: HashMap<String, Vec<i64>> = HashMap::new();
    for record in &received {
        let key = record["dynamodb"]["Keys"]["pk"]["S"]
            .as_str()
            .unwrap()
            .to_owned();
        let n: i64 = record["dynamodb"]["NewImage"]["n"]["N"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        per_item.entry(key).or_default().push(n);
    }
    assert_eq!(per_item.len(), 5);
    for (item, changes) in per_item {
        assert_eq!(changes, (1..=20).collect::<Vec<_>>(), "{item} in order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sns_publishes_each_change_with_filterable_attributes() {
    let config = aws_local_config().await;
    let sns = aws_sdk_sns::Client::new(&config);
    let sqs = sqs().await;
    let (queue_url, queue_arn) = create_queue(&sqs, false).await;
    let topic_arn = sns
        .create_topic()
        .name(unique_name("topic"))
        .send()
        .await
        .expect("create topic")
        .topic_arn
        .unwrap();
    sns.subscribe()
        .topic_arn(&topic_arn)
        .protocol("sqs")
        .endpoint(&queue_arn)
        .send()
        .await
        .expect("subscribe");
    let table = table_with_three_changes("sns-1").await;
    let worker = start_worker(&table, &format!("sns://{topic_arn}"), &[]);
    let envelopes = receive(&sqs, &queue_url, 3).await;
    assert_nothing_more(&sqs, &queue_url).await;
    stop(worker).await;
    assert_eq!(envelopes.len(), 3);
    let mut records = Vec::new();
    for envelope in &envelopes {
        let record: Value = serde_json::from_str(envelope["Message"].as_str().unwrap()).unwrap();
        let attributes = &envelope["MessageAttributes"];
        assert_eq!(attributes["eventName"]["Value"], record["eventName"]);
        assert_eq!(attributes["table"]["Value"], table.as_str());
        records.push(record);
    }
    let records = by_sequence(records);
    assert_eq!(
        event_names(&records, "eventName"),
        ["INSERT", "MODIFY", "REMOVE"]
    );
    assert_eq!(records[0]["dynamodb"]["NewImage"]["n"], json!({"N": "1"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eventbridge_puts_each_change_as_an_event_rules_can_route() {
    let config = aws_local_config().await;
    let events = aws_sdk_eventbridge::Client::new(&config);
    let sqs = sqs().await;
    let (queue_url, queue_arn) = create_queue(&sqs, false).await;
    let bus = unique_name("bus");
    events
        .create_event_bus()
        .name(&bus)
        .send()
        .await
        .expect("bus");
    let rule = unique_name("rule");
    events
        .put_rule()
        .name(&rule)
        .event_bus_name(&bus)
        .event_pattern(r#"{"source":["shop.orders"]}"#)
        .send()
        .await
        .expect("rule");
    events
        .put_targets()
        .rule(&rule)
        .event_bus_name(&bus)
        .targets(
            aws_sdk_eventbridge::types::Target::builder()
                .id("queue")
                .arn(&queue_arn)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .expect("targets");
    let table = table_with_three_changes("eb-1").await;
    let worker = start_worker(
        &table,
        &format!("eventbridge://{bus}?source=shop.orders"),
        &[("DYNASTREAM_FORMAT", "document")],
    );
    let received = receive(&sqs, &queue_url, 3).await;
    assert_nothing_more(&sqs, &queue_url).await;
    stop(worker).await;
    assert_eq!(received.len(), 3);
    for event in &received {
        assert_eq!(event["source"], "shop.orders");
        assert_eq!(event["detail-type"], event["detail"]["eventName"]);
    }
    let details = by_sequence(received.iter().map(|e| e["detail"].clone()).collect());
    assert_three_documents(&details, &table, "eb-1");
}

/// What `read` returns once it holds `count` items (or the wait ran out),
/// read again a second later so that anything extra would show.
async fn settled<T, F, R>(count: usize, read: F) -> Vec<T>
where
    F: Fn() -> R,
    R: std::future::Future<Output = Vec<T>>,
{
    let every = Duration::from_millis(500);
    let _ = poll(every, WAIT, || async { read().await.len() >= count }).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    read().await
}

/// Every record of every shard of a Kinesis stream.
async fn kinesis_records(kinesis: &aws_sdk_kinesis::Client, stream: &str) -> Vec<(String, Value)> {
    let shards = kinesis
        .list_shards()
        .stream_name(stream)
        .send()
        .await
        .expect("list shards")
        .shards
        .unwrap_or_default();
    let mut records = Vec::new();
    for shard in shards {
        let mut iterator = kinesis
            .get_shard_iterator()
            .stream_name(stream)
            .shard_id(shard.shard_id())
            .shard_iterator_type(aws_sdk_kinesis::types::ShardIteratorType::TrimHorizon)
            .send()
            .await
            .expect("iterator")
            .shard_iterator;
        while let Some(current) = iterator {
            let page = kinesis
                .get_records()
                .shard_iterator(current)
                .send()
                .await
                .expect("get records");
            if page.records().is_empty() {
                break;
            }
            for record in page.records() {
                records.push((
                    record.partition_key().unwrap_or_default().to_owned(),
                    serde_json::from_slice(record.data().as_ref()).expect("JSON data"),
                ));
            }
            iterator = page.next_shard_iterator;
        }
    }
    records
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kinesis_gets_each_change_keyed_by_its_item() {
    let kinesis = aws_sdk_kinesis::Client::new(&aws_local_config().await);
    let stream = unique_name("changes");
    kinesis
        .create_stream()
        .stream_name(&stream)
        .shard_count(2)
        .send()
        .await
        .expect("create stream");
    let table = table_with_three_changes("kin-1").await;
    let worker = start_worker(
        &table,
        &format!("kinesis://{stream}"),
        &[("DYNASTREAM_FORMAT", "document")],
    );
    let records = settled(3, || kinesis_records(&kinesis, &stream)).await;
    stop(worker).await;
    assert_eq!(records.len(), 3, "{records:?}");
    assert!(records
        .iter()
        .all(|(key, _)| *key == format!("{table}/kin-1")));
    let documents: Vec<Value> = records.into_iter().map(|(_, d)| d).collect();
    // One item's changes share a partition key, so Kinesis keeps their order.
    assert_three_documents(&documents, &table, "kin-1");
}

/// Every line of every object in `bucket`, with the objects' keys.
async fn s3_lines(s3: &aws_sdk_s3::Client, bucket: &str) -> (Vec<String>, Vec<Value>) {
    let listing = s3
        .list_objects_v2()
        .bucket(bucket)
        .send()
        .await
        .expect("list objects");
    let mut keys = Vec::new();
    let mut lines = Vec::new();
    for object in listing.contents() {
        let key = object.key().unwrap().to_owned();
        let body = s3
            .get_object()
            .bucket(bucket)
            .key(&key)
            .send()
            .await
            .expect("get object")
            .body
            .collect()
            .await
            .unwrap()
            .into_bytes();
        let text = if key.ends_with(".gz") {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&body[..]), &mut text)
                .expect("gzip");
            text
        } else {
            String::from_utf8(body.to_vec()).unwrap()
        };
        lines.extend(
            text.lines()
                .map(|l| serde_json::from_str::<Value>(l).expect("JSON line")),
        );
        keys.push(key);
    }
    (keys, lines)
}

async fn s3_client() -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::config::Builder::from(&aws_local_config().await)
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

async fn create_bucket(s3: &aws_sdk_s3::Client) -> String {
    let bucket = unique_name("bucket");
    s3.create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .expect("bucket");
    bucket
}

/// A delivery stream writing to `bucket`.
async fn create_delivery_stream(name: &str, bucket: &str) {
    aws_sdk_firehose::Client::new(&aws_local_config().await)
        .create_delivery_stream()
        .delivery_stream_name(name)
        .extended_s3_destination_configuration(
            aws_sdk_firehose::types::ExtendedS3DestinationConfiguration::builder()
                .bucket_arn(format!("arn:aws:s3:::{bucket}"))
                .role_arn("arn:aws:iam::123456789012:role/firehose")
                .build()
                .unwrap(),
        )
        .send()
        .await
        .expect("create delivery stream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firehose_delivers_each_change_as_a_line_to_s3() {
    let s3 = s3_client().await;
    let bucket = create_bucket(&s3).await;
    let delivery_stream = unique_name("to-lake");
    create_delivery_stream(&delivery_stream, &bucket).await;
    let table = table_with_three_changes("fh-1").await;
    let worker = start_worker(
        &table,
        &format!("firehose://{delivery_stream}"),
        &[("DYNASTREAM_FORMAT", "document")],
    );
    let lines = by_sequence(settled(3, || async { s3_lines(&s3, &bucket).await.1 }).await);
    stop(worker).await;
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_three_documents(&lines, &table, "fh-1");
}

/// An exec child that fails the first batch it sees, then succeeds: the
/// batch is retried through every processor of the worker.
fn fail_first_batch(dir: &Path) -> String {
    let marker = dir.join("failed-once");
    let calls = dir.join("calls");
    format!(
        "while read -r line; do echo x >> '{calls}'; if [ -e '{m}' ]; then echo null; \
         else touch '{m}'; echo '{{\"errorMessage\":\"first try fails\"}}'; fi; done",
        m = marker.display(),
        calls = calls.display()
    )
}

/// Stops `worker` once its `fail_first_batch` child has seen the batch twice.
async fn stop_after_a_retry(worker: Worker, dir: &Path) {
    let _ = poll(POLL, WAIT, || async { exec_calls(dir) >= 2 }).await;
    stop(worker).await;
    assert!(exec_calls(dir) >= 2, "the batch was retried");
}

fn exec_calls(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("calls"))
        .unwrap_or_default()
        .lines()
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_writes_one_object_per_batch_and_a_retry_replaces_its_own() {
    let s3 = s3_client().await;
    let bucket = create_bucket(&s3).await;
    let table = table_with_three_changes("s3-1").await;
    let dir = tempfile::tempdir().unwrap();
    let worker = start_worker(
        &table,
        &format!("s3://{bucket}/cdc/?gzip=true,exec"),
        &[
            ("DYNASTREAM_EXEC_COMMAND", &fail_first_batch(dir.path())),
            ("DYNASTREAM_FORMAT", "document"),
            ("DYNASTREAM_BATCH_WINDOW_MS", "1000"),
        ],
    );
    stop_after_a_retry(worker, dir.path()).await;
    let (keys, lines) = s3_lines(&s3, &bucket).await;
    assert_eq!(keys.len(), 1, "one object, not one per attempt: {keys:?}");
    let key = &keys[0];
    let pattern = format!("cdc/{table}/");
    assert!(
        key.starts_with(&pattern) && key.ends_with(".jsonl.gz"),
        "{key}"
    );
    // <prefix><table>/<yyyy>/<mm>/<dd>/<HH>/<shardId>-<first>-<last>.jsonl.gz
    let parts: Vec<&str> = key[pattern.len()..].split('/').collect();
    assert_eq!(parts.len(), 5, "{key}");
    assert!(parts[..4]
        .iter()
        .all(|p| p.chars().all(|c| c.is_ascii_digit())));
    assert!(parts[4].starts_with("shardId-"), "{key}");
    let lines = by_sequence(lines);
    assert_eq!(lines.len(), 3);
    assert_three_documents(&lines, &table, "s3-1");
    let first = lines[0]["sequenceNumber"].as_str().unwrap();
    let last = lines[2]["sequenceNumber"].as_str().unwrap();
    assert!(
        parts[4].ends_with(&format!("-{first}-{last}.jsonl.gz")),
        "{key}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_functions_starts_one_execution_per_batch_even_when_retried() {
    let sfn = aws_sdk_sfn::Client::new(&aws_local_config().await);
    let machine = sfn
        .create_state_machine()
        .name(unique_name("flow"))
        .definition(r#"{"StartAt":"Done","States":{"Done":{"Type":"Pass","End":true}}}"#)
        .role_arn("arn:aws:iam::123456789012:role/flow")
        .send()
        .await
        .expect("create state machine")
        .state_machine_arn;
    let table = table_with_three_changes("sf-1").await;
    let dir = tempfile::tempdir().unwrap();
    let worker = start_worker(
        &table,
        &format!("states://{machine},exec"),
        &[
            ("DYNASTREAM_EXEC_COMMAND", &fail_first_batch(dir.path())),
            ("DYNASTREAM_BATCH_WINDOW_MS", "1000"),
        ],
    );
    stop_after_a_retry(worker, dir.path()).await;
    let executions = sfn
        .list_executions()
        .state_machine_arn(&machine)
        .send()
        .await
        .expect("list executions")
        .executions;
    assert_eq!(executions.len(), 1, "one execution, not one per attempt");
    let input = sfn
        .describe_execution()
        .execution_arn(executions[0].execution_arn())
        .send()
        .await
        .expect("describe execution")
        .input
        .unwrap();
    let event: Value = serde_json::from_str(&input).unwrap();
    let records = event["Records"].as_array().unwrap();
    assert_eq!(
        event_names(records, "eventName"),
        ["INSERT", "MODIFY", "REMOVE"]
    );
}

/// The local Lambda endpoint running `tools/lambda_local/recording_handler.py`
/// through the Python adapter, writing each record it gets to `records`.
struct LocalLambda {
    endpoint: String,
    process: std::process::Child,
}

impl LocalLambda {
    fn start(records: &Path, function: &str) -> LocalLambda {
        let root = repo();
        let mut process = std::process::Command::new("python3")
            .arg(root.join("tools/lambda_local/server.py"))
            .args(["--port", "0", "--handler", "recording_handler.handler"])
            .arg("--path")
            .arg(root.join("tools/lambda_local"))
            .args(["--function", function])
            .env("RECORDS_FILE", records)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("start the local Lambda endpoint");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(process.stdout.take().unwrap()),
            &mut line,
        )
        .expect("endpoint line");
        let endpoint = serde_json::from_str::<Value>(&line).expect("endpoint JSON")["endpoint"]
            .as_str()
            .unwrap()
            .to_owned();
        LocalLambda { endpoint, process }
    }
}

impl Drop for LocalLambda {
    fn drop(&mut self) {
        signal(self.process.id(), "TERM");
        let _ = self.process.wait();
    }
}

/// Waits (at most [`WAIT`]) until the failure destination `path` holds a
/// line; the test's own assertions say what is wrong when it never does.
async fn wait_for_failed_lines(path: &Path) {
    let _ = poll(POLL, WAIT, || async { !lines_of(path).is_empty() }).await;
}

fn lines_of(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lambda_invokes_an_unmodified_handler_and_honours_batch_item_failures() {
    let dir = tempfile::tempdir().unwrap();
    let records_file = dir.path().join("records.jsonl");
    let failed_file = dir.path().join("failed.jsonl");
    let lambda = LocalLambda::start(&records_file, "orders-handler");
    let client = dynamodb().await;
    let table = unique_name("lambda");
    create_table(&client, &table).await;
    put(&client, &table, "la-1", 1).await;
    put(&client, &table, "la-1", 2).await;
    delete(&client, &table, "la-1").await;
    // A record the handler names in batchItemFailures every time.
    put_item(
        &client,
        &table,
        HashMap::from([
            ("pk".to_owned(), AttributeValue::S("la-bad".into())),
            ("fail".to_owned(), AttributeValue::S("item".into())),
        ]),
    )
    .await;
    let worker = start_worker(
        &table,
        "lambda://orders-handler",
        &[
            ("AWS_ENDPOINT_URL_LAMBDA", &lambda.endpoint),
            ("DYNASTREAM_MAX_RETRY_ATTEMPTS", "1"),
            (
                "DYNASTREAM_ON_FAILURE",
                &format!("file://{}", failed_file.display()),
            ),
        ],
    );
    wait_for_failed_lines(&failed_file).await;
    stop(worker).await;
    let delivered = lines_of(&records_file);
    let keys: Vec<&str> = delivered
        .iter()
        .map(|r| r["dynamodb"]["Keys"]["pk"]["S"].as_str().unwrap())
        .collect();
    assert_eq!(
        event_names(&delivered[..3], "eventName"),
        ["INSERT", "MODIFY", "REMOVE"],
        "{delivered:?}"
    );
    assert!(keys[..3].iter().all(|k| *k == "la-1"));
    assert!(!keys.contains(&"la-bad"), "the handler never accepted it");
    let failed = lines_of(&failed_file);
    assert_eq!(failed.len(), 1);
    assert_eq!(
        failed[0]["records"][0]["dynamodb"]["Keys"]["pk"]["S"],
        "la-bad"
    );
    assert_eq!(failed[0]["attempts"], 2);
}

/// Arms the fault hook: entries holding `marker` fail once each.
fn fail_entries_once(marker: &str) {
    let body = json!({"marker": marker, "times": 1, "code": "InternalError"}).to_string();
    let status = std::process::Command::new("curl")
        .args([
            "-fsS",
            "-o",
            "/dev/null",
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
        ])
        .args(["--data", &body])
        .arg(format!("{}/_faults", aws_local()))
        .status()
        .expect("curl");
    assert!(status.success(), "arm the fault hook");
}

/// The batch requests of `api` the fault hook saw carrying the armed
/// marker (other tests' requests run beside them), as (entries, failed).
fn marked_requests(api: &str) -> Vec<(u64, u64)> {
    let (status, body) = http_get(&format!("{}/_faults/requests", aws_local()));
    assert_eq!(status, 200, "{body}");
    serde_json::from_str::<Vec<Value>>(&body)
        .unwrap()
        .into_iter()
        .filter(|r| r["api"] == api && r["marked"].as_u64().unwrap_or(0) > 0)
        .map(|r| {
            (
                r["entries"].as_u64().unwrap(),
                r["failed"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Writes three items in one go, the middle one carrying `marker`.
async fn three_items_one_marked(table: &str, marker: &str) {
    let client = dynamodb().await;
    for (key, note) in [("pf-a", "plain"), ("pf-b", marker), ("pf-c", "plain")] {
        put_item(
            &client,
            table,
            HashMap::from([
                ("pk".to_owned(), AttributeValue::S(key.into())),
                ("note".to_owned(), AttributeValue::S(note.into())),
            ]),
        )
        .await;
    }
}

/// Where a target's records end up, and how a test reads them back.
enum Sink {
    /// An SQS queue (the target itself, or subscribed to a topic or a rule).
    Queue(String),
    /// An SQS queue a rule delivers whole events to: the records are their details.
    EventQueue(String),
    Kinesis(String),
    /// A bucket (Firehose's destination).
    Bucket(String),
}

impl Sink {
    async fn read(&self, count: usize) -> Vec<Value> {
        match self {
            Sink::Queue(url) => receive(&sqs().await, url, count).await,
            Sink::EventQueue(url) => receive(&sqs().await, url, count)
                .await
                .into_iter()
                .map(|event| event["detail"].clone())
                .collect(),
            Sink::Kinesis(stream) => {
                let kinesis = aws_sdk_kinesis::Client::new(&aws_local_config().await);
                kinesis_records(&kinesis, stream)
                    .await
                    .into_iter()
                    .map(|(_, record)| record)
                    .collect()
            }
            Sink::Bucket(bucket) => s3_lines(&s3_client().await, bucket).await.1,
        }
    }
}

/// A new target of kind `target` (its URI, the batch API's name, and where
/// its records end up).
async fn new_target(target: &str) -> (String, &'static str, Sink) {
    let config = aws_local_config().await;
    let sqs = sqs().await;
    match target {
        "sqs" => {
            let (url, _) = create_queue(&sqs, false).await;
            (format!("sqs://{url}"), "SendMessageBatch", Sink::Queue(url))
        }
        "sns" => {
            let sns = aws_sdk_sns::Client::new(&config);
            let (url, arn) = create_queue(&sqs, false).await;
            let topic = sns
                .create_topic()
                .name(unique_name("pf"))
                .send()
                .await
                .unwrap()
                .topic_arn
                .unwrap();
            sns.subscribe()
                .topic_arn(&topic)
                .protocol("sqs")
                .endpoint(arn)
                .attributes("RawMessageDelivery", "true")
                .send()
                .await
                .unwrap();
            (format!("sns://{topic}"), "PublishBatch", Sink::Queue(url))
        }
        "eventbridge" => {
            let events = aws_sdk_eventbridge::Client::new(&config);
            let (url, arn) = create_queue(&sqs, false).await;
            let bus = unique_name("pf");
            events.create_event_bus().name(&bus).send().await.unwrap();
            let rule = unique_name("pf");
            events
                .put_rule()
                .name(&rule)
                .event_bus_name(&bus)
                .event_pattern(r#"{"source":["dynastream"]}"#)
                .send()
                .await
                .unwrap();
            events
                .put_targets()
                .rule(&rule)
                .event_bus_name(&bus)
                .targets(
                    aws_sdk_eventbridge::types::Target::builder()
                        .id("q")
                        .arn(arn)
                        .build()
                        .unwrap(),
                )
                .send()
                .await
                .unwrap();
            (
                format!("eventbridge://{bus}"),
                "PutEvents",
                Sink::EventQueue(url),
            )
        }
        "kinesis" => {
            let stream = unique_name("pf");
            aws_sdk_kinesis::Client::new(&config)
                .create_stream()
                .stream_name(&stream)
                .shard_count(1)
                .send()
                .await
                .unwrap();
            (
                format!("kinesis://{stream}"),
                "PutRecords",
                Sink::Kinesis(stream),
            )
        }
        "firehose" => {
            let bucket = create_bucket(&s3_client().await).await;
            let name = unique_name("pf");
            create_delivery_stream(&name, &bucket).await;
            (
                format!("firehose://{name}"),
                "PutRecordBatch",
                Sink::Bucket(bucket),
            )
        }
        other => panic!("no such target {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_failures_of_every_batch_api_retry_only_what_failed() {
    for target in ["sqs", "sns", "eventbridge", "kinesis", "firehose"] {
        let (uri, api, sink) = new_target(target).await;
        let marker = unique_name(&format!("fail-once-{target}"));
        fail_entries_once(&marker);
        let before = marked_requests(api).len();
        let client = dynamodb().await;
        let table = unique_name("pf");
        create_table(&client, &table).await;
        three_items_one_marked(&table, &marker).await;
        let worker = start_worker(
            &table,
            &uri,
            &[
                ("DYNASTREAM_FORMAT", "document"),
                ("DYNASTREAM_BATCH_WINDOW_MS", "1000"),
            ],
        );
        let retried = || async { marked_requests(api).len() >= before + 2 };
        let _ = poll(POLL, WAIT, retried).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        stop(worker).await;
        let requests: Vec<(u64, u64)> = marked_requests(api).into_iter().skip(before).collect();
        assert_eq!(
            requests,
            vec![(3, 1), (1, 0)],
            "{target}: one of three refused, then only that one sent again"
        );
        let mut keys: Vec<String> = sink
            .read(3)
            .await
            .iter()
            .map(|d| d["keys"]["pk"].as_str().unwrap_or_default().to_owned())
            .collect();
        keys.sort();
        assert_eq!(
            keys,
            ["pf-a", "pf-b", "pf-c"],
            "{target}: each record exactly once"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_over_the_size_limit_goes_to_the_destination_at_once() {
    let sqs = sqs().await;
    let (queue_url, _) = create_queue(&sqs, false).await;
    let client = dynamodb().await;
    let table = unique_name("big");
    create_table(&client, &table).await;
    put(&client, &table, "small-1", 1).await;
    put_item(
        &client,
        &table,
        HashMap::from([
            ("pk".to_owned(), AttributeValue::S("huge".into())),
            ("blob".to_owned(), AttributeValue::S("x".repeat(300 * 1024))),
        ]),
    )
    .await;
    put(&client, &table, "small-2", 2).await;
    let dir = tempfile::tempdir().unwrap();
    let failed_file = dir.path().join("failed.jsonl");
    let worker = start_worker(
        &table,
        &format!("sqs://{queue_url}"),
        &[(
            "DYNASTREAM_ON_FAILURE",
            &format!("file://{}", failed_file.display()),
        )],
    );
    let received = receive(&sqs, &queue_url, 2).await;
    wait_for_failed_lines(&failed_file).await;
    let logs = stop(worker).await;
    let keys: Vec<&str> = received
        .iter()
        .map(|r| r["dynamodb"]["Keys"]["pk"]["S"].as_str().unwrap())
        .collect();
    assert_eq!(keys.len(), 2);
    assert!(keys.contains(&"small-1") && keys.contains(&"small-2"));
    let failed = lines_of(&failed_file);
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["reason"], "rejected");
    assert_eq!(failed[0]["attempts"], 1, "not retried");
    assert_eq!(
        failed[0]["records"][0]["dynamodb"]["Keys"]["pk"]["S"],
        "huge"
    );
    assert!(
        failed[0]["lastError"].as_str().unwrap().contains("bytes"),
        "{}",
        failed[0]
    );
    assert!(logs.iter().any(|l| l.contains("failure destination")));
}

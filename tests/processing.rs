//! Lambda-grade processing end to end, with the built binary against
//! DynamoDB Local: a poison record's retries and its failure destination
//! (a file, and an SQS queue on a local SQS server), bisect, filters, and a
//! shard that halts rather than drop records when there is no destination.

mod support;

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use support::*;

/// A child for the exec processor that logs each batch's keys to `log` and
/// fails (as a Lambda handler raising an exception would) any batch holding
/// a key that starts with "poison".
fn poison_handler(dir: &Path) -> String {
    let script = dir.join("handler.py");
    let log = dir.join("batches.jsonl");
    std::fs::write(
        &script,
        format!(
            r#"
import json, sys
for line in sys.stdin:
    event = json.loads(line)
    keys = [r["dynamodb"]["Keys"]["pk"]["S"] for r in event["Records"]]
    with open({log:?}, "a") as f:
        f.write(json.dumps(keys) + "\n")
    if any(k.startswith("poison") for k in keys):
        print(json.dumps({{"errorMessage": "cannot handle " + keys[0], "errorType": "Poison"}}))
    else:
        print("{{}}")
    sys.stdout.flush()
"#,
            log = log.display().to_string()
        ),
    )
    .unwrap();
    format!("python3 {}", script.display())
}

fn batches(dir: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(dir.join("batches.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn failed_objects(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Writes ten items, the fourth of them poison, after the worker started.
async fn write_with_poison(client: &aws_sdk_dynamodb::Client, table: &str) {
    for i in 0..10 {
        let key = if i == 3 {
            "poison-3".to_owned()
        } else {
            format!("item-{i}")
        };
        put(client, table, &key, i).await;
    }
}

async fn wait_for_file_lines(path: &Path, lines: usize) {
    let what = format!("{} to get {lines} line(s)", path.display());
    eventually(WAIT, what, || async { failed_objects(path).len() >= lines }).await
}

async fn wait_for_key(dir: &Path, key: &str) {
    let what = lazy(|| format!("{key} to be processed: {:?}", batches(dir)));
    eventually(WAIT, what, || async {
        batches(dir).iter().flatten().any(|k| k == key)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_batch_goes_to_the_file_destination_after_three_attempts() {
    let client = dynamodb().await;
    let table = unique_name("poison");
    create_table(&client, &table).await;
    let dir = tempfile::tempdir().unwrap();
    let failed = dir.path().join("failed.jsonl");
    let worker = Worker::start(&worker_env(&[
        ("DYNASTREAM_TABLES", &table),
        ("DYNASTREAM_APPLICATION", &unique_name("poison-app")),
        ("DYNASTREAM_STARTING_POSITION", "TRIM_HORIZON"),
        ("DYNASTREAM_PROCESSOR", "exec"),
        ("DYNASTREAM_EXEC_COMMAND", &poison_handler(dir.path())),
        ("DYNASTREAM_MAX_RETRY_ATTEMPTS", "2"),
        (
            "DYNASTREAM_ON_FAILURE",
            &format!("file://{}", failed.display()),
        ),
        ("DYNASTREAM_BATCH_WINDOW_MS", "2000"),
        ("DYNASTREAM_BATCH_SIZE", "4"),
    ]));
    write_with_poison(&client, &table).await;
    wait_for_file_lines(&failed, 1).await;
    wait_for_key(dir.path(), "item-9").await;
    let (status, _, _) = worker.terminate().await;
    assert!(status.success());

    let seen = batches(dir.path());
    let with_poison = seen
        .iter()
        .filter(|b| b.iter().any(|k| k == "poison-3"))
        .count();
    assert_eq!(with_poison, 3, "1 attempt + 2 retries: {seen:?}");
    let objects = failed_objects(&failed);
    assert_eq!(objects.len(), 1);
    let object = &objects[0];
    assert_eq!(object["reason"], "retries_exhausted");
    assert_eq!(object["attempts"], 3);
    assert!(
        object["lastError"]
            .as_str()
            .unwrap()
            .contains("cannot handle"),
        "{object}"
    );
    let sent: Vec<&str> = object["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["dynamodb"]["Keys"]["pk"]["S"].as_str().unwrap())
        .collect();
    assert!(sent.contains(&"poison-3"));
    assert_eq!(
        object["startSequenceNumber"],
        object["records"][0]["dynamodb"]["SequenceNumber"]
    );
    // Every record not sent to the destination was processed.
    let processed: Vec<&String> = seen
        .iter()
        .filter(|b| !b.iter().any(|k| k == "poison-3"))
        .flatten()
        .collect();
    for i in 0..10 {
        let key = if i == 3 {
            "poison-3".to_owned()
        } else {
            format!("item-{i}")
        };
        assert!(
            processed.contains(&&key) || sent.contains(&key.as_str()),
            "{key} neither processed nor stored"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_bisect_only_the_poison_record_reaches_an_sqs_queue() {
    let client = dynamodb().await;
    let sqs = sqs().await;
    let queue_url = sqs
        .create_queue()
        .queue_name(unique_name("failed"))
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let table = unique_name("bisect");
    create_table(&client, &table).await;
    let dir = tempfile::tempdir().unwrap();
    let mut env = worker_env(&[
        ("DYNASTREAM_TABLES", &table),
        ("DYNASTREAM_APPLICATION", &unique_name("bisect-app")),
        ("DYNASTREAM_STARTING_POSITION", "TRIM_HORIZON"),
        ("DYNASTREAM_PROCESSOR", "exec"),
        ("DYNASTREAM_EXEC_COMMAND", &poison_handler(dir.path())),
        ("DYNASTREAM_MAX_RETRY_ATTEMPTS", "2"),
        ("DYNASTREAM_BISECT_ON_ERROR", "true"),
        ("DYNASTREAM_ON_FAILURE", &format!("sqs://{queue_url}")),
        ("DYNASTREAM_BATCH_WINDOW_MS", "2000"),
        ("DYNASTREAM_BATCH_SIZE", "10"),
    ]);
    env.push(("AWS_ENDPOINT_URL_SQS".into(), aws_local().to_owned()));
    let worker = Worker::start(&env);
    write_with_poison(&client, &table).await;

    let message = eventually(WAIT, "a message in the queue", || async {
        let received = sqs
            .receive_message()
            .queue_url(&queue_url)
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        received.messages.unwrap_or_default().into_iter().next()
    })
    .await;
    wait_for_key(dir.path(), "item-9").await;
    let (status, _, logs) = worker.terminate().await;
    assert!(status.success(), "{}", logs.join("\n"));
    let object: Value = serde_json::from_str(message.body().unwrap()).unwrap();
    let keys: Vec<&str> = object["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["dynamodb"]["Keys"]["pk"]["S"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["poison-3"], "bisect isolates the poison record");
    assert_eq!(object["attempts"], 3);
    let processed: Vec<String> = batches(dir.path())
        .into_iter()
        .filter(|b| !b.iter().any(|k| k == "poison-3"))
        .flatten()
        .collect();
    for i in (0..10).filter(|i| *i != 3) {
        assert!(
            processed.contains(&format!("item-{i}")),
            "item-{i} processed"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_destination_the_shard_halts_instead_of_dropping_records() {
    let client = dynamodb().await;
    let table = unique_name("halt");
    create_table(&client, &table).await;
    let dir = tempfile::tempdir().unwrap();
    let worker = Worker::start(&worker_env(&[
        ("DYNASTREAM_TABLES", &table),
        ("DYNASTREAM_APPLICATION", &unique_name("halt-app")),
        ("DYNASTREAM_STARTING_POSITION", "TRIM_HORIZON"),
        ("DYNASTREAM_PROCESSOR", "exec"),
        ("DYNASTREAM_EXEC_COMMAND", &poison_handler(dir.path())),
        ("DYNASTREAM_MAX_RETRY_ATTEMPTS", "1"),
        ("DYNASTREAM_BATCH_SIZE", "1"),
    ]));
    write_with_poison(&client, &table).await;
    worker.wait_for_log("shard halted", 1, WAIT).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (status, _, _) = worker.terminate().await;
    assert!(status.success());
    let seen: Vec<String> = batches(dir.path()).into_iter().flatten().collect();
    assert!(
        !seen.contains(&"item-4".to_owned()),
        "nothing after the poison record: {seen:?}"
    );
    assert_eq!(
        seen.iter().filter(|k| *k == "poison-3").count(),
        2,
        "1 attempt + 1 retry"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_passes_only_matching_records_and_still_checkpoints_the_rest() {
    let client = dynamodb().await;
    let table = unique_name("filtered");
    create_table(&client, &table).await;
    let env = worker_env(&[
        ("DYNASTREAM_TABLES", &table),
        ("DYNASTREAM_APPLICATION", &unique_name("filter-app")),
        ("DYNASTREAM_WORKER_ID", "filter-worker"),
        (
            "DYNASTREAM_FILTER",
            r#"{"Filters":[{"Pattern":"{\"eventName\":[\"INSERT\"],\"dynamodb\":{\"NewImage\":{\"n\":{\"N\":[{\"numeric\":[\">=\",5]}]}}}}"}]}"#,
        ),
    ]);
    let worker = Worker::start(&env);
    worker.wait_for_log("shard consumer started", 1, WAIT).await;
    for i in 0..8 {
        put(&client, &table, &format!("item-{i}"), i).await;
    }
    delete(&client, &table, "item-6").await;
    worker.wait_for_records(3, WAIT).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (status, records, _) = worker.terminate().await;
    assert!(status.success());
    assert_eq!(keys_of(&records), ["item-5", "item-6", "item-7"]);

    // The filtered records were checkpointed: a restart delivers nothing old.
    let again = Worker::start(&env);
    put(&client, &table, "item-9", 9).await;
    again.wait_for_records(1, WAIT).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (_, records, _) = again.terminate().await;
    assert_eq!(keys_of(&records), ["item-9"]);
}

/// A Lambda-like HTTP endpoint: records every batch's keys and answers
/// Lambda's partial-failure response for `fail_once` the first time it sees it.
async fn partial_failure_endpoint(
    fail_once: &'static str,
) -> (String, std::sync::Arc<std::sync::Mutex<Vec<Vec<String>>>>) {
    use http_body_util::{BodyExt, Full};
    use hyper::body::Bytes;
    use hyper_util::rt::TokioIo;
    use std::sync::{Arc, Mutex};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/invoke", listener.local_addr().unwrap());
    let seen: Arc<Mutex<Vec<Vec<String>>>> = Arc::default();
    let failed_already = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let log = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                return;
            };
            let log = Arc::clone(&log);
            let failed_already = Arc::clone(&failed_already);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |request: hyper::Request<hyper::body::Incoming>| {
                        let log = Arc::clone(&log);
                        let failed_already = Arc::clone(&failed_already);
                        async move {
                            let body = request.into_body().collect().await.unwrap().to_bytes();
                            let event: Value = serde_json::from_slice(&body).unwrap();
                            let records = event["Records"].as_array().unwrap();
                            let keys = keys_of(records);
                            log.lock().unwrap().push(keys.clone());
                            let failing = records
                                .iter()
                                .find(|r| r["dynamodb"]["Keys"]["pk"]["S"] == fail_once);
                            let answer = match failing {
                                Some(record)
                                    if !failed_already
                                        .swap(true, std::sync::atomic::Ordering::SeqCst) =>
                                {
                                    serde_json::json!({"batchItemFailures": [{"itemIdentifier": record["dynamodb"]["SequenceNumber"]}]})
                                }
                                _ => serde_json::json!({"batchItemFailures": []}),
                            };
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                                Bytes::from(answer.to_string()),
                            )))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(socket), service)
                    .await;
            });
        }
    });
    (url, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http_a_partial_failure_retries_only_the_failed_record_and_those_after_it() {
    let client = dynamodb().await;
    let table = unique_name("http-partial");
    create_table(&client, &table).await;
    let (url, seen) = partial_failure_endpoint("item-2").await;
    let worker = Worker::start(&worker_env(&[
        ("DYNASTREAM_TABLES", &table),
        ("DYNASTREAM_APPLICATION", &unique_name("http-app")),
        ("DYNASTREAM_STARTING_POSITION", "TRIM_HORIZON"),
        ("DYNASTREAM_PROCESSOR", "http"),
        ("DYNASTREAM_HTTP_URL", &url),
        ("DYNASTREAM_BATCH_WINDOW_MS", "2000"),
        ("DYNASTREAM_BATCH_SIZE", "10"),
    ]));
    for i in 0..5 {
        put(&client, &table, &format!("item-{i}"), i).await;
    }
    let what = lazy(|| format!("a retry: {:?}", seen.lock().unwrap()));
    eventually(WAIT, what, || async { seen.lock().unwrap().len() >= 2 }).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (status, _, _) = worker.terminate().await;
    assert!(status.success());
    let calls = seen.lock().unwrap().clone();
    assert_eq!(calls[0], ["item-0", "item-1", "item-2", "item-3", "item-4"]);
    assert_eq!(
        calls[1],
        ["item-2", "item-3", "item-4"],
        "only the failed record and those after it"
    );
    assert_eq!(calls.len(), 2, "{calls:?}");
}

//! Unmodified Lambda handlers, in Python and in Node, run by the built binary
//! through the `exec` processor and the adapters in `adapters/`, against
//! DynamoDB Local: what the handler sees, what it prints, and what a
//! `batchItemFailures` answer makes dynastream deliver again.

mod support;

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use support::*;

#[derive(Clone, Copy, Debug)]
enum Language {
    Python,
    Node,
}

impl Language {
    /// The command that runs `spec` (`module.function`) from `dir` through the adapter.
    fn command(self, dir: &Path, spec: &str) -> String {
        match self {
            Language::Python => format!(
                "exec python3 '{}' --path '{}' {spec}",
                repo()
                    .join("adapters/python/dynastream_lambda.py")
                    .display(),
                dir.display()
            ),
            // Resolved from the current directory, as Lambda resolves `index.handler`.
            Language::Node => format!(
                "cd '{}' && exec node '{}' {spec}",
                dir.display(),
                repo().join("adapters/node/dynastream-lambda.js").display()
            ),
        }
    }
}

/// A handler that appends one JSON line per invocation to `$SEEN_FILE`: its
/// pid, what the context says, and the records. It prints to stdout, as
/// handlers do, and fails the record of item `b` the first time it sees it.
fn write_recording_handler(language: Language, dir: &Path) -> &'static str {
    match language {
        Language::Python => {
            std::fs::write(
                dir.join("recording.py"),
                r#"import json, os

failed_once = set()

def handler(event, context):
    records = event["Records"]
    print("recording handler got {} record(s)".format(len(records)))
    failures = []
    for record in records:
        seq = record["dynamodb"]["SequenceNumber"]
        if record["dynamodb"]["Keys"]["pk"]["S"] == "b" and seq not in failed_once:
            failed_once.add(seq)
            failures.append({"itemIdentifier": seq})
    with open(os.environ["SEEN_FILE"], "a") as seen:
        seen.write(json.dumps({
            "pid": os.getpid(),
            "functionName": context.function_name,
            "requestId": context.aws_request_id,
            "remainingMs": context.get_remaining_time_in_millis(),
            "records": records,
        }) + "\n")
    return {"batchItemFailures": failures}
"#,
            )
            .unwrap();
            "recording.handler"
        }
        Language::Node => {
            std::fs::write(
                dir.join("index.js"),
                r#"const fs = require('fs');

const failedOnce = new Set();

exports.handler = async (event, context) => {
  const records = event.Records;
  console.log(`recording handler got ${records.length} record(s)`);
  const failures = [];
  for (const record of records) {
    const seq = record.dynamodb.SequenceNumber;
    if (record.dynamodb.Keys.pk.S === 'b' && !failedOnce.has(seq)) {
      failedOnce.add(seq);
      failures.push({ itemIdentifier: seq });
    }
  }
  fs.appendFileSync(process.env.SEEN_FILE, JSON.stringify({
    pid: process.pid,
    functionName: context.functionName,
    requestId: context.awsRequestId,
    remainingMs: context.getRemainingTimeInMillis(),
    records,
  }) + '\n');
  return { batchItemFailures: failures };
};
"#,
            )
            .unwrap();
            "index.handler"
        }
    }
}

/// The invocations recorded so far.
fn invocations(seen_file: &Path) -> Vec<Value> {
    std::fs::read_to_string(seen_file)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect()
}

fn records_of(invocations: &[Value]) -> Vec<Value> {
    invocations
        .iter()
        .flat_map(|i| i["records"].as_array().cloned().unwrap_or_default())
        .collect()
}

async fn wait_for_handled_records(worker: &Worker, seen_file: &Path, count: usize) -> Vec<Value> {
    let what = lazy(|| {
        format!(
            "{count} records handled, got {:#?}\nlogs:\n{}",
            invocations(seen_file),
            worker.logs().join("\n")
        )
    });
    eventually(WAIT, what, || async {
        let seen = invocations(seen_file);
        (records_of(&seen).len() >= count).then_some(seen)
    })
    .await
}

/// Whether a process is gone (or a zombie nobody reaped yet).
fn gone(pid: u64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

async fn assert_gone(pid: u64) {
    let what = format!("process {pid}, started by the exec processor, to end with dynastream");
    eventually(Duration::from_secs(5), what, || async { gone(pid) }).await
}

/// Starts a worker whose exec processor runs `command` on `table`.
async fn start_worker(table: &str, command: &str, seen_file: &Path) -> Worker {
    let worker = Worker::start(&worker_env(&[
        ("DYNASTREAM_TABLES", table),
        ("DYNASTREAM_APPLICATION", &unique_name("app")),
        ("DYNASTREAM_PROCESSOR", "exec"),
        ("DYNASTREAM_EXEC_COMMAND", command),
        ("DYNASTREAM_EXEC_TIMEOUT_MS", "20000"),
        ("SEEN_FILE", seen_file.to_str().unwrap()),
        // Keep the example handler's directory free of __pycache__.
        ("PYTHONDONTWRITEBYTECODE", "1"),
    ]));
    worker.wait_for_log("shard consumer started", 1, WAIT).await;
    worker
}

async fn a_handler_sees_insert_modify_remove(language: Language) {
    let dir = tempfile::tempdir().unwrap();
    let spec = write_recording_handler(language, dir.path());
    let seen_file = dir.path().join("seen.jsonl");
    let client = dynamodb().await;
    let table = unique_name("adapter");
    let stream_arn = create_table(&client, &table).await;
    // A process the shell starts beside the handler, which never reads
    // stdin: only the process-group kill at shutdown stops it.
    let sleeper_file = dir.path().join("sleeper.pid");
    let command = format!(
        "sleep 300 >/dev/null 2>&1 & echo $! > '{}'; {}",
        sleeper_file.display(),
        language.command(dir.path(), spec)
    );
    let worker = start_worker(&table, &command, &seen_file).await;

    put(&client, &table, "item-1", 1).await;
    put(&client, &table, "item-1", 2).await;
    delete(&client, &table, "item-1").await;

    let seen = wait_for_handled_records(&worker, &seen_file, 3).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, stdout_records, logs) = worker.terminate().await;
    assert!(
        status.success(),
        "clean exit: {status:?}\n{}",
        logs.join("\n")
    );

    let records = records_of(&seen);
    let names: Vec<&str> = records
        .iter()
        .map(|r| r["eventName"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["INSERT", "MODIFY", "REMOVE"], "{seen:#?}");
    let image = |n: i64| json!({"pk": {"S": "item-1"}, "n": {"N": n.to_string()}});
    for record in &records {
        assert_eq!(record["eventSource"], "aws:dynamodb");
        assert_eq!(record["eventSourceARN"], stream_arn.as_str());
        assert_eq!(record["dynamodb"]["Keys"], json!({"pk": {"S": "item-1"}}));
        assert_eq!(record["dynamodb"]["StreamViewType"], "NEW_AND_OLD_IMAGES");
    }
    assert_eq!(records[0]["dynamodb"]["NewImage"], image(1));
    assert!(records[0]["dynamodb"].get("OldImage").is_none());
    assert_eq!(records[1]["dynamodb"]["OldImage"], image(1));
    assert_eq!(records[1]["dynamodb"]["NewImage"], image(2));
    assert_eq!(records[2]["dynamodb"]["OldImage"], image(2));
    assert!(records[2]["dynamodb"].get("NewImage").is_none());

    let pids: Vec<u64> = seen.iter().map(|i| i["pid"].as_u64().unwrap()).collect();
    assert!(
        pids.iter().all(|p| *p == pids[0]),
        "one warm process: {pids:?}"
    );
    for invocation in &seen {
        assert_eq!(invocation["functionName"], "dynastream");
        let request_id = invocation["requestId"].as_str().unwrap();
        assert_eq!(request_id.len(), 36, "a UUID: {request_id}");
        let remaining = invocation["remainingMs"].as_u64().unwrap();
        assert!(remaining > 10_000 && remaining <= 20_000, "{remaining}");
    }
    // The handler's prints reached dynastream's stderr, not the protocol.
    assert!(
        logs.iter().any(|l| l.starts_with("recording handler got ")),
        "{}",
        logs.join("\n")
    );
    assert!(stdout_records.is_empty(), "{stdout_records:#?}");
    assert!(
        !logs.iter().any(|l| l.contains("batch failed")),
        "{}",
        logs.join("\n")
    );
    assert_gone(pids[0]).await;
    let sleeper: u64 = std::fs::read_to_string(&sleeper_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_gone(sleeper).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_handler_sees_insert_modify_remove() {
    a_handler_sees_insert_modify_remove(Language::Python).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_handler_sees_insert_modify_remove() {
    a_handler_sees_insert_modify_remove(Language::Node).await;
}

async fn the_example_handler_runs_unchanged(language: Language) {
    let (dir, spec) = match language {
        Language::Python => (repo().join("adapters/python"), "example_handler.handler"),
        Language::Node => (repo().join("adapters/node"), "example_handler.handler"),
    };
    let client = dynamodb().await;
    let table = unique_name("example");
    create_table(&client, &table).await;
    let scratch = tempfile::tempdir().unwrap();
    let worker = start_worker(
        &table,
        &language.command(&dir, spec),
        &scratch.path().join("unused"),
    )
    .await;

    put(&client, &table, "item-1", 1).await;
    put(&client, &table, "item-1", 2).await;
    delete(&client, &table, "item-1").await;

    let remove = r#"REMOVE {"pk":"item-1"} old={"n":2,"pk":"item-1"}"#;
    worker.wait_for_log(remove, 1, WAIT).await;
    let (status, stdout_records, logs) = worker.terminate().await;
    assert!(status.success(), "clean exit: {status:?}");
    let printed: Vec<&str> = logs
        .iter()
        .map(String::as_str)
        .filter(|l| {
            ["INSERT ", "MODIFY ", "REMOVE "]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .collect();
    assert_eq!(
        printed,
        [
            r#"INSERT {"pk":"item-1"} new={"n":1,"pk":"item-1"}"#,
            r#"MODIFY {"pk":"item-1"} old={"n":1,"pk":"item-1"} new={"n":2,"pk":"item-1"}"#,
            remove,
        ],
        "{}",
        logs.join("\n")
    );
    assert!(stdout_records.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_example_handler_runs_unchanged() {
    the_example_handler_runs_unchanged(Language::Python).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_example_handler_runs_unchanged() {
    the_example_handler_runs_unchanged(Language::Node).await;
}

fn key_of(record: &Value) -> String {
    record["dynamodb"]["Keys"]["pk"]["S"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn only_the_failed_record_and_those_after_it_come_again(language: Language) {
    let dir = tempfile::tempdir().unwrap();
    let spec = write_recording_handler(language, dir.path());
    let seen_file = dir.path().join("seen.jsonl");
    let client = dynamodb().await;
    let table = unique_name("partial");
    create_table(&client, &table).await;
    let worker = start_worker(&table, &language.command(dir.path(), spec), &seen_file).await;

    for (i, key) in ["a", "b", "c"].iter().enumerate() {
        put(&client, &table, key, i as i64).await;
    }
    // a, b and c once, then b again and whatever followed it in its batch.
    wait_for_handled_records(&worker, &seen_file, 4).await;
    // Time for anything delivered a third time to show up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let seen = invocations(&seen_file);
    let (status, _, logs) = worker.terminate().await;
    assert!(status.success(), "clean exit: {status:?}");

    let batches: Vec<Vec<String>> = seen
        .iter()
        .map(|i| {
            records_of(std::slice::from_ref(i))
                .iter()
                .map(key_of)
                .collect()
        })
        .collect();
    let context = format!("batches {batches:?}\nlogs:\n{}", logs.join("\n"));
    let failed = batches
        .iter()
        .position(|b| b.contains(&"b".to_owned()))
        .expect("b was delivered");
    let b_at = batches[failed].iter().position(|k| k == "b").unwrap();
    let expected_again: Vec<String> = batches[failed][b_at..].to_vec();
    let after: Vec<String> = batches[failed + 1..].concat();
    assert!(
        after.starts_with(&expected_again),
        "b and what followed it came again first: {context}"
    );
    let all: Vec<String> = batches.concat();
    let count = |key: &str| all.iter().filter(|k| *k == key).count();
    assert_eq!(
        count("a"),
        1,
        "a succeeded and is not delivered again: {context}"
    );
    assert_eq!(count("b"), 2, "{context}");
    assert_eq!(
        all.len(),
        3 + expected_again.len(),
        "nothing else came again: {context}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_partial_failure_redelivers_from_the_failed_record() {
    only_the_failed_record_and_those_after_it_come_again(Language::Python).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_partial_failure_redelivers_from_the_failed_record() {
    only_the_failed_record_and_those_after_it_come_again(Language::Node).await;
}

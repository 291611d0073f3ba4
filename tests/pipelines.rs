//! Several pipelines on one read of each shard, end to end: the built
//! binary against DynamoDB Local, each pipeline with its own filter and
//! processor (stdout, and exec children writing to their own files).

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dynastream::record::EventName;
use dynastream::streams::memory::MemoryStreams;
use serde_json::Value;
use support::scripted_streams::ScriptedStreams;
use support::*;

/// An exec child that appends each record's `[key, eventName, sequence
/// number]` to `file`, and fails every batch while `gate` exists.
fn recording_handler(dir: &Path, name: &str) -> (String, PathBuf, PathBuf) {
    let script = dir.join(format!("{name}.py"));
    let file = dir.join(format!("{name}.jsonl"));
    let gate = dir.join(format!("{name}.failing"));
    std::fs::write(
        &script,
        format!(
            r#"
import json, os, sys
for line in sys.stdin:
    event = json.loads(line)
    if os.path.exists({gate:?}):
        print(json.dumps({{"errorMessage": "scripted failure", "errorType": "Down"}}))
    else:
        with open({file:?}, "a") as f:
            for r in event["Records"]:
                f.write(json.dumps([r["dynamodb"]["Keys"]["pk"]["S"], r["eventName"], r["dynamodb"]["SequenceNumber"]]) + "\n")
        print("{{}}")
    sys.stdout.flush()
"#,
            gate = gate.display().to_string(),
            file = file.display().to_string(),
        ),
    )
    .unwrap();
    (format!("python3 {}", script.display()), file, gate)
}

/// `(key, eventName, sequence number)` of every record a handler wrote.
fn handled(file: &Path) -> Vec<(String, String, String)> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The same triples from records printed on stdout in Lambda's shape.
fn printed(records: &[Value]) -> Vec<(String, String, String)> {
    records
        .iter()
        .map(|r| {
            (
                r["dynamodb"]["Keys"]["pk"]["S"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
                r["eventName"].as_str().unwrap().to_owned(),
                r["dynamodb"]["SequenceNumber"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Asserts that `got` is exactly `want` (no loss, no repeat) and that each
/// key's records come in stream order.
fn exactly(pipeline: &str, got: &[(String, String, String)], want: &[(String, String, String)]) {
    let mut sorted_got = got.to_vec();
    let mut sorted_want = want.to_vec();
    sorted_got.sort();
    sorted_want.sort();
    assert_eq!(
        sorted_got, sorted_want,
        "{pipeline}: the records it should get"
    );
    let mut last: HashMap<&str, u128> = HashMap::new();
    for (key, _, seq) in got {
        let seq: u128 = seq.parse().unwrap();
        if let Some(previous) = last.insert(key, seq) {
            assert!(previous < seq, "{pipeline}: {key} out of order");
        }
    }
}

/// Writes `count` items, then changes every third and deletes every fifth.
async fn write_changes(client: &aws_sdk_dynamodb::Client, table: &str, from: usize, count: usize) {
    for i in from..from + count {
        put(client, table, &format!("item-{i}"), i as i64).await;
    }
    for i in (from..from + count).step_by(3) {
        put(client, table, &format!("item-{i}"), -(i as i64)).await;
    }
    for i in (from..from + count).step_by(5) {
        delete(client, table, &format!("item-{i}")).await;
    }
}

/// GetRecords calls a worker made, whatever their outcome, from its /metrics.
async fn get_records_calls(base_url: &str) -> f64 {
    let url = format!("{base_url}/metrics");
    wait_for_http(&url, 200).await;
    let (_, metrics) = http_get(&url);
    metrics
        .lines()
        .filter(|l| l.starts_with("dynastream_api_calls_total{") && l.contains("\"GetRecords\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_pipelines_get_their_own_records_from_one_read() {
    let client = dynamodb().await;
    let table = unique_name("pipelines");
    let stream = create_table(&client, &table).await;
    let dir = tempfile::tempdir().unwrap();
    let (inserts_cmd, inserts_file, _) = recording_handler(dir.path(), "inserts");
    let (removes_cmd, removes_file, _) = recording_handler(dir.path(), "removes");
    let common = [
        ("DYNASTREAM_TABLES", table.as_str()),
        ("DYNASTREAM_STARTING_POSITION", "TRIM_HORIZON"),
    ];
    let mut three = worker_env(&common);
    three.extend(
        [
            ("DYNASTREAM_APPLICATION", "three"),
            ("DYNASTREAM_PIPELINES", "everything,inserts,removes"),
            ("DYNASTREAM_PIPELINE_INSERTS_PROCESSOR", "exec"),
            ("DYNASTREAM_PIPELINE_INSERTS_EXEC_COMMAND", &inserts_cmd),
            (
                "DYNASTREAM_PIPELINE_INSERTS_FILTER",
                r#"{"eventName":["INSERT"]}"#,
            ),
            ("DYNASTREAM_PIPELINE_INSERTS_BATCH_SIZE", "7"),
            ("DYNASTREAM_PIPELINE_REMOVES_PROCESSOR", "exec"),
            ("DYNASTREAM_PIPELINE_REMOVES_EXEC_COMMAND", &removes_cmd),
            (
                "DYNASTREAM_PIPELINE_REMOVES_FILTER",
                r#"{"eventName":["REMOVE"]}"#,
            ),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned())),
    );
    let mut one = worker_env(&common);
    one.push(("DYNASTREAM_APPLICATION".into(), "one".into()));
    // The changes are there before both workers start, so that both read
    // the same pages and poll the idle shard on the same clock: their
    // GetRecords calls differ only by the polls between their starts.
    write_changes(&client, &table, 0, 60).await;
    let (three, one) = (Worker::start(&three), Worker::start(&one));
    let (three_url, one_url) = (three.endpoints().await, one.endpoints().await);
    let (_, every_change) = shard_and_sequence_numbers(&stream).await;
    let total = every_change.len();
    one.wait_for_records(total, WAIT).await;
    three.wait_for_records(total, WAIT).await;
    let everything = printed(&three.records());
    exactly("one pipeline", &printed(&one.records()), &everything);
    let of_kind = |kind: &str| -> Vec<(String, String, String)> {
        everything.iter().filter(|r| r.1 == kind).cloned().collect()
    };
    let (inserts, removes) = (of_kind("INSERT"), of_kind("REMOVE"));
    eventually(WAIT, "the exec pipelines to catch up", || async {
        handled(&inserts_file).len() >= inserts.len()
            && handled(&removes_file).len() >= removes.len()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    exactly("everything", &everything, &everything);
    assert_eq!(everything.len(), total);
    exactly("inserts", &handled(&inserts_file), &inserts);
    exactly("removes", &handled(&removes_file), &removes);

    let one_calls = get_records_calls(&one_url).await;
    let three_calls = get_records_calls(&three_url).await;
    eprintln!("GetRecords calls: one pipeline {one_calls}, three pipelines {three_calls}");
    assert!(one_calls > 0.0);
    assert!(
        three_calls <= one_calls + 3.0,
        "three pipelines read like one: {three_calls} against {one_calls}"
    );
    three.terminate().await;
    one.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_pipeline_holds_nobody_back_and_every_pipeline_resumes_from_its_own_checkpoint() {
    let client = dynamodb().await;
    let table = unique_name("pipelines-down");
    let stream = create_table(&client, &table).await;
    let dir = tempfile::tempdir().unwrap();
    let (down_cmd, down_file, gate) = recording_handler(dir.path(), "down");
    std::fs::write(&gate, "").unwrap();
    let mut env = worker_env(&[
        ("DYNASTREAM_TABLES", table.as_str()),
        ("DYNASTREAM_STARTING_POSITION", "TRIM_HORIZON"),
        ("DYNASTREAM_PIPELINES", "up,down"),
        ("DYNASTREAM_PIPELINE_DOWN_PROCESSOR", "exec"),
        ("DYNASTREAM_PIPELINE_DOWN_EXEC_COMMAND", &down_cmd),
        ("DYNASTREAM_PIPELINE_DOWN_MAX_RETRY_ATTEMPTS", "-1"),
    ]);
    let application = unique_name("app");
    env.push(("DYNASTREAM_APPLICATION".into(), application.clone()));
    let worker = Worker::start(&env);
    write_changes(&client, &table, 0, 40).await;
    let (_, first) = shard_and_sequence_numbers(&stream).await;
    worker.wait_for_records(first.len(), WAIT).await;
    assert!(handled(&down_file).is_empty(), "down delivered nothing");

    // Per pipeline, in /metrics and /status: `up` delivered and is caught
    // up; `down` delivered nothing, fails batches and falls further behind.
    let url = worker.endpoints().await;
    let stream_label = format!("stream=\"{table}\"");
    let age_of = |metrics: &str, pipeline: &str| {
        let label = format!("pipeline=\"{pipeline}\"");
        sample(
            metrics,
            "dynastream_iterator_age_seconds{",
            &[&stream_label, &label],
        )
    };
    let down_age = || {
        let (_, metrics) = http_get(&format!("{url}/metrics"));
        age_of(&metrics, "down").unwrap_or(0.0)
    };
    let down_failures = |metrics: &str| {
        sample(
            metrics,
            "dynastream_batches_total{",
            &[&stream_label, "pipeline=\"down\"", "outcome=\"failure\""],
        )
        .unwrap_or(0.0)
    };
    // The reader's next empty read tells `up` it is caught up.
    eventually(WAIT, "up caught up, down failing and behind", || async {
        let (_, metrics) = http_get(&format!("{url}/metrics"));
        age_of(&metrics, "up") == Some(0.0)
            && age_of(&metrics, "down").unwrap_or(0.0) > 0.0
            && down_failures(&metrics) >= 1.0
    })
    .await;
    let (_, metrics) = http_get(&format!("{url}/metrics"));
    let up_records: f64 = ["INSERT", "MODIFY", "REMOVE"]
        .iter()
        .filter_map(|event| {
            let event = format!("event_name=\"{event}\"");
            sample(
                &metrics,
                "dynastream_records_total{",
                &[&stream_label, "pipeline=\"up\"", &event],
            )
        })
        .sum();
    assert_eq!(up_records as usize, first.len(), "{metrics}");
    assert_eq!(
        sample(
            &metrics,
            "dynastream_records_total{",
            &[&stream_label, "pipeline=\"down\"", "INSERT"]
        ),
        Some(0.0)
    );
    let before = down_age();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(down_age() > before, "a stuck pipeline's age grows");
    let status = dynastream_status(&application, &["--json", "--lag"]);
    assert!(status.status.success(), "{status:?}");
    let report: Value = serde_json::from_slice(&status.stdout).unwrap();
    let lags = &report["shards"][0]["lag_seconds"];
    assert_eq!(lags["up"], 0, "up has nothing waiting: {report}");
    assert!(
        lags["down"].as_u64().unwrap_or(0) >= 1,
        "down waits: {report}"
    );
    assert_eq!(
        report["workers"][0]["pipelines"],
        serde_json::json!(["down", "up"]),
        "{report}"
    );
    let (_, status) = http_get(&format!("{url}/status"));
    let status: Value = serde_json::from_str(&status).unwrap();
    let shard = &status["shards"][0];
    assert_eq!(
        shard["pipelines"]["up"]["checkpoint"].as_str(),
        first.last().map(String::as_str),
        "{status}"
    );
    assert_eq!(
        shard["pipelines"]["down"]["checkpoint"].as_str(),
        Some("TRIM_HORIZON"),
        "down has not moved: {status}"
    );
    assert!(
        shard["pipelines"]["down"]["iteratorAgeSeconds"]
            .as_f64()
            .unwrap_or(0.0)
            > 0.0,
        "{status}"
    );

    // SIGKILL while `down` is failing: `up` resumes after what it
    // checkpointed, `down` from its own (unmoved) checkpoint.
    let (_, up_before_kill, _) = worker.kill().await;
    let worker = Worker::start(&env);
    write_changes(&client, &table, 40, 20).await;
    let (_, all) = shard_and_sequence_numbers(&stream).await;
    let up_after = worker.wait_for_records(all.len() - first.len(), WAIT).await;
    std::fs::remove_file(&gate).unwrap();
    eventually(WAIT, "down to catch up", || async {
        handled(&down_file).len() >= all.len()
    })
    .await;
    // SIGTERM: a clean stop checkpoints every pipeline; a restart delivers nothing twice.
    let _ = up_after;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (status, up_after, _) = worker.terminate().await;
    assert!(status.success(), "{status:?}");
    let worker = Worker::start(&env);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (_, after_restart, _) = worker.terminate().await;
    assert!(after_restart.is_empty(), "{after_restart:?}");

    // `up` delivers at least once across the SIGKILL: what it gets after
    // the restart starts at or before its last delivery, in order, to the end.
    let before: Vec<String> = printed(&up_before_kill).into_iter().map(|r| r.2).collect();
    let after: Vec<String> = printed(&up_after).into_iter().map(|r| r.2).collect();
    assert_eq!(before, first, "up delivered everything before the kill");
    let resumed_at = all
        .iter()
        .position(|s| Some(s) == after.first())
        .expect("up's first record after the restart is in the stream");
    assert!(resumed_at <= first.len(), "no gap after the kill");
    assert_eq!(after, all[resumed_at..], "up: in order to the end");
    let down: Vec<String> = handled(&down_file).into_iter().map(|r| r.2).collect();
    assert_eq!(down, all, "down: everything once, in order");
}

/// A stream with one shard, `parent`, served by the scripted endpoint.
async fn scripted_stream(table: &str) -> (ScriptedStreams, String) {
    let model = MemoryStreams::new();
    let arn = model.create_stream_with_shards(&unique_name(table), &["parent"]);
    (ScriptedStreams::start(model).await, arn)
}

/// Puts records `<shard>#<i>` for each `i` of `numbers` into `shard`.
fn put_in(
    server: &ScriptedStreams,
    arn: &str,
    shard: &str,
    numbers: std::ops::Range<usize>,
) -> Vec<String> {
    numbers
        .map(|i| {
            server
                .model
                .put(arn, shard, EventName::Insert, &format!("{shard}#{i:02}"))
                .as_str()
                .to_owned()
        })
        .collect()
}

/// A worker of a new application on the scripted endpoint's stream, polling often.
fn scripted_env(server: &ScriptedStreams, arn: &str) -> Vec<(String, String)> {
    let mut env = worker_env(&[
        ("DYNASTREAM_STREAM_ARNS", arn),
        ("DYNASTREAM_STARTING_POSITION", "TRIM_HORIZON"),
        ("DYNASTREAM_SHARD_SYNC_INTERVAL_MS", "1000"),
        ("DYNASTREAM_POLL_INTERVAL_MS", "200"),
        ("DYNASTREAM_IDLE_POLL_INTERVAL_MS", "500"),
    ]);
    env.push(("DYNASTREAM_APPLICATION".into(), unique_name("scripted-app")));
    env.push(server.endpoint_env());
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn across_a_split_a_lagging_pipeline_finishes_the_parent_while_the_others_read_the_child() {
    let (server, arn) = scripted_stream("pipelines-split").await;
    let write = |shard: &str, count: usize| put_in(&server, &arn, shard, 0..count);
    let dir = tempfile::tempdir().unwrap();
    let (slow_cmd, slow_file, gate) = recording_handler(dir.path(), "slow");
    std::fs::write(&gate, "").unwrap();
    let mut env = scripted_env(&server, &arn);
    env.extend(
        [
            ("DYNASTREAM_PIPELINES", "fast,slow"),
            ("DYNASTREAM_PIPELINE_SLOW_PROCESSOR", "exec"),
            ("DYNASTREAM_PIPELINE_SLOW_EXEC_COMMAND", &slow_cmd),
            ("DYNASTREAM_PIPELINE_SLOW_MAX_RETRY_ATTEMPTS", "-1"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned())),
    );
    let worker = Worker::start(&env);
    let in_parent = write("parent", 12);
    server.model.close_shard(&arn, "parent");
    server.model.add_shard(&arn, "child", Some("parent"));
    let in_child = write("child", 8);
    let all: Vec<String> = in_parent.iter().chain(&in_child).cloned().collect();

    // `fast` goes through the parent to the child while `slow` is down.
    let fast = worker.wait_for_records(all.len(), WAIT).await;
    let fast: Vec<String> = printed(&fast).into_iter().map(|r| r.2).collect();
    assert_eq!(fast, all, "fast: the parent, then the child");
    assert!(handled(&slow_file).is_empty());

    // Once up, `slow` reads the parent to its end, then the child.
    std::fs::remove_file(&gate).unwrap();
    eventually(WAIT, "slow to catch up", || async {
        handled(&slow_file).len() >= all.len()
    })
    .await;
    let slow: Vec<String> = handled(&slow_file).into_iter().map(|r| r.2).collect();
    assert_eq!(
        slow, all,
        "slow: the parent to its end, then the child, once"
    );
    let (status, _, logs) = worker.terminate().await;
    assert!(status.success(), "{status:?}");
    assert!(
        logs.iter()
            .any(|l| l.contains("waiting to finish the parent shard")),
        "slow waited for itself in the child"
    );
}

/// `live` and a `replay` pipeline added with `TRIM_HORIZON` that records
/// through `replay_cmd`.
fn live_and_replay(replay_cmd: &str) -> Vec<(String, String)> {
    [
        ("DYNASTREAM_PIPELINES", "live,replay"),
        ("DYNASTREAM_PIPELINE_REPLAY_PROCESSOR", "exec"),
        ("DYNASTREAM_PIPELINE_REPLAY_EXEC_COMMAND", replay_cmd),
        (
            "DYNASTREAM_PIPELINE_REPLAY_STARTING_POSITION",
            "TRIM_HORIZON",
        ),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_added_with_trim_horizon_replays_into_itself_only() {
    let client = dynamodb().await;
    let table = unique_name("pipelines-added");
    let stream = create_table(&client, &table).await;
    let dir = tempfile::tempdir().unwrap();
    let (replay_cmd, replay_file, _) = recording_handler(dir.path(), "replay");
    let app = unique_name("added-app");
    let base = [
        ("DYNASTREAM_TABLES", table.as_str()),
        ("DYNASTREAM_APPLICATION", app.as_str()),
        ("DYNASTREAM_STARTING_POSITION", "TRIM_HORIZON"),
    ];
    let mut one = worker_env(&base);
    one.push(("DYNASTREAM_PIPELINES".into(), "live".into()));
    let worker = Worker::start(&one);
    write_changes(&client, &table, 0, 10).await;
    let (_, first) = shard_and_sequence_numbers(&stream).await;
    worker.wait_for_records(first.len(), WAIT).await;
    let (status, before, _) = worker.terminate().await;
    assert!(status.success());

    let mut two = worker_env(&base);
    two.extend(live_and_replay(&replay_cmd));
    let worker = Worker::start(&two);
    write_changes(&client, &table, 10, 5).await;
    let (_, all) = shard_and_sequence_numbers(&stream).await;
    let after = worker.wait_for_records(all.len() - first.len(), WAIT).await;
    eventually(WAIT, "replay to get the stream's records", || async {
        handled(&replay_file).len() >= all.len()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (status, after_stop, _) = worker.terminate().await;
    assert!(status.success());
    assert!(after.len() <= after_stop.len());
    let live: Vec<String> = printed(&before)
        .into_iter()
        .chain(printed(&after_stop))
        .map(|r| r.2)
        .collect();
    assert_eq!(live, all, "live: nothing twice across the restart");
    let replay: Vec<String> = handled(&replay_file).into_iter().map(|r| r.2).collect();
    assert_eq!(replay, all, "replay: everything the stream holds, once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_added_with_trim_horizon_replays_closed_shards_before_their_children() {
    let (server, arn) = scripted_stream("pipelines-replay-closed").await;
    let write =
        |shard: &str, from: usize, count: usize| put_in(&server, &arn, shard, from..from + count);
    let dir = tempfile::tempdir().unwrap();
    let (replay_cmd, replay_file, _) = recording_handler(dir.path(), "replay");
    let mut env = scripted_env(&server, &arn);
    let mut first_env = env.clone();
    first_env.push(("DYNASTREAM_PIPELINES".into(), "live".into()));
    let worker = Worker::start(&first_env);
    let in_parent = write("parent", 0, 10);
    server.model.close_shard(&arn, "parent");
    server.model.add_shard(&arn, "child", Some("parent"));
    let in_child = write("child", 0, 6);
    let before: Vec<String> = printed(
        &worker
            .wait_for_records(in_parent.len() + in_child.len(), WAIT)
            .await,
    )
    .into_iter()
    .map(|r| r.2)
    .collect();
    let (status, _, _) = worker.terminate().await;
    assert!(status.success(), "{status:?}");

    // `replay` joins: it reads the closed parent (which `live` finished)
    // from its start, then the child; `live` goes on where it was.
    env.extend(live_and_replay(&replay_cmd));
    let worker = Worker::start(&env);
    let more = write("child", 6, 4);
    let live_after = worker.wait_for_records(more.len(), WAIT).await;
    let all: Vec<String> = in_parent
        .iter()
        .chain(&in_child)
        .chain(&more)
        .cloned()
        .collect();
    eventually(WAIT, "replay to read the parent and the child", || async {
        handled(&replay_file).len() >= all.len()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (status, live_total, _) = worker.terminate().await;
    assert!(status.success(), "{status:?}");
    assert!(live_after.len() <= live_total.len());
    let live: Vec<String> = before
        .into_iter()
        .chain(printed(&live_total).into_iter().map(|r| r.2))
        .collect();
    assert_eq!(live, all, "live: everything once across the restart");
    let replay: Vec<String> = handled(&replay_file).into_iter().map(|r| r.2).collect();
    assert_eq!(
        replay, all,
        "replay: the closed parent, then the child, once"
    );
}

/// The worker's peak resident set so far, in MB (VmHWM).
fn peak_rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_far_behind_reads_on_its_own_within_bounded_memory_and_catches_up_exactly() {
    const RECORDS: usize = 20_000;
    let table = unique_name("pipelines-lag");
    let model = MemoryStreams::new();
    let arn = model.create_stream_with_shards(&table, &["shard"]);
    let server = ScriptedStreams::start(model).await;
    let dir = tempfile::tempdir().unwrap();
    let (slow_cmd, slow_file, gate) = recording_handler(dir.path(), "slow");
    std::fs::write(&gate, "").unwrap();
    let mut env = worker_env(&[
        ("DYNASTREAM_STREAM_ARNS", arn.as_str()),
        ("DYNASTREAM_STARTING_POSITION", "TRIM_HORIZON"),
        ("DYNASTREAM_BATCH_SIZE", "1000"),
        ("DYNASTREAM_PIPELINES", "fast,slow"),
        ("DYNASTREAM_PIPELINE_BUFFER_RECORDS", "1000"),
        ("DYNASTREAM_PIPELINE_FAST_PROCESSOR", "count"),
        ("DYNASTREAM_PIPELINE_SLOW_PROCESSOR", "exec"),
        ("DYNASTREAM_PIPELINE_SLOW_EXEC_COMMAND", &slow_cmd),
        ("DYNASTREAM_PIPELINE_SLOW_MAX_RETRY_ATTEMPTS", "-1"),
    ]);
    env.push(("DYNASTREAM_APPLICATION".into(), unique_name("lag-app")));
    env.push(server.endpoint_env());
    let worker = Worker::start(&env);
    let url = worker.endpoints().await;
    let mut all = Vec::with_capacity(RECORDS);
    for i in 0..RECORDS {
        let seq = server
            .model
            .put(&arn, "shard", EventName::Insert, &format!("item-{i:05}"));
        all.push(seq.as_str().to_owned());
    }
    let fast_done = || async {
        let (_, metrics) = http_get(&format!("{url}/metrics"));
        sample(&metrics, "dynastream_records_total", &["INSERT"]).unwrap_or(0.0) >= RECORDS as f64
    };
    eventually(WAIT, "fast to process every record", fast_done).await;
    assert!(handled(&slow_file).is_empty(), "slow is down");
    let lagging_peak = peak_rss_mb(worker.pid());
    let iterators_before = server
        .calls(dynastream::streams::memory::Operation::GetShardIterator)
        .len();

    let healed = tokio::time::Instant::now();
    std::fs::remove_file(&gate).unwrap();
    eventually(WAIT, "slow to catch up", || async {
        handled(&slow_file).len() >= RECORDS
    })
    .await;
    let catch_up = healed.elapsed();
    let iterators_after = server
        .calls(dynastream::streams::memory::Operation::GetShardIterator)
        .len();
    let final_peak = peak_rss_mb(worker.pid());
    eprintln!(
        "lagging pipeline: {RECORDS} records behind a 1000-record window; peak RSS {lagging_peak:.1} MB \
         while it lagged, {final_peak:.1} MB after it caught up; caught up in {:.2} s; \
         GetShardIterator calls {iterators_before} before healing, {iterators_after} after",
        catch_up.as_secs_f64()
    );
    let (status, _, _) = worker.terminate().await;
    assert!(status.success(), "{status:?}");
    let slow: Vec<String> = handled(&slow_file).into_iter().map(|r| r.2).collect();
    assert_eq!(slow.len(), RECORDS, "nothing twice");
    assert_eq!(slow, all, "everything, in order");
    assert!(
        iterators_after > iterators_before,
        "slow left the shared window and read with an iterator of its own"
    );
    assert!(final_peak < 150.0, "peak RSS {final_peak:.1} MB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_removes_a_removed_pipelines_checkpoints_and_keeps_the_declared_ones() {
    use dynastream::lease::{ItemKind, LeaseStore};
    let client = dynamodb().await;
    let table = unique_name("pipelines-removed");
    let stream = create_table(&client, &table).await;
    let application = unique_name("app");
    let mut env = worker_env(&[
        ("DYNASTREAM_TABLES", table.as_str()),
        ("DYNASTREAM_STARTING_POSITION", "TRIM_HORIZON"),
        ("DYNASTREAM_LEASE_DURATION_MS", "2000"),
        ("DYNASTREAM_SHARD_SYNC_INTERVAL_MS", "1000"),
        ("DYNASTREAM_STREAM_REFRESH_INTERVAL_MS", "10000"),
    ]);
    env.push(("DYNASTREAM_APPLICATION".into(), application.clone()));
    let mut both = env.clone();
    both.push(("DYNASTREAM_PIPELINES".into(), "kept,gone".into()));
    let worker = Worker::start(&both);
    write_changes(&client, &table, 0, 10).await;
    let (_, written) = shard_and_sequence_numbers(&stream).await;
    worker.wait_for_records(written.len() * 2, WAIT).await;
    let (status, _, _) = worker.terminate().await;
    assert!(status.success(), "{status:?}");

    let store = lease_store(&format!("{application}-leases")).await;
    let shard_leases = || async {
        store
            .list_leases()
            .await
            .unwrap()
            .leases
            .into_iter()
            .filter(|l| l.kind() == ItemKind::Shard)
            .collect::<Vec<_>>()
    };
    let before = shard_leases().await;
    assert!(before[0].pipeline_checkpoints.contains_key("gone"));

    // The next deployment drops `gone`.
    let mut kept = env.clone();
    kept.push(("DYNASTREAM_PIPELINES".into(), "kept".into()));
    let worker = Worker::start(&kept);
    write_changes(&client, &table, 10, 5).await;
    eventually(
        Duration::from_secs(60),
        "gone's checkpoints removed",
        || async {
            shard_leases()
                .await
                .iter()
                .all(|l| !l.pipeline_checkpoints.contains_key("gone"))
        },
    )
    .await;
    let (_, all) = shard_and_sequence_numbers(&stream).await;
    let last = dynastream::lease::Checkpoint::Sequence(all.last().unwrap().as_str().into());
    eventually(WAIT, "kept's checkpoint to stay and move on", || async {
        shard_leases().await[0].pipeline_checkpoints.get("kept") == Some(&last)
    })
    .await;
    let presences: Vec<_> = store
        .list_leases()
        .await
        .unwrap()
        .leases
        .into_iter()
        .filter(|l| l.kind() == ItemKind::Worker && l.owner.is_some())
        .collect();
    assert!(
        presences
            .iter()
            .any(|p| p.pipeline_checkpoints.keys().collect::<Vec<_>>() == ["kept"]),
        "the running worker announces its pipelines: {presences:?}"
    );
    let (status, records, _) = worker.terminate().await;
    assert!(status.success(), "{status:?}");
    assert_eq!(records.len(), all.len() - written.len(), "nothing twice");
}

//! Snapshot, then stream, against DynamoDB Local with the built binary:
//! a table's existing items before its changes, shared by workers through
//! segment leases, resumed after a SIGKILL, within a read budget, and
//! converging exactly to the table.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_dynamodb::types::{
    AttributeValue, PutRequest, StreamSpecification, StreamViewType, WriteRequest,
};
use serde_json::Value;
use support::*;

const PAD: usize = 200;

/// Writes `count` items `{pk: k<i>, v: 0, pad}` in batches of 25.
async fn fill(client: &aws_sdk_dynamodb::Client, table: &str, count: usize, pad: usize) {
    let pad = "p".repeat(pad);
    let keys: Vec<usize> = (0..count).collect();
    for chunk in keys.chunks(25) {
        let mut requests: Vec<WriteRequest> = chunk
            .iter()
            .map(|i| {
                let item = HashMap::from([
                    ("pk".to_owned(), AttributeValue::S(format!("k{i}"))),
                    ("v".to_owned(), AttributeValue::N("0".into())),
                    ("pad".to_owned(), AttributeValue::S(pad.clone())),
                ]);
                WriteRequest::builder()
                    .put_request(PutRequest::builder().set_item(Some(item)).build().unwrap())
                    .build()
            })
            .collect();
        while !requests.is_empty() {
            let answer = client
                .batch_write_item()
                .request_items(table, requests)
                .send()
                .await
                .expect("batch write");
            requests = answer
                .unprocessed_items
                .and_then(|mut left| left.remove(table))
                .unwrap_or_default();
        }
    }
}

async fn enable_stream(client: &aws_sdk_dynamodb::Client, table: &str) {
    client
        .update_table()
        .table_name(table)
        .stream_specification(
            StreamSpecification::builder()
                .stream_enabled(true)
                .stream_view_type(StreamViewType::NewAndOldImages)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .expect("enable the stream");
}

/// The table's items now: pk to v.
async fn table_state(client: &aws_sdk_dynamodb::Client, table: &str) -> BTreeMap<String, String> {
    let mut state = BTreeMap::new();
    let mut start = None;
    loop {
        let page = client
            .scan()
            .table_name(table)
            .consistent_read(true)
            .set_exclusive_start_key(start.take())
            .send()
            .await
            .expect("scan");
        for item in page.items.unwrap_or_default() {
            let pk = item["pk"].as_s().unwrap().clone();
            let v = item["v"].as_n().unwrap().clone();
            state.insert(pk, v);
        }
        match page.last_evaluated_key {
            Some(key) if !key.is_empty() => start = Some(key),
            _ => return state,
        }
    }
}

fn is_snapshot(record: &Value) -> bool {
    record["userIdentity"]["principalId"] == "dynastream.snapshot"
}

fn pk_of(record: &Value) -> String {
    record["dynamodb"]["Keys"]["pk"]["S"]
        .as_str()
        .unwrap_or("?")
        .to_owned()
}

fn v_of(record: &Value) -> Option<String> {
    record["dynamodb"]["NewImage"]["v"]["N"]
        .as_str()
        .map(str::to_owned)
}

/// Why the records, last per key, do not match the table yet (`None`: they do).
fn mismatch(records: &[Value], table: &BTreeMap<String, String>) -> Option<String> {
    let mut last: HashMap<String, &Value> = HashMap::new();
    for record in records {
        last.insert(pk_of(record), record);
    }
    for (pk, v) in table {
        match last.get(pk) {
            None => return Some(format!("{pk} never delivered")),
            Some(record) if record["eventName"] == "REMOVE" => {
                return Some(format!("{pk} exists but its last record is a REMOVE"))
            }
            Some(record) if v_of(record).as_deref() != Some(v.as_str()) => {
                return Some(format!(
                    "{pk}: last record has v={:?}, the table v={v}",
                    v_of(record)
                ))
            }
            _ => {}
        }
    }
    for (pk, record) in &last {
        if !table.contains_key(pk) && record["eventName"] != "REMOVE" {
            return Some(format!(
                "{pk} is gone but its last record is {}",
                record["eventName"]
            ));
        }
    }
    None
}

/// What the writer did during the snapshot, in order.
#[derive(Debug, Clone)]
enum Change {
    Set(String, String),
    Delete(String),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_snapshot_shared_by_two_workers_one_killed_converges_to_the_table() {
    let client = dynamodb().await;
    let table = unique_name("snap");
    create_plain_table(&client, &table, "pk").await;
    fill(&client, &table, 5000, PAD).await;
    enable_stream(&client, &table).await;
    let application = unique_name("snapapp");
    let env = worker_env(&[
        ("DYNASTREAM_TABLES", &table),
        ("DYNASTREAM_APPLICATION", &application),
        ("DYNASTREAM_SNAPSHOT", "on"),
        ("DYNASTREAM_SNAPSHOT_SEGMENTS", "8"),
        // About 300 units in all: some 20 s at 15 a second.
        ("DYNASTREAM_SNAPSHOT_RCU", "15"),
        ("DYNASTREAM_LEASE_DURATION_MS", "3000"),
        ("DYNASTREAM_STARTING_POSITION", "LATEST"),
    ]);
    let doomed = Worker::start(
        &[
            env.clone(),
            vec![("DYNASTREAM_WORKER_ID".into(), "doomed".into())],
        ]
        .concat(),
    );
    let survivor = Worker::start(
        &[
            env.clone(),
            vec![("DYNASTREAM_WORKER_ID".into(), "survivor".into())],
        ]
        .concat(),
    );
    doomed
        .wait_for_log("took a snapshot segment", 1, Duration::from_secs(60))
        .await;

    // A writer puts, updates and deletes during the snapshot.
    let stop_writer = Arc::new(AtomicBool::new(false));
    let changes = Arc::new(Mutex::new(Vec::<Change>::new()));
    let writer = {
        let client = client.clone();
        let table = table.clone();
        let stop = Arc::clone(&stop_writer);
        let changes = Arc::clone(&changes);
        tokio::spawn(async move {
            let mut n = 1u64;
            while !stop.load(Ordering::Relaxed) {
                let change = match n % 4 {
                    0 => Change::Delete(format!("k{}", (n * 37) % 5000)),
                    1 => Change::Set(format!("new{n}"), n.to_string()),
                    _ => Change::Set(format!("k{}", (n * 53) % 5000), n.to_string()),
                };
                match &change {
                    Change::Set(pk, v) => {
                        client
                            .put_item()
                            .table_name(&table)
                            .item("pk", AttributeValue::S(pk.clone()))
                            .item("v", AttributeValue::N(v.clone()))
                            .item("pad", AttributeValue::S("w".into()))
                            .send()
                            .await
                            .expect("put");
                    }
                    Change::Delete(pk) => {
                        client
                            .delete_item()
                            .table_name(&table)
                            .key("pk", AttributeValue::S(pk.clone()))
                            .send()
                            .await
                            .expect("delete");
                    }
                }
                changes.lock().unwrap().push(change);
                n += 1;
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        })
    };

    // Kill one worker mid-snapshot, once it has delivered a fair part.
    let what = lazy(|| "the doomed worker to deliver 600 snapshot records".to_owned());
    eventually(Duration::from_secs(90), what, || async {
        (doomed.records().iter().filter(|r| is_snapshot(r)).count() >= 600).then_some(())
    })
    .await;
    let store = lease_store(&format!("{application}-leases")).await;
    use dynastream::lease::LeaseStore;
    let (_, killed_records, _) = doomed.kill().await;
    let at_kill = store.list_leases().await.unwrap().leases;
    let taken_over: HashMap<u32, bool> = at_kill
        .iter()
        .filter(|l| l.owner.as_deref() == Some("doomed"))
        .filter_map(|l| l.snapshot.as_ref())
        .filter(|s| !s.complete)
        .filter_map(|s| Some((s.segment?, s.resume_key.is_some())))
        .collect();
    assert!(
        !taken_over.is_empty(),
        "the doomed worker held unfinished segments: {at_kill:#?}"
    );
    assert!(
        taken_over.values().any(|&resumable| resumable),
        "at least one had recorded a page"
    );

    // The survivor finishes the snapshot, then follows the stream.
    survivor
        .wait_for_log("following the table's stream", 1, Duration::from_secs(120))
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop_writer.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    let final_state = table_state(&client, &table).await;

    // Records in the order they arrived, the killed worker's first: it
    // delivered nothing after the survivor could have (a segment is one
    // worker's at a time, and the stream is read only after the snapshot).
    let survivor_records = &survivor;
    let merged = || {
        let mut all = killed_records.clone();
        all.extend(survivor_records.records());
        all
    };
    let what = lazy(|| {
        format!(
            "the records to converge to the table: {:?}",
            mismatch(&merged(), &final_state)
        )
    });
    eventually(Duration::from_secs(120), what, || async {
        mismatch(&merged(), &final_state).is_none().then_some(())
    })
    .await;
    let records = merged();

    // Every pre-existing item was delivered by the snapshot, unless the
    // writer deleted it before the Scan reached it (then its REMOVE was).
    let snapshot_keys: HashSet<String> = records
        .iter()
        .filter(|r| is_snapshot(r))
        .map(pk_of)
        .collect();
    let changes = changes.lock().unwrap().clone();
    let deleted: HashSet<String> = changes
        .iter()
        .filter_map(|c| match c {
            Change::Delete(pk) => Some(pk.clone()),
            _ => None,
        })
        .collect();
    for i in 0..5000 {
        let pk = format!("k{i}");
        assert!(
            snapshot_keys.contains(&pk) || deleted.contains(&pk),
            "{pk} was never delivered by the snapshot"
        );
    }
    // Every change made after the snapshot began came from the stream.
    let stream: Vec<&Value> = records.iter().filter(|r| !is_snapshot(r)).collect();
    for change in &changes {
        let found = stream.iter().any(|r| match change {
            Change::Set(pk, v) => pk_of(r) == *pk && v_of(r).as_deref() == Some(v.as_str()),
            Change::Delete(pk) => pk_of(r) == *pk && r["eventName"] == "REMOVE",
        });
        assert!(found, "{change:?} was not delivered from the stream");
    }
    // Snapshot records are Lambda-shaped INSERTs marked as the snapshot's.
    let sample = records.iter().find(|r| is_snapshot(r)).unwrap();
    assert_eq!(sample["eventName"], "INSERT");
    assert_eq!(sample["userIdentity"]["type"], "Service");
    assert_eq!(sample["eventSource"], "aws:dynamodb");
    assert!(sample["eventSourceARN"]
        .as_str()
        .unwrap()
        .contains("/stream/"));
    assert!(sample["dynamodb"]["Keys"]["pk"]["S"].is_string());

    // Taken-over segments resumed from their checkpoints: at most one page
    // (100 items) of each was delivered twice, and no other segment's.
    let mut twice: BTreeMap<u32, usize> = BTreeMap::new();
    let mut seen = HashSet::new();
    for record in records.iter().filter(|r| is_snapshot(r)) {
        let id = record["eventID"].as_str().unwrap().to_owned();
        if !seen.insert(id.clone()) {
            let segment: u32 = id.split('-').nth(1).unwrap().parse().unwrap();
            *twice.entry(segment).or_default() += 1;
        }
    }
    let pages_twice: usize = twice.values().map(|n| n.div_ceil(100)).sum();
    eprintln!(
        "snapshot: {} records, {} from the snapshot ({} distinct), {} changes written, {} delivered twice in segments {twice:?}, segments taken over {taken_over:?}, pages read twice {pages_twice}",
        records.len(),
        records.iter().filter(|r| is_snapshot(r)).count(),
        seen.len(),
        changes.len(),
        twice.values().sum::<usize>()
    );
    for (segment, count) in &twice {
        assert!(
            taken_over.contains_key(segment),
            "segment {segment} was delivered twice but not taken over"
        );
        assert!(
            *count <= 100,
            "segment {segment}: {count} items delivered twice, more than one page"
        );
    }
    assert!(pages_twice <= taken_over.len());
    survivor
        .wait_for_log(
            "resuming the segment from its recorded position",
            1,
            Duration::from_secs(5),
        )
        .await;
    let (status, _, _) = survivor.terminate().await;
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_exits_after_the_last_item_and_a_restarted_fleet_does_not_scan_again() {
    let client = dynamodb().await;
    let table = unique_name("snaponly");
    // No stream: `only` needs none.
    create_plain_table(&client, &table, "pk").await;
    fill(&client, &table, 2000, PAD).await;
    let application = unique_name("onlyapp");
    let env = worker_env(&[
        ("DYNASTREAM_TABLES", &table),
        ("DYNASTREAM_APPLICATION", &application),
        ("DYNASTREAM_SNAPSHOT", "only"),
        ("DYNASTREAM_SNAPSHOT_SEGMENTS", "4"),
        ("DYNASTREAM_SNAPSHOT_RCU", "1000000"),
        ("DYNASTREAM_FORMAT", "document"),
    ]);
    let started = tokio::time::Instant::now();
    let mut worker = Worker::start(&env);
    let (status, records, logs) = worker.wait(Duration::from_secs(120)).await;
    let took = started.elapsed();
    assert!(status.success(), "{status:?}\n{}", logs.join("\n"));
    let keys: HashSet<&str> = records
        .iter()
        .map(|r| r["keys"]["pk"].as_str().unwrap())
        .collect();
    assert_eq!(keys.len(), 2000, "every item, once each");
    assert_eq!(records.len(), 2000);
    assert!(
        records.iter().all(|r| r["eventName"] == "SNAPSHOT"),
        "{:?}",
        records[0]
    );
    assert_eq!(records[0]["newImage"]["v"], 0);
    assert!(logs
        .iter()
        .any(|l| l.contains("every snapshot is complete")));
    eprintln!(
        "snapshot only: 2000 items of {PAD}+ bytes in {:.1} s from start to exit ({:.0} items/s)",
        took.as_secs_f64(),
        2000.0 / took.as_secs_f64()
    );

    // `dynastream status` shows the snapshot complete.
    let status = dynastream_status(&application, &["--json"]);
    assert!(status.status.success());
    let report: Value = serde_json::from_slice(&status.stdout).unwrap();
    let row = &report["snapshots"][0];
    assert_eq!(row["table"], table.as_str());
    assert_eq!(row["segments"], 4);
    assert_eq!(row["complete"], 4);
    assert_eq!(row["items"], 2000);
    assert_eq!(row["eta_seconds"], 0);
    let text = dynastream_status(&application, &[]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("snapshots: 1") && text.contains("4/4"),
        "{text}"
    );

    // The same application again: nothing to scan, exit at once.
    let mut again = Worker::start(&env);
    let (status, records, logs) = again.wait(Duration::from_secs(60)).await;
    assert!(status.success());
    assert!(
        records.is_empty(),
        "a complete snapshot is never taken again: {records:?}"
    );
    assert!(!logs.iter().any(|l| l.contains("took a snapshot segment")));
}

/// The read capacity both workers' Scans consumed so far.
async fn consumed(workers: &[&Worker], table: &str) -> f64 {
    let mut total = 0.0;
    for worker in workers {
        let (_, metrics) = http_get(&format!("{}/metrics", worker.endpoints().await));
        total +=
            sample(&metrics, "dynastream_snapshot_consumed_rcu_total", &[table]).unwrap_or(0.0);
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_stay_within_the_read_budget_over_a_minute() {
    let client = dynamodb().await;
    let table = unique_name("snaprcu");
    create_plain_table(&client, &table, "pk").await;
    // About 1 KB each: some 750 units of strongly consistent Scan.
    fill(&client, &table, 3000, 1000).await;
    let application = unique_name("rcuapp");
    let env = worker_env(&[
        ("DYNASTREAM_TABLES", &table),
        ("DYNASTREAM_APPLICATION", &application),
        ("DYNASTREAM_SNAPSHOT", "only"),
        ("DYNASTREAM_SNAPSHOT_SEGMENTS", "6"),
        ("DYNASTREAM_SNAPSHOT_RCU", "10"),
        ("DYNASTREAM_BATCH_SIZE", "20"),
        ("DYNASTREAM_PROCESSOR", "count"),
    ]);
    let a = Worker::start(&env);
    let b = Worker::start(&env);
    let what = lazy(|| "Scans to begin".to_owned());
    eventually(Duration::from_secs(60), what, || async {
        (consumed(&[&a, &b], &table).await > 0.0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let before = consumed(&[&a, &b], &table).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    let after = consumed(&[&a, &b], &table).await;
    let used = after - before;
    eprintln!(
        "read budget: {used:.1} units consumed in 60 s against a budget of 600 ({:.1} %)",
        used / 6.0
    );
    assert!(
        used <= 600.0 * 1.1,
        "{used} units in 60 s, over 10 % above the budget of 600"
    );
    assert!(
        used >= 600.0 * 0.7,
        "{used} units in 60 s: the budget went largely unused"
    );
    drop((a, b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_created_while_running_is_found_by_prefix_and_consumed() {
    let client = dynamodb().await;
    let prefix = unique_name("found");
    let application = unique_name("foundapp");
    let env = worker_env(&[
        ("DYNASTREAM_TABLE_PREFIX", &prefix),
        ("DYNASTREAM_APPLICATION", &application),
        ("DYNASTREAM_TABLE_DISCOVERY_INTERVAL_MS", "2000"),
        ("DYNASTREAM_SNAPSHOT", "on"),
        ("DYNASTREAM_SNAPSHOT_SEGMENTS", "2"),
        ("DYNASTREAM_LEASE_DURATION_MS", "3000"),
    ]);
    let worker = Worker::start(&env);
    worker
        .wait_for_log("coordinator running", 1, Duration::from_secs(60))
        .await;
    // A matching table without a stream is reported once, not fatal.
    let streamless = format!("{prefix}-nostream");
    create_plain_table(&client, &streamless, "pk").await;
    let table = format!("{prefix}-orders");
    create_plain_table(&client, &table, "pk").await;
    fill(&client, &table, 30, 10).await;
    enable_stream(&client, &table).await;
    worker
        .wait_for_log("found a new table", 1, Duration::from_secs(30))
        .await;
    let records = worker.wait_for_records(30, Duration::from_secs(60)).await;
    assert!(records.iter().all(is_snapshot));
    worker
        .wait_for_log("following the table's stream", 1, Duration::from_secs(60))
        .await;
    put(&client, &table, "after", 7).await;
    let records = worker.wait_for_records(31, Duration::from_secs(60)).await;
    let last = records.last().unwrap();
    assert_eq!(pk_of(last), "after");
    assert!(!is_snapshot(last));
    let reports = |w: &Worker| {
        w.logs()
            .iter()
            .filter(|l| l.contains("has no stream") && l.contains(&streamless))
            .count()
    };
    assert_eq!(reports(&worker), 1, "reported once over several looks");

    // A deleted table is dropped from the register.
    client
        .delete_table()
        .table_name(&table)
        .send()
        .await
        .unwrap();
    worker
        .wait_for_log("no longer exists or matches", 1, Duration::from_secs(30))
        .await;
    let (status, _, _) = worker.terminate().await;
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_table_stays_registered_while_discovery_looks_elsewhere() {
    let client = dynamodb().await;
    let table = unique_name("configured");
    create_table(&client, &table).await;
    for i in 0..5 {
        put(&client, &table, &format!("k{i}"), i).await;
    }
    let application = unique_name("cfgapp");
    let prefix = unique_name("nothing-matches");
    let env = worker_env(&[
        ("DYNASTREAM_TABLES", &table),
        ("DYNASTREAM_TABLE_PREFIX", &prefix),
        ("DYNASTREAM_APPLICATION", &application),
        ("DYNASTREAM_TABLE_DISCOVERY_INTERVAL_MS", "1000"),
        ("DYNASTREAM_SNAPSHOT", "on"),
        ("DYNASTREAM_SNAPSHOT_SEGMENTS", "2"),
        ("DYNASTREAM_LEASE_DURATION_MS", "3000"),
    ]);
    let worker = Worker::start(&env);
    let records = worker.wait_for_records(5, Duration::from_secs(60)).await;
    assert!(records.iter().all(is_snapshot));
    worker
        .wait_for_log("following the table's stream", 1, Duration::from_secs(60))
        .await;
    // Several looks for tables later, the configured table is still there.
    tokio::time::sleep(Duration::from_secs(3)).await;
    put(&client, &table, "after", 9).await;
    let records = worker.wait_for_records(6, Duration::from_secs(60)).await;
    assert!(!is_snapshot(records.last().unwrap()));
    let store = lease_store(&format!("{application}-leases")).await;
    use dynastream::lease::LeaseStore;
    let items = store.list_leases().await.unwrap().leases;
    assert!(items
        .iter()
        .any(|l| l.registered_table() == Some(table.as_str())));
    let (status, _, logs) = worker.terminate().await;
    assert!(status.success());
    assert!(
        !logs
            .iter()
            .any(|l| l.contains("no longer exists or matches")),
        "a configured table is never dropped by discovery"
    );
    assert_eq!(
        records.iter().filter(|r| is_snapshot(r)).count(),
        5,
        "one snapshot"
    );
}

//! A fleet of worker processes sharing the shards of several tables through
//! the lease table: even spread, takeover after SIGKILL within a lease
//! duration plus one renewal interval, takeover after SIGTERM within one
//! renewal interval plus a second with nothing processed twice, and every
//! change processed at least once, in order per item key.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dynastream::lease::dynamo::DynamoLeaseStore;
use serde_json::Value;
use support::*;
use tokio::time::Instant;

const LEASE_DURATION: Duration = Duration::from_millis(3_000);
const RENEW_INTERVAL: Duration = Duration::from_millis(1_000);

fn count_by_owner(owners: &BTreeMap<String, Option<String>>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for owner in owners.values().flatten() {
        *counts.entry(owner.clone()).or_insert(0) += 1;
    }
    counts
}

/// Polls the lease table until `done` holds; returns how long it took.
async fn wait_for_leases(
    store: &DynamoLeaseStore,
    what: &str,
    done: impl Fn(&BTreeMap<String, Option<String>>) -> bool,
) -> Duration {
    let start = Instant::now();
    eventually(WAIT, what, || async {
        let current = lease_owners(store).await;
        if done(&current) {
            Ok(())
        } else {
            Err(format!("{current:#?}"))
        }
    })
    .await;
    start.elapsed()
}

/// (table, key, value) of a record's new image: one written change.
fn change_of(record: &Value) -> Option<(String, String, i64)> {
    let arn = record["eventSourceARN"].as_str()?;
    let table = arn.split(":table/").nth(1)?.split('/').next()?.to_owned();
    let image = &record["dynamodb"]["NewImage"];
    let key = image["pk"]["S"].as_str()?.to_owned();
    let value = image["n"]["N"].as_str()?.parse().ok()?;
    Some((table, key, value))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_spreads_leases_and_survives_sigkill_and_sigterm() {
    let client = dynamodb().await;
    let application = unique_name("fleet");
    let tables: Vec<String> = (0..6).map(|i| unique_name(&format!("fleet{i}"))).collect();
    for table in &tables {
        create_table(&client, table).await;
    }
    let store = DynamoLeaseStore::new(client.clone(), format!("{application}-leases"));
    let table_list = tables.join(",");
    let lease_ms = LEASE_DURATION.as_millis().to_string();
    let start_worker = |id: &str| {
        Worker::start(&worker_env(&[
            ("DYNASTREAM_TABLES", &table_list),
            ("DYNASTREAM_APPLICATION", &application),
            ("DYNASTREAM_WORKER_ID", id),
            ("DYNASTREAM_STARTING_POSITION", "TRIM_HORIZON"),
            ("DYNASTREAM_LEASE_DURATION_MS", &lease_ms),
            ("DYNASTREAM_SHARD_SYNC_INTERVAL_MS", "2000"),
        ]))
    };
    let killed = start_worker("worker-killed");
    let stopped = start_worker("worker-stopped");
    let survivor = start_worker("worker-survivor");

    let spread = wait_for_leases(&store, "an even spread", |owners| {
        let counts = count_by_owner(owners);
        owners.len() == 6 && counts.len() == 3 && counts.values().all(|&c| c == 2)
    })
    .await;
    eprintln!("fleet: 6 leases spread 2/2/2 over 3 workers {spread:.1?} after start");

    // A steady writer: each table's keys k0..k4 get increasing values.
    let written: Arc<Mutex<Vec<(String, String, i64)>>> = Arc::default();
    let writing = Arc::new(AtomicBool::new(true));
    let writer = {
        let client = client.clone();
        let tables = tables.clone();
        let written = Arc::clone(&written);
        let writing = Arc::clone(&writing);
        tokio::spawn(async move {
            let mut value = 0i64;
            while writing.load(Ordering::SeqCst) {
                value += 1;
                let table = &tables[value as usize % tables.len()];
                let key = format!("k{}", value % 5);
                put(&client, table, &key, value).await;
                written.lock().unwrap().push((table.clone(), key, value));
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;

    let before_kill = lease_owners(&store).await;
    let victims: Vec<String> = before_kill
        .iter()
        .filter(|(_, o)| o.as_deref() == Some("worker-killed"))
        .map(|(k, _)| k.clone())
        .collect();
    let (_, killed_records, _) = killed.kill().await;
    let sigkill_takeover = wait_for_leases(&store, "takeover after SIGKILL", |owners| {
        victims
            .iter()
            .all(|key| matches!(owners.get(key), Some(Some(o)) if o != "worker-killed"))
    })
    .await;
    eprintln!(
        "fleet: SIGKILL takeover of {} leases in {sigkill_takeover:.2?} (lease duration {LEASE_DURATION:?}, renewal {RENEW_INTERVAL:?})",
        victims.len()
    );

    tokio::time::sleep(Duration::from_secs(3)).await;
    let handed_over: Vec<String> = lease_owners(&store)
        .await
        .iter()
        .filter(|(_, o)| o.as_deref() == Some("worker-stopped"))
        .map(|(k, _)| k.clone())
        .collect();
    assert!(!handed_over.is_empty(), "the worker to stop holds leases");
    let term_sent = Instant::now();
    let (status, stopped_records, stopped_logs) = stopped.terminate().await;
    let exit_after = term_sent.elapsed();
    assert!(
        status.success(),
        "SIGTERM exits 0: {status:?}\n{}",
        stopped_logs.join("\n")
    );
    let sigterm_takeover = wait_for_leases(&store, "takeover after SIGTERM", |owners| {
        handed_over
            .iter()
            .all(|key| matches!(owners.get(key), Some(Some(o)) if o != "worker-stopped"))
    })
    .await
        + exit_after;
    eprintln!(
        "fleet: SIGTERM handoff of {} leases in {sigterm_takeover:.2?} from the signal (process exited after {exit_after:.2?})",
        handed_over.len()
    );

    tokio::time::sleep(Duration::from_secs(2)).await;
    writing.store(false, Ordering::SeqCst);
    writer.await.unwrap();
    let written = written.lock().unwrap().clone();
    let expected: HashSet<(String, String, i64)> = written.iter().cloned().collect();

    // Wait until the survivor has delivered everything nobody else did.
    let others: HashSet<(String, String, i64)> = killed_records
        .iter()
        .chain(stopped_records.iter())
        .filter_map(change_of)
        .collect();
    eventually(WAIT, "the survivor to catch up", || async {
        let seen: HashSet<_> = survivor.records().iter().filter_map(change_of).collect();
        expected
            .iter()
            .all(|c| seen.contains(c) || others.contains(c))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (status, survivor_records, survivor_logs) = survivor.terminate().await;
    assert!(status.success());
    // The fleet read the lease table through its indexes, and judged the
    // killed worker by its presence item (no lease-by-lease expiry).
    let logged = |needle: &str| survivor_logs.iter().any(|line| line.contains(needle));
    assert!(
        logged("reading the lease table through its indexes")
            && logged("presence item has not changed for a lease duration"),
        "{}",
        survivor_logs.join("\n")
    );

    let outputs: [(&str, &Vec<Value>); 3] = [
        ("worker-killed", &killed_records),
        ("worker-stopped", &stopped_records),
        ("worker-survivor", &survivor_records),
    ];
    let mut delivered: HashMap<(String, String, i64), usize> = HashMap::new();
    for (worker, records) in outputs {
        let mut last: HashMap<(String, String), i64> = HashMap::new();
        for change in records.iter().filter_map(change_of) {
            let (table, key, value) = change.clone();
            if let Some(previous) = last.insert((table.clone(), key.clone()), value) {
                assert!(
                    previous < value,
                    "{worker}: {table}/{key} went from {previous} to {value}: out of order or repeated"
                );
            }
            *delivered.entry(change).or_default() += 1;
        }
    }
    let lost: Vec<_> = expected
        .iter()
        .filter(|c| !delivered.contains_key(*c))
        .collect();
    let duplicates: usize = delivered.values().map(|n| n - 1).sum();
    let set_of = |records: &Vec<Value>| -> HashSet<(String, String, i64)> {
        records.iter().filter_map(change_of).collect()
    };
    let (killed_set, stopped_set, survivor_set) = (
        set_of(&killed_records),
        set_of(&stopped_records),
        set_of(&survivor_records),
    );
    // The SIGKILLed worker's leases went to the other two; the SIGTERMed
    // worker's went to the survivor.
    let sigkill_duplicates = killed_set
        .iter()
        .filter(|c| stopped_set.contains(*c) || survivor_set.contains(*c))
        .count();
    let sigterm_duplicates = stopped_set.intersection(&survivor_set).count();
    eprintln!(
        "fleet: {} changes written, {} delivered, {} lost, {} duplicates in all: {} after the SIGKILL, {} after the SIGTERM",
        expected.len(),
        delivered.values().sum::<usize>(),
        lost.len(),
        duplicates,
        sigkill_duplicates,
        sigterm_duplicates
    );
    assert!(lost.is_empty(), "lost changes: {lost:?}");
    assert_eq!(
        sigterm_duplicates, 0,
        "a graceful handoff processes nothing twice"
    );
    assert!(
        sigkill_takeover <= LEASE_DURATION + RENEW_INTERVAL + Duration::from_millis(300),
        "SIGKILL takeover took {sigkill_takeover:?}"
    );
    assert!(
        sigterm_takeover <= RENEW_INTERVAL + Duration::from_secs(1),
        "SIGTERM takeover took {sigterm_takeover:?}"
    );
}

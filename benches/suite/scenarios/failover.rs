//! Failover and handoff at default lease settings: three workers share six
//! tables while a writer keeps changing items; one worker is killed with
//! SIGKILL, later another is stopped with SIGTERM. Measured: seconds until
//! every lease of the departed worker has a new owner, and records processed
//! twice. The raw loop has no counterpart (it has no leases), so the
//! reference beside each figure is the bound the lease protocol sets: a dead
//! owner's lease must expire (lease duration), a departing owner hands its
//! leases over at once.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dynastream::lease::dynamo::DynamoLeaseStore;
use serde_json::Value;
use tokio::time::Instant;

use super::worker_env;
use crate::report::Figure;
use crate::support::{create_table, dynamodb, lease_owners, put, Worker};

/// DYNASTREAM_LEASE_DURATION_MS's default.
const LEASE_DURATION: Duration = Duration::from_secs(10);

pub async fn run() {
    let client = dynamodb().await;
    let tables: Vec<String> = (0..6).map(|i| format!("bench-failover-{i}")).collect();
    for table in &tables {
        create_table(&client, table).await;
    }
    let store = DynamoLeaseStore::new(client.clone(), "bench-failover-leases");
    let list = tables.join(",");
    let start = |id: &str| {
        Worker::start(&worker_env(&[
            ("DYNASTREAM_TABLES", &list),
            ("DYNASTREAM_APPLICATION", "bench-failover"),
            ("DYNASTREAM_WORKER_ID", id),
            ("DYNASTREAM_STARTING_POSITION", "TRIM_HORIZON"),
        ]))
    };
    let killed = start("killed");
    let stopped = start("stopped");
    let survivor = start("survivor");
    wait_for(&store, Duration::from_secs(120), |owners| {
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for owner in owners.values().flatten() {
            *counts.entry(owner).or_default() += 1;
        }
        owners.len() == 6 && counts.len() == 3
    })
    .await;

    let writing = Arc::new(AtomicBool::new(true));
    let writer = {
        let (client, tables, writing) = (client.clone(), tables.clone(), Arc::clone(&writing));
        tokio::spawn(async move {
            let mut written = 0u64;
            while writing.load(Ordering::Relaxed) {
                let table = &tables[written as usize % tables.len()];
                put(&client, table, &format!("k{}", written % 7), written as i64).await;
                written += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            written
        })
    };
    tokio::time::sleep(Duration::from_secs(5)).await;

    let victims = held_by(&lease_owners(&store).await, "killed");
    let killed_at = Instant::now();
    let (_, killed_records, _) = killed.kill().await;
    let sigkill = until_moved(&store, &victims, "killed", killed_at).await;
    eprintln!(
        "failover: {} leases of the SIGKILLed worker taken over in {sigkill:.2?}",
        victims.len()
    );

    tokio::time::sleep(Duration::from_secs(5)).await;
    let handed = held_by(&lease_owners(&store).await, "stopped");
    let signalled = Instant::now();
    let (status, stopped_records, _) = stopped.terminate().await;
    assert!(status.success(), "SIGTERM exits 0");
    let sigterm = until_moved(&store, &handed, "stopped", signalled).await;
    eprintln!(
        "failover: {} leases of the SIGTERMed worker handed over in {sigterm:.2?}",
        handed.len()
    );

    tokio::time::sleep(Duration::from_secs(3)).await;
    writing.store(false, Ordering::Relaxed);
    let written = writer.await.expect("the writer");
    let deadline = Instant::now() + Duration::from_secs(60);
    let everyone = |survivor: &[Value]| -> HashMap<(String, String, String), usize> {
        let mut seen = HashMap::new();
        for record in killed_records
            .iter()
            .chain(&stopped_records)
            .chain(survivor)
        {
            *seen.entry(change_of(record)).or_default() += 1;
        }
        seen
    };
    while (everyone(&survivor.records()).len() as u64) < written {
        assert!(Instant::now() < deadline, "the survivor did not catch up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, survivor_records, _) = survivor.terminate().await;
    let seen = everyone(&survivor_records);
    let twice = |from: &[Value], to: &[&[Value]]| -> usize {
        let theirs: std::collections::HashSet<_> =
            to.iter().flat_map(|r| r.iter()).map(change_of).collect();
        from.iter()
            .map(change_of)
            .filter(|c| theirs.contains(c))
            .count()
    };
    let sigkill_twice = twice(&killed_records, &[&stopped_records, &survivor_records]);
    let sigterm_twice = twice(&stopped_records, &[&survivor_records]);
    let lost = written.saturating_sub(seen.len() as u64);
    eprintln!(
        "failover: {written} changes written, {} seen, {lost} lost",
        seen.len()
    );

    Figure::new(
        "failover",
        "s until every lease of a SIGKILLed worker has an owner",
        sigkill.as_secs_f64(),
    )
    .reference(LEASE_DURATION.as_secs_f64(), "lease duration")
    .target(
        "<= lease duration + one renewal (13.3 s)",
        sigkill.as_secs_f64() <= 13.4,
    )
    .emit();
    Figure::new(
        "failover",
        "records processed twice after the SIGKILL",
        sigkill_twice as f64,
    )
    .reference(0.0, "at least once: some are expected")
    .emit();
    Figure::new(
        "failover",
        "s until every lease of a SIGTERMed worker has an owner",
        sigterm.as_secs_f64(),
    )
    .reference(0.0, "handed over at once")
    .emit();
    Figure::new(
        "failover",
        "records processed twice after the SIGTERM",
        sigterm_twice as f64,
    )
    .reference(0.0, "none")
    .target("0", sigterm_twice == 0)
    .emit();
    Figure::new("failover", "changes lost", lost as f64)
        .reference(0.0, "none")
        .target("0", lost == 0)
        .emit();
}

/// (stream, key, value) of a record's new image.
fn change_of(record: &Value) -> (String, String, String) {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    (
        text(&record["eventSourceARN"]),
        text(&record["dynamodb"]["Keys"]["pk"]["S"]),
        text(&record["dynamodb"]["NewImage"]["n"]["N"]),
    )
}

fn held_by(owners: &BTreeMap<String, Option<String>>, worker: &str) -> Vec<String> {
    owners
        .iter()
        .filter(|(_, owner)| owner.as_deref() == Some(worker))
        .map(|(key, _)| key.clone())
        .collect()
}

fn moved(owners: &BTreeMap<String, Option<String>>, leases: &[String], from: &str) -> bool {
    leases
        .iter()
        .all(|key| matches!(owners.get(key), Some(Some(owner)) if owner != from))
}

/// Time from `since` until every lease in `leases` has an owner other than `from`.
async fn until_moved(
    store: &DynamoLeaseStore,
    leases: &[String],
    from: &str,
    since: Instant,
) -> Duration {
    wait_for(store, Duration::from_secs(120), |owners| {
        moved(owners, leases, from)
    })
    .await;
    since.elapsed()
}

async fn wait_for(
    store: &DynamoLeaseStore,
    timeout: Duration,
    done: impl Fn(&BTreeMap<String, Option<String>>) -> bool,
) {
    let deadline = Instant::now() + timeout;
    while !done(&lease_owners(store).await) {
        assert!(
            Instant::now() < deadline,
            "the leases did not settle in {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

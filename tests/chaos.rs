//! A chaos run: three worker processes of the built binary share three tables,
//! each worker behind its own fault proxy, while a writer changes the tables at
//! a steady rate and a chaos loop SIGKILLs and SIGTERMs workers, freezes
//! DynamoDB Local (SIGSTOP) and injects proxy faults. Afterwards every change
//! must have been processed at least once, and no worker process may have
//! delivered a change of an item key after a later change of the same key.
//!
//! `DYNASTREAM_CHAOS_SECONDS` sets how long the chaos lasts (default 20, the
//! short run of `cargo test`; `scripts/chaos` runs the long one),
//! `DYNASTREAM_CHAOS_SEED` replays a run's choices, `DYNASTREAM_CHAOS_OPS_PER_SECOND`
//! sets the writer's rate (default 25).

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use dynastream::lease::dynamo::DynamoLeaseStore;
use dynastream::lease::{ItemKind, LeaseStore};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use support::fault_proxy::Proxy;
use support::*;
use tokio::time::Instant;

const WORKERS: usize = 3;
const TABLES: usize = 3;
const KEYS_PER_TABLE: usize = 20;
/// Every this many writes one is a delete (of an item that exists).
const DELETE_EVERY: u64 = 7;
const LEASE_DURATION_MS: u64 = 3_000;
const CHAOS_TICK: Duration = Duration::from_secs(2);
/// How long delivery may take after the chaos, plus a quarter of the chaos's length.
const DELIVERY_WAIT: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Event {
    Insert,
    Modify,
    Remove,
}

/// What identifies a change in a delivered record: table, key, event and the
/// value (the new image's for an insert or update, the old image's for a
/// delete; every value is written once, so each change has its own).
type ChangeId = (String, String, Event, i64);

fn change_of(record: &Value) -> Option<ChangeId> {
    let arn = record["eventSourceARN"].as_str()?;
    let table = arn.split(":table/").nth(1)?.split('/').next()?.to_owned();
    let dynamodb = &record["dynamodb"];
    let key = dynamodb["Keys"]["pk"]["S"].as_str()?.to_owned();
    let (event, image) = match record["eventName"].as_str()? {
        "INSERT" => (Event::Insert, &dynamodb["NewImage"]),
        "MODIFY" => (Event::Modify, &dynamodb["NewImage"]),
        "REMOVE" => (Event::Remove, &dynamodb["OldImage"]),
        _ => return None,
    };
    let value = image["n"]["N"].as_str()?.parse().ok()?;
    Some((table, key, event, value))
}

/// Writes puts (inserts of absent keys), updates and deletes at a steady rate
/// until `writing` is cleared; returns every change in the order written.
async fn write_changes(
    client: aws_sdk_dynamodb::Client,
    tables: Vec<String>,
    ops_per_second: f64,
    seed: u64,
    writing: Arc<AtomicBool>,
    written: Arc<Mutex<Vec<ChangeId>>>,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut present: HashMap<(usize, usize), i64> = HashMap::new();
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / ops_per_second));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut counter = 0i64;
    while writing.load(Ordering::SeqCst) {
        ticks.tick().await;
        counter += 1;
        let t = rng.gen_range(0..tables.len());
        let table = &tables[t];
        let change = if counter as u64 % DELETE_EVERY == 0 && !present.is_empty() {
            // Delete an item that exists, so the delete is a stream record.
            let mut existing: Vec<(usize, usize)> = present.keys().copied().collect();
            existing.sort_unstable();
            let (t, k) = existing[rng.gen_range(0..existing.len())];
            let old = present.remove(&(t, k)).expect("present");
            let key = format!("k{k}");
            delete(&client, &tables[t], &key).await;
            (tables[t].clone(), key, Event::Remove, old)
        } else {
            let k = rng.gen_range(0..KEYS_PER_TABLE);
            let key = format!("k{k}");
            let event = if present.contains_key(&(t, k)) {
                client
                    .update_item()
                    .table_name(table)
                    .key("pk", AttributeValue::S(key.clone()))
                    .update_expression("SET n = :v")
                    .expression_attribute_values(":v", AttributeValue::N(counter.to_string()))
                    .send()
                    .await
                    .expect("update item");
                Event::Modify
            } else {
                put(&client, table, &key, counter).await;
                Event::Insert
            };
            present.insert((t, k), counter);
            (table.clone(), key, event, counter)
        };
        written.lock().unwrap().push(change);
    }
}

/// What one worker process delivered.
struct Output {
    label: String,
    how_it_ended: String,
    records: Vec<Value>,
}

/// The three worker slots: the process in each (none while it is down), the
/// ids of workers that are down (for the ownership monitor), and the output
/// of every process that has ended.
struct Fleet {
    envs: Vec<Vec<(String, String)>>,
    slots: Mutex<Vec<Option<(String, Worker)>>>,
    generations: Mutex<Vec<usize>>,
    down: Mutex<HashSet<String>>,
    ended: Mutex<Vec<Output>>,
}

fn worker_id(slot: usize) -> String {
    format!("chaos-worker-{slot}")
}

impl Fleet {
    fn start(&self, slot: usize) {
        let generation = {
            let mut generations = self.generations.lock().unwrap();
            generations[slot] += 1;
            generations[slot]
        };
        let label = format!("{}#{generation}", worker_id(slot));
        let worker = Worker::start(&self.envs[slot]);
        self.slots.lock().unwrap()[slot] = Some((label, worker));
        self.down.lock().unwrap().remove(&worker_id(slot));
    }

    /// Takes a running worker out of its slot, if at least two are running.
    fn take_one(&self, pick: usize) -> Option<(usize, String, Worker)> {
        let mut slots = self.slots.lock().unwrap();
        let running: Vec<usize> = (0..WORKERS).filter(|&i| slots[i].is_some()).collect();
        if running.len() < 2 {
            return None;
        }
        let slot = running[pick % running.len()];
        let (label, worker) = slots[slot].take().expect("running");
        Some((slot, label, worker))
    }

    fn record_end(&self, label: String, status: ExitStatus, signal: &str, records: Vec<Value>) {
        self.ended.lock().unwrap().push(Output {
            label,
            how_it_ended: format!("{signal}: {status}"),
            records,
        });
    }

    /// Every change delivered so far, by any process, ended or running.
    fn delivered(&self) -> HashSet<ChangeId> {
        let mut seen: HashSet<ChangeId> = HashSet::new();
        for output in self.ended.lock().unwrap().iter() {
            seen.extend(output.records.iter().filter_map(change_of));
        }
        for (_, worker) in self.slots.lock().unwrap().iter().flatten() {
            seen.extend(worker.records().iter().filter_map(change_of));
        }
        seen
    }
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    Kill { down_ms: u64 },
    Term { down_ms: u64 },
    FreezeDynamoDbLocal { ms: u64 },
    Rule { worker: usize, rule: usize, ms: u64 },
}

/// The proxy rules the chaos loop chooses from: (name, rule).
fn proxy_rules() -> Vec<(&'static str, Value)> {
    vec![
        (
            "throttle",
            json!({"api": "*", "fault": "throttle", "probability": 0.5}),
        ),
        (
            "error500",
            json!({"api": "*", "fault": "error500", "probability": 0.2}),
        ),
        (
            "latency",
            json!({"api": "*", "fault": "latency", "ms": 300}),
        ),
        ("blackhole", json!({"api": "*", "fault": "blackhole"})),
        (
            "expired_iterator",
            json!({"api": "DynamoDBStreams_20120810.GetRecords", "fault": "rewrite",
                   "code": "ExpiredIteratorException", "probability": 0.3}),
        ),
    ]
}

fn dynamodb_local_pid() -> u32 {
    let port = dynamodb_local()
        .endpoint
        .rsplit(':')
        .next()
        .expect("endpoint has a port")
        .to_owned();
    let run_dir =
        std::env::var("DYNASTREAM_RUN_DIR").unwrap_or_else(|_| "/tmp/dynastream-ddb-local".into());
    let path = format!("{run_dir}/{port}/pid");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("read {path}: {e}"))
        .trim()
        .parse()
        .expect("a pid")
}

/// The longest a shard lease had no live owner: no owner, or an owner whose
/// process was SIGKILLed or had exited and was not yet restarted.
#[derive(Default)]
struct OwnerlessGaps {
    since: HashMap<String, Instant>,
    longest: Duration,
    longest_shard: String,
}

async fn watch_owners(
    store: DynamoLeaseStore,
    fleet: Arc<Fleet>,
    watching: Arc<AtomicBool>,
) -> OwnerlessGaps {
    let mut gaps = OwnerlessGaps::default();
    while watching.load(Ordering::SeqCst) {
        if let Ok(scan) = store.list_leases().await {
            let now = Instant::now();
            let down = fleet.down.lock().unwrap().clone();
            for lease in scan.leases.iter().filter(|l| l.kind() == ItemKind::Shard) {
                let ownerless = lease.owner.as_ref().is_none_or(|o| down.contains(o));
                match (ownerless, gaps.since.get(&lease.key).copied()) {
                    (true, None) => {
                        gaps.since.insert(lease.key.clone(), now);
                    }
                    (false, Some(since)) => {
                        gaps.since.remove(&lease.key);
                        if now - since > gaps.longest {
                            gaps.longest = now - since;
                            gaps.longest_shard = lease.key.clone();
                        }
                    }
                    _ => {}
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let now = Instant::now();
    for (key, since) in gaps.since.clone() {
        if now - since > gaps.longest {
            gaps.longest = now - since;
            gaps.longest_shard = key;
        }
    }
    gaps
}

async fn inject(fault: Fault, fleet: Arc<Fleet>, proxies: Arc<Vec<Proxy>>, pick: usize) -> bool {
    match fault {
        Fault::Kill { down_ms } => {
            let Some((slot, label, worker)) = fleet.take_one(pick) else {
                return false;
            };
            fleet.down.lock().unwrap().insert(worker_id(slot));
            eprintln!("chaos: SIGKILL {label}, restart in {down_ms} ms");
            let (status, records, _) = worker.kill().await;
            fleet.record_end(label, status, "SIGKILL", records);
            tokio::time::sleep(Duration::from_millis(down_ms)).await;
            fleet.start(slot);
        }
        Fault::Term { down_ms } => {
            let Some((slot, label, worker)) = fleet.take_one(pick) else {
                return false;
            };
            eprintln!("chaos: SIGTERM {label}, restart {down_ms} ms after it exits");
            let (status, records, _) = worker.terminate().await;
            fleet.down.lock().unwrap().insert(worker_id(slot));
            fleet.record_end(label, status, "SIGTERM", records);
            tokio::time::sleep(Duration::from_millis(down_ms)).await;
            fleet.start(slot);
        }
        Fault::FreezeDynamoDbLocal { ms } => {
            let pid = dynamodb_local_pid();
            eprintln!("chaos: SIGSTOP DynamoDB Local (pid {pid}) for {ms} ms");
            signal(pid, "STOP");
            tokio::time::sleep(Duration::from_millis(ms)).await;
            signal(pid, "CONT");
        }
        Fault::Rule { worker, rule, ms } => {
            let (name, rule) = proxy_rules().swap_remove(rule);
            eprintln!(
                "chaos: {name} on the proxy of {} for {ms} ms",
                worker_id(worker)
            );
            let id = proxies[worker].rule(rule).await;
            tokio::time::sleep(Duration::from_millis(ms)).await;
            proxies[worker].remove(id).await;
        }
    }
    true
}

fn fault_name(fault: &Fault) -> &'static str {
    match fault {
        Fault::Kill { .. } => "sigkill_worker",
        Fault::Term { .. } => "sigterm_worker",
        Fault::FreezeDynamoDbLocal { .. } => "sigstop_dynamodb_local",
        Fault::Rule { rule, .. } => proxy_rules()[*rule].0,
    }
}

fn env_number<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(text) => text
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} is not a number")),
        Err(_) => default,
    }
}

/// Per item key, within one process's output: a change seen for the first
/// time must come after every change of that key seen so far (a replay from a
/// checkpoint repeats changes already seen, which is a duplicate, not a
/// violation). Returns the duplicates and a description of each violation.
fn check_order(output: &Output, order: &HashMap<ChangeId, usize>) -> (usize, Vec<String>) {
    let mut seen: HashMap<(String, String), HashSet<usize>> = HashMap::new();
    let mut latest: HashMap<(String, String), usize> = HashMap::new();
    let (mut duplicates, mut violations) = (0, Vec::new());
    for change in output.records.iter().filter_map(change_of) {
        let Some(&position) = order.get(&change) else {
            continue;
        };
        let item = (change.0.clone(), change.1.clone());
        let seen = seen.entry(item.clone()).or_default();
        if !seen.insert(position) {
            duplicates += 1;
            continue;
        }
        let latest = latest.entry(item).or_insert(position);
        if position < *latest {
            violations.push(format!(
                "{}: {}/{} change #{position} {:?} delivered for the first time after change #{}",
                output.label, change.0, change.1, change, *latest
            ));
        }
        *latest = (*latest).max(position);
    }
    (duplicates, violations)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_chaos_run_loses_nothing_and_keeps_per_key_order() {
    let chaos_for = Duration::from_secs(env_number("DYNASTREAM_CHAOS_SECONDS", 20u64));
    let seed = env_number("DYNASTREAM_CHAOS_SEED", rand::random::<u64>());
    let ops_per_second = env_number("DYNASTREAM_CHAOS_OPS_PER_SECOND", 25f64);
    eprintln!(
        "chaos: seed {seed} (DYNASTREAM_CHAOS_SEED={seed} replays the choices), {chaos_for:?} of chaos, {ops_per_second} writes/s"
    );
    let started = Instant::now();

    let client = dynamodb().await;
    let application = unique_name("chaos");
    let tables: Vec<String> = (0..TABLES)
        .map(|i| unique_name(&format!("chaos{i}")))
        .collect();
    for table in &tables {
        create_table(&client, table).await;
    }
    let proxies: Arc<Vec<Proxy>> = Arc::new((0..WORKERS).map(|_| Proxy::start()).collect());
    let table_list = tables.join(",");
    let lease_ms = LEASE_DURATION_MS.to_string();
    let envs = (0..WORKERS)
        .map(|slot| {
            let mut env = worker_env(&[
                ("DYNASTREAM_TABLES", &table_list),
                ("DYNASTREAM_APPLICATION", &application),
                ("DYNASTREAM_WORKER_ID", &worker_id(slot)),
                ("DYNASTREAM_STARTING_POSITION", "TRIM_HORIZON"),
                ("DYNASTREAM_LEASE_DURATION_MS", &lease_ms),
                ("DYNASTREAM_SHARD_SYNC_INTERVAL_MS", "2000"),
                ("DYNASTREAM_SHUTDOWN_GRACE_MS", "5000"),
            ]);
            for (name, value) in env.iter_mut() {
                if name == "AWS_ENDPOINT_URL" {
                    value.clone_from(&proxies[slot].url);
                }
            }
            env
        })
        .collect();
    let fleet = Arc::new(Fleet {
        envs,
        slots: Mutex::new((0..WORKERS).map(|_| None).collect()),
        generations: Mutex::new(vec![0; WORKERS]),
        down: Mutex::default(),
        ended: Mutex::default(),
    });
    for slot in 0..WORKERS {
        fleet.start(slot);
    }

    // Wait until every shard has an owner before the chaos starts.
    let store = lease_store(&format!("{application}-leases")).await;
    eventually(WAIT, "every shard to get an owner", || async {
        let owned = match store.list_leases().await {
            Ok(scan) => scan
                .leases
                .iter()
                .filter(|l| l.kind() == ItemKind::Shard && l.owner.is_some())
                .count(),
            Err(_) => 0,
        };
        if owned >= TABLES {
            Ok(())
        } else {
            Err(format!("{owned} of {TABLES} shards owned"))
        }
    })
    .await;
    eprintln!(
        "chaos: every shard owned {:.1?} after start",
        started.elapsed()
    );

    let watching = Arc::new(AtomicBool::new(true));
    let watcher = tokio::spawn(watch_owners(
        lease_store(&format!("{application}-leases")).await,
        Arc::clone(&fleet),
        Arc::clone(&watching),
    ));
    let writing = Arc::new(AtomicBool::new(true));
    let written: Arc<Mutex<Vec<ChangeId>>> = Arc::default();
    let writer = tokio::spawn(write_changes(
        client.clone(),
        tables.clone(),
        ops_per_second,
        seed ^ 0x5eed,
        Arc::clone(&writing),
        Arc::clone(&written),
    ));

    // The chaos loop.
    let mut rng = StdRng::seed_from_u64(seed);
    let mut actions = Vec::new();
    let chaos_started = Instant::now();
    while chaos_started.elapsed() < chaos_for {
        tokio::time::sleep(CHAOS_TICK).await;
        let fault = match rng.gen_range(0..4) {
            0 => Fault::Kill {
                down_ms: rng.gen_range(1_000..=3_000),
            },
            1 => Fault::Term {
                down_ms: rng.gen_range(0..=1_000),
            },
            2 => Fault::FreezeDynamoDbLocal {
                ms: rng.gen_range(1_000..=2_000),
            },
            _ => Fault::Rule {
                worker: rng.gen_range(0..WORKERS),
                rule: rng.gen_range(0..proxy_rules().len()),
                ms: rng.gen_range(2_000..=4_000),
            },
        };
        let pick = rng.gen_range(0..WORKERS);
        let name = fault_name(&fault);
        let task = tokio::spawn(inject(
            fault,
            Arc::clone(&fleet),
            Arc::clone(&proxies),
            pick,
        ));
        actions.push((name, task));
    }
    let mut faults: BTreeMap<&str, usize> = BTreeMap::new();
    for (name, task) in actions {
        if task.await.expect("a chaos action") {
            *faults.entry(name).or_default() += 1;
        } else {
            *faults.entry("skipped_fewer_than_two_running").or_default() += 1;
        }
    }
    for proxy in proxies.iter() {
        proxy.clear().await;
    }
    writing.store(false, Ordering::SeqCst);
    writer.await.expect("the writer");
    let written = written.lock().unwrap().clone();
    let order: HashMap<ChangeId, usize> = written
        .iter()
        .enumerate()
        .map(|(i, c)| (c.clone(), i))
        .collect();
    eprintln!(
        "chaos: chaos over after {:.1?}, {} changes written; waiting for delivery",
        started.elapsed(),
        written.len()
    );

    let wait_started = Instant::now();
    let delivered_all = loop {
        let delivered = fleet.delivered();
        if written.iter().all(|c| delivered.contains(c)) {
            break true;
        }
        if wait_started.elapsed() > DELIVERY_WAIT + chaos_for / 4 {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!(
        "chaos: delivery {} after {:.1?}",
        if delivered_all {
            "complete"
        } else {
            "INCOMPLETE"
        },
        wait_started.elapsed()
    );
    watching.store(false, Ordering::SeqCst);
    let gaps = watcher.await.expect("the lease watcher");

    let mut injected: BTreeMap<String, u64> = BTreeMap::new();
    for proxy in proxies.iter() {
        let stats = proxy.stats().await;
        for api in stats.as_object().into_iter().flat_map(|o| o.values()) {
            for (kind, n) in api["injected"].as_object().into_iter().flatten() {
                *injected.entry(kind.clone()).or_default() += n.as_u64().unwrap_or(0);
            }
        }
    }

    let running: Vec<(String, Worker)> = fleet
        .slots
        .lock()
        .unwrap()
        .iter_mut()
        .filter_map(Option::take)
        .collect();
    let mut outputs: Vec<Output> = std::mem::take(&mut *fleet.ended.lock().unwrap());
    let mut logs = Vec::new();
    for (label, worker) in running {
        let (status, records, worker_logs) = worker.terminate().await;
        logs.push((label.clone(), worker_logs));
        outputs.push(Output {
            label,
            how_it_ended: format!("final SIGTERM: {status}"),
            records,
        });
    }

    let mut delivered: HashSet<ChangeId> = HashSet::new();
    let (mut records, mut unknown, mut duplicates) = (0, 0, 0);
    let mut violations = Vec::new();
    for output in &outputs {
        let (process_duplicates, process_violations) = check_order(output, &order);
        duplicates += process_duplicates;
        violations.extend(process_violations);
        for change in output.records.iter().filter_map(change_of) {
            records += 1;
            if !order.contains_key(&change) {
                unknown += 1;
            }
            delivered.insert(change);
        }
        eprintln!(
            "chaos: {} ({}) delivered {} records",
            output.label,
            output.how_it_ended,
            output.records.len()
        );
    }
    let lost: Vec<&ChangeId> = written.iter().filter(|c| !delivered.contains(*c)).collect();
    let delivered_known = delivered.iter().filter(|c| order.contains_key(*c)).count();
    eprintln!(
        "chaos: seed {seed}: {} changes written, {delivered_known} delivered ({records} records), \
         {} duplicates ({duplicates} within a process), {} out-of-order, {} lost, {unknown} unknown",
        written.len(),
        records - delivered_known - unknown,
        violations.len(),
        lost.len(),
    );
    eprintln!("chaos: faults injected by the chaos loop: {faults:?}");
    eprintln!("chaos: faults the proxies injected, by kind: {injected:?}");
    eprintln!(
        "chaos: longest time a shard had no live owner: {:.2?} ({})",
        gaps.longest, gaps.longest_shard
    );
    eprintln!("chaos: total {:.1?}", started.elapsed());

    let failed = !lost.is_empty() || !violations.is_empty() || unknown > 0;
    if failed && std::env::var_os("DYNASTREAM_TEST_LOGS").is_none() {
        for (label, lines) in &logs {
            let tail: Vec<&String> = lines.iter().rev().take(40).collect();
            eprintln!("chaos: last log lines of {label}:");
            for line in tail.into_iter().rev() {
                eprintln!("  {line}");
            }
        }
    }
    assert!(
        violations.is_empty(),
        "seed {seed}: out-of-order deliveries:\n{}",
        violations.join("\n")
    );
    assert!(
        lost.is_empty(),
        "seed {seed}: {} lost changes, first: {:?}",
        lost.len(),
        &lost[..lost.len().min(20)]
    );
    assert_eq!(unknown, 0, "seed {seed}: records of changes never written");
    assert!(delivered_all);
}

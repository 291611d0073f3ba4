//! Drain throughput: the Redpanda dataset shape (3 tables x 150,000 items of
//! about 1 KB) loaded into DynamoDB Local, then drained from TRIM_HORIZON by
//! dynastream (the `count` processor, batch size 1000, checkpoints at the
//! default interval; then `stdout` in Lambda's format, written to a file),
//! by the raw SDK loop, and once by the plain Node SDK v3 loop
//! (`node/ceiling.mjs`), one after the other, in alternating order over
//! several rounds. Also dynastream's lease-table writes per busy shard per
//! second while it drains, at the default checkpoint interval and after
//! every batch, and what they cost a month on demand.

use std::time::Duration;

use tokio::time::Instant;

use super::{rounds_text, setting, worker_env};
use crate::ceiling::CeilingProcess;
use crate::measure::{
    dynamodb_local_cpu_seconds, http_get, median, metric_sum, proc_stats, ProcStats,
};
use crate::report::Figure;
use crate::support::{aws_env, create_table, dynamodb, Worker};
use dynastream::telemetry::metrics::{LEASES_HELD, LEASE_WRITES, RECORDS};

/// DynamoDB's on-demand price of a write request unit in us-east-1 (Standard
/// table class): $0.625 per million since the price cut of 1 November 2024.
/// A lease item is well under 1 KB, so each write is one unit.
const WRITE_REQUEST_UNIT_USD: f64 = 0.625e-6;
/// Seconds in AWS's billing month of 730 hours.
const SECONDS_PER_MONTH: f64 = 730.0 * 3600.0;

/// One consumer's drain of the whole dataset.
#[derive(Debug, Clone, Copy)]
struct Drain {
    seconds: f64,
    stats: ProcStats,
    /// CPU seconds DynamoDB Local spent meanwhile: it shares the machine's
    /// two cores with the consumer, so work the consumer asks of it (the
    /// checkpoint writes) slows the drain too.
    server_cpu_seconds: f64,
    /// dynastream's lease-table writes (`dynastream_lease_writes_total{item="shard"}`: checkpoints, renewals, takes) per
    /// held lease per second, from its first record to its last; 0 for the
    /// loops, which keep no lease table.
    lease_writes_per_shard_second: f64,
    /// The same while every shard is busy: from the tenth of the records to
    /// nine tenths, leaving out the take and first checkpoint of the start
    /// and the last write of the end.
    steady_lease_writes_per_shard_second: f64,
}

/// What dynastream does with the records in a drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Processor {
    Count,
    /// `stdout` in Lambda's format, written to a file.
    Stdout,
}

/// One of the consumers of a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Consumer {
    Raw,
    Dynastream(Processor),
}

pub async fn run() {
    let tables = setting("DYNASTREAM_BENCH_TABLES", 3);
    let items = setting("DYNASTREAM_BENCH_ITEMS", 150_000);
    let rounds = setting("DYNASTREAM_BENCH_ROUNDS", 3);
    let client = dynamodb().await;
    let mut names = Vec::new();
    let mut arns = Vec::new();
    for i in 0..tables {
        let name = format!("bench-drain-{i}");
        arns.push(create_table(&client, &name).await);
        names.push(name);
    }
    let loading = Instant::now();
    let mut loaders = tokio::task::JoinSet::new();
    for name in &names {
        let (client, name) = (client.clone(), name.clone());
        loaders.spawn(async move { crate::dataset::load(&client, &name, items, 4).await });
    }
    let mut bytes = 0u64;
    while let Some(loaded) = loaders.join_next().await {
        bytes += loaded.expect("a loader");
    }
    let total = tables * items;
    eprintln!(
        "drain: loaded {total} items ({:.1} MB, {:.0} bytes each) into {tables} tables in {:.1} s",
        bytes as f64 / 1e6,
        bytes as f64 / total as f64,
        loading.elapsed().as_secs_f64()
    );

    let mut ours = Vec::new();
    let mut stdout = Vec::new();
    let mut raw = Vec::new();
    for round in 0..rounds {
        // Alternate who goes first, so neither always meets a warmer server.
        let mut order = vec![
            Consumer::Raw,
            Consumer::Dynastream(Processor::Count),
            Consumer::Dynastream(Processor::Stdout),
        ];
        if round % 2 == 1 {
            order.reverse();
        }
        for consumer in order {
            match consumer {
                Consumer::Raw => raw.push(drain_with_ceiling(&arns, total).await),
                Consumer::Dynastream(processor) => {
                    let drain = drain_with_dynastream(
                        &names,
                        total,
                        &match processor {
                            Processor::Count => round.to_string(),
                            Processor::Stdout => format!("stdout-{round}"),
                        },
                        processor,
                        &[("DYNASTREAM_DESCRIBE_STREAM_RPS", DRAIN_DESCRIBE_STREAM_RPS)],
                    )
                    .await;
                    match processor {
                        Processor::Count => ours.push(drain),
                        Processor::Stdout => stdout.push(drain),
                    }
                }
            }
        }
        eprintln!(
            "drain round {round}: dynastream {}; with stdout {}; raw loop {}",
            ours[round as usize], stdout[round as usize], raw[round as usize],
        );
    }

    let node_rounds = setting("DYNASTREAM_BENCH_NODE_ROUNDS", 1);
    let node_sdk = node_sdk();
    let mut node = Vec::new();
    if let Some(sdk) = &node_sdk {
        for round in 0..node_rounds {
            let drain = drain_with_node(sdk, &arns, total).await;
            eprintln!("drain with the plain Node SDK v3 loop, run {round}: {drain}");
            node.push(drain);
        }
    }

    let every_batch = drain_with_dynastream(
        &names,
        total,
        "every-batch",
        Processor::Count,
        &[
            ("DYNASTREAM_DESCRIBE_STREAM_RPS", DRAIN_DESCRIBE_STREAM_RPS),
            ("DYNASTREAM_CHECKPOINT_INTERVAL_MS", "0"),
        ],
    )
    .await;
    eprintln!("drain with a checkpoint after every batch: dynastream {every_batch}");

    let default_budget = drain_with_dynastream(
        &names,
        total,
        "default-budget",
        Processor::Count,
        &[("DYNASTREAM_DESCRIBE_STREAM_RPS", "2")],
    )
    .await;
    eprintln!(
        "drain with the default DescribeStream budget (2/s): dynastream {:.2} s",
        default_budget.seconds
    );

    let seconds = |runs: &[Drain]| median(&runs.iter().map(|r| r.seconds).collect::<Vec<_>>());
    let cpu =
        |runs: &[Drain]| median(&runs.iter().map(|r| r.stats.cpu_seconds).collect::<Vec<_>>());
    let peak = |runs: &[Drain]| {
        median(
            &runs
                .iter()
                .map(|r| r.stats.peak_rss_bytes as f64 / 1e6)
                .collect::<Vec<_>>(),
        )
    };
    let (our_rate, raw_rate) = (total as f64 / seconds(&ours), total as f64 / seconds(&raw));
    let median_of = rounds_text(rounds);
    let scale = format!("{tables} tables x {items} items, {median_of}");
    Figure::new("drain", &format!("records/s ({scale})"), our_rate)
        .ceiling(raw_rate)
        .target("ratio >= 0.9", our_rate >= 0.9 * raw_rate)
        .emit();
    Figure::new(
        "drain",
        "records/s, dynastream at the default DESCRIBE_STREAM_RPS=2 (1 run)",
        total as f64 / default_budget.seconds,
    )
    .ceiling(raw_rate)
    .emit();
    Figure::new(
        "drain",
        "MB/s (item bytes)",
        bytes as f64 / 1e6 / seconds(&ours),
    )
    .ceiling(bytes as f64 / 1e6 / seconds(&raw))
    .emit();
    let per_100k = |cpu_seconds: f64| cpu_seconds / total as f64 * 100_000.0;
    let (our_cpu, raw_cpu) = (per_100k(cpu(&ours)), per_100k(cpu(&raw)));
    Figure::new("drain", "CPU s per 100k records (user+sys)", our_cpu)
        .ceiling(raw_cpu)
        .target("ratio <= 1.3", our_cpu <= 1.3 * raw_cpu)
        .emit();
    let server = |runs: &[Drain]| {
        median(
            &runs
                .iter()
                .map(|r| r.server_cpu_seconds)
                .collect::<Vec<_>>(),
        ) / total as f64
            * 100_000.0
    };
    Figure::new(
        "drain",
        "DynamoDB Local's CPU s per 100k records meanwhile",
        server(&ours),
    )
    .ceiling(server(&raw))
    .emit();
    Figure::new("drain", "peak RSS, MB", peak(&ours))
        .ceiling(peak(&raw))
        .emit();

    let stdout_rate = total as f64 / seconds(&stdout);
    let stdout_cpu = per_100k(cpu(&stdout));
    Figure::new(
        "drain",
        &format!("records/s, stdout (lambda format) to a file ({median_of})"),
        stdout_rate,
    )
    .ceiling(raw_rate)
    .emit();
    Figure::new(
        "drain",
        "CPU s per 100k records (user+sys), stdout (lambda format) to a file",
        stdout_cpu,
    )
    .ceiling(raw_cpu)
    .target("ratio <= 1.0", stdout_cpu <= raw_cpu)
    .emit();
    if !node.is_empty() {
        let node_runs = rounds_text(node_rounds);
        let node_cpu = per_100k(cpu(&node));
        Figure::new(
            "drain",
            &format!(
                "CPU s per 100k records, stdout (lambda format) to a file, against the \
                 plain Node SDK v3 loop ({node_runs})"
            ),
            stdout_cpu,
        )
        .baseline(node_cpu, "plain Node SDK v3 loop")
        .target("ratio <= 0.15", stdout_cpu <= 0.15 * node_cpu)
        .emit();
        Figure::new(
            "drain",
            &format!(
                "records/s, stdout (lambda format) to a file, against the plain Node SDK v3 \
                 loop ({node_runs})"
            ),
            stdout_rate,
        )
        .baseline(total as f64 / seconds(&node), "plain Node SDK v3 loop")
        .emit();
    }

    let writes = median(
        &ours
            .iter()
            .map(|r| r.steady_lease_writes_per_shard_second)
            .collect::<Vec<_>>(),
    );
    let whole_drain_writes = median(
        &ours
            .iter()
            .map(|r| r.lease_writes_per_shard_second)
            .collect::<Vec<_>>(),
    );
    let no_lease_table = "the raw loop keeps no lease table";
    Figure::new(
        "drain",
        &format!(
            "writes of a busy shard's lease per second (checkpoints and renewals), count, default \
             DYNASTREAM_CHECKPOINT_INTERVAL_MS, while every shard is busy (a tenth to nine \
             tenths of the records; {median_of})"
        ),
        writes,
    )
    .reference(0.0, no_lease_table)
    .target("<= 1", writes <= 1.0)
    .emit();
    Figure::new(
        "drain",
        &format!(
            "writes of a busy shard's lease per second, the same from the first record to the \
             last (the take, the first checkpoint and the last included; {median_of})"
        ),
        whole_drain_writes,
    )
    .reference(0.0, no_lease_table)
    .emit();
    Figure::new(
        "drain",
        "writes of a busy shard's lease per second (checkpoints and renewals), count, \
         DYNASTREAM_CHECKPOINT_INTERVAL_MS=0: a write after every batch, while every shard is \
         busy (1 run)",
        every_batch.steady_lease_writes_per_shard_second,
    )
    .reference(0.0, no_lease_table)
    .emit();
    let monthly =
        |writes_per_second: f64| writes_per_second * SECONDS_PER_MONTH * WRITE_REQUEST_UNIT_USD;
    Figure::new(
        "drain",
        "USD a month per busy shard for those writes at the default interval (on demand, \
         $0.625 per million write request units, us-east-1)",
        monthly(writes),
    )
    .reference(
        monthly(every_batch.steady_lease_writes_per_shard_second),
        "a write after every batch",
    )
    .emit();
}

/// The directory `scripts/bench` installed the Node SDK v3 client into
/// (`DYNASTREAM_NODE_SDK`), or `None`, said on standard error, when there is
/// none: the Node rows are then left out.
fn node_sdk() -> Option<std::path::PathBuf> {
    let dir = std::env::var_os("DYNASTREAM_NODE_SDK").map(std::path::PathBuf::from);
    match dir {
        Some(dir)
            if dir
                .join("node_modules/@aws-sdk/client-dynamodb-streams")
                .is_dir() =>
        {
            Some(dir)
        }
        _ => {
            eprintln!(
                "drain: no Node SDK v3 client (DYNASTREAM_NODE_SDK, installed by scripts/bench): \
                 the Node loop's rows are left out"
            );
            None
        }
    }
}

async fn drain_with_ceiling(arns: &[String], total: u64) -> Drain {
    let server_before = dynamodb_local_cpu_seconds();
    let ceiling = CeilingProcess::start(&aws_env(), arns, Some(total), Duration::from_millis(250));
    drain_with_loop(ceiling, server_before).await
}

async fn drain_with_node(sdk: &std::path::Path, arns: &[String], total: u64) -> Drain {
    let server_before = dynamodb_local_cpu_seconds();
    let node = CeilingProcess::start_node(
        sdk,
        &aws_env(),
        arns,
        Some(total),
        Duration::from_millis(250),
    );
    drain_with_loop(node, server_before).await
}

/// Waits for a loop started just now to read every record.
async fn drain_with_loop(mut process: CeilingProcess, server_before: f64) -> Drain {
    let elapsed = process.wait_until_done().await;
    let stats = proc_stats(process.pid()).expect("the loop is running");
    let server_cpu_seconds = dynamodb_local_cpu_seconds() - server_before;
    process.stop().await;
    Drain {
        seconds: elapsed.as_secs_f64(),
        stats,
        server_cpu_seconds,
        lease_writes_per_shard_second: 0.0,
        steady_lease_writes_per_shard_second: 0.0,
    }
}

/// DescribeStream calls a second for the drain's single worker: the whole
/// account budget (10), since no other worker shares it. At the default of
/// 2 a second the third table's listing waits a second, which a drain of a
/// few seconds would mostly measure; that run is reported separately.
const DRAIN_DESCRIBE_STREAM_RPS: &str = "10";

/// dynastream's drain of every record, under application `bench-drain-<run>`
/// with `settings` added.
async fn drain_with_dynastream(
    tables: &[String],
    total: u64,
    run: &str,
    processor: Processor,
    settings: &[(&str, &str)],
) -> Drain {
    let server_before = dynamodb_local_cpu_seconds();
    let application = format!("bench-drain-{run}");
    let tables = tables.join(",");
    let mut pairs = vec![
        ("DYNASTREAM_TABLES", tables.as_str()),
        ("DYNASTREAM_APPLICATION", application.as_str()),
        ("DYNASTREAM_BATCH_SIZE", "1000"),
        ("DYNASTREAM_STARTING_POSITION", "TRIM_HORIZON"),
    ];
    pairs.extend_from_slice(match processor {
        Processor::Count => &[("DYNASTREAM_PROCESSOR", "count")],
        Processor::Stdout => &[
            ("DYNASTREAM_PROCESSOR", "stdout"),
            ("DYNASTREAM_FORMAT", "lambda"),
        ],
    });
    pairs.extend_from_slice(settings);
    // The stdout file lives as long as the run; the directory goes with it.
    let scratch = tempfile::tempdir().expect("a temporary directory");
    let stdout = (processor == Processor::Stdout).then(|| {
        std::fs::File::create(scratch.path().join("stdout.jsonl")).expect("create the stdout file")
    });
    let started = Instant::now();
    let worker = Worker::start_with_stdout(&worker_env(&pairs), stdout);
    let metrics = format!("{}/metrics", worker.endpoints().await);
    let profiler = (setting("DYNASTREAM_BENCH_PROFILE", 0) == 1 && processor == Processor::Count)
        .then(|| profile(worker.pid(), run));
    let updates = |page: &str| metric_sum(page, LEASE_WRITES, &["item=\"shard\""]);
    // The lease-table writes are counted while the shards are busy: from the
    // first record to the last, and in the steady middle (a tenth of the
    // records to nine tenths).
    let mut busy_from: Option<(Instant, f64)> = None;
    let mut steady_from: Option<(Instant, f64)> = None;
    let mut steady_until: Option<(Instant, f64)> = None;
    let page = loop {
        if let Some(page) = http_get(&metrics).await {
            let records = metric_sum(&page, RECORDS, &[]);
            if busy_from.is_none() && records > 0.0 {
                busy_from = Some((Instant::now(), updates(&page)));
            }
            if steady_from.is_none() && records >= total as f64 * 0.1 {
                steady_from = Some((Instant::now(), updates(&page)));
            }
            if steady_until.is_none() && records >= total as f64 * 0.9 {
                steady_until = Some((Instant::now(), updates(&page)));
            }
            if records >= total as f64 {
                break page;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(1800),
            "dynastream did not drain {total} records in 30 minutes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let elapsed = started.elapsed();
    let stats = proc_stats(worker.pid()).expect("the worker is running");
    let server_cpu_seconds = dynamodb_local_cpu_seconds() - server_before;
    let (busy_since, updates_before) = busy_from.expect("records were counted");
    let leases = metric_sum(&page, LEASES_HELD, &[]).max(1.0);
    let lease_writes_per_shard_second =
        (updates(&page) - updates_before) / leases / busy_since.elapsed().as_secs_f64();
    let steady_lease_writes_per_shard_second = match (steady_from, steady_until) {
        (Some((from, before)), Some((until, after))) if until > from => {
            (after - before) / leases / until.duration_since(from).as_secs_f64()
        }
        _ => lease_writes_per_shard_second,
    };
    if let Some(mut profiler) = profiler {
        let _ = std::process::Command::new("kill")
            .args(["-INT", &profiler.id().to_string()])
            .status();
        let _ = profiler.wait();
    }
    let (status, _, logs) = worker.terminate().await;
    assert!(
        status.success(),
        "dynastream exited with {status}:\n{}",
        logs.join("\n")
    );
    Drain {
        seconds: elapsed.as_secs_f64(),
        stats,
        server_cpu_seconds,
        lease_writes_per_shard_second,
        steady_lease_writes_per_shard_second,
    }
}

/// `perf record` on the worker, written to `target/bench/drain-<run>.perf.data`
/// (read it with `perf report -i ...`).
fn profile(pid: u32, run: &str) -> std::process::Child {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&dir).expect("create target/bench");
    let output = dir.join(format!("drain-{run}.perf.data"));
    eprintln!(
        "drain: profiling dynastream (pid {pid}) into {}",
        output.display()
    );
    std::process::Command::new("perf")
        .args([
            "record",
            "-F",
            "499",
            "--call-graph",
            "dwarf,16384",
            "-p",
            &pid.to_string(),
            "-o",
        ])
        .arg(&output)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start perf (install linux-perf)")
}

impl std::fmt::Display for Drain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.2} s, {:.2} CPU s, peak RSS {:.1} MB, DynamoDB Local {:.2} CPU s, \
             {:.2} lease writes per shard a second ({:.2} while every shard is busy)",
            self.seconds,
            self.stats.cpu_seconds,
            self.stats.peak_rss_bytes as f64 / 1e6,
            self.server_cpu_seconds,
            self.lease_writes_per_shard_second,
            self.steady_lease_writes_per_shard_second
        )
    }
}

//! Drain throughput: the Redpanda dataset shape (3 tables x 150,000 items of
//! about 1 KB) loaded into DynamoDB Local, then drained from TRIM_HORIZON by
//! dynastream (the `count` processor, batch size 1000, a checkpoint per
//! batch) and by the raw SDK loop, one after the other, in alternating order
//! over several rounds.

use std::time::Duration;

use tokio::time::Instant;

use super::{setting, worker_env};
use crate::ceiling::CeilingProcess;
use crate::measure::{http_get, median, metric_sum, proc_stats, ProcStats};
use crate::report::Figure;
use crate::support::{aws_env, create_table, dynamodb, Worker};

/// One consumer's drain of the whole dataset.
#[derive(Debug, Clone, Copy)]
struct Drain {
    seconds: f64,
    stats: ProcStats,
    /// CPU seconds DynamoDB Local spent meanwhile: it shares the machine's
    /// two cores with the consumer, so work the consumer asks of it (the
    /// checkpoint writes) slows the drain too.
    server_cpu_seconds: f64,
}

/// The process id of this scenario's DynamoDB Local, from the pid file
/// `scripts/dynamodb-local` keeps beside its log.
fn dynamodb_local_pid() -> Option<u32> {
    let endpoint = &crate::support::dynamodb_local().endpoint;
    let port = endpoint.rsplit(':').next()?;
    let dir =
        std::env::var("DYNASTREAM_RUN_DIR").unwrap_or_else(|_| "/tmp/dynastream-ddb-local".into());
    std::fs::read_to_string(format!("{dir}/{port}/pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// DynamoDB Local's CPU seconds so far (0 when its pid is unknown).
fn server_cpu() -> f64 {
    dynamodb_local_pid()
        .and_then(proc_stats)
        .map_or(0.0, |stats| stats.cpu_seconds)
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
    let mut raw = Vec::new();
    for round in 0..rounds {
        // Alternate who goes first, so neither always meets a warmer server.
        if round % 2 == 0 {
            raw.push(drain_with_ceiling(&arns, total).await);
            ours.push(drain_with_dynastream(&names, total, round, DRAIN_DESCRIBE_STREAM_RPS).await);
        } else {
            ours.push(drain_with_dynastream(&names, total, round, DRAIN_DESCRIBE_STREAM_RPS).await);
            raw.push(drain_with_ceiling(&arns, total).await);
        }
        eprintln!(
            "drain round {round}: dynastream {}; raw loop {}",
            ours[round as usize], raw[round as usize],
        );
    }

    let default_budget = drain_with_dynastream(&names, total, rounds, "2").await;
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
    let scale = format!("{tables} tables x {items} items, median of {rounds} rounds");
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
    let (our_cpu, raw_cpu) = (
        cpu(&ours) / total as f64 * 100_000.0,
        cpu(&raw) / total as f64 * 100_000.0,
    );
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
}

async fn drain_with_ceiling(arns: &[String], total: u64) -> Drain {
    let server_before = server_cpu();
    let mut ceiling =
        CeilingProcess::start(&aws_env(), arns, Some(total), Duration::from_millis(250));
    let elapsed = ceiling.wait_until_done().await;
    let stats = proc_stats(ceiling.pid()).expect("the ceiling is running");
    let server_cpu_seconds = server_cpu() - server_before;
    ceiling.stop().await;
    Drain {
        seconds: elapsed.as_secs_f64(),
        stats,
        server_cpu_seconds,
    }
}

/// DescribeStream calls a second for the drain's single worker: the whole
/// account budget (10), since no other worker shares it. At the default of
/// 2 a second the third table's listing waits a second, which a drain of a
/// few seconds would mostly measure; that run is reported separately.
const DRAIN_DESCRIBE_STREAM_RPS: &str = "10";

async fn drain_with_dynastream(
    tables: &[String],
    total: u64,
    round: u64,
    describe_stream_rps: &str,
) -> Drain {
    let server_before = server_cpu();
    let started = Instant::now();
    let worker = Worker::start(&worker_env(&[
        ("DYNASTREAM_TABLES", &tables.join(",")),
        ("DYNASTREAM_APPLICATION", &format!("bench-drain-{round}")),
        ("DYNASTREAM_PROCESSOR", "count"),
        ("DYNASTREAM_BATCH_SIZE", "1000"),
        ("DYNASTREAM_STARTING_POSITION", "TRIM_HORIZON"),
        ("DYNASTREAM_DESCRIBE_STREAM_RPS", describe_stream_rps),
    ]));
    let metrics = format!("{}/metrics", worker.endpoints().await);
    let profiler =
        (setting("DYNASTREAM_BENCH_PROFILE", 0) == 1).then(|| profile(worker.pid(), round));
    loop {
        if let Some(page) = http_get(&metrics).await {
            if metric_sum(&page, dynastream::telemetry::metrics::RECORDS, &[]) >= total as f64 {
                break;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(1800),
            "dynastream did not drain {total} records in 30 minutes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    let stats = proc_stats(worker.pid()).expect("the worker is running");
    let server_cpu_seconds = server_cpu() - server_before;
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
    }
}

/// `perf record` on the worker, written to `target/bench/drain-<round>.perf.data`
/// (read it with `perf report -i ...`).
fn profile(pid: u32, round: u64) -> std::process::Child {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&dir).expect("create target/bench");
    let output = dir.join(format!("drain-{round}.perf.data"));
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
            "{:.2} s, {:.2} CPU s, peak RSS {:.1} MB, DynamoDB Local {:.2} CPU s",
            self.seconds,
            self.stats.cpu_seconds,
            self.stats.peak_rss_bytes as f64 / 1e6,
            self.server_cpu_seconds
        )
    }
}

//! Idle cost and scale: one worker at default settings on 200 tables (200
//! shards) with no writes, then on one stream of 1,000 shards served by the
//! scripted DynamoDB Streams endpoint of the test support code (DynamoDB
//! Local cannot hold that many shards); the lease table stays on DynamoDB
//! Local. Beside each, the raw loop polling the same shards every 250 ms.
//! Measured once every shard is being read and has been quiet for
//! DYNASTREAM_IDLE_AFTER_MS (dynastream then polls it every 2 s, where the
//! raw loop keeps polling every 250 ms): CPU as a share of one core over a
//! quiet window, and resident memory at its end.

use std::time::Duration;

use tokio::time::Instant;

use super::{setting, worker_env};
use crate::ceiling::CeilingProcess;
use crate::measure::{http_get, metric_sum, proc_stats};
use crate::report::Figure;
use crate::support::scripted_streams::ScriptedStreams;
use crate::support::{aws_env, create_table, dynamodb, Worker};
use dynastream::streams::memory::MemoryStreams;
use dynastream::telemetry::metrics::{API_CALLS, LEASES_HELD};

const POLL_INTERVAL: Duration = Duration::from_millis(250);
const SETTLE: Duration = Duration::from_secs(5);
/// DYNASTREAM_IDLE_AFTER_MS's default.
const IDLE_AFTER: Duration = Duration::from_secs(30);

/// What a quiet window cost one process.
#[derive(Debug, Clone, Copy)]
struct Usage {
    cpu_percent: f64,
    rss_mb: f64,
}

pub async fn run() {
    let window = Duration::from_secs(setting("DYNASTREAM_BENCH_IDLE_SECONDS", 30));
    let tables = setting("DYNASTREAM_BENCH_IDLE_TABLES", 200);
    let shards = setting("DYNASTREAM_BENCH_IDLE_SHARDS", 1000);

    let client = dynamodb().await;
    let created = Instant::now();
    let mut names = Vec::new();
    let mut arns = Vec::new();
    for i in 0..tables {
        let name = format!("bench-idle-{i:03}");
        arns.push(create_table(&client, &name).await);
        names.push(name);
    }
    eprintln!(
        "idle: created {tables} tables in {:.1} s",
        created.elapsed().as_secs_f64()
    );
    let raw = ceiling_usage(&aws_env(), &arns, window).await;
    let (ours, calls_per_shard) = dynastream_usage(
        worker_env(&[
            ("DYNASTREAM_TABLES", &names.join(",")),
            ("DYNASTREAM_APPLICATION", "bench-idle"),
        ]),
        tables,
        window,
    )
    .await;
    emit(
        &format!("{tables} shards (DynamoDB Local)"),
        ours,
        raw,
        calls_per_shard,
        true,
    );

    let model = MemoryStreams::new();
    let ids: Vec<String> = (0..shards).map(|i| format!("shardId-{i:05}")).collect();
    let arn = model.create_stream_with_shards(
        "bench-idle-scripted",
        &ids.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let server = ScriptedStreams::start(model).await;
    let mut env = aws_env();
    env.push(server.endpoint_env());
    let raw = ceiling_usage(&env, std::slice::from_ref(&arn), window).await;
    let mut env = worker_env(&[
        ("DYNASTREAM_STREAM_ARNS", &arn),
        ("DYNASTREAM_APPLICATION", "bench-idle-scripted"),
    ]);
    env.push(server.endpoint_env());
    let (ours, calls_per_shard) = dynastream_usage(env, shards, window).await;
    emit(
        &format!("{shards} shards (scripted endpoint)"),
        ours,
        raw,
        calls_per_shard,
        false,
    );
    server.shutdown().await;
}

fn emit(what: &str, ours: Usage, raw: Usage, calls_per_shard: f64, targets: bool) {
    let cpu = Figure::new(
        "idle",
        &format!("CPU % of one core, {what}"),
        ours.cpu_percent,
    )
    .ceiling(raw.cpu_percent);
    let rss = Figure::new("idle", &format!("RSS MB, {what}"), ours.rss_mb).ceiling(raw.rss_mb);
    if targets {
        cpu.target("<= 4 %", ours.cpu_percent <= 4.0).emit();
        rss.target("<= 100 MB", ours.rss_mb <= 100.0).emit();
    } else {
        cpu.emit();
        rss.emit();
    }
    Figure::new(
        "idle",
        &format!("GetRecords/s per shard, {what}"),
        calls_per_shard,
    )
    .reference(4.0, "the raw loop polls every 250 ms")
    .emit();
}

/// CPU share and resident memory of `pid` over `window`, after `SETTLE`.
async fn usage(pid: u32, window: Duration) -> Usage {
    tokio::time::sleep(SETTLE).await;
    let before = proc_stats(pid).expect("the process is running");
    tokio::time::sleep(window).await;
    let after = proc_stats(pid).expect("the process is running");
    Usage {
        cpu_percent: (after.cpu_seconds - before.cpu_seconds) / window.as_secs_f64() * 100.0,
        rss_mb: after.rss_bytes as f64 / 1e6,
    }
}

async fn ceiling_usage(env: &[(String, String)], arns: &[String], window: Duration) -> Usage {
    let mut ceiling = CeilingProcess::start(env, arns, None, POLL_INTERVAL);
    let listed = ceiling.wait_until_done().await;
    eprintln!(
        "idle: the raw loop listed every shard in {:.1} s",
        listed.as_secs_f64()
    );
    let measured = usage(ceiling.pid(), window).await;
    ceiling.stop().await;
    eprintln!("idle: raw loop {measured:?}");
    measured
}

/// dynastream's usage once it holds `shards` leases, and the GetRecords
/// calls a second per shard in the same window.
async fn dynastream_usage(
    env: Vec<(String, String)>,
    shards: u64,
    window: Duration,
) -> (Usage, f64) {
    let started = Instant::now();
    let worker = Worker::start(&env);
    let metrics = format!("{}/metrics", worker.endpoints().await);
    loop {
        let page = http_get(&metrics).await.unwrap_or_default();
        if metric_sum(&page, LEASES_HELD, &[]) >= shards as f64 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "dynastream did not take {shards} leases in 15 minutes"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!(
        "idle: dynastream holds {shards} leases {:.1} s after start",
        started.elapsed().as_secs_f64()
    );
    // The shards read last become idle (DYNASTREAM_IDLE_AFTER_MS, 30 s by
    // default) only this long after they started.
    tokio::time::sleep(IDLE_AFTER).await;
    let get_records = |page: &str| metric_sum(page, API_CALLS, &["api=\"GetRecords\""]);
    let calls_before = get_records(&http_get(&metrics).await.unwrap_or_default());
    let measured_from = Instant::now();
    let measured = usage(worker.pid(), window).await;
    let calls_after = get_records(&http_get(&metrics).await.unwrap_or_default());
    let calls_per_shard =
        (calls_after - calls_before) / measured_from.elapsed().as_secs_f64() / shards as f64;
    let (status, _, logs) = worker.terminate().await;
    assert!(
        status.success(),
        "dynastream exited with {status}:\n{}",
        logs.join("\n")
    );
    eprintln!("idle: dynastream {measured:?}, {calls_per_shard:.2} GetRecords/s per shard");
    (measured, calls_per_shard)
}

//! Start-up: from process start to the first record processed, on a stream
//! that already holds records (dynastream with the `stdout` processor, its
//! first line timed as it arrives; the raw loop's process printing when its
//! first record arrives). dynastream is started once as a new application
//! (it creates its lease table), then restarted several times as a deployed
//! worker is: the lease table exists and a record written just before each
//! start is the one it must deliver. Medians over the restarts.

use std::time::Duration;

use tokio::time::Instant;

use super::{setting, worker_env};
use crate::ceiling::CeilingProcess;
use crate::measure::{median, proc_stats};
use crate::report::Figure;
use crate::support::{aws_env, create_table, dynamodb, put, Worker};

const TABLE: &str = "bench-startup";

/// Milliseconds from starting a worker to its first record, and its peak RSS then in MB.
async fn first_record() -> (f64, f64) {
    let started = Instant::now();
    let worker = Worker::start(&worker_env(&[
        ("DYNASTREAM_TABLES", TABLE),
        ("DYNASTREAM_APPLICATION", "bench-startup"),
        ("DYNASTREAM_STARTING_POSITION", "TRIM_HORIZON"),
    ]));
    worker.wait_for_records(1, Duration::from_secs(60)).await;
    let took = (worker.arrival_times()[0] - started).as_secs_f64() * 1000.0;
    let rss = proc_stats(worker.pid()).map_or(0.0, |s| s.peak_rss_bytes as f64 / 1e6);
    let (status, _, logs) = worker.terminate().await;
    assert!(
        status.success(),
        "dynastream exited with {status}:\n{}",
        logs.join("\n")
    );
    (took, rss)
}

pub async fn run() {
    let runs = setting("DYNASTREAM_BENCH_STARTUP_RUNS", 5);
    let client = dynamodb().await;
    let arn = create_table(&client, TABLE).await;
    for i in 0..100 {
        put(&client, TABLE, &format!("k{i}"), i).await;
    }
    let (cold, _) = first_record().await;
    let mut ours = Vec::new();
    let mut raw = Vec::new();
    let mut our_rss = Vec::new();
    let mut raw_rss = Vec::new();
    for run in 0..runs {
        let mut ceiling = CeilingProcess::start(
            &aws_env(),
            std::slice::from_ref(&arn),
            Some(1),
            Duration::from_millis(250),
        );
        raw.push(ceiling.wait_until_done().await.as_secs_f64() * 1000.0);
        raw_rss.push(proc_stats(ceiling.pid()).map_or(0.0, |s| s.peak_rss_bytes as f64 / 1e6));
        ceiling.stop().await;

        put(&client, TABLE, &format!("restart-{run}"), run as i64).await;
        let (took, rss) = first_record().await;
        ours.push(took);
        our_rss.push(rss);
    }
    eprintln!("startup: dynastream new application {cold:.0} ms, restarts {ours:.0?} ms; raw loop {raw:.0?} ms");
    Figure::new(
        "startup",
        &format!("ms from process start to first record, restart (median of {runs})"),
        median(&ours),
    )
    .ceiling(median(&raw))
    .emit();
    Figure::new(
        "startup",
        "ms from process start to first record, new application (creates its lease table)",
        cold,
    )
    .ceiling(median(&raw))
    .emit();
    Figure::new(
        "startup",
        "peak RSS at the first record, MB",
        median(&our_rss),
    )
    .ceiling(median(&raw_rss))
    .emit();
}

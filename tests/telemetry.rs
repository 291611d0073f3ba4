//! The operator's view of a running worker: `/metrics`, `/healthz`,
//! `/readyz` (including its flip to 503 during a SIGTERM shutdown) and
//! `/status`, on the built binary against DynamoDB Local.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::*;

/// How long `url` took to answer `expected`.
async fn wait_for_status(url: &str, expected: u16) -> Duration {
    let start = tokio::time::Instant::now();
    wait_for_http(url, expected).await;
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_status_describe_a_running_worker() {
    let client = dynamodb().await;
    let table = unique_name("observed");
    create_table(&client, &table).await;
    let worker = Worker::start(&worker_env(&[
        ("DYNASTREAM_TABLES", &table),
        ("DYNASTREAM_APPLICATION", &unique_name("observed-app")),
        ("DYNASTREAM_WORKER_ID", "observed-worker"),
    ]));
    let base = worker.endpoints().await;
    assert_eq!(http_get(&format!("{base}/healthz")).0, 200);
    wait_for_status(&format!("{base}/readyz"), 200).await;
    worker.wait_for_log("shard consumer started", 1, WAIT).await;
    put(&client, &table, "a", 1).await;
    put(&client, &table, "a", 2).await;
    delete(&client, &table, "a").await;
    worker.wait_for_records(3, WAIT).await;

    let (code, metrics) = http_get(&format!("{base}/metrics"));
    assert_eq!(code, 200);
    let stream = format!("stream=\"{table}\"");
    assert_eq!(
        sample(&metrics, "dynastream_records_total", &[&stream, "INSERT"]),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "dynastream_records_total", &[&stream, "MODIFY"]),
        Some(1.0)
    );
    assert_eq!(
        sample(&metrics, "dynastream_records_total", &[&stream, "REMOVE"]),
        Some(1.0)
    );
    assert!(
        sample(
            &metrics,
            "dynastream_api_calls_total",
            &["GetRecords", "outcome=\"ok\""]
        )
        .unwrap()
            >= 1.0
    );
    assert!(
        sample(
            &metrics,
            "dynastream_api_calls_total",
            &["Scan", "outcome=\"ok\""]
        )
        .unwrap()
            >= 1.0
    );
    assert!(
        sample(
            &metrics,
            "dynastream_api_call_duration_seconds_count",
            &["GetRecords"]
        )
        .unwrap()
            >= 1.0
    );
    assert_eq!(
        sample(&metrics, "dynastream_leases_held", &[&stream]),
        Some(1.0)
    );
    assert_eq!(sample(&metrics, "dynastream_workers", &[]), Some(1.0));
    assert_eq!(
        sample(&metrics, "dynastream_shards", &["state=\"active\""]),
        Some(1.0)
    );
    assert!(
        sample(
            &metrics,
            "dynastream_lease_events_total",
            &["event=\"taken\""]
        )
        .unwrap()
            >= 1.0
    );
    assert!(
        sample(
            &metrics,
            "dynastream_batches_total",
            &[&stream, "outcome=\"success\""]
        )
        .unwrap()
            >= 1.0
    );
    assert!(sample(&metrics, "dynastream_processing_lag_seconds_count", &[]).unwrap() >= 3.0);
    assert!(
        sample(
            &metrics,
            "dynastream_processor_duration_seconds_count",
            &["processor=\"stdout\""]
        )
        .unwrap()
            >= 1.0
    );
    assert!(sample(&metrics, "dynastream_iterator_age_seconds", &[&stream]).is_some());
    assert_eq!(
        sample(&metrics, "dynastream_build_info", &["version="]),
        Some(1.0)
    );
    assert!(
        !metrics.contains("shard=\""),
        "no per-shard series unless asked for"
    );

    // /status is refreshed at each look at the lease table (twice per renewal interval).
    let last = worker.records().last().unwrap()["dynamodb"]["SequenceNumber"].clone();
    let what = format!("/status to show checkpoint {last}");
    let status = eventually(WAIT, what, || async {
        let (code, body) = http_get(&format!("{base}/status"));
        assert_eq!(code, 200);
        let status: Value = serde_json::from_str(&body).unwrap();
        if status["shards"][0]["checkpoint"] == last {
            Ok(status)
        } else {
            Err(status)
        }
    })
    .await;
    assert_eq!(status["worker"], "observed-worker");
    assert_eq!(status["shards"][0]["state"], "active");
    assert_eq!(status["leader"], true);
    assert_eq!(http_get(&format!("{base}/nope")).0, 404);
    let (status, _, _) = worker.terminate().await;
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_turns_503_during_a_sigterm_shutdown_and_the_worker_exits_0() {
    let client = dynamodb().await;
    let table = unique_name("draining");
    create_table(&client, &table).await;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("slow.py");
    std::fs::write(
        &script,
        "import sys, time\nfor line in sys.stdin:\n    time.sleep(3)\n    print('{}', flush=True)\n",
    )
    .unwrap();
    let worker = Worker::start(&worker_env(&[
        ("DYNASTREAM_TABLES", &table),
        ("DYNASTREAM_APPLICATION", &unique_name("draining-app")),
        ("DYNASTREAM_PROCESSOR", "exec"),
        (
            "DYNASTREAM_EXEC_COMMAND",
            &format!("python3 {}", script.display()),
        ),
        ("DYNASTREAM_METRICS_SHARD_LABELS", "true"),
    ]));
    let base = worker.endpoints().await;
    wait_for_status(&format!("{base}/readyz"), 200).await;
    worker.wait_for_log("shard consumer started", 1, WAIT).await;
    put(&client, &table, "slow", 1).await;
    // Wait until the slow batch is in flight, then ask the worker to stop.
    eventually(WAIT, "the slow batch to be in flight", || async {
        let (_, metrics) = http_get(&format!("{base}/metrics"));
        sample(
            &metrics,
            "dynastream_shard_iterator_age_seconds",
            &["shard=\""],
        )
        .is_some()
            && sample(&metrics, "dynastream_api_calls_total", &["GetRecords"]).unwrap_or(0.0) >= 1.0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    signal(worker.pid(), "TERM");
    let flipped = wait_for_status(&format!("{base}/readyz"), 503).await;
    assert_eq!(
        http_get(&format!("{base}/healthz")).0,
        200,
        "alive while draining"
    );
    let mut worker = worker;
    let (status, _, logs) = worker.wait(WAIT).await;
    assert!(status.success(), "exit 0 after draining: {status:?}");
    assert!(
        logs.iter().any(|l| l.contains("leases released")),
        "leases released"
    );
    assert!(
        flipped < Duration::from_secs(2),
        "readiness flipped {flipped:?} after SIGTERM"
    );
}

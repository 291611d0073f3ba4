//! Latency at default settings: items written at a steady low rate, and the
//! time from each PutItem's return to the record reaching the processor
//! (dynastream's `stdout` processor, read by this process as the line
//! arrives; the ceiling's loop in this process, polling every 250 ms like
//! dynastream's default). Then the GetRecords calls a second an idle shard
//! costs each of them.
//!
//! DynamoDB Local stamps records to the minute, so the record's own
//! creation time cannot be used: both ends are timed here, on one clock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{setting, worker_env};
use crate::ceiling;
use crate::measure::{http_get, metric_sum, quantile};
use crate::report::Figure;
use crate::support::{create_table, dynamodb, put, Worker};

const POLL_INTERVAL: Duration = Duration::from_millis(250);
const IDLE_WINDOW: Duration = Duration::from_secs(10);

pub async fn run() {
    let writes = setting("DYNASTREAM_BENCH_LATENCY_WRITES", 300);
    let per_second = setting("DYNASTREAM_BENCH_LATENCY_RATE", 10);
    let client = dynamodb().await;
    let table = "bench-latency";
    let stream_arn = create_table(&client, table).await;

    let worker = Worker::start(&worker_env(&[
        ("DYNASTREAM_TABLES", table),
        ("DYNASTREAM_APPLICATION", "bench-latency"),
    ]));
    let metrics = format!("{}/metrics", worker.endpoints().await);
    worker
        .wait_for_log("shard consumer started", 1, Duration::from_secs(60))
        .await;

    // The ceiling: the raw loop in this process, timing each record.
    let streams = crate::support::dynamodb_streams().await;
    let shard = ceiling::shard_ids(&streams, &stream_arn)
        .await
        .pop()
        .expect("the table's stream has a shard");
    let raw_arrivals: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let raw_calls = Arc::new(AtomicU64::new(0));
    let stop = CancellationToken::new();
    let reader = {
        let (streams, arn, stop) = (streams.clone(), stream_arn.clone(), stop.clone());
        let (arrivals, calls) = (Arc::clone(&raw_arrivals), Arc::clone(&raw_calls));
        tokio::spawn(async move {
            ceiling::read_shard(
                &streams,
                &arn,
                &shard,
                POLL_INTERVAL,
                &stop,
                &calls,
                |records| {
                    let now = Instant::now();
                    let mut arrivals = arrivals.lock().unwrap();
                    for record in records {
                        if let Some(key) = key_of(record) {
                            arrivals.entry(key).or_insert(now);
                        }
                    }
                },
            )
            .await;
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;

    // A steady writer: one PutItem every 1/rate seconds, timed at its return.
    let mut written: HashMap<String, Instant> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1) / per_second as u32);
    for i in 0..writes {
        tick.tick().await;
        let key = format!("latency-{i:05}");
        put(&client, table, &key, i as i64).await;
        written.insert(key, Instant::now());
    }
    let records = worker
        .wait_for_records(writes as usize, Duration::from_secs(60))
        .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while raw_arrivals.lock().unwrap().len() < writes as usize {
        assert!(
            Instant::now() < deadline,
            "the ceiling did not read every write"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let ours: Vec<f64> = records
        .iter()
        .zip(worker.arrival_times())
        .filter_map(|(record, arrived)| {
            let key = record["dynamodb"]["Keys"]["pk"]["S"].as_str()?;
            Some(millis(arrived - *written.get(key)?))
        })
        .collect();
    let raw: Vec<f64> = {
        let arrivals = raw_arrivals.lock().unwrap();
        written
            .iter()
            .filter_map(|(key, put)| Some(millis(*arrivals.get(key)? - *put)))
            .collect()
    };
    assert_eq!(
        ours.len(),
        writes as usize,
        "every write reached dynastream once"
    );

    // The idle cost: GetRecords calls in a quiet window.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let get_records = |page: &str| {
        metric_sum(
            page,
            dynastream::telemetry::metrics::API_CALLS,
            &["api=\"GetRecords\""],
        )
    };
    let before = get_records(&http_get(&metrics).await.expect("metrics"));
    let raw_before = raw_calls.load(Ordering::Relaxed);
    tokio::time::sleep(IDLE_WINDOW).await;
    let after = get_records(&http_get(&metrics).await.expect("metrics"));
    let raw_after = raw_calls.load(Ordering::Relaxed);
    stop.cancel();
    reader.await.expect("the ceiling's reader");
    let (status, _, logs) = worker.terminate().await;
    assert!(
        status.success(),
        "dynastream exited with {status}:\n{}",
        logs.join("\n")
    );

    let what = format!("{writes} writes at {per_second}/s, poll interval 250 ms");
    let (p50, raw_p50) = (quantile(&ours, 0.5), quantile(&raw, 0.5));
    let (p99, raw_p99) = (quantile(&ours, 0.99), quantile(&raw, 0.99));
    Figure::new(
        "latency",
        &format!("p50 ms, PutItem return to processor ({what})"),
        p50,
    )
    .ceiling(raw_p50)
    .target("<= 150 ms", p50 <= 150.0)
    .emit();
    Figure::new("latency", "p99 ms", p99)
        .ceiling(raw_p99)
        .target("<= 350 ms", p99 <= 350.0)
        .emit();
    Figure::new("latency", "max ms", quantile(&ours, 1.0))
        .ceiling(quantile(&raw, 1.0))
        .emit();
    let idle_rate = (after - before) / IDLE_WINDOW.as_secs_f64();
    Figure::new("latency", "GetRecords/s on the idle shard", idle_rate)
        .ceiling((raw_after - raw_before) as f64 / IDLE_WINDOW.as_secs_f64())
        .target("<= 5", idle_rate <= 5.0)
        .emit();
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn key_of(record: &aws_sdk_dynamodbstreams::types::Record) -> Option<String> {
    match record.dynamodb()?.keys()?.get("pk")? {
        aws_sdk_dynamodbstreams::types::AttributeValue::S(key) => Some(key.clone()),
        _ => None,
    }
}

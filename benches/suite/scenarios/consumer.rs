//! Consumer-bound: the records served from memory by the benchmark endpoint
//! (`endpoint.rs`, its own process) as fast as a consumer asks, so that the
//! consumer, not the server, is the bottleneck. One stream per item size
//! (200 B, 1 KB, 8 KB; 32 shards, 96,000 records each, a quarter of that
//! for 8 KB); per size, the raw SDK loop and
//! dynastream with `count`, `stdout` (Lambda's format and the document
//! format, written to a file) and the `kinesis://` target (PutRecords
//! answered by the same endpoint) read the whole stream from TRIM_HORIZON,
//! in alternating order over several rounds; medians. The lease table stays
//! on DynamoDB Local.
//!
//! Each run is measured from the endpoint's first GetRecords of the run to
//! the consumer's last record: the records per second and the consumer's
//! CPU (user + sys) in that window. Start-up (dynastream's lease table and
//! leases, either side's SDK set-up) is outside it; so is nothing a consumer
//! does per record, since no record is read before the first GetRecords.

use std::path::PathBuf;
use std::time::Duration;

use tokio::time::Instant;

use super::{rounds_text, setting, worker_env};
use crate::ceiling::CeilingProcess;
use crate::endpoint::{stream_arn, table_name, EndpointProcess, Setup, StreamSetup};
use crate::measure::{dynamodb_local_cpu_seconds, http_get, median, metric_sum, proc_stats};
use crate::report::Figure;
use crate::support::{aws_env, Worker};
use dynastream::telemetry::metrics::{LEASES_HELD, LEASE_WRITES, RECORDS};

/// The item sizes served, in bytes, and how the figures name them.
const ITEM_SIZES: [(u64, &str); 3] = [(200, "200 B"), (1024, "1 KB"), (8192, "8 KB")];

/// The Kinesis stream the `kinesis://` runs put to (the endpoint takes any).
const KINESIS_STREAM: &str = "bench-consumer-changes";

/// How often the suite looks at a run's progress.
const FIRST_READ_POLL: Duration = Duration::from_millis(5);
const METRICS_POLL: Duration = Duration::from_millis(25);

/// Who reads the stream in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Consumer {
    /// The raw SDK loop (`ceiling.rs`).
    Raw,
    Count,
    StdoutLambda,
    StdoutDocument,
    Kinesis,
}

const CONSUMERS: [Consumer; 5] = [
    Consumer::Raw,
    Consumer::Count,
    Consumer::StdoutLambda,
    Consumer::StdoutDocument,
    Consumer::Kinesis,
];

impl Consumer {
    /// How a figure names dynastream's processor.
    fn label(self) -> &'static str {
        match self {
            Consumer::Raw => "the raw SDK loop",
            Consumer::Count => "count",
            Consumer::StdoutLambda => "stdout, lambda format, to a file",
            Consumer::StdoutDocument => "stdout, document format, to a file",
            Consumer::Kinesis => "kinesis://, document format",
        }
    }

    /// dynastream's processor settings.
    fn settings(self) -> Vec<(&'static str, String)> {
        let processor = |p: &str| ("DYNASTREAM_PROCESSOR", p.to_owned());
        let format = |f: &str| ("DYNASTREAM_FORMAT", f.to_owned());
        match self {
            Consumer::Raw => Vec::new(),
            Consumer::Count => vec![processor("count")],
            Consumer::StdoutLambda => vec![processor("stdout"), format("lambda")],
            Consumer::StdoutDocument => vec![processor("stdout"), format("document")],
            Consumer::Kinesis => vec![
                processor(&format!("kinesis://{KINESIS_STREAM}")),
                format("document"),
            ],
        }
    }

    /// The target for 1 KB items: CPU per record at most this many
    /// times the raw loop's.
    fn cpu_target(self) -> Option<f64> {
        match self {
            Consumer::Count => Some(0.6),
            Consumer::StdoutLambda | Consumer::StdoutDocument => Some(0.8),
            _ => None,
        }
    }

    fn writes_stdout(self) -> bool {
        matches!(self, Consumer::StdoutLambda | Consumer::StdoutDocument)
    }
}

/// One consumer's read of one stream.
#[derive(Debug, Clone, Copy, Default)]
struct Run {
    /// From the first GetRecords of the run to the last record.
    seconds: f64,
    /// The consumer's CPU in that window.
    cpu_seconds: f64,
    /// The consumer's CPU before it (start-up), for the log.
    startup_cpu_seconds: f64,
    /// Writes of the shards' leases (`dynastream_lease_writes_total{item="shard"}`)
    /// per held lease per second in that window, for the log only: a run of
    /// a second or less is too short for a rate (the drain reports it); 0
    /// for the raw loop.
    lease_writes_per_shard_second: f64,
    /// The endpoint's CPU in the window, for the log: it shares the two
    /// cores with the consumer.
    endpoint_cpu_seconds: f64,
    /// DynamoDB Local's CPU in the window (the lease table), for the log.
    dynamodb_local_cpu_seconds: f64,
}

pub async fn run() {
    let shards = setting("DYNASTREAM_BENCH_CONSUMER_SHARDS", 32);
    let records = setting("DYNASTREAM_BENCH_CONSUMER_RECORDS", 96_000);
    let rounds = setting("DYNASTREAM_BENCH_CONSUMER_ROUNDS", 3);
    let modify = std::env::var("DYNASTREAM_BENCH_CONSUMER_EVENT").as_deref() == Ok("modify");
    // 8 KB items get a quarter of the records, so that their runs take
    // about as long as the others' and the scenario stays a few minutes.
    let records_of = |bytes: u64| if bytes >= 4096 { records / 4 } else { records };
    let setup = Setup {
        shards: u32::try_from(shards).expect("DYNASTREAM_BENCH_CONSUMER_SHARDS fits 32 bits"),
        streams: ITEM_SIZES
            .iter()
            .map(|&(item_bytes, _)| StreamSetup {
                item_bytes,
                records_per_shard: records_of(item_bytes).div_ceil(shards),
            })
            .collect(),
        modify,
    };
    let endpoint = EndpointProcess::start(&setup).await;
    check_with_sdks(&endpoint, &setup).await;
    // The lease tables: DynamoDB Local, started now rather than in the
    // first run.
    let _ = crate::support::dynamodb_local();
    let event = if modify {
        "MODIFY, old and new images"
    } else {
        "INSERT"
    };
    let rounds_text = rounds_text(rounds);

    for (bytes, size) in ITEM_SIZES {
        let records_per_shard = records_of(bytes).div_ceil(shards);
        let total = records_per_shard * shards;
        let scale =
            format!("{shards} shards x {records_per_shard} records, {event}, {rounds_text}");
        let arn = stream_arn(&table_name(bytes));
        let mut runs: Vec<(Consumer, Run)> = Vec::new();
        for round in 0..rounds {
            // Alternate the order, so that no consumer always runs first.
            let mut order = CONSUMERS.to_vec();
            if round % 2 == 1 {
                order.reverse();
            }
            for consumer in order {
                let run = run_one(consumer, &endpoint, &arn, total, bytes, round).await;
                eprintln!(
                    "consumer {size} round {round}: {}: {:.0} records/s, {:.2} CPU s \
                     (+{:.2} CPU s of start-up), {:.2} lease writes per shard a second; \
                     meanwhile the endpoint {:.2} CPU s, DynamoDB Local {:.2} CPU s",
                    consumer.label(),
                    total as f64 / run.seconds,
                    run.cpu_seconds,
                    run.startup_cpu_seconds,
                    run.lease_writes_per_shard_second,
                    run.endpoint_cpu_seconds,
                    run.dynamodb_local_cpu_seconds,
                );
                runs.push((consumer, run));
            }
        }
        let of = |consumer: Consumer, value: fn(&Run) -> f64| {
            median(
                &runs
                    .iter()
                    .filter(|(c, _)| *c == consumer)
                    .map(|(_, r)| value(r))
                    .collect::<Vec<_>>(),
            )
        };
        let rate = |consumer| total as f64 / of(consumer, |r| r.seconds);
        let cpu = |consumer| of(consumer, |r| r.cpu_seconds) / total as f64 * 100_000.0;
        let (raw_rate, raw_cpu) = (rate(Consumer::Raw), cpu(Consumer::Raw));
        for consumer in &CONSUMERS[1..] {
            let label = consumer.label();
            Figure::new(
                "consumer",
                &format!("records/s, {size} items, {label} ({scale})"),
                rate(*consumer),
            )
            .ceiling(raw_rate)
            .emit();
            let figure = Figure::new(
                "consumer",
                &format!("CPU s per 100k records (user+sys), {size} items, {label}"),
                cpu(*consumer),
            )
            .ceiling(raw_cpu);
            match consumer.cpu_target().filter(|_| bytes == 1024) {
                Some(ratio) => figure
                    .target(
                        &format!("ratio <= {ratio}"),
                        cpu(*consumer) <= ratio * raw_cpu,
                    )
                    .emit(),
                None => figure.emit(),
            }
        }
    }
}

/// Reads one page and puts three records through the SDKs for Rust,
/// before anything is timed: the endpoint's answers must parse, or the
/// figures would measure error handling.
async fn check_with_sdks(endpoint: &EndpointProcess, setup: &Setup) {
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(&endpoint.url)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_kinesis::config::Credentials::new(
            "bench", "bench", None, None, "bench",
        ))
        .load()
        .await;
    let streams = aws_sdk_dynamodbstreams::Client::new(&config);
    for stream in &setup.streams {
        let arn = stream_arn(&table_name(stream.item_bytes));
        let shards = crate::ceiling::shard_ids(&streams, &arn).await;
        assert_eq!(shards.len(), setup.shards as usize, "every shard listed");
        let iterator = streams
            .get_shard_iterator()
            .stream_arn(&arn)
            .shard_id(&shards[shards.len() - 1])
            .shard_iterator_type(aws_sdk_dynamodbstreams::types::ShardIteratorType::TrimHorizon)
            .send()
            .await
            .expect("GetShardIterator")
            .shard_iterator
            .expect("an iterator");
        let page = streams
            .get_records()
            .shard_iterator(iterator)
            .limit(1000)
            .send()
            .await
            .expect("GetRecords parses");
        let records = page.records();
        let sequence = |i: usize| -> u128 {
            records[i]
                .dynamodb()
                .and_then(|d| d.sequence_number())
                .expect("a sequence number")
                .parse()
                .expect("a decimal sequence number")
        };
        assert!(!records.is_empty(), "a page of records");
        assert!(
            records.len() < 2 || sequence(0) < sequence(1),
            "sequence numbers increase"
        );
        let image = records[0]
            .dynamodb()
            .and_then(|d| d.new_image())
            .expect("a new image");
        assert!(image.contains_key("payload") && image.contains_key("blob"));
        assert!(page.next_shard_iterator().is_some(), "an open shard");
    }
    let kinesis = aws_sdk_kinesis::Client::new(&config);
    let mut put = kinesis.put_records().stream_name(KINESIS_STREAM);
    for i in 0..3 {
        put = put.records(
            aws_sdk_kinesis::types::PutRecordsRequestEntry::builder()
                .partition_key(format!("key-{i}"))
                .data(aws_sdk_kinesis::primitives::Blob::new(b"{}".to_vec()))
                .build()
                .expect("an entry"),
        );
    }
    let answer = put.send().await.expect("PutRecords parses");
    assert_eq!(answer.failed_record_count(), Some(0));
    assert_eq!(answer.records().len(), 3, "a result per record");
    assert!(answer
        .records()
        .iter()
        .all(|r| r.sequence_number().is_some()));
}

async fn run_one(
    consumer: Consumer,
    endpoint: &EndpointProcess,
    arn: &str,
    total: u64,
    bytes: u64,
    round: u64,
) -> Run {
    let calls_before = endpoint.stats().await.get_records_calls;
    let endpoint_env = [
        (
            "AWS_ENDPOINT_URL_DYNAMODB_STREAMS".to_owned(),
            endpoint.url.clone(),
        ),
        ("AWS_ENDPOINT_URL_KINESIS".to_owned(), endpoint.url.clone()),
    ];
    if consumer == Consumer::Raw {
        let mut env = aws_env();
        env.extend(endpoint_env);
        let mut ceiling = CeilingProcess::start(
            &env,
            &[arn.to_owned()],
            Some(total),
            Duration::from_millis(250),
        );
        let (started, startup_cpu) = first_read(endpoint, calls_before, ceiling.pid()).await;
        let servers = Servers::now(endpoint);
        ceiling.wait_until_done().await;
        let cpu = proc_stats(ceiling.pid()).expect("the raw loop is running");
        let seconds = started.elapsed().as_secs_f64();
        let servers = servers.since(endpoint);
        ceiling.stop().await;
        return Run {
            seconds,
            cpu_seconds: cpu.cpu_seconds - startup_cpu,
            startup_cpu_seconds: startup_cpu,
            lease_writes_per_shard_second: 0.0,
            endpoint_cpu_seconds: servers.endpoint,
            dynamodb_local_cpu_seconds: servers.dynamodb_local,
        };
    }

    let application = format!("bench-consumer-{bytes}-{consumer:?}-{round}").to_lowercase();
    let settings = consumer.settings();
    let mut pairs: Vec<(&str, &str)> = vec![
        ("DYNASTREAM_STREAM_ARNS", arn),
        ("DYNASTREAM_APPLICATION", &application),
        ("DYNASTREAM_BATCH_SIZE", "1000"),
        ("DYNASTREAM_STARTING_POSITION", "TRIM_HORIZON"),
    ];
    pairs.extend(settings.iter().map(|(k, v)| (*k, v.as_str())));
    let mut env = worker_env(&pairs);
    env.extend(endpoint_env);
    let scratch = tempfile::tempdir().expect("a temporary directory");
    let output: PathBuf = scratch.path().join("stdout.jsonl");
    let stdout = consumer
        .writes_stdout()
        .then(|| std::fs::File::create(&output).expect("create the stdout file"));
    let kinesis_before = endpoint.stats().await.kinesis_records;
    let worker = Worker::start_with_stdout(&env, stdout);
    let (started, startup_cpu) = first_read(endpoint, calls_before, worker.pid()).await;
    let servers = Servers::now(endpoint);
    let metrics = format!("{}/metrics", worker.endpoints().await);
    let updates = |page: &str| metric_sum(page, LEASE_WRITES, &["item=\"shard\""]);
    let updates_before = updates(&http_get(&metrics).await.unwrap_or_default());
    let page = loop {
        if let Some(page) = http_get(&metrics).await {
            if metric_sum(&page, RECORDS, &[]) >= total as f64 {
                break page;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "dynastream ({}) did not read {total} records in 10 minutes:\n{}",
            consumer.label(),
            worker.logs().join("\n")
        );
        tokio::time::sleep(METRICS_POLL).await;
    };
    let seconds = started.elapsed().as_secs_f64();
    let cpu = proc_stats(worker.pid()).expect("the worker is running");
    let servers = servers.since(endpoint);
    let leases = metric_sum(&page, LEASES_HELD, &[]).max(1.0);
    let lease_writes_per_shard_second = (updates(&page) - updates_before) / leases / seconds;
    let (status, _, logs) = worker.terminate().await;
    assert!(
        status.success(),
        "dynastream exited with {status}:\n{}",
        logs.join("\n")
    );
    if consumer.writes_stdout() {
        let written = std::fs::metadata(&output).map_or(0, |m| m.len());
        eprintln!(
            "consumer: {} wrote {:.1} MB to its stdout file",
            consumer.label(),
            written as f64 / 1e6
        );
        assert!(written > 0, "the stdout processor wrote nothing");
    }
    if consumer == Consumer::Kinesis {
        let put = endpoint.stats().await.kinesis_records - kinesis_before;
        assert!(put >= total, "kinesis:// put {put} of {total} records");
    }
    Run {
        seconds,
        cpu_seconds: cpu.cpu_seconds - startup_cpu,
        startup_cpu_seconds: startup_cpu,
        lease_writes_per_shard_second,
        endpoint_cpu_seconds: servers.endpoint,
        dynamodb_local_cpu_seconds: servers.dynamodb_local,
    }
}

/// The servers' CPU seconds: the endpoint's and DynamoDB Local's.
#[derive(Debug, Clone, Copy)]
struct Servers {
    endpoint: f64,
    dynamodb_local: f64,
}

impl Servers {
    fn now(endpoint: &EndpointProcess) -> Servers {
        Servers {
            endpoint: proc_stats(endpoint.pid()).map_or(0.0, |s| s.cpu_seconds),
            dynamodb_local: dynamodb_local_cpu_seconds(),
        }
    }

    /// What each spent since `self`.
    fn since(self, endpoint: &EndpointProcess) -> Servers {
        let now = Servers::now(endpoint);
        Servers {
            endpoint: now.endpoint - self.endpoint,
            dynamodb_local: now.dynamodb_local - self.dynamodb_local,
        }
    }
}

/// Waits for the endpoint's first GetRecords after `calls_before` and
/// returns when it was seen and the consumer's CPU seconds then.
async fn first_read(endpoint: &EndpointProcess, calls_before: u64, pid: u32) -> (Instant, f64) {
    let started = Instant::now();
    loop {
        if endpoint.stats().await.get_records_calls > calls_before {
            let cpu = proc_stats(pid).map_or(0.0, |s| s.cpu_seconds);
            return (Instant::now(), cpu);
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no GetRecords within 2 minutes"
        );
        tokio::time::sleep(FIRST_READ_POLL).await;
    }
}

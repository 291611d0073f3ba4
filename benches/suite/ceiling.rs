//! The ceiling: the plain AWS SDK loop that reads a stream and does nothing
//! with the records. DescribeStream for the shards, GetShardIterator, then
//! GetRecords until the shard ends, sleeping the poll interval after an
//! empty page. No leases, no checkpoints, no dispatch, no metrics: whatever
//! dynastream costs beyond this is its overhead.
//!
//! It runs as a child process of the suite (`suite --ceiling ...`) so that
//! its CPU time and memory are measured exactly as dynastream's are, or as a
//! task inside a scenario when the scenario needs the records' arrival times.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodbstreams::types::{Record, ShardIteratorType};
use aws_sdk_dynamodbstreams::Client;
use tokio_util::sync::CancellationToken;

/// An SDK client configured from the environment (`AWS_ENDPOINT_URL`,
/// `AWS_REGION`, credentials), with the SDK's defaults otherwise.
pub async fn client_from_env() -> Client {
    let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    Client::new(&config)
}

/// The ids of every shard of the stream.
pub async fn shard_ids(client: &Client, stream_arn: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut start: Option<String> = None;
    loop {
        let page = client
            .describe_stream()
            .stream_arn(stream_arn)
            .set_exclusive_start_shard_id(start.take())
            .send()
            .await
            .expect("DescribeStream");
        let description = page.stream_description().expect("a stream description");
        ids.extend(
            description
                .shards()
                .iter()
                .filter_map(|s| s.shard_id())
                .map(str::to_owned),
        );
        match description.last_evaluated_shard_id() {
            Some(last) => start = Some(last.to_owned()),
            None => return ids,
        }
    }
}

/// Reads one shard from its oldest record until it ends or `stop` is
/// cancelled, counting each GetRecords call in `calls` and handing each
/// non-empty page to `on_records`.
pub async fn read_shard(
    client: &Client,
    stream_arn: &str,
    shard_id: &str,
    poll_interval: Duration,
    stop: &CancellationToken,
    calls: &AtomicU64,
    mut on_records: impl FnMut(&[Record]),
) {
    let mut after: Option<String> = None;
    let mut iterator = Some(iterator_at(client, stream_arn, shard_id, None).await);
    while let Some(current) = iterator.take() {
        calls.fetch_add(1, Ordering::Relaxed);
        let answer = tokio::select! {
            _ = stop.cancelled() => return,
            answer = client.get_records().shard_iterator(current).limit(1000).send() => answer,
        };
        let page = match answer {
            Ok(page) => page,
            // DynamoDB Local refuses an iterator issued on an empty shard
            // once records arrive: ask again from where reading stands.
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_trimmed_data_access_exception()) =>
            {
                iterator = Some(iterator_at(client, stream_arn, shard_id, after.as_deref()).await);
                continue;
            }
            Err(err) => panic!("GetRecords: {err:?}"),
        };
        if page.records().is_empty() {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(poll_interval) => {}
            }
        } else {
            after = page
                .records()
                .last()
                .and_then(|r| r.dynamodb()?.sequence_number())
                .map(str::to_owned);
            on_records(page.records());
        }
        iterator = page.next_shard_iterator;
    }
}

/// An iterator at the shard's oldest record, or just after `after`.
async fn iterator_at(
    client: &Client,
    stream_arn: &str,
    shard_id: &str,
    after: Option<&str>,
) -> String {
    let request = client
        .get_shard_iterator()
        .stream_arn(stream_arn)
        .shard_id(shard_id);
    let request = match after {
        Some(sequence_number) => request
            .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
            .sequence_number(sequence_number),
        None => request.shard_iterator_type(ShardIteratorType::TrimHorizon),
    };
    request
        .send()
        .await
        .expect("GetShardIterator")
        .shard_iterator
        .expect("an iterator")
}

/// The ceiling as a process: reads every shard of `stream_arns` and prints
/// `done <count>` once `expected` records have arrived (if given), then
/// keeps polling until killed, as a consumer would.
pub async fn run_process(stream_arns: Vec<String>, expected: Option<u64>, poll_interval: Duration) {
    let client = client_from_env().await;
    let received = Arc::new(AtomicU64::new(0));
    let reached = Arc::new(tokio::sync::Notify::new());
    let calls = Arc::new(AtomicU64::new(0));
    let target = expected.unwrap_or(u64::MAX);
    let stop = CancellationToken::new();
    let mut readers = tokio::task::JoinSet::new();
    for arn in stream_arns {
        for shard in shard_ids(&client, &arn).await {
            let (client, arn, stop) = (client.clone(), arn.clone(), stop.clone());
            let (received, reached) = (Arc::clone(&received), Arc::clone(&reached));
            let calls = Arc::clone(&calls);
            readers.spawn(async move {
                read_shard(
                    &client,
                    &arn,
                    &shard,
                    poll_interval,
                    &stop,
                    &calls,
                    |records| {
                        let count = records.len() as u64;
                        if received.fetch_add(count, Ordering::Relaxed) + count >= target {
                            reached.notify_one();
                        }
                    },
                )
                .await;
            });
        }
    }
    if expected.is_some() {
        reached.notified().await;
        println!("done {}", received.load(Ordering::Relaxed));
    } else {
        println!("reading");
    }
    tokio::signal::ctrl_c().await.ok();
    stop.cancel();
    while readers.join_next().await.is_some() {}
}

/// The ceiling running as a child process of a scenario.
pub struct CeilingProcess {
    child: tokio::process::Child,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    started: tokio::time::Instant,
}

impl CeilingProcess {
    /// Starts `suite --ceiling` over `stream_arns` with only the AWS
    /// variables of `env` (as dynastream's workers get), waiting for
    /// `expected` records if given.
    pub fn start(
        env: &[(String, String)],
        stream_arns: &[String],
        expected: Option<u64>,
        poll_interval: Duration,
    ) -> CeilingProcess {
        let mut command = tokio::process::Command::new(std::env::current_exe().expect("own path"));
        command.arg("--ceiling");
        CeilingProcess::spawn(command, env, stream_arns, expected, poll_interval)
    }

    /// Starts the same loop written with the AWS SDK for JavaScript v3
    /// (`node/ceiling.mjs`, the SDK installed in `sdk_dir` by `scripts/bench`):
    /// the plain Node loop a Lambda-less consumer would otherwise write.
    pub fn start_node(
        sdk_dir: &std::path::Path,
        env: &[(String, String)],
        stream_arns: &[String],
        expected: Option<u64>,
        poll_interval: Duration,
    ) -> CeilingProcess {
        let script =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/suite/node/ceiling.mjs");
        let mut command = tokio::process::Command::new("node");
        command.arg(script).arg("--sdk").arg(sdk_dir);
        CeilingProcess::spawn(command, env, stream_arns, expected, poll_interval)
    }

    fn spawn(
        mut command: tokio::process::Command,
        env: &[(String, String)],
        stream_arns: &[String],
        expected: Option<u64>,
        poll_interval: Duration,
    ) -> CeilingProcess {
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .arg("--poll-ms")
            .arg(poll_interval.as_millis().to_string())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true);
        if let Some(expected) = expected {
            command.arg("--expected").arg(expected.to_string());
        }
        command.args(stream_arns);
        let started = tokio::time::Instant::now();
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("start the ceiling process {command:?}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        CeilingProcess {
            child,
            lines: tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout)),
            started,
        }
    }

    /// Waits for the process to print its `done` (or `reading`) line;
    /// returns the time since it was started.
    pub async fn wait_until_done(&mut self) -> Duration {
        let line = self
            .lines
            .next_line()
            .await
            .expect("read the ceiling's output")
            .expect("the ceiling exited before it finished");
        assert!(
            line.starts_with("done") || line.starts_with("reading"),
            "unexpected ceiling output: {line}"
        );
        self.started.elapsed()
    }

    /// The process id, for `/proc`.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("the ceiling is running")
    }

    /// Stops the process.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

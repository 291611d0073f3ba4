//! Configuration: one typed struct, read from flags with environment fallbacks.
//!
//! Operators on ECS and EKS set environment variables, so every setting has a
//! `DYNASTREAM_*` variable, a default, a range, and a one-line error naming the
//! variable when the value is wrong. Flags exist for local runs and take
//! precedence over the environment. AWS settings (`AWS_REGION`,
//! `AWS_ENDPOINT_URL`, credentials) are read by the AWS SDK's own chain and are
//! deliberately not duplicated here.

use std::fmt;
use std::num::{NonZeroU64, NonZeroUsize};
use std::time::Duration;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{CommandFactory, FromArgMatches, Parser, ValueEnum};

/// Where a shard with no checkpoint starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StartingPosition {
    /// Only changes made after the worker first sees the shard.
    #[value(name = "LATEST")]
    Latest,
    /// Everything the stream still holds (up to 24 hours).
    #[value(name = "TRIM_HORIZON")]
    TrimHorizon,
}

/// What a shard does when its position fell behind the stream's retention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum OnTrimmed {
    /// Log an error, count `dynastream_trimmed_data_total`, and continue from
    /// the oldest record the shard still holds.
    #[default]
    #[value(name = "skip")]
    Skip,
    /// Stop that shard (its lease is kept) and fail readiness until an
    /// operator acts.
    #[value(name = "stop")]
    Stop,
}

/// Whether a table's existing items are delivered before its changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum SnapshotMode {
    /// Only the stream's changes.
    #[default]
    #[value(name = "off")]
    Off,
    /// Each table's existing items once (per application), then its stream.
    #[value(name = "on")]
    On,
    /// Each table's existing items once, then exit 0: a one-off copy.
    #[value(name = "only")]
    Only,
}

/// A `key=value` tag that selects tables (`DYNASTREAM_TABLE_TAG`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableTag {
    /// The tag's key.
    pub key: String,
    /// The value the tag must have.
    pub value: String,
}

impl std::str::FromStr for TableTag {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let expected = || "expected key=value, e.g. cdc=enabled".to_owned();
        let (key, value) = text.trim().split_once('=').ok_or_else(expected)?;
        let (key, value) = (key.trim(), value.trim());
        // DynamoDB's limits: keys 1-128 characters, values up to 256.
        if key.is_empty() || key.chars().count() > 128 || value.chars().count() > 256 {
            return Err(format!(
                "{}: the key must be 1-128 characters and the value at most 256",
                expected()
            ));
        }
        Ok(TableTag {
            key: key.to_owned(),
            value: value.to_owned(),
        })
    }
}

mod pipelines;
mod processing;

pub use crate::filter::FilterSet;
pub use crate::processor::target::{ProcessorSpec, Target};
pub use crate::record::RecordFormat;
pub use pipelines::{setting_variable, PipelineConfig};
pub use processing::Processing;

/// Where records go when their retries or age run out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureDestination {
    /// Append one JSON object per failed batch to this file.
    File(std::path::PathBuf),
    /// Send one JSON object per failed batch as a message to this SQS queue URL.
    Sqs(String),
}

impl std::str::FromStr for FailureDestination {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let value = value.trim();
        if let Some(path) = value.strip_prefix("file://") {
            if !path.starts_with('/') || path.len() < 2 {
                return Err(
                    "a file destination needs an absolute path: file:///var/log/failed.jsonl"
                        .into(),
                );
            }
            return Ok(FailureDestination::File(path.into()));
        }
        if let Some(queue) = value.strip_prefix("sqs://") {
            if queue.is_empty() {
                return Err("an SQS destination needs a queue URL: sqs://https://sqs.<region>.amazonaws.com/<account>/<queue>".into());
            }
            let url = if queue.starts_with("http://") || queue.starts_with("https://") {
                queue.to_owned()
            } else {
                format!("https://{queue}")
            };
            return Ok(FailureDestination::Sqs(url));
        }
        Err("expected file:///<absolute path> or sqs://<queue URL>".into())
    }
}

/// How log lines are written to standard error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line, for log collectors.
    #[value(name = "json")]
    Json,
    /// Human-readable lines, for terminals.
    #[value(name = "text")]
    Text,
}

/// A limit that `-1` lifts, as Lambda writes it: `None` means no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit<T>(pub Option<T>);

/// Every setting of a dynastream worker.
///
/// Each field holds its value parsed, in the type its user wants
/// (durations, non-zero counts, a compiled [`FilterSet`]): a value is read,
/// checked and converted once, here, and a bad one is reported naming its
/// variable. Only rules between settings wait for [`Config::validate`].
#[derive(Debug, Clone, Parser)]
#[command(
    name = "dynastream",
    version,
    about = "Consume DynamoDB Streams: leased shards, checkpoints, Lambda-shaped records.",
    long_about = None,
    after_help = "Pipelines: with DYNASTREAM_PIPELINES=search,cache,audit each shard is read once \
                  and fed to three independent pipelines, each with its own checkpoint. Any \
                  processing setting (PROCESSOR, FORMAT, FILTER, BATCH_SIZE, BATCH_WINDOW_MS, \
                  BATCH_MAX_BYTES, PARALLELIZATION_FACTOR, MAX_RETRY_ATTEMPTS, \
                  MAX_RECORD_AGE_SECONDS, BISECT_ON_ERROR, ON_FAILURE, HTTP_URL, HTTP_TIMEOUT_MS, \
                  EXEC_COMMAND, EXEC_TIMEOUT_MS, EXEC_CONCURRENCY, ON_TRIMMED) and \
                  STARTING_POSITION (LATEST or TRIM_HORIZON, for a pipeline new to a shard) may \
                  be set per pipeline as DYNASTREAM_PIPELINE_<NAME>_<SETTING>, e.g. \
                  DYNASTREAM_PIPELINE_AUDIT_PROCESSOR=s3://archive/orders/; the unprefixed \
                  variable is every pipeline's default.\n\n\
                  AWS settings come from the standard variables: AWS_REGION, AWS_ENDPOINT_URL \
                  (or AWS_ENDPOINT_URL_DYNAMODB and AWS_ENDPOINT_URL_DYNAMODB_STREAMS), and \
                  credentials through the default provider chain."
)]
pub struct Config {
    /// A one-off command instead of running a worker.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Tables whose current stream to consume (comma-separated).
    #[arg(
        long,
        env = "DYNASTREAM_TABLES",
        value_delimiter = ',',
        value_name = "NAMES"
    )]
    pub tables: Vec<String>,

    /// Stream ARNs to consume (comma-separated), in addition to the tables'.
    #[arg(
        long,
        env = "DYNASTREAM_STREAM_ARNS",
        value_delimiter = ',',
        value_name = "ARNS"
    )]
    pub stream_arns: Vec<String>,

    /// Also consume every table whose name starts with this prefix, found by the shard-sync leader every DYNASTREAM_TABLE_DISCOVERY_INTERVAL_MS.
    #[arg(long, env = "DYNASTREAM_TABLE_PREFIX", value_name = "PREFIX", value_parser = table_prefix)]
    pub table_prefix: Option<String>,

    /// Also consume every table carrying this tag (key=value), found by the shard-sync leader every DYNASTREAM_TABLE_DISCOVERY_INTERVAL_MS.
    #[arg(long, env = "DYNASTREAM_TABLE_TAG", value_name = "KEY=VALUE")]
    pub table_tag: Option<TableTag>,

    /// How often the leader looks for tables matching DYNASTREAM_TABLE_PREFIX or DYNASTREAM_TABLE_TAG, in ms (1000..=86400000).
    #[arg(long = "table-discovery-interval-ms", env = "DYNASTREAM_TABLE_DISCOVERY_INTERVAL_MS", value_name = "MS", default_value = "300000", value_parser = millis::<1_000, 86_400_000>)]
    pub table_discovery_interval: Duration,

    /// Deliver each table's existing items before its changes: off, on (items, then the stream), only (items, then exit 0). Done once per table per application.
    #[arg(
        long,
        env = "DYNASTREAM_SNAPSHOT",
        default_value = "off",
        ignore_case = true
    )]
    pub snapshot: SnapshotMode,

    /// Parallel Scan segments per table snapshot (1..=1000000), each a lease the workers share.
    #[arg(long, env = "DYNASTREAM_SNAPSHOT_SEGMENTS", default_value = "16", value_parser = count::<std::num::NonZeroU32, 1, 1_000_000>)]
    pub snapshot_segments: std::num::NonZeroU32,

    /// Read capacity units per second the whole application's snapshot Scans may consume (1..=1000000), shared by the workers holding segments.
    #[arg(long, env = "DYNASTREAM_SNAPSHOT_RCU", default_value = "500", value_parser = count::<NonZeroU64, 1, 1_000_000>)]
    pub snapshot_rcu: NonZeroU64,

    /// Application name: the workers of one application share its leases.
    #[arg(long, env = "DYNASTREAM_APPLICATION", default_value = "dynastream", value_parser = non_empty_name)]
    pub application: String,

    /// Lease table [default: <application>-leases]; created on demand.
    #[arg(long, env = "DYNASTREAM_LEASE_TABLE", value_parser = non_empty_name)]
    pub lease_table: Option<String>,

    /// This worker's identity in the lease table [default: host name plus a random suffix].
    #[arg(long, env = "DYNASTREAM_WORKER_ID", value_parser = non_empty_name)]
    pub worker_id: Option<String>,

    /// Where to start on a shard that has no checkpoint yet.
    #[arg(
        long,
        env = "DYNASTREAM_STARTING_POSITION",
        default_value = "LATEST",
        ignore_case = true
    )]
    pub starting_position: StartingPosition,

    /// What each batch goes through: filter, batching, processors, retries.
    /// With `DYNASTREAM_PIPELINES` these are the defaults of every pipeline.
    #[command(flatten)]
    pub processing: Processing,

    /// Independent pipelines fed by one read of each shard (comma-separated names of a-z, 0-9 and '_'); each takes every processing setting from DYNASTREAM_PIPELINE_<NAME>_<SETTING>, else from DYNASTREAM_<SETTING> [default: one pipeline].
    #[arg(
        long = "pipelines",
        env = "DYNASTREAM_PIPELINES",
        value_delimiter = ',',
        value_name = "NAMES",
        value_parser = pipelines::pipeline_name
    )]
    pub pipeline_names: Vec<String>,

    /// Records of each shard held in memory for pipelines running behind the fastest (1000..=1000000); a pipeline further behind reads on with its own iterator.
    #[arg(long, env = "DYNASTREAM_PIPELINE_BUFFER_RECORDS", default_value = "10000", value_parser = count::<NonZeroUsize, 1_000, 1_000_000>)]
    pub pipeline_buffer_records: NonZeroUsize,

    /// The named pipelines with their settings resolved; empty without
    /// `DYNASTREAM_PIPELINES`, when [`Config::processing`] is the one pipeline.
    #[arg(skip)]
    pub pipelines: Vec<PipelineConfig>,

    /// Wait after an empty GetRecords, in ms (200..=60000); a shard with records is read again at once.
    #[arg(long = "poll-interval-ms", env = "DYNASTREAM_POLL_INTERVAL_MS", value_name = "MS", default_value = "250", value_parser = millis::<200, 60_000>)]
    pub poll_interval: Duration,

    /// Wait after an empty GetRecords on a shard that has returned nothing for DYNASTREAM_IDLE_AFTER_MS, in ms (200..=60000, at least DYNASTREAM_POLL_INTERVAL_MS; equal to it turns slowing down off).
    #[arg(long = "idle-poll-interval-ms", env = "DYNASTREAM_IDLE_POLL_INTERVAL_MS", value_name = "MS", default_value = "2000", value_parser = millis::<200, 60_000>)]
    pub idle_poll_interval: Duration,

    /// How long a shard must return nothing before it is polled at DYNASTREAM_IDLE_POLL_INTERVAL_MS, in ms (1000..=3600000).
    #[arg(long = "idle-after-ms", env = "DYNASTREAM_IDLE_AFTER_MS", value_name = "MS", default_value = "30000", value_parser = millis::<1_000, 3_600_000>)]
    pub idle_after: Duration,

    /// Least time between two checkpoint writes of a shard, in ms (0..=300000; 0 writes after every batch). What was processed is written within the interval even when no more comes, and at once on shard end, stop and handover; a crash repeats at most this long's records.
    #[arg(long = "checkpoint-interval-ms", env = "DYNASTREAM_CHECKPOINT_INTERVAL_MS", value_name = "MS", default_value = "1000", value_parser = millis::<0, 300_000>)]
    pub checkpoint_interval: Duration,

    /// How long a lease lives without renewal, in ms (1000..=600000); renewed every third of it.
    #[arg(long = "lease-duration-ms", env = "DYNASTREAM_LEASE_DURATION_MS", value_name = "MS", default_value = "10000", value_parser = millis::<1_000, 600_000>)]
    pub lease_duration: Duration,

    /// How often each worker scans the whole lease table while it reads it through its indexes, in ms (1000..=86400000).
    #[arg(long = "lease-scan-interval-ms", env = "DYNASTREAM_LEASE_SCAN_INTERVAL_MS", value_name = "MS", default_value = "300000", value_parser = millis::<1_000, 86_400_000>)]
    pub lease_scan_interval: Duration,

    /// How often the full shard list is read again to find new shards, in ms (1000..=3600000).
    #[arg(long = "shard-sync-interval-ms", env = "DYNASTREAM_SHARD_SYNC_INTERVAL_MS", value_name = "MS", default_value = "60000", value_parser = millis::<1_000, 3_600_000>)]
    pub shard_sync_interval: Duration,

    /// How often each table's current stream is looked up again and each stream listed whole, in ms (10000..=86400000).
    #[arg(long = "stream-refresh-interval-ms", env = "DYNASTREAM_STREAM_REFRESH_INTERVAL_MS", value_name = "MS", default_value = "600000", value_parser = millis::<10_000, 86_400_000>)]
    pub stream_refresh_interval: Duration,

    /// Longest a shutdown may spend finishing in-flight batches, in ms (1000..=600000).
    #[arg(long = "shutdown-grace-ms", env = "DYNASTREAM_SHUTDOWN_GRACE_MS", value_name = "MS", default_value = "20000", value_parser = millis::<1_000, 600_000>)]
    pub shutdown_grace: Duration,

    /// Most leases this worker holds [default: unlimited] (1..=100000).
    #[arg(long, env = "DYNASTREAM_MAX_LEASES_PER_WORKER", value_parser = count::<NonZeroUsize, 1, 100_000>)]
    pub max_leases_per_worker: Option<NonZeroUsize>,

    /// DescribeStream calls per second this worker may make (0.1..=10); keep a fleet under the account's 10.
    #[arg(long, env = "DYNASTREAM_DESCRIBE_STREAM_RPS", default_value_t = 2.0, value_parser = calls_per_second)]
    pub describe_stream_rps: f64,

    /// Most DynamoDB Streams calls this worker has in flight at once, and so most connections it keeps to the service (1..=10000).
    #[arg(long, env = "DYNASTREAM_STREAMS_CONCURRENCY", default_value = "64", value_parser = count::<NonZeroUsize, 1, 10_000>)]
    pub streams_concurrency: NonZeroUsize,

    /// Address of the /metrics, /healthz, /readyz and /status endpoints (host:port; port 0 picks a free one).
    #[arg(long, env = "DYNASTREAM_METRICS_ADDR", default_value = "0.0.0.0:9464", value_parser = socket_address)]
    pub metrics_addr: std::net::SocketAddr,

    /// Also export per-shard series (shard ids as labels; removed when a shard leaves the worker).
    #[arg(long, env = "DYNASTREAM_METRICS_SHARD_LABELS", default_value_t = false, action = clap::ArgAction::Set, value_parser = boolean)]
    pub metrics_shard_labels: bool,

    /// Log filter, in RUST_LOG syntax (e.g. `info,dynastream=debug`).
    #[arg(long, env = "DYNASTREAM_LOG", default_value = "info")]
    pub log: String,

    /// Log format [default: json when stderr is not a terminal, else text].
    #[arg(long, env = "DYNASTREAM_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
}

/// One-off commands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Print the application's lease table: who reads which shard and how far it got.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Also read the first record after each checkpoint to show how far
        /// behind each pipeline is (two Streams calls per shard and pipeline).
        #[arg(long)]
        lag: bool,
    },
}

/// A configuration that cannot run. The message names the variable at fault
/// and what it accepts, on one line, so it reads well in a container's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// What the command line asked for.
#[derive(Debug)]
pub enum Invocation {
    /// Run a worker with this configuration.
    Run(Box<Config>),
    /// Print this text to stdout and exit 0 (`--help`, `--version`).
    Print(String),
}

impl Config {
    /// Parses flags and environment, then validates across settings.
    ///
    /// Never exits the process: the binary decides how to report, which keeps
    /// this testable and the exit code (2) in one place.
    pub fn from_args<I, T>(args: I) -> Result<Invocation, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let parsed = Config::command()
            .try_get_matches_from(args)
            .and_then(|matches| Ok((Config::from_arg_matches(&matches)?, matches)));
        match parsed {
            Ok((mut config, matches)) => {
                config.pipelines = pipelines::resolve(&config, &matches, std::env::vars_os())?;
                config.validate()?;
                Ok(Invocation::Run(Box::new(config)))
            }
            Err(err) => match err.kind() {
                ErrorKind::DisplayHelp
                | ErrorKind::DisplayVersion
                | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                    Ok(Invocation::Print(err.render().to_string()))
                }
                _ => Err(ConfigError(describe_clap_error(&err, name_with_env))),
            },
        }
    }

    /// Checks the rules that involve more than one setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.command.is_none()
            && self.tables.iter().all(|t| t.trim().is_empty())
            && self.stream_arns.iter().all(|a| a.trim().is_empty())
            && !self.discovers_tables()
        {
            return Err(ConfigError(
                "DYNASTREAM_TABLES, DYNASTREAM_TABLE_PREFIX, DYNASTREAM_TABLE_TAG or \
                 DYNASTREAM_STREAM_ARNS is required: name at least one table (e.g. \
                 DYNASTREAM_TABLES=orders), a way to find tables, or a stream ARN"
                    .into(),
            ));
        }
        if self.snapshot != SnapshotMode::Off
            && self.tables.iter().all(|t| t.trim().is_empty())
            && !self.discovers_tables()
        {
            return Err(ConfigError(
                "DYNASTREAM_SNAPSHOT needs tables to scan: set DYNASTREAM_TABLES, \
                 DYNASTREAM_TABLE_PREFIX or DYNASTREAM_TABLE_TAG (a stream ARN alone names no \
                 table to scan)"
                    .into(),
            ));
        }
        if let Some(table) = self.tables.iter().find(|t| !valid_table_name(t.trim())) {
            return Err(ConfigError(format!(
                "invalid DYNASTREAM_TABLES entry {table:?}: a table name is 3-255 characters of \
                 a-z, A-Z, 0-9, '_', '-' and '.'"
            )));
        }
        if let Some(arn) = self
            .stream_arns
            .iter()
            .find(|a| !a.trim().is_empty() && !looks_like_stream_arn(a.trim()))
        {
            return Err(ConfigError(format!(
                "invalid DYNASTREAM_STREAM_ARNS entry {arn:?}: expected \
                 arn:aws:dynamodb:<region>:<account>:table/<table>/stream/<label>"
            )));
        }
        if !valid_table_name(&self.lease_table_name()) {
            return Err(ConfigError(format!(
                "invalid DYNASTREAM_LEASE_TABLE {:?}: a table name is 3-255 characters of a-z, \
                 A-Z, 0-9, '_', '-' and '.'",
                self.lease_table_name()
            )));
        }
        if self.idle_poll_interval < self.poll_interval {
            return Err(ConfigError(format!(
                "DYNASTREAM_IDLE_POLL_INTERVAL_MS ({}) is below DYNASTREAM_POLL_INTERVAL_MS ({}): \
                 an idle shard is never polled faster than a busy one",
                self.idle_poll_interval.as_millis(),
                self.poll_interval.as_millis()
            )));
        }
        if self.pipelines.is_empty() {
            self.processing
                .validate(|setting| format!("DYNASTREAM_{setting}"))?;
        }
        for pipeline in &self.pipelines {
            pipeline
                .settings
                .validate(|setting| pipeline.variable(setting))?;
        }
        Ok(())
    }

    /// The table names, trimmed, without empty entries.
    pub fn table_names(&self) -> Vec<String> {
        clean_list(&self.tables)
    }

    /// Whether tables are also found by prefix or tag.
    pub fn discovers_tables(&self) -> bool {
        self.table_prefix.is_some() || self.table_tag.is_some()
    }

    /// The stream ARNs given directly, trimmed, without empty entries.
    pub fn stream_arn_list(&self) -> Vec<String> {
        clean_list(&self.stream_arns)
    }

    /// The lease table's name, defaulting to `<application>-leases`.
    pub fn lease_table_name(&self) -> String {
        self.lease_table
            .clone()
            .unwrap_or_else(|| format!("{}-leases", self.application))
    }

    /// The worker id, generating `<hostname>-<random>` when none was set.
    /// Call once and keep the result: each call without a configured id differs.
    pub fn resolve_worker_id(&self) -> String {
        if let Some(id) = &self.worker_id {
            return id.clone();
        }
        let host = gethostname::gethostname().to_string_lossy().into_owned();
        let host = if host.is_empty() {
            "worker".into()
        } else {
            host
        };
        format!("{host}-{:08x}", rand::random::<u32>())
    }

    /// How often held leases are renewed: a third of the lease duration, so
    /// two renewals can fail before the lease is at risk.
    pub fn renew_interval(&self) -> Duration {
        self.lease_duration / 3
    }

    /// Every environment variable the configuration reads, with its default
    /// (as `--help` shows it), for documentation checks.
    pub fn variables() -> Vec<(String, Option<String>)> {
        Config::command()
            .get_arguments()
            .filter_map(|arg| {
                let env = arg.get_env()?.to_string_lossy().into_owned();
                let default = arg
                    .get_default_values()
                    .iter()
                    .map(|v| v.to_string_lossy().into_owned())
                    .collect::<Vec<_>>();
                Some((env, (!default.is_empty()).then(|| default.join(","))))
            })
            .collect()
    }
}

fn clean_list(items: &[String]) -> Vec<String> {
    items
        .iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Parses one entry of `DYNASTREAM_PROCESSOR`.
fn processor_spec(value: &str) -> Result<ProcessorSpec, String> {
    value.parse()
}

/// Parses `DYNASTREAM_MAX_RETRY_ATTEMPTS`: -1 (forever) or 0..=10000.
fn retry_attempts(value: &str) -> Result<Limit<u32>, String> {
    let expected = || "expected -1 (retry forever) or a whole number from 0 to 10000".to_owned();
    match value.trim().parse::<i64>() {
        Ok(-1) => Ok(Limit(None)),
        Ok(n) if (0..=10_000).contains(&n) => Ok(Limit(u32::try_from(n).ok())),
        _ => Err(expected()),
    }
}

/// Parses `DYNASTREAM_MAX_RECORD_AGE_SECONDS`: -1 (no limit) or 60..=604800, as Lambda.
fn record_age(value: &str) -> Result<Limit<Duration>, String> {
    let expected = || "expected -1 (no limit) or a whole number from 60 to 604800".to_owned();
    match value.trim().parse::<i64>() {
        Ok(-1) => Ok(Limit(None)),
        Ok(n) if (60..=604_800).contains(&n) => {
            Ok(Limit(u64::try_from(n).ok().map(Duration::from_secs)))
        }
        _ => Err(expected()),
    }
}

/// Parses `DYNASTREAM_FILTER` into the compiled patterns it holds.
fn filter_set(value: &str) -> Result<FilterSet, String> {
    FilterSet::parse(value)
}

/// Parses `DYNASTREAM_HTTP_URL`: an absolute http:// or https:// URL with a
/// host, as the http processor needs it. Kept as text, trimmed.
fn http_url(value: &str) -> Result<String, String> {
    let url = value.trim();
    let uri: hyper::Uri = url
        .parse()
        .map_err(|_| "expected an http:// or https:// URL".to_owned())?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err("expected an http:// or https:// URL".into());
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("expected an http:// or https:// URL with a host".into());
    }
    Ok(url.to_owned())
}

/// Parses a duration in whole milliseconds within `MIN..=MAX`.
fn millis<const MIN: u64, const MAX: u64>(value: &str) -> Result<Duration, String> {
    whole_number::<MIN, MAX>(value).map(Duration::from_millis)
}

/// Parses a count within `MIN..=MAX` (`MIN` at least 1) into the non-zero
/// type its user takes, with the range in the message.
fn count<T: TryFrom<NonZeroU64>, const MIN: u64, const MAX: u64>(value: &str) -> Result<T, String> {
    const { assert!(MIN >= 1, "a count starts at 1") };
    let number = whole_number::<MIN, MAX>(value)?;
    NonZeroU64::new(number)
        .and_then(|number| T::try_from(number).ok())
        .ok_or_else(|| format!("expected a whole number from {MIN} to {MAX}"))
}

/// Parses `host:port`.
fn socket_address(value: &str) -> Result<std::net::SocketAddr, String> {
    value
        .trim()
        .parse()
        .map_err(|_| "expected host:port, e.g. 0.0.0.0:9464 or 127.0.0.1:0".to_owned())
}

/// Parses a boolean the way operators write one in an environment file.
fn boolean(value: &str) -> Result<bool, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err("expected true or false".into()),
    }
}

/// Parses a rate in calls per second, from 0.1 to 10.
fn calls_per_second(value: &str) -> Result<f64, String> {
    let expected = || "expected a number of calls per second from 0.1 to 10".to_owned();
    let rate: f64 = value.trim().parse().map_err(|_| expected())?;
    if rate.is_finite() && (0.1..=10.0).contains(&rate) {
        Ok(rate)
    } else {
        Err(expected())
    }
}

/// Parses a whole number within `MIN..=MAX`, with a message that states the range.
fn whole_number<const MIN: u64, const MAX: u64>(value: &str) -> Result<u64, String> {
    let expected = || format!("expected a whole number from {MIN} to {MAX}");
    let number: u64 = value.trim().parse().map_err(|_| expected())?;
    if (MIN..=MAX).contains(&number) {
        Ok(number)
    } else {
        Err(expected())
    }
}

/// A table-name prefix: the characters a table name may hold, 1-255 of them.
fn table_prefix(value: &str) -> Result<String, String> {
    let prefix = value.trim();
    if (1..=255).contains(&prefix.len())
        && prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        Ok(prefix.to_owned())
    } else {
        Err("expected 1-255 characters of a-z, A-Z, 0-9, '_', '-' and '.'".into())
    }
}

fn non_empty_name(value: &str) -> Result<String, String> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(trimmed.to_owned())
    }
}

/// DynamoDB's table-name rule.
fn valid_table_name(name: &str) -> bool {
    (3..=255).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

fn looks_like_stream_arn(arn: &str) -> bool {
    arn.starts_with("arn:") && arn.contains(":table/") && arn.contains("/stream/")
}

/// Turns clap's multi-line error into one line naming the environment
/// variable, since operators set variables, not flags.
fn describe_clap_error(err: &clap::Error, name: impl Fn(&str) -> String) -> String {
    let context_string = |kind| match err.get(kind) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        _ => None,
    };
    let arg_text = context_string(ContextKind::InvalidArg);
    let subject = arg_text
        .as_deref()
        .map(name)
        .unwrap_or_else(|| "argument".into());
    let value = context_string(ContextKind::InvalidValue).unwrap_or_default();
    match err.kind() {
        ErrorKind::ValueValidation => {
            let reason = std::error::Error::source(err)
                .map(|source| source.to_string())
                .unwrap_or_else(|| "not accepted".into());
            format!("invalid {subject} value {value:?}: {reason}")
        }
        ErrorKind::InvalidValue => {
            let valid = match err.get(ContextKind::ValidValue) {
                Some(ContextValue::Strings(values)) => values.join(", "),
                _ => String::new(),
            };
            if value.is_empty() {
                format!("invalid {subject}: a value is required (one of: {valid})")
            } else {
                format!("invalid {subject} value {value:?}: expected one of: {valid}")
            }
        }
        _ => {
            let rendered = err.to_string();
            let first = rendered.lines().next().unwrap_or("invalid arguments");
            first.trim_start_matches("error: ").to_owned()
        }
    }
}

/// `--batch-size <N>` becomes `DYNASTREAM_BATCH_SIZE (--batch-size)`.
fn name_with_env(arg_text: &str) -> String {
    let flag = arg_text.split_whitespace().next().unwrap_or(arg_text);
    let long = flag.trim_start_matches('-');
    let env = Config::command()
        .get_arguments()
        .find(|arg| arg.get_long() == Some(long))
        .and_then(|arg| arg.get_env().map(|e| e.to_string_lossy().into_owned()));
    match env {
        Some(env) => format!("{env} ({flag})"),
        None => flag.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, ConfigError> {
        let mut argv = vec!["dynastream"];
        argv.extend_from_slice(args);
        match Config::from_args(argv)? {
            Invocation::Run(config) => Ok(*config),
            Invocation::Print(text) => panic!("unexpected print: {text}"),
        }
    }

    #[test]
    fn defaults_follow_lambda() {
        let config = parse(&["--tables", "orders"]).unwrap();
        assert_eq!(config.processing.batch_size.get(), 100);
        assert_eq!(config.poll_interval, Duration::from_millis(250));
        assert_eq!(config.starting_position, StartingPosition::Latest);
        assert_eq!(config.lease_table_name(), "dynastream-leases");
        assert_eq!(config.renew_interval(), Duration::from_secs(10) / 3);
    }

    #[test]
    fn a_bad_batch_size_names_the_variable_and_the_range() {
        let err = parse(&["--tables", "orders", "--batch-size", "0"]).unwrap_err();
        assert!(err.0.contains("DYNASTREAM_BATCH_SIZE"), "{err}");
        assert!(err.0.contains("from 1 to 10000"), "{err}");
        assert!(!err.0.contains('\n'));
        let err = parse(&["--tables", "orders", "--batch-size", "abc"]).unwrap_err();
        assert!(err.0.contains("DYNASTREAM_BATCH_SIZE"), "{err}");
        assert!(err.0.contains("\"abc\""), "{err}");
    }

    #[test]
    fn an_unknown_position_lists_the_allowed_ones() {
        let err = parse(&["--tables", "t1x", "--starting-position", "EARLIEST"]).unwrap_err();
        assert!(err.0.contains("DYNASTREAM_STARTING_POSITION"), "{err}");
        assert!(err.0.contains("LATEST, TRIM_HORIZON"), "{err}");
    }

    #[test]
    fn tables_or_arns_are_required() {
        let err = parse(&[]).unwrap_err();
        assert!(err.0.contains("DYNASTREAM_TABLES"), "{err}");
        assert!(parse(&[
            "--stream-arns",
            "arn:aws:dynamodb:us-east-1:1:table/t/stream/x"
        ])
        .is_ok());
        assert!(parse(&["--stream-arns", "nonsense"]).is_err());
        assert!(parse(&["--tables", "a"]).is_err());
    }

    #[test]
    fn target_uris_are_checked_when_the_configuration_is_read() {
        let config = parse(&[
            "--tables",
            "orders",
            "--processor",
            "sqs://https://sqs.us-east-1.amazonaws.com/1/q,s3://archive/cdc/",
        ])
        .unwrap();
        assert_eq!(config.processing.processor.len(), 2);
        let err = parse(&["--tables", "orders", "--processor", "stdout,kafka://x"]).unwrap_err();
        assert!(err.0.contains("DYNASTREAM_PROCESSOR"), "{err}");
        assert!(err.0.contains("unknown scheme \"kafka\""), "{err}");
        assert!(!err.0.contains('\n'));
        let err = parse(&[
            "--tables",
            "orders",
            "--processor",
            "s3://archive?gzip=maybe",
        ])
        .unwrap_err();
        assert!(
            err.0.contains("DYNASTREAM_PROCESSOR") && err.0.contains("gzip"),
            "{err}"
        );
        let err = parse(&["--tables", "orders", "--format", "xml"]).unwrap_err();
        assert!(
            err.0.contains("DYNASTREAM_FORMAT") && err.0.contains("lambda, document"),
            "{err}"
        );
        let err = parse(&["--tables", "orders", "--exec-concurrency", "65"]).unwrap_err();
        assert!(
            err.0.contains("DYNASTREAM_EXEC_CONCURRENCY") && err.0.contains("1 to 64"),
            "{err}"
        );
    }

    #[test]
    fn values_arrive_parsed_in_the_types_their_users_take() {
        let config = parse(&[
            "--tables",
            "orders",
            "--lease-duration-ms",
            "9000",
            "--max-leases-per-worker",
            "7",
            "--max-retry-attempts",
            "-1",
            "--max-record-age-seconds",
            "60",
            "--filter",
            r#"[{"eventName":["INSERT"]},{"eventName":["REMOVE"]}]"#,
        ])
        .unwrap();
        assert_eq!(config.lease_duration, Duration::from_secs(9));
        assert_eq!(config.renew_interval(), Duration::from_secs(3));
        assert_eq!(config.max_leases_per_worker.map(NonZeroUsize::get), Some(7));
        assert_eq!(config.processing.max_retry_attempts, Limit(None));
        assert_eq!(
            config.processing.max_record_age,
            Limit(Some(Duration::from_secs(60)))
        );
        assert_eq!(
            config.processing.filter.as_ref().map(FilterSet::len),
            Some(2)
        );

        let defaults = parse(&["--tables", "orders"]).unwrap();
        assert_eq!(defaults.processing.max_retry_attempts, Limit(Some(10)));
        assert_eq!(defaults.processing.max_record_age, Limit(None));
        assert_eq!(defaults.processing.parallelization_factor.get(), 1);
        assert!(defaults.processing.filter.is_none());
    }

    #[test]
    fn a_bad_filter_or_http_url_is_refused_where_it_is_read() {
        let err = parse(&[
            "--tables",
            "orders",
            "--filter",
            "{\"a\":\n[{\"numeric\":[\">\",\"x\"]}]}",
        ])
        .unwrap_err();
        assert!(err.0.contains("DYNASTREAM_FILTER"), "{err}");
        assert!(
            err.0.contains("pattern 1, at a: \"numeric\" needs pairs"),
            "{err}"
        );
        assert!(!err.0.contains('\n'), "{err}");
        // Refused even when no http processor would use it.
        let err = parse(&["--tables", "orders", "--http-url", "ftp://host/x"]).unwrap_err();
        assert!(
            err.0.contains("DYNASTREAM_HTTP_URL") && err.0.contains("http:// or https://"),
            "{err}"
        );
        let err = parse(&["--tables", "orders", "--processor", "http"]).unwrap_err();
        assert!(err.0.contains("DYNASTREAM_HTTP_URL is not set"), "{err}");
        let config = parse(&[
            "--tables",
            "orders",
            "--processor",
            "http",
            "--http-url",
            " http://127.0.0.1:9/x ",
        ])
        .unwrap();
        assert_eq!(
            config.processing.http_url.as_deref(),
            Some("http://127.0.0.1:9/x")
        );
    }

    #[test]
    fn every_setting_has_a_variable() {
        let variables = Config::variables();
        assert!(variables.len() >= 10);
        assert!(variables
            .iter()
            .all(|(name, _)| name.starts_with("DYNASTREAM_")));
    }
}

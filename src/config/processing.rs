//! The settings of one pipeline: what its batches go through.
//!
//! Every field is a flag with a `DYNASTREAM_*` variable, as in [`Config`]:
//! without `DYNASTREAM_PIPELINES` they configure the application's one
//! pipeline; with it they are the defaults each named pipeline may override
//! with `DYNASTREAM_PIPELINE_<NAME>_<SETTING>` (see [`super::pipelines`]).
//!
//! [`Config`]: super::Config

use std::num::{NonZeroU16, NonZeroUsize};
use std::time::Duration;

use super::{
    boolean, count, filter_set, http_url, millis, processor_spec, record_age, retry_attempts,
    whole_number, ConfigError, FailureDestination, FilterSet, Limit, OnTrimmed, ProcessorSpec,
    RecordFormat,
};

/// Filter, batching, processors, retries and failure handling: everything
/// that may differ between two pipelines reading the same shards.
#[derive(Debug, Clone, clap::Args)]
pub struct Processing {
    /// Where each batch goes (comma-separated; a batch succeeds when all succeed): stdout, http, exec, count, or a target URI: sqs://<queue URL>, sns://<topic ARN>, eventbridge://<bus>[?source=...], kinesis://<stream>, firehose://<delivery stream>, s3://<bucket>/<prefix>[?gzip=true], lambda://<function>, states://<state machine ARN>.
    #[arg(
        long,
        env = "DYNASTREAM_PROCESSOR",
        default_value = "stdout",
        value_delimiter = ',',
        value_parser = processor_spec
    )]
    pub processor: Vec<ProcessorSpec>,

    /// How stdout and the message targets write a record: lambda (Lambda's record, typed attribute values) or document (plain JSON: eventID, eventName, table, keys, newImage, oldImage, ...); http, exec, lambda:// and states:// always send Lambda's event.
    #[arg(
        long,
        env = "DYNASTREAM_FORMAT",
        default_value = "lambda",
        ignore_case = true
    )]
    pub format: RecordFormat,

    /// Most records handed to a processor at once (1..=10000); GetRecords asks for at most 1000.
    //
    // A u16 holds the range and widens losslessly to the u32 and usize
    // the shard loop and the dispatcher take.
    #[arg(long, env = "DYNASTREAM_BATCH_SIZE", default_value = "100", value_parser = count::<NonZeroU16, 1, 10_000>)]
    pub batch_size: NonZeroU16,

    /// Longest wait to fill a batch, in ms (0..=300000); several reads may feed one batch.
    #[arg(long = "batch-window-ms", env = "DYNASTREAM_BATCH_WINDOW_MS", value_name = "MS", default_value = "0", value_parser = millis::<0, 300_000>)]
    pub batch_window: Duration,

    /// Most bytes of records (by SizeBytes) in one batch (1024..=67108864); 6 MB is Lambda's payload limit.
    #[arg(long, env = "DYNASTREAM_BATCH_MAX_BYTES", default_value_t = 6_291_456, value_parser = whole_number::<1_024, 67_108_864>)]
    pub batch_max_bytes: u64,

    /// Concurrent batches per shard (1..=10); records of one item key stay in order.
    #[arg(long, env = "DYNASTREAM_PARALLELIZATION_FACTOR", default_value = "1", value_parser = count::<NonZeroUsize, 1, 10>)]
    pub parallelization_factor: NonZeroUsize,

    /// Retries of a failing batch before its records go to the failure destination (-1 = forever, up to 10000).
    #[arg(long, env = "DYNASTREAM_MAX_RETRY_ATTEMPTS", default_value = "10", allow_negative_numbers = true, value_parser = retry_attempts)]
    pub max_retry_attempts: Limit<u32>,

    /// Records older than this many seconds go to the failure destination instead of being retried (-1 = no limit, or 60..=604800).
    #[arg(long = "max-record-age-seconds", env = "DYNASTREAM_MAX_RECORD_AGE_SECONDS", value_name = "SECONDS", default_value = "-1", allow_negative_numbers = true, value_parser = record_age)]
    pub max_record_age: Limit<Duration>,

    /// Split a failing batch in halves to isolate bad records (splits do not use up retries).
    #[arg(long, env = "DYNASTREAM_BISECT_ON_ERROR", default_value_t = false, action = clap::ArgAction::Set, value_parser = boolean)]
    pub bisect_on_error: bool,

    /// Where records go when retries or age run out: file:///path.jsonl or sqs://<queue URL> [default: none: the shard stops].
    #[arg(long, env = "DYNASTREAM_ON_FAILURE")]
    pub on_failure: Option<FailureDestination>,

    /// Lambda FilterCriteria: a pattern, a list of patterns, or {"Filters":[{"Pattern":"..."}]} [default: none: every record passes].
    #[arg(long, env = "DYNASTREAM_FILTER", value_parser = filter_set)]
    pub filter: Option<FilterSet>,

    /// URL the http processor POSTs each batch to (Lambda's event as JSON).
    #[arg(long, env = "DYNASTREAM_HTTP_URL", value_parser = http_url)]
    pub http_url: Option<String>,

    /// How long the http processor waits for an answer, in ms (100..=900000).
    #[arg(long = "http-timeout-ms", env = "DYNASTREAM_HTTP_TIMEOUT_MS", value_name = "MS", default_value = "30000", value_parser = millis::<100, 900_000>)]
    pub http_timeout: Duration,

    /// Command the exec processor starts once (through `sh -c`) and writes each batch to.
    #[arg(long, env = "DYNASTREAM_EXEC_COMMAND")]
    pub exec_command: Option<String>,

    /// How many exec children run at once (1..=64), each with one batch at a time; order per shard and per item key holds.
    #[arg(long, env = "DYNASTREAM_EXEC_CONCURRENCY", default_value = "1", value_parser = count::<NonZeroUsize, 1, 64>)]
    pub exec_concurrency: NonZeroUsize,

    /// How long the exec processor waits for the child's answer to a batch, in ms (100..=900000).
    #[arg(long = "exec-timeout-ms", env = "DYNASTREAM_EXEC_TIMEOUT_MS", value_name = "MS", default_value = "60000", value_parser = millis::<100, 900_000>)]
    pub exec_timeout: Duration,

    /// What a shard does when its position fell behind the stream's 24-hour retention (records were lost).
    #[arg(
        long,
        env = "DYNASTREAM_ON_TRIMMED",
        default_value = "skip",
        ignore_case = true
    )]
    pub on_trimmed: OnTrimmed,
}

impl Processing {
    /// Checks the rules between these settings. `variable` names a setting's
    /// variable as the operator set it (`DYNASTREAM_HTTP_URL`, or a
    /// pipeline's `DYNASTREAM_PIPELINE_SEARCH_HTTP_URL`), so the message
    /// points at the line to fix.
    pub fn validate(&self, variable: impl Fn(&str) -> String) -> Result<(), ConfigError> {
        if self.processor.is_empty() {
            return Err(ConfigError(format!(
                "{} is empty: name at least one of: stdout, http, exec, count, or a target URI \
                 such as sqs://<queue URL>",
                variable("PROCESSOR")
            )));
        }
        if self.processor.contains(&ProcessorSpec::Http) && self.http_url.is_none() {
            return Err(ConfigError(format!(
                "{} includes http but {} is not set",
                variable("PROCESSOR"),
                variable("HTTP_URL")
            )));
        }
        if self.processor.contains(&ProcessorSpec::Exec)
            && self
                .exec_command
                .as_deref()
                .is_none_or(|c| c.trim().is_empty())
        {
            return Err(ConfigError(format!(
                "{} includes exec but {} is not set",
                variable("PROCESSOR"),
                variable("EXEC_COMMAND")
            )));
        }
        Ok(())
    }
}

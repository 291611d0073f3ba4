//! Reads from DynamoDB Streams, behind a narrow trait.
//!
//! The engine talks to [`StreamsApi`], never to the SDK, so that the shard
//! graph, consumer loop and failure handling are unit-tested against the
//! in-memory `memory::MemoryStreams`, and the SDK adapter in [`sdk`] stays a
//! thin translation that the integration tests run against DynamoDB Local.
//! The adapter does not retry; callers do, with [`crate::retry`].
//!
//! The fake is compiled only for this crate's unit tests and under the
//! `testing` feature (which the integration tests and benches turn on), so it
//! never ships in a release build.

pub mod concurrency;
#[cfg(any(test, feature = "testing"))]
pub mod memory;
pub mod rate_limit;
pub mod sdk;
pub mod wire;

use async_trait::async_trait;

use crate::aws::FailureKind;
use crate::record::{SequenceNumber, StreamRecord};

/// GetRecords returns at most 1,000 records per call.
pub const MAX_RECORDS_PER_READ: u32 = 1_000;

/// A stream of a table, as ListStreams reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSummary {
    /// The stream's ARN.
    pub stream_arn: String,
    /// The table it belongs to.
    pub table_name: String,
    /// The stream's label, an ISO-8601 timestamp of its creation: the newest
    /// stream of a table has the greatest label.
    pub stream_label: String,
}

/// Whether a stream still receives changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamStatus {
    /// Being created.
    Enabling,
    /// Receiving changes.
    Enabled,
    /// Being switched off.
    Disabling,
    /// Switched off: its shards are closed and will be trimmed after 24 hours.
    Disabled,
}

/// One shard in a DescribeStream listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardInfo {
    /// The shard's id.
    pub shard_id: String,
    /// The shard it was split from, if any.
    pub parent_shard_id: Option<String>,
    /// The first sequence number in the shard.
    pub starting_sequence_number: Option<SequenceNumber>,
    /// Present once the shard is closed: no record will be added after it.
    pub ending_sequence_number: Option<SequenceNumber>,
}

impl ShardInfo {
    /// A closed shard receives no new records; once read to its end, its
    /// children may start.
    pub fn is_closed(&self) -> bool {
        self.ending_sequence_number.is_some()
    }
}

/// One page of a DescribeStream answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamPage {
    /// The stream's ARN.
    pub stream_arn: String,
    /// The stream's status.
    pub status: StreamStatus,
    /// The table the stream belongs to.
    pub table_name: Option<String>,
    /// The shards on this page.
    pub shards: Vec<ShardInfo>,
    /// Where the next page starts; `None` on the last page.
    pub last_evaluated_shard_id: Option<String>,
}

/// Where a shard iterator points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IteratorPosition {
    /// The oldest record the shard still holds.
    TrimHorizon,
    /// Just after the newest record: only new changes.
    Latest,
    /// Just after this record.
    AfterSequenceNumber(SequenceNumber),
    /// At this record.
    AtSequenceNumber(SequenceNumber),
}

/// One GetRecords answer.
#[derive(Debug, Clone, Default)]
pub struct RecordsPage {
    /// The records, in shard order.
    pub records: Vec<StreamRecord>,
    /// The iterator for the next read; `None` when the shard is closed and
    /// fully read.
    pub next_iterator: Option<String>,
}

/// Why a DynamoDB Streams call failed, typed so that the consumer loop can
/// tell an expired iterator from a throttle from a network error.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StreamsError {
    /// The iterator is older than 15 minutes or was already used up.
    #[error("shard iterator expired: {0}")]
    ExpiredIterator(String),
    /// The position asked for is older than the stream's 24-hour retention.
    #[error("position is beyond the stream's retention (trimmed data): {0}")]
    TrimmedData(String),
    /// The stream or shard does not exist (any more).
    #[error("stream or shard not found: {0}")]
    NotFound(String),
    /// Retryable: throttled, service failure or transport failure.
    #[error("{kind:?} in {operation}: {message}")]
    Transient {
        /// The API call.
        operation: &'static str,
        /// Which kind of transient failure.
        kind: FailureKind,
        /// What the service or transport said.
        message: String,
    },
    /// Fatal: the request was refused for a reason retrying cannot fix.
    #[error("{operation} refused: {message}")]
    Rejected {
        /// The API call.
        operation: &'static str,
        /// What the service said.
        message: String,
    },
}

impl StreamsError {
    /// Whether the same call may succeed if tried again after a backoff.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StreamsError::Transient { .. })
    }

    /// Whether the service asked us to slow down.
    pub fn is_throttle(&self) -> bool {
        matches!(
            self,
            StreamsError::Transient {
                kind: FailureKind::Throttled,
                ..
            }
        )
    }
}

/// The four DynamoDB Streams reads the engine needs.
///
/// Implementations make one attempt per call and report typed errors; the
/// caller owns retries. All methods are cancellation safe: dropping a call
/// loses nothing but the answer.
#[async_trait]
pub trait StreamsApi: Send + Sync + std::fmt::Debug + 'static {
    /// Lists every stream of a table, old and current (ListStreams, all pages).
    async fn list_streams(&self, table_name: &str) -> Result<Vec<StreamSummary>, StreamsError>;

    /// One page of a stream's shards (DescribeStream). `children_of` asks for
    /// the children of one shard only (the `CHILD_SHARDS` filter); an
    /// implementation that cannot filter returns the unfiltered page and the
    /// caller filters.
    async fn describe_stream(
        &self,
        stream_arn: &str,
        exclusive_start_shard_id: Option<&str>,
        children_of: Option<&str>,
    ) -> Result<StreamPage, StreamsError>;

    /// An iterator into a shard (GetShardIterator). `None` when the shard is
    /// closed and the position is past its end.
    async fn get_shard_iterator(
        &self,
        stream_arn: &str,
        shard_id: &str,
        position: &IteratorPosition,
    ) -> Result<Option<String>, StreamsError>;

    /// Reads up to `limit` (at most 1,000) records from an iterator
    /// (GetRecords). `stream_arn` is stamped on each record as Lambda does.
    async fn get_records(
        &self,
        stream_arn: &str,
        iterator: &str,
        limit: u32,
    ) -> Result<RecordsPage, StreamsError>;
}

/// Lists every shard of a stream by following DescribeStream's pages.
pub async fn list_all_shards(
    api: &dyn StreamsApi,
    stream_arn: &str,
) -> Result<(StreamStatus, Vec<ShardInfo>), StreamsError> {
    let mut shards = Vec::new();
    let mut start: Option<String> = None;
    loop {
        let page = api
            .describe_stream(stream_arn, start.as_deref(), None)
            .await?;
        shards.extend(page.shards);
        match page.last_evaluated_shard_id {
            Some(next) if Some(&next) != start.as_ref() => start = Some(next),
            _ => return Ok((page.status, shards)),
        }
    }
}

/// How old the first record after `position` is, in seconds (0 when there
/// is none yet): how far a reader at `position` is behind. Costs one
/// GetShardIterator and one GetRecords of a single record.
pub async fn age_of_next_record(
    api: &dyn StreamsApi,
    stream_arn: &str,
    shard_id: &str,
    position: &IteratorPosition,
    now_epoch_secs: i64,
) -> Result<u64, StreamsError> {
    let Some(iterator) = api
        .get_shard_iterator(stream_arn, shard_id, position)
        .await?
    else {
        return Ok(0);
    };
    let page = api.get_records(stream_arn, &iterator, 1).await?;
    let created = page
        .records
        .first()
        .and_then(|r| r.dynamodb.approximate_creation_date_time);
    Ok(created.map_or(0, |at| now_epoch_secs.saturating_sub(at).max(0) as u64))
}

/// The current stream of a table: the newest by label.
pub fn newest_stream(streams: &[StreamSummary]) -> Option<&StreamSummary> {
    streams
        .iter()
        .max_by(|a, b| a.stream_label.cmp(&b.stream_label))
}

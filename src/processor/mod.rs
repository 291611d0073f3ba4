//! Processors: where records go.
//!
//! A [`Processor`] receives a [`Batch`] of one shard's records in order and
//! answers success, a partial failure naming the records that failed (Lambda's
//! `batchItemFailures`), or an error. The engine checkpoints a batch only
//! after every processor succeeded with it: delivery is at least once, in
//! order per shard. Records are shared, typed values; a processor that needs
//! Lambda's JSON asks the batch for it ([`Batch::to_lambda_json`]), so a Rust
//! processor pays nothing for serialization it does not use.
//!
//! The AWS targets (`sqs://`, `sns://`, `eventbridge://`, `kinesis://`,
//! `firehose://`, `s3://`, `lambda://`, `states://`) have a file each; the
//! five that send through a batch API share [`entries`], which splits a batch
//! into requests and maps every refused entry back to its record, and
//! [`target`] parses their URIs and builds their clients.

pub mod count;
pub mod entries;
pub mod eventbridge;
pub mod exec;
pub mod firehose;
pub mod http;
pub mod kinesis;
pub mod lambda;
pub mod s3;
pub mod sns;
pub mod sqs;
pub mod states;
pub mod stdout;
pub mod target;

use std::sync::Arc;

use async_trait::async_trait;

use crate::record::{LambdaEvent, SequenceNumber, StreamRecord};

/// A run of consecutive records from one shard.
#[derive(Debug, Clone)]
pub struct Batch {
    /// The stream the records came from.
    pub stream_arn: Arc<str>,
    /// The shard the records came from.
    pub shard_id: Arc<str>,
    /// The records, in shard order.
    pub records: Vec<Arc<StreamRecord>>,
}

impl Batch {
    /// The batch as Lambda's event, `{"Records": [...]}`.
    pub fn lambda_event(&self) -> LambdaEvent<'_> {
        LambdaEvent {
            records: &self.records,
        }
    }

    /// The batch as Lambda's event, serialized.
    pub fn to_lambda_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.estimated_json_len());
        self.write_lambda_json(&mut out);
        out
    }

    /// Appends the batch as Lambda's event to `out`, for a processor that
    /// reuses its buffer from batch to batch.
    pub fn write_lambda_json(&self, out: &mut Vec<u8>) {
        crate::record::write::lambda_event(&self.records, out);
    }

    /// About how many bytes the batch takes as JSON (see
    /// [`StreamRecord::estimated_json_len`]).
    pub fn estimated_json_len(&self) -> usize {
        self.records
            .iter()
            .map(|record| record.estimated_json_len())
            .sum::<usize>()
            + 16
    }

    /// The sequence number of the batch's last record.
    pub fn last_sequence_number(&self) -> Option<&SequenceNumber> {
        self.records.last().map(|r| r.sequence_number())
    }

    /// How many records the batch holds.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether the batch holds no records.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

/// What a processor made of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BatchOutcome {
    /// Every record was processed.
    Success,
    /// These records failed (Lambda's `batchItemFailures`); the engine
    /// retries from the earliest of them, and only what follows it.
    PartialFailure(Vec<SequenceNumber>),
    /// Exactly these records failed and every other record was delivered
    /// (what a batch API such as SQS's SendMessageBatch answers): the engine
    /// retries only these, and sends those whose error is not retryable
    /// (e.g. larger than the service accepts) to the failure destination
    /// at once.
    RecordsFailed(Vec<RecordFailure>),
}

/// One record a processor could not deliver, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordFailure {
    /// The record.
    pub sequence_number: SequenceNumber,
    /// Why; `retryable: false` sends the record to the failure destination
    /// without further attempts.
    pub error: ProcessorError,
}

/// A processor's failure with a whole batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ProcessorError {
    /// What went wrong, for logs and the failure destination.
    pub message: String,
    /// `false` when retrying the same batch cannot help (e.g. misconfiguration).
    pub retryable: bool,
}

impl ProcessorError {
    /// A failure that may go away on retry.
    pub fn retryable(message: impl Into<String>) -> Self {
        ProcessorError {
            message: message.into(),
            retryable: true,
        }
    }

    /// A failure that retrying will not fix.
    pub fn fatal(message: impl Into<String>) -> Self {
        ProcessorError {
            message: message.into(),
            retryable: false,
        }
    }
}

/// Receives batches of stream records.
///
/// Called concurrently for different shards, never concurrently for the same
/// shard's overlapping records. A call is not cancelled by shutdown: the
/// engine waits for it (up to the shutdown grace period) and checkpoints.
#[async_trait]
pub trait Processor: Send + Sync + 'static {
    /// A short name for logs and metrics.
    fn name(&self) -> &str;

    /// Processes one batch.
    async fn process(&self, batch: &Batch) -> Result<BatchOutcome, ProcessorError>;

    /// Called when this worker starts reading a shard.
    fn shard_started(&self, _stream_arn: &str, _shard_id: &str) {}

    /// Called when this worker loses a shard's lease to another worker: any
    /// state kept for the shard may be stale from now on.
    fn lease_lost(&self, _stream_arn: &str, _shard_id: &str) {}

    /// Called when a shard has been read to its end and checkpointed.
    fn shard_ended(&self, _stream_arn: &str, _shard_id: &str) {}
}

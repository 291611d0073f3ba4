//! On-failure destinations: where records go when their retries or their age
//! run out, so that a shard can move on without dropping them.
//!
//! One JSON object per failed batch: the records (in Lambda's shape), the
//! stream and shard, the sequence range, how many attempts were made, why it
//! failed and the last error. A destination that cannot be written is
//! retried by the caller; the shard does not move on until the records are
//! safely somewhere.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

use crate::record::StreamRecord;

/// Why records were sent to the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureReason {
    /// Every allowed attempt failed.
    RetriesExhausted,
    /// The records were older than `DYNASTREAM_MAX_RECORD_AGE_SECONDS`.
    RecordTooOld,
    /// A processor refused the records for good (e.g. larger than its
    /// service accepts): no retry could deliver them.
    Rejected,
}

/// One failed batch, as written to the destination.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FailedBatch {
    /// Why the records are here.
    pub reason: FailureReason,
    /// The stream ARN.
    pub stream_arn: String,
    /// The shard id.
    pub shard_id: String,
    /// The first record's sequence number.
    pub start_sequence_number: String,
    /// The last record's sequence number.
    pub end_sequence_number: String,
    /// How many times the records were handed to processors.
    pub attempts: u32,
    /// The last processor error, if any.
    pub last_error: Option<String>,
    /// When the records were given up on, in epoch milliseconds.
    pub failed_at_millis: u64,
    /// How many records this object holds.
    pub record_count: usize,
    /// For a batch split over several messages (SQS's 256 KB limit): this
    /// part's number, from 1, and the number of parts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub part: Option<(usize, usize)>,
    /// The records, exactly as processors received them.
    pub records: Vec<Arc<StreamRecord>>,
}

/// Why a destination could not take a failed batch.
#[derive(Debug, Clone, thiserror::Error)]
#[error("failure destination {destination}: {message}")]
pub struct DestinationError {
    /// The destination, for logs.
    pub destination: String,
    /// What went wrong.
    pub message: String,
}

/// Somewhere failed records can be kept.
#[async_trait]
pub trait FailureDestination: Send + Sync + std::fmt::Debug + 'static {
    /// A name for logs and metrics (`file`, `sqs`).
    fn kind(&self) -> &'static str;

    /// Stores one failed batch durably, or fails without partial effects
    /// the caller could not retry.
    async fn send(&self, failed: &FailedBatch) -> Result<(), DestinationError>;
}

/// Appends one JSON line per failed batch to a file.
#[derive(Debug)]
pub struct FileDestination {
    path: PathBuf,
    lock: Mutex<()>,
}

impl FileDestination {
    /// A destination appending to `path` (created if missing).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileDestination {
            path: path.into(),
            lock: Mutex::new(()),
        }
    }

    fn error(&self, message: impl std::fmt::Display) -> DestinationError {
        DestinationError {
            destination: format!("file://{}", self.path.display()),
            message: message.to_string(),
        }
    }
}

#[async_trait]
impl FailureDestination for FileDestination {
    fn kind(&self) -> &'static str {
        "file"
    }

    async fn send(&self, failed: &FailedBatch) -> Result<(), DestinationError> {
        let mut line = serde_json::to_vec(failed).map_err(|e| self.error(e))?;
        line.push(b'\n');
        // One writer at a time so lines from concurrent shards never interleave.
        let _guard = self.lock.lock().await;
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .await
            .map_err(|e| self.error(e))?;
        file.write_all(&line).await.map_err(|e| self.error(e))?;
        file.sync_data().await.map_err(|e| self.error(e))?;
        Ok(())
    }
}

/// SQS accepts messages of at most 256 KiB; leave room for attributes.
const SQS_MAX_MESSAGE_BYTES: usize = 250 * 1024;

/// Sends one SQS message per failed batch (several when the batch is larger
/// than an SQS message can hold).
#[derive(Debug, Clone)]
pub struct SqsDestination {
    client: aws_sdk_sqs::Client,
    queue_url: String,
}

impl SqsDestination {
    /// A destination sending to `queue_url` through `client`.
    pub fn new(client: aws_sdk_sqs::Client, queue_url: impl Into<String>) -> Self {
        SqsDestination {
            client,
            queue_url: queue_url.into(),
        }
    }

    fn error(&self, message: impl std::fmt::Display) -> DestinationError {
        DestinationError {
            destination: format!("sqs://{}", self.queue_url),
            message: message.to_string(),
        }
    }
}

/// Splits a failed batch into parts whose JSON fits `limit` bytes each.
pub fn split_to_fit(failed: &FailedBatch, limit: usize) -> Result<Vec<FailedBatch>, String> {
    let whole = serde_json::to_vec(failed).map_err(|e| e.to_string())?;
    if whole.len() <= limit {
        return Ok(vec![failed.clone()]);
    }
    let mut parts: Vec<Vec<Arc<StreamRecord>>> = Vec::new();
    let mut current: Vec<Arc<StreamRecord>> = Vec::new();
    let overhead = 2048;
    let mut size = overhead;
    for record in &failed.records {
        let record_size = serde_json::to_vec(record.as_ref())
            .map_err(|e| e.to_string())?
            .len()
            + 1;
        if record_size + overhead > limit {
            return Err(format!(
                "record {} is {record_size} bytes as JSON, more than one message can hold",
                record.sequence_number()
            ));
        }
        if size + record_size > limit && !current.is_empty() {
            parts.push(std::mem::take(&mut current));
            size = overhead;
        }
        size += record_size;
        current.push(Arc::clone(record));
    }
    if !current.is_empty() {
        parts.push(current);
    }
    let count = parts.len();
    Ok(parts
        .into_iter()
        .enumerate()
        .map(|(index, records)| FailedBatch {
            start_sequence_number: records
                .first()
                .map(|r| r.sequence_number().to_string())
                .unwrap_or_default(),
            end_sequence_number: records
                .last()
                .map(|r| r.sequence_number().to_string())
                .unwrap_or_default(),
            record_count: records.len(),
            part: Some((index + 1, count)),
            records,
            ..failed.clone()
        })
        .collect())
}

#[async_trait]
impl FailureDestination for SqsDestination {
    fn kind(&self) -> &'static str {
        "sqs"
    }

    async fn send(&self, failed: &FailedBatch) -> Result<(), DestinationError> {
        let parts = split_to_fit(failed, SQS_MAX_MESSAGE_BYTES).map_err(|e| self.error(e))?;
        for part in parts {
            let body = serde_json::to_string(&part).map_err(|e| self.error(e))?;
            self.client
                .send_message()
                .queue_url(&self.queue_url)
                .message_body(body)
                .send()
                .await
                .map_err(|e| self.error(crate::aws::display_chain(&e)))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::EventName;
    use crate::streams::memory::test_record;

    fn failed(records: usize) -> FailedBatch {
        let records: Vec<Arc<StreamRecord>> = (0..records)
            .map(|i| {
                Arc::new(test_record(
                    "arn:s",
                    &format!("{:05}", i + 1).as_str().into(),
                    EventName::Insert,
                    &"x".repeat(200),
                ))
            })
            .collect();
        FailedBatch {
            reason: FailureReason::RetriesExhausted,
            stream_arn: "arn:s".into(),
            shard_id: "shard-1".into(),
            start_sequence_number: "00001".into(),
            end_sequence_number: format!("{:05}", records.len()),
            attempts: 3,
            last_error: Some("boom".into()),
            failed_at_millis: 1,
            record_count: records.len(),
            part: None,
            records,
        }
    }

    #[tokio::test]
    async fn the_file_destination_appends_one_line_per_batch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("failed.jsonl");
        let destination = FileDestination::new(&path);
        destination.send(&failed(2)).await.unwrap();
        destination.send(&failed(1)).await.unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["reason"], "retries_exhausted");
        assert_eq!(lines[0]["shardId"], "shard-1");
        assert_eq!(lines[0]["attempts"], 3);
        assert_eq!(lines[0]["lastError"], "boom");
        assert_eq!(lines[0]["records"].as_array().unwrap().len(), 2);
        assert_eq!(lines[0]["records"][0]["eventName"], "INSERT");
    }

    #[test]
    fn large_batches_are_split_into_parts_that_fit() {
        let batch = failed(40);
        let parts = split_to_fit(&batch, 4096).unwrap();
        assert!(parts.len() > 1);
        let total: usize = parts.iter().map(|p| p.records.len()).sum();
        assert_eq!(total, 40);
        for (index, part) in parts.iter().enumerate() {
            assert!(serde_json::to_vec(part).unwrap().len() <= 4096);
            assert_eq!(part.part, Some((index + 1, parts.len())));
            assert_eq!(
                part.start_sequence_number,
                part.records[0].sequence_number().to_string()
            );
        }
        assert_eq!(split_to_fit(&failed(2), 1 << 20).unwrap().len(), 1);
    }
}

//! The `kinesis://<stream name or ARN>` target: PutRecords, one Kinesis
//! record per stream record.
//!
//! `PartitionKey` = the table and the item key, so one item's changes land
//! on one Kinesis shard, in order: PutRecords itself does not keep order
//! across a partial failure, so a request carries at most one change per
//! item (see [`super::entries`]). Limits: 500 records and 5 MiB per call,
//! 1 MiB per record, partition key included.

use async_trait::async_trait;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;

use super::entries::{item_group, Entry, EntryApi, EntryFailure, Limits};
use super::sqs::build_failure;
use super::Batch;
use crate::aws::{classify, Failure};

/// Kinesis's limits on PutRecords.
pub const LIMITS: Limits = Limits {
    max_entries: 500,
    max_request_bytes: 5 * 1024 * 1024,
    max_entry_bytes: 1024 * 1024,
};

/// PutRecords to one stream.
#[derive(Debug, Clone)]
pub struct KinesisApi {
    client: aws_sdk_kinesis::Client,
    stream: String,
}

impl KinesisApi {
    /// Puts records on `stream` (a name or an ARN) through `client`.
    pub fn new(client: aws_sdk_kinesis::Client, stream: &str) -> Self {
        KinesisApi {
            client,
            stream: stream.to_owned(),
        }
    }
}

/// A record's `PartitionKey`: at most 256 characters.
pub fn partition_key(record: &crate::record::StreamRecord) -> String {
    item_group(record, 256, |c| c.is_ascii_graphic())
}

#[async_trait]
impl EntryApi for KinesisApi {
    fn target(&self) -> &'static str {
        "kinesis"
    }

    fn limits(&self) -> Limits {
        LIMITS
    }

    fn ordered(&self) -> bool {
        true
    }

    fn entry_size(&self, entry: &Entry<'_>) -> usize {
        entry.body.len() + partition_key(entry.record).len()
    }

    async fn send(
        &self,
        _batch: &Batch,
        entries: &mut [Entry<'_>],
    ) -> Result<Vec<EntryFailure>, Failure> {
        let mut request = Vec::with_capacity(entries.len());
        for entry in entries.iter_mut() {
            request.push(
                PutRecordsRequestEntry::builder()
                    .partition_key(partition_key(entry.record))
                    .data(Blob::new(std::mem::take(&mut entry.body)))
                    .build()
                    .map_err(build_failure)?,
            );
        }
        let call = self.client.put_records().set_records(Some(request));
        let call = if self.stream.starts_with("arn:") {
            call.stream_arn(&self.stream)
        } else {
            call.stream_name(&self.stream)
        };
        let answer = call.send().await.map_err(|e| classify(&e))?;
        // The answer's records stand in the request's order; every failure
        // Kinesis reports per record (throughput, internal, KMS) may pass
        // on a later try.
        Ok(answer
            .records()
            .iter()
            .enumerate()
            .filter_map(|(position, result)| {
                EntryFailure::in_place(
                    position,
                    result.error_code(),
                    result.error_message(),
                    |_| true,
                )
            })
            .collect())
    }
}

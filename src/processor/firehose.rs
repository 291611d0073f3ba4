//! The `firehose://<delivery stream name>` target: PutRecordBatch, one
//! Firehose record per stream record, each ending in a newline so that the
//! objects Firehose writes are JSON Lines.
//!
//! Limits: 500 records and 4 MiB per call, 1,000 KiB per record. Firehose
//! promises no order, so neither does this target beyond what a single
//! call keeps.

use async_trait::async_trait;
use aws_sdk_firehose::primitives::Blob;
use aws_sdk_firehose::types::Record;

use super::entries::{Entry, EntryApi, EntryFailure, Limits};
use super::sqs::build_failure;
use super::Batch;
use crate::aws::{classify, Failure};

/// Firehose's limits on PutRecordBatch.
pub const LIMITS: Limits = Limits {
    max_entries: 500,
    max_request_bytes: 4 * 1024 * 1024,
    max_entry_bytes: 1000 * 1024,
};

/// PutRecordBatch to one delivery stream.
#[derive(Debug, Clone)]
pub struct FirehoseApi {
    client: aws_sdk_firehose::Client,
    delivery_stream: String,
}

impl FirehoseApi {
    /// Puts records on `delivery_stream` (its name, or an ARN whose name is
    /// used) through `client`.
    pub fn new(client: aws_sdk_firehose::Client, delivery_stream: &str) -> Self {
        let name = delivery_stream
            .rsplit_once(":deliverystream/")
            .map_or(delivery_stream, |(_, name)| name);
        FirehoseApi {
            client,
            delivery_stream: name.to_owned(),
        }
    }
}

#[async_trait]
impl EntryApi for FirehoseApi {
    fn target(&self) -> &'static str {
        "firehose"
    }

    fn limits(&self) -> Limits {
        LIMITS
    }

    fn ordered(&self) -> bool {
        false
    }

    fn entry_size(&self, entry: &Entry<'_>) -> usize {
        entry.body.len() + 1
    }

    async fn send(
        &self,
        _batch: &Batch,
        entries: &mut [Entry<'_>],
    ) -> Result<Vec<EntryFailure>, Failure> {
        let mut request = Vec::with_capacity(entries.len());
        for entry in entries.iter_mut() {
            let mut line = std::mem::take(&mut entry.body);
            line.push(b'\n');
            request.push(
                Record::builder()
                    .data(Blob::new(line))
                    .build()
                    .map_err(build_failure)?,
            );
        }
        let answer = self
            .client
            .put_record_batch()
            .delivery_stream_name(&self.delivery_stream)
            .set_records(Some(request))
            .send()
            .await
            .map_err(|e| classify(&e))?;
        Ok(answer
            .request_responses()
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

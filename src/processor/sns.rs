//! The `sns://<topic ARN>` target: PublishBatch, one message per record.
//!
//! Limits: 10 messages and 256 KiB per call, attributes included. Every
//! message carries the attributes `eventName` and `table`, so subscribers
//! can filter with SNS filter policies. A FIFO topic (ARN ending in `.fifo`)
//! gets `MessageGroupId` and `MessageDeduplicationId` as an SQS FIFO queue
//! does.

use async_trait::async_trait;
use aws_sdk_sns::types::{MessageAttributeValue, PublishBatchRequestEntry};

use super::entries::{Entry, EntryApi, EntryFailure, Limits};
use super::sqs::{body_text, build_failure, message_group_id};
use super::Batch;
use crate::aws::{classify, Failure};

/// SNS's limits on PublishBatch.
pub const LIMITS: Limits = Limits {
    max_entries: 10,
    max_request_bytes: 256 * 1024,
    max_entry_bytes: 256 * 1024,
};

/// PublishBatch to one topic.
#[derive(Debug, Clone)]
pub struct SnsApi {
    client: aws_sdk_sns::Client,
    topic_arn: String,
    fifo: bool,
}

impl SnsApi {
    /// Publishes to `topic_arn` through `client`.
    pub fn new(client: aws_sdk_sns::Client, topic_arn: &str) -> Self {
        SnsApi {
            client,
            topic_arn: topic_arn.to_owned(),
            fifo: topic_arn.ends_with(".fifo"),
        }
    }
}

fn text_attribute(value: &str) -> Result<MessageAttributeValue, Failure> {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()
        .map_err(build_failure)
}

#[async_trait]
impl EntryApi for SnsApi {
    fn target(&self) -> &'static str {
        "sns"
    }

    fn limits(&self) -> Limits {
        LIMITS
    }

    fn ordered(&self) -> bool {
        self.fifo
    }

    fn entry_size(&self, entry: &Entry<'_>) -> usize {
        // SNS counts attribute names, types and values with the body.
        let table = crate::record::table_name(&entry.record.event_source_arn);
        entry.body.len() + "eventName".len() + "table".len() + 2 * "String".len() + 6 + table.len()
    }

    async fn send(
        &self,
        _batch: &Batch,
        entries: &mut [Entry<'_>],
    ) -> Result<Vec<EntryFailure>, Failure> {
        let mut request = Vec::with_capacity(entries.len());
        for (position, entry) in entries.iter_mut().enumerate() {
            let record = entry.record;
            let mut builder = PublishBatchRequestEntry::builder()
                .id(position.to_string())
                .message(body_text(entry))
                .message_attributes("eventName", text_attribute(record.event_name.as_str())?)
                .message_attributes(
                    "table",
                    text_attribute(crate::record::table_name(&record.event_source_arn))?,
                );
            if self.fifo {
                builder = builder
                    .message_group_id(message_group_id(record))
                    .message_deduplication_id(&record.event_id);
            }
            request.push(builder.build().map_err(build_failure)?);
        }
        let answer = self
            .client
            .publish_batch()
            .topic_arn(&self.topic_arn)
            .set_publish_batch_request_entries(Some(request))
            .send()
            .await
            .map_err(|e| classify(&e))?;
        Ok(answer
            .failed()
            .iter()
            .filter_map(|failed| {
                EntryFailure::by_id(
                    failed.id(),
                    failed.code(),
                    failed.message(),
                    failed.sender_fault(),
                )
            })
            .collect())
    }
}

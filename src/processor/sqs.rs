//! The `sqs://<queue URL>` target: SendMessageBatch, one message per record.
//!
//! Limits: 10 messages and 256 KiB per call (SQS counts a batch's bodies
//! together). A queue whose URL ends in `.fifo` gets `MessageGroupId` = the
//! table and the item key, so one item's changes are delivered in order,
//! and `MessageDeduplicationId` = the record's `eventID`, so a record sent
//! twice within SQS's five-minute window is stored once.

use async_trait::async_trait;
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;

use super::entries::{item_group, Entry, EntryApi, EntryFailure, Limits};
use super::Batch;
use crate::aws::{classify, Failure, FailureKind};

/// SQS's limits on SendMessageBatch.
pub const LIMITS: Limits = Limits {
    max_entries: 10,
    max_request_bytes: 256 * 1024,
    max_entry_bytes: 256 * 1024,
};

/// SendMessageBatch to one queue.
#[derive(Debug, Clone)]
pub struct SqsApi {
    client: aws_sdk_sqs::Client,
    queue_url: String,
    fifo: bool,
}

impl SqsApi {
    /// Sends to `queue_url` through `client`.
    pub fn new(client: aws_sdk_sqs::Client, queue_url: &str) -> Self {
        SqsApi {
            client,
            queue_url: queue_url.to_owned(),
            fifo: queue_url.ends_with(".fifo"),
        }
    }
}

/// A `MessageGroupId`: at most 128 characters of ASCII letters, digits and
/// punctuation (SNS FIFO topics take the same).
pub fn message_group_id(record: &crate::record::StreamRecord) -> String {
    item_group(record, 128, |c| c.is_ascii_graphic())
}

/// A request that could not even be built (a missing required field) is
/// the program's fault, reported like a rejected call.
pub(crate) fn build_failure(err: impl std::fmt::Display) -> Failure {
    Failure {
        code: None,
        message: format!("could not build the request: {err}"),
        kind: FailureKind::Rejected,
    }
}

/// The bodies of JSON entries as text; JSON is always UTF-8.
pub(crate) fn body_text(entry: &mut Entry<'_>) -> String {
    String::from_utf8(std::mem::take(&mut entry.body))
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

#[async_trait]
impl EntryApi for SqsApi {
    fn target(&self) -> &'static str {
        "sqs"
    }

    fn limits(&self) -> Limits {
        LIMITS
    }

    fn ordered(&self) -> bool {
        self.fifo
    }

    async fn send(
        &self,
        _batch: &Batch,
        entries: &mut [Entry<'_>],
    ) -> Result<Vec<EntryFailure>, Failure> {
        let mut request = Vec::with_capacity(entries.len());
        for (position, entry) in entries.iter_mut().enumerate() {
            let mut builder = SendMessageBatchRequestEntry::builder()
                .id(position.to_string())
                .message_body(body_text(entry));
            if self.fifo {
                builder = builder
                    .message_group_id(message_group_id(entry.record))
                    .message_deduplication_id(&entry.record.event_id);
            }
            request.push(builder.build().map_err(build_failure)?);
        }
        let answer = self
            .client
            .send_message_batch()
            .queue_url(&self.queue_url)
            .set_entries(Some(request))
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

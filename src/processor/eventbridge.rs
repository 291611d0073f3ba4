//! The `eventbridge://<bus name or ARN>[?source=...]` target: PutEvents, one
//! event per record.
//!
//! `Source` = `dynastream` (or `?source=`), `DetailType` = the event name
//! (`INSERT`, `MODIFY`, `REMOVE`), `Detail` = the record in the configured
//! format, so rules can match on `detail-type` and on the record's fields.
//! Limits: 10 entries and 256 KiB per call, counted as EventBridge counts an
//! entry (source, detail type and detail).

use async_trait::async_trait;
use aws_sdk_eventbridge::types::PutEventsRequestEntry;

use super::entries::{Entry, EntryApi, EntryFailure, Limits};
use super::sqs::body_text;
use super::Batch;
use crate::aws::{classify, Failure};

/// EventBridge's limits on PutEvents.
pub const LIMITS: Limits = Limits {
    max_entries: 10,
    max_request_bytes: 256 * 1024,
    max_entry_bytes: 256 * 1024,
};

/// Entry error codes that say the entry itself is wrong: sending it again
/// cannot succeed.
const SENDER_FAULTS: &[&str] = &["MalformedDetail", "InvalidArgument", "ValidationException"];

/// PutEvents to one bus.
#[derive(Debug, Clone)]
pub struct EventBridgeApi {
    client: aws_sdk_eventbridge::Client,
    bus: String,
    source: String,
}

impl EventBridgeApi {
    /// Puts events on `bus` with `source` through `client`.
    pub fn new(client: aws_sdk_eventbridge::Client, bus: &str, source: &str) -> Self {
        EventBridgeApi {
            client,
            bus: bus.to_owned(),
            source: source.to_owned(),
        }
    }
}

#[async_trait]
impl EntryApi for EventBridgeApi {
    fn target(&self) -> &'static str {
        "eventbridge"
    }

    fn limits(&self) -> Limits {
        LIMITS
    }

    fn ordered(&self) -> bool {
        false
    }

    fn entry_size(&self, entry: &Entry<'_>) -> usize {
        entry.body.len() + self.source.len() + entry.record.event_name.as_str().len()
    }

    async fn send(
        &self,
        _batch: &Batch,
        entries: &mut [Entry<'_>],
    ) -> Result<Vec<EntryFailure>, Failure> {
        let request = entries
            .iter_mut()
            .map(|entry| {
                PutEventsRequestEntry::builder()
                    .event_bus_name(&self.bus)
                    .source(&self.source)
                    .detail_type(entry.record.event_name.as_str())
                    .detail(body_text(entry))
                    .build()
            })
            .collect();
        let answer = self
            .client
            .put_events()
            .set_entries(Some(request))
            .send()
            .await
            .map_err(|e| classify(&e))?;
        // The answer's entries stand in the request's order.
        Ok(answer
            .entries()
            .iter()
            .enumerate()
            .filter_map(|(position, result)| {
                EntryFailure::in_place(
                    position,
                    result.error_code(),
                    result.error_message(),
                    |code| !SENDER_FAULTS.contains(&code),
                )
            })
            .collect())
    }
}

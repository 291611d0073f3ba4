//! GetRecords answers read straight into the record model.
//!
//! The SDK parses a GetRecords answer into its own model (a `HashMap` per
//! item image, a builder per record, `Blob`s, `DateTime`s) and
//! [`super::sdk::convert_record`] then moves that into [`StreamRecord`]:
//! two models built per record, where only the second is used. That parse
//! was most of a draining worker's CPU.
//!
//! [`RecordsCapture`] is an interceptor on the DynamoDB Streams client. Inside
//! [`capture_records`], when a successful answer arrives, it wraps the
//! response body so that, as the SDK reads it, the bytes are parsed once with
//! serde into [`StreamRecord`]s and kept for the caller, and the SDK's own
//! deserializer is given only the answer's `NextShardIterator`. The slot
//! travels in a task-local rather than a per-call interceptor, so a call
//! costs no extra configuration layer (that matters for the many empty reads
//! of quiet shards). Signing, the HTTP client, retries, timeouts and every
//! error answer stay the SDK's. Should the answer hold anything this model
//! cannot read (a record field or attribute type added after this was
//! written), the SDK is given the whole body, exactly as received, and
//! parses it as before: nothing is lost, it only costs what it used to.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::BeforeDeserializationInterceptorContextMut;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::config_bag::ConfigBag;
use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use serde::Deserialize;

use crate::record::{ChangeData, EventName, Item, SequenceNumber, StreamRecord, UserIdentity};

/// The most a GetRecords answer is trusted to announce as its length when
/// sizing the buffer for it (the service returns at most 1 MB of records).
const MAX_ANSWER_BYTES: usize = 8 << 20;

/// The records of one GetRecords answer, parsed from its body.
pub type CapturedRecords = Vec<WireRecord>;

/// Where an answer's records are left for the call that asked for them.
type Slot = Arc<Mutex<Option<CapturedRecords>>>;

tokio::task_local! {
    static SLOT: Slot;
}

/// Runs one GetRecords call (`call`) so that its answer's records are parsed
/// here; they are returned beside the call's own result, `None` when the SDK
/// parsed them (use the SDK's output then). The client must carry
/// [`RecordsCapture`].
pub async fn capture_records<F: std::future::Future>(
    call: F,
) -> (F::Output, Option<CapturedRecords>) {
    let slot = Slot::default();
    let output = SLOT.scope(Arc::clone(&slot), call).await;
    let records = slot.lock().ok().and_then(|mut records| records.take());
    (output, records)
}

/// GetRecords answers parsed here since the process started, for the tests
/// and benchmarks that must know which parser read a page.
static ANSWERS_PARSED: AtomicU64 = AtomicU64::new(0);

/// How many GetRecords answers this process parsed into the record model
/// itself (the rest went through the SDK's parser).
pub fn answers_parsed() -> u64 {
    ANSWERS_PARSED.load(Ordering::Relaxed)
}

/// The client interceptor that parses GetRecords answers for
/// [`capture_records`] (see the module docs); outside it, a no-op.
#[derive(Debug, Clone, Copy, Default)]
pub struct RecordsCapture;

impl Intercept for RecordsCapture {
    fn name(&self) -> &'static str {
        "dynastream::RecordsCapture"
    }

    fn modify_before_deserialization(
        &self,
        context: &mut BeforeDeserializationInterceptorContextMut<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let Ok(slot) = SLOT.try_with(Arc::clone) else {
            return Ok(());
        };
        // A retried attempt starts afresh.
        if let Ok(mut records) = slot.lock() {
            records.take();
        }
        let response = context.response_mut();
        if !response.status().is_success() {
            return Ok(());
        }
        // Sized once from the answer's length, rather than doubled (and
        // copied) as a page of up to a megabyte arrives.
        let length = response
            .headers()
            .get("content-length")
            .and_then(|value| value.parse::<usize>().ok())
            .unwrap_or(0)
            .min(MAX_ANSWER_BYTES);
        let body = std::mem::replace(response.body_mut(), SdkBody::taken());
        *response.body_mut() = SdkBody::from_body_1_x(CapturingBody {
            inner: body,
            received: BytesMut::with_capacity(length),
            records: slot,
            finished: false,
        });
        Ok(())
    }
}

/// A response body that reads its inner body to the end, parses it, and
/// then yields what the SDK should deserialize.
struct CapturingBody {
    inner: SdkBody,
    received: BytesMut,
    records: Slot,
    finished: bool,
}

impl CapturingBody {
    /// The body the SDK gets: the iterator alone when the records were
    /// parsed here, else everything as received.
    fn for_the_sdk(&mut self) -> Bytes {
        let received = std::mem::take(&mut self.received).freeze();
        match serde_json::from_slice::<WirePage>(&received) {
            Ok(page) => {
                let next = serde_json::json!({ "NextShardIterator": page.next_shard_iterator });
                let Ok(mut records) = self.records.lock() else {
                    return received;
                };
                *records = Some(page.records);
                ANSWERS_PARSED.fetch_add(1, Ordering::Relaxed);
                Bytes::from(next.to_string())
            }
            Err(err) => {
                tracing::debug!(error = %err, "GetRecords answer left to the SDK's parser");
                received
            }
        }
    }
}

impl Body for CapturingBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.finished {
            return Poll::Ready(None);
        }
        loop {
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(err))) => return Poll::Ready(Some(Err(err))),
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        self.received.extend_from_slice(data);
                    }
                }
                Poll::Ready(None) => {
                    self.finished = true;
                    let body = self.for_the_sdk();
                    return Poll::Ready(Some(Ok(Frame::data(body))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.finished
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// A GetRecords answer as the service writes it.
#[derive(Deserialize)]
struct WirePage {
    #[serde(rename = "Records", default)]
    records: Vec<WireRecord>,
    #[serde(rename = "NextShardIterator", default)]
    next_shard_iterator: Option<String>,
}

/// One record as GetRecords writes it: Lambda's record without
/// `eventSourceARN`, and with `userIdentity`'s members capitalized.
#[derive(Debug, Deserialize)]
pub struct WireRecord {
    #[serde(rename = "eventID", default)]
    event_id: Option<String>,
    #[serde(rename = "eventName", default)]
    event_name: Option<EventName>,
    #[serde(rename = "eventVersion", default)]
    event_version: Option<String>,
    #[serde(rename = "eventSource", default)]
    event_source: Option<String>,
    #[serde(rename = "awsRegion", default)]
    aws_region: Option<String>,
    #[serde(default)]
    dynamodb: Option<WireChange>,
    #[serde(rename = "userIdentity", default)]
    user_identity: Option<WireIdentity>,
}

#[derive(Debug, Deserialize)]
struct WireChange {
    /// Epoch seconds, possibly with a fraction.
    #[serde(rename = "ApproximateCreationDateTime", default)]
    approximate_creation_date_time: Option<f64>,
    #[serde(rename = "Keys", default)]
    keys: Option<Item>,
    #[serde(rename = "NewImage", default)]
    new_image: Option<Item>,
    #[serde(rename = "OldImage", default)]
    old_image: Option<Item>,
    #[serde(rename = "SequenceNumber", default)]
    sequence_number: Option<String>,
    #[serde(rename = "SizeBytes", default)]
    size_bytes: Option<i64>,
    #[serde(rename = "StreamViewType", default)]
    stream_view_type: Option<String>,
}

#[derive(Debug, Deserialize)]
struct WireIdentity {
    #[serde(rename = "Type", default)]
    kind: Option<String>,
    #[serde(rename = "PrincipalId", default)]
    principal_id: Option<String>,
}

impl WireRecord {
    /// The record in the model, with the same defaults as the conversion
    /// from the SDK's model ([`super::sdk::convert_record`]); `None`, with
    /// an error log, for a record that cannot be checkpointed.
    pub fn into_record(self, stream_arn: &Arc<str>) -> Option<StreamRecord> {
        let Some(change) = self.dynamodb else {
            tracing::error!(event_id = ?self.event_id, "stream record without its change data");
            return None;
        };
        let Some(sequence_number) = change.sequence_number else {
            tracing::error!(event_id = ?self.event_id, "stream record without a sequence number");
            return None;
        };
        Some(StreamRecord {
            event_id: self.event_id.unwrap_or_default(),
            event_name: self.event_name.unwrap_or(EventName::Modify),
            event_version: self.event_version.unwrap_or_else(|| "1.1".into()),
            event_source: self.event_source.unwrap_or_else(|| "aws:dynamodb".into()),
            aws_region: self.aws_region.unwrap_or_default(),
            dynamodb: ChangeData {
                approximate_creation_date_time: change
                    .approximate_creation_date_time
                    .map(|seconds| seconds.floor() as i64),
                keys: change.keys.unwrap_or_default(),
                new_image: change.new_image,
                old_image: change.old_image,
                sequence_number: SequenceNumber(sequence_number),
                size_bytes: change.size_bytes.unwrap_or_default(),
                stream_view_type: change.stream_view_type,
            },
            event_source_arn: Arc::clone(stream_arn),
            user_identity: self.user_identity.map(|identity| UserIdentity {
                kind: identity.kind.unwrap_or_default(),
                principal_id: identity.principal_id.unwrap_or_default(),
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    const PAGE: &str = r#"{"NextShardIterator":"next-1","Records":[{"awsRegion":"ddblocal","dynamodb":{"ApproximateCreationDateTime":1.7000000E9,"Keys":{"pk":{"S":"a"}},"NewImage":{"pk":{"S":"a"},"n":{"N":"1"},"b":{"B":"AAE="}},"SequenceNumber":"000000000000000000001","SizeBytes":20,"StreamViewType":"NEW_AND_OLD_IMAGES"},"eventID":"e1","eventName":"INSERT","eventSource":"aws:dynamodb","eventVersion":"1.1"},{"dynamodb":{"Keys":{"pk":{"S":"b"}},"SequenceNumber":"2","SizeBytes":5},"eventID":"e2","eventName":"REMOVE","userIdentity":{"PrincipalId":"dynamodb.amazonaws.com","Type":"Service"}}]}"#;

    async fn read_through(body: &'static str) -> (String, Option<CapturedRecords>) {
        let slot = Slot::default();
        let wrapped = CapturingBody {
            inner: SdkBody::from(body),
            received: BytesMut::new(),
            records: Arc::clone(&slot),
            finished: false,
        };
        let seen = wrapped.collect().await.expect("a body").to_bytes();
        let records = slot.lock().unwrap().take();
        (String::from_utf8(seen.to_vec()).unwrap(), records)
    }

    #[tokio::test]
    async fn a_page_is_parsed_once_and_the_sdk_gets_only_the_iterator() {
        let (for_sdk, captured) = read_through(PAGE).await;
        assert_eq!(for_sdk, r#"{"NextShardIterator":"next-1"}"#);
        let arn: Arc<str> = Arc::from("arn:aws:dynamodb:ddblocal:1:table/t/stream/x");
        let records: Vec<_> = captured
            .expect("captured")
            .into_iter()
            .filter_map(|r| r.into_record(&arn))
            .collect();
        assert_eq!(records.len(), 2);
        assert_eq!(
            records[0].dynamodb.approximate_creation_date_time,
            Some(1_700_000_000)
        );
        assert_eq!(
            records[0].dynamodb.new_image.as_ref().unwrap()["b"],
            crate::record::AttributeValue::B(vec![0, 1])
        );
        assert_eq!(records[1].event_name, EventName::Remove);
        assert_eq!(records[1].event_version, "1.1", "the SDK path's default");
        let identity = records[1].user_identity.as_ref().unwrap();
        assert_eq!(
            (identity.kind.as_str(), identity.principal_id.as_str()),
            ("Service", "dynamodb.amazonaws.com")
        );
    }

    #[tokio::test]
    async fn an_answer_this_model_cannot_read_goes_to_the_sdk_whole() {
        // An attribute type DynamoDB does not have (yet).
        let page = r#"{"NextShardIterator":"n","Records":[{"dynamodb":{"Keys":{"pk":{"X":"?"}},"SequenceNumber":"1"},"eventName":"INSERT"}]}"#;
        let (for_sdk, captured) = read_through(page).await;
        assert_eq!(for_sdk, page);
        assert!(captured.is_none());
        let (for_sdk, captured) = read_through("not json").await;
        assert_eq!(for_sdk, "not json");
        assert!(captured.is_none());
    }
}

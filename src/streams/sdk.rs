//! [`StreamsApi`] over the AWS SDK's DynamoDB Streams client.
//!
//! A thin translation: one SDK call per method, no retries (see
//! [`crate::aws`]). GetRecords answers are parsed straight into
//! [`StreamRecord`] ([`super::wire`]); an answer that model cannot read is
//! left to the SDK, and its records are converted by moving their parts out
//! of the SDK's types.

use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_dynamodbstreams as ddbs;
use aws_sdk_dynamodbstreams::error::ProvideErrorMetadata;
use aws_sdk_dynamodbstreams::types::{
    AttributeValue as SdkValue, OperationType, ShardFilter, ShardFilterType, ShardIteratorType,
};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;

use super::wire::{capture_records, RecordsCapture};
use super::{
    IteratorPosition, RecordsPage, ShardInfo, StreamPage, StreamStatus, StreamSummary, StreamsApi,
    StreamsError, MAX_RECORDS_PER_READ,
};
use crate::aws::{classify, FailureKind};
use crate::record::{
    AttributeValue, ChangeData, EventName, Item, SequenceNumber, StreamRecord, UserIdentity,
};

/// DynamoDB Streams through the AWS SDK for Rust.
#[derive(Debug, Clone)]
pub struct SdkStreams {
    client: ddbs::Client,
    /// Whether GetRecords answers are parsed straight into the record model
    /// ([`super::wire`]) rather than through the SDK's.
    parse_records: bool,
}

impl SdkStreams {
    /// Wraps a client built from [`crate::aws::load_sdk_config`].
    pub fn new(client: ddbs::Client) -> Self {
        let config = client.config().to_builder().interceptor(RecordsCapture);
        SdkStreams {
            client: ddbs::Client::from_conf(config.build()),
            parse_records: true,
        }
    }

    /// Leaves GetRecords answers to the SDK's parser and converts its model,
    /// the way every answer was read before [`super::wire`]: for comparing
    /// the two.
    pub fn with_sdk_parsing(mut self) -> Self {
        self.parse_records = false;
        self
    }

    /// Builds the client from a shared SDK configuration.
    pub fn from_conf(config: &aws_config::SdkConfig) -> Self {
        SdkStreams::new(ddbs::Client::new(config))
    }
}

fn to_streams_error<E>(operation: &'static str, err: SdkError<E, HttpResponse>) -> StreamsError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let failure = classify(&err);
    match failure.code.as_deref() {
        Some("ExpiredIteratorException") => StreamsError::ExpiredIterator(failure.message),
        Some("TrimmedDataAccessException") => StreamsError::TrimmedData(failure.message),
        Some("ResourceNotFoundException") => StreamsError::NotFound(failure.message),
        _ => match failure.kind {
            FailureKind::Rejected => StreamsError::Rejected {
                operation,
                message: failure.message,
            },
            kind => StreamsError::Transient {
                operation,
                kind,
                message: failure.message,
            },
        },
    }
}

#[async_trait]
impl StreamsApi for SdkStreams {
    async fn list_streams(&self, table_name: &str) -> Result<Vec<StreamSummary>, StreamsError> {
        let mut streams = Vec::new();
        let mut start: Option<String> = None;
        loop {
            let answer = self
                .client
                .list_streams()
                .table_name(table_name)
                .set_exclusive_start_stream_arn(start.clone())
                .send()
                .await
                .map_err(|e| to_streams_error("ListStreams", e))?;
            for stream in answer.streams.unwrap_or_default() {
                if let Some(stream_arn) = stream.stream_arn {
                    streams.push(StreamSummary {
                        stream_arn,
                        table_name: stream.table_name.unwrap_or_else(|| table_name.to_owned()),
                        stream_label: stream.stream_label.unwrap_or_default(),
                    });
                }
            }
            match answer.last_evaluated_stream_arn {
                Some(next) if Some(&next) != start.as_ref() => start = Some(next),
                _ => return Ok(streams),
            }
        }
    }

    async fn describe_stream(
        &self,
        stream_arn: &str,
        exclusive_start_shard_id: Option<&str>,
        children_of: Option<&str>,
    ) -> Result<StreamPage, StreamsError> {
        let filter = children_of.map(|shard| {
            ShardFilter::builder()
                .r#type(ShardFilterType::ChildShards)
                .shard_id(shard)
                .build()
        });
        let answer = self
            .client
            .describe_stream()
            .stream_arn(stream_arn)
            .set_exclusive_start_shard_id(exclusive_start_shard_id.map(str::to_owned))
            .set_shard_filter(filter)
            .send()
            .await
            .map_err(|e| to_streams_error("DescribeStream", e))?;
        let Some(description) = answer.stream_description else {
            return Err(StreamsError::NotFound(format!(
                "{stream_arn}: no description returned"
            )));
        };
        let status = match description.stream_status {
            Some(ddbs::types::StreamStatus::Enabling) => StreamStatus::Enabling,
            Some(ddbs::types::StreamStatus::Disabling) => StreamStatus::Disabling,
            Some(ddbs::types::StreamStatus::Disabled) => StreamStatus::Disabled,
            _ => StreamStatus::Enabled,
        };
        let shards = description
            .shards
            .unwrap_or_default()
            .into_iter()
            .filter_map(|shard| {
                let (start, end) = match shard.sequence_number_range {
                    Some(range) => (range.starting_sequence_number, range.ending_sequence_number),
                    None => (None, None),
                };
                Some(ShardInfo {
                    shard_id: shard.shard_id?,
                    parent_shard_id: shard.parent_shard_id,
                    starting_sequence_number: start.map(SequenceNumber),
                    ending_sequence_number: end.map(SequenceNumber),
                })
            })
            .collect();
        Ok(StreamPage {
            stream_arn: description
                .stream_arn
                .unwrap_or_else(|| stream_arn.to_owned()),
            status,
            table_name: description.table_name,
            shards,
            last_evaluated_shard_id: description.last_evaluated_shard_id,
        })
    }

    async fn get_shard_iterator(
        &self,
        stream_arn: &str,
        shard_id: &str,
        position: &IteratorPosition,
    ) -> Result<Option<String>, StreamsError> {
        let (kind, sequence) = match position {
            IteratorPosition::TrimHorizon => (ShardIteratorType::TrimHorizon, None),
            IteratorPosition::Latest => (ShardIteratorType::Latest, None),
            IteratorPosition::AfterSequenceNumber(s) => {
                (ShardIteratorType::AfterSequenceNumber, Some(s.0.clone()))
            }
            IteratorPosition::AtSequenceNumber(s) => {
                (ShardIteratorType::AtSequenceNumber, Some(s.0.clone()))
            }
        };
        let answer = self
            .client
            .get_shard_iterator()
            .stream_arn(stream_arn)
            .shard_id(shard_id)
            .shard_iterator_type(kind)
            .set_sequence_number(sequence)
            .send()
            .await
            .map_err(|e| to_streams_error("GetShardIterator", e))?;
        Ok(answer.shard_iterator)
    }

    async fn get_records(
        &self,
        stream_arn: &str,
        iterator: &str,
        limit: u32,
    ) -> Result<RecordsPage, StreamsError> {
        let request = self
            .client
            .get_records()
            .shard_iterator(iterator)
            .limit(limit.clamp(1, MAX_RECORDS_PER_READ) as i32)
            .send();
        let (answer, captured) = if self.parse_records {
            capture_records(request).await
        } else {
            (request.await, None)
        };
        let answer = answer.map_err(|e| to_streams_error("GetRecords", e))?;
        let source: Arc<str> = Arc::from(stream_arn);
        let records = match captured {
            Some(records) => records
                .into_iter()
                .filter_map(|record| record.into_record(&source))
                .collect(),
            None => answer
                .records
                .unwrap_or_default()
                .into_iter()
                .filter_map(|record| convert_record(record, &source))
                .collect(),
        };
        Ok(RecordsPage {
            records,
            next_iterator: answer.next_shard_iterator,
        })
    }
}

/// Moves an SDK record into the Lambda-shaped model. A record without a
/// sequence number cannot be checkpointed and is not a valid stream record, so
/// it is dropped with an error log rather than handed on.
pub fn convert_record(record: ddbs::types::Record, stream_arn: &Arc<str>) -> Option<StreamRecord> {
    let Some(change) = record.dynamodb else {
        tracing::error!(event_id = ?record.event_id, "stream record without its change data");
        return None;
    };
    let Some(sequence_number) = change.sequence_number else {
        tracing::error!(event_id = ?record.event_id, "stream record without a sequence number");
        return None;
    };
    let event_name = match record.event_name {
        Some(OperationType::Insert) => EventName::Insert,
        Some(OperationType::Remove) => EventName::Remove,
        _ => EventName::Modify,
    };
    Some(StreamRecord {
        event_id: record.event_id.unwrap_or_default(),
        event_name,
        event_version: record.event_version.unwrap_or_else(|| "1.1".into()),
        event_source: record.event_source.unwrap_or_else(|| "aws:dynamodb".into()),
        aws_region: record.aws_region.unwrap_or_default(),
        dynamodb: ChangeData {
            approximate_creation_date_time: change.approximate_creation_date_time.map(|t| t.secs()),
            keys: change.keys.map(convert_item).unwrap_or_default(),
            new_image: change.new_image.map(convert_item),
            old_image: change.old_image.map(convert_item),
            sequence_number: SequenceNumber(sequence_number),
            size_bytes: change.size_bytes.unwrap_or_default(),
            stream_view_type: change.stream_view_type.map(|v| v.as_str().to_owned()),
        },
        event_source_arn: Arc::clone(stream_arn),
        user_identity: record.user_identity.map(|identity| UserIdentity {
            kind: identity.r#type.unwrap_or_default(),
            principal_id: identity.principal_id.unwrap_or_default(),
        }),
    })
}

fn convert_item(item: std::collections::HashMap<String, SdkValue>) -> Item {
    item.into_iter()
        .map(|(name, value)| (name, convert_value(value)))
        .collect()
}

/// Converts one SDK attribute value. Unknown future variants become NULL with
/// an error log, since the SDK cannot tell us their content.
pub fn convert_value(value: SdkValue) -> AttributeValue {
    match value {
        SdkValue::S(s) => AttributeValue::S(s),
        SdkValue::N(n) => AttributeValue::N(n),
        SdkValue::B(b) => AttributeValue::B(b.into_inner()),
        SdkValue::Ss(v) => AttributeValue::Ss(v),
        SdkValue::Ns(v) => AttributeValue::Ns(v),
        SdkValue::Bs(v) => AttributeValue::Bs(v.into_iter().map(|b| b.into_inner()).collect()),
        SdkValue::M(m) => AttributeValue::M(convert_item(m)),
        SdkValue::L(l) => AttributeValue::L(l.into_iter().map(convert_value).collect()),
        SdkValue::Null(b) => AttributeValue::Null(b),
        SdkValue::Bool(b) => AttributeValue::Bool(b),
        other => {
            tracing::error!("attribute type unknown to this SDK version; passed on as NULL");
            tracing::debug!(value = ?other, "the unknown attribute value");
            AttributeValue::Null(true)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_smithy_types::Blob;
    use base64::Engine;
    use proptest::prelude::*;
    use serde_json::{json, Value};

    /// What Lambda would show for an SDK value, written independently of
    /// the conversion under test.
    fn lambda_json(value: &SdkValue) -> Value {
        let b64 = |b: &Blob| base64::engine::general_purpose::STANDARD.encode(b.as_ref());
        match value {
            SdkValue::S(s) => json!({"S": s}),
            SdkValue::N(n) => json!({"N": n}),
            SdkValue::B(b) => json!({"B": b64(b)}),
            SdkValue::Ss(v) => json!({"SS": v}),
            SdkValue::Ns(v) => json!({"NS": v}),
            SdkValue::Bs(v) => json!({"BS": v.iter().map(b64).collect::<Vec<_>>()}),
            SdkValue::M(m) => {
                json!({"M": m.iter().map(|(k, v)| (k.clone(), lambda_json(v))).collect::<serde_json::Map<_, _>>()})
            }
            SdkValue::L(l) => json!({"L": l.iter().map(lambda_json).collect::<Vec<_>>()}),
            SdkValue::Null(b) => json!({"NULL": b}),
            SdkValue::Bool(b) => json!({"BOOL": b}),
            _ => Value::Null,
        }
    }

    fn sdk_value() -> impl Strategy<Value = SdkValue> {
        let number = "-?[0-9]{1,38}(\\.[0-9]{1,10})?(E[+-]?[0-9]{1,3})?";
        let leaf = prop_oneof![
            any::<String>().prop_map(SdkValue::S),
            number.prop_map(SdkValue::N),
            proptest::collection::vec(any::<u8>(), 0..64).prop_map(|b| SdkValue::B(Blob::new(b))),
            proptest::collection::vec(any::<String>(), 1..4).prop_map(SdkValue::Ss),
            proptest::collection::vec(number, 1..4).prop_map(SdkValue::Ns),
            proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..8), 1..4)
                .prop_map(|v| SdkValue::Bs(v.into_iter().map(Blob::new).collect())),
            Just(SdkValue::Null(true)),
            any::<bool>().prop_map(SdkValue::Bool),
        ];
        leaf.prop_recursive(6, 64, 5, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..5).prop_map(SdkValue::L),
                proptest::collection::hash_map(any::<String>(), inner, 0..5).prop_map(SdkValue::M),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Any value the SDK can hand us comes out exactly as Lambda shows
        /// it: same types, numbers as their text, binary as base64.
        #[test]
        fn every_sdk_value_converts_to_lambdas_json(value in sdk_value()) {
            let expected = lambda_json(&value);
            let converted = serde_json::to_value(convert_value(value)).unwrap();
            prop_assert_eq!(converted, expected);
        }
    }
}

//! An in-memory DynamoDB Streams, for unit tests of the engine's logic.
//!
//! It behaves like the service where the engine can tell: shards with parents,
//! closing, iterators that resume after a sequence number, pages of at most
//! `limit` records, and scripted failures (throttles, expired iterators,
//! trimmed data) injected per operation. It is not a substitute for the
//! integration tests against DynamoDB Local.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;

use super::{
    IteratorPosition, RecordsPage, ShardInfo, StreamPage, StreamStatus, StreamSummary, StreamsApi,
    StreamsError,
};
use crate::record::{AttributeValue, ChangeData, EventName, Item, SequenceNumber, StreamRecord};

/// The operations failures can be scripted for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// ListStreams.
    ListStreams,
    /// DescribeStream.
    DescribeStream,
    /// GetShardIterator.
    GetShardIterator,
    /// GetRecords.
    GetRecords,
}

#[derive(Debug, Default)]
struct Shard {
    id: String,
    parent: Option<String>,
    records: Vec<StreamRecord>,
    closed: bool,
}

#[derive(Debug)]
struct Stream {
    table: String,
    label: String,
    status: StreamStatus,
    shards: Vec<Shard>,
}

#[derive(Debug, Default)]
struct State {
    streams: BTreeMap<String, Stream>,
    failures: VecDeque<(Operation, StreamsError)>,
    next_sequence: u64,
    calls: BTreeMap<&'static str, u64>,
    page_size: Option<usize>,
}

/// An in-memory stream service; cheap to clone, clones share state.
#[derive(Debug, Clone, Default)]
pub struct MemoryStreams {
    state: Arc<Mutex<State>>,
}

impl MemoryStreams {
    /// An empty service.
    pub fn new() -> Self {
        MemoryStreams::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Creates an enabled stream for `table` with one open shard and returns
    /// the stream's ARN.
    pub fn create_stream(&self, table: &str, first_shard: &str) -> String {
        let mut state = self.lock();
        let label = format!("2026-01-01T00:00:{:02}.000", state.streams.len());
        let arn = format!("arn:aws:dynamodb:us-east-1:000000000000:table/{table}/stream/{label}");
        state.streams.insert(
            arn.clone(),
            Stream {
                table: table.to_owned(),
                label,
                status: StreamStatus::Enabled,
                shards: vec![Shard {
                    id: first_shard.to_owned(),
                    ..Shard::default()
                }],
            },
        );
        arn
    }

    /// Adds an open shard, optionally a child of `parent`.
    pub fn add_shard(&self, stream_arn: &str, shard_id: &str, parent: Option<&str>) {
        let mut state = self.lock();
        let stream = state.streams.get_mut(stream_arn).expect("unknown stream");
        stream.shards.push(Shard {
            id: shard_id.to_owned(),
            parent: parent.map(str::to_owned),
            ..Shard::default()
        });
    }

    /// Closes a shard: it keeps its records but receives no more.
    pub fn close_shard(&self, stream_arn: &str, shard_id: &str) {
        let mut state = self.lock();
        shard_mut(&mut state, stream_arn, shard_id).closed = true;
    }

    /// Appends a change for item `key` to a shard and returns its sequence number.
    pub fn put(
        &self,
        stream_arn: &str,
        shard_id: &str,
        event_name: EventName,
        key: &str,
    ) -> SequenceNumber {
        let mut state = self.lock();
        state.next_sequence += 1;
        let sequence = SequenceNumber(format!("{:021}", state.next_sequence * 100));
        let record = test_record(stream_arn, &sequence, event_name, key);
        let shard = shard_mut(&mut state, stream_arn, shard_id);
        assert!(!shard.closed, "write to a closed shard");
        shard.records.push(record);
        sequence
    }

    /// Creates an enabled stream for `table` with these open shards (no
    /// parents) and returns the stream's ARN.
    pub fn create_stream_with_shards(&self, table: &str, shard_ids: &[&str]) -> String {
        let (first, rest) = shard_ids.split_first().expect("at least one shard");
        let arn = self.create_stream(table, first);
        for shard in rest {
            self.add_shard(&arn, shard, None);
        }
        arn
    }

    /// Appends a prepared record to a shard, stamping it with the next
    /// sequence number and the stream's ARN; returns the sequence number.
    pub fn put_record(
        &self,
        stream_arn: &str,
        shard_id: &str,
        mut record: StreamRecord,
    ) -> SequenceNumber {
        let mut state = self.lock();
        state.next_sequence += 1;
        let sequence = SequenceNumber(format!("{:021}", state.next_sequence * 100));
        record.dynamodb.sequence_number = sequence.clone();
        record.event_source_arn = Arc::from(stream_arn);
        let shard = shard_mut(&mut state, stream_arn, shard_id);
        assert!(!shard.closed, "write to a closed shard");
        shard.records.push(record);
        sequence
    }

    /// The records a shard holds, in order.
    pub fn records(&self, stream_arn: &str, shard_id: &str) -> Vec<StreamRecord> {
        let mut state = self.lock();
        shard_mut(&mut state, stream_arn, shard_id).records.clone()
    }

    /// The stream's label, if the stream exists.
    pub fn stream_label(&self, stream_arn: &str) -> Option<String> {
        self.lock().streams.get(stream_arn).map(|s| s.label.clone())
    }

    /// Sets the stream's status without touching its shards.
    pub fn set_stream_status(&self, stream_arn: &str, status: StreamStatus) {
        let mut state = self.lock();
        state
            .streams
            .get_mut(stream_arn)
            .expect("unknown stream")
            .status = status;
    }

    /// Disables the stream as DynamoDB does: every shard closes and the
    /// status becomes DISABLED.
    pub fn disable_stream(&self, stream_arn: &str) {
        let mut state = self.lock();
        let stream = state.streams.get_mut(stream_arn).expect("unknown stream");
        stream.status = StreamStatus::Disabled;
        for shard in &mut stream.shards {
            shard.closed = true;
        }
    }

    /// Removes a shard from the stream, as DynamoDB does 24 hours after it closed.
    pub fn trim_shard(&self, stream_arn: &str, shard_id: &str) {
        let mut state = self.lock();
        if let Some(stream) = state.streams.get_mut(stream_arn) {
            stream.shards.retain(|s| s.id != shard_id);
        }
    }

    /// Makes the next call of `operation` fail with `error` (queued in order).
    pub fn fail_next(&self, operation: Operation, error: StreamsError) {
        self.lock().failures.push_back((operation, error));
    }

    /// Limits DescribeStream pages to `size` shards, to exercise paging.
    pub fn set_page_size(&self, size: usize) {
        self.lock().page_size = Some(size);
    }

    /// How many times an API (e.g. `"DescribeStream"`) was called.
    pub fn calls(&self, api: &str) -> u64 {
        self.lock().calls.get(api).copied().unwrap_or(0)
    }

    fn begin(&self, operation: Operation, api: &'static str) -> Result<(), StreamsError> {
        let mut state = self.lock();
        *state.calls.entry(api).or_default() += 1;
        if let Some(index) = state.failures.iter().position(|(op, _)| *op == operation) {
            let (_, error) = state.failures.remove(index).expect("index just found");
            return Err(error);
        }
        Ok(())
    }
}

fn shard_mut<'a>(state: &'a mut State, stream_arn: &str, shard_id: &str) -> &'a mut Shard {
    state
        .streams
        .get_mut(stream_arn)
        .and_then(|s| s.shards.iter_mut().find(|shard| shard.id == shard_id))
        .expect("unknown stream or shard")
}

/// A Lambda-shaped record for item `key` (attribute `pk`), as the fake and
/// unit tests use it.
pub fn test_record(
    stream_arn: &str,
    sequence: &SequenceNumber,
    event_name: EventName,
    key: &str,
) -> StreamRecord {
    let mut keys = Item::new();
    keys.insert("pk".into(), AttributeValue::S(key.to_owned()));
    let image = (event_name != EventName::Remove).then(|| {
        let mut image = keys.clone();
        image.insert("seq".into(), AttributeValue::N(sequence.0.clone()));
        image
    });
    StreamRecord {
        event_id: format!("event-{}", sequence.0),
        event_name,
        event_version: "1.1".into(),
        event_source: "aws:dynamodb".into(),
        aws_region: "us-east-1".into(),
        dynamodb: ChangeData {
            approximate_creation_date_time: Some(1_700_000_000),
            keys,
            new_image: image,
            old_image: None,
            sequence_number: sequence.clone(),
            size_bytes: 64,
            stream_view_type: Some("NEW_AND_OLD_IMAGES".into()),
        },
        event_source_arn: Arc::from(stream_arn),
        user_identity: None,
    }
}

fn encode_iterator(stream_arn: &str, shard_id: &str, index: usize) -> String {
    format!("{index}|{shard_id}|{stream_arn}")
}

fn decode_iterator(iterator: &str) -> Option<(usize, &str, &str)> {
    let mut parts = iterator.splitn(3, '|');
    let index = parts.next()?.parse().ok()?;
    Some((index, parts.next()?, parts.next()?))
}

#[async_trait]
impl StreamsApi for MemoryStreams {
    async fn list_streams(&self, table_name: &str) -> Result<Vec<StreamSummary>, StreamsError> {
        self.begin(Operation::ListStreams, "ListStreams")?;
        let state = self.lock();
        Ok(state
            .streams
            .iter()
            .filter(|(_, s)| s.table == table_name)
            .map(|(arn, s)| StreamSummary {
                stream_arn: arn.clone(),
                table_name: s.table.clone(),
                stream_label: s.label.clone(),
            })
            .collect())
    }

    async fn describe_stream(
        &self,
        stream_arn: &str,
        exclusive_start_shard_id: Option<&str>,
        children_of: Option<&str>,
    ) -> Result<StreamPage, StreamsError> {
        self.begin(Operation::DescribeStream, "DescribeStream")?;
        let state = self.lock();
        let stream = state
            .streams
            .get(stream_arn)
            .ok_or_else(|| StreamsError::NotFound(stream_arn.to_owned()))?;
        let start = match exclusive_start_shard_id {
            Some(id) => stream
                .shards
                .iter()
                .position(|s| s.id == id)
                .map_or(0, |i| i + 1),
            None => 0,
        };
        let matching: Vec<&Shard> = stream.shards[start..]
            .iter()
            .filter(|s| children_of.is_none() || s.parent.as_deref() == children_of)
            .collect();
        let page_size = state.page_size.unwrap_or(usize::MAX).max(1);
        let more = matching.len() > page_size;
        let shards: Vec<ShardInfo> = matching
            .into_iter()
            .take(page_size)
            .map(|s| ShardInfo {
                shard_id: s.id.clone(),
                parent_shard_id: s.parent.clone(),
                starting_sequence_number: s.records.first().map(|r| r.sequence_number().clone()),
                ending_sequence_number: s.closed.then(|| {
                    s.records
                        .last()
                        .map(|r| r.sequence_number().clone())
                        .unwrap_or_else(|| SequenceNumber("0".into()))
                }),
            })
            .collect();
        Ok(StreamPage {
            stream_arn: stream_arn.to_owned(),
            status: stream.status,
            table_name: Some(stream.table.clone()),
            last_evaluated_shard_id: if more {
                shards.last().map(|s| s.shard_id.clone())
            } else {
                None
            },
            shards,
        })
    }

    async fn get_shard_iterator(
        &self,
        stream_arn: &str,
        shard_id: &str,
        position: &IteratorPosition,
    ) -> Result<Option<String>, StreamsError> {
        self.begin(Operation::GetShardIterator, "GetShardIterator")?;
        let state = self.lock();
        let shard = state
            .streams
            .get(stream_arn)
            .and_then(|s| s.shards.iter().find(|shard| shard.id == shard_id))
            .ok_or_else(|| StreamsError::NotFound(format!("{stream_arn} {shard_id}")))?;
        let index = match position {
            IteratorPosition::TrimHorizon => 0,
            IteratorPosition::Latest => shard.records.len(),
            IteratorPosition::AfterSequenceNumber(seq) => shard
                .records
                .iter()
                .position(|r| r.sequence_number() > seq)
                .unwrap_or(shard.records.len()),
            IteratorPosition::AtSequenceNumber(seq) => shard
                .records
                .iter()
                .position(|r| r.sequence_number() >= seq)
                .unwrap_or(shard.records.len()),
        };
        Ok(Some(encode_iterator(stream_arn, shard_id, index)))
    }

    async fn get_records(
        &self,
        _stream_arn: &str,
        iterator: &str,
        limit: u32,
    ) -> Result<RecordsPage, StreamsError> {
        self.begin(Operation::GetRecords, "GetRecords")?;
        let (index, shard_id, stream_arn) = decode_iterator(iterator)
            .ok_or_else(|| StreamsError::ExpiredIterator(format!("bad iterator {iterator}")))?;
        let state = self.lock();
        let shard = state
            .streams
            .get(stream_arn)
            .and_then(|s| s.shards.iter().find(|shard| shard.id == shard_id))
            .ok_or_else(|| StreamsError::NotFound(format!("{stream_arn} {shard_id}")))?;
        let end = (index + limit as usize).min(shard.records.len());
        let records = shard.records[index.min(end)..end].to_vec();
        let next_iterator = if shard.closed && end >= shard.records.len() {
            None
        } else {
            Some(encode_iterator(stream_arn, shard_id, end))
        };
        Ok(RecordsPage {
            records,
            next_iterator,
        })
    }
}

//! The path every batch-API target shares: SQS, SNS, EventBridge, Kinesis and
//! Firehose each take a list of entries per call and answer per entry.
//!
//! A target's file only knows its entry, its limits and its call
//! ([`EntryApi`]); this module does the rest, once:
//!
//! - each record becomes one entry, in the configured [`RecordFormat`];
//! - a record larger than the service accepts fails at once, not retryably,
//!   so it goes to the failure destination instead of being retried forever;
//! - entries are packed into requests up to the service's count and byte
//!   limits, requests are sent one after another, in shard order;
//! - an entry the service refused becomes a [`RecordFailure`] for its record
//!   (throttling and the service's own faults retryably, the sender's faults
//!   not), and the engine retries only those records;
//! - per-item order survives partial failures: once a change of an item
//!   failed, the later changes of the same item in the batch are held back
//!   (failed too, retryably, never sent), and for targets that promise order
//!   ([`EntryApi::ordered`]: FIFO queues and topics, Kinesis) a request never
//!   carries two changes of one item, since those services may accept the
//!   later one and refuse the earlier;
//! - a whole request that fails (throttled, a network error, no permission)
//!   fails its records and every record after it, retryably: what earlier
//!   requests delivered stays delivered and is not sent again.

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;

use super::target::book_call;
use super::{Batch, BatchOutcome, Processor, ProcessorError, RecordFailure};
use crate::aws::Failure;
use crate::record::{Item, RecordFormat, StreamRecord};
use crate::telemetry::events::TargetRequest;
use crate::telemetry::metrics::{self, TargetRecordOutcome, TargetRequestOutcome};

/// What one call of a batch API may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most entries per call.
    pub max_entries: usize,
    /// Most bytes per call, counted as [`EntryApi::entry_size`] counts them.
    pub max_request_bytes: usize,
    /// Most bytes of one entry.
    pub max_entry_bytes: usize,
}

/// One record, ready to send.
#[derive(Debug)]
pub struct Entry<'a> {
    /// The record.
    pub record: &'a StreamRecord,
    /// The record in the configured format.
    pub body: Vec<u8>,
}

/// An entry the service refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryFailure {
    /// The entry's position in the request.
    pub position: usize,
    /// The service's error code for it.
    pub code: String,
    /// The service's message for it.
    pub message: String,
    /// `false` when sending the same entry again cannot succeed (the
    /// sender's fault: invalid content).
    pub retryable: bool,
}

impl EntryFailure {
    /// A failure reported by entry id (SQS's and SNS's `Failed` list, whose
    /// ids are the entries' positions), or `None` for an id that is not one.
    pub fn by_id(id: &str, code: &str, message: Option<&str>, sender_fault: bool) -> Option<Self> {
        Some(EntryFailure {
            position: id.parse().ok()?,
            code: code.to_owned(),
            message: message.unwrap_or_default().to_owned(),
            retryable: !sender_fault,
        })
    }

    /// A failure reported in place (the answer's entries stand in the
    /// request's order), or `None` for an entry without an error code.
    pub fn in_place(
        position: usize,
        code: Option<&str>,
        message: Option<&str>,
        retryable: impl Fn(&str) -> bool,
    ) -> Option<Self> {
        let code = code?;
        Some(EntryFailure {
            position,
            code: code.to_owned(),
            message: message.unwrap_or_default().to_owned(),
            retryable: retryable(code),
        })
    }
}

/// A service's batch call, its entry and its limits.
#[async_trait]
pub trait EntryApi: Send + Sync + 'static {
    /// The target's name in logs and metrics (`sqs`, `kinesis`, ...).
    fn target(&self) -> &'static str;

    /// What one call may carry.
    fn limits(&self) -> Limits;

    /// Whether the service keeps the order of one item's changes (FIFO
    /// queues and topics, Kinesis): then a request carries at most one
    /// change per item.
    fn ordered(&self) -> bool;

    /// The bytes the service counts for an entry: its body plus whatever
    /// else it sends (attributes, the partition key).
    fn entry_size(&self, entry: &Entry<'_>) -> usize {
        entry.body.len()
    }

    /// Sends one request; `Ok` lists the entries the service refused. The
    /// call may take the entries' bodies (they are not sent again).
    async fn send(
        &self,
        batch: &Batch,
        entries: &mut [Entry<'_>],
    ) -> Result<Vec<EntryFailure>, Failure>;
}

/// A processor sending each record as one entry of a batch API.
pub struct EntryTarget<A> {
    api: A,
    format: RecordFormat,
    /// Where the records go, for messages (`sqs://...`).
    shown: Arc<str>,
}

impl<A: EntryApi> std::fmt::Debug for EntryTarget<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntryTarget")
            .field("target", &self.shown)
            .field("format", &self.format)
            .finish()
    }
}

impl<A: EntryApi> EntryTarget<A> {
    /// A processor over `api`, writing records in `format`; `shown` names
    /// the target in error messages.
    pub fn new(api: A, format: RecordFormat, shown: impl Into<Arc<str>>) -> Self {
        metrics::target_seen(api.target());
        EntryTarget {
            api,
            format,
            shown: shown.into(),
        }
    }

    /// Fails a record larger than one entry may be, for good: it goes to the
    /// failure destination. Its item is not held back, since its later
    /// changes are still worth delivering.
    fn reject_oversized<'a>(
        &self,
        undelivered: &mut Undelivered<'a>,
        record: &'a StreamRecord,
        size: usize,
    ) {
        metrics::target_records(self.api.target(), TargetRecordOutcome::Rejected, 1);
        undelivered.failures.push(RecordFailure {
            sequence_number: record.sequence_number().clone(),
            error: ProcessorError::fatal(format!(
                "{}: record {} is {size} bytes, more than the {} bytes one entry may hold; it is \
                 not retried",
                self.shown,
                record.sequence_number(),
                self.api.limits().max_entry_bytes
            )),
        });
    }

    /// Sends one request and records what it did not deliver.
    async fn deliver<'a>(
        &self,
        batch: &Batch,
        mut request: Vec<Entry<'a>>,
        undelivered: &mut Undelivered<'a>,
    ) {
        match self.send_request(batch, &mut request).await {
            Ok(failures) => {
                for failure in failures {
                    let Some(sent) = request.get(failure.position) else {
                        continue;
                    };
                    let message = format!(
                        "{}: {} refused record {}: {}: {}",
                        self.shown,
                        self.api.target(),
                        sent.record.sequence_number(),
                        failure.code,
                        failure.message
                    );
                    let error = if failure.retryable {
                        ProcessorError::retryable(message)
                    } else {
                        ProcessorError::fatal(message)
                    };
                    undelivered.fail(sent.record, error);
                }
            }
            Err(error) => {
                for sent in &request {
                    undelivered.fail(sent.record, error.clone());
                }
                undelivered.stopped = Some(error);
            }
        }
    }

    /// Sends one request and books its outcome.
    async fn send_request(
        &self,
        batch: &Batch,
        request: &mut [Entry<'_>],
    ) -> Result<Vec<EntryFailure>, ProcessorError> {
        let target = self.api.target();
        let started = tokio::time::Instant::now();
        let answer = self.api.send(batch, request).await;
        let took = started.elapsed();
        match answer {
            Ok(failures) => {
                let throttled = failures
                    .iter()
                    .filter(|f| crate::aws::is_throttling_code(&f.code))
                    .count();
                // Refused for good (the sender's fault): these go to the
                // failure destination at once, as oversized records do.
                let rejected = failures.iter().filter(|f| !f.retryable).count();
                let outcome = if failures.is_empty() {
                    TargetRequestOutcome::Ok
                } else {
                    TargetRequestOutcome::Partial
                };
                TargetRequest {
                    target,
                    outcome,
                    took,
                    delivered: request.len() - failures.len(),
                    throttled,
                    failed: failures.len().saturating_sub(throttled + rejected),
                    rejected,
                }
                .emit();
                Ok(failures)
            }
            // Retryable even when the service rejected the call as such (no
            // permission, no such queue): an operator can fix that, and the
            // retry policy decides how long to wait for it.
            Err(failure) => book_call(
                target,
                &format!(
                    "{}: a request of {} record(s) failed",
                    self.shown,
                    request.len()
                ),
                request.len(),
                took,
                Err(failure),
            ),
        }
    }
}

/// The records of a batch as the requests that carry them.
struct Packer<'a> {
    limits: Limits,
    ordered: bool,
    request: Vec<Entry<'a>>,
    request_bytes: usize,
    request_keys: HashSet<&'a Item>,
}

impl<'a> Packer<'a> {
    /// Whether `entry` of `size` bytes must start a new request.
    fn must_flush_before(&self, entry: &Entry<'a>, size: usize) -> bool {
        !self.request.is_empty()
            && (self.request.len() >= self.limits.max_entries
                || self.request_bytes + size > self.limits.max_request_bytes
                || self.ordered && self.request_keys.contains(&entry.record.dynamodb.keys))
    }

    fn push(&mut self, entry: Entry<'a>, size: usize) {
        if self.ordered {
            self.request_keys.insert(&entry.record.dynamodb.keys);
        }
        self.request_bytes += size;
        self.request.push(entry);
    }

    fn take(&mut self) -> Vec<Entry<'a>> {
        self.request_bytes = 0;
        self.request_keys.clear();
        std::mem::take(&mut self.request)
    }
}

/// Why records were not delivered, as the batch is walked.
#[derive(Default)]
struct Undelivered<'a> {
    failures: Vec<RecordFailure>,
    /// Items with a change that was not delivered: their later changes wait.
    blocked: HashSet<&'a Item>,
    /// Set once a whole request failed: everything after it fails too.
    stopped: Option<ProcessorError>,
}

impl<'a> Undelivered<'a> {
    fn fail(&mut self, record: &'a StreamRecord, error: ProcessorError) {
        self.blocked.insert(&record.dynamodb.keys);
        self.failures.push(RecordFailure {
            sequence_number: record.sequence_number().clone(),
            error,
        });
    }

    /// Fails `record` without sending it, if an earlier failure says so.
    fn holds_back(&mut self, record: &'a StreamRecord) -> bool {
        if let Some(error) = &self.stopped {
            let error = ProcessorError::retryable(format!(
                "not sent: an earlier request of the batch failed ({error})"
            ));
            self.fail(record, error);
            return true;
        }
        if self.blocked.contains(&record.dynamodb.keys) {
            self.fail(
                record,
                ProcessorError::retryable(
                    "not sent: an earlier change of the same item failed, and its changes stay in order",
                ),
            );
            return true;
        }
        false
    }
}

#[async_trait]
impl<A: EntryApi> Processor for EntryTarget<A> {
    fn name(&self) -> &str {
        self.api.target()
    }

    async fn process(&self, batch: &Batch) -> Result<BatchOutcome, ProcessorError> {
        let limits = self.api.limits();
        let mut packer = Packer {
            limits,
            ordered: self.api.ordered(),
            request: Vec::with_capacity(limits.max_entries.min(batch.len())),
            request_bytes: 0,
            request_keys: HashSet::new(),
        };
        let mut undelivered = Undelivered::default();
        let mut records = batch.records.iter().map(Arc::as_ref);
        // An entry that did not fit the request just sent.
        let mut waiting: Option<(Entry<'_>, usize)> = None;
        loop {
            let next = match waiting.take() {
                Some(pending) => Some(pending),
                None => match records.next() {
                    None => None,
                    Some(record) if undelivered.holds_back(record) => continue,
                    Some(record) => {
                        let entry = Entry {
                            record,
                            body: self.format.to_vec(record),
                        };
                        let size = self.api.entry_size(&entry);
                        if size > limits.max_entry_bytes {
                            self.reject_oversized(&mut undelivered, record, size);
                            continue;
                        }
                        Some((entry, size))
                    }
                },
            };
            let last = match next {
                Some((entry, size)) if !packer.must_flush_before(&entry, size) => {
                    packer.push(entry, size);
                    continue;
                }
                Some(pending) => {
                    waiting = Some(pending);
                    false
                }
                None if packer.request.is_empty() => break,
                None => true,
            };
            self.deliver(batch, packer.take(), &mut undelivered).await;
            // The answer may hold back the item of the entry that waits.
            if waiting
                .as_ref()
                .is_some_and(|(entry, _)| undelivered.holds_back(entry.record))
            {
                waiting = None;
            }
            if last {
                break;
            }
        }
        if undelivered.failures.is_empty() {
            return Ok(BatchOutcome::Success);
        }
        // Failures were found request by request; the engine wants them in
        // batch order.
        let positions: std::collections::HashMap<&str, usize> = batch
            .records
            .iter()
            .enumerate()
            .map(|(i, r)| (r.sequence_number().as_str(), i))
            .collect();
        undelivered.failures.sort_by_key(|failure| {
            positions
                .get(failure.sequence_number.as_str())
                .copied()
                .unwrap_or(usize::MAX)
        });
        Ok(BatchOutcome::RecordsFailed(undelivered.failures))
    }
}

/// The item key of a record as one short, stable text: the table and the
/// key's values, or, when that is longer than `max` or uses characters
/// outside `allowed`, the table and a SHA-256 of them. Used where a service
/// groups by a key (SQS and SNS FIFO `MessageGroupId`, Kinesis
/// `PartitionKey`): one item's changes always get the same text, on every
/// worker and every version.
pub fn item_group(record: &StreamRecord, max: usize, allowed: impl Fn(char) -> bool) -> String {
    use crate::record::AttributeValue;
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    let table = crate::record::table_name(&record.event_source_arn);
    let mut text = String::with_capacity(table.len() + 32);
    text.push_str(table);
    for value in record.dynamodb.keys.values() {
        text.push('/');
        match value {
            AttributeValue::S(s) | AttributeValue::N(s) => text.push_str(s),
            AttributeValue::B(bytes) => text.push_str(&STANDARD.encode(bytes)),
            other => text.push_str(&serde_json::to_string(other).unwrap_or_default()),
        }
    }
    if text.len() <= max && text.chars().all(&allowed) {
        return text;
    }
    use sha2::Digest;
    let digest = sha2::Sha256::digest(text.as_bytes());
    // 128 bits of the digest: collisions only merge two items' ordering.
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    let table: String = table.chars().filter(|c| allowed(*c)).collect();
    let keep = max.saturating_sub(hex.len() + 1);
    format!("{}/{hex}", &table[..table.len().min(keep)])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{AttributeValue, EventName};
    use crate::streams::memory::test_record;
    use std::sync::Mutex;

    /// A scripted batch API: remembers every request and refuses what the
    /// script says.
    struct Scripted {
        limits: Limits,
        ordered: bool,
        /// Called with (request number, entry bodies) → failures or an error.
        #[allow(clippy::type_complexity)]
        answer: Box<dyn Fn(usize, &[String]) -> Result<Vec<EntryFailure>, Failure> + Send + Sync>,
        requests: Mutex<Vec<Vec<String>>>,
    }

    #[async_trait]
    impl EntryApi for Arc<Scripted> {
        fn target(&self) -> &'static str {
            "scripted"
        }
        fn limits(&self) -> Limits {
            self.limits
        }
        fn ordered(&self) -> bool {
            self.ordered
        }
        async fn send(
            &self,
            _: &Batch,
            entries: &mut [Entry<'_>],
        ) -> Result<Vec<EntryFailure>, Failure> {
            let sequences: Vec<String> = entries
                .iter()
                .map(|e| e.record.sequence_number().to_string())
                .collect();
            let mut requests = self.requests.lock().unwrap();
            requests.push(sequences.clone());
            (self.answer)(requests.len(), &sequences)
        }
    }

    fn scripted(
        limits: Limits,
        ordered: bool,
        answer: impl Fn(usize, &[String]) -> Result<Vec<EntryFailure>, Failure> + Send + Sync + 'static,
    ) -> Arc<Scripted> {
        Arc::new(Scripted {
            limits,
            ordered,
            answer: Box::new(answer),
            requests: Mutex::new(Vec::new()),
        })
    }

    const ROOMY: Limits = Limits {
        max_entries: 10,
        max_request_bytes: 1 << 20,
        max_entry_bytes: 1 << 20,
    };

    /// Records 1..=n; record i changes item `keys[i-1]`.
    fn batch(keys: &[&str]) -> Batch {
        let records = keys
            .iter()
            .enumerate()
            .map(|(i, key)| {
                let mut record = test_record(
                    "arn:aws:dynamodb:us-east-1:1:table/orders/stream/x",
                    &format!("{}", i + 1).as_str().into(),
                    EventName::Modify,
                    "v",
                );
                record.dynamodb.keys = [("pk".to_owned(), AttributeValue::S((*key).into()))]
                    .into_iter()
                    .collect();
                Arc::new(record)
            })
            .collect();
        Batch {
            stream_arn: "arn:s".into(),
            shard_id: "shard-1".into(),
            records,
        }
    }

    fn refuse(position: usize, code: &str, retryable: bool) -> EntryFailure {
        EntryFailure {
            position,
            code: code.into(),
            message: "no".into(),
            retryable,
        }
    }

    fn failed(outcome: BatchOutcome) -> Vec<(String, bool)> {
        match outcome {
            BatchOutcome::RecordsFailed(failures) => failures
                .into_iter()
                .map(|f| (f.sequence_number.to_string(), f.error.retryable))
                .collect(),
            other => panic!("expected failed records, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn requests_respect_the_count_limit_and_keep_shard_order() {
        let api = scripted(
            Limits {
                max_entries: 2,
                ..ROOMY
            },
            false,
            |_, _| Ok(vec![]),
        );
        let target = EntryTarget::new(Arc::clone(&api), RecordFormat::Lambda, "t");
        let outcome = target
            .process(&batch(&["a", "b", "c", "d", "e"]))
            .await
            .unwrap();
        assert_eq!(outcome, BatchOutcome::Success);
        assert_eq!(
            *api.requests.lock().unwrap(),
            vec![vec!["1", "2"], vec!["3", "4"], vec!["5"]]
        );
    }

    #[tokio::test]
    async fn requests_respect_the_byte_limit() {
        let one = RecordFormat::Lambda.to_vec(&batch(&["a"]).records[0]).len();
        let limits = Limits {
            max_request_bytes: one * 2 + 1,
            ..ROOMY
        };
        let api = scripted(limits, false, |_, _| Ok(vec![]));
        let target = EntryTarget::new(Arc::clone(&api), RecordFormat::Lambda, "t");
        target.process(&batch(&["a", "b", "c"])).await.unwrap();
        assert_eq!(
            *api.requests.lock().unwrap(),
            vec![vec!["1", "2"], vec!["3"]]
        );
    }

    #[tokio::test]
    async fn only_refused_entries_fail_and_the_rest_count_as_delivered() {
        let api = scripted(ROOMY, false, |_, _| {
            Ok(vec![refuse(1, "InternalError", true)])
        });
        let target = EntryTarget::new(Arc::clone(&api), RecordFormat::Lambda, "t");
        let outcome = target.process(&batch(&["a", "b", "c"])).await.unwrap();
        assert_eq!(failed(outcome), vec![("2".into(), true)]);
    }

    #[tokio::test]
    async fn a_sender_fault_is_not_retryable() {
        let api = scripted(ROOMY, false, |_, _| {
            Ok(vec![refuse(0, "InvalidMessageContents", false)])
        });
        let target = EntryTarget::new(Arc::clone(&api), RecordFormat::Lambda, "t");
        let outcome = target.process(&batch(&["a", "b"])).await.unwrap();
        assert_eq!(failed(outcome), vec![("1".into(), false)]);
    }

    #[tokio::test]
    async fn a_record_over_the_entry_limit_fails_at_once_and_is_never_sent() {
        let limits = Limits {
            max_entry_bytes: 100,
            ..ROOMY
        };
        let api = scripted(limits, false, |_, _| Ok(vec![]));
        let target = EntryTarget::new(Arc::clone(&api), RecordFormat::Lambda, "t");
        let outcome = target.process(&batch(&["a", "b"])).await.unwrap();
        assert_eq!(
            failed(outcome),
            vec![("1".into(), false), ("2".into(), false)]
        );
        assert!(api.requests.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn later_changes_of_a_refused_item_are_held_back() {
        // Record 2 (item a) is refused in the first request; record 4 (item
        // a again) must not be sent after it, record 5 (item c) must.
        let limits = Limits {
            max_entries: 3,
            ..ROOMY
        };
        let api = scripted(limits, false, |n, _| {
            Ok(if n == 1 {
                vec![refuse(1, "ThrottlingException", true)]
            } else {
                vec![]
            })
        });
        let target = EntryTarget::new(Arc::clone(&api), RecordFormat::Lambda, "t");
        let outcome = target
            .process(&batch(&["b", "a", "x", "a", "c"]))
            .await
            .unwrap();
        assert_eq!(
            failed(outcome),
            vec![("2".into(), true), ("4".into(), true)]
        );
        assert_eq!(
            *api.requests.lock().unwrap(),
            vec![vec!["1", "2", "3"], vec!["5"]]
        );
    }

    #[tokio::test]
    async fn an_ordered_target_never_sends_two_changes_of_an_item_in_one_request() {
        let api = scripted(ROOMY, true, |_, _| Ok(vec![]));
        let target = EntryTarget::new(Arc::clone(&api), RecordFormat::Lambda, "t");
        target
            .process(&batch(&["a", "b", "a", "c", "b", "b"]))
            .await
            .unwrap();
        assert_eq!(
            *api.requests.lock().unwrap(),
            vec![vec!["1", "2"], vec!["3", "4", "5"], vec!["6"]]
        );
    }

    #[tokio::test]
    async fn a_failed_request_fails_it_and_everything_after_but_not_what_was_delivered() {
        let limits = Limits {
            max_entries: 2,
            ..ROOMY
        };
        let api = scripted(limits, false, |n, _| {
            if n == 2 {
                Err(Failure {
                    code: Some("ThrottlingException".into()),
                    message: "slow down".into(),
                    kind: crate::aws::FailureKind::Throttled,
                })
            } else {
                Ok(vec![])
            }
        });
        let target = EntryTarget::new(Arc::clone(&api), RecordFormat::Lambda, "t");
        let outcome = target
            .process(&batch(&["a", "b", "c", "d", "e"]))
            .await
            .unwrap();
        assert_eq!(
            failed(outcome),
            vec![("3".into(), true), ("4".into(), true), ("5".into(), true)]
        );
        assert_eq!(
            api.requests.lock().unwrap().len(),
            2,
            "nothing sent after the failure"
        );
    }

    #[test]
    fn item_groups_are_readable_when_short_and_hashed_when_not() {
        let record = &batch(&["user-1"]).records[0];
        assert_eq!(
            item_group(record, 128, |c| c.is_ascii_graphic()),
            "orders/user-1"
        );
        let hashed = item_group(record, 40, |c| c.is_ascii_alphanumeric() || c == '/');
        assert!(
            hashed.len() <= 40 && hashed.starts_with("orders/"),
            "{hashed}"
        );
        assert_eq!(
            hashed,
            item_group(record, 40, |c| c.is_ascii_alphanumeric() || c == '/')
        );
        let other = &batch(&["user-2"]).records[0];
        assert_ne!(
            hashed,
            item_group(other, 40, |c| c.is_ascii_alphanumeric() || c == '/')
        );
    }
}

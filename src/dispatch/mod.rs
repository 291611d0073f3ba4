//! Dispatch: getting a shard's records through every processor, the way
//! Lambda's event source mapping does, without its silent losses.
//!
//! For each gathered batch of a shard:
//!
//! 1. records that match no filter pattern ([`crate::filter`]) are set aside
//!    (counted, and covered by the checkpoint);
//! 2. the rest are split into up to `parallelization_factor` lanes by a hash
//!    of their item key, so records of one key stay in one lane, in order;
//! 3. each lane hands its records to every processor in chunks of at most
//!    `batch_size` records and `max_bytes` bytes, one chunk at a time; lanes
//!    run concurrently;
//! 4. a failing chunk is retried with exponential backoff and jitter: from
//!    the earliest failed record on when a processor reports partial failures
//!    (Lambda's `batchItemFailures`), only the failed records when a
//!    processor names exactly which failed (a batch API's per-entry answer;
//!    those it refused for good go to the destination at once), split in
//!    halves first when bisecting,
//!    until it succeeds or its attempts or its records' age run out; then its
//!    records go to the on-failure destination ([`destination`]) and the lane
//!    moves on. Without a destination the shard halts instead: records are
//!    never dropped.
//!
//! Only when every lane is done does the caller checkpoint, so the
//! checkpoint never passes a record that has not succeeded or been stored.

pub mod destination;

use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::filter::FilterSet;
use crate::processor::{Batch, BatchOutcome, Processor, ProcessorError};
use crate::record::{SequenceNumber, StreamRecord};
use crate::retry::{retry_unless_any, Attempt, RetryError};
use destination::{FailedBatch, FailureDestination, FailureReason};

use crate::telemetry::events::{RecordsSentToDestination, ShardHalted};
use crate::telemetry::metrics::{self, BatchOutcomeLabel, StreamMetrics};

/// Why a dispatch ended without every record processed or stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Undelivered {
    /// The lease was lost: another worker now owns the shard.
    LeaseLost,
    /// The worker is shutting down; the records will be read again by the next owner.
    ShuttingDown,
    /// Records ran out of retries or age and there is no failure destination:
    /// the shard stops rather than drop them.
    Halted(String),
}

/// How records are batched, retried and given up on.
#[derive(Debug, Clone)]
pub struct DispatchSettings {
    /// Most records per processor call.
    pub batch_size: usize,
    /// Most bytes (by `SizeBytes`) per processor call.
    pub max_bytes: u64,
    /// Lanes per shard: concurrent processor calls for different keys.
    pub parallelization_factor: usize,
    /// Retries after the first attempt; `None` retries forever.
    pub max_retry_attempts: Option<u32>,
    /// Records older than this are not retried further.
    pub max_record_age: Option<Duration>,
    /// Split failing chunks in halves to isolate bad records.
    pub bisect_on_error: bool,
    /// First delay between attempts.
    pub retry_base: Duration,
    /// Longest delay between attempts.
    pub retry_max: Duration,
}

impl Default for DispatchSettings {
    fn default() -> Self {
        DispatchSettings {
            batch_size: 100,
            max_bytes: 6 * 1024 * 1024,
            parallelization_factor: 1,
            max_retry_attempts: None,
            max_record_age: None,
            bisect_on_error: false,
            retry_base: Duration::from_millis(200),
            retry_max: Duration::from_secs(30),
        }
    }
}

/// What a dispatch did with a batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dispatched {
    /// Records every processor succeeded with.
    pub processed: usize,
    /// Records no filter pattern matched.
    pub filtered: usize,
    /// Records sent to the failure destination.
    pub sent_to_destination: usize,
}

/// Hands records to the configured processors.
#[derive(Clone)]
pub struct Dispatcher {
    processors: Vec<Arc<dyn Processor>>,
    settings: DispatchSettings,
    filter: Option<Arc<FilterSet>>,
    destination: Option<Arc<dyn FailureDestination>>,
    /// The named pipeline it works for: the `pipeline` label of its metrics.
    pipeline: Option<Arc<str>>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.processors.iter().map(|p| p.name()).collect();
        f.debug_struct("Dispatcher")
            .field("processors", &names)
            .field("settings", &self.settings)
            .field("destination", &self.destination)
            .field("pipeline", &self.pipeline)
            .finish()
    }
}

/// A chunk in a lane, with the attempts it has used.
struct Chunk {
    records: Vec<Arc<StreamRecord>>,
    failed_attempts: u32,
    last_error: Option<String>,
}

impl Chunk {
    fn new(records: Vec<Arc<StreamRecord>>) -> Self {
        Chunk {
            records,
            failed_attempts: 0,
            last_error: None,
        }
    }
}

/// What one lane of a dispatch works for and listens to.
struct Lane<'a> {
    stream_arn: &'a Arc<str>,
    shard_id: &'a Arc<str>,
    /// The stream's metric label, computed once per lane.
    stream: Arc<StreamMetrics>,
    lease_lost: &'a CancellationToken,
    shutdown: &'a CancellationToken,
}

impl Lane<'_> {
    /// Why the lane stopped waiting: the lease went, or the worker is stopping.
    fn stopped(&self) -> Undelivered {
        if self.lease_lost.is_cancelled() {
            Undelivered::LeaseLost
        } else {
            Undelivered::ShuttingDown
        }
    }
}

/// How a chunk's attempts ended well.
enum Settled {
    /// Every record succeeded (or the named failures were all stored): the
    /// lane's backoff starts again.
    Succeeded,
    /// The chunk's records went to the destination.
    Stored,
}

/// Why an attempt at a chunk did not settle it.
enum Setback {
    /// The processors failed; retried after a backoff delay.
    Failed,
    /// Bisected into two halves, each tried in turn from the front of the lane.
    Bisected(Chunk, Chunk),
    /// Records could not be stored, or the lane had to stop.
    Undelivered(Undelivered),
}

impl Dispatched {
    fn add(&mut self, other: &Dispatched) {
        self.processed += other.processed;
        self.filtered += other.filtered;
        self.sent_to_destination += other.sent_to_destination;
    }
}

impl Dispatcher {
    /// A dispatcher over `processors`, each of which must succeed with a
    /// batch, retrying forever, with no filter and no failure destination.
    pub fn new(processors: Vec<Arc<dyn Processor>>) -> Self {
        Dispatcher {
            processors,
            settings: DispatchSettings::default(),
            filter: None,
            destination: None,
            pipeline: None,
        }
    }

    /// Labels its metrics with the named pipeline it works for.
    pub fn with_pipeline(mut self, name: &str) -> Self {
        self.pipeline = Some(Arc::from(name));
        if let Some(destination) = &self.destination {
            metrics::records_failed_seen(destination.kind(), Some(name));
        }
        self
    }

    /// The stream's metric handles for this dispatcher's pipeline.
    fn stream_metrics(&self, stream_arn: &str) -> Arc<StreamMetrics> {
        StreamMetrics::of_pipeline(stream_arn, self.pipeline.as_deref())
    }

    /// Sets how records are batched, retried and given up on.
    pub fn with_settings(mut self, settings: DispatchSettings) -> Self {
        self.settings = settings;
        self
    }

    /// Processes only records that match `filter`.
    pub fn with_filter(mut self, filter: FilterSet) -> Self {
        self.filter = Some(Arc::new(filter));
        self
    }

    /// Sends records whose retries or age run out to `destination`.
    pub fn with_destination(mut self, destination: Arc<dyn FailureDestination>) -> Self {
        metrics::records_failed_seen(destination.kind(), self.pipeline.as_deref());
        self.destination = Some(destination);
        self
    }

    /// The processors, for lifecycle notifications.
    pub fn processors(&self) -> &[Arc<dyn Processor>] {
        &self.processors
    }

    /// The settings in force.
    pub fn settings(&self) -> &DispatchSettings {
        &self.settings
    }

    /// Processes one gathered batch of a shard. `Ok` means every record was
    /// processed, filtered out or stored in the failure destination: the
    /// caller may checkpoint the batch's last record.
    ///
    /// A processor call in flight is never interrupted; between attempts the
    /// wait ends early if `lease_lost` or `shutdown` fires.
    pub async fn dispatch(
        &self,
        stream_arn: &Arc<str>,
        shard_id: &Arc<str>,
        records: Vec<Arc<StreamRecord>>,
        lease_lost: &CancellationToken,
        shutdown: &CancellationToken,
    ) -> Result<Dispatched, Undelivered> {
        let mut report = Dispatched::default();
        let records: Vec<Arc<StreamRecord>> = match &self.filter {
            Some(filter) => {
                let before = records.len();
                let kept: Vec<_> = records
                    .into_iter()
                    .filter(|record| filter.matches_record(record))
                    .collect();
                report.filtered = before - kept.len();
                if report.filtered > 0 {
                    self.stream_metrics(stream_arn)
                        .filtered(report.filtered as u64);
                }
                kept
            }
            None => records,
        };
        if records.is_empty() {
            return Ok(report);
        }
        let lanes = split_into_lanes(records, self.settings.parallelization_factor);
        let runs = lanes
            .into_iter()
            .map(|lane| self.run_lane(stream_arn, shard_id, lane, lease_lost, shutdown));
        let mut first_error = None;
        for result in futures::future::join_all(runs).await {
            match result {
                Ok(lane) => {
                    report.processed += lane.processed;
                    report.sent_to_destination += lane.sent_to_destination;
                }
                Err(err) => {
                    first_error.get_or_insert(err);
                }
            }
        }
        match first_error {
            Some(err) => Err(err),
            None => Ok(report),
        }
    }

    async fn run_lane(
        &self,
        stream_arn: &Arc<str>,
        shard_id: &Arc<str>,
        records: Vec<Arc<StreamRecord>>,
        lease_lost: &CancellationToken,
        shutdown: &CancellationToken,
    ) -> Result<Dispatched, Undelivered> {
        let lane = Lane {
            stream_arn,
            shard_id,
            stream: self.stream_metrics(stream_arn),
            lease_lost,
            shutdown,
        };
        let mut report = Dispatched::default();
        let mut queue: VecDeque<Chunk> =
            chunks(records, self.settings.batch_size, self.settings.max_bytes)
                .into_iter()
                .map(Chunk::new)
                .collect();
        // One backoff per lane, reset only when a chunk succeeds: a lane
        // whose chunks keep failing keeps slowing down across them.
        let mut backoff = Backoff::new(self.settings.retry_base, self.settings.retry_max);
        while let Some(chunk) = queue.pop_front() {
            let state = tokio::sync::Mutex::new((chunk, Dispatched::default()));
            let settled = retry_unless_any(&mut backoff, &[lease_lost, shutdown], || {
                self.try_chunk(&lane, &state)
            })
            .await;
            report.add(&state.into_inner().1);
            match settled {
                Ok(Settled::Succeeded) => backoff.reset(),
                Ok(Settled::Stored) => {}
                Err(RetryError::Failed(Setback::Bisected(first, second))) => {
                    queue.push_front(second);
                    queue.push_front(first);
                }
                Err(RetryError::Failed(Setback::Undelivered(why))) => return Err(why),
                Err(RetryError::Failed(Setback::Failed)) | Err(RetryError::Cancelled(_)) => {
                    return Err(lane.stopped());
                }
            }
        }
        Ok(report)
    }

    /// One attempt at a chunk, as [`retry_unless_any`] sees it: records too
    /// old to retry are stored first, what succeeds is counted in the
    /// report, what failed for good is stored, and the rest stays in the
    /// chunk to be retried, split in halves or given up on.
    async fn try_chunk(
        &self,
        lane: &Lane<'_>,
        state: &tokio::sync::Mutex<(Chunk, Dispatched)>,
    ) -> Attempt<Settled, Setback> {
        let mut guard = state.lock().await;
        let (chunk, report) = &mut *guard;
        if let Some(too_old) = self.split_off_too_old(chunk) {
            report.sent_to_destination += too_old.records.len();
            if let Err(why) = self
                .give_up(lane, too_old, FailureReason::RecordTooOld)
                .await
            {
                return Attempt::Fail(Setback::Undelivered(why));
            }
            if chunk.records.is_empty() {
                return Attempt::Done(Settled::Stored);
            }
        }
        match self.deliver(lane, chunk, report).await {
            Ok(None) => Attempt::Done(Settled::Succeeded),
            Ok(Some((error, known_failures))) => {
                self.after_failure(lane, chunk, report, error, known_failures)
                    .await
            }
            Err(why) => Attempt::Fail(Setback::Undelivered(why)),
        }
    }

    /// Hands `chunk` to every processor once and accounts for the answer:
    /// the records that succeeded leave the chunk, those refused for good
    /// are stored. `Some` with the error (and whether the processors named
    /// the failed records) when records are left to retry.
    async fn deliver(
        &self,
        lane: &Lane<'_>,
        chunk: &mut Chunk,
        report: &mut Dispatched,
    ) -> Result<Option<(ProcessorError, bool)>, Undelivered> {
        let batch = Batch {
            stream_arn: Arc::clone(lane.stream_arn),
            shard_id: Arc::clone(lane.shard_id),
            records: chunk.records.clone(),
        };
        let stream = &lane.stream;
        match self.attempt(&batch).await {
            Ok(()) => {
                stream.batch(BatchOutcomeLabel::Success);
                stream.processed(&chunk.records);
                report.processed += chunk.records.len();
                Ok(None)
            }
            Err(AttemptError::Partial {
                first_failed,
                error,
            }) => {
                // Lambda's contract: the records before the earliest
                // failure succeeded; retry from it on.
                stream.batch(BatchOutcomeLabel::PartialFailure);
                stream.processed(&chunk.records[..first_failed]);
                report.processed += first_failed;
                chunk.records.drain(..first_failed);
                Ok(Some((error, false)))
            }
            Err(AttemptError::Records(failures)) => {
                stream.batch(BatchOutcomeLabel::PartialFailure);
                let (rejected, retry) = self.sort_out_failures(stream, chunk, failures);
                report.processed += chunk.records.len() - rejected.len() - retry.len();
                if !rejected.is_empty() {
                    let given_up = Chunk {
                        last_error: Some(rejected[0].1.message.clone()),
                        records: rejected.into_iter().map(|(r, _)| r).collect(),
                        failed_attempts: chunk.failed_attempts + 1,
                    };
                    report.sent_to_destination += given_up.records.len();
                    self.give_up(lane, given_up, FailureReason::Rejected)
                        .await?;
                }
                let Some(error) = retry.first().map(|(_, e)| e.clone()) else {
                    return Ok(None);
                };
                chunk.records = retry.into_iter().map(|(r, _)| r).collect();
                Ok(Some((error, true)))
            }
            Err(AttemptError::Whole(error)) => {
                stream.batch(BatchOutcomeLabel::Failure);
                Ok(Some((error, false)))
            }
        }
    }

    /// After a failed attempt: split the chunk in halves (bisecting), store
    /// it (its attempts ran out), or retry it.
    async fn after_failure(
        &self,
        lane: &Lane<'_>,
        chunk: &mut Chunk,
        report: &mut Dispatched,
        error: ProcessorError,
        known_failures: bool,
    ) -> Attempt<Settled, Setback> {
        chunk.last_error = Some(error.message.clone());
        // Bisecting isolates failing records; a processor that named
        // them has done that already.
        if self.settings.bisect_on_error && chunk.records.len() > 1 && !known_failures {
            // Splitting is not a retry: both halves keep the attempts used so far.
            let second = chunk.records.split_off(chunk.records.len() / 2);
            tracing::warn!(
                records = chunk.records.len() + second.len(),
                error = %error.message,
                "batch failed; bisecting it to isolate the failing records"
            );
            let second = Chunk {
                records: second,
                failed_attempts: chunk.failed_attempts,
                last_error: chunk.last_error.clone(),
            };
            let first = std::mem::replace(chunk, Chunk::new(Vec::new()));
            return Attempt::Fail(Setback::Bisected(first, second));
        }
        chunk.failed_attempts += 1;
        let exhausted = self
            .settings
            .max_retry_attempts
            .is_some_and(|max| chunk.failed_attempts > max)
            || !error.retryable && self.destination.is_some();
        if !exhausted {
            tracing::error!(
                attempt = chunk.failed_attempts,
                records = chunk.records.len(),
                first_sequence_number = %first_sequence(&chunk.records),
                retryable = error.retryable,
                error = %error.message,
                "batch failed; the lane waits and retries it"
            );
            return Attempt::Retry(Setback::Failed);
        }
        tracing::error!(
            records = chunk.records.len(),
            attempts = chunk.failed_attempts,
            first_sequence_number = %first_sequence(&chunk.records),
            error = %error.message,
            "batch failed on every allowed attempt"
        );
        report.sent_to_destination += chunk.records.len();
        let given_up = std::mem::replace(chunk, Chunk::new(Vec::new()));
        match self
            .give_up(lane, given_up, FailureReason::RetriesExhausted)
            .await
        {
            Ok(()) => Attempt::Done(Settled::Stored),
            Err(why) => Attempt::Fail(Setback::Undelivered(why)),
        }
    }

    /// Splits a chunk's named failures into the records refused for good and
    /// those to retry, in shard order, and counts the rest as processed.
    #[allow(clippy::type_complexity)]
    fn sort_out_failures(
        &self,
        stream: &StreamMetrics,
        chunk: &mut Chunk,
        failures: Vec<(usize, ProcessorError)>,
    ) -> (
        Vec<(Arc<StreamRecord>, ProcessorError)>,
        Vec<(Arc<StreamRecord>, ProcessorError)>,
    ) {
        let mut failed = vec![None; chunk.records.len()];
        for (index, error) in failures {
            if let Some(slot) = failed.get_mut(index) {
                // A record refused for good by one processor is refused,
                // whatever another said.
                match slot {
                    Some(ProcessorError {
                        retryable: false, ..
                    }) => {}
                    _ => *slot = Some(error),
                }
            }
        }
        let mut delivered = Vec::new();
        let mut rejected = Vec::new();
        let mut retry = Vec::new();
        for (record, failure) in chunk.records.iter().zip(failed) {
            match failure {
                None => delivered.push(Arc::clone(record)),
                Some(error) if error.retryable => retry.push((Arc::clone(record), error)),
                Some(error) => rejected.push((Arc::clone(record), error)),
            }
        }
        stream.processed(&delivered);
        (rejected, retry)
    }

    /// Moves the records older than the age limit out of `chunk`.
    fn split_off_too_old(&self, chunk: &mut Chunk) -> Option<Chunk> {
        let limit = self.settings.max_record_age?;
        let now_secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_secs() as i64;
        let too_old = |record: &Arc<StreamRecord>| {
            record
                .dynamodb
                .approximate_creation_date_time
                .is_some_and(|created| now_secs.saturating_sub(created) > limit.as_secs() as i64)
        };
        if !chunk.records.iter().any(too_old) {
            return None;
        }
        // Records are in shard order, so the old ones come first.
        let cut = chunk
            .records
            .iter()
            .position(|r| !too_old(r))
            .unwrap_or(chunk.records.len());
        let old: Vec<_> = chunk.records.drain(..cut).collect();
        Some(Chunk {
            records: old,
            failed_attempts: chunk.failed_attempts,
            last_error: chunk.last_error.clone(),
        })
    }

    /// Stores records that will not be retried, retrying the destination
    /// itself until it takes them; halts the shard when there is none.
    async fn give_up(
        &self,
        lane: &Lane<'_>,
        chunk: Chunk,
        reason: FailureReason,
    ) -> Result<(), Undelivered> {
        let Some(destination) = &self.destination else {
            let message = format!(
                "{} record(s) from {} failed ({reason:?}) and no DYNASTREAM_ON_FAILURE destination is set: \
                 the shard stops here rather than drop them (last error: {})",
                chunk.records.len(),
                first_sequence(&chunk.records),
                chunk.last_error.as_deref().unwrap_or("none")
            );
            ShardHalted { message: &message }.emit();
            return Err(Undelivered::Halted(message));
        };
        let failed = FailedBatch {
            reason,
            stream_arn: lane.stream_arn.to_string(),
            shard_id: lane.shard_id.to_string(),
            start_sequence_number: first_sequence(&chunk.records),
            end_sequence_number: chunk
                .records
                .last()
                .map(|r| r.sequence_number().to_string())
                .unwrap_or_default(),
            attempts: chunk.failed_attempts,
            last_error: chunk.last_error,
            failed_at_millis: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            record_count: chunk.records.len(),
            part: None,
            records: chunk.records,
        };
        let mut backoff = Backoff::new(self.settings.retry_base, self.settings.retry_max);
        let sent = retry_unless_any(&mut backoff, &[lane.lease_lost, lane.shutdown], || async {
            match destination.send(&failed).await {
                Ok(()) => Attempt::Done(()),
                Err(err) => {
                    tracing::error!(error = %err, "could not write to the failure destination; retrying");
                    Attempt::<(), ()>::Retry(())
                }
            }
        })
        .await;
        if sent.is_err() {
            return Err(lane.stopped());
        }
        RecordsSentToDestination {
            stream: &lane.stream,
            destination: destination.kind(),
            records: failed.record_count,
            start: &failed.start_sequence_number,
            end: &failed.end_sequence_number,
            reason: &reason,
        }
        .emit();
        Ok(())
    }

    /// One attempt: every processor, in order, with the same chunk.
    async fn attempt(&self, batch: &Batch) -> Result<(), AttemptError> {
        let mut first_failed: Option<usize> = None;
        let mut partial_error = None;
        let mut named: Vec<(usize, ProcessorError)> = Vec::new();
        for processor in &self.processors {
            let started = tokio::time::Instant::now();
            let outcome = processor.process(batch).await;
            metrics::processor_duration(processor.name(), started.elapsed());
            match outcome {
                Ok(BatchOutcome::Success) => {}
                Ok(BatchOutcome::PartialFailure(failed)) if failed.is_empty() => {}
                Ok(BatchOutcome::PartialFailure(failed)) => {
                    let Some(index) = earliest_index(&batch.records, &failed) else {
                        return Err(AttemptError::Whole(ProcessorError::retryable(format!(
                            "{} reported failed record(s) that are not in the batch; the whole batch is retried",
                            processor.name()
                        ))));
                    };
                    if first_failed.is_none_or(|current| index < current) {
                        first_failed = Some(index);
                        partial_error = Some(ProcessorError::retryable(format!(
                            "{} reported {} failed record(s), the earliest {}",
                            processor.name(),
                            failed.len(),
                            batch.records[index].sequence_number()
                        )));
                    }
                }
                Ok(BatchOutcome::RecordsFailed(failures)) => {
                    let positions: std::collections::HashMap<&SequenceNumber, usize> = batch
                        .records
                        .iter()
                        .enumerate()
                        .map(|(i, r)| (r.sequence_number(), i))
                        .collect();
                    for failure in failures {
                        let Some(&index) = positions.get(&failure.sequence_number) else {
                            return Err(AttemptError::Whole(ProcessorError::retryable(format!(
                                "{} reported failed record {} that is not in the batch; the whole batch is retried",
                                processor.name(),
                                failure.sequence_number
                            ))));
                        };
                        named.push((index, failure.error));
                    }
                }
                Err(error) => return Err(AttemptError::Whole(error)),
            }
        }
        if !named.is_empty() {
            // Lambda-style failures from another processor fail everything
            // from their earliest record on.
            if let (Some(first), Some(error)) = (first_failed, partial_error) {
                named.extend((first..batch.records.len()).map(|i| (i, error.clone())));
            }
            named.sort_by_key(|(index, _)| *index);
            return Err(AttemptError::Records(named));
        }
        match (first_failed, partial_error) {
            (Some(first_failed), Some(error)) => Err(AttemptError::Partial {
                first_failed,
                error,
            }),
            _ => Ok(()),
        }
    }
}

enum AttemptError {
    /// Lambda's contract: everything from this record on failed.
    Partial {
        first_failed: usize,
        error: ProcessorError,
    },
    /// Exactly these records failed (by position, in order), each with its
    /// error; every other record was delivered.
    Records(Vec<(usize, ProcessorError)>),
    Whole(ProcessorError),
}

/// The position of the earliest reported failure, or `None` if any reported
/// identifier is not a record of the batch.
fn earliest_index(records: &[Arc<StreamRecord>], failed: &[SequenceNumber]) -> Option<usize> {
    let mut earliest = usize::MAX;
    for sequence in failed {
        let index = records
            .iter()
            .position(|r| r.sequence_number() == sequence)?;
        earliest = earliest.min(index);
    }
    Some(earliest)
}

fn first_sequence(records: &[Arc<StreamRecord>]) -> String {
    records
        .first()
        .map(|r| r.sequence_number().to_string())
        .unwrap_or_default()
}

/// The lane of a record: a hash of its item key, so one key always lands
/// in the same lane.
pub fn lane_of(record: &StreamRecord, lanes: usize) -> usize {
    if lanes <= 1 {
        return 0;
    }
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    record.dynamodb.keys.hash(&mut hasher);
    (hasher.finish() % lanes as u64) as usize
}

/// Splits records into lanes by key, keeping shard order within each lane.
pub fn split_into_lanes(
    records: Vec<Arc<StreamRecord>>,
    lanes: usize,
) -> Vec<Vec<Arc<StreamRecord>>> {
    let lanes = lanes.max(1);
    if lanes == 1 {
        return vec![records];
    }
    let mut split: Vec<Vec<Arc<StreamRecord>>> = vec![Vec::new(); lanes];
    for record in records {
        let lane = lane_of(&record, lanes);
        split[lane].push(record);
    }
    split.retain(|lane| !lane.is_empty());
    split
}

/// Cuts a lane into processor calls of at most `batch_size` records and
/// `max_bytes` bytes (a single larger record still gets a call of its own).
pub fn chunks(
    records: Vec<Arc<StreamRecord>>,
    batch_size: usize,
    max_bytes: u64,
) -> Vec<Vec<Arc<StreamRecord>>> {
    let batch_size = batch_size.max(1);
    let mut out = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0u64;
    for record in records {
        let size = record.dynamodb.size_bytes.max(0) as u64;
        if !current.is_empty() && (current.len() >= batch_size || bytes + size > max_bytes) {
            out.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += size;
        current.push(record);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

#[cfg(test)]
mod tests;

//! Unit tests of one shard's loop against the in-memory fakes.
//!
//! Every test runs on paused tokio time: backoffs, poll intervals and
//! timeouts elapse instantly and deterministically. Failures are scripted
//! into [`MemoryStreams`], and a recording processor, whose hook runs inside
//! `process`, acts at an exact point of the loop (inject an expiry, steal the
//! lease, request shutdown, fail).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{ShardConsumer, ShardExit, ShardSettings};
use crate::aws::FailureKind;
use crate::dispatch::Dispatcher;
use crate::lease::held::HeldLease;
use crate::lease::memory::MemoryLeaseStore;
use crate::lease::{Checkpoint, Lease, LeaseError, LeaseScan, LeaseStore};
use crate::processor::{Batch, BatchOutcome, Processor, ProcessorError};
use crate::record::{EventName, SequenceNumber};
use crate::streams::memory::{MemoryStreams, Operation};
use crate::streams::StreamsError;
use crate::test_support::{eventually, lock, Recorder};

const SHARD: &str = "shardId-00000001";
const ME: &str = "worker-a";
/// Long enough that the lease stays valid for a whole test without renewals
/// (a shard consumer alone never renews; the coordinator does).
const LEASE_DURATION: Duration = Duration::from_secs(600);
/// A bound on each run, in paused (virtual) time.
const WAIT: Duration = Duration::from_secs(60);

/// One checkpoint write the consumer attempted, and whether the store took it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Write {
    checkpoint: Checkpoint,
    accepted: bool,
}

/// The in-memory store, recording every checkpoint write made through it.
#[derive(Debug, Clone, Default)]
struct RecordingStore {
    inner: MemoryLeaseStore,
    writes: Arc<Mutex<Vec<Write>>>,
}

#[async_trait]
impl LeaseStore for RecordingStore {
    async fn ensure_table(&self) -> Result<(), LeaseError> {
        self.inner.ensure_table().await
    }
    async fn list_leases(&self) -> Result<LeaseScan, LeaseError> {
        self.inner.list_leases().await
    }
    async fn create_lease_if_absent(&self, lease: &Lease) -> Result<bool, LeaseError> {
        self.inner.create_lease_if_absent(lease).await
    }
    async fn take_lease(&self, lease: &Lease, new_owner: &str) -> Result<Lease, LeaseError> {
        self.inner.take_lease(lease, new_owner).await
    }
    async fn renew_lease(&self, lease: &Lease) -> Result<Lease, LeaseError> {
        self.inner.renew_lease(lease).await
    }
    async fn update_checkpoint(
        &self,
        lease: &Lease,
        checkpoint: &Checkpoint,
    ) -> Result<Lease, LeaseError> {
        let result = self.inner.update_checkpoint(lease, checkpoint).await;
        lock(&self.writes).push(Write {
            checkpoint: checkpoint.clone(),
            accepted: result.is_ok(),
        });
        result
    }
    async fn update_pipeline_checkpoints(
        &self,
        lease: &Lease,
        checkpoint: &Checkpoint,
        pipelines: &std::collections::BTreeMap<String, Checkpoint>,
    ) -> Result<Lease, LeaseError> {
        self.inner
            .update_pipeline_checkpoints(lease, checkpoint, pipelines)
            .await
    }
    async fn remove_pipeline_checkpoints(
        &self,
        lease: &Lease,
        pipelines: &[String],
    ) -> Result<(), LeaseError> {
        self.inner
            .remove_pipeline_checkpoints(lease, pipelines)
            .await
    }
    async fn release_lease(&self, lease: &Lease) -> Result<Lease, LeaseError> {
        self.inner.release_lease(lease).await
    }
    async fn request_handoff(&self, lease: &Lease, requester: &str) -> Result<Lease, LeaseError> {
        self.inner.request_handoff(lease, requester).await
    }
    async fn hand_off_lease(&self, lease: &Lease) -> Result<Lease, LeaseError> {
        self.inner.hand_off_lease(lease).await
    }
    async fn update_snapshot(
        &self,
        lease: &Lease,
        progress: &crate::lease::SnapshotState,
    ) -> Result<Lease, LeaseError> {
        self.inner.update_snapshot(lease, progress).await
    }
    async fn delete_lease(&self, lease: &Lease) -> Result<(), LeaseError> {
        self.inner.delete_lease(lease).await
    }
}

/// The shared recorder, checking that every batch comes from this shard.
fn recorder() -> Arc<Recorder> {
    recording(|_, _| Ok(()))
}

/// The shared recorder with `hook` run inside `process` (0-based attempt
/// index, retries counted).
fn recording(
    hook: impl Fn(usize, &Batch) -> Result<(), ProcessorError> + Send + Sync + 'static,
) -> Arc<Recorder> {
    Recorder::with_hook(move |attempt, batch| {
        assert_eq!(&*batch.shard_id, SHARD);
        hook(attempt, batch)
    })
}

/// A stream with one open shard, and a lease on it held by [`ME`].
struct Fixture {
    streams: MemoryStreams,
    store: RecordingStore,
    arn: String,
    lease: Arc<HeldLease>,
}

impl Fixture {
    async fn new(checkpoint: Checkpoint) -> Fixture {
        Fixture::with_records(0, |_| checkpoint).await.0
    }

    /// A fixture whose shard holds `count` records before the lease is
    /// taken, at a checkpoint chosen from their sequence numbers.
    async fn with_records(
        count: usize,
        checkpoint: impl FnOnce(&[SequenceNumber]) -> Checkpoint,
    ) -> (Fixture, Vec<SequenceNumber>) {
        let streams = MemoryStreams::new();
        let arn = streams.create_stream("orders", SHARD);
        let seqs: Vec<SequenceNumber> = (0..count)
            .map(|i| streams.put(&arn, SHARD, EventName::Insert, &format!("k{i}")))
            .collect();
        let store = RecordingStore::default();
        let lease = Lease::new(&arn, SHARD, None, checkpoint(&seqs));
        assert!(store.create_lease_if_absent(&lease).await.unwrap());
        let taken = store.take_lease(&lease, ME).await.unwrap();
        let lease = Arc::new(HeldLease::new(
            Arc::new(store.clone()),
            taken,
            LEASE_DURATION,
            Instant::now(),
        ));
        let fixture = Fixture {
            streams,
            store,
            arn,
            lease,
        };
        (fixture, seqs)
    }

    fn put(&self, count: usize) -> Vec<SequenceNumber> {
        (0..count)
            .map(|i| {
                self.streams
                    .put(&self.arn, SHARD, EventName::Insert, &format!("k{i}"))
            })
            .collect()
    }

    fn close(&self) {
        self.streams.close_shard(&self.arn, SHARD);
    }

    fn consumer(&self, processor: Arc<Recorder>, batch_size: u32) -> ShardConsumer {
        self.consumer_with(processor, batch_size)
    }

    fn consumer_with(&self, processor: Arc<dyn Processor>, batch_size: u32) -> ShardConsumer {
        self.consumer_settings(
            processor,
            ShardSettings {
                batch_size,
                poll_interval: Duration::from_millis(200),
                batch_window: Duration::ZERO,
                on_trimmed: crate::config::OnTrimmed::Skip,
                ..ShardSettings::default()
            },
        )
    }

    fn consumer_settings(
        &self,
        processor: Arc<dyn Processor>,
        settings: ShardSettings,
    ) -> ShardConsumer {
        ShardConsumer::new(
            &self.arn,
            SHARD,
            Arc::new(self.streams.clone()),
            Arc::clone(&self.lease),
            Arc::new(Dispatcher::new(vec![processor])),
            settings,
        )
    }

    /// The lease as another worker would read it now.
    fn stored(&self) -> Lease {
        self.store.inner.get(SHARD).expect("the lease exists")
    }

    fn writes(&self) -> Vec<Write> {
        lock(&self.store.writes).clone()
    }

    async fn wait_for_checkpoint(&self, expected: &Checkpoint) {
        eventually(
            WAIT,
            || &self.stored().checkpoint == expected,
            || {
                format!(
                    "checkpoint never reached {expected}; it is {}",
                    self.stored().checkpoint
                )
            },
        )
        .await;
    }
}

fn accepted(seq: &SequenceNumber) -> Write {
    Write {
        checkpoint: Checkpoint::Sequence(seq.clone()),
        accepted: true,
    }
}

fn shard_end_accepted() -> Write {
    Write {
        checkpoint: Checkpoint::ShardEnd,
        accepted: true,
    }
}

async fn run_to_exit(consumer: ShardConsumer, shutdown: CancellationToken) -> ShardExit {
    tokio::time::timeout(WAIT, consumer.run(shutdown))
        .await
        .expect("the shard consumer exits")
}

fn throttled(operation: &'static str) -> StreamsError {
    StreamsError::Transient {
        operation,
        kind: FailureKind::Throttled,
        message: "Rate exceeded for shard".into(),
    }
}

#[tokio::test(start_paused = true)]
async fn a_closed_shard_read_to_its_end_is_checkpointed_shard_end() {
    let fixture = Fixture::new(Checkpoint::TrimHorizon).await;
    let seqs = fixture.put(5);
    fixture.close();
    let recorder = recorder();

    let exit = run_to_exit(
        fixture.consumer(recorder.clone(), 2),
        CancellationToken::new(),
    )
    .await;

    assert_eq!(exit, ShardExit::Ended);
    assert_eq!(
        recorder.attempts(),
        vec![
            seqs[0..2].to_vec(),
            seqs[2..4].to_vec(),
            seqs[4..5].to_vec()
        ],
        "pages of at most batch_size records, in shard order"
    );
    assert_eq!(
        fixture.writes(),
        vec![
            accepted(&seqs[1]),
            accepted(&seqs[3]),
            accepted(&seqs[4]),
            shard_end_accepted()
        ]
    );
    let stored = fixture.stored();
    assert_eq!(stored.checkpoint, Checkpoint::ShardEnd);
    assert_eq!(stored.owner.as_deref(), Some(ME));
    assert_eq!(
        recorder.events(),
        vec![format!("started {SHARD}"), format!("ended {SHARD}")]
    );
}

#[tokio::test(start_paused = true)]
async fn a_lease_already_at_shard_end_is_not_read_again() {
    let fixture = Fixture::new(Checkpoint::ShardEnd).await;
    fixture.put(2);
    fixture.close();
    let recorder = recorder();

    let exit = run_to_exit(
        fixture.consumer(recorder.clone(), 10),
        CancellationToken::new(),
    )
    .await;

    assert_eq!(exit, ShardExit::Ended);
    assert!(recorder.delivered().is_empty());
    assert_eq!(fixture.streams.calls("GetShardIterator"), 0);
    assert!(fixture.writes().is_empty());
}

#[tokio::test(start_paused = true)]
async fn an_expired_iterator_resumes_after_the_last_checkpoint() {
    let fixture = Fixture::new(Checkpoint::TrimHorizon).await;
    let seqs = fixture.put(6);
    fixture.close();
    // While the first batch is processed, the iterator for the next read
    // expires: the next GetRecords fails with ExpiredIterator.
    let streams = fixture.streams.clone();
    let recorder = recording(move |attempt, _| {
        if attempt == 0 {
            streams.fail_next(
                Operation::GetRecords,
                StreamsError::ExpiredIterator("Iterator expired".into()),
            );
        }
        Ok(())
    });

    let exit = run_to_exit(
        fixture.consumer(recorder.clone(), 2),
        CancellationToken::new(),
    )
    .await;

    assert_eq!(exit, ShardExit::Ended);
    assert_eq!(
        recorder.delivered(),
        seqs,
        "every record exactly once, in order"
    );
    assert_eq!(
        recorder.attempts(),
        vec![
            seqs[0..2].to_vec(),
            seqs[2..4].to_vec(),
            seqs[4..6].to_vec()
        ]
    );
    assert_eq!(
        fixture.streams.calls("GetShardIterator"),
        2,
        "the iterator was re-acquired once"
    );
    assert_eq!(
        fixture.streams.calls("GetRecords"),
        4,
        "three pages and the expired read"
    );
    assert_eq!(
        fixture.writes(),
        vec![
            accepted(&seqs[1]),
            accepted(&seqs[3]),
            accepted(&seqs[5]),
            shard_end_accepted()
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn an_expired_iterator_resumes_after_a_checkpoint_from_a_previous_owner() {
    // A previous owner checkpointed the second record; the very first read
    // of the new owner finds its iterator expired.
    let (fixture, seqs) =
        Fixture::with_records(4, |seqs| Checkpoint::Sequence(seqs[1].clone())).await;
    fixture.close();
    fixture.streams.fail_next(
        Operation::GetRecords,
        StreamsError::ExpiredIterator("Iterator expired".into()),
    );
    let recorder = recorder();

    let exit = run_to_exit(
        fixture.consumer(recorder.clone(), 10),
        CancellationToken::new(),
    )
    .await;

    assert_eq!(exit, ShardExit::Ended);
    assert_eq!(recorder.delivered(), seqs[2..].to_vec());
    assert_eq!(fixture.streams.calls("GetShardIterator"), 2);
}

#[tokio::test(start_paused = true)]
async fn throttling_is_retried_with_backoff_and_records_are_delivered_once() {
    let fixture = Fixture::new(Checkpoint::TrimHorizon).await;
    let seqs = fixture.put(4);
    fixture.close();
    fixture
        .streams
        .fail_next(Operation::GetShardIterator, throttled("GetShardIterator"));
    fixture
        .streams
        .fail_next(Operation::GetRecords, throttled("GetRecords"));
    fixture
        .streams
        .fail_next(Operation::GetRecords, throttled("GetRecords"));
    let recorder = recorder();
    let started = Instant::now();

    let exit = run_to_exit(
        fixture.consumer(recorder.clone(), 10),
        CancellationToken::new(),
    )
    .await;

    assert_eq!(exit, ShardExit::Ended);
    assert_eq!(recorder.attempts(), vec![seqs.clone()], "delivered once");
    assert_eq!(
        fixture.streams.calls("GetShardIterator"),
        2,
        "a throttled GetRecords keeps its iterator"
    );
    assert_eq!(fixture.streams.calls("GetRecords"), 3);
    // Backoff from 100 ms with equal jitter: 50..=100 ms for the
    // GetShardIterator retry, then (reset after its success) 50..=100 ms and
    // 100..=200 ms for the two GetRecords retries. The timer rounds each
    // deadline up to the next millisecond, hence the margin above 400 ms.
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(200),
        "retried without backing off: {waited:?}"
    );
    assert!(
        waited <= Duration::from_millis(410),
        "backoff was not reset after a success: {waited:?}"
    );
    assert_eq!(
        fixture.writes(),
        vec![accepted(&seqs[3]), shard_end_accepted()]
    );
}

#[tokio::test(start_paused = true)]
async fn a_stolen_lease_stops_the_consumer_and_its_checkpoint_is_refused() {
    let fixture = Fixture::new(Checkpoint::TrimHorizon).await;
    let first = fixture.put(2);
    let recorder = recorder();
    let shutdown = CancellationToken::new();
    let consumer = fixture.consumer(recorder.clone(), 10);
    let task = tokio::spawn(consumer.run(shutdown.clone()));

    fixture
        .wait_for_checkpoint(&Checkpoint::Sequence(first[1].clone()))
        .await;
    let before_theft = fixture.stored();
    let thief = fixture
        .store
        .inner
        .take_lease(&before_theft, "thief")
        .await
        .unwrap();
    let second = fixture.put(2);

    let exit = tokio::time::timeout(WAIT, task)
        .await
        .expect("the consumer exits")
        .unwrap();

    assert_eq!(exit, ShardExit::LeaseLost);
    assert!(fixture.lease.is_lost());
    // At least once: the old owner could not know before its write was refused.
    assert_eq!(recorder.attempts(), vec![first.clone(), second.clone()]);
    assert_eq!(
        fixture.writes(),
        vec![
            accepted(&first[1]),
            Write {
                checkpoint: Checkpoint::Sequence(second[1].clone()),
                accepted: false
            }
        ]
    );
    assert_eq!(
        fixture.stored(),
        thief,
        "the old owner wrote nothing after the theft"
    );
    assert_eq!(
        fixture.stored().checkpoint,
        Checkpoint::Sequence(first[1].clone())
    );
    assert!(!shutdown.is_cancelled());
}

#[tokio::test(start_paused = true)]
async fn shutdown_during_a_batch_finishes_and_checkpoints_it() {
    let fixture = Fixture::new(Checkpoint::TrimHorizon).await;
    let seqs = fixture.put(6);
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    // Shutdown is requested while the second batch is being processed.
    let recorder = recording(move |attempt, _| {
        if attempt == 1 {
            stop.cancel();
        }
        Ok(())
    });

    let exit = run_to_exit(fixture.consumer(recorder.clone(), 2), shutdown).await;

    assert_eq!(exit, ShardExit::Stopped);
    assert_eq!(
        recorder.attempts(),
        vec![seqs[0..2].to_vec(), seqs[2..4].to_vec()],
        "nothing is read after shutdown"
    );
    assert_eq!(
        fixture.writes(),
        vec![accepted(&seqs[1]), accepted(&seqs[3])]
    );
    assert_eq!(
        fixture.stored().checkpoint,
        Checkpoint::Sequence(seqs[3].clone())
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_while_waiting_for_records_keeps_the_last_checkpoint() {
    let fixture = Fixture::new(Checkpoint::TrimHorizon).await;
    let seqs = fixture.put(3);
    let recorder = recorder();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(fixture.consumer(recorder.clone(), 10).run(shutdown.clone()));
    fixture
        .wait_for_checkpoint(&Checkpoint::Sequence(seqs[2].clone()))
        .await;
    // Several empty polls later, shutdown.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let reads = fixture.streams.calls("GetRecords");
    assert!(
        (5..=15).contains(&reads),
        "empty reads wait the poll interval: {reads} reads in 2 s"
    );
    shutdown.cancel();

    let exit = tokio::time::timeout(WAIT, task).await.unwrap().unwrap();

    assert_eq!(exit, ShardExit::Stopped);
    assert_eq!(recorder.attempts(), vec![seqs.clone()]);
    assert_eq!(fixture.writes(), vec![accepted(&seqs[2])]);
    assert_eq!(fixture.stored().owner.as_deref(), Some(ME));
}

#[tokio::test(start_paused = true)]
async fn shutdown_while_a_failing_batch_waits_for_its_retry_does_not_checkpoint_it() {
    let fixture = Fixture::new(Checkpoint::TrimHorizon).await;
    let seqs = fixture.put(2);
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let recorder = recording(move |_, _| {
        stop.cancel();
        Err(ProcessorError::retryable("downstream unavailable"))
    });

    let exit = run_to_exit(fixture.consumer(recorder.clone(), 10), shutdown).await;

    assert_eq!(exit, ShardExit::Stopped);
    assert_eq!(recorder.attempts(), vec![seqs.clone()]);
    assert!(fixture.writes().is_empty(), "{:?}", fixture.writes());
    assert_eq!(fixture.stored().checkpoint, Checkpoint::TrimHorizon);
}

#[tokio::test(start_paused = true)]
async fn a_processor_failing_twice_is_retried_and_checkpointed_once() {
    let fixture = Fixture::new(Checkpoint::TrimHorizon).await;
    let seqs = fixture.put(3);
    let recorder = recording(|attempt, _| {
        if attempt < 2 {
            Err(ProcessorError::retryable(format!("failure {attempt}")))
        } else {
            Ok(())
        }
    });
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(fixture.consumer(recorder.clone(), 10).run(shutdown.clone()));
    fixture
        .wait_for_checkpoint(&Checkpoint::Sequence(seqs[2].clone()))
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    shutdown.cancel();

    let exit = tokio::time::timeout(WAIT, task).await.unwrap().unwrap();

    assert_eq!(exit, ShardExit::Stopped);
    assert_eq!(
        recorder.attempts(),
        vec![seqs.clone(), seqs.clone(), seqs.clone()],
        "three attempts of the same batch"
    );
    assert_eq!(
        fixture.writes(),
        vec![accepted(&seqs[2])],
        "one checkpoint, after the success"
    );
    // The dispatcher's default backoff starts at 200 ms with equal jitter.
    let times: Vec<Instant> = recorder.attempt_log().iter().map(|a| a.at).collect();
    assert!(times[1] - times[0] >= Duration::from_millis(100));
    assert!(times[2] - times[1] >= Duration::from_millis(200));
}

#[tokio::test(start_paused = true)]
async fn a_shard_whose_lease_was_stolen_is_not_reported_ended() {
    let fixture = Fixture::new(Checkpoint::TrimHorizon).await;
    let seqs = fixture.put(2);
    let recorder = recorder();
    let task = tokio::spawn(
        fixture
            .consumer(recorder.clone(), 10)
            .run(CancellationToken::new()),
    );
    fixture
        .wait_for_checkpoint(&Checkpoint::Sequence(seqs[1].clone()))
        .await;
    // While the consumer waits for more records, another worker takes the
    // lease and the shard closes: the next read finds the shard's end.
    let stored = fixture.stored();
    fixture
        .store
        .inner
        .take_lease(&stored, "thief")
        .await
        .unwrap();
    fixture.close();

    let exit = tokio::time::timeout(WAIT, task).await.unwrap().unwrap();

    assert_eq!(
        exit,
        ShardExit::LeaseLost,
        "children must not start on a SHARD_END this worker could not write"
    );
    assert_eq!(
        fixture.writes(),
        vec![
            accepted(&seqs[1]),
            Write {
                checkpoint: Checkpoint::ShardEnd,
                accepted: false
            }
        ]
    );
    assert_eq!(
        fixture.stored().checkpoint,
        Checkpoint::Sequence(seqs[1].clone())
    );
    assert!(!recorder.events().contains(&format!("ended {SHARD}")));
}

#[tokio::test(start_paused = true)]
async fn a_batch_window_gathers_records_from_several_reads_into_one_batch() {
    let fixture = Fixture::new(Checkpoint::TrimHorizon).await;
    let recorder = recorder();
    let consumer = fixture.consumer_settings(
        recorder.clone(),
        ShardSettings {
            batch_size: 100,
            poll_interval: Duration::from_millis(200),
            batch_window: Duration::from_secs(2),
            on_trimmed: crate::config::OnTrimmed::Skip,
            ..ShardSettings::default()
        },
    );
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(consumer.run(shutdown.clone()));
    // Five records, 300 ms apart: each read returns one, and the window
    // (opened by the first) keeps them together.
    let mut written = Vec::new();
    for _ in 0..5 {
        written.extend(fixture.put(1));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    fixture
        .wait_for_checkpoint(&Checkpoint::Sequence(written[4].clone()))
        .await;
    assert_eq!(
        recorder.attempts(),
        vec![written.clone()],
        "one batch of five"
    );
    // After the window closes, a lone record waits at most the window.
    let started = Instant::now();
    let late = fixture.put(1);
    fixture
        .wait_for_checkpoint(&Checkpoint::Sequence(late[0].clone()))
        .await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(2) && waited <= Duration::from_millis(2_400),
        "a lone record is handed over when the window closes: {waited:?}"
    );
    shutdown.cancel();
    assert_eq!(running.await.unwrap(), ShardExit::Stopped);
}

#[tokio::test(start_paused = true)]
async fn with_on_trimmed_stop_a_trimmed_position_halts_the_shard() {
    let (fixture, seqs) =
        Fixture::with_records(3, |seqs| Checkpoint::Sequence(seqs[0].clone())).await;
    fixture.streams.fail_next(
        crate::streams::memory::Operation::GetShardIterator,
        StreamsError::TrimmedData("position is before the trim horizon".into()),
    );
    let recorder = recorder();
    let consumer = ShardConsumer::new(
        &fixture.arn,
        SHARD,
        Arc::new(fixture.streams.clone()),
        Arc::clone(&fixture.lease),
        Arc::new(Dispatcher::new(vec![recorder.clone()])),
        ShardSettings {
            batch_size: 10,
            poll_interval: Duration::from_millis(200),
            batch_window: Duration::ZERO,
            on_trimmed: crate::config::OnTrimmed::Stop,
            ..ShardSettings::default()
        },
    );
    let exit = run_to_exit(consumer, CancellationToken::new()).await;
    assert!(
        matches!(&exit, ShardExit::Halted(reason) if reason.contains("DYNASTREAM_ON_TRIMMED=stop")),
        "{exit:?}"
    );
    assert!(recorder.attempts().is_empty(), "nothing read past the gap");
    assert_eq!(
        fixture.stored().checkpoint,
        Checkpoint::Sequence(seqs[0].clone())
    );
}

/// A processor that takes a second with each batch and notes, per batch, how
/// many checkpoints were written when it began and how many GetRecords calls
/// had been made when it finished.
struct Slow {
    streams: MemoryStreams,
    writes: Arc<Mutex<Vec<Write>>>,
    seen: Mutex<Vec<(usize, u64)>>,
}

#[async_trait]
impl Processor for Slow {
    fn name(&self) -> &str {
        "slow"
    }

    async fn process(&self, _batch: &Batch) -> Result<BatchOutcome, ProcessorError> {
        let checkpoints = lock(&self.writes).len();
        tokio::time::sleep(Duration::from_secs(1)).await;
        lock(&self.seen).push((checkpoints, self.streams.calls("GetRecords")));
        Ok(BatchOutcome::Success)
    }
}

#[tokio::test(start_paused = true)]
async fn the_next_page_is_read_during_a_batch_but_dispatched_only_after_its_checkpoint() {
    let fixture = Fixture::new(Checkpoint::TrimHorizon).await;
    let seqs = fixture.put(6);
    fixture.close();
    let slow = Arc::new(Slow {
        streams: fixture.streams.clone(),
        writes: Arc::clone(&fixture.store.writes),
        seen: Mutex::new(Vec::new()),
    });

    let exit = run_to_exit(
        fixture.consumer_with(slow.clone(), 2),
        CancellationToken::new(),
    )
    .await;

    assert_eq!(exit, ShardExit::Ended);
    assert_eq!(
        lock(&slow.seen).clone(),
        vec![(0, 2), (1, 3), (2, 3)],
        "each batch starts after the previous one's checkpoint, and while it is \
         processed the next page has already been read (the last page of the \
         closed shard has no next page)"
    );
    assert_eq!(
        fixture.writes(),
        vec![
            accepted(&seqs[1]),
            accepted(&seqs[3]),
            accepted(&seqs[5]),
            shard_end_accepted()
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_shard_quiet_for_idle_after_is_polled_slowly_until_records_arrive() {
    let fixture = Fixture::new(Checkpoint::TrimHorizon).await;
    let recorder = recorder();
    let shutdown = CancellationToken::new();
    let settings = ShardSettings::default();
    let consumer = fixture.consumer(recorder.clone(), 10);
    let task = tokio::spawn(consumer.run(shutdown.clone()));
    let calls = || fixture.streams.calls("GetRecords");

    tokio::time::sleep(settings.idle_after).await;
    let while_fresh = calls();
    tokio::time::sleep(Duration::from_secs(20)).await;
    let while_idle = calls() - while_fresh;
    // 200 ms polls for the first 30 s; 2 s polls for the next 20 s.
    assert!(
        (140..=151).contains(&while_fresh),
        "{while_fresh} reads in the first 30 s"
    );
    assert!(
        (9..=11).contains(&while_idle),
        "{while_idle} reads in 20 s of idleness"
    );

    let written_at = Instant::now();
    fixture.put(1);
    while recorder.attempts().is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        written_at.elapsed() <= settings.idle_poll_interval,
        "the first record after the silence waited {:?}",
        written_at.elapsed()
    );
    let before = calls();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        calls() - before >= 9,
        "after records the shard is polled every 200 ms again"
    );
    shutdown.cancel();
    assert_eq!(task.await.unwrap(), ShardExit::Stopped);
}

/// A consumer whose checkpoint writes are paced by `interval`.
fn paced(fixture: &Fixture, processor: Arc<Recorder>, interval: Duration) -> ShardConsumer {
    fixture.consumer_settings(
        processor,
        ShardSettings {
            batch_size: 10,
            poll_interval: Duration::from_millis(200),
            checkpoint_interval: interval,
            ..ShardSettings::default()
        },
    )
}

#[tokio::test(start_paused = true)]
async fn a_checkpoint_interval_writes_a_shard_once_per_interval_even_when_it_goes_quiet() {
    for (interval, expected_writes) in [(Duration::ZERO, 20), (Duration::from_secs(1), 2)] {
        let (fixture, seqs) = Fixture::with_records(200, |_| Checkpoint::TrimHorizon).await;
        let processor = recorder();
        let shutdown = CancellationToken::new();
        let consumer = paced(&fixture, Arc::clone(&processor), interval);
        let started = tokio::time::Instant::now();
        let task = tokio::spawn(run_to_exit(consumer, shutdown.clone()));
        fixture
            .wait_for_checkpoint(&Checkpoint::Sequence(seqs[199].clone()))
            .await;
        let written_after = started.elapsed();
        shutdown.cancel();
        assert_eq!(task.await.unwrap(), ShardExit::Stopped);
        assert_eq!(processor.delivered(), seqs, "every record once, in order");
        let writes = fixture.writes();
        // Twenty batches read back to back in one instant: with the
        // interval, the first written at once (a lease must not stay at
        // LATEST) and the rest once the interval is up, while the shard is
        // quiet rather than at its next record.
        assert_eq!(writes.len(), expected_writes, "{interval:?}: {writes:?}");
        assert_eq!(writes.last(), Some(&accepted(&seqs[199])));
        assert!(
            written_after >= interval && written_after < interval + Duration::from_millis(50),
            "{interval:?}: written after {written_after:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_stopping_consumer_writes_what_it_processed_since_the_last_checkpoint() {
    let (fixture, seqs) = Fixture::with_records(100, |_| Checkpoint::TrimHorizon).await;
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let processor = recording(move |attempt, _| {
        if attempt == 2 {
            stop.cancel();
        }
        Ok(())
    });
    let consumer = paced(&fixture, Arc::clone(&processor), Duration::from_secs(60));
    assert_eq!(run_to_exit(consumer, shutdown).await, ShardExit::Stopped);
    // The first batch was written at once; the third, processed when the
    // shutdown came, on the way out.
    assert_eq!(
        fixture.writes(),
        vec![accepted(&seqs[9]), accepted(&seqs[29])]
    );
    assert_eq!(
        fixture.stored().checkpoint,
        Checkpoint::Sequence(seqs[29].clone())
    );
}

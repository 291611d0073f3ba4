//! Unit tests of the coordinator against the in-memory fakes.
//!
//! Each test runs a whole [`Coordinator`] on paused tokio time over a
//! [`MemoryStreams`] and a [`MemoryLeaseStore`], with a processor that
//! records every batch together with what the lease table said about the
//! batch's parent shards at that moment. Tests poll the store with short
//! virtual sleeps; nothing waits in real time.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Coordinator, CoordinatorSettings};
use crate::aws::FailureKind;
use crate::config::StartingPosition;
use crate::dispatch::Dispatcher;
use crate::error::Error;
use crate::lease::memory::MemoryLeaseStore;
use crate::lease::{Checkpoint, Lease, LeaseError, LeaseScan, LeaseStore};
use crate::processor::{Batch, BatchOutcome, Processor, ProcessorError};
use crate::record::{EventName, SequenceNumber};
use crate::shard::ShardSettings;
use crate::streams::memory::MemoryStreams;
use crate::test_support::{eventually, lock};

const TABLE: &str = "orders";
const ME: &str = "worker-a";
const OTHER: &str = "worker-b";
const PARENT: &str = "shardId-parent";
const CHILD: &str = "shardId-child";
/// A bound on every wait, in paused (virtual) time.
const WAIT: Duration = Duration::from_secs(60);

fn settings(starting_position: StartingPosition) -> CoordinatorSettings {
    CoordinatorSettings {
        worker_id: ME.into(),
        tables: vec![TABLE.into()],
        stream_arns: Vec::new(),
        starting_position,
        lease_duration: Duration::from_secs(6),
        renew_interval: Duration::from_secs(1),
        shard_sync_interval: Duration::from_secs(2),
        stream_refresh_interval: Duration::from_secs(10),
        describe_stream_rps: 10.0,
        shutdown_grace: Duration::from_secs(5),
        max_leases: None,
        table_discovery: None,
        snapshot_found_tables: None,
        table_scan_interval: super::reads::DEFAULT_TABLE_SCAN_INTERVAL,
        shard: ShardSettings {
            batch_size: 2,
            poll_interval: Duration::from_millis(200),
            batch_window: Duration::ZERO,
            on_trimmed: crate::config::OnTrimmed::Skip,
            ..ShardSettings::default()
        },
    }
}

/// One processed batch.
#[derive(Debug, Clone)]
struct Seen {
    shard: String,
    sequence_numbers: Vec<SequenceNumber>,
    /// Each parent of the shard and its checkpoint in the store at the moment
    /// the batch was processed (`None`: the parent had no lease).
    parents: Vec<(String, Option<Checkpoint>)>,
}

/// Records batches and lifecycle calls, in the order they happen.
struct Recorder {
    store: MemoryLeaseStore,
    batches: Mutex<Vec<Seen>>,
    events: Mutex<Vec<String>>,
}

impl Recorder {
    fn new(store: &MemoryLeaseStore) -> Arc<Self> {
        Arc::new(Recorder {
            store: store.clone(),
            batches: Mutex::new(Vec::new()),
            events: Mutex::new(Vec::new()),
        })
    }

    fn batches(&self) -> Vec<Seen> {
        lock(&self.batches).clone()
    }

    /// Every record processed, in processing order.
    fn processed(&self) -> Vec<SequenceNumber> {
        self.batches()
            .into_iter()
            .flat_map(|b| b.sequence_numbers)
            .collect()
    }

    fn events(&self) -> Vec<String> {
        lock(&self.events).clone()
    }
}

#[async_trait]
impl Processor for Recorder {
    fn name(&self) -> &str {
        "recorder"
    }

    async fn process(&self, batch: &Batch) -> Result<BatchOutcome, ProcessorError> {
        let lease = self
            .store
            .get(&batch.shard_id)
            .expect("a batch is processed under a lease");
        let parents = lease
            .parent_shard_ids
            .iter()
            .map(|parent| {
                let checkpoint = self.store.get(parent).map(|l| l.checkpoint);
                (parent.clone(), checkpoint)
            })
            .collect();
        lock(&self.batches).push(Seen {
            shard: batch.shard_id.to_string(),
            sequence_numbers: batch
                .records
                .iter()
                .map(|r| r.sequence_number().clone())
                .collect(),
            parents,
        });
        Ok(BatchOutcome::Success)
    }

    fn shard_started(&self, _stream_arn: &str, shard_id: &str) {
        lock(&self.events).push(format!("started {shard_id}"));
    }

    fn lease_lost(&self, _stream_arn: &str, shard_id: &str) {
        lock(&self.events).push(format!("lease lost {shard_id}"));
    }

    fn shard_ended(&self, _stream_arn: &str, shard_id: &str) {
        lock(&self.events).push(format!("ended {shard_id}"));
    }
}

/// The in-memory store, except that creating the leases named in `refused`
/// fails as if the lease table were unavailable.
#[derive(Debug, Clone, Default)]
struct GatedStore {
    inner: MemoryLeaseStore,
    refused: Arc<Mutex<HashSet<String>>>,
    /// How many times the whole table was read.
    scans: Arc<Mutex<usize>>,
}

impl GatedStore {
    fn refuse_to_create(&self, key: &str) {
        lock(&self.refused).insert(key.to_owned());
    }

    fn allow_all(&self) {
        lock(&self.refused).clear();
    }
}

#[async_trait]
impl LeaseStore for GatedStore {
    async fn ensure_table(&self) -> Result<(), LeaseError> {
        self.inner.ensure_table().await
    }
    async fn list_leases(&self) -> Result<LeaseScan, LeaseError> {
        *lock(&self.scans) += 1;
        self.inner.list_leases().await
    }
    async fn create_lease_if_absent(&self, lease: &Lease) -> Result<bool, LeaseError> {
        if lock(&self.refused).contains(&lease.key) {
            return Err(LeaseError::Transient {
                operation: "PutItem",
                kind: FailureKind::ServiceUnavailable,
                message: "scripted failure".into(),
            });
        }
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
        self.inner.update_checkpoint(lease, checkpoint).await
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

/// A coordinator running in its own task.
struct Running {
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), Error>>,
}

impl Running {
    fn start(
        settings: CoordinatorSettings,
        streams: &MemoryStreams,
        store: Arc<dyn LeaseStore>,
        recorder: &Arc<Recorder>,
    ) -> Running {
        let processor: Arc<dyn Processor> = recorder.clone();
        let dispatcher = Arc::new(Dispatcher::new(vec![processor]));
        let coordinator = Coordinator::new(settings, Arc::new(streams.clone()), store, dispatcher);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(coordinator.run(shutdown.clone()));
        Running { shutdown, task }
    }

    /// Cancels the coordinator and waits for it; it must stop cleanly.
    async fn stop(self) {
        self.shutdown.cancel();
        let result = tokio::time::timeout(WAIT, self.task)
            .await
            .expect("the coordinator stops after its shutdown grace")
            .expect("the coordinator task does not panic");
        assert!(result.is_ok(), "the coordinator failed: {result:?}");
    }
}

/// Waits, in virtual time, until `condition` holds.
async fn wait_until(what: &str, condition: impl FnMut() -> bool) {
    eventually(WAIT, condition, || {
        format!("timed out waiting until {what}")
    })
    .await;
}

fn checkpoint_of(store: &MemoryLeaseStore, key: &str) -> Option<Checkpoint> {
    store.get(key).map(|l| l.checkpoint)
}

fn owner_of(store: &MemoryLeaseStore, key: &str) -> Option<String> {
    store.get(key).and_then(|l| l.owner)
}

fn put(streams: &MemoryStreams, arn: &str, shard: &str, count: usize) -> Vec<SequenceNumber> {
    (0..count)
        .map(|i| streams.put(arn, shard, EventName::Insert, &format!("{shard}-{i}")))
        .collect()
}

/// A parent with five records, closed, and a child with three records.
fn split_stream(streams: &MemoryStreams) -> (String, Vec<SequenceNumber>, Vec<SequenceNumber>) {
    let arn = streams.create_stream(TABLE, PARENT);
    let parent = put(streams, &arn, PARENT, 5);
    streams.close_shard(&arn, PARENT);
    streams.add_shard(&arn, CHILD, Some(PARENT));
    let child = put(streams, &arn, CHILD, 3);
    (arn, parent, child)
}

#[tokio::test(start_paused = true)]
async fn a_child_is_read_only_after_its_closed_parent_reached_shard_end() {
    let streams = MemoryStreams::new();
    let (arn, parent, child) = split_stream(&streams);
    streams.close_shard(&arn, CHILD);
    let store = MemoryLeaseStore::new();
    let recorder = Recorder::new(&store);
    let running = Running::start(
        settings(StartingPosition::TrimHorizon),
        &streams,
        Arc::new(store.clone()),
        &recorder,
    );

    wait_until("both shards are at SHARD_END", || {
        checkpoint_of(&store, PARENT) == Some(Checkpoint::ShardEnd)
            && checkpoint_of(&store, CHILD) == Some(Checkpoint::ShardEnd)
    })
    .await;
    // A few more renewals and shard syncs must not read anything again.
    tokio::time::sleep(Duration::from_secs(5)).await;
    running.stop().await;

    let expected: Vec<SequenceNumber> = parent.iter().chain(&child).cloned().collect();
    assert_eq!(
        recorder.processed(),
        expected,
        "every parent record before any child record, each exactly once"
    );
    let batches = recorder.batches();
    let child_batches: Vec<&Seen> = batches.iter().filter(|b| b.shard == CHILD).collect();
    assert!(!child_batches.is_empty());
    for batch in child_batches {
        assert_eq!(
            batch.parents,
            vec![(PARENT.to_string(), Some(Checkpoint::ShardEnd))],
            "a child batch was processed before its parent's lease was at SHARD_END"
        );
    }
    assert!(batches
        .iter()
        .filter(|b| b.shard == PARENT)
        .all(|b| b.sequence_numbers.len() <= 2));
    let events = recorder.events();
    let parent_ended = events.iter().position(|e| *e == format!("ended {PARENT}"));
    let child_started = events.iter().position(|e| *e == format!("started {CHILD}"));
    assert!(
        parent_ended.is_some() && child_started > parent_ended,
        "{events:?}"
    );
    for key in [PARENT, CHILD] {
        let lease = store.get(key).unwrap();
        assert_eq!(lease.checkpoint, Checkpoint::ShardEnd, "{key}");
        assert_eq!(
            lease.owner, None,
            "{key}: an ended shard's lease is released"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_child_waits_while_its_listed_parent_has_no_lease() {
    let streams = MemoryStreams::new();
    let (_arn, parent, child) = split_stream(&streams);
    let store = GatedStore::default();
    store.refuse_to_create(PARENT);
    let recorder = Recorder::new(&store.inner);
    let running = Running::start(
        settings(StartingPosition::TrimHorizon),
        &streams,
        Arc::new(store.clone()),
        &recorder,
    );

    wait_until("the child's lease is taken", || {
        owner_of(&store.inner, CHILD).as_deref() == Some(ME)
    })
    .await;
    // Several renewals, balances and shard syncs later, still nothing.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(store.inner.get(PARENT), None);
    assert!(
        recorder.processed().is_empty(),
        "a child started while its listed parent had no lease: {:?}",
        recorder.batches()
    );
    assert_eq!(
        checkpoint_of(&store.inner, CHILD),
        Some(Checkpoint::TrimHorizon)
    );
    assert_eq!(
        owner_of(&store.inner, CHILD).as_deref(),
        Some(ME),
        "the waiting child's lease is kept alive"
    );

    // Once the parent's lease can be created, the parent is read, then the child.
    store.allow_all();
    wait_until("the child's records are checkpointed", || {
        checkpoint_of(&store.inner, CHILD) == Some(Checkpoint::Sequence(child[2].clone()))
    })
    .await;
    running.stop().await;

    let expected: Vec<SequenceNumber> = parent.iter().chain(&child).cloned().collect();
    assert_eq!(recorder.processed(), expected);
    assert!(recorder
        .batches()
        .iter()
        .filter(|b| b.shard == CHILD)
        .all(|b| b.parents == vec![(PARENT.to_string(), Some(Checkpoint::ShardEnd))]));
}

#[tokio::test(start_paused = true)]
async fn a_child_waits_while_another_worker_reads_its_parent() {
    let streams = MemoryStreams::new();
    let (arn, parent, child) = split_stream(&streams);
    let store = MemoryLeaseStore::new();
    // Another, live worker holds the parent and is half-way through it.
    store.put(Lease {
        owner: Some(OTHER.into()),
        counter: 7,
        ..Lease::new(&arn, PARENT, None, Checkpoint::Sequence(parent[2].clone()))
    });
    let recorder = Recorder::new(&store);
    let settings = CoordinatorSettings {
        lease_duration: Duration::from_secs(30),
        ..settings(StartingPosition::TrimHorizon)
    };
    let running = Running::start(settings, &streams, Arc::new(store.clone()), &recorder);

    wait_until("the child's lease is taken", || {
        owner_of(&store, CHILD).as_deref() == Some(ME)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        recorder.processed().is_empty(),
        "a child started before its parent reached SHARD_END: {:?}",
        recorder.batches()
    );
    assert_eq!(
        owner_of(&store, PARENT).as_deref(),
        Some(OTHER),
        "a live worker's lease is not taken"
    );

    // The other worker finishes the parent and releases it.
    let current = store.get(PARENT).unwrap();
    let ended = store
        .update_checkpoint(&current, &Checkpoint::ShardEnd)
        .await
        .unwrap();
    store.release_lease(&ended).await.unwrap();
    wait_until("the child's records are checkpointed", || {
        checkpoint_of(&store, CHILD) == Some(Checkpoint::Sequence(child[2].clone()))
    })
    .await;
    running.stop().await;

    assert_eq!(recorder.processed(), child, "only the child is read here");
    assert!(recorder
        .batches()
        .iter()
        .all(|b| b.parents == vec![(PARENT.to_string(), Some(Checkpoint::ShardEnd))]));
}

#[tokio::test(start_paused = true)]
async fn a_child_whose_parent_was_trimmed_starts_at_once() {
    let streams = MemoryStreams::new();
    let arn = streams.create_stream(TABLE, "shardId-sibling");
    streams.add_shard(&arn, CHILD, Some("shardId-trimmed"));
    let child = put(&streams, &arn, CHILD, 3);
    let store = MemoryLeaseStore::new();
    let recorder = Recorder::new(&store);
    let running = Running::start(
        settings(StartingPosition::TrimHorizon),
        &streams,
        Arc::new(store.clone()),
        &recorder,
    );

    wait_until("the child's records are checkpointed", || {
        checkpoint_of(&store, CHILD) == Some(Checkpoint::Sequence(child[2].clone()))
    })
    .await;
    running.stop().await;

    assert_eq!(recorder.processed(), child);
    assert_eq!(
        recorder.batches()[0].parents,
        vec![("shardId-trimmed".to_string(), None)]
    );
    assert_eq!(store.get("shardId-trimmed"), None);
}

#[tokio::test(start_paused = true)]
async fn latest_on_first_sight_skips_history_and_reads_new_records() {
    let streams = MemoryStreams::new();
    let (arn, _parent, _old_child) = split_stream(&streams);
    let store = MemoryLeaseStore::new();
    let recorder = Recorder::new(&store);
    let running = Running::start(
        settings(StartingPosition::Latest),
        &streams,
        Arc::new(store.clone()),
        &recorder,
    );

    // Once the child's consumer holds an iterator, new writes follow it.
    wait_until("the child's iterator is acquired", || {
        streams.calls("GetShardIterator") >= 1
    })
    .await;
    let parent_lease = store.get(PARENT).unwrap();
    assert_eq!(parent_lease.checkpoint, Checkpoint::ShardEnd);
    assert_eq!(parent_lease.owner, None, "an ended shard is not taken");
    assert_eq!(checkpoint_of(&store, CHILD), Some(Checkpoint::Latest));
    assert_eq!(owner_of(&store, CHILD).as_deref(), Some(ME));

    let new = put(&streams, &arn, CHILD, 3);
    wait_until("the new records are checkpointed", || {
        checkpoint_of(&store, CHILD) == Some(Checkpoint::Sequence(new[2].clone()))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    running.stop().await;

    assert_eq!(
        recorder.processed(),
        new,
        "only records written after the start are delivered"
    );
    assert_eq!(
        streams.calls("GetShardIterator"),
        1,
        "the closed parent was never read"
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_checkpoints_and_releases_every_lease_it_holds() {
    let streams = MemoryStreams::new();
    let (arn, parent, _child) = split_stream(&streams);
    streams.add_shard(&arn, "shardId-open", None);
    let open = put(&streams, &arn, "shardId-open", 3);
    let store = MemoryLeaseStore::new();
    // Another live worker is reading the parent, so our child lease is held
    // but its shard does not run.
    store.put(Lease {
        owner: Some(OTHER.into()),
        counter: 3,
        ..Lease::new(&arn, PARENT, None, Checkpoint::Sequence(parent[0].clone()))
    });
    let recorder = Recorder::new(&store);
    let settings = CoordinatorSettings {
        lease_duration: Duration::from_secs(30),
        ..settings(StartingPosition::TrimHorizon)
    };
    let running = Running::start(settings, &streams, Arc::new(store.clone()), &recorder);

    wait_until("the open shard is read and the child's lease taken", || {
        checkpoint_of(&store, "shardId-open") == Some(Checkpoint::Sequence(open[2].clone()))
            && owner_of(&store, CHILD).as_deref() == Some(ME)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(owner_of(&store, "shardId-open").as_deref(), Some(ME));
    running.stop().await;

    for key in ["shardId-open", CHILD] {
        assert_eq!(owner_of(&store, key), None, "{key} was not released");
    }
    assert_eq!(
        checkpoint_of(&store, "shardId-open"),
        Some(Checkpoint::Sequence(open[2].clone()))
    );
    assert_eq!(
        owner_of(&store, PARENT).as_deref(),
        Some(OTHER),
        "another worker's lease is left alone"
    );
    assert_eq!(recorder.processed(), open);
    // Released leases can be taken by another worker at once.
    let open_lease = store.get("shardId-open").unwrap();
    store.take_lease(&open_lease, OTHER).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_lease_taken_by_another_worker_stops_its_shard_until_that_lease_expires() {
    let streams = MemoryStreams::new();
    let arn = streams.create_stream(TABLE, "shardId-open");
    let first = put(&streams, &arn, "shardId-open", 2);
    let store = MemoryLeaseStore::new();
    let recorder = Recorder::new(&store);
    let running = Running::start(
        settings(StartingPosition::TrimHorizon),
        &streams,
        Arc::new(store.clone()),
        &recorder,
    );
    wait_until("the first records are checkpointed", || {
        checkpoint_of(&store, "shardId-open") == Some(Checkpoint::Sequence(first[1].clone()))
    })
    .await;

    // Another worker takes the lease; our next renewal finds out.
    let lease = store.get("shardId-open").unwrap();
    store.take_lease(&lease, OTHER).await.unwrap();
    let taken_at = Instant::now();
    wait_until("the coordinator reports the lost lease", || {
        recorder
            .events()
            .contains(&"lease lost shardId-open".to_string())
    })
    .await;
    assert!(
        taken_at.elapsed() <= Duration::from_secs(2),
        "found at the next renewal"
    );
    // The other worker then dies without renewing or reading anything.
    let second = put(&streams, &arn, "shardId-open", 2);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(owner_of(&store, "shardId-open").as_deref(), Some(OTHER));
    assert_eq!(
        recorder.processed(),
        first,
        "nothing is read under a lost lease"
    );

    // After a whole lease duration without a heartbeat, we take it back and
    // resume from the checkpoint.
    wait_until("the new records are checkpointed", || {
        checkpoint_of(&store, "shardId-open") == Some(Checkpoint::Sequence(second[1].clone()))
    })
    .await;
    assert!(taken_at.elapsed() >= Duration::from_secs(6));
    assert_eq!(owner_of(&store, "shardId-open").as_deref(), Some(ME));
    running.stop().await;

    let expected: Vec<SequenceNumber> = first.iter().chain(&second).cloned().collect();
    assert_eq!(recorder.processed(), expected);
}

#[tokio::test(start_paused = true)]
async fn with_latest_a_split_found_later_is_read_from_its_beginning() {
    let streams = MemoryStreams::new();
    let arn = streams.create_stream(TABLE, PARENT);
    put(&streams, &arn, PARENT, 2);
    let store = MemoryLeaseStore::new();
    let recorder = Recorder::new(&store);
    let running = Running::start(
        settings(StartingPosition::Latest),
        &streams,
        Arc::new(store.clone()),
        &recorder,
    );
    wait_until("the parent's iterator is acquired", || {
        streams.calls("GetShardIterator") >= 1
    })
    .await;

    // New records, then the shard splits: the child gets records before its
    // lease even exists, and they must not be skipped as "history".
    let parent = put(&streams, &arn, PARENT, 3);
    streams.close_shard(&arn, PARENT);
    streams.add_shard(&arn, CHILD, Some(PARENT));
    let child = put(&streams, &arn, CHILD, 3);
    wait_until("the child's records are checkpointed", || {
        checkpoint_of(&store, CHILD) == Some(Checkpoint::Sequence(child[2].clone()))
    })
    .await;
    running.stop().await;

    let expected: Vec<SequenceNumber> = parent.iter().chain(&child).cloned().collect();
    assert_eq!(recorder.processed(), expected);
    assert_eq!(checkpoint_of(&store, PARENT), Some(Checkpoint::ShardEnd));
}

/// Expiry is judged on this worker's monotonic clock by whether the counter
/// moved, never by the wall-clock stamp another host wrote: a live worker
/// whose clock is an hour behind keeps its lease, and a dead one whose clock
/// was an hour ahead loses it after one lease duration.
#[tokio::test(start_paused = true)]
async fn clock_skew_between_hosts_cannot_make_two_workers_own_a_shard() {
    let streams = MemoryStreams::new();
    let arn = streams.create_stream(TABLE, "shardId-skewed");
    let store = MemoryLeaseStore::new();
    let mut lease = Lease::new(&arn, "shardId-skewed", None, Checkpoint::TrimHorizon);
    lease.owner = Some(OTHER.into());
    lease.counter = 1;
    let an_hour_ago = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        - 3_600_000;
    lease.updated_at_millis = Some(an_hour_ago);
    store.put(lease);
    let recorder = Recorder::new(&store);
    let running = Running::start(
        settings(StartingPosition::TrimHorizon),
        &streams,
        Arc::new(store.clone()),
        &recorder,
    );
    // The other worker keeps renewing, with a wall clock an hour behind.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut current = store.get("shardId-skewed").unwrap();
        current.counter += 1;
        current.updated_at_millis = Some(an_hour_ago);
        store.put(current);
    }
    assert_eq!(
        owner_of(&store, "shardId-skewed").as_deref(),
        Some(OTHER),
        "a renewing owner keeps its lease"
    );

    // Now it stops renewing, its last stamp an hour in the future.
    let mut last = store.get("shardId-skewed").unwrap();
    last.updated_at_millis = Some(an_hour_ago + 7_200_000);
    store.put(last);
    let stopped_at = Instant::now();
    wait_until("the silent lease is taken", || {
        owner_of(&store, "shardId-skewed").as_deref() == Some(ME)
    })
    .await;
    assert!(
        stopped_at.elapsed() >= Duration::from_secs(6),
        "taken only after a whole lease duration of silence: {:?}",
        stopped_at.elapsed()
    );
    running.stop().await;
}

/// The leader deletes the lease of a shard that ended, whose child has
/// started, once the stream no longer lists it (past the 24-hour
/// retention); the child's lease stays.
#[tokio::test(start_paused = true)]
async fn the_lease_of_an_ended_shard_past_retention_is_deleted_once_its_child_started() {
    let streams = MemoryStreams::new();
    let (arn, _parent, child) = split_stream(&streams);
    let store = MemoryLeaseStore::new();
    let recorder = Recorder::new(&store);
    let running = Running::start(
        settings(StartingPosition::TrimHorizon),
        &streams,
        Arc::new(store.clone()),
        &recorder,
    );
    wait_until("the child has started", || {
        checkpoint_of(&store, CHILD) == Some(Checkpoint::Sequence(child.last().unwrap().clone()))
    })
    .await;
    // Still listed: kept, whatever its state.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(checkpoint_of(&store, PARENT), Some(Checkpoint::ShardEnd));

    streams.trim_shard(&arn, PARENT);
    wait_until("the parent's lease is deleted", || {
        store.get(PARENT).is_none()
    })
    .await;
    assert!(store.get(CHILD).is_some(), "the child's lease stays");
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_listing_that_changes_nothing_does_not_read_the_lease_table_again() {
    let streams = MemoryStreams::new();
    streams.create_stream_with_shards(TABLE, &["shardId-a", "shardId-b"]);
    let store = GatedStore::default();
    let recorder = Recorder::new(&store.inner);
    let settings = settings(StartingPosition::TrimHorizon);
    let scan_interval = settings.renew_interval / 2;
    let sync_interval = settings.shard_sync_interval;
    let running = Running::start(settings, &streams, Arc::new(store.clone()), &recorder);
    wait_until("both shards are leased", || {
        owner_of(&store.inner, "shardId-a").is_some()
            && owner_of(&store.inner, "shardId-b").is_some()
    })
    .await;

    let before = *lock(&store.scans);
    let window = Duration::from_secs(20);
    tokio::time::sleep(window).await;
    let scans = *lock(&store.scans) - before;
    let periodic = (window.as_millis() / scan_interval.as_millis()) as usize;
    let listings = (window.as_millis() / sync_interval.as_millis()) as usize;
    assert!(
        scans <= periodic + 2,
        "{scans} reads of the lease table in {window:?}: the periodic {periodic}, and none \
         for the {listings} listings that found nothing new"
    );
    running.stop().await;
}

/// A processor whose calls never finish; it counts the calls in flight with
/// a guard that is dropped only when the call's future is.
#[derive(Debug, Default)]
struct Stuck {
    in_flight: Arc<std::sync::atomic::AtomicUsize>,
    started: Arc<std::sync::atomic::AtomicUsize>,
}

struct InFlight(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[async_trait]
impl Processor for Stuck {
    fn name(&self) -> &str {
        "stuck"
    }

    async fn process(&self, _batch: &Batch) -> Result<BatchOutcome, ProcessorError> {
        self.in_flight
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.started
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let _guard = InFlight(Arc::clone(&self.in_flight));
        std::future::pending::<()>().await;
        Ok(BatchOutcome::Success)
    }
}

#[tokio::test(start_paused = true)]
async fn no_processor_call_is_in_flight_after_run_returns() {
    use std::sync::atomic::Ordering;
    let streams = MemoryStreams::new();
    let arn = streams.create_stream(TABLE, "shardId-stuck");
    put(&streams, &arn, "shardId-stuck", 3);
    let store = MemoryLeaseStore::new();
    let stuck = Arc::new(Stuck::default());
    let processor: Arc<dyn Processor> = stuck.clone();
    let dispatcher = Arc::new(Dispatcher::new(vec![processor]));
    let settings = settings(StartingPosition::TrimHorizon);
    let grace = settings.shutdown_grace;
    let coordinator = Coordinator::new(
        settings,
        Arc::new(streams.clone()),
        Arc::new(store.clone()),
        dispatcher,
    );
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(coordinator.run(shutdown.clone()));
    wait_until("a batch is in the processor", || {
        stuck.in_flight.load(Ordering::SeqCst) == 1
    })
    .await;

    let asked = Instant::now();
    shutdown.cancel();
    let result = tokio::time::timeout(WAIT, task)
        .await
        .expect("run returns once the grace ran out")
        .expect("the coordinator task does not panic");
    assert!(result.is_ok(), "the coordinator failed: {result:?}");
    assert!(asked.elapsed() >= grace, "the batch had its grace period");
    assert_eq!(
        stuck.in_flight.load(Ordering::SeqCst),
        0,
        "a processor call was still running after run returned"
    );
    assert_eq!(stuck.started.load(Ordering::SeqCst), 1);
    assert_eq!(
        owner_of(&store, "shardId-stuck"),
        None,
        "the lease is released"
    );
    assert_eq!(
        checkpoint_of(&store, "shardId-stuck"),
        Some(Checkpoint::TrimHorizon),
        "the unfinished batch is not checkpointed"
    );
}

/// 200 idle tables of one shard each, one worker at the default 2
/// DescribeStream calls a second: once every shard is listed, the periodic
/// listings stay well below that budget (a quarter of it, and one call per
/// stream per listing), the tables' streams are looked up again only once per
/// refresh interval, and no stream ever waits twice in the sync set.
#[tokio::test(start_paused = true)]
async fn listing_many_idle_streams_stays_well_below_the_describe_stream_budget() {
    use crate::streams::rate_limit::DescribeRateLimit;
    const TABLES: usize = 200;
    let streams = MemoryStreams::new();
    let tables: Vec<String> = (0..TABLES).map(|i| format!("table-{i:03}")).collect();
    for table in &tables {
        streams.create_stream(table, &format!("shardId-{table}"));
    }
    let store = MemoryLeaseStore::new();
    let recorder = Recorder::new(&store);
    let rps = 2.0;
    let settings = CoordinatorSettings {
        tables: tables.clone(),
        lease_duration: Duration::from_secs(30),
        renew_interval: Duration::from_secs(10),
        shard_sync_interval: Duration::from_secs(60),
        stream_refresh_interval: Duration::from_secs(600),
        describe_stream_rps: rps,
        shard: ShardSettings {
            idle_poll_interval: Duration::from_secs(10),
            idle_after: Duration::ZERO,
            ..settings(StartingPosition::TrimHorizon).shard
        },
        ..settings(StartingPosition::TrimHorizon)
    };
    let refresh = settings.stream_refresh_interval;
    let processor: Arc<dyn Processor> = recorder.clone();
    let coordinator = Coordinator::new(
        settings,
        Arc::new(DescribeRateLimit::new(streams.clone(), rps)),
        Arc::new(store.clone()),
        Arc::new(Dispatcher::new(vec![processor])),
    );
    let pending = coordinator.discovery.sync_set();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(coordinator.run(shutdown.clone()));
    let started = Instant::now();
    let mut most_pending = 0;
    let all_leased = || {
        tables
            .iter()
            .all(|t| owner_of(&store, &format!("shardId-{t}")).as_deref() == Some(ME))
    };
    while !all_leased() {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "timed out waiting for every shard to be leased"
        );
        most_pending = most_pending.max(pending.len());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // 200 listings at 2 a second take 100 s; nothing is listed twice meanwhile.
    let first_listing = started.elapsed();
    let describes = streams.calls("DescribeStream");
    assert!(
        first_listing <= Duration::from_secs(110),
        "the first listing took {first_listing:?}"
    );
    assert!(
        describes <= TABLES as u64 + 5,
        "{describes} DescribeStream calls for the first listing of {TABLES} streams"
    );

    let window = Duration::from_secs(1_200);
    let lists_before = streams.calls("ListStreams");
    let describes_before = streams.calls("DescribeStream");
    let until = Instant::now() + window;
    while Instant::now() < until {
        most_pending = most_pending.max(pending.len());
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let describes = streams.calls("DescribeStream") - describes_before;
    let lists = streams.calls("ListStreams") - lists_before;
    // A quarter of the budget over the window, plus one round of slack.
    let describe_bound = (rps / 4.0 * window.as_secs_f64()) as u64 + TABLES as u64;
    assert!(
        describes <= describe_bound,
        "{describes} DescribeStream calls in {window:?} (at most {describe_bound}; the budget is {})",
        (rps * window.as_secs_f64()) as u64
    );
    let refreshes = (window.as_secs() / refresh.as_secs()) + 1;
    assert!(
        lists <= TABLES as u64 * refreshes,
        "{lists} ListStreams calls in {window:?}: at most one per table per {refresh:?}"
    );
    assert!(
        most_pending <= TABLES,
        "{most_pending} entries pending for {TABLES} streams"
    );
    shutdown.cancel();
    tokio::time::timeout(WAIT, task)
        .await
        .expect("the coordinator stops")
        .expect("no panic")
        .expect("no error");
}

/// Other workers of a fleet, played by a task: each renews its presence item
/// (announcing `held` leases) every renewal interval and never touches its
/// shard leases, until `stop` fires (as under SIGKILL).
fn play_workers(
    store: &MemoryLeaseStore,
    workers: Vec<String>,
    held: u64,
    every: Duration,
    stop: CancellationToken,
) -> (JoinHandle<()>, Arc<Mutex<Option<Instant>>>) {
    let last = Arc::new(Mutex::new(None));
    let store = store.clone();
    let last_renewal = Arc::clone(&last);
    let task = tokio::spawn(async move {
        loop {
            for worker in &workers {
                let key = Lease::worker_presence(worker).key;
                let presence = store.get(&key).expect("the worker announced itself");
                store.renew_presence(&presence, held).await.unwrap();
            }
            if let Some(leader) = store.get(crate::lease::SHARD_SYNC_LEADER_KEY) {
                if leader.owner.as_deref() == workers.first().map(String::as_str) {
                    store.renew_lease(&leader).await.unwrap();
                }
            }
            *lock(&last_renewal) = Some(Instant::now());
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    });
    (task, last)
}

/// A table of `leases` shard leases spread evenly over `workers` workers,
/// this one (`ME`) among them, each announced in its presence item, the
/// shard-sync leadership with the first other worker.
fn fleet_table(
    streams: &MemoryStreams,
    store: &MemoryLeaseStore,
    leases: usize,
    workers: usize,
) -> Vec<String> {
    let shards: Vec<String> = (0..leases).map(|i| format!("shardId-{i:05}")).collect();
    let ids: Vec<&str> = shards.iter().map(String::as_str).collect();
    let arn = streams.create_stream_with_shards(TABLE, &ids);
    let others: Vec<String> = (1..workers).map(|w| format!("worker-{w:02}")).collect();
    let owners: Vec<&str> = std::iter::once(ME)
        .chain(others.iter().map(String::as_str))
        .collect();
    for (i, shard) in shards.iter().enumerate() {
        store.put(Lease {
            owner: Some(owners[i % workers].to_owned()),
            counter: 1,
            ..Lease::new(&arn, shard, None, Checkpoint::TrimHorizon)
        });
    }
    for worker in &others {
        store.put(Lease {
            owner: Some(worker.clone()),
            held_leases: Some((leases / workers) as u64),
            counter: 1,
            ..Lease::worker_presence(worker)
        });
    }
    store.put(Lease {
        owner: Some(others[0].clone()),
        counter: 1,
        ..Lease::shard_sync_leader()
    });
    others
}

/// Read units a second one worker's looks at the lease table cost, in a
/// fleet of 50 that holds `leases` leases: after its start (a scan, taking
/// its leases back), over three whole-scan intervals.
async fn read_units_per_second(leases: usize) -> (f64, crate::lease::memory::ReadUnits, f64) {
    const WORKERS: usize = 50;
    let streams = MemoryStreams::new();
    let store = MemoryLeaseStore::new();
    let others = fleet_table(&streams, &store, leases, WORKERS);
    let settings = CoordinatorSettings {
        lease_duration: Duration::from_secs(10),
        renew_interval: Duration::from_secs(10) / 3,
        shard_sync_interval: Duration::from_secs(60),
        stream_refresh_interval: Duration::from_secs(600),
        shard: ShardSettings {
            idle_poll_interval: Duration::from_secs(300),
            idle_after: Duration::ZERO,
            ..settings(StartingPosition::TrimHorizon).shard
        },
        ..settings(StartingPosition::TrimHorizon)
    };
    let scan_every = settings.renew_interval / 2;
    let window = settings.table_scan_interval * 3;
    let stop_others = CancellationToken::new();
    let (others_task, _) = play_workers(
        &store,
        others,
        (leases / WORKERS) as u64,
        settings.renew_interval,
        stop_others.clone(),
    );
    let recorder = Recorder::new(&store);
    let running = Running::start(settings, &streams, Arc::new(store.clone()), &recorder);
    let mine = leases / WORKERS;
    wait_until("this worker holds its leases again", || {
        store
            .all()
            .iter()
            .filter(|l| l.kind() == crate::lease::ItemKind::Shard)
            .filter(|l| l.is_owned_by(ME) && l.counter > 1)
            .count()
            == mine
    })
    .await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    store.reset_read_units();
    tokio::time::sleep(window).await;
    let reads = store.read_units();
    let owned_elsewhere = store
        .all()
        .iter()
        .filter(|l| l.kind() == crate::lease::ItemKind::Shard && !l.is_owned_by(ME))
        .filter(|l| l.counter > 1)
        .count();
    assert_eq!(owned_elsewhere, 0, "no other worker's lease was taken");
    let scanned_every_look = store.scan_cost() / scan_every.as_secs_f64();
    stop_others.cancel();
    others_task.await.unwrap();
    running.stop().await;
    (
        reads.total() / window.as_secs_f64(),
        reads,
        scanned_every_look,
    )
}

#[tokio::test(start_paused = true)]
async fn a_workers_reads_of_the_lease_table_stay_within_ten_units_a_second_at_10000_leases() {
    for leases in [1_000, 10_000] {
        let (per_second, reads, scanned) = read_units_per_second(leases).await;
        eprintln!(
            "lease-table reads, {leases} leases, 50 workers: {per_second:.2} read units per worker per second \
             (Scan {:.1}, Query {:.1} in {} calls, GetItem {:.1} over the window); scanning the whole table at \
             every look would cost {scanned:.1}",
            reads.of("Scan"),
            reads.of("Query"),
            reads.calls.get("Query").copied().unwrap_or(0),
            reads.of("GetItem"),
        );
        let bound = if leases == 10_000 { 10.0 } else { 2.0 };
        assert!(
            per_second <= bound,
            "{per_second:.2} read units a second at {leases} leases (at most {bound})"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_silent_workers_leases_are_taken_within_a_lease_duration_and_a_renewal_judged_by_its_presence(
) {
    let streams = MemoryStreams::new();
    let store = MemoryLeaseStore::new();
    let others = fleet_table(&streams, &store, 6, 2);
    let victim = others[0].clone();
    let settings = CoordinatorSettings {
        lease_duration: Duration::from_secs(10),
        renew_interval: Duration::from_secs(10) / 3,
        ..settings(StartingPosition::TrimHorizon)
    };
    let bound = settings.lease_duration + settings.renew_interval;
    let stop = CancellationToken::new();
    let (others_task, last_renewal) =
        play_workers(&store, others, 3, settings.renew_interval, stop.clone());
    let recorder = Recorder::new(&store);
    let running = Running::start(settings, &streams, Arc::new(store.clone()), &recorder);
    let theirs: Vec<String> = store
        .all()
        .into_iter()
        .filter(|l| l.is_owned_by(&victim) && l.kind() == crate::lease::ItemKind::Shard)
        .map(|l| l.key)
        .collect();
    assert_eq!(theirs.len(), 3);
    // Their shard leases never move, yet a renewed presence keeps them theirs.
    tokio::time::sleep(Duration::from_secs(60)).await;
    for key in &theirs {
        assert_eq!(
            owner_of(&store, key).as_deref(),
            Some(victim.as_str()),
            "{key}"
        );
    }
    stop.cancel();
    others_task.await.unwrap();
    let killed = lock(&last_renewal).expect("renewed");
    wait_until("the silent worker's leases are taken", || {
        theirs
            .iter()
            .all(|key| owner_of(&store, key).as_deref() == Some(ME))
    })
    .await;
    let took = killed.elapsed();
    eprintln!("takeover judged by presence: {took:?} after the last heartbeat (bound {bound:?})");
    assert!(took <= bound, "took {took:?}, more than {bound:?}");
    assert!(
        took >= Duration::from_secs(10),
        "taken after {took:?}, before a lease duration"
    );
    running.stop().await;
}

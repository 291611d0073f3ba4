//! Unit tests of pipelines sharing one read of a shard, against the
//! in-memory fakes on paused tokio time.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Parents, Pipeline, Pipelines};
use crate::dispatch::{DispatchSettings, Dispatcher};
use crate::lease::held::HeldLease;
use crate::lease::memory::MemoryLeaseStore;
use crate::lease::{Checkpoint, Lease, LeaseStore};
use crate::processor::ProcessorError;
use crate::record::{EventName, SequenceNumber};
use crate::shard::{ShardExit, ShardSettings};
use crate::streams::memory::MemoryStreams;
use crate::test_support::{eventually, lock, Recorder};

const SHARD: &str = "shardId-00000001";
const LEASE_DURATION: Duration = Duration::from_secs(600);
const WAIT: Duration = Duration::from_secs(120);

/// A processor that can be made to fail, recording what it delivered.
struct Target {
    recorder: Arc<Recorder>,
    delivered: Arc<Mutex<Vec<SequenceNumber>>>,
    failing: Arc<Mutex<bool>>,
}

impl Target {
    fn new() -> Target {
        let delivered = Arc::new(Mutex::new(Vec::new()));
        let failing = Arc::new(Mutex::new(false));
        let (into, fails) = (Arc::clone(&delivered), Arc::clone(&failing));
        let recorder = Recorder::with_hook(move |_, batch| {
            if *lock(&fails) {
                return Err(ProcessorError::retryable("scripted failure"));
            }
            lock(&into).extend(batch.records.iter().map(|r| r.sequence_number().clone()));
            Ok(())
        });
        Target {
            recorder,
            delivered,
            failing,
        }
    }

    fn delivered(&self) -> Vec<SequenceNumber> {
        lock(&self.delivered).clone()
    }

    fn fail(&self, failing: bool) {
        *lock(&self.failing) = failing;
    }
}

struct Fixture {
    streams: MemoryStreams,
    store: MemoryLeaseStore,
    arn: String,
}

impl Fixture {
    async fn new(checkpoint: Checkpoint) -> Fixture {
        let streams = MemoryStreams::new();
        let arn = streams.create_stream("orders", SHARD);
        let store = MemoryLeaseStore::new();
        let lease = Lease::new(&arn, SHARD, None, checkpoint);
        assert!(store.create_lease_if_absent(&lease).await.unwrap());
        Fixture {
            streams,
            store,
            arn,
        }
    }

    fn put(&self, count: usize) -> Vec<SequenceNumber> {
        (0..count)
            .map(|i| {
                self.streams
                    .put(&self.arn, SHARD, EventName::Insert, &format!("k{i}"))
            })
            .collect()
    }

    /// Takes the lease (again) for a new run.
    async fn lease(&self) -> Arc<HeldLease> {
        let current = self.stored();
        let taken = self.store.take_lease(&current, "me").await.unwrap();
        Arc::new(HeldLease::new(
            Arc::new(self.store.clone()),
            taken,
            LEASE_DURATION,
            Instant::now(),
        ))
    }

    fn stored(&self) -> Lease {
        self.store.get(SHARD).unwrap()
    }

    fn settings() -> ShardSettings {
        ShardSettings {
            batch_size: 10,
            poll_interval: Duration::from_millis(200),
            ..ShardSettings::default()
        }
    }

    fn pipeline(name: &str, target: &Target, from_trim_horizon: bool) -> Pipeline {
        let dispatcher = Dispatcher::new(vec![Arc::clone(&target.recorder) as _]).with_settings(
            DispatchSettings {
                batch_size: 10,
                max_retry_attempts: None,
                retry_max: Duration::from_secs(1),
                ..DispatchSettings::default()
            },
        );
        Pipeline {
            name: name.into(),
            dispatcher: Arc::new(dispatcher),
            settings: Fixture::settings(),
            from_trim_horizon,
        }
    }

    /// Runs the shard into `pipelines` until `shutdown` or its end.
    async fn run(&self, pipelines: &Pipelines, shutdown: CancellationToken) -> ShardExit {
        self.run_with(pipelines, Fixture::settings(), shutdown)
            .await
    }

    /// [`Fixture::run`] with the given shard settings.
    async fn run_with(
        &self,
        pipelines: &Pipelines,
        settings: ShardSettings,
        shutdown: CancellationToken,
    ) -> ShardExit {
        let task = pipelines.shard_task(
            &self.arn,
            SHARD,
            Arc::new(self.streams.clone()),
            self.lease().await,
            settings,
            Parents::default(),
        );
        task.run(shutdown).await
    }
}

fn in_order(got: &[SequenceNumber], want: &[SequenceNumber]) {
    assert_eq!(got.len(), want.len(), "count");
    assert_eq!(got, want);
}

#[tokio::test(start_paused = true)]
async fn three_pipelines_cost_the_get_records_calls_of_one() {
    let single = Fixture::new(Checkpoint::TrimHorizon).await;
    let want = single.put(250);
    single.streams.close_shard(&single.arn, SHARD);
    let only = Target::new();
    let exit = single
        .run(
            &Pipelines::Single(Arc::clone(&Fixture::pipeline("x", &only, false).dispatcher)),
            CancellationToken::new(),
        )
        .await;
    assert_eq!(exit, ShardExit::Ended);
    in_order(&only.delivered(), &want);

    let shared = Fixture::new(Checkpoint::TrimHorizon).await;
    let want = shared.put(250);
    shared.streams.close_shard(&shared.arn, SHARD);
    let targets = [Target::new(), Target::new(), Target::new()];
    let pipelines = Pipelines::named(
        ["search", "cache", "audit"]
            .iter()
            .zip(&targets)
            .map(|(name, target)| Fixture::pipeline(name, target, false))
            .collect(),
        1_000,
    );
    let exit = shared.run(&pipelines, CancellationToken::new()).await;
    assert_eq!(exit, ShardExit::Ended);
    for target in &targets {
        in_order(&target.delivered(), &want);
    }
    assert_eq!(
        shared.streams.calls("GetRecords"),
        single.streams.calls("GetRecords"),
        "one read for three pipelines"
    );
    assert_eq!(shared.streams.calls("GetShardIterator"), 1);
    let stored = shared.stored();
    assert_eq!(stored.checkpoint, Checkpoint::ShardEnd);
    assert!(stored
        .pipeline_checkpoints
        .values()
        .all(Checkpoint::is_shard_end));
    assert_eq!(stored.pipeline_checkpoints.len(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_failing_pipeline_blocks_nobody_and_catches_up_exactly() {
    let fixture = Fixture::new(Checkpoint::TrimHorizon).await;
    let (fast, slow) = (Target::new(), Target::new());
    slow.fail(true);
    let pipelines = Pipelines::named(
        vec![
            Fixture::pipeline("fast", &fast, false),
            Fixture::pipeline("slow", &slow, false),
        ],
        40,
    );
    let shutdown = CancellationToken::new();
    let run = fixture.run(&pipelines, shutdown.clone());
    let written = Arc::new(Mutex::new(Vec::new()));
    let script = async {
        for _ in 0..30 {
            lock(&written).extend(fixture.put(10));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        eventually(
            WAIT,
            || fast.delivered().len() == 300,
            || format!("fast delivered {}", fast.delivered().len()),
        )
        .await;
        assert!(slow.delivered().is_empty());
        let slow_checkpoint = fixture.stored().pipeline_checkpoints.get("slow").cloned();
        assert!(
            matches!(slow_checkpoint, None | Some(Checkpoint::TrimHorizon)),
            "{slow_checkpoint:?}"
        );
        let before_heal = fixture.streams.calls("GetShardIterator");
        slow.fail(false);
        eventually(
            WAIT,
            || slow.delivered().len() == 300,
            || format!("slow delivered {}", slow.delivered().len()),
        )
        .await;
        assert!(
            fixture.streams.calls("GetShardIterator") > before_heal,
            "the slow pipeline fell out of the 40-record window and read on its own"
        );
        shutdown.cancel();
    };
    let (exit, ()) = tokio::join!(run, script);
    assert_eq!(exit, ShardExit::Stopped);
    let written = lock(&written).clone();
    in_order(&fast.delivered(), &written);
    in_order(&slow.delivered(), &written);
    let stored = fixture.stored();
    let last = Checkpoint::Sequence(written.last().unwrap().clone());
    assert_eq!(stored.pipeline_checkpoints["fast"], last);
    assert_eq!(stored.pipeline_checkpoints["slow"], last);
    assert_eq!(stored.checkpoint, last);
}

#[tokio::test(start_paused = true)]
async fn each_pipeline_resumes_from_its_own_checkpoint() {
    let fixture = Fixture::new(Checkpoint::TrimHorizon).await;
    let (a, b) = (Target::new(), Target::new());
    b.fail(true);
    let pipelines = Pipelines::named(
        vec![
            Fixture::pipeline("a", &a, false),
            Fixture::pipeline("b", &b, false),
        ],
        1_000,
    );
    let first = fixture.put(50);
    let shutdown = CancellationToken::new();
    let stop = async {
        eventually(WAIT, || a.delivered().len() == 50, || "a".into()).await;
        shutdown.cancel();
    };
    let (exit, ()) = tokio::join!(fixture.run(&pipelines, shutdown.clone()), stop);
    assert_eq!(exit, ShardExit::Stopped);
    let stored = fixture.stored();
    assert_eq!(
        stored.pipeline_checkpoints["a"],
        Checkpoint::Sequence(first.last().unwrap().clone())
    );
    assert_eq!(
        stored.checkpoint,
        Checkpoint::TrimHorizon,
        "b holds it back"
    );

    b.fail(false);
    let second = fixture.put(20);
    fixture.streams.close_shard(&fixture.arn, SHARD);
    let exit = fixture.run(&pipelines, CancellationToken::new()).await;
    assert_eq!(exit, ShardExit::Ended);
    let all: Vec<SequenceNumber> = first.iter().chain(&second).cloned().collect();
    in_order(&a.delivered(), &all);
    in_order(&b.delivered(), &all);
}

#[tokio::test(start_paused = true)]
async fn a_pipeline_added_later_replays_or_joins_without_repeating_the_others() {
    let fixture = Fixture::new(Checkpoint::TrimHorizon).await;
    let old = Target::new();
    let first = fixture.put(30);
    let shutdown = CancellationToken::new();
    let one = Pipelines::named(vec![Fixture::pipeline("old", &old, false)], 1_000);
    let stop = async {
        eventually(WAIT, || old.delivered().len() == 30, || "old".into()).await;
        shutdown.cancel();
    };
    tokio::join!(fixture.run(&one, shutdown.clone()), stop);

    let (replay, join) = (Target::new(), Target::new());
    let second = fixture.put(10);
    fixture.streams.close_shard(&fixture.arn, SHARD);
    let three = Pipelines::named(
        vec![
            Fixture::pipeline("old", &old, false),
            Fixture::pipeline("replay", &replay, true),
            Fixture::pipeline("join", &join, false),
        ],
        1_000,
    );
    let exit = fixture.run(&three, CancellationToken::new()).await;
    assert_eq!(exit, ShardExit::Ended);
    let all: Vec<SequenceNumber> = first.iter().chain(&second).cloned().collect();
    in_order(&old.delivered(), &all);
    in_order(&replay.delivered(), &all);
    in_order(&join.delivered(), &second);
    assert_eq!(fixture.streams.calls("GetShardIterator"), 2, "one per run");
}

#[tokio::test(start_paused = true)]
async fn across_a_split_a_lagging_pipeline_finishes_the_parent_while_the_others_read_the_child() {
    const PARENT: &str = "shardId-parent";
    const CHILD: &str = "shardId-child";
    let streams = MemoryStreams::new();
    let arn = streams.create_stream("orders", PARENT);
    let put = |shard: &str, count: usize| -> Vec<SequenceNumber> {
        (0..count)
            .map(|i| streams.put(&arn, shard, EventName::Insert, &format!("k{i}")))
            .collect()
    };
    let in_parent = put(PARENT, 30);
    streams.close_shard(&arn, PARENT);
    streams.add_shard(&arn, CHILD, Some(PARENT));
    let in_child = put(CHILD, 20);
    streams.close_shard(&arn, CHILD);
    let store = MemoryLeaseStore::new();
    let held = |shard: &'static str, parent: Option<&'static str>| {
        let (store, arn) = (store.clone(), arn.clone());
        async move {
            let lease = Lease::new(&arn, shard, parent, Checkpoint::TrimHorizon);
            store.create_lease_if_absent(&lease).await.unwrap();
            let taken = store.take_lease(&lease, "me").await.unwrap();
            Arc::new(HeldLease::new(
                Arc::new(store),
                taken,
                LEASE_DURATION,
                Instant::now(),
            ))
        }
    };
    let (fast, slow) = (Target::new(), Target::new());
    slow.fail(true);
    let pipelines = Pipelines::named(
        vec![
            Fixture::pipeline("fast", &fast, false),
            Fixture::pipeline("slow", &slow, false),
        ],
        1_000,
    );
    let api: Arc<MemoryStreams> = Arc::new(streams.clone());
    let parent_task = pipelines.shard_task(
        &arn,
        PARENT,
        api.clone(),
        held(PARENT, None).await,
        Fixture::settings(),
        Parents::default(),
    );
    let child_lease = held(CHILD, Some(PARENT)).await;
    let table = tokio::sync::watch::channel(Arc::<[Lease]>::from(Vec::new())).0;
    let script = async {
        // The coordinator starts the child once any pipeline finished the parent.
        eventually(
            WAIT,
            || {
                store.get(PARENT).is_some_and(|p| {
                    p.pipeline_checkpoints.get("fast") == Some(&Checkpoint::ShardEnd)
                })
            },
            || "fast to finish the parent".into(),
        )
        .await;
        let child_task = pipelines.shard_task(
            &arn,
            CHILD,
            api.clone(),
            Arc::clone(&child_lease),
            Fixture::settings(),
            Parents::new(
                vec![PARENT.to_owned()],
                store.get(PARENT).into_iter().collect(),
                table.subscribe(),
            ),
        );
        // The coordinator's looks at the lease table, twice a second.
        let publish = async {
            loop {
                let leases: Vec<Lease> = store.get(PARENT).into_iter().collect();
                table.send_replace(Arc::from(leases));
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        };
        let heal = async {
            eventually(
                WAIT,
                || fast.delivered().len() == 50,
                || format!("fast on the child: {}", fast.delivered().len()),
            )
            .await;
            assert!(
                slow.delivered().is_empty(),
                "slow is still failing in the parent"
            );
            slow.fail(false);
        };
        tokio::select! {
            (exit, ()) = async { tokio::join!(child_task.run(CancellationToken::new()), heal) } => exit,
            () = publish => unreachable!("publishes forever"),
        }
    };
    let (parent_exit, child_exit) = tokio::join!(parent_task.run(CancellationToken::new()), script);
    assert_eq!(parent_exit, ShardExit::Ended);
    assert_eq!(child_exit, ShardExit::Ended);
    let all: Vec<SequenceNumber> = in_parent.iter().chain(&in_child).cloned().collect();
    in_order(&fast.delivered(), &all);
    in_order(&slow.delivered(), &all);
    assert_eq!(store.get(CHILD).unwrap().checkpoint, Checkpoint::ShardEnd);
}

#[tokio::test(start_paused = true)]
async fn a_pipeline_added_with_trim_horizon_replays_a_shard_the_others_finished() {
    let fixture = Fixture::new(Checkpoint::TrimHorizon).await;
    let want = fixture.put(25);
    fixture.streams.close_shard(&fixture.arn, SHARD);
    let old = Target::new();
    let before = Pipelines::named(vec![Fixture::pipeline("old", &old, false)], 1_000);
    assert_eq!(
        fixture.run(&before, CancellationToken::new()).await,
        ShardExit::Ended
    );
    in_order(&old.delivered(), &want);
    let finished = fixture.stored();
    assert_eq!(finished.checkpoint, Checkpoint::ShardEnd);

    let (old_again, replay) = (Target::new(), Target::new());
    let after = Pipelines::named(
        vec![
            Fixture::pipeline("old", &old_again, false),
            Fixture::pipeline("replay", &replay, true),
        ],
        1_000,
    );
    assert!(
        finished.needs_reading(&after.starts()),
        "the shard is to be read again, for the new pipeline"
    );
    assert!(!finished.needs_reading(&before.starts()));
    assert_eq!(
        fixture.run(&after, CancellationToken::new()).await,
        ShardExit::Ended
    );
    in_order(&replay.delivered(), &want);
    assert!(old_again.delivered().is_empty(), "old sees nothing twice");
    let stored = fixture.stored();
    assert_eq!(stored.checkpoint, Checkpoint::ShardEnd);
    assert!(!stored.needs_reading(&after.starts()));
}

#[tokio::test(start_paused = true)]
async fn records_trimmed_before_the_shared_reader_got_to_them_halt_only_the_pipelines_that_say_stop(
) {
    let fixture = Fixture::new(Checkpoint::TrimHorizon).await;
    let written = fixture.put(4);
    fixture.streams.close_shard(&fixture.arn, SHARD);
    let mut moved = fixture.stored();
    moved.checkpoint = Checkpoint::Sequence(written[0].clone());
    fixture.store.put(moved);
    // The position after the first record is no longer held: the reader
    // goes on from the oldest record held.
    fixture.streams.fail_next(
        crate::streams::memory::Operation::GetShardIterator,
        crate::streams::StreamsError::TrimmedData("position is before the trim horizon".into()),
    );
    let (lenient, strict) = (Target::new(), Target::new());
    let mut strict_pipeline = Fixture::pipeline("strict", &strict, false);
    strict_pipeline.settings.on_trimmed = crate::config::OnTrimmed::Stop;
    let pipelines = Pipelines::named(
        vec![
            Fixture::pipeline("lenient", &lenient, false),
            strict_pipeline,
        ],
        1_000,
    );
    let exit = fixture.run(&pipelines, CancellationToken::new()).await;
    assert!(
        matches!(&exit, ShardExit::Halted(reason)
            if reason.contains("pipeline strict") && reason.contains("DYNASTREAM_ON_TRIMMED=stop")),
        "{exit:?}"
    );
    in_order(&lenient.delivered(), &written[1..]);
    assert!(strict.delivered().is_empty(), "strict stops at the gap");
    let stored = fixture.stored();
    assert_eq!(stored.pipeline_checkpoints["lenient"], Checkpoint::ShardEnd);
    assert_eq!(
        stored.pipeline_checkpoints.get("strict"),
        Some(&Checkpoint::Sequence(written[0].clone())),
        "strict resumes before the gap once an operator acts"
    );
}

#[tokio::test(start_paused = true)]
async fn a_checkpoint_interval_paces_each_pipelines_writes_and_stopping_writes_the_rest() {
    let mut counters = Vec::new();
    for interval in [Duration::ZERO, Duration::from_secs(5)] {
        let fixture = Fixture::new(Checkpoint::TrimHorizon).await;
        let want = fixture.put(100);
        let targets = [Target::new(), Target::new()];
        let pipelines = Pipelines::named(
            ["search", "audit"]
                .iter()
                .zip(&targets)
                .map(|(name, target)| Fixture::pipeline(name, target, false))
                .collect(),
            1_000,
        );
        let shutdown = CancellationToken::new();
        let settings = ShardSettings {
            checkpoint_interval: interval,
            ..Fixture::settings()
        };
        let run = fixture.run_with(&pipelines, settings, shutdown.clone());
        let last = Checkpoint::Sequence(want[99].clone());
        let stop = async {
            crate::test_support::eventually(
                Duration::from_secs(60),
                || {
                    fixture
                        .stored()
                        .pipeline_checkpoints
                        .values()
                        .all(|c| *c == last)
                        && fixture.stored().pipeline_checkpoints.len() == 2
                },
                || format!("both pipelines checkpointed: {:?}", fixture.stored()),
            )
            .await;
            shutdown.cancel();
        };
        let (exit, ()) = tokio::join!(run, stop);
        assert_eq!(exit, ShardExit::Stopped);
        for target in &targets {
            in_order(&target.delivered(), &want);
        }
        counters.push(fixture.stored().counter);
    }
    // Ten batches a pipeline: twenty writes after every batch (and the
    // take); with the interval, the take, each pipeline's first batch at
    // once (its checkpoint must leave LATEST), and the rest once the
    // interval is up.
    assert_eq!(
        counters,
        vec![21, 5],
        "lease writes without and with the interval"
    );
}

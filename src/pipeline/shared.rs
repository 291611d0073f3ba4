//! One shard read once for several pipelines: the reader, the state the
//! pipelines' consumers share with it, and how their exits combine.
//!
//! The reader reads when a pipeline reading from the log is within a page
//! of its end (one page ahead of the fastest, as the plain consumer reads
//! ahead), or, when every live pipeline reads on its own, while the log has
//! room, so those catching up find the log ahead of them. Pages every
//! pipeline reading from the log has taken are dropped at once.

use std::ops::Not;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::consumer::PipelineConsumer;
use super::log::PageLog;
use super::{shared_on_trimmed, Parents, Pipeline};
use crate::lease::held::HeldLease;
use crate::lease::{Checkpoint, PipelineStart};
use crate::record::{SequenceNumber, StreamRecord};
use crate::shard::cursor::{Cursor, Read};
use crate::shard::{newest_created, ShardExit, ShardSettings};
use crate::streams::{StreamsApi, MAX_RECORDS_PER_READ};
use crate::telemetry::metrics;

/// A leased shard read once into several pipelines.
pub struct SharedShard {
    pub(super) stream_arn: Arc<str>,
    pub(super) shard_id: Arc<str>,
    pub(super) api: Arc<dyn StreamsApi>,
    pub(super) lease: Arc<HeldLease>,
    pub(super) settings: ShardSettings,
    pub(super) pipelines: Arc<[Arc<Pipeline>]>,
    pub(super) buffer_records: usize,
    pub(super) parents: Parents,
}

impl SharedShard {
    /// Runs the reader and every pipeline's consumer until each pipeline has
    /// ended, stopped or failed; the reader stops when no pipeline needs it.
    pub async fn run(self, shutdown: CancellationToken) -> ShardExit {
        let lease = self.lease.snapshot().await;
        let declared: Arc<[PipelineStart]> = self.pipelines.iter().map(|p| p.start()).collect();
        let starts: Vec<Checkpoint> = declared
            .iter()
            .map(|start| lease.pipeline_checkpoint(start))
            .collect();
        let Some(reader_start) = Checkpoint::least_advanced(&starts).cloned() else {
            return ShardExit::Ended;
        };
        let parents_finished = self.parents.finished_when_known(&declared);
        // Every pipeline the reader's first page serves reads from the log
        // from the start, before anything is read (and evicted); one still
        // behind in a parent starts later, with an iterator of its own.
        let in_log: Vec<bool> = starts
            .iter()
            .zip(&parents_finished)
            .map(|(start, finished)| {
                *finished && (matches!(start, Checkpoint::Sequence(_)) || *start == reader_start)
            })
            .collect();
        let ages: Vec<Arc<metrics::ShardMetrics>> = self
            .pipelines
            .iter()
            .map(|pipeline| {
                let of_pipeline =
                    metrics::StreamMetrics::of_pipeline(&self.stream_arn, Some(&pipeline.name));
                Arc::new(of_pipeline.shard(&self.shard_id))
            })
            .collect();
        let metrics = metrics::StreamMetrics::of(&self.stream_arn).shard(&self.shard_id);
        let shared = Arc::new(Shared::new(self.buffer_records, &in_log, ages.clone()));
        let consumers = self.pipelines.iter().enumerate().map(|(index, pipeline)| {
            PipelineConsumer {
                index,
                pipeline: Arc::clone(pipeline),
                shared: Arc::clone(&shared),
                stream_arn: Arc::clone(&self.stream_arn),
                shard_id: Arc::clone(&self.shard_id),
                api: Arc::clone(&self.api),
                lease: Arc::clone(&self.lease),
                declared: Arc::clone(&declared),
                poll: self.settings.clone(),
                joins_unseen: starts[index] == reader_start,
                in_log: in_log[index],
                parents: parents_finished[index].not().then(|| self.parents.clone()),
                metrics: Arc::clone(&ages[index]),
            }
            .run(starts[index].clone(), shutdown.clone())
        });
        let consumers = async {
            let exits = futures::future::join_all(consumers).await;
            shared.all_finished.cancel();
            exits
        };
        let reader = async {
            if let Some(position) = reader_start.resume_position() {
                let cursor = Cursor::new(
                    Arc::clone(&self.api),
                    Arc::clone(&self.stream_arn),
                    Arc::clone(&self.shard_id),
                    shared_on_trimmed(&self.pipelines),
                    self.lease.lost().clone(),
                    position,
                )
                .skipping_created_before(self.settings.skip_created_before);
                let limit = self
                    .pipelines
                    .iter()
                    .map(|p| {
                        let lanes = p.dispatcher.settings().parallelization_factor.max(1);
                        (p.settings.batch_size as usize).saturating_mul(lanes)
                    })
                    .max()
                    .unwrap_or(1)
                    .clamp(1, MAX_RECORDS_PER_READ as usize);
                read(&shared, cursor, limit, &self.settings, &metrics, &shutdown).await;
            } else {
                shared.finish(None);
            }
        };
        let ((), exits) = tokio::join!(reader, consumers);
        combine(exits, &self.pipelines, shutdown.is_cancelled())
    }
}

/// One exit for the shard from its pipelines' exits: the lease's loss
/// first, then a failure, then a halted pipeline (the shard stays leased
/// so that it resumes from its checkpoint); ended when all ended.
fn combine(exits: Vec<ShardExit>, pipelines: &[Arc<Pipeline>], shutting_down: bool) -> ShardExit {
    if exits.contains(&ShardExit::LeaseLost) {
        return ShardExit::LeaseLost;
    }
    if exits.iter().all(|exit| *exit == ShardExit::Ended) {
        return ShardExit::Ended;
    }
    if shutting_down {
        return ShardExit::Stopped;
    }
    let named =
        |reason: &String, index: usize| format!("pipeline {}: {reason}", pipelines[index].name);
    if let Some((index, ShardExit::Failed(reason))) = exits
        .iter()
        .enumerate()
        .find(|(_, exit)| matches!(exit, ShardExit::Failed(_)))
    {
        return ShardExit::Failed(named(reason, index));
    }
    let halted: Vec<String> = exits
        .iter()
        .enumerate()
        .filter_map(|(index, exit)| match exit {
            ShardExit::Halted(reason) => Some(named(reason, index)),
            _ => None,
        })
        .collect();
    if !halted.is_empty() {
        return ShardExit::Halted(halted.join("; "));
    }
    ShardExit::Stopped
}

/// The reader's loop: read when wanted, append, wait the poll interval
/// after an empty page, end with the shard.
async fn read(
    shared: &Shared,
    mut cursor: Cursor,
    limit: usize,
    settings: &ShardSettings,
    metrics: &metrics::ShardMetrics,
    shutdown: &CancellationToken,
) {
    let mut last_records_at = Instant::now();
    let mut trimmed_before = false;
    loop {
        if !shared.wait_until_wanted(limit, shutdown).await {
            return;
        }
        let read = tokio::select! {
            _ = shared.all_finished.cancelled() => return,
            read = cursor.next(limit, shutdown) => read,
        };
        match read {
            Read::Page { page, .. } => {
                metrics.read_up_to(newest_created(&page.records));
                shared.caught_up_with(metrics);
                if let Some(last) = page.records.last() {
                    cursor.checkpointed(last.sequence_number().clone());
                    last_records_at = Instant::now();
                }
                let empty = page.records.is_empty();
                let closed = page.next_iterator.is_none();
                trimmed_before |= cursor.take_trimmed();
                if !page.records.is_empty() {
                    shared.append(page.records, std::mem::take(&mut trimmed_before));
                }
                if closed {
                    shared.finish(None);
                    return;
                }
                if empty {
                    let pause = settings.empty_read_pause(last_records_at);
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = shared.all_finished.cancelled() => return,
                        _ = tokio::time::sleep(pause) => {}
                    }
                }
            }
            Read::End => {
                shared.finish(None);
                return;
            }
            Read::Exit(exit) => {
                shared.finish(Some(exit));
                return;
            }
        }
    }
}

/// What a pipeline reading from the log gets next.
pub(super) enum Next {
    /// Its next page's records (shared with the log and the other
    /// pipelines), and whether records before them were trimmed unread.
    Page(Arc<[Arc<StreamRecord>]>, bool),
    /// Nothing yet: wait for a change.
    Wait,
    /// Its next page was evicted: read on with an own iterator.
    Evicted,
    /// The reader read the shard to its end and the pipeline has every page.
    End,
    /// The reader stopped for this reason.
    Stopped(ShardExit),
}

/// The log and who reads where, shared by the reader and the consumers.
pub(super) struct Shared {
    state: Mutex<State>,
    /// Bumped when pages are appended or the reader stops.
    changed: watch::Sender<u64>,
    /// Bumped when a pipeline moves, leaves the log or finishes.
    moved: watch::Sender<u64>,
    /// Cancelled when every pipeline has finished: the reader stops.
    pub(super) all_finished: CancellationToken,
    /// Each pipeline's age on this shard: one that has every page of the log
    /// is as far behind as the reader.
    ages: Vec<Arc<metrics::ShardMetrics>>,
}

struct State {
    log: PageLog,
    /// The next page of each pipeline reading from the log; `None` while it
    /// reads on its own or after it finished.
    positions: Vec<Option<u64>>,
    /// Whether each pipeline has been told to wait for the next page (it
    /// has processed, or is gathering, everything the log has).
    waiting: Vec<bool>,
    live: Vec<bool>,
    /// How the reader stopped: `Some(None)` at the shard's end.
    finished: Option<Option<ShardExit>>,
}

impl Shared {
    /// State for pipelines of which those marked in `in_log` read from the
    /// log's first page, whose ages are `ages`.
    pub(super) fn new(
        buffer_records: usize,
        in_log: &[bool],
        ages: Vec<Arc<metrics::ShardMetrics>>,
    ) -> Self {
        Shared {
            state: Mutex::new(State {
                log: PageLog::new(buffer_records),
                positions: in_log.iter().map(|in_log| in_log.then_some(0)).collect(),
                waiting: vec![false; in_log.len()],
                live: vec![true; in_log.len()],
                finished: None,
            }),
            changed: watch::channel(0).0,
            moved: watch::channel(0).0,
            all_finished: CancellationToken::new(),
            ages,
        }
    }

    /// Pipelines reading from the log that have every page of it take the
    /// reader's position (`reader`) as their own.
    fn caught_up_with(&self, reader: &metrics::ShardMetrics) {
        let state = self.lock();
        let end = state.log.end();
        let at_end = state.positions.iter().zip(&state.waiting);
        for ((position, waiting), age) in at_end.zip(&self.ages) {
            if *waiting && *position == Some(end) {
                age.caught_up_with(reader);
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A receiver that sees every change from now on.
    pub(super) fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn bump(sender: &watch::Sender<u64>) {
        sender.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Waits until a pipeline wants the next page; `false` when the reader
    /// must stop instead (shutdown, or no pipeline left).
    async fn wait_until_wanted(&self, limit: usize, shutdown: &CancellationToken) -> bool {
        loop {
            let mut moved = self.moved.subscribe();
            {
                let state = self.lock();
                if !state.live.iter().any(|live| *live) {
                    return false;
                }
                let end = state.log.end();
                let attached: Vec<u64> = state.positions.iter().flatten().copied().collect();
                let wanted = if attached.is_empty() {
                    state.log.has_room_for(limit)
                } else {
                    attached.iter().any(|next| next + 1 >= end)
                };
                if wanted {
                    return true;
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                _ = self.all_finished.cancelled() => return false,
                _ = moved.changed() => {}
            }
        }
    }

    fn append(&self, records: Vec<StreamRecord>, trimmed_before: bool) {
        if records.is_empty() {
            return;
        }
        self.lock().log.append(records, trimmed_before);
        Self::bump(&self.changed);
    }

    fn finish(&self, exit: Option<ShardExit>) {
        self.lock().finished = Some(exit);
        Self::bump(&self.changed);
    }

    /// Pipeline `index`, which has seen everything up to `seen`, reads
    /// from the log again if the log continues its position without a gap;
    /// `false` if it does not.
    pub(super) fn try_attach(&self, index: usize, seen: Option<&SequenceNumber>) -> bool {
        {
            let mut state = self.lock();
            let Some(next) = state.log.resume_after(seen) else {
                return false;
            };
            state.positions[index] = Some(next);
        }
        Self::bump(&self.moved);
        true
    }

    /// The next page for pipeline `index` (which reads from the log) and
    /// moves it past that page.
    pub(super) fn next(&self, index: usize) -> Next {
        let next = {
            let mut state = self.lock();
            let Some(position) = state.positions[index] else {
                return Next::Evicted;
            };
            state.waiting[index] = false;
            if position < state.log.origin() {
                state.positions[index] = None;
                Next::Evicted
            } else if let Some((records, trimmed_before)) = state
                .log
                .get(position)
                .map(|p| (Arc::clone(&p.records), p.trimmed_before))
            {
                state.positions[index] = Some(position + 1);
                let oldest_wanted = state.positions.iter().flatten().min().copied();
                if let Some(oldest) = oldest_wanted {
                    state.log.evict_before(oldest);
                }
                Next::Page(records, trimmed_before)
            } else {
                match &state.finished {
                    None => {
                        state.waiting[index] = true;
                        return Next::Wait;
                    }
                    Some(None) => Next::End,
                    Some(Some(exit)) => Next::Stopped(exit.clone()),
                }
            }
        };
        Self::bump(&self.moved);
        next
    }

    /// Pipeline `index` reads on its own from now on.
    pub(super) fn detach(&self, index: usize) {
        self.lock().positions[index] = None;
        Self::bump(&self.moved);
    }

    /// Pipeline `index` has finished with this shard.
    pub(super) fn leave(&self, index: usize) {
        {
            let mut state = self.lock();
            state.positions[index] = None;
            state.live[index] = false;
        }
        Self::bump(&self.moved);
    }
}

/// The records of `page` after `seen`, which moves to the last of them.
pub(super) fn records_after(
    records: &[Arc<StreamRecord>],
    seen: &mut Option<SequenceNumber>,
) -> Vec<Arc<StreamRecord>> {
    let fresh: Vec<Arc<StreamRecord>> = records
        .iter()
        .filter(|r| seen.as_ref().is_none_or(|s| r.sequence_number() > s))
        .cloned()
        .collect();
    if let Some(last) = fresh.last() {
        *seen = Some(last.sequence_number().clone());
    }
    fresh
}

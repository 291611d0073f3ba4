//! One pipeline's consumer of one shard: takes pages from the shared log
//! (or, behind its window, from an iterator of its own), gathers, dispatches
//! and checkpoints its own progress.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::shared::{records_after, Next, Shared};
use super::{Parents, Pipeline};
use crate::lease::held::HeldLease;
use crate::lease::{Checkpoint, PipelineStart};
use crate::record::{SequenceNumber, StreamRecord};
use crate::shard::cursor::{apply_on_trimmed, Cursor, Read};
use crate::shard::gather::Gatherer;
use crate::shard::{
    deliver, newest_created, write_checkpoint, CheckpointPacer, ShardExit, ShardSettings,
};
use crate::streams::StreamsApi;
use crate::telemetry::metrics::ShardMetrics;

/// Where a consumer takes its next page from.
enum Source {
    /// The shared log (which keeps its position).
    Log,
    /// Its own iterator: it fell behind the log's window.
    Own(Box<Cursor>),
}

/// What the consumer got to process.
struct Taken {
    records: Arc<[Arc<StreamRecord>]>,
    /// No page follows: the shard is read to its end.
    closed: bool,
    /// Read from its own iterator and empty: caught up with the stream.
    idle: bool,
    /// Records before these were trimmed unread by the shared reader.
    trimmed_before: bool,
}

/// One pipeline reading one shard.
pub(super) struct PipelineConsumer {
    pub index: usize,
    pub pipeline: Arc<Pipeline>,
    pub shared: Arc<Shared>,
    pub stream_arn: Arc<str>,
    pub shard_id: Arc<str>,
    pub api: Arc<dyn StreamsApi>,
    pub lease: Arc<HeldLease>,
    pub declared: Arc<[PipelineStart]>,
    /// The application's poll intervals, for reading on its own.
    pub poll: ShardSettings,
    /// Whether it starts where the shared reader starts, so that the
    /// reader's first page follows its position even before it saw a record.
    pub joins_unseen: bool,
    /// Whether it starts reading from the log (else with its own iterator).
    pub in_log: bool,
    /// The parents it has still to finish (elsewhere) before it starts here.
    pub parents: Option<Parents>,
    /// Its position's age on this shard, under its `pipeline` label.
    pub metrics: Arc<ShardMetrics>,
}

impl PipelineConsumer {
    /// Runs from `start` until the shard ends for this pipeline, the lease
    /// is lost, `shutdown` fires or a batch is undeliverable for good.
    pub async fn run(mut self, start: Checkpoint, shutdown: CancellationToken) -> ShardExit {
        let start = match self.parents.take() {
            None => Ok(start),
            Some(parents) => self.wait_for_parents(parents, &shutdown).await,
        };
        let mut pacer = CheckpointPacer::new(self.poll.checkpoint_interval);
        let exit = match start {
            Err(exit) => exit,
            Ok(start) if start.is_shard_end() => ShardExit::Ended,
            Ok(start) => self.consume(start, &mut pacer, &shutdown).await,
        };
        // What was processed but not yet written is written now, unless
        // the lease is gone.
        let exit = match exit {
            ShardExit::LeaseLost | ShardExit::Ended => exit,
            exit => {
                if self.flush(&mut pacer).await {
                    exit
                } else {
                    ShardExit::LeaseLost
                }
            }
        };
        self.shared.leave(self.index);
        match exit {
            ShardExit::Ended => self.metrics.ended(),
            ShardExit::Halted(_) => self.metrics.halted(),
            _ => {}
        }
        exit
    }

    /// Waits until this pipeline has read every parent to its end, and
    /// returns where it starts on this shard then.
    async fn wait_for_parents(
        &self,
        parents: Parents,
        shutdown: &CancellationToken,
    ) -> Result<Checkpoint, ShardExit> {
        tracing::info!(pipeline = %self.pipeline.name, "waiting to finish the parent shard before reading this one");
        let start = self.pipeline.start();
        tokio::select! {
            _ = shutdown.cancelled() => return Err(ShardExit::Stopped),
            _ = self.lease.lost().cancelled() => return Err(ShardExit::LeaseLost),
            () = parents.finished(&start) => {}
        }
        let lease = self.lease.snapshot().await;
        Ok(lease.pipeline_checkpoint(&start))
    }

    async fn consume(
        &self,
        start: Checkpoint,
        pacer: &mut CheckpointPacer,
        shutdown: &CancellationToken,
    ) -> ShardExit {
        for processor in self.pipeline.dispatcher.processors() {
            processor.shard_started(&self.stream_arn, &self.shard_id);
        }
        let mut seen = match &start {
            Checkpoint::Sequence(seq) => Some(seq.clone()),
            _ => None,
        };
        let mut source = if self.in_log {
            Source::Log
        } else {
            Source::Own(Box::new(self.cursor(&start)))
        };
        let mut gatherer = self.gatherer();
        loop {
            if shutdown.is_cancelled() {
                return ShardExit::Stopped;
            }
            if self.lease.is_lost() {
                return ShardExit::LeaseLost;
            }
            let taken = match self
                .take(&mut source, &mut gatherer, &seen, &start, pacer, shutdown)
                .await
            {
                Ok(Some(taken)) => taken,
                Ok(None) => {
                    // Nothing new: hand on a batch whose window closed.
                    if let Some(batch) = gatherer.take_batch(false) {
                        if let Err(exit) = self.process(batch, pacer, shutdown).await {
                            return exit;
                        }
                    }
                    continue;
                }
                Err(exit) => return exit,
            };
            if taken.trimmed_before {
                // What was gathered before the gap is delivered first.
                if let Some(batch) = gatherer.take_batch(true) {
                    if let Err(exit) = self.process(batch, pacer, shutdown).await {
                        return exit;
                    }
                }
                if let Err(exit) = self.crossed_trimmed(&seen) {
                    return exit;
                }
            }
            self.metrics.read_up_to(newest_created(&taken.records));
            let fresh = records_after(&taken.records, &mut seen);
            gatherer.add_shared(fresh);
            if let Some(batch) = gatherer.take_batch(taken.closed) {
                if let Err(exit) = self.process(batch, pacer, shutdown).await {
                    return exit;
                }
            }
            if taken.closed {
                return self.finish().await;
            }
            if let Source::Own(cursor) = &mut source {
                if let Some(last) = &seen {
                    cursor.checkpointed(last.clone());
                }
                if self.attach(seen.as_ref()) {
                    tracing::info!(pipeline = %self.pipeline.name, "caught up: reading from the shared log again");
                    source = Source::Log;
                } else if taken.idle {
                    if !self.flush(pacer).await {
                        return ShardExit::LeaseLost;
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => return ShardExit::Stopped,
                        _ = self.lease.lost().cancelled() => return ShardExit::LeaseLost,
                        _ = tokio::time::sleep(self.poll.poll_interval) => {}
                    }
                }
            }
        }
    }

    /// Attaches to the log where it continues `seen`, if it does.
    fn attach(&self, seen: Option<&SequenceNumber>) -> bool {
        (seen.is_some() || self.joins_unseen) && self.shared.try_attach(self.index, seen)
    }

    /// The next records: `Ok(None)` when there is nothing yet (after
    /// waiting for the log, or for the window of what is gathered).
    async fn take(
        &self,
        source: &mut Source,
        gatherer: &mut Gatherer,
        seen: &Option<SequenceNumber>,
        start: &Checkpoint,
        pacer: &mut CheckpointPacer,
        shutdown: &CancellationToken,
    ) -> Result<Option<Taken>, ShardExit> {
        match source {
            Source::Log => {
                let mut changes = self.shared.changes();
                match self.shared.next(self.index) {
                    Next::Page(records, trimmed_before) => Ok(Some(Taken {
                        records,
                        closed: false,
                        idle: false,
                        trimmed_before,
                    })),
                    Next::End => Ok(Some(Taken {
                        records: Arc::new([]),
                        closed: true,
                        idle: false,
                        trimmed_before: false,
                    })),
                    Next::Stopped(exit) => Err(exit),
                    Next::Evicted => {
                        tracing::info!(pipeline = %self.pipeline.name, "fell behind the shared log: reading on with an iterator of its own");
                        self.shared.detach(self.index);
                        let from = match seen {
                            Some(seq) => Checkpoint::Sequence(seq.clone()),
                            None => start.clone(),
                        };
                        *source = Source::Own(Box::new(self.cursor(&from)));
                        Ok(None)
                    }
                    Next::Wait => {
                        // Caught up with the log: what was processed is
                        // written once its interval is up, even if no
                        // more records come.
                        let flush_at = pacer.pending_due_at();
                        if flush_at.is_some_and(|at| at <= Instant::now()) {
                            return if self.flush(pacer).await {
                                Ok(None)
                            } else {
                                Err(ShardExit::LeaseLost)
                            };
                        }
                        let window = gatherer.window_closes_in().unwrap_or(Duration::MAX);
                        let deadline = match (Instant::now().checked_add(window), flush_at) {
                            (Some(window), Some(flush)) => Some(window.min(flush)),
                            (window, flush) => window.or(flush),
                        };
                        tokio::select! {
                            _ = shutdown.cancelled() => Err(ShardExit::Stopped),
                            _ = self.lease.lost().cancelled() => Err(ShardExit::LeaseLost),
                            _ = changes.changed() => Ok(None),
                            _ = sleep_until(deadline) => Ok(None),
                        }
                    }
                }
            }
            Source::Own(cursor) => match cursor.next(gatherer.room(), shutdown).await {
                Read::Page { page, .. } => Ok(Some(Taken {
                    idle: page.records.is_empty(),
                    closed: page.next_iterator.is_none(),
                    records: page.records.into_iter().map(Arc::new).collect(),
                    trimmed_before: false,
                })),
                Read::End => Ok(Some(Taken {
                    records: Arc::new([]),
                    closed: true,
                    idle: false,
                    trimmed_before: false,
                })),
                Read::Exit(exit) => Err(exit),
            },
        }
    }

    /// The shared reader went on from the oldest record held after records
    /// were trimmed unread: this pipeline skips them too, or halts here
    /// (`DYNASTREAM_ON_TRIMMED=stop`), whatever the other pipelines do.
    fn crossed_trimmed(&self, seen: &Option<SequenceNumber>) -> Result<(), ShardExit> {
        apply_on_trimmed(
            self.pipeline.settings.on_trimmed,
            self.metrics.stream(),
            seen,
            "records were trimmed before the shared reader got to them",
        )
    }

    /// Dispatches a batch and checkpoints this pipeline's progress.
    async fn process(
        &self,
        batch: Vec<Arc<StreamRecord>>,
        pacer: &mut CheckpointPacer,
        shutdown: &CancellationToken,
    ) -> Result<(), ShardExit> {
        let (last, _) = deliver(
            &self.lease,
            &self.pipeline.dispatcher,
            (&self.stream_arn, &self.shard_id),
            batch,
            shutdown,
        )
        .await?;
        let Some(due) = pacer.processed(last) else {
            return Ok(());
        };
        if self.checkpoint(&Checkpoint::Sequence(due)).await {
            pacer.written();
            Ok(())
        } else {
            Err(ShardExit::LeaseLost)
        }
    }

    /// Writes the pending checkpoint, if any; `false` when the lease is gone.
    async fn flush(&self, pacer: &mut CheckpointPacer) -> bool {
        pacer
            .flush(|checkpoint| async move { self.checkpoint(&checkpoint).await })
            .await
    }

    async fn checkpoint(&self, checkpoint: &Checkpoint) -> bool {
        write_checkpoint(&self.lease, checkpoint, || {
            self.lease
                .checkpoint_pipeline(&self.pipeline.name, checkpoint, &self.declared)
        })
        .await
    }

    async fn finish(&self) -> ShardExit {
        if !self.checkpoint(&Checkpoint::ShardEnd).await {
            return ShardExit::LeaseLost;
        }
        tracing::info!(pipeline = %self.pipeline.name, "shard read to its end for this pipeline");
        for processor in self.pipeline.dispatcher.processors() {
            processor.shard_ended(&self.stream_arn, &self.shard_id);
        }
        ShardExit::Ended
    }

    fn cursor(&self, from: &Checkpoint) -> Cursor {
        Cursor::new(
            Arc::clone(&self.api),
            Arc::clone(&self.stream_arn),
            Arc::clone(&self.shard_id),
            self.pipeline.settings.on_trimmed,
            self.lease.lost().clone(),
            from.resume_position()
                .unwrap_or(crate::streams::IteratorPosition::TrimHorizon),
        )
        .for_pipeline(&self.pipeline.name)
        .skipping_created_before(self.poll.skip_created_before)
    }

    fn gatherer(&self) -> Gatherer {
        let dispatch = self.pipeline.dispatcher.settings();
        let lanes = dispatch.parallelization_factor.max(1);
        Gatherer::new(
            (self.pipeline.settings.batch_size as usize).saturating_mul(lanes),
            dispatch.max_bytes.saturating_mul(lanes as u64),
            self.pipeline.settings.batch_window,
        )
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

//! One shard's consumer loop.
//!
//! GetShardIterator from the checkpoint, then GetRecords in a loop: a page
//! with records is dispatched and checkpointed and the shard is read again at
//! once; an empty page waits the poll interval; a page without a next
//! iterator means the shard is closed and fully read, so it is checkpointed
//! `SHARD_END`. The loop reports how it ended to its coordinator with one
//! [`ShardExit`].
//!
//! Delivery rule: a batch is checkpointed only after every processor
//! succeeded with it, and the next batch is dispatched only after that, so
//! records reach processors at least once and in shard order. The next page
//! is *read* while a batch is processed (one page ahead, never more), so a
//! busy shard waits for one round trip per batch instead of two.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub(crate) mod cursor;
pub(crate) mod gather;

use crate::backoff::Backoff;
use crate::config::OnTrimmed;
use crate::dispatch::{Dispatched, Dispatcher, Undelivered};
use crate::lease::held::HeldLease;
use crate::lease::{Checkpoint, LeaseError};
use crate::record::{SequenceNumber, StreamRecord};
use crate::retry::{retry, Attempt};
use crate::streams::{IteratorPosition, RecordsPage, StreamsApi};
use crate::telemetry::metrics;
use cursor::{Cursor, Read};
use gather::Gatherer;

/// How a shard consumer reads.
#[derive(Debug, Clone)]
pub struct ShardSettings {
    /// Most records per batch (GetRecords asks for at most 1,000).
    pub batch_size: u32,
    /// Wait after an empty read.
    pub poll_interval: Duration,
    /// Wait after an empty read once the shard has been idle for `idle_after`:
    /// a quiet shard costs a call every couple of seconds instead of four a
    /// second, and the first record after the silence waits at most this long.
    pub idle_poll_interval: Duration,
    /// How long a shard must return nothing to be polled at `idle_poll_interval`.
    pub idle_after: Duration,
    /// Longest wait to fill a batch; zero hands records on as soon as a read returns some.
    pub batch_window: Duration,
    /// What to do when the position fell behind the stream's retention.
    pub on_trimmed: OnTrimmed,
    /// The least time between two checkpoint writes of a shard (zero: after
    /// every batch). What was processed is still written when the shard
    /// goes idle (within the interval), ends, or its consumer stops, so only
    /// a crash delivers more again: at most this long's records.
    pub checkpoint_interval: Duration,
    /// Records created before this time (epoch seconds) are passed over:
    /// the stream of a snapshotted table is read from where it was when
    /// the snapshot began, and the snapshot already holds their effect.
    pub skip_created_before: Option<i64>,
}

impl ShardSettings {
    /// The wait after an empty read: the poll interval, or the idle one once
    /// the shard has returned nothing since `idle_after`.
    pub(crate) fn empty_read_pause(&self, last_records_at: Instant) -> Duration {
        if last_records_at.elapsed() >= self.idle_after {
            self.idle_poll_interval
        } else {
            self.poll_interval
        }
    }
}

impl Default for ShardSettings {
    /// The configuration's defaults.
    fn default() -> Self {
        ShardSettings {
            batch_size: 100,
            poll_interval: Duration::from_millis(250),
            idle_poll_interval: Duration::from_secs(2),
            idle_after: Duration::from_secs(30),
            batch_window: Duration::ZERO,
            on_trimmed: OnTrimmed::Skip,
            checkpoint_interval: Duration::ZERO,
            skip_created_before: None,
        }
    }
}

/// How a shard consumer ended: the one message a shard task sends its coordinator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardExit {
    /// The shard is closed and every record was processed and checkpointed
    /// `SHARD_END`: its children may start.
    Ended,
    /// Another worker took the lease (or it could not be kept): this worker
    /// must not touch the shard any more.
    LeaseLost,
    /// Shutdown was requested; the last processed batch is checkpointed.
    Stopped,
    /// A failure that retrying in place cannot fix.
    Failed(String),
    /// Records failed for good and there is nowhere to put them: the shard
    /// stays leased (so nobody else reads past them) but is not read until
    /// an operator acts.
    Halted(String),
}

/// When a shard's progress is written to its lease: after every batch, or
/// at most once per interval after the first, the records processed since
/// the last write waiting as the pending
/// checkpoint (written by [`CheckpointPacer::flush`]'s caller once due while
/// the shard is quiet, and when the consumer stops).
#[derive(Debug)]
pub(crate) struct CheckpointPacer {
    interval: Duration,
    last_write: Option<Instant>,
    pending: Option<SequenceNumber>,
}

impl CheckpointPacer {
    /// A pacer for a lease just taken. Its first checkpoint is written at
    /// once: until then the lease may hold only `LATEST`, and a worker that
    /// took the lease over from there would start at the stream's tip,
    /// skipping what arrived meanwhile.
    pub(crate) fn new(interval: Duration) -> Self {
        CheckpointPacer {
            interval,
            last_write: None,
            pending: None,
        }
    }

    /// Records that everything up to `last` was processed; returns the
    /// checkpoint to write now, if one is due (else it waits as pending).
    pub(crate) fn processed(&mut self, last: SequenceNumber) -> Option<SequenceNumber> {
        let due = self.interval.is_zero()
            || self
                .last_write
                .is_none_or(|at| at.elapsed() >= self.interval);
        if due {
            self.pending = None;
            Some(last)
        } else {
            self.pending = Some(last);
            None
        }
    }

    /// Records that a checkpoint was written now.
    pub(crate) fn written(&mut self) {
        self.last_write = Some(Instant::now());
    }

    /// When the pending checkpoint is due to be written; `None` without one.
    pub(crate) fn pending_due_at(&self) -> Option<Instant> {
        self.pending.as_ref()?;
        Some(
            self.last_write
                .map_or_else(Instant::now, |at| at + self.interval),
        )
    }

    /// Writes the pending checkpoint, if any, with `write` (which says
    /// whether it was written); `false` when the lease is gone.
    pub(crate) async fn flush<F, Fut>(&mut self, write: F) -> bool
    where
        F: FnOnce(Checkpoint) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let Some(last) = self.pending.take() else {
            return true;
        };
        let written = write(Checkpoint::Sequence(last)).await;
        if written {
            self.written();
        }
        written
    }
}

/// Reads one shard under a lease.
pub struct ShardConsumer {
    stream_arn: Arc<str>,
    metrics: metrics::ShardMetrics,
    shard_id: Arc<str>,
    api: Arc<dyn StreamsApi>,
    lease: Arc<HeldLease>,
    dispatcher: Arc<Dispatcher>,
    settings: ShardSettings,
}

/// When the newest of `records` was created; `None` for an empty read
/// (caught up with the stream).
pub(crate) fn newest_created<R: std::borrow::Borrow<StreamRecord>>(records: &[R]) -> Option<i64> {
    records
        .last()
        .and_then(|r| r.borrow().dynamodb.approximate_creation_date_time)
}

impl ShardConsumer {
    /// A consumer for `shard_id` of `stream_arn`, under `lease`.
    pub fn new(
        stream_arn: &str,
        shard_id: &str,
        api: Arc<dyn StreamsApi>,
        lease: Arc<HeldLease>,
        dispatcher: Arc<Dispatcher>,
        settings: ShardSettings,
    ) -> Self {
        let metrics = metrics::StreamMetrics::of(stream_arn).shard(shard_id);
        ShardConsumer {
            stream_arn: Arc::from(stream_arn),
            metrics,
            shard_id: Arc::from(shard_id),
            api,
            lease,
            dispatcher,
            settings,
        }
    }

    /// Runs until the shard ends, the lease is lost, `shutdown` fires or a
    /// fatal error occurs. On shutdown a batch being processed is finished
    /// and checkpointed first.
    pub async fn run(self, shutdown: CancellationToken) -> ShardExit {
        let mut pacer = CheckpointPacer::new(self.settings.checkpoint_interval);
        let exit = self.consume(&mut pacer, &shutdown).await;
        // What was processed but not yet written is written now, unless
        // the lease is gone (the next owner repeats it then).
        match exit {
            ShardExit::LeaseLost | ShardExit::Ended => exit,
            exit if self.flush(&mut pacer).await => exit,
            _ => ShardExit::LeaseLost,
        }
    }

    async fn consume(
        &self,
        pacer: &mut CheckpointPacer,
        shutdown: &CancellationToken,
    ) -> ShardExit {
        let shutdown = shutdown.clone();
        let Some(position) = self.lease.snapshot().await.checkpoint.resume_position() else {
            return ShardExit::Ended;
        };
        let mut cursor = self.cursor(position);
        for processor in self.dispatcher.processors() {
            processor.shard_started(&self.stream_arn, &self.shard_id);
        }
        let mut gatherer = self.gatherer();
        let mut last_records_at = Instant::now();
        loop {
            if shutdown.is_cancelled() {
                return ShardExit::Stopped;
            }
            if self.lease.is_lost() {
                return ShardExit::LeaseLost;
            }
            let page = match self.next_page(&mut cursor, &mut gatherer, &shutdown).await {
                Ok(page) => page,
                Err(exit) => return exit,
            };
            let was_empty = page.records.is_empty();
            if !was_empty {
                last_records_at = Instant::now();
            }
            let shard_closed = page.next_iterator.is_none();
            gatherer.add(page.records);
            if let Some(batch) = gatherer.take_batch(shard_closed) {
                // The next page is read while this batch is processed and
                // checkpointed. It is only read: nothing in it reaches a
                // processor before this batch's checkpoint is written.
                let read_ahead = async {
                    if !was_empty {
                        cursor.read_ahead(gatherer.room(), &shutdown).await;
                    }
                };
                let (done, ()) = tokio::join!(
                    self.process_and_checkpoint(batch, pacer, &shutdown),
                    read_ahead
                );
                match done {
                    Ok(last) => cursor.checkpointed(last),
                    Err(exit) => return exit,
                }
                if cursor.has_page_ahead() {
                    continue;
                }
            }
            if shard_closed {
                return self.finish_shard().await;
            }
            if was_empty {
                let resume_at = Instant::now() + self.poll_pause(last_records_at, &gatherer);
                // A shard that went quiet writes what it processed once the
                // interval allows, during its pause: its checkpoint would
                // otherwise wait for the next record.
                if let Some(due) = pacer.pending_due_at().filter(|due| *due < resume_at) {
                    tokio::select! {
                        _ = shutdown.cancelled() => return ShardExit::Stopped,
                        _ = self.lease.lost().cancelled() => return ShardExit::LeaseLost,
                        _ = tokio::time::sleep_until(due) => {}
                    }
                    if !self.flush(pacer).await {
                        return ShardExit::LeaseLost;
                    }
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return ShardExit::Stopped,
                    _ = self.lease.lost().cancelled() => return ShardExit::LeaseLost,
                    _ = tokio::time::sleep_until(resume_at) => {}
                }
            }
        }
    }

    /// The next page from the cursor, with the gatherer restarted when the
    /// cursor restarted from the checkpoint; `Err` when the shard must end.
    async fn next_page(
        &self,
        cursor: &mut Cursor,
        gatherer: &mut Gatherer,
        shutdown: &CancellationToken,
    ) -> Result<RecordsPage, ShardExit> {
        let page = match cursor.next(gatherer.room(), shutdown).await {
            Read::Page { page, restarted } => {
                if restarted {
                    gatherer.restart();
                }
                page
            }
            Read::End => return Err(self.finish_shard().await),
            Read::Exit(exit) => return Err(exit),
        };
        self.metrics.read_up_to(newest_created(&page.records));
        Ok(page)
    }

    /// A cursor into this shard from `position`, stopping with the lease.
    fn cursor(&self, position: IteratorPosition) -> Cursor {
        Cursor::new(
            Arc::clone(&self.api),
            Arc::clone(&self.stream_arn),
            Arc::clone(&self.shard_id),
            self.settings.on_trimmed,
            self.lease.lost().clone(),
            position,
        )
        .skipping_created_before(self.settings.skip_created_before)
    }

    /// A gatherer that fills a batch for every lane.
    fn gatherer(&self) -> Gatherer {
        let dispatch = self.dispatcher.settings();
        let lanes = dispatch.parallelization_factor.max(1);
        Gatherer::new(
            (self.settings.batch_size as usize).saturating_mul(lanes),
            dispatch.max_bytes.saturating_mul(lanes as u64),
            self.settings.batch_window,
        )
    }

    /// The wait after an empty read: the poll interval (longer once the
    /// shard has been idle), or less if a gathered batch's window closes sooner.
    fn poll_pause(&self, last_records_at: Instant, gatherer: &Gatherer) -> Duration {
        let pause = self.settings.empty_read_pause(last_records_at);
        gatherer
            .window_closes_in()
            .map_or(pause, |closes| pause.min(closes))
    }

    /// Dispatches a batch and checkpoints its last record; returns that
    /// record's sequence number, or how the shard must end.
    async fn process_and_checkpoint(
        &self,
        batch: Vec<Arc<StreamRecord>>,
        pacer: &mut CheckpointPacer,
        shutdown: &CancellationToken,
    ) -> Result<SequenceNumber, ShardExit> {
        let count = batch.len();
        let (last, report) = deliver(
            &self.lease,
            &self.dispatcher,
            (&self.stream_arn, &self.shard_id),
            batch,
            shutdown,
        )
        .await?;
        let Some(due) = pacer.processed(last.clone()) else {
            return Ok(last);
        };
        if self.checkpoint(&Checkpoint::Sequence(due)).await {
            pacer.written();
            tracing::debug!(
                records = count,
                processed = report.processed,
                filtered = report.filtered,
                sent_to_destination = report.sent_to_destination,
                checkpoint = %last,
                "batch done and checkpointed"
            );
            Ok(last)
        } else {
            Err(ShardExit::LeaseLost)
        }
    }

    /// Writes a checkpoint (see [`write_checkpoint`]); `false` when the
    /// lease is gone: the shard must stop.
    async fn checkpoint(&self, checkpoint: &Checkpoint) -> bool {
        write_checkpoint(&self.lease, checkpoint, || {
            self.lease.checkpoint(checkpoint)
        })
        .await
    }

    /// Writes the pending checkpoint, if any; `false` when the lease is gone.
    async fn flush(&self, pacer: &mut CheckpointPacer) -> bool {
        pacer
            .flush(|checkpoint| async move { self.checkpoint(&checkpoint).await })
            .await
    }

    async fn finish_shard(&self) -> ShardExit {
        if !self.checkpoint(&Checkpoint::ShardEnd).await {
            return ShardExit::LeaseLost;
        }
        tracing::info!("shard read to its end and checkpointed SHARD_END");
        for processor in self.dispatcher.processors() {
            processor.shard_ended(&self.stream_arn, &self.shard_id);
        }
        ShardExit::Ended
    }
}

/// Hands a batch to `dispatcher` once records may flow under `lease`;
/// returns the batch's last sequence number (what to checkpoint) and what
/// dispatch did, or how the shard must end.
pub(crate) async fn deliver(
    lease: &HeldLease,
    dispatcher: &Dispatcher,
    (stream_arn, shard_id): (&Arc<str>, &Arc<str>),
    batch: Vec<Arc<StreamRecord>>,
    shutdown: &CancellationToken,
) -> Result<(SequenceNumber, Dispatched), ShardExit> {
    let last = batch
        .last()
        .map(|r| r.sequence_number().clone())
        .expect("a non-empty batch has a last record");
    wait_for_valid_lease(lease, shutdown).await?;
    let report = dispatcher
        .dispatch(stream_arn, shard_id, batch, lease.lost(), shutdown)
        .await?;
    Ok((last, report))
}

/// Waits until records may flow under `lease`: while renewals are failing,
/// for one to succeed. `Err` when the lease is lost or shutdown comes first.
pub(crate) async fn wait_for_valid_lease(
    lease: &HeldLease,
    shutdown: &CancellationToken,
) -> Result<(), ShardExit> {
    while !lease.is_valid() {
        if lease.is_lost() {
            return Err(ShardExit::LeaseLost);
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Err(ShardExit::Stopped),
            _ = lease.lost().cancelled() => return Err(ShardExit::LeaseLost),
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    Ok(())
}

/// Writes `checkpoint` with `write`, retrying transient failures while the
/// lease is still valid (even during shutdown: the last batch must be
/// recorded). `false` when the lease is gone.
pub(crate) async fn write_checkpoint<C, F, Fut>(lease: &HeldLease, checkpoint: &C, write: F) -> bool
where
    C: std::fmt::Display + ?Sized,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), LeaseError>>,
{
    let never = CancellationToken::new();
    let written = retry(&mut Backoff::for_aws_calls(), &never, || async {
        match write().await {
            Ok(()) => Attempt::Done(()),
            Err(LeaseError::Conflict { .. }) => {
                tracing::warn!(%checkpoint, "checkpoint refused: another worker owns the lease now");
                Attempt::Fail(())
            }
            Err(err) if err.is_retryable() && lease.is_valid() => {
                tracing::warn!(error = %err, "checkpoint failed; retrying");
                Attempt::Retry(())
            }
            Err(err) => {
                tracing::error!(error = %err, %checkpoint, "checkpoint failed; giving the shard up so the next owner resumes from the last checkpoint");
                Attempt::Fail(())
            }
        }
    })
    .await;
    written.is_ok()
}

impl From<Undelivered> for ShardExit {
    /// How a shard ends when a batch could not be delivered.
    fn from(undelivered: Undelivered) -> Self {
        match undelivered {
            Undelivered::LeaseLost => ShardExit::LeaseLost,
            Undelivered::ShuttingDown => ShardExit::Stopped,
            Undelivered::Halted(reason) => ShardExit::Halted(reason),
        }
    }
}

#[cfg(test)]
mod tests;

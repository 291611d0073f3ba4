//! Where a shard consumer is in its shard: the GetRecords cursor.
//!
//! It holds the position to (re-)acquire an iterator from (the checkpoint,
//! TRIM_HORIZON, LATEST, then after each checkpointed batch), the current
//! iterator, and at most one page read ahead. It retries transient failures
//! with one backoff (reset after each successful call), re-acquires an
//! expired iterator from the last checkpointed record, and decides what a
//! trimmed position means: data loss only when the position named records
//! the stream no longer holds.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::OnTrimmed;
use crate::retry::{retry, Attempt, RetryError};
use crate::streams::{
    IteratorPosition, RecordsPage, StreamsApi, StreamsError, MAX_RECORDS_PER_READ,
};
use crate::telemetry::events::{IteratorExpired, TrimmedDataSkipped, TrimmedDataStopped};
use crate::telemetry::metrics::StreamMetrics;

use super::ShardExit;

/// What a read came to.
#[derive(Debug)]
pub(crate) enum Read {
    /// A page (possibly empty; without a next iterator when the shard is
    /// closed and this was its last page). `restarted` when the iterator
    /// was (re-)acquired for it: reading resumed after the last checkpoint,
    /// so records gathered since then come again.
    Page { page: RecordsPage, restarted: bool },
    /// The shard has no more records to read: it is closed and read to its
    /// end, or gone.
    End,
    /// The consumer must stop.
    Exit(ShardExit),
}

/// The shard's iterator, its position and its read-ahead.
pub(crate) struct Cursor {
    api: Arc<dyn StreamsApi>,
    stream_arn: Arc<str>,
    shard_id: Arc<str>,
    stream: Arc<StreamMetrics>,
    on_trimmed: OnTrimmed,
    lease_lost: CancellationToken,
    position: IteratorPosition,
    iterator: Option<String>,
    ahead: Option<Result<RecordsPage, StreamsError>>,
    backoff: Backoff,
    announced: bool,
    /// Whether the position fell behind the stream's retention and reading
    /// went on from the oldest record held, since [`Cursor::take_trimmed`].
    trimmed: bool,
    /// Records created before this (epoch seconds) are passed over.
    skip_created_before: Option<i64>,
}

/// Why a call gave no page.
enum Setback {
    /// The iterator was dropped or the position moved: acquire again now.
    Again,
    /// Nothing more to read here.
    Exit(Read),
}

impl Cursor {
    /// A cursor that starts at `position`, stopping its waits when
    /// `lease_lost` fires.
    pub(crate) fn new(
        api: Arc<dyn StreamsApi>,
        stream_arn: Arc<str>,
        shard_id: Arc<str>,
        on_trimmed: OnTrimmed,
        lease_lost: CancellationToken,
        position: IteratorPosition,
    ) -> Self {
        Cursor {
            stream: StreamMetrics::of(&stream_arn),
            api,
            stream_arn,
            shard_id,
            on_trimmed,
            lease_lost,
            position,
            iterator: None,
            ahead: None,
            backoff: Backoff::for_aws_calls(),
            announced: false,
            trimmed: false,
            skip_created_before: None,
        }
    }

    /// Passes over records created before `cutoff` (epoch seconds): the
    /// changes a table's snapshot already holds.
    pub(crate) fn skipping_created_before(mut self, cutoff: Option<i64>) -> Self {
        self.skip_created_before = cutoff;
        self
    }

    /// Counts what this cursor loses to the stream's retention under the
    /// named pipeline it reads for (a lagging pipeline's own iterator).
    pub(crate) fn for_pipeline(mut self, pipeline: &str) -> Self {
        self.stream = StreamMetrics::of_pipeline(&self.stream_arn, Some(pipeline));
        self
    }

    /// The next page of at most `limit` records (clamped to 1..=1,000): the
    /// page read ahead if there is one, else a GetRecords call, acquiring an
    /// iterator first when there is none.
    pub(crate) async fn next(&mut self, limit: usize, shutdown: &CancellationToken) -> Read {
        let mut restarted = false;
        loop {
            if self.iterator.is_none() {
                restarted = true;
                self.ahead = None;
                match self.acquire(shutdown).await {
                    Ok(()) => {}
                    Err(Setback::Again) => continue,
                    Err(Setback::Exit(read)) => return read,
                }
            }
            match self.fetch(limit, shutdown).await {
                Ok(page) => return Read::Page { page, restarted },
                Err(Setback::Again) => continue,
                Err(Setback::Exit(read)) => return read,
            }
        }
    }

    /// Whether a page was read ahead: the caller reads it at once instead of
    /// waiting the poll interval.
    pub(crate) fn has_page_ahead(&self) -> bool {
        self.ahead.is_some()
    }

    /// Reads the next page while the caller processes the last one, so a
    /// busy shard waits for one round trip per batch instead of two. Nothing
    /// is read when there is no iterator (the shard ended) or when shutdown
    /// or the loss of the lease interrupts the call.
    pub(crate) async fn read_ahead(&mut self, limit: usize, shutdown: &CancellationToken) {
        let Some(iterator) = self.iterator.as_deref() else {
            return;
        };
        let limit = limit.clamp(1, MAX_RECORDS_PER_READ as usize) as u32;
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = self.lease_lost.cancelled() => {}
            answer = self.api.get_records(&self.stream_arn, iterator, limit) => self.ahead = Some(answer),
        }
    }

    /// Records that everything up to `last` is checkpointed: a re-acquired
    /// iterator starts after it.
    pub(crate) fn checkpointed(&mut self, last: crate::record::SequenceNumber) {
        self.position = IteratorPosition::AfterSequenceNumber(last);
    }

    /// GetShardIterator at the position, retried while transient.
    async fn acquire(&mut self, shutdown: &CancellationToken) -> Result<(), Setback> {
        let (api, arn, shard, position) =
            (&self.api, &self.stream_arn, &self.shard_id, &self.position);
        let acquired = tokio::select! {
            _ = shutdown.cancelled() => return Err(Setback::Exit(Read::Exit(ShardExit::Stopped))),
            _ = self.lease_lost.cancelled() => return Err(Setback::Exit(Read::Exit(ShardExit::LeaseLost))),
            acquired = retry(&mut self.backoff, shutdown, || async {
                classify(api.get_shard_iterator(arn, shard, position).await)
            }) => acquired,
        };
        match acquired {
            Ok(Some(iterator)) => {
                self.backoff.reset();
                if !self.announced {
                    self.announced = true;
                    tracing::info!(position = ?self.position, "shard consumer started");
                }
                self.iterator = Some(iterator);
                Ok(())
            }
            Ok(None) => Err(Setback::Exit(Read::End)),
            Err(RetryError::Cancelled(_)) => Err(Setback::Exit(Read::Exit(ShardExit::Stopped))),
            Err(RetryError::Failed(err)) => Err(self.judge(err)),
        }
    }

    /// GetRecords on the held iterator (or the page read ahead, as its first
    /// attempt), retried while transient with the same iterator.
    async fn fetch(
        &mut self,
        limit: usize,
        shutdown: &CancellationToken,
    ) -> Result<RecordsPage, Setback> {
        let Some(iterator) = self.iterator.take() else {
            return Err(Setback::Again);
        };
        let limit = limit.clamp(1, MAX_RECORDS_PER_READ as usize) as u32;
        let mut ahead = self.ahead.take();
        let (api, arn) = (&self.api, &self.stream_arn);
        let iterator_ref = iterator.as_str();
        let fetched = tokio::select! {
            _ = shutdown.cancelled() => return Err(Setback::Exit(Read::Exit(ShardExit::Stopped))),
            _ = self.lease_lost.cancelled() => return Err(Setback::Exit(Read::Exit(ShardExit::LeaseLost))),
            fetched = retry(&mut self.backoff, shutdown, || {
                let answered = ahead.take();
                async move {
                    match answered {
                        Some(answer) => classify(answer),
                        None => classify(api.get_records(arn, iterator_ref, limit).await),
                    }
                }
            }) => fetched,
        };
        match fetched {
            Ok(mut page) => {
                self.backoff.reset();
                self.iterator.clone_from(&page.next_iterator);
                if let Some(cutoff) = self.skip_created_before {
                    // Creation times only grow along a shard: once a page
                    // starts at or after the cutoff, none is passed over.
                    let before = page.records.len();
                    page.records.retain(|record| {
                        record
                            .dynamodb
                            .approximate_creation_date_time
                            .is_none_or(|created| created >= cutoff)
                    });
                    let skipped = before - page.records.len();
                    if skipped > 0 {
                        tracing::debug!(
                            skipped,
                            cutoff,
                            "passed over records older than the table's snapshot"
                        );
                        crate::telemetry::metrics::snapshot_changes_skipped(
                            &self.stream_arn,
                            skipped as u64,
                        );
                    } else if !page.records.is_empty() {
                        self.skip_created_before = None;
                    }
                }
                Ok(page)
            }
            Err(RetryError::Cancelled(_)) => Err(Setback::Exit(Read::Exit(ShardExit::Stopped))),
            Err(RetryError::Failed(err)) => Err(self.judge(err)),
        }
    }

    /// What a failure that retrying the same call cannot fix means for the
    /// shard. The iterator is already dropped.
    fn judge(&mut self, err: StreamsError) -> Setback {
        match err {
            StreamsError::ExpiredIterator(message) => {
                IteratorExpired { message: &message }.emit();
                Setback::Again
            }
            StreamsError::TrimmedData(message)
                if matches!(
                    self.position,
                    IteratorPosition::Latest | IteratorPosition::TrimHorizon
                ) =>
            {
                // Neither position names a record, so none can have been
                // lost. DynamoDB Local answers this way for iterators issued
                // on a shard that was empty at the time (LATEST, and
                // TRIM_HORIZON once records arrive): every record now in the
                // shard is still held, so read it from its start.
                tracing::debug!(%message, position = ?self.position, "iterator without a record position refused as trimmed; reading the shard from its start");
                self.position = IteratorPosition::TrimHorizon;
                Setback::Again
            }
            StreamsError::TrimmedData(message) => self.trimmed(message),
            StreamsError::NotFound(message) => {
                tracing::warn!(%message, "shard no longer exists (trimmed away); treating it as ended");
                Setback::Exit(Read::End)
            }
            err => {
                tracing::error!(error = %err, "stream read failed and cannot be retried");
                Setback::Exit(Read::Exit(ShardExit::Failed(err.to_string())))
            }
        }
    }

    /// The position fell behind the stream's retention: records were lost.
    fn trimmed(&mut self, message: String) -> Setback {
        if let Err(halted) =
            apply_on_trimmed(self.on_trimmed, &self.stream, &self.position, &message)
        {
            return Setback::Exit(Read::Exit(halted));
        }
        self.position = IteratorPosition::TrimHorizon;
        self.trimmed = true;
        Setback::Again
    }

    /// Whether records were trimmed unread (and skipped) since the last call.
    pub(crate) fn take_trimmed(&mut self) -> bool {
        std::mem::take(&mut self.trimmed)
    }
}

/// What `on_trimmed` makes of records lost to the stream's retention after
/// `position`: counted and logged either way; `stop` halts the shard (or
/// the pipeline) there, `skip` lets reading go on from the oldest record held.
pub(crate) fn apply_on_trimmed<P: std::fmt::Debug>(
    on_trimmed: OnTrimmed,
    stream: &StreamMetrics,
    position: &P,
    message: &str,
) -> Result<(), ShardExit> {
    if on_trimmed == OnTrimmed::Stop {
        let reason = format!(
            "the shard position {position:?} fell behind the stream's 24-hour retention \
             (records were lost before they could be read) and DYNASTREAM_ON_TRIMMED=stop: \
             the shard stops here until an operator acts ({message})"
        );
        TrimmedDataStopped {
            stream,
            reason: &reason,
        }
        .emit();
        return Err(ShardExit::Halted(reason));
    }
    TrimmedDataSkipped {
        stream,
        message,
        position,
    }
    .emit();
    Ok(())
}

/// A transient failure is retried with the same call; anything else is
/// judged by the cursor.
fn classify<T>(answer: Result<T, StreamsError>) -> Attempt<T, StreamsError> {
    let attempt = Attempt::from(answer);
    if let Attempt::Retry(err) = &attempt {
        tracing::warn!(error = %err, "stream read failed; retrying");
    }
    attempt
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{EventName, SequenceNumber};
    use crate::streams::memory::{MemoryStreams, Operation};

    const SHARD: &str = "shardId-1";

    struct Setup {
        streams: MemoryStreams,
        arn: String,
    }

    impl Setup {
        fn new() -> Setup {
            let streams = MemoryStreams::new();
            let arn = streams.create_stream("orders", SHARD);
            Setup { streams, arn }
        }

        fn put(&self, count: usize) -> Vec<SequenceNumber> {
            (0..count)
                .map(|i| {
                    self.streams
                        .put(&self.arn, SHARD, EventName::Insert, &format!("k{i}"))
                })
                .collect()
        }

        fn cursor(&self, position: IteratorPosition, on_trimmed: OnTrimmed) -> Cursor {
            Cursor::new(
                Arc::new(self.streams.clone()),
                Arc::from(self.arn.as_str()),
                Arc::from(SHARD),
                on_trimmed,
                CancellationToken::new(),
                position,
            )
        }
    }

    fn sequences(read: &Read) -> Vec<SequenceNumber> {
        match read {
            Read::Page { page, .. } => page
                .records
                .iter()
                .map(|r| r.sequence_number().clone())
                .collect(),
            other => panic!("expected a page, got {other:?}"),
        }
    }

    fn restarted(read: &Read) -> bool {
        matches!(
            read,
            Read::Page {
                restarted: true,
                ..
            }
        )
    }

    #[tokio::test(start_paused = true)]
    async fn trimmed_data_at_trim_horizon_is_not_data_loss() {
        // DynamoDB Local refuses a TRIM_HORIZON iterator issued on an empty
        // shard once records arrive; no record can have been lost.
        let setup = Setup::new();
        let mut cursor = setup.cursor(IteratorPosition::TrimHorizon, OnTrimmed::Stop);
        let shutdown = CancellationToken::new();
        assert!(sequences(&cursor.next(10, &shutdown).await).is_empty());
        let seqs = setup.put(2);
        setup.streams.fail_next(
            Operation::GetRecords,
            StreamsError::TrimmedData("iterator before the trim horizon".into()),
        );
        let read = cursor.next(10, &shutdown).await;
        assert_eq!(sequences(&read), seqs, "read from the start, not halted");
        assert!(restarted(&read));
    }

    #[tokio::test(start_paused = true)]
    async fn trimmed_data_after_a_record_is_data_loss() {
        let setup = Setup::new();
        let seqs = setup.put(3);
        let shutdown = CancellationToken::new();
        let after_first = IteratorPosition::AfterSequenceNumber(seqs[0].clone());
        let trimmed = || StreamsError::TrimmedData("position is before the trim horizon".into());

        setup
            .streams
            .fail_next(Operation::GetShardIterator, trimmed());
        let mut stopping = setup.cursor(after_first.clone(), OnTrimmed::Stop);
        let read = stopping.next(10, &shutdown).await;
        assert!(
            matches!(&read, Read::Exit(ShardExit::Halted(reason)) if reason.contains("DYNASTREAM_ON_TRIMMED=stop")),
            "{read:?}"
        );

        setup
            .streams
            .fail_next(Operation::GetShardIterator, trimmed());
        let mut skipping = setup.cursor(after_first, OnTrimmed::Skip);
        let read = skipping.next(10, &shutdown).await;
        assert_eq!(
            sequences(&read),
            seqs,
            "continues from the oldest record held"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_iterator_is_reacquired_after_the_last_checkpoint() {
        let setup = Setup::new();
        let seqs = setup.put(3);
        let shutdown = CancellationToken::new();
        let mut cursor = setup.cursor(IteratorPosition::TrimHorizon, OnTrimmed::Skip);
        let read = cursor.next(2, &shutdown).await;
        assert_eq!(sequences(&read), seqs[..2].to_vec());
        assert!(
            restarted(&read),
            "the first page comes from a fresh iterator"
        );
        cursor.checkpointed(seqs[0].clone());
        setup.streams.fail_next(
            Operation::GetRecords,
            StreamsError::ExpiredIterator("older than 15 minutes".into()),
        );
        let read = cursor.next(10, &shutdown).await;
        assert_eq!(sequences(&read), seqs[1..].to_vec());
        assert!(restarted(&read));
        assert_eq!(setup.streams.calls("GetShardIterator"), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttled_read_keeps_its_iterator() {
        let setup = Setup::new();
        let seqs = setup.put(1);
        let shutdown = CancellationToken::new();
        let mut cursor = setup.cursor(IteratorPosition::TrimHorizon, OnTrimmed::Skip);
        setup.streams.fail_next(
            Operation::GetRecords,
            StreamsError::Transient {
                operation: "GetRecords",
                kind: crate::aws::FailureKind::Throttled,
                message: "slow down".into(),
            },
        );
        assert_eq!(sequences(&cursor.next(10, &shutdown).await), seqs);
        assert_eq!(setup.streams.calls("GetShardIterator"), 1);
        assert_eq!(setup.streams.calls("GetRecords"), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_page_read_ahead_is_returned_without_another_call() {
        let setup = Setup::new();
        let seqs = setup.put(3);
        let shutdown = CancellationToken::new();
        let mut cursor = setup.cursor(IteratorPosition::TrimHorizon, OnTrimmed::Skip);
        assert_eq!(
            sequences(&cursor.next(1, &shutdown).await),
            seqs[..1].to_vec()
        );
        assert!(!cursor.has_page_ahead());
        cursor.read_ahead(10, &shutdown).await;
        assert!(cursor.has_page_ahead());
        let calls = setup.streams.calls("GetRecords");
        let read = cursor.next(10, &shutdown).await;
        assert_eq!(sequences(&read), seqs[1..].to_vec());
        assert!(!restarted(&read));
        assert_eq!(setup.streams.calls("GetRecords"), calls);
        assert!(!cursor.has_page_ahead());
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_shard_ends_after_its_last_page() {
        let setup = Setup::new();
        let seqs = setup.put(2);
        setup.streams.close_shard(&setup.arn, SHARD);
        let shutdown = CancellationToken::new();
        let mut cursor = setup.cursor(IteratorPosition::TrimHorizon, OnTrimmed::Skip);
        match cursor.next(10, &shutdown).await {
            Read::Page { page, .. } => {
                assert_eq!(page.records.len(), seqs.len());
                assert!(page.next_iterator.is_none(), "the last page");
            }
            other => panic!("{other:?}"),
        }
        cursor.checkpointed(seqs[1].clone());
        // A shard trimmed away after it closed is ended too.
        setup.streams.trim_shard(&setup.arn, SHARD);
        assert!(matches!(cursor.next(10, &shutdown).await, Read::End));
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_a_retry_wait() {
        let setup = Setup::new();
        for _ in 0..100 {
            setup.streams.fail_next(
                Operation::GetShardIterator,
                StreamsError::Transient {
                    operation: "GetShardIterator",
                    kind: crate::aws::FailureKind::Throttled,
                    message: "slow down".into(),
                },
            );
        }
        let shutdown = CancellationToken::new();
        let mut cursor = setup.cursor(IteratorPosition::TrimHorizon, OnTrimmed::Skip);
        let stop_later = {
            let shutdown = shutdown.clone();
            async move {
                tokio::time::sleep(std::time::Duration::from_secs(3)).await;
                shutdown.cancel();
            }
        };
        let started = tokio::time::Instant::now();
        let (read, ()) = tokio::join!(cursor.next(10, &shutdown), stop_later);
        assert!(matches!(read, Read::Exit(ShardExit::Stopped)), "{read:?}");
        assert_eq!(started.elapsed(), std::time::Duration::from_secs(3));
    }
}

//! A bound on the DynamoDB Streams calls a worker has in flight.
//!
//! Every call in flight holds an HTTP connection, and the SDK's connection
//! pool keeps every connection it ever opened until it has been idle for 90
//! seconds. A worker that takes 1,000 shard leases at once would open about
//! 1,000 connections for their first reads (about 70 KB each: buffers and
//! channels), and keep them while its quiet shards take turns polling. The
//! AWS SDKs for Java bound the same thing at 50 connections by default. The
//! bound queues calls in arrival order; with calls of a few milliseconds it
//! costs a quiet worker nothing, and `DYNASTREAM_STREAMS_CONCURRENCY` raises
//! it for many busy shards far from their region.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::Semaphore;

use super::{IteratorPosition, RecordsPage, StreamPage, StreamSummary, StreamsApi, StreamsError};

/// Wraps a [`StreamsApi`] so that at most `limit` calls are in flight.
#[derive(Debug)]
pub struct ConcurrencyLimit<S> {
    inner: S,
    permits: Arc<Semaphore>,
}

impl<S: StreamsApi> ConcurrencyLimit<S> {
    /// Allows `limit` calls at once (at least one).
    pub fn new(inner: S, limit: usize) -> Self {
        ConcurrencyLimit {
            inner,
            permits: Arc::new(Semaphore::new(limit.max(1))),
        }
    }

    async fn permit(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        // The semaphore is never closed; should it be, calls go through
        // unbounded rather than fail.
        self.permits.acquire().await.ok()
    }
}

#[async_trait]
impl<S: StreamsApi> StreamsApi for ConcurrencyLimit<S> {
    async fn list_streams(&self, table_name: &str) -> Result<Vec<StreamSummary>, StreamsError> {
        let _permit = self.permit().await;
        self.inner.list_streams(table_name).await
    }

    async fn describe_stream(
        &self,
        stream_arn: &str,
        exclusive_start_shard_id: Option<&str>,
        children_of: Option<&str>,
    ) -> Result<StreamPage, StreamsError> {
        let _permit = self.permit().await;
        self.inner
            .describe_stream(stream_arn, exclusive_start_shard_id, children_of)
            .await
    }

    async fn get_shard_iterator(
        &self,
        stream_arn: &str,
        shard_id: &str,
        position: &IteratorPosition,
    ) -> Result<Option<String>, StreamsError> {
        let _permit = self.permit().await;
        self.inner
            .get_shard_iterator(stream_arn, shard_id, position)
            .await
    }

    async fn get_records(
        &self,
        stream_arn: &str,
        iterator: &str,
        limit: u32,
    ) -> Result<RecordsPage, StreamsError> {
        let _permit = self.permit().await;
        self.inner.get_records(stream_arn, iterator, limit).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    /// Counts calls in flight and remembers the most seen at once.
    #[derive(Debug, Default)]
    struct Slow {
        in_flight: AtomicUsize,
        most: AtomicUsize,
    }

    #[async_trait]
    impl StreamsApi for Slow {
        async fn list_streams(&self, _: &str) -> Result<Vec<StreamSummary>, StreamsError> {
            Ok(Vec::new())
        }
        async fn describe_stream(
            &self,
            _: &str,
            _: Option<&str>,
            _: Option<&str>,
        ) -> Result<StreamPage, StreamsError> {
            Err(StreamsError::NotFound("not scripted".into()))
        }
        async fn get_shard_iterator(
            &self,
            _: &str,
            _: &str,
            _: &IteratorPosition,
        ) -> Result<Option<String>, StreamsError> {
            Ok(None)
        }
        async fn get_records(&self, _: &str, _: &str, _: u32) -> Result<RecordsPage, StreamsError> {
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(10)).await;
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            Ok(RecordsPage {
                records: Vec::new(),
                next_iterator: Some("next".into()),
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn no_more_calls_than_the_limit_are_in_flight_and_every_call_completes() {
        let limited = Arc::new(ConcurrencyLimit::new(Slow::default(), 8));
        let calls = (0..1_000).map(|_| {
            let limited = Arc::clone(&limited);
            async move { limited.get_records("arn", "it", 100).await }
        });
        let results = futures::future::join_all(calls).await;
        assert!(results.iter().all(Result::is_ok));
        assert_eq!(limited.inner.most.load(Ordering::SeqCst), 8);
    }
}

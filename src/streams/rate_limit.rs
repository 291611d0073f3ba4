//! A DescribeStream budget per worker.
//!
//! DynamoDB Streams allows about 10 DescribeStream calls a second per account,
//! shared by every consumer; the KCL adapter's users hit that limit as their
//! shard counts grew. Each worker therefore spaces its own DescribeStream
//! calls to a configured rate, so a fleet stays well below the account limit
//! whatever happens (restarts, many shards ending at once). The other calls
//! are per shard and pass through untouched.

use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::{IteratorPosition, RecordsPage, StreamPage, StreamSummary, StreamsApi, StreamsError};

/// Wraps a [`StreamsApi`] so that DescribeStream is called at most `rate` times a second.
#[derive(Debug)]
pub struct DescribeRateLimit<S> {
    inner: S,
    spacing: Duration,
    next_slot: Mutex<Option<Instant>>,
}

impl<S: StreamsApi> DescribeRateLimit<S> {
    /// Allows `calls_per_second` DescribeStream calls a second (at least 0.01).
    pub fn new(inner: S, calls_per_second: f64) -> Self {
        let spacing = Duration::from_secs_f64(1.0 / calls_per_second.max(0.01));
        DescribeRateLimit {
            inner,
            spacing,
            next_slot: Mutex::new(None),
        }
    }

    /// Waits for this call's slot. Cancellation safe: a dropped wait gives
    /// its slot up only by leaving a gap, never by exceeding the rate.
    async fn wait_for_slot(&self) {
        let slot = {
            let mut next = self.next_slot.lock().await;
            let now = Instant::now();
            let slot = next.map_or(now, |n| n.max(now));
            *next = Some(slot + self.spacing);
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

#[async_trait]
impl<S: StreamsApi> StreamsApi for DescribeRateLimit<S> {
    async fn list_streams(&self, table_name: &str) -> Result<Vec<StreamSummary>, StreamsError> {
        self.inner.list_streams(table_name).await
    }

    async fn describe_stream(
        &self,
        stream_arn: &str,
        exclusive_start_shard_id: Option<&str>,
        children_of: Option<&str>,
    ) -> Result<StreamPage, StreamsError> {
        self.wait_for_slot().await;
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
        self.inner.get_records(stream_arn, iterator, limit).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::streams::memory::MemoryStreams;

    #[tokio::test(start_paused = true)]
    async fn describe_calls_are_spaced_to_the_rate() {
        let model = MemoryStreams::new();
        let arn = model.create_stream("t", "shard-0");
        let limited = std::sync::Arc::new(DescribeRateLimit::new(model.clone(), 2.0));
        let start = Instant::now();
        let calls = (0..5).map(|_| {
            let limited = limited.clone();
            let arn = arn.clone();
            tokio::spawn(async move {
                limited.describe_stream(&arn, None, None).await.unwrap();
                Instant::now()
            })
        });
        let mut finished = Vec::new();
        for call in calls {
            finished.push(call.await.unwrap() - start);
        }
        finished.sort();
        assert_eq!(model.calls("DescribeStream"), 5);
        // Five calls at 2 per second: at 0, 0.5, 1.0, 1.5 and 2.0 seconds.
        assert_eq!(finished.last().copied(), Some(Duration::from_secs(2)));
        for pair in finished.windows(2) {
            assert!(pair[1] - pair[0] >= Duration::from_millis(500));
        }
        let other = limited.get_shard_iterator(&arn, "shard-0", &IteratorPosition::Latest);
        let before = Instant::now();
        other.await.unwrap();
        assert_eq!(Instant::now(), before, "other calls are not limited");
    }
}

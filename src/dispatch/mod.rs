//! Dispatch: getting a batch through every processor, with retries.
//!
//! A batch counts as processed only when every configured processor has
//! succeeded with it; until then it is retried with exponential backoff and
//! jitter, and nothing after it is read, so a shard never skips a record. A
//! failing processor stalls its shard loudly (an error log per attempt)
//! rather than dropping data.

pub mod filter;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::processor::{Batch, BatchOutcome, Processor, ProcessorError};

/// Why a delivery ended without success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Undelivered {
    /// The lease was lost: another worker now owns the shard.
    LeaseLost,
    /// The worker is shutting down; the batch will be read again by the next owner.
    ShuttingDown,
}

/// Hands batches to the configured processors.
#[derive(Clone)]
pub struct Dispatcher {
    processors: Vec<Arc<dyn Processor>>,
    retry_base: Duration,
    retry_max: Duration,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.processors.iter().map(|p| p.name()).collect();
        f.debug_struct("Dispatcher")
            .field("processors", &names)
            .finish()
    }
}

impl Dispatcher {
    /// A dispatcher over `processors`, each of which must succeed with a batch.
    pub fn new(processors: Vec<Arc<dyn Processor>>) -> Self {
        Dispatcher {
            processors,
            retry_base: Duration::from_millis(200),
            retry_max: Duration::from_secs(30),
        }
    }

    /// Sets the backoff between attempts (first delay, longest delay).
    pub fn with_retry_backoff(mut self, base: Duration, max: Duration) -> Self {
        self.retry_base = base;
        self.retry_max = max;
        self
    }

    /// The processors, for lifecycle notifications.
    pub fn processors(&self) -> &[Arc<dyn Processor>] {
        &self.processors
    }

    async fn attempt(&self, batch: &Batch) -> Result<(), ProcessorError> {
        for processor in &self.processors {
            match processor.process(batch).await? {
                BatchOutcome::Success => {}
                BatchOutcome::PartialFailure(failed) if failed.is_empty() => {}
                BatchOutcome::PartialFailure(failed) => {
                    return Err(ProcessorError::retryable(format!(
                        "{} reported {} failed record(s), first {}",
                        processor.name(),
                        failed.len(),
                        failed.iter().min().map(|s| s.as_str()).unwrap_or("?")
                    )))
                }
            }
        }
        Ok(())
    }

    /// Delivers `batch` to every processor, retrying until all succeed.
    ///
    /// A processor call in flight is never interrupted; between attempts the
    /// wait ends early if `lease_lost` or `shutdown` fires.
    pub async fn deliver(
        &self,
        batch: &Batch,
        lease_lost: &CancellationToken,
        shutdown: &CancellationToken,
    ) -> Result<(), Undelivered> {
        let mut backoff = Backoff::new(self.retry_base, self.retry_max);
        loop {
            let error = match self.attempt(batch).await {
                Ok(()) => return Ok(()),
                Err(error) => error,
            };
            let delay = backoff.next_delay();
            tracing::error!(
                attempt = backoff.attempts(),
                records = batch.len(),
                first_sequence_number = batch.records.first().map(|r| r.sequence_number().as_str()),
                retryable = error.retryable,
                retry_in_ms = delay.as_millis() as u64,
                error = %error.message,
                "batch failed; the shard waits and retries it"
            );
            tokio::select! {
                _ = lease_lost.cancelled() => return Err(Undelivered::LeaseLost),
                _ = shutdown.cancelled() => return Err(Undelivered::ShuttingDown),
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::EventName;
    use crate::streams::memory::test_record;
    use async_trait::async_trait;
    use std::sync::atomic::{AtomicU32, Ordering};

    struct FailTwice(AtomicU32);

    #[async_trait]
    impl Processor for FailTwice {
        fn name(&self) -> &str {
            "fail-twice"
        }
        async fn process(&self, _batch: &Batch) -> Result<BatchOutcome, ProcessorError> {
            if self.0.fetch_add(1, Ordering::SeqCst) < 2 {
                Err(ProcessorError::retryable("not yet"))
            } else {
                Ok(BatchOutcome::Success)
            }
        }
    }

    fn batch() -> Batch {
        let record = test_record("arn:s", &"1".into(), EventName::Insert, "k");
        Batch {
            stream_arn: Arc::from("arn:s"),
            shard_id: Arc::from("shard-1"),
            records: vec![Arc::new(record)],
        }
    }

    #[tokio::test(start_paused = true)]
    async fn failures_are_retried_until_the_processor_succeeds() {
        let processor = Arc::new(FailTwice(AtomicU32::new(0)));
        let dispatcher = Dispatcher::new(vec![processor.clone()]);
        let never = CancellationToken::new();
        dispatcher.deliver(&batch(), &never, &never).await.unwrap();
        assert_eq!(processor.0.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_the_retries_without_success() {
        let processor = Arc::new(FailTwice(AtomicU32::new(0)));
        let dispatcher = Dispatcher::new(vec![processor.clone()]);
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        let result = dispatcher
            .deliver(&batch(), &CancellationToken::new(), &shutdown)
            .await;
        assert_eq!(result, Err(Undelivered::ShuttingDown));
        assert_eq!(processor.0.load(Ordering::SeqCst), 1);
    }
}

//! What the unit tests of several modules share: a processor that records
//! what it was given, a wait for a condition in virtual time, and a lock that
//! survives a test's earlier panic.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::processor::{Batch, BatchOutcome, Processor, ProcessorError};
use crate::record::SequenceNumber;

/// Locks `mutex`, ignoring poisoning: an assertion that failed while holding
/// it should not turn every later check into a second, confusing panic.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Waits until `condition` holds, polling every 10 ms (of virtual time,
/// under `start_paused`); after `timeout` panics with what `describe` says
/// about the state it gave up on.
pub(crate) async fn eventually(
    timeout: Duration,
    mut condition: impl FnMut() -> bool,
    describe: impl FnOnce() -> String,
) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        if Instant::now() >= deadline {
            panic!("{}", describe());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs inside `process` with the attempt's index (0-based, retries
/// included); its error fails the attempt.
pub(crate) type Hook = Box<dyn Fn(usize, &Batch) -> Result<(), ProcessorError> + Send + Sync>;

/// One call of [`Recorder::process`].
#[derive(Debug, Clone)]
pub(crate) struct Attempt {
    /// When it started, in (virtual) time.
    pub at: Instant,
    /// The batch's records, in order.
    pub sequence_numbers: Vec<SequenceNumber>,
}

/// A processor that records every attempt and every lifecycle call, in the
/// order they happen, and succeeds unless its hook says otherwise.
pub(crate) struct Recorder {
    attempts: Mutex<Vec<Attempt>>,
    events: Mutex<Vec<String>>,
    hook: Hook,
}

impl Recorder {
    /// A recorder that runs `hook` on each attempt after recording it.
    pub(crate) fn with_hook(
        hook: impl Fn(usize, &Batch) -> Result<(), ProcessorError> + Send + Sync + 'static,
    ) -> Arc<Self> {
        Arc::new(Recorder {
            attempts: Mutex::new(Vec::new()),
            events: Mutex::new(Vec::new()),
            hook: Box::new(hook),
        })
    }

    /// Every attempt so far.
    pub(crate) fn attempt_log(&self) -> Vec<Attempt> {
        lock(&self.attempts).clone()
    }

    /// The sequence numbers of every attempt, one list per attempt.
    pub(crate) fn attempts(&self) -> Vec<Vec<SequenceNumber>> {
        lock(&self.attempts)
            .iter()
            .map(|attempt| attempt.sequence_numbers.clone())
            .collect()
    }

    /// Every record handed over, in order, retries included.
    pub(crate) fn delivered(&self) -> Vec<SequenceNumber> {
        self.attempts().concat()
    }

    /// The lifecycle calls, as `started <shard>`, `lease lost <shard>`, `ended <shard>`.
    pub(crate) fn events(&self) -> Vec<String> {
        lock(&self.events).clone()
    }
}

#[async_trait]
impl Processor for Recorder {
    fn name(&self) -> &str {
        "recorder"
    }

    async fn process(&self, batch: &Batch) -> Result<BatchOutcome, ProcessorError> {
        let index = {
            let mut attempts = lock(&self.attempts);
            attempts.push(Attempt {
                at: Instant::now(),
                sequence_numbers: batch
                    .records
                    .iter()
                    .map(|r| r.sequence_number().clone())
                    .collect(),
            });
            attempts.len() - 1
        };
        (self.hook)(index, batch).map(|()| BatchOutcome::Success)
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

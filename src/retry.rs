//! The one retry loop of the engine: try, wait a [`Backoff`] delay, try again,
//! until the operation succeeds, says it cannot, or shutdown is requested.
//!
//! Every caller used to write this loop by hand (start-up calls, GetRecords,
//! checkpoints, processor batches), each with its own way of mixing the
//! cancellation in. Here the operation only says what one attempt came to;
//! what it logs or counts on a failure stays with the caller, which knows the
//! context.

use std::future::Future;

use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;

/// Errors that know whether the same call may succeed if tried again later.
pub trait Retryable {
    /// Whether retrying after a backoff may help.
    fn is_retryable(&self) -> bool;
}

impl Retryable for crate::streams::StreamsError {
    fn is_retryable(&self) -> bool {
        crate::streams::StreamsError::is_retryable(self)
    }
}

impl Retryable for crate::tables::TablesError {
    fn is_retryable(&self) -> bool {
        crate::tables::TablesError::is_retryable(self)
    }
}

impl Retryable for crate::lease::LeaseError {
    fn is_retryable(&self) -> bool {
        crate::lease::LeaseError::is_retryable(self)
    }
}

impl Retryable for crate::Error {
    fn is_retryable(&self) -> bool {
        crate::Error::is_retryable(self)
    }
}

/// What one attempt came to, as the operation judges it.
#[derive(Debug)]
pub enum Attempt<T, E> {
    /// It worked: stop with this value.
    Done(T),
    /// It failed in a way a later attempt may not: wait, then try again.
    Retry(E),
    /// It failed for good (or the caller's own limits ran out): stop.
    Fail(E),
}

impl<T, E: Retryable> From<Result<T, E>> for Attempt<T, E> {
    /// Classifies a plain result by the error's own [`Retryable`] verdict.
    fn from(result: Result<T, E>) -> Self {
        match result {
            Ok(value) => Attempt::Done(value),
            Err(err) if err.is_retryable() => Attempt::Retry(err),
            Err(err) => Attempt::Fail(err),
        }
    }
}

/// Why [`retry`] stopped without a value.
#[derive(Debug, PartialEq, Eq)]
pub enum RetryError<E> {
    /// The operation failed for good.
    Failed(E),
    /// Shutdown was requested while a retry was due; this was the last error.
    Cancelled(E),
}

impl<E> RetryError<E> {
    /// The last error, whichever way the loop stopped.
    pub fn into_inner(self) -> E {
        match self {
            RetryError::Failed(err) | RetryError::Cancelled(err) => err,
        }
    }
}

/// Runs `operation` until it is [`Attempt::Done`] or [`Attempt::Fail`],
/// waiting `backoff`'s next delay after each [`Attempt::Retry`].
///
/// The first attempt always runs, even after cancellation, so a drain can
/// still make its last call; a retry does not (the last error is returned as
/// [`RetryError::Cancelled`]). The backoff is the caller's so that it can be
/// reset after a success and kept across calls.
pub async fn retry<T, E, F, Fut>(
    backoff: &mut Backoff,
    cancellation: &CancellationToken,
    operation: F,
) -> Result<T, RetryError<E>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Attempt<T, E>>,
{
    retry_unless_any(backoff, &[cancellation], operation).await
}

/// [`retry`] for a caller that must stop waiting on any of several tokens
/// (a shard stops on shutdown and on losing its lease); the caller tells
/// which one fired by asking them.
pub async fn retry_unless_any<T, E, F, Fut>(
    backoff: &mut Backoff,
    cancellations: &[&CancellationToken],
    mut operation: F,
) -> Result<T, RetryError<E>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Attempt<T, E>>,
{
    loop {
        match operation().await {
            Attempt::Done(value) => return Ok(value),
            Attempt::Fail(err) => return Err(RetryError::Failed(err)),
            Attempt::Retry(err) => {
                if cancellations.iter().any(|c| c.is_cancelled()) {
                    return Err(RetryError::Cancelled(err));
                }
                let delay = backoff.next_delay();
                tokio::select! {
                    _ = any_cancelled(cancellations) => return Err(RetryError::Cancelled(err)),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// Completes when any of `tokens` is cancelled (never, for none).
async fn any_cancelled(tokens: &[&CancellationToken]) {
    if tokens.is_empty() {
        return std::future::pending().await;
    }
    futures::future::select_all(tokens.iter().map(|token| Box::pin(token.cancelled()))).await;
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    use super::*;

    fn backoff() -> Backoff {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(1))
    }

    #[tokio::test(start_paused = true)]
    async fn retries_until_the_operation_succeeds() {
        let calls = AtomicU32::new(0);
        let started = tokio::time::Instant::now();
        let value = retry(&mut backoff(), &CancellationToken::new(), || async {
            match calls.fetch_add(1, Ordering::SeqCst) {
                0 | 1 => Attempt::Retry("busy"),
                n => Attempt::Done(n),
            }
        })
        .await;
        assert_eq!(value, Ok(2));
        // Two delays: at least half of 100 ms, then half of 200 ms.
        assert!(started.elapsed() >= Duration::from_millis(150));
    }

    #[tokio::test(start_paused = true)]
    async fn a_fatal_error_stops_at_once() {
        let calls = AtomicU32::new(0);
        let result: Result<(), _> = retry(&mut backoff(), &CancellationToken::new(), || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Attempt::Fail("denied")
        })
        .await;
        assert_eq!(result, Err(RetryError::Failed("denied")));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn cancellation_ends_the_wait_with_the_last_error() {
        let cancellation = CancellationToken::new();
        let calls = AtomicU32::new(0);
        let cancel_later = {
            let cancellation = cancellation.clone();
            async move {
                tokio::time::sleep(Duration::from_secs(5)).await;
                cancellation.cancel();
            }
        };
        let mut backoff = backoff();
        let (result, ()) = tokio::join!(
            retry(&mut backoff, &cancellation, || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Attempt::<(), _>::Retry("throttled")
            }),
            cancel_later
        );
        assert_eq!(result, Err(RetryError::Cancelled("throttled")));
        // Delays of at most 1 s: some retries ran in 5 s, and none after.
        let calls = calls.load(Ordering::SeqCst);
        assert!((4..=12).contains(&calls), "{calls}");
    }

    #[tokio::test(start_paused = true)]
    async fn after_cancellation_one_attempt_still_runs() {
        let cancellation = CancellationToken::new();
        cancellation.cancel();
        let calls = AtomicU32::new(0);
        let result: Result<(), _> = retry(&mut backoff(), &cancellation, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Attempt::Retry("throttled")
        })
        .await;
        assert_eq!(result, Err(RetryError::Cancelled("throttled")));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn any_of_several_tokens_ends_the_wait() {
        let shutdown = CancellationToken::new();
        let lease_lost = CancellationToken::new();
        let calls = AtomicU32::new(0);
        let lose_later = {
            let lease_lost = lease_lost.clone();
            async move {
                tokio::time::sleep(Duration::from_secs(3)).await;
                lease_lost.cancel();
            }
        };
        let started = tokio::time::Instant::now();
        let mut backoff = Backoff::new(Duration::from_secs(10), Duration::from_secs(10));
        let tokens = [&shutdown, &lease_lost];
        let (result, ()) = tokio::join!(
            retry_unless_any(&mut backoff, &tokens, || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Attempt::<(), _>::Retry("busy")
            }),
            lose_later
        );
        assert_eq!(result, Err(RetryError::Cancelled("busy")));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // The 5..=10 s wait ended when the second token fired, not later.
        assert_eq!(started.elapsed(), Duration::from_secs(3));
    }

    #[test]
    fn results_are_classified_by_the_error() {
        use crate::aws::FailureKind;
        use crate::lease::LeaseError;
        let transient = LeaseError::Transient {
            operation: "Scan",
            kind: FailureKind::Throttled,
            message: "slow down".into(),
        };
        let attempt: Attempt<(), LeaseError> = Err(transient).into();
        assert!(matches!(attempt, Attempt::Retry(_)));
        let attempt: Attempt<(), LeaseError> = Err(LeaseError::Conflict {
            key: "shard-1".into(),
        })
        .into();
        assert!(matches!(
            attempt,
            Attempt::Fail(LeaseError::Conflict { .. })
        ));
        let attempt: Attempt<u8, LeaseError> = Ok(7).into();
        assert!(matches!(attempt, Attempt::Done(7)));
    }
}

//! Waiting for something a worker, a server or a file will eventually show:
//! one polling loop for every integration test, so each test states only
//! what it waits for and what to print when it never comes.

use std::fmt::{self, Display};
use std::future::Future;
use std::time::Duration;

/// How long a test waits for anything a healthy worker does: generous,
/// because two cores run several test binaries and DynamoDB Local at once.
pub const WAIT: Duration = Duration::from_secs(60);

/// How often [`eventually`] looks again.
pub const POLL: Duration = Duration::from_millis(50);

/// What one look of a probe found: the awaited value, or not yet (with
/// what it saw instead, for the panic message when time runs out).
pub trait Outcome {
    /// The value the wait returns.
    type Value;
    /// `Ok(value)` when done; `Err(what was seen)` otherwise.
    fn into_result(self) -> Result<Self::Value, String>;
}

impl Outcome for bool {
    type Value = ();
    fn into_result(self) -> Result<(), String> {
        if self {
            Ok(())
        } else {
            Err(String::new())
        }
    }
}

impl<T> Outcome for Option<T> {
    type Value = T;
    fn into_result(self) -> Result<T, String> {
        self.ok_or_else(String::new)
    }
}

impl<T, E: Display> Outcome for Result<T, E> {
    type Value = T;
    fn into_result(self) -> Result<T, String> {
        self.map_err(|seen| seen.to_string())
    }
}

/// Calls `probe` every [`POLL`] until it is done (`true`, `Some`, `Ok`) and
/// returns its value; after `timeout` panics naming `what`, followed by
/// what the last look saw (the `Err` of a `Result` probe). `what` is
/// formatted only then, so it may describe the state at that moment (see
/// [`lazy`]).
pub async fn eventually<O: Outcome, Fut: Future<Output = O>>(
    timeout: Duration,
    what: impl Display,
    probe: impl FnMut() -> Fut,
) -> O::Value {
    eventually_every(POLL, timeout, what, probe).await
}

/// [`eventually`], looking every `interval`: for probes that are expensive
/// or whose answer cannot change faster (a Prometheus scrape).
pub async fn eventually_every<O: Outcome, Fut: Future<Output = O>>(
    interval: Duration,
    timeout: Duration,
    what: impl Display,
    probe: impl FnMut() -> Fut,
) -> O::Value {
    poll(interval, timeout, probe).await.unwrap_or_else(|seen| {
        let seen = if seen.is_empty() {
            seen
        } else {
            format!("\nlast seen: {seen}")
        };
        panic!("waited {timeout:?} for {what}{seen}")
    })
}

/// The loop under [`eventually`], for a test that goes on when time runs
/// out and lets its own assertions say what is wrong: calls `probe` every
/// `interval` until it is done, or `timeout` has passed (`Err` with what the
/// last look saw).
pub async fn poll<O: Outcome, Fut: Future<Output = O>>(
    interval: Duration,
    timeout: Duration,
    mut probe: impl FnMut() -> Fut,
) -> Result<O::Value, String> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let seen = match probe().await.into_result() {
            Ok(value) => return Ok(value),
            Err(seen) => seen,
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(seen);
        }
        tokio::time::sleep(interval).await;
    }
}

/// A description formatted only when displayed: the worker's logs or the
/// records seen when a wait gives up, not at every look.
pub fn lazy<F: Fn() -> String>(describe: F) -> impl Display {
    struct Lazy<F>(F);
    impl<F: Fn() -> String> Display for Lazy<F> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(&(self.0)())
        }
    }
    Lazy(describe)
}

//! The `exec` processor: each batch is one line to a long-running child.
//!
//! The child is `sh -c <command>`, started on the first batch and kept for
//! the next ones, the way Lambda keeps an execution environment warm. The
//! protocol is one line each way:
//!
//! - dynastream writes the batch as Lambda's event, `{"Records": [...]}`, on
//!   one line (JSON never holds a raw newline) to the child's stdin;
//! - the child answers on one line of its stdout with a JSON object or
//!   `null`, read as Lambda's `StreamsEventResponse` (see
//!   [`super::http::outcome_of_response`]): `null`, `{}` or
//!   `{"batchItemFailures": []}` is a success, `{"batchItemFailures":
//!   [{"itemIdentifier": "<sequence number>"}]}` a partial failure, and
//!   Lambda's error shape `{"errorMessage": "...", "errorType": "..."}` a
//!   failure of the whole batch.
//!
//! Stdout is the protocol channel, so a handler must print elsewhere: the
//! child's stderr is dynastream's, and the adapters in `adapters/` move a
//! Lambda handler's own prints there. One batch is in flight per child; with
//! `DYNASTREAM_EXEC_CONCURRENCY` above 1 a pool of that many children serves
//! batches of different shards (and lanes) at once, started as they are
//! needed. A shard hands its lanes' batches over one at a time, so order per
//! shard and per item key holds whatever the pool's size.
//!
//! A child that exits, closes its pipes, answers something that is not a JSON
//! object, or gives no answer within the timeout fails the batch retryably
//! and is killed (its whole process group, so a handler the shell started is
//! not left behind); the next batch starts a new child after a backoff that
//! grows while children keep failing. Dropping the processor kills the child.

use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{ChildStdin, ChildStdout};
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::http::{excerpt, outcome_of_response, MAX_RESPONSE_BYTES};
use super::{Batch, BatchOutcome, Processor, ProcessorError};
use crate::backoff::Backoff;

/// The variable through which the child learns how long it has per batch
/// (the adapters' `get_remaining_time_in_millis()`).
pub const TIMEOUT_VARIABLE: &str = "DYNASTREAM_EXEC_TIMEOUT_MS";

/// How long a failed child's exit status is awaited, for the error message.
const EXIT_STATUS_WAIT: Duration = Duration::from_millis(500);

/// Writes each batch to a long-running child process.
pub struct ExecProcessor {
    command: String,
    timeout: Duration,
    /// One child's state per slot of the pool.
    slots: Vec<Mutex<State>>,
    /// The slots no batch is using, the most recently used last, so that a
    /// lightly loaded pool keeps reusing its warm children.
    free: std::sync::Mutex<Vec<usize>>,
    /// One permit per free slot.
    permits: tokio::sync::Semaphore,
}

impl std::fmt::Debug for ExecProcessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecProcessor")
            .field("command", &self.command)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// The child, if one is running, and when the next may start.
struct State {
    child: Option<Child>,
    restarts: Backoff,
    next_start: Option<Instant>,
}

/// A running child and its pipes. Dropping it kills the child's process group.
struct Child {
    process: tokio::process::Child,
    pid: u32,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

/// Why an exchange with the child ended without an answer line.
enum Broken {
    /// Writing the batch failed: the child stopped reading its stdin.
    Write(std::io::Error),
    /// Reading the answer failed.
    Read(std::io::Error),
    /// The child closed its stdout (usually: it exited) before answering.
    Eof,
    /// The answer line is longer than [`MAX_RESPONSE_BYTES`].
    TooLong,
}

/// A slot of the pool, given back when the batch that took it is done (or
/// dropped half-way).
struct Slot<'a> {
    index: usize,
    free: &'a std::sync::Mutex<Vec<usize>>,
    _permit: tokio::sync::SemaphorePermit<'a>,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if let Ok(mut free) = self.free.lock() {
            free.push(self.index);
        }
    }
}

impl ExecProcessor {
    /// A processor running `command` through `sh -c`, waiting at most `timeout` per batch.
    pub fn new(command: &str, timeout: Duration) -> ExecProcessor {
        ExecProcessor::pool(
            command,
            timeout,
            1,
            Backoff::new(Duration::from_millis(200), Duration::from_secs(10)),
        )
    }

    fn pool(command: &str, timeout: Duration, size: usize, restarts: Backoff) -> ExecProcessor {
        let size = size.max(1);
        ExecProcessor {
            command: command.to_owned(),
            timeout,
            slots: (0..size)
                .map(|_| {
                    Mutex::new(State {
                        child: None,
                        restarts: restarts.clone(),
                        next_start: None,
                    })
                })
                .collect(),
            free: std::sync::Mutex::new((0..size).rev().collect()),
            permits: tokio::sync::Semaphore::new(size),
        }
    }

    /// Runs up to `children` children at once (`DYNASTREAM_EXEC_CONCURRENCY`).
    pub fn with_concurrency(self, children: usize) -> ExecProcessor {
        let restarts = self.slots[0]
            .try_lock()
            .map(|s| s.restarts.clone())
            .unwrap_or_else(|_| Backoff::new(Duration::from_millis(200), Duration::from_secs(10)));
        ExecProcessor::pool(&self.command, self.timeout, children, restarts)
    }

    /// Sets the backoff between restarts of a failing child (first delay,
    /// longest delay); by default 200 ms doubling to 10 s.
    pub fn with_restart_backoff(self, base: Duration, max: Duration) -> ExecProcessor {
        ExecProcessor::pool(
            &self.command,
            self.timeout,
            self.slots.len(),
            Backoff::new(base, max),
        )
    }

    /// Waits for a free slot of the pool.
    async fn slot(&self) -> Result<Slot<'_>, ProcessorError> {
        let permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| ProcessorError::fatal("exec: the pool is closed"))?;
        let index = self
            .free
            .lock()
            .ok()
            .and_then(|mut free| free.pop())
            .ok_or_else(|| ProcessorError::retryable("exec: no free child slot"))?;
        Ok(Slot {
            index,
            free: &self.free,
            _permit: permit,
        })
    }

    /// Starts a child, after the restart backoff if the last one failed.
    async fn start(&self, state: &mut State) -> Result<Child, ProcessorError> {
        if let Some(at) = state.next_start.take() {
            tokio::time::sleep_until(at).await;
        }
        let mut command = tokio::process::Command::new("sh");
        command
            .arg("-c")
            .arg(&self.command)
            .env(TIMEOUT_VARIABLE, self.timeout.as_millis().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        // Its own process group, so that killing it reaches whatever the
        // shell started, and a terminal's Ctrl-C reaches only dynastream,
        // which then shuts down in order.
        #[cfg(unix)]
        command.process_group(0);
        let spawned = command.spawn().and_then(|mut process| {
            let pid = process.id().unwrap_or(0);
            match (process.stdin.take(), process.stdout.take()) {
                (Some(stdin), Some(stdout)) => Ok(Child {
                    process,
                    pid,
                    stdin,
                    stdout: BufReader::with_capacity(64 * 1024, stdout),
                }),
                _ => Err(std::io::Error::other("the child's pipes are missing")),
            }
        });
        match spawned {
            Ok(child) => {
                tracing::info!(pid = child.pid, command = %self.command, "exec child started");
                Ok(child)
            }
            Err(err) => {
                schedule_restart(state);
                Err(ProcessorError::retryable(format!(
                    "exec: could not start `sh -c {}`: {err}",
                    self.command
                )))
            }
        }
    }

    /// The running child, or a new one if there is none or it has exited.
    async fn child(&self, state: &mut State) -> Result<Child, ProcessorError> {
        if let Some(mut child) = state.child.take() {
            match child.process.try_wait() {
                Ok(None) => return Ok(child),
                Ok(Some(status)) => tracing::warn!(
                    pid = child.pid,
                    status = %status,
                    "exec child exited between batches; starting a new one"
                ),
                Err(err) => tracing::warn!(
                    pid = child.pid,
                    error = %err,
                    "exec child cannot be checked; starting a new one"
                ),
            }
        }
        self.start(state).await
    }

    /// The pid of the first slot's running child, if any.
    #[cfg(test)]
    async fn pid(&self) -> Option<u32> {
        self.slots[0].lock().await.child.as_ref().map(|c| c.pid)
    }

    /// The pids of every running child of the pool.
    #[cfg(test)]
    async fn pids(&self) -> Vec<u32> {
        let mut pids = Vec::new();
        for slot in &self.slots {
            pids.extend(slot.lock().await.child.as_ref().map(|c| c.pid));
        }
        pids
    }
}

/// Sets when the next child may start: later each time children keep failing.
fn schedule_restart(state: &mut State) {
    state.next_start = Some(Instant::now() + state.restarts.next_delay());
}

impl Child {
    /// Writes one line and reads the answer line (without its newline).
    /// Not cancellation safe: a child whose exchange was cut short must be
    /// dropped, since its answer may still come.
    async fn exchange(&mut self, line: &[u8]) -> Result<Vec<u8>, Broken> {
        self.stdin.write_all(line).await.map_err(Broken::Write)?;
        self.stdin.flush().await.map_err(Broken::Write)?;
        let mut answer = Vec::new();
        (&mut self.stdout)
            .take(MAX_RESPONSE_BYTES as u64 + 1)
            .read_until(b'\n', &mut answer)
            .await
            .map_err(Broken::Read)?;
        if answer.last() == Some(&b'\n') {
            answer.pop();
            if answer.last() == Some(&b'\r') {
                answer.pop();
            }
            Ok(answer)
        } else if answer.len() > MAX_RESPONSE_BYTES {
            Err(Broken::TooLong)
        } else {
            Err(Broken::Eof)
        }
    }

    /// Why the child failed, with its exit status if it exits soon.
    async fn describe(&mut self, broken: Broken) -> String {
        let what = match broken {
            Broken::Write(err) => format!("stopped reading its stdin ({err})"),
            Broken::Read(err) => format!("could not be read ({err})"),
            Broken::Eof => "closed its stdout".to_owned(),
            Broken::TooLong => {
                return format!(
                    "exec child (pid {}) answered a line longer than {MAX_RESPONSE_BYTES} bytes; \
                     it was killed and a new one starts with the next batch",
                    self.pid
                )
            }
        };
        match tokio::time::timeout(EXIT_STATUS_WAIT, self.process.wait()).await {
            Ok(Ok(status)) => format!(
                "exec child (pid {}) {what} before answering: it exited with {status}; a new \
                 one starts with the next batch",
                self.pid
            ),
            _ => format!(
                "exec child (pid {}) {what} before answering; it was killed and a new one \
                 starts with the next batch",
                self.pid
            ),
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        // kill_on_drop kills the shell; the group kill also reaches a handler
        // the shell started as its own child rather than exec'ing it.
        #[cfg(unix)]
        if let Some(group) = i32::try_from(self.pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
    }
}

#[async_trait]
impl Processor for ExecProcessor {
    fn name(&self) -> &str {
        "exec"
    }

    async fn process(&self, batch: &Batch) -> Result<BatchOutcome, ProcessorError> {
        let mut line = batch.to_lambda_json();
        line.push(b'\n');
        // One batch in flight per child: the slot is held until the answer is in.
        let slot = self.slot().await?;
        let mut state = self.slots[slot.index].lock().await;
        // The child is out of `state` during the exchange, so that if this
        // call is dropped half-way, the child (whose answer may still come)
        // is dropped and killed with it, never reused out of step.
        let mut child = self.child(&mut state).await?;
        let answer = match tokio::time::timeout(self.timeout, child.exchange(&line)).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(broken)) => {
                let message = child.describe(broken).await;
                drop(child);
                schedule_restart(&mut state);
                return Err(ProcessorError::retryable(message));
            }
            Err(_) => {
                let pid = child.pid;
                drop(child);
                schedule_restart(&mut state);
                return Err(ProcessorError::retryable(format!(
                    "exec child (pid {pid}) gave no answer within {} ms; it was killed and a new \
                     one starts with the next batch",
                    self.timeout.as_millis()
                )));
            }
        };
        let value = match serde_json::from_slice::<Value>(&answer) {
            Ok(value @ (Value::Object(_) | Value::Null)) => value,
            _ => {
                // Stray output on the protocol channel: the next line may be
                // this batch's real answer, so the child is out of step.
                let pid = child.pid;
                drop(child);
                schedule_restart(&mut state);
                return Err(ProcessorError::retryable(format!(
                    "exec child (pid {pid}) answered a line that is not a JSON object: {}; it \
                     was killed and a new one starts with the next batch (a handler must print \
                     to stderr, not stdout)",
                    excerpt(&answer)
                )));
            }
        };
        tracing::debug!(
            pid = child.pid,
            records = batch.len(),
            answer = %excerpt(&answer),
            "exec child answered"
        );
        state.child = Some(child);
        state.restarts.reset();
        outcome_of_response(&value, batch)
            .map_err(|message| ProcessorError::retryable(format!("exec child answered: {message}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::EventName;
    use crate::streams::memory::test_record;
    use std::path::Path;
    use std::sync::Arc;

    fn batch(sequence_numbers: &[&str]) -> Batch {
        Batch {
            stream_arn: Arc::from("arn:s"),
            shard_id: Arc::from("shard-1"),
            records: sequence_numbers
                .iter()
                .map(|s| Arc::new(test_record("arn:s", &(*s).into(), EventName::Insert, s)))
                .collect(),
        }
    }

    fn exec(command: &str, timeout: Duration) -> ExecProcessor {
        ExecProcessor::new(command, timeout)
            .with_restart_backoff(Duration::from_millis(10), Duration::from_millis(50))
    }

    /// A shell snippet that runs `first` the first time and `then` afterwards.
    fn first_time(marker: &Path, first: &str, then: &str) -> String {
        format!(
            "if [ -e '{m}' ]; then {then}; else touch '{m}'; {first}; fi",
            m = marker.display()
        )
    }

    const ANSWER_EMPTY: &str = "while read -r line; do echo '{}'; done";

    #[tokio::test]
    async fn a_pool_serves_concurrent_batches_with_as_many_children() {
        let slow = "while read -r line; do sleep 0.2; echo null; done";
        for (children, expected) in [(1, 1), (3, 3)] {
            let processor = exec(slow, Duration::from_secs(10)).with_concurrency(children);
            let batches = [batch(&["1"]), batch(&["2"]), batch(&["3"])];
            let outcomes =
                futures::future::join_all(batches.iter().map(|b| processor.process(b))).await;
            assert!(outcomes.iter().all(|o| o == &Ok(BatchOutcome::Success)));
            assert_eq!(processor.pids().await.len(), expected, "pool of {children}");
        }
    }

    #[tokio::test]
    async fn a_lightly_loaded_pool_keeps_reusing_one_warm_child() {
        let processor = exec(ANSWER_EMPTY, Duration::from_secs(10)).with_concurrency(8);
        for sequence in ["1", "2", "3"] {
            processor.process(&batch(&[sequence])).await.unwrap();
        }
        assert_eq!(processor.pids().await.len(), 1);
    }

    /// Whether a process is gone (or a zombie nobody reaped yet).
    fn gone(pid: u32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat
                .rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        }
    }

    async fn wait_gone(pid: u32) {
        for _ in 0..100 {
            if gone(pid) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("process {pid} is still running");
    }

    fn read_pid(path: &Path) -> u32 {
        std::fs::read_to_string(path)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    #[tokio::test]
    async fn one_child_answers_many_batches() {
        let processor = exec(ANSWER_EMPTY, Duration::from_secs(5));
        assert_eq!(processor.pid().await, None, "started lazily");
        processor.process(&batch(&["1"])).await.unwrap();
        let pid = processor.pid().await.unwrap();
        for answer in ["1", "2", "3"] {
            assert_eq!(
                processor.process(&batch(&[answer])).await.unwrap(),
                BatchOutcome::Success
            );
        }
        assert_eq!(processor.pid().await, Some(pid), "the same child");
    }

    #[tokio::test]
    async fn null_and_empty_answers_are_success() {
        for answer in [
            "null",
            "{}",
            r#"{"batchItemFailures": []}"#,
            r#"{"batchItemFailures": null}"#,
        ] {
            let command = format!("while read -r line; do echo '{answer}'; done");
            let processor = exec(&command, Duration::from_secs(5));
            assert_eq!(
                processor.process(&batch(&["1"])).await.unwrap(),
                BatchOutcome::Success,
                "{answer}"
            );
        }
    }

    #[tokio::test]
    async fn the_child_gets_lambdas_event_and_reports_partial_failures() {
        // Fails the second record of each batch, by reading the event.
        let script = "import sys, json\n\
                      for line in sys.stdin:\n    \
                          records = json.loads(line)['Records']\n    \
                          seq = records[1]['dynamodb']['SequenceNumber']\n    \
                          print(json.dumps({'batchItemFailures': [{'itemIdentifier': seq}]}), flush=True)\n";
        let command = format!("exec python3 -c \"{script}\"");
        let processor = exec(&command, Duration::from_secs(10));
        assert_eq!(
            processor
                .process(&batch(&["10", "20", "30"]))
                .await
                .unwrap(),
            BatchOutcome::PartialFailure(vec!["20".into()])
        );
        assert_eq!(
            processor.process(&batch(&["40", "50"])).await.unwrap(),
            BatchOutcome::PartialFailure(vec!["50".into()])
        );
    }

    #[tokio::test]
    async fn the_child_learns_its_timeout() {
        let command = format!(
            "while read -r line; do if [ \"${TIMEOUT_VARIABLE}\" = 1234 ]; then echo '{{}}'; else echo wrong; fi; done"
        );
        let processor = exec(&command, Duration::from_millis(1234));
        assert_eq!(
            processor.process(&batch(&["1"])).await.unwrap(),
            BatchOutcome::Success
        );
    }

    #[tokio::test]
    async fn a_crashed_child_fails_the_batch_and_is_restarted() {
        let dir = tempfile::tempdir().unwrap();
        let command = first_time(
            &dir.path().join("crashed"),
            "read -r line; echo 'crashing' >&2; exit 3",
            ANSWER_EMPTY,
        );
        let processor = exec(&command, Duration::from_secs(5));
        let error = processor.process(&batch(&["1"])).await.unwrap_err();
        assert!(error.retryable);
        assert!(error.message.contains("exit status: 3"), "{error}");
        assert!(error.message.contains("closed its stdout"), "{error}");
        assert_eq!(processor.pid().await, None);
        assert_eq!(
            processor.process(&batch(&["1"])).await.unwrap(),
            BatchOutcome::Success
        );
    }

    #[tokio::test]
    async fn a_child_that_exits_between_batches_is_replaced() {
        let processor = exec("read -r line; echo '{}'", Duration::from_secs(5));
        processor.process(&batch(&["1"])).await.unwrap();
        let first = processor.pid().await.unwrap();
        // Once it is a zombie, try_wait sees the exit: the next batch gets a new child.
        wait_gone(first).await;
        assert_eq!(
            processor.process(&batch(&["2"])).await.unwrap(),
            BatchOutcome::Success
        );
        assert_ne!(processor.pid().await, Some(first));
    }

    #[tokio::test]
    async fn a_wedged_child_is_killed_with_its_process_group_and_restarted() {
        let dir = tempfile::tempdir().unwrap();
        let shell_pid = dir.path().join("shell.pid");
        let sleeper_pid = dir.path().join("sleeper.pid");
        let command = first_time(
            &dir.path().join("wedged"),
            &format!(
                "echo $$ > '{}'; read -r line; sleep 30 & echo $! > '{}'; wait",
                shell_pid.display(),
                sleeper_pid.display()
            ),
            ANSWER_EMPTY,
        );
        let processor = exec(&command, Duration::from_millis(500));
        let started = Instant::now();
        let error = processor.process(&batch(&["1"])).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(3));
        assert!(error.retryable);
        assert!(error.message.contains("no answer within 500 ms"), "{error}");
        wait_gone(read_pid(&shell_pid)).await;
        wait_gone(read_pid(&sleeper_pid)).await;
        assert_eq!(
            processor.process(&batch(&["1"])).await.unwrap(),
            BatchOutcome::Success
        );
    }

    #[tokio::test]
    async fn a_garbage_line_fails_the_batch_and_replaces_the_child() {
        let dir = tempfile::tempdir().unwrap();
        let command = first_time(
            &dir.path().join("garbage"),
            "while read -r line; do echo 'processing...'; echo '{}'; done",
            ANSWER_EMPTY,
        );
        let processor = exec(&command, Duration::from_secs(5));
        let error = processor.process(&batch(&["1"])).await.unwrap_err();
        assert!(error.retryable);
        assert!(
            error.message.contains("not a JSON object: processing..."),
            "{error}"
        );
        assert_eq!(processor.pid().await, None, "the out-of-step child is gone");
        assert_eq!(
            processor.process(&batch(&["1"])).await.unwrap(),
            BatchOutcome::Success
        );
        // A JSON value that is not an object is stray output too.
        let processor = exec(
            "while read -r line; do echo 42; done",
            Duration::from_secs(5),
        );
        assert!(processor.process(&batch(&["1"])).await.is_err());
    }

    #[tokio::test]
    async fn a_handler_error_fails_the_whole_batch_and_keeps_the_child() {
        let command = r#"while read -r line; do echo '{"errorMessage": "no such table", "errorType": "ResourceNotFoundException"}'; done"#;
        let processor = exec(command, Duration::from_secs(5));
        let error = processor.process(&batch(&["1"])).await.unwrap_err();
        assert!(error.retryable);
        assert!(
            error
                .message
                .contains("ResourceNotFoundException: no such table"),
            "{error}"
        );
        let pid = processor.pid().await;
        assert!(pid.is_some());
        assert!(processor.process(&batch(&["1"])).await.is_err());
        assert_eq!(processor.pid().await, pid);
    }

    #[tokio::test]
    async fn an_unknown_item_identifier_fails_the_whole_batch() {
        let command = r#"while read -r line; do echo '{"batchItemFailures": [{"itemIdentifier": "999"}]}'; done"#;
        let processor = exec(command, Duration::from_secs(5));
        let error = processor.process(&batch(&["1", "2"])).await.unwrap_err();
        assert!(error.retryable);
        assert!(error.message.contains("whole batch failed"), "{error}");
    }

    #[tokio::test]
    async fn an_overlong_answer_fails_the_batch() {
        let command = "exec python3 -c \"import sys\nfor line in sys.stdin: print('{\\\"x\\\": \\\"' + 'y' * 2000000 + '\\\"}', flush=True)\"";
        let processor = exec(command, Duration::from_secs(10));
        let error = processor.process(&batch(&["1"])).await.unwrap_err();
        assert!(
            error.message.contains("longer than 1048576 bytes"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_command_that_does_not_run_fails_retryably() {
        let processor = exec("exec /nonexistent/handler", Duration::from_secs(5));
        let error = processor.process(&batch(&["1"])).await.unwrap_err();
        assert!(error.retryable);
        assert!(error.message.contains("exit status: 127"), "{error}");
    }

    #[tokio::test]
    async fn dropping_the_processor_kills_the_child_and_what_it_started() {
        let dir = tempfile::tempdir().unwrap();
        let sleeper_pid = dir.path().join("sleeper.pid");
        let command = format!(
            "sleep 30 & echo $! > '{}'; {ANSWER_EMPTY}",
            sleeper_pid.display()
        );
        let processor = exec(&command, Duration::from_secs(5));
        processor.process(&batch(&["1"])).await.unwrap();
        let shell = processor.pid().await.unwrap();
        let sleeper = read_pid(&sleeper_pid);
        assert!(!gone(sleeper));
        drop(processor);
        wait_gone(shell).await;
        wait_gone(sleeper).await;
    }
}

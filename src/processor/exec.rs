//! The `exec` processor (being written).

use std::time::Duration;

use async_trait::async_trait;

use super::{Batch, BatchOutcome, Processor, ProcessorError};

/// Writes each batch to a long-running child process.
#[derive(Debug)]
pub struct ExecProcessor {
    command: String,
    timeout: Duration,
}

impl ExecProcessor {
    /// A processor running `command` through `sh -c`, waiting at most `timeout` per batch.
    pub fn new(command: &str, timeout: Duration) -> ExecProcessor {
        ExecProcessor {
            command: command.to_owned(),
            timeout,
        }
    }
}

#[async_trait]
impl Processor for ExecProcessor {
    fn name(&self) -> &str {
        "exec"
    }

    async fn process(&self, _batch: &Batch) -> Result<BatchOutcome, ProcessorError> {
        Err(ProcessorError::fatal(format!(
            "exec processor for {:?} (timeout {:?}) is not built yet",
            self.command, self.timeout
        )))
    }
}

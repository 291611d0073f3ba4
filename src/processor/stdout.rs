//! The `stdout` processor: one JSON record per line, Lambda-shaped or (with
//! `DYNASTREAM_FORMAT=document`) as a plain document.
//!
//! Logs go to stderr, so stdout carries only records and can be piped
//! straight into `jq` or another program.

use async_trait::async_trait;
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

use super::{Batch, BatchOutcome, Processor, ProcessorError};
use crate::record::RecordFormat;

/// Writes each record as a line of JSON and flushes once per batch.
#[derive(Debug)]
pub struct StdoutProcessor {
    out: Mutex<tokio::io::Stdout>,
    format: RecordFormat,
}

impl StdoutProcessor {
    /// A processor writing Lambda-shaped records to this process's standard output.
    pub fn new() -> Self {
        StdoutProcessor {
            out: Mutex::new(tokio::io::stdout()),
            format: RecordFormat::Lambda,
        }
    }

    /// Writes records in `format` instead.
    pub fn with_format(mut self, format: RecordFormat) -> Self {
        self.format = format;
        self
    }
}

impl Default for StdoutProcessor {
    fn default() -> Self {
        StdoutProcessor::new()
    }
}

#[async_trait]
impl Processor for StdoutProcessor {
    fn name(&self) -> &str {
        "stdout"
    }

    async fn process(&self, batch: &Batch) -> Result<BatchOutcome, ProcessorError> {
        let mut lines = Vec::with_capacity(batch.len() * 512);
        for record in &batch.records {
            self.format.write(record, &mut lines);
            lines.push(b'\n');
        }
        // One lock per batch keeps concurrent shards' lines from interleaving.
        let mut out = self.out.lock().await;
        out.write_all(&lines)
            .await
            .map_err(|e| ProcessorError::retryable(format!("write to stdout: {e}")))?;
        out.flush()
            .await
            .map_err(|e| ProcessorError::retryable(format!("flush stdout: {e}")))?;
        Ok(BatchOutcome::Success)
    }
}

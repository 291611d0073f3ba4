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
    /// Buffers of earlier batches, kept so that a busy worker serializes
    /// into memory it already has: one per batch in flight at most.
    spare: std::sync::Mutex<Vec<Vec<u8>>>,
}

impl StdoutProcessor {
    /// A processor writing Lambda-shaped records to this process's standard output.
    pub fn new() -> Self {
        StdoutProcessor {
            out: Mutex::new(tokio::io::stdout()),
            format: RecordFormat::Lambda,
            spare: std::sync::Mutex::new(Vec::new()),
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
        let mut lines = self.take_buffer();
        lines.reserve(batch.estimated_json_len());
        for record in &batch.records {
            self.format.write(record, &mut lines);
            lines.push(b'\n');
        }
        let written = self.write_out(&lines).await;
        self.return_buffer(lines);
        written.map(|()| BatchOutcome::Success)
    }
}

impl StdoutProcessor {
    fn take_buffer(&self) -> Vec<u8> {
        self.spare
            .lock()
            .map(|mut spare| spare.pop())
            .ok()
            .flatten()
            .unwrap_or_default()
    }

    fn return_buffer(&self, mut buffer: Vec<u8>) {
        /// A buffer grown past this by an outsized batch is let go rather
        /// than held for the life of the process.
        const KEEP_AT_MOST: usize = 16 << 20;
        if buffer.capacity() > KEEP_AT_MOST {
            return;
        }
        buffer.clear();
        if let Ok(mut spare) = self.spare.lock() {
            spare.push(buffer);
        }
    }

    async fn write_out(&self, lines: &[u8]) -> Result<(), ProcessorError> {
        // One lock per batch keeps concurrent shards' lines from interleaving.
        let mut out = self.out.lock().await;
        out.write_all(lines)
            .await
            .map_err(|e| ProcessorError::retryable(format!("write to stdout: {e}")))?;
        out.flush()
            .await
            .map_err(|e| ProcessorError::retryable(format!("flush stdout: {e}")))
    }
}

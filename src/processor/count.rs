//! The `count` processor: counts records and keeps nothing.
//!
//! It measures the read path alone (benchmarks, capacity tests, a dry run of
//! a new table's stream): nothing is serialized or written, so what a run
//! costs is what dynastream itself costs. The counts are in the
//! `dynastream_records_total` metric like every processor's.

use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;

use super::{Batch, BatchOutcome, Processor, ProcessorError};

/// Succeeds with every batch after counting its records.
#[derive(Debug, Default)]
pub struct CountProcessor {
    records: AtomicU64,
}

impl CountProcessor {
    /// A processor that has counted nothing yet.
    pub fn new() -> Self {
        CountProcessor::default()
    }

    /// How many records this processor has received (a retried record counts again).
    pub fn records(&self) -> u64 {
        self.records.load(Ordering::Relaxed)
    }
}

#[async_trait]
impl Processor for CountProcessor {
    fn name(&self) -> &str {
        "count"
    }

    async fn process(&self, batch: &Batch) -> Result<BatchOutcome, ProcessorError> {
        self.records
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        Ok(BatchOutcome::Success)
    }
}

//! Pipelines: one read of each shard feeding several independent consumers.
//!
//! An application with `DYNASTREAM_PIPELINES` runs, for each shard it
//! leases, one reader and one consumer per pipeline. The reader walks the
//! shard with GetRecords into a bounded [`log::PageLog`]; each pipeline's
//! consumer takes pages from it and filters, batches, processes, retries and
//! checkpoints on its own (its checkpoint is its entry in the lease item's
//! `pipelineCheckpoints`). A consumer that falls behind the log's window
//! reads on with its own iterator from its own position and returns to the
//! log once it has caught up: while every pipeline keeps up, each page is
//! read once, and memory stays bounded however far one falls behind.
//!
//! Without `DYNASTREAM_PIPELINES` the application has one unnamed pipeline
//! and each shard runs the plain [`ShardConsumer`], as before.

mod consumer;
mod log;
mod shared;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::OnTrimmed;
use crate::dispatch::Dispatcher;
use crate::lease::held::HeldLease;
use crate::lease::{Lease, PipelineStart};
use crate::processor::Processor;
use crate::shard::{ShardConsumer, ShardExit, ShardSettings};
use crate::streams::StreamsApi;

/// One named pipeline: its own dispatcher (filter, processors, retries,
/// failure destination) and batching.
#[derive(Debug)]
pub struct Pipeline {
    /// Its name: the key of its checkpoints.
    pub name: String,
    /// Where its batches go.
    pub dispatcher: Arc<Dispatcher>,
    /// Its batching (`batch_size`, `batch_window`, `on_trimmed`); the poll
    /// intervals are the application's.
    pub settings: ShardSettings,
    /// Whether, new to a shard, it replays what the stream holds.
    pub from_trim_horizon: bool,
}

impl Pipeline {
    pub(crate) fn start(&self) -> PipelineStart {
        PipelineStart {
            name: self.name.clone(),
            from_trim_horizon: self.from_trim_horizon,
        }
    }
}

/// What each leased shard feeds.
#[derive(Debug, Clone)]
pub enum Pipelines {
    /// The application's one pipeline: the plain shard consumer.
    Single(Arc<Dispatcher>),
    /// Several named pipelines sharing one read of each shard.
    Named {
        /// The pipelines, in declaration order.
        pipelines: Arc<[Arc<Pipeline>]>,
        /// Records of a shard held for pipelines behind the fastest.
        buffer_records: usize,
    },
}

impl From<Arc<Dispatcher>> for Pipelines {
    fn from(dispatcher: Arc<Dispatcher>) -> Self {
        Pipelines::Single(dispatcher)
    }
}

impl Pipelines {
    /// Named pipelines sharing each shard's read, holding up to
    /// `buffer_records` records of a shard for those that lag.
    pub fn named(pipelines: Vec<Pipeline>, buffer_records: usize) -> Self {
        Pipelines::Named {
            pipelines: pipelines.into_iter().map(Arc::new).collect(),
            buffer_records,
        }
    }

    /// Every processor of every pipeline, for the lease lifecycle hooks.
    pub fn processors(&self) -> Vec<Arc<dyn Processor>> {
        match self {
            Pipelines::Single(dispatcher) => dispatcher.processors().to_vec(),
            Pipelines::Named { pipelines, .. } => pipelines
                .iter()
                .flat_map(|p| p.dispatcher.processors().iter().cloned())
                .collect(),
        }
    }

    /// How each named pipeline starts on a shard new to it; empty for the
    /// one unnamed pipeline.
    pub fn starts(&self) -> Vec<PipelineStart> {
        match self {
            Pipelines::Single(_) => Vec::new(),
            Pipelines::Named { pipelines, .. } => pipelines.iter().map(|p| p.start()).collect(),
        }
    }

    /// The task that reads one leased shard into these pipelines. With
    /// several pipelines the shard may start once one of them finished its
    /// `parents`; each of the others starts on it when it has too.
    pub fn shard_task(
        &self,
        stream_arn: &str,
        shard_id: &str,
        api: Arc<dyn StreamsApi>,
        lease: Arc<HeldLease>,
        settings: ShardSettings,
        parents: Parents,
    ) -> ShardTask {
        match self {
            Pipelines::Single(dispatcher) => ShardTask::Single(ShardConsumer::new(
                stream_arn,
                shard_id,
                api,
                lease,
                Arc::clone(dispatcher),
                settings,
            )),
            Pipelines::Named {
                pipelines,
                buffer_records,
            } => ShardTask::Shared(shared::SharedShard {
                stream_arn: Arc::from(stream_arn),
                shard_id: Arc::from(shard_id),
                api,
                lease,
                settings,
                pipelines: Arc::clone(pipelines),
                buffer_records: *buffer_records,
                parents,
            }),
        }
    }
}

/// The parent shards' leases of a shard, which each pipeline must have read
/// to their ends before it reads the shard.
#[derive(Debug, Clone, Default)]
pub struct Parents {
    keys: Vec<String>,
    /// The parents' leases as the coordinator last read them, so that a
    /// shard starting costs no read of the lease table.
    known: Vec<Lease>,
    /// The coordinator's reads of the lease table from now on, so that a
    /// pipeline waiting for a parent costs no read of its own.
    table: Option<LeaseTableWatch>,
}

/// The shard leases as the coordinator last read them, published after each
/// of its looks at the lease table while a pipeline waits for a parent.
pub type LeaseTableWatch = tokio::sync::watch::Receiver<Arc<[Lease]>>;

impl Parents {
    /// The parents whose leases have these keys, as last read (`known`; a
    /// key without a lease there is a parent already collected), and the
    /// coordinator's later reads (`table`).
    pub fn new(keys: Vec<String>, known: Vec<Lease>, table: LeaseTableWatch) -> Self {
        Parents {
            keys,
            known,
            table: Some(table),
        }
    }

    /// Whether `pipeline` has read every parent among `leases` to its end (a
    /// parent whose lease is gone was finished and collected).
    fn finished_in(&self, leases: &[Lease], pipeline: &PipelineStart) -> bool {
        self.keys.iter().all(|key| {
            leases
                .iter()
                .find(|lease| lease.key == *key)
                .is_none_or(|parent| parent.is_finished_by(pipeline))
        })
    }

    /// For each of `pipelines`, whether it had read every parent to its end
    /// when the coordinator last read the lease table.
    fn finished_when_known(&self, pipelines: &[PipelineStart]) -> Vec<bool> {
        pipelines
            .iter()
            .map(|pipeline| self.finished_in(&self.known, pipeline))
            .collect()
    }

    /// Waits for the coordinator's next read of the lease table in which
    /// `pipeline` has read every parent to its end; returns at once without
    /// parents, and never when nothing publishes the table.
    async fn finished(mut self, pipeline: &PipelineStart) {
        if self.keys.is_empty() {
            return;
        }
        let Some(mut table) = self.table.take() else {
            return std::future::pending().await;
        };
        loop {
            if table.changed().await.is_err() {
                return std::future::pending().await;
            }
            let leases = Arc::clone(&table.borrow_and_update());
            if self.finished_in(&leases, pipeline) {
                return;
            }
        }
    }
}

/// One leased shard's work, run by the coordinator until it ends.
pub enum ShardTask {
    /// The plain consumer of a one-pipeline application.
    Single(ShardConsumer),
    /// One reader and a consumer per pipeline.
    Shared(shared::SharedShard),
}

impl ShardTask {
    /// Runs until the shard ends for every pipeline, the lease is lost,
    /// `shutdown` fires or a failure stops it.
    pub async fn run(self, shutdown: CancellationToken) -> ShardExit {
        match self {
            ShardTask::Single(consumer) => consumer.run(shutdown).await,
            ShardTask::Shared(shard) => shard.run(shutdown).await,
        }
    }
}

/// What the shared reader does when its position fell behind the stream's
/// retention: stop only when every pipeline asks to stop, since the others
/// would rather go on from the oldest record held.
fn shared_on_trimmed(pipelines: &[Arc<Pipeline>]) -> OnTrimmed {
    if pipelines
        .iter()
        .all(|p| p.settings.on_trimmed == OnTrimmed::Stop)
    {
        OnTrimmed::Stop
    } else {
        OnTrimmed::Skip
    }
}

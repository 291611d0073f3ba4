//! Leases: which worker reads which shard, and where it got to.
//!
//! One item per shard in a DynamoDB table, in the Java KCL's layout
//! (`leaseKey`, `leaseOwner`, `leaseCounter`, `checkpoint`,
//! `checkpointSubSequenceNumber`, `ownerSwitchesSinceCheckpoint`,
//! `parentShardId`) so that an application can move from the KCL onto its
//! existing lease table. Every write is conditional on the `leaseCounter` and
//! owner the writer last read: the counter is a fencing token, so a worker
//! whose lease was taken cannot checkpoint over its successor.
//!
//! [`LeaseStore`] is the storage seam ([`dynamo::DynamoLeaseStore`] for real,
//! `memory::MemoryLeaseStore` for unit tests); [`held::HeldLease`] is the
//! protocol a worker follows for a lease it owns. The in-memory store is
//! compiled only for unit tests and under the `testing` feature.

pub mod dynamo;
pub mod held;
#[cfg(any(test, feature = "testing"))]
pub mod memory;
pub mod report;

use std::collections::BTreeMap;
use std::fmt;

use async_trait::async_trait;

use crate::aws::FailureKind;
use crate::record::SequenceNumber;
use crate::streams::IteratorPosition;

/// How far a shard has been processed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Checkpoint {
    /// Nothing processed yet; start at the oldest record.
    TrimHorizon,
    /// Nothing processed yet; start at the newest record.
    Latest,
    /// Processed up to and including this record.
    Sequence(SequenceNumber),
    /// The shard is closed and every record in it was processed.
    ShardEnd,
}

impl Checkpoint {
    /// The text stored in the lease table (the KCL's sentinels or a sequence number).
    pub fn as_stored(&self) -> &str {
        match self {
            Checkpoint::TrimHorizon => "TRIM_HORIZON",
            Checkpoint::Latest => "LATEST",
            Checkpoint::ShardEnd => "SHARD_END",
            Checkpoint::Sequence(seq) => seq.as_str(),
        }
    }

    /// Parses the stored text; `None` for anything that is neither a sentinel
    /// nor a decimal sequence number.
    pub fn parse(text: &str) -> Option<Checkpoint> {
        match text {
            "TRIM_HORIZON" => Some(Checkpoint::TrimHorizon),
            "LATEST" => Some(Checkpoint::Latest),
            "SHARD_END" => Some(Checkpoint::ShardEnd),
            digits if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => {
                Some(Checkpoint::Sequence(SequenceNumber(digits.to_owned())))
            }
            _ => None,
        }
    }

    /// Where reading resumes after this checkpoint; `None` once the shard
    /// was read to its end.
    pub fn resume_position(&self) -> Option<IteratorPosition> {
        match self {
            Checkpoint::ShardEnd => None,
            Checkpoint::TrimHorizon => Some(IteratorPosition::TrimHorizon),
            Checkpoint::Latest => Some(IteratorPosition::Latest),
            Checkpoint::Sequence(seq) => Some(IteratorPosition::AfterSequenceNumber(seq.clone())),
        }
    }

    /// Whether the shard was read to its end.
    pub fn is_shard_end(&self) -> bool {
        matches!(self, Checkpoint::ShardEnd)
    }

    /// How far this checkpoint got, for comparing two of one shard: nothing
    /// processed (TRIM_HORIZON before LATEST), then sequence numbers, then
    /// SHARD_END.
    fn progress(&self) -> (u8, Option<&SequenceNumber>) {
        match self {
            Checkpoint::TrimHorizon => (0, None),
            Checkpoint::Latest => (1, None),
            Checkpoint::Sequence(seq) => (2, Some(seq)),
            Checkpoint::ShardEnd => (3, None),
        }
    }

    /// The least advanced of several checkpoints of one shard: where a
    /// reader that must serve all of them resumes. `None` when empty.
    pub fn least_advanced<'a>(
        all: impl IntoIterator<Item = &'a Checkpoint>,
    ) -> Option<&'a Checkpoint> {
        all.into_iter()
            .min_by(|a, b| a.progress().cmp(&b.progress()))
    }
}

impl fmt::Display for Checkpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_stored())
    }
}

/// Key prefix of the items in which workers announce themselves.
pub const WORKER_KEY_PREFIX: &str = "dynastream:worker:";

/// Key of the item whose holder performs full shard syncs.
pub const SHARD_SYNC_LEADER_KEY: &str = "dynastream:leader:shard-sync";

/// Key prefix of the items that register a table with the application:
/// tables found by prefix or tag, and tables being or having been snapshotted.
pub const TABLE_KEY_PREFIX: &str = "dynastream:table:";

/// Key prefix of snapshot segment items (`dynastream:segment:<table>#<n>`).
pub const SEGMENT_KEY_PREFIX: &str = "dynastream:segment:";

/// A table's snapshot as the lease table records it: on the table's item
/// (`segment` is `None`), and on each segment's item, which is a lease the
/// workers share like a shard's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotState {
    /// The table scanned.
    pub table: String,
    /// When the snapshot began, in epoch milliseconds: recorded before the
    /// first Scan, it is where the table's stream is read from afterwards.
    pub started_at_millis: u64,
    /// How many segments the parallel Scan has.
    pub total_segments: u32,
    /// The segment this item is for; `None` on the table's item.
    pub segment: Option<u32>,
    /// Where the segment's Scan resumes: the last page's
    /// `LastEvaluatedKey`, as DynamoDB JSON; `None` before the first page.
    pub resume_key: Option<String>,
    /// Items delivered from this segment so far.
    pub items: u64,
    /// Whether the segment was scanned to its end and every item delivered.
    pub complete: bool,
}

impl SnapshotState {
    /// The key of a table's item.
    pub fn table_key(table: &str) -> String {
        format!("{TABLE_KEY_PREFIX}{table}")
    }

    /// The key of one of a table's segment items.
    pub fn segment_key(table: &str, segment: u32) -> String {
        format!("{SEGMENT_KEY_PREFIX}{table}#{segment}")
    }
}

/// What a lease-table item stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemKind {
    /// A shard's lease.
    Shard,
    /// A worker's presence: renewed while the worker lives, so that others
    /// count it when computing their fair share even before it holds a lease.
    Worker,
    /// The shard-sync leadership: one worker at a time lists whole streams.
    Leader,
    /// A table the application follows without it being configured
    /// (found by prefix or tag), or whose snapshot it takes.
    Table,
    /// One segment of a table's snapshot, leased like a shard.
    Segment,
}

impl ItemKind {
    /// The kind's name in metrics.
    pub fn label(self) -> &'static str {
        match self {
            ItemKind::Shard => "shard",
            ItemKind::Worker => "worker",
            ItemKind::Leader => "leader",
            ItemKind::Table => "table",
            ItemKind::Segment => "segment",
        }
    }

    /// What an item stands for, by its key.
    pub fn of_key(key: &str) -> ItemKind {
        if key.starts_with(WORKER_KEY_PREFIX) {
            ItemKind::Worker
        } else if key.starts_with(TABLE_KEY_PREFIX) {
            ItemKind::Table
        } else if key.starts_with(SEGMENT_KEY_PREFIX) {
            ItemKind::Segment
        } else if key == SHARD_SYNC_LEADER_KEY {
            ItemKind::Leader
        } else {
            ItemKind::Shard
        }
    }
}

/// One lease item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The item's key: the shard id (or, should two streams ever list the
    /// same shard id, `<stream ARN>|<shard id>` for the second one).
    pub key: String,
    /// The shard this lease covers.
    pub shard_id: String,
    /// The stream the shard belongs to; absent in tables written by the KCL.
    pub stream_arn: Option<String>,
    /// The worker holding the lease; `None` when it is free to take.
    pub owner: Option<String>,
    /// Bumped on every write: the fencing token, and the heartbeat others
    /// watch to judge expiry on their own clocks.
    pub counter: u64,
    /// Progress through the shard.
    pub checkpoint: Checkpoint,
    /// The KCL's sub-sequence number (aggregated Kinesis records); always 0 for
    /// DynamoDB Streams, kept for compatibility.
    pub checkpoint_sub_sequence_number: u64,
    /// How many times the lease changed hands since the last checkpoint: a
    /// shard that keeps moving without progress is a warning sign.
    pub owner_switches_since_checkpoint: u64,
    /// The shard's parents; it starts only when they have reached SHARD_END.
    pub parent_shard_ids: Vec<String>,
    /// Wall-clock time of the last write, in epoch milliseconds: for
    /// operators only (`dynastream status`). Expiry is never judged by it,
    /// since hosts' clocks differ.
    pub updated_at_millis: Option<u64>,
    /// A worker that asked for this lease to balance the fleet: the owner
    /// hands it over at its next batch boundary, after checkpointing, so a
    /// rebalance processes nothing twice.
    pub pending_owner: Option<String>,
    /// Each named pipeline's own progress (`pipelineCheckpoints`, a map
    /// attribute), when the application runs several: `checkpoint` then holds
    /// the least advanced of them, so the KCL's column stays meaningful.
    /// Empty for an application with one pipeline.
    pub pipeline_checkpoints: BTreeMap<String, Checkpoint>,
    /// On table and segment items: the table's snapshot and this segment's
    /// progress through it.
    pub snapshot: Option<SnapshotState>,
    /// On presence items: how many shard leases the worker held at its last
    /// renewal (`leaseCount`). Workers that write it judge each other's
    /// liveness by their presence items alone and read the table through
    /// its indexes; a presence item without it (an older version) makes
    /// every worker scan the whole table as before.
    pub held_leases: Option<u64>,
}

impl Lease {
    /// A new, unowned lease for a shard.
    pub fn new(
        stream_arn: &str,
        shard_id: &str,
        parent: Option<&str>,
        checkpoint: Checkpoint,
    ) -> Lease {
        Lease {
            key: shard_id.to_owned(),
            shard_id: shard_id.to_owned(),
            stream_arn: Some(stream_arn.to_owned()),
            owner: None,
            counter: 0,
            checkpoint,
            checkpoint_sub_sequence_number: 0,
            owner_switches_since_checkpoint: 0,
            parent_shard_ids: parent.map(|p| vec![p.to_owned()]).unwrap_or_default(),
            updated_at_millis: None,
            pending_owner: None,
            pipeline_checkpoints: BTreeMap::new(),
            snapshot: None,
            held_leases: None,
        }
    }

    /// Whether `pipeline` has read this shard to its end. A pipeline that
    /// replays from `TRIM_HORIZON` and has no entry here has not, even when
    /// the others finished the shard before it was added.
    pub fn is_finished_by(&self, pipeline: &PipelineStart) -> bool {
        self.pipeline_checkpoint(pipeline).is_shard_end()
    }

    /// Whether some pipeline still has to read this shard (with no named
    /// `pipelines`, whether the application has).
    pub fn needs_reading(&self, pipelines: &[PipelineStart]) -> bool {
        if pipelines.is_empty() {
            !self.checkpoint.is_shard_end()
        } else {
            pipelines
                .iter()
                .any(|pipeline| !self.is_finished_by(pipeline))
        }
    }

    /// Where a pipeline resumes: its own checkpoint, else (a pipeline new
    /// to this shard) the oldest record held when it starts at
    /// `TRIM_HORIZON` (even in a shard the others have finished), or the
    /// shard's checkpoint when it starts at `LATEST`.
    pub fn pipeline_checkpoint(&self, pipeline: &PipelineStart) -> Checkpoint {
        match self.pipeline_checkpoints.get(&pipeline.name) {
            Some(own) => own.clone(),
            None if pipeline.from_trim_horizon => Checkpoint::TrimHorizon,
            None => self.checkpoint.clone(),
        }
    }

    /// The key used when the shard id is already taken by another stream's
    /// lease: shard ids are random enough that this should never happen, but
    /// two streams must never share a lease.
    pub fn qualified_key(stream_arn: &str, shard_id: &str) -> String {
        format!("{stream_arn}|{shard_id}")
    }

    /// A worker's presence item (announcing no lease held yet).
    pub fn worker_presence(worker_id: &str) -> Lease {
        let key = format!("{WORKER_KEY_PREFIX}{worker_id}");
        let mut lease = Lease::new("", &key, None, Checkpoint::ShardEnd);
        lease.stream_arn = None;
        lease.held_leases = Some(0);
        lease
    }

    /// The shard-sync leadership item.
    pub fn shard_sync_leader() -> Lease {
        let mut lease = Lease::new("", SHARD_SYNC_LEADER_KEY, None, Checkpoint::ShardEnd);
        lease.stream_arn = None;
        lease
    }

    /// What the item stands for, by its key.
    pub fn kind(&self) -> ItemKind {
        ItemKind::of_key(&self.key)
    }

    /// The table a table item registers (`None` for other items).
    pub fn registered_table(&self) -> Option<&str> {
        self.key.strip_prefix(TABLE_KEY_PREFIX)
    }

    /// Whether `worker` holds this lease, as of this copy.
    pub fn is_owned_by(&self, worker: &str) -> bool {
        self.owner.as_deref() == Some(worker)
    }

    /// The worker a presence item announces (`None` for other items).
    pub fn presence_of(&self) -> Option<&str> {
        self.key.strip_prefix(WORKER_KEY_PREFIX)
    }

    /// Whether every pipeline that has an entry here, and the shard's own
    /// checkpoint, reached the shard's end: nobody needs to take the lease.
    pub fn is_finished(&self) -> bool {
        self.checkpoint.is_shard_end()
            && self
                .pipeline_checkpoints
                .values()
                .all(Checkpoint::is_shard_end)
    }

    /// Where the lease table's own index lists this item: every item that is
    /// not a shard lease (`meta`: presence, leadership, tables, segments,
    /// all small and few), and shard leases that nobody owns and that still
    /// need reading (`free`). Owned shard leases are not in it, so their
    /// renewals and checkpoints cost no index write.
    pub fn index_entry(&self) -> Option<IndexEntry> {
        match self.kind() {
            ItemKind::Shard if self.owner.is_none() && !self.is_finished() => {
                Some(IndexEntry::Free)
            }
            ItemKind::Shard => None,
            _ => Some(IndexEntry::Meta),
        }
    }
}

/// A partition of the lease table's own index (see [`Lease::index_entry`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexEntry {
    /// Presence, leadership, table and segment items.
    Meta,
    /// Shard leases nobody owns that still need reading.
    Free,
}

impl IndexEntry {
    /// The value stored in the index's key attribute.
    pub fn as_stored(self) -> &'static str {
        match self {
            IndexEntry::Meta => "meta",
            IndexEntry::Free => "free",
        }
    }
}

/// A pipeline of the application, as the lease protocol needs to know it:
/// the key of its checkpoint and where it starts on a shard it has none for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineStart {
    /// The pipeline's name.
    pub name: String,
    /// Whether it replays what the stream holds (`TRIM_HORIZON`) instead of
    /// joining at the shard's checkpoint (`LATEST`).
    pub from_trim_horizon: bool,
}

/// Why a lease-table call failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum LeaseError {
    /// The item changed since we read it (another worker took it, or it was
    /// released): the conditional write was refused. Fatal for this lease.
    #[error("lease {key} is no longer ours: it changed since we read it")]
    Conflict {
        /// The lease key.
        key: String,
    },
    /// The lease table does not exist (any more).
    #[error("lease table {table} not found")]
    TableNotFound {
        /// The table name.
        table: String,
    },
    /// An item that cannot be read as a lease.
    #[error("malformed lease item {key:?}: {reason}")]
    Malformed {
        /// The item's `leaseKey`, or `?` when even that is missing.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Retryable: throttled, service failure or transport failure.
    #[error("{kind:?} in lease table {operation}: {message}")]
    Transient {
        /// The API call.
        operation: &'static str,
        /// Which kind of transient failure.
        kind: FailureKind,
        /// What the service or transport said.
        message: String,
    },
    /// Fatal: refused for a reason retrying cannot fix (permissions, validation).
    #[error("lease table {operation} refused: {message}")]
    Rejected {
        /// The API call.
        operation: &'static str,
        /// What the service said.
        message: String,
    },
}

impl LeaseError {
    /// Whether the same call may succeed if tried again after a backoff.
    pub fn is_retryable(&self) -> bool {
        matches!(self, LeaseError::Transient { .. })
    }
}

/// What a scan of the lease table found.
#[derive(Debug, Clone, Default)]
pub struct LeaseScan {
    /// The readable leases.
    pub leases: Vec<Lease>,
    /// Items that are not leases, reported and skipped so that the rest keep working.
    pub malformed: Vec<LeaseError>,
}

/// Storage of lease items. Each write is one conditional request: it succeeds
/// only if the item still has the `counter` and `owner` of the lease passed
/// in, and it returns the lease as written. Implementations do not retry.
#[async_trait]
pub trait LeaseStore: Send + Sync + std::fmt::Debug + 'static {
    /// Creates the lease table if it is missing and waits until it is usable.
    async fn ensure_table(&self) -> Result<(), LeaseError>;

    /// Reads every lease (strongly consistent).
    async fn list_leases(&self) -> Result<LeaseScan, LeaseError>;

    /// Writes a new lease unless one with that key exists; `true` if written.
    async fn create_lease_if_absent(&self, lease: &Lease) -> Result<bool, LeaseError>;

    /// Makes `new_owner` the owner and bumps the counter.
    async fn take_lease(&self, lease: &Lease, new_owner: &str) -> Result<Lease, LeaseError>;

    /// Bumps the counter: the heartbeat that keeps the lease alive.
    async fn renew_lease(&self, lease: &Lease) -> Result<Lease, LeaseError>;

    /// Records progress, bumps the counter and resets the owner-switch count.
    async fn update_checkpoint(
        &self,
        lease: &Lease,
        checkpoint: &Checkpoint,
    ) -> Result<Lease, LeaseError>;

    /// Records the progress of the writer's pipelines (`pipelines`: these
    /// entries are set, other pipelines' entries are left as they are, so a
    /// removed pipeline's entry is never written back) and the shard's
    /// (`checkpoint`, the least advanced of the pipelines'), in one
    /// conditional write as [`LeaseStore::update_checkpoint`].
    async fn update_pipeline_checkpoints(
        &self,
        lease: &Lease,
        checkpoint: &Checkpoint,
        pipelines: &BTreeMap<String, Checkpoint>,
    ) -> Result<Lease, LeaseError>;

    /// Removes the entries of `pipelines` (pipelines no live worker
    /// declares) from the lease item, without bumping its counter: nobody
    /// writes those entries, so the owner's fenced writes go on undisturbed.
    async fn remove_pipeline_checkpoints(
        &self,
        lease: &Lease,
        pipelines: &[String],
    ) -> Result<(), LeaseError>;

    /// Clears the owner so any worker can take the lease at once.
    async fn release_lease(&self, lease: &Lease) -> Result<Lease, LeaseError>;

    /// Asks the owner to hand the lease to `requester`: sets `pendingOwner`
    /// without bumping the counter, so the owner's own writes still succeed.
    async fn request_handoff(&self, lease: &Lease, requester: &str) -> Result<Lease, LeaseError>;

    /// The owner's side of a handoff: makes the pending owner the owner and
    /// bumps the counter.
    async fn hand_off_lease(&self, lease: &Lease) -> Result<Lease, LeaseError>;

    /// Records a snapshot segment's progress (its resume key, items and
    /// whether it is complete), in one conditional write as
    /// [`LeaseStore::update_checkpoint`].
    async fn update_snapshot(
        &self,
        lease: &Lease,
        progress: &SnapshotState,
    ) -> Result<Lease, LeaseError>;

    /// Removes the lease item.
    async fn delete_lease(&self, lease: &Lease) -> Result<(), LeaseError>;

    /// The presence item's heartbeat: bumps the counter like
    /// [`LeaseStore::renew_lease`] and records how many shard leases the
    /// worker holds ([`Lease::held_leases`]), in one conditional write. The
    /// default only renews: others then keep judging this worker's leases
    /// one by one, from whole scans.
    async fn renew_presence(&self, lease: &Lease, held_leases: u64) -> Result<Lease, LeaseError> {
        let _ = held_leases;
        self.renew_lease(lease).await
    }

    // The cheap reads. A store without the indexes behind them answers
    // `false` to `indexes_ready`, and the coordinator then only scans; the
    // defaults derive each answer from a whole scan, so that a wrapper which
    // forwards only the calls above stays correct.

    /// Reads every lease, eventually consistent (half the read units of
    /// [`LeaseStore::list_leases`]): the periodic whole scan of a worker
    /// that reads the table through its indexes, where an item a moment
    /// old decides nothing (every write stays conditional).
    async fn list_leases_eventually(&self) -> Result<LeaseScan, LeaseError> {
        self.list_leases().await
    }

    /// Whether the reads below are served by the lease table's indexes
    /// (creating them if they are missing); `false` while they are built.
    async fn indexes_ready(&self) -> Result<bool, LeaseError> {
        Ok(false)
    }

    /// Every item that is not a shard lease: presence, leadership, table
    /// and segment items ([`IndexEntry::Meta`]). Eventually consistent.
    async fn list_meta(&self) -> Result<LeaseScan, LeaseError> {
        let mut scan = self.list_leases().await?;
        scan.leases
            .retain(|l| l.index_entry() == Some(IndexEntry::Meta));
        Ok(scan)
    }

    /// The shard leases nobody owns that still need reading
    /// ([`IndexEntry::Free`]). Eventually consistent; a hint, since an
    /// item written by another application (the KCL) may be missing or
    /// owned by now: the caller checks the owner of what it gets.
    async fn list_free(&self) -> Result<LeaseScan, LeaseError> {
        let mut scan = self.list_leases().await?;
        scan.leases
            .retain(|l| l.index_entry() == Some(IndexEntry::Free));
        Ok(scan)
    }

    /// The keys of the items `owner` owns, from the KCL's
    /// `LeaseOwnerToLeaseKeyIndex`. Eventually consistent.
    async fn list_owned(&self, owner: &str) -> Result<Vec<String>, LeaseError> {
        let scan = self.list_leases().await?;
        Ok(scan
            .leases
            .into_iter()
            .filter(|l| l.is_owned_by(owner))
            .map(|l| l.key)
            .collect())
    }

    /// One item (`None` when absent): strongly consistent when `consistent`.
    async fn get_lease(&self, key: &str, consistent: bool) -> Result<Option<Lease>, LeaseError> {
        let _ = consistent;
        let scan = self.list_leases().await?;
        Ok(scan.leases.into_iter().find(|l| l.key == key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sentinels_round_trip() {
        for text in [
            "TRIM_HORIZON",
            "LATEST",
            "SHARD_END",
            "49600000000000000001234",
        ] {
            assert_eq!(Checkpoint::parse(text).unwrap().as_stored(), text);
        }
        assert_eq!(Checkpoint::parse("AT_TIMESTAMP"), None);
        assert_eq!(Checkpoint::parse(""), None);
        assert_eq!(Checkpoint::parse("12a"), None);
    }

    #[test]
    fn the_least_advanced_checkpoint_is_where_a_shared_reader_resumes() {
        let seq = |n: &str| Checkpoint::Sequence(SequenceNumber::from(n));
        let all = [
            Checkpoint::ShardEnd,
            seq("900"),
            seq("1000"),
            Checkpoint::Latest,
        ];
        assert_eq!(Checkpoint::least_advanced(&all), Some(&Checkpoint::Latest));
        assert_eq!(Checkpoint::least_advanced(&all[..3]), Some(&seq("900")));
        assert_eq!(
            Checkpoint::least_advanced(&[seq("5"), Checkpoint::TrimHorizon]),
            Some(&Checkpoint::TrimHorizon)
        );
        assert_eq!(Checkpoint::least_advanced(&[]), None);
    }

    #[test]
    fn a_pipeline_new_to_a_shard_starts_where_its_position_says() {
        let seq = Checkpoint::Sequence(SequenceNumber::from("42"));
        let mut lease = Lease::new("arn", "shard-1", None, seq.clone());
        lease
            .pipeline_checkpoints
            .insert("search".into(), Checkpoint::ShardEnd);
        let start = |name: &str, from_trim_horizon| PipelineStart {
            name: name.into(),
            from_trim_horizon,
        };
        assert_eq!(
            lease.pipeline_checkpoint(&start("search", true)),
            Checkpoint::ShardEnd
        );
        assert_eq!(lease.pipeline_checkpoint(&start("audit", false)), seq);
        assert_eq!(
            lease.pipeline_checkpoint(&start("audit", true)),
            Checkpoint::TrimHorizon
        );
        // A shard the others finished is replayed into a new TRIM_HORIZON
        // pipeline, and only into it.
        lease.checkpoint = Checkpoint::ShardEnd;
        assert_eq!(
            lease.pipeline_checkpoint(&start("audit", true)),
            Checkpoint::TrimHorizon
        );
        assert_eq!(
            lease.pipeline_checkpoint(&start("audit", false)),
            Checkpoint::ShardEnd
        );
        assert!(lease.needs_reading(&[start("search", false), start("audit", true)]));
        assert!(!lease.needs_reading(&[start("search", false), start("audit", false)]));
        assert!(!lease.needs_reading(&[]));
    }

    proptest! {
        #[test]
        fn any_sequence_number_round_trips(digits in "[0-9]{1,40}") {
            let checkpoint = Checkpoint::parse(&digits).unwrap();
            prop_assert_eq!(checkpoint.as_stored(), digits.as_str());
        }
    }
}

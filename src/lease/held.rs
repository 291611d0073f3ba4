//! The protocol a worker follows for a lease it owns.
//!
//! Renewals (from the coordinator) and checkpoints (from the shard consumer)
//! both write the same item and both bump its counter, so they are serialized
//! through one [`HeldLease`] that always knows the counter it last wrote.
//! A refused write means another worker has the lease: the handle is then
//! marked lost for good and the shard consumer stops.
//!
//! Validity is judged on this worker's monotonic clock: a lease whose last
//! successful write started more than three quarters of the lease duration
//! ago is no longer trusted, so records stop flowing to processors before any
//! other worker can judge the lease expired (which takes a full duration of
//! an unchanged counter on *its* clock).
//!
//! Other workers may also judge a worker's leases by its presence item alone
//! (when every worker writes `leaseCount`): a shard lease is then tied to the
//! worker's [`Heartbeat`], and is valid only while the presence item's last
//! write, too, started less than three quarters of the lease duration ago.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Checkpoint, Lease, LeaseError, LeaseStore, PipelineStart};

/// When this worker's presence item was last written (the start of the
/// last successful write), shared by the presence item's [`HeldLease`],
/// which beats it, and the shard leases tied to it.
#[derive(Debug, Default)]
pub struct Heartbeat {
    last: std::sync::Mutex<Option<Instant>>,
}

impl Heartbeat {
    /// A heartbeat that has not beaten yet.
    pub fn new() -> Arc<Heartbeat> {
        Arc::new(Heartbeat::default())
    }

    fn beat(&self, started: Instant) {
        *self
            .last
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(started);
    }

    /// How long ago the last beat started; `None` before the first.
    pub fn since(&self) -> Option<Duration> {
        self.last
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .map(|at| at.elapsed())
    }
}

/// A lease this worker owns.
#[derive(Debug)]
pub struct HeldLease {
    store: Arc<dyn LeaseStore>,
    current: Mutex<Lease>,
    last_write: std::sync::Mutex<Instant>,
    validity: Duration,
    lost: CancellationToken,
    /// The presence item's: each successful write beats it.
    beats: Option<Arc<Heartbeat>>,
    /// A shard lease's: valid only while this heartbeat is fresh too.
    tied_to: Option<Arc<Heartbeat>>,
}

impl HeldLease {
    /// Wraps a lease just taken (its last write started at `taken_at`).
    pub fn new(
        store: Arc<dyn LeaseStore>,
        lease: Lease,
        lease_duration: Duration,
        taken_at: Instant,
    ) -> Self {
        HeldLease {
            store,
            current: Mutex::new(lease),
            last_write: std::sync::Mutex::new(taken_at),
            validity: lease_duration * 3 / 4,
            lost: CancellationToken::new(),
            beats: None,
            tied_to: None,
        }
    }

    /// The presence item's lease: its writes beat `heartbeat`, which counts
    /// as beating now (the item was just written).
    pub fn beating(mut self, heartbeat: Arc<Heartbeat>) -> Self {
        heartbeat.beat(*self.lock_last_write());
        self.beats = Some(heartbeat);
        self
    }

    /// A shard lease that others may judge by this worker's presence item:
    /// valid only while `heartbeat` beat less than three quarters of a
    /// lease duration ago.
    pub fn tied_to(mut self, heartbeat: Arc<Heartbeat>) -> Self {
        self.tied_to = Some(heartbeat);
        self
    }

    fn lock_last_write(&self) -> std::sync::MutexGuard<'_, Instant> {
        self.last_write
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Cancelled once the lease is lost or released; the shard consumer
    /// selects on it to stop at once.
    pub fn lost(&self) -> &CancellationToken {
        &self.lost
    }

    /// Whether records may still be handed to processors under this lease.
    pub fn is_valid(&self) -> bool {
        !self.lost.is_cancelled()
            && self.since_last_write() < self.validity
            && self.tied_to.as_ref().is_none_or(|heartbeat| {
                heartbeat.since().is_some_and(|since| since < self.validity)
            })
    }

    /// Whether the lease is gone for good (taken, released or deleted).
    pub fn is_lost(&self) -> bool {
        self.lost.is_cancelled()
    }

    fn since_last_write(&self) -> Duration {
        let last = *self.lock_last_write();
        last.elapsed()
    }

    /// A copy of the lease as last written, unless a write is in progress
    /// right now (then `None`): for status reports that must not wait.
    pub fn try_snapshot(&self) -> Option<Lease> {
        self.current.try_lock().ok().map(|lease| lease.clone())
    }

    /// A copy of the lease as last written.
    pub async fn snapshot(&self) -> Lease {
        self.current.lock().await.clone()
    }

    async fn write<F, Fut>(&self, op: F) -> Result<Lease, LeaseError>
    where
        F: FnOnce(Arc<dyn LeaseStore>, Lease) -> Fut,
        Fut: std::future::Future<Output = Result<Lease, LeaseError>>,
    {
        let mut current = self.current.lock().await;
        if self.lost.is_cancelled() {
            return Err(LeaseError::Conflict {
                key: current.key.clone(),
            });
        }
        let started = Instant::now();
        match op(Arc::clone(&self.store), current.clone()).await {
            Ok(written) => {
                *current = written.clone();
                *self.lock_last_write() = started;
                if let Some(heartbeat) = &self.beats {
                    heartbeat.beat(started);
                }
                Ok(written)
            }
            Err(err) => {
                if matches!(err, LeaseError::Conflict { .. }) {
                    self.lost.cancel();
                }
                Err(err)
            }
        }
    }

    /// The heartbeat: bumps the counter so other workers see the lease alive.
    pub async fn renew(&self) -> Result<(), LeaseError> {
        self.write(|store, lease| async move { store.renew_lease(&lease).await })
            .await
            .map(drop)
    }

    /// Renews unless a write of this worker (a checkpoint: it bumps the
    /// counter too) started less than `recently` ago, so that a busy shard's
    /// lease costs its checkpoint writes and nothing more. Callers pass half
    /// their renewal interval, so the counter still moves at least every one
    /// and a half intervals, well inside the validity window.
    pub async fn renew_unless_written_within(&self, recently: Duration) -> Result<(), LeaseError> {
        if !self.lost.is_cancelled() && self.since_last_write() < recently {
            return Ok(());
        }
        self.renew().await
    }

    /// The presence item's heartbeat, with how many shard leases this
    /// worker holds.
    pub async fn renew_presence(&self, held_leases: u64) -> Result<(), LeaseError> {
        self.write(|store, lease| async move { store.renew_presence(&lease, held_leases).await })
            .await
            .map(drop)
    }

    /// Records progress. Refused (and the lease marked lost) if another
    /// worker has taken the lease since our last write.
    pub async fn checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), LeaseError> {
        let checkpoint = checkpoint.clone();
        self.write(|store, lease| async move { store.update_checkpoint(&lease, &checkpoint).await })
            .await
            .map(drop)
    }

    /// Records one pipeline's progress: its entry in the lease's pipeline
    /// checkpoints (with the entries of `declared` pipelines that have none
    /// yet), and the shard's checkpoint as the least advanced of the
    /// `declared` pipelines'. Entries of pipelines no longer declared are
    /// neither written nor counted (the leader removes them once no live
    /// worker declares them). Fenced like [`HeldLease::checkpoint`].
    pub async fn checkpoint_pipeline(
        &self,
        pipeline: &str,
        checkpoint: &Checkpoint,
        declared: &[PipelineStart],
    ) -> Result<(), LeaseError> {
        self.write(|store, lease| async move {
            let mut pipelines: BTreeMap<String, Checkpoint> = declared
                .iter()
                .map(|start| (start.name.clone(), lease.pipeline_checkpoint(start)))
                .collect();
            pipelines.insert(pipeline.to_owned(), checkpoint.clone());
            let shard = Checkpoint::least_advanced(
                declared
                    .iter()
                    .filter_map(|start| pipelines.get(&start.name)),
            )
            .unwrap_or(checkpoint)
            .clone();
            store
                .update_pipeline_checkpoints(&lease, &shard, &pipelines)
                .await
        })
        .await
        .map(drop)
    }

    /// Records a snapshot segment's progress. Fenced like
    /// [`HeldLease::checkpoint`].
    pub async fn record_snapshot(&self, progress: &super::SnapshotState) -> Result<(), LeaseError> {
        self.write(|store, lease| async move { store.update_snapshot(&lease, progress).await })
            .await
            .map(drop)
    }

    /// Hands the lease to the worker that asked for it (its `pendingOwner`),
    /// after the caller has checkpointed. The handle is lost afterwards.
    pub async fn hand_off(&self, pending: &Lease) -> Result<(), LeaseError> {
        let next = pending.pending_owner.clone();
        let result = self
            .write(|store, mut lease| async move {
                lease.pending_owner = next;
                store.hand_off_lease(&lease).await
            })
            .await
            .map(drop);
        self.lost.cancel();
        result
    }

    /// Marks the lease lost without writing: another worker owns it now, as
    /// a read of the lease table showed. The shard consumer stops at once.
    pub fn abandon(&self) {
        self.lost.cancel();
    }

    /// Gives the lease up so another worker can take it without waiting for
    /// it to expire. The handle is lost afterwards whatever the outcome.
    pub async fn release(&self) -> Result<(), LeaseError> {
        let result = self
            .write(|store, lease| async move { store.release_lease(&lease).await })
            .await
            .map(drop);
        self.lost.cancel();
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::memory::MemoryLeaseStore;
    use crate::record::SequenceNumber;

    async fn held(store: &MemoryLeaseStore) -> HeldLease {
        let lease = Lease::new("arn:s", "shard-1", None, Checkpoint::TrimHorizon);
        store.create_lease_if_absent(&lease).await.unwrap();
        let taken = store.take_lease(&lease, "me").await.unwrap();
        HeldLease::new(
            Arc::new(store.clone()),
            taken,
            Duration::from_secs(9),
            Instant::now(),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn renewals_and_checkpoints_share_the_fencing_counter() {
        let store = MemoryLeaseStore::new();
        let lease = held(&store).await;
        lease.renew().await.unwrap();
        let seq = Checkpoint::Sequence(SequenceNumber::from("100"));
        lease.checkpoint(&seq).await.unwrap();
        lease.renew().await.unwrap();
        let stored = store.get("shard-1").unwrap();
        assert_eq!(stored.counter, 4);
        assert_eq!(stored.checkpoint, seq);
    }

    /// A busy shard's checkpoints keep its lease alive, so its renewals
    /// are skipped: the lease costs one write per checkpoint, not more.
    #[tokio::test(start_paused = true)]
    async fn a_renewal_right_after_a_checkpoint_is_skipped_and_a_later_one_is_not() {
        let store = MemoryLeaseStore::new();
        let lease = held(&store).await;
        let half_renewal = Duration::from_millis(1_500);
        let counter = || store.get("shard-1").unwrap().counter;
        let taken = counter();
        lease
            .checkpoint(&Checkpoint::Sequence(SequenceNumber::from("1")))
            .await
            .unwrap();
        tokio::time::advance(Duration::from_millis(1_000)).await;
        lease
            .renew_unless_written_within(half_renewal)
            .await
            .unwrap();
        assert_eq!(counter(), taken + 1, "only the checkpoint wrote");
        tokio::time::advance(Duration::from_millis(600)).await;
        lease
            .renew_unless_written_within(half_renewal)
            .await
            .unwrap();
        assert_eq!(counter(), taken + 2, "1.6 s after the checkpoint it renews");
        assert!(lease.is_valid());
    }

    #[tokio::test(start_paused = true)]
    async fn the_shard_checkpoint_is_the_least_advanced_declared_pipeline() {
        let store = MemoryLeaseStore::new();
        let lease = held(&store).await;
        let declared = [
            PipelineStart {
                name: "search".into(),
                from_trim_horizon: false,
            },
            PipelineStart {
                name: "audit".into(),
                from_trim_horizon: false,
            },
        ];
        let seq = |n: &str| Checkpoint::Sequence(SequenceNumber::from(n));
        lease
            .checkpoint_pipeline("search", &seq("300"), &declared)
            .await
            .unwrap();
        let stored = store.get("shard-1").unwrap();
        assert_eq!(
            stored.checkpoint,
            Checkpoint::TrimHorizon,
            "audit has not moved"
        );
        assert_eq!(stored.pipeline_checkpoints["search"], seq("300"));
        assert_eq!(
            stored.pipeline_checkpoints["audit"],
            Checkpoint::TrimHorizon
        );
        lease
            .checkpoint_pipeline("audit", &seq("200"), &declared)
            .await
            .unwrap();
        assert_eq!(store.get("shard-1").unwrap().checkpoint, seq("200"));
        // A pipeline no longer declared keeps its entry but holds nothing back.
        lease
            .checkpoint_pipeline("audit", &seq("400"), &declared[1..])
            .await
            .unwrap();
        let stored = store.get("shard-1").unwrap();
        assert_eq!(stored.checkpoint, seq("400"));
        assert_eq!(stored.pipeline_checkpoints["search"], seq("300"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stolen_lease_refuses_the_checkpoint_and_is_lost() {
        let store = MemoryLeaseStore::new();
        let lease = held(&store).await;
        let theirs = store.get("shard-1").unwrap();
        store.take_lease(&theirs, "thief").await.unwrap();
        let err = lease
            .checkpoint(&Checkpoint::Sequence(SequenceNumber::from("5")))
            .await
            .unwrap_err();
        assert!(matches!(err, LeaseError::Conflict { .. }));
        assert!(lease.is_lost());
        assert!(!lease.is_valid());
        assert_eq!(
            store.get("shard-1").unwrap().checkpoint,
            Checkpoint::TrimHorizon
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_tied_to_the_presence_heartbeat_ends_with_it() {
        let store = MemoryLeaseStore::new();
        let heartbeat = Heartbeat::new();
        let lease = held(&store).await.tied_to(Arc::clone(&heartbeat));
        assert!(!lease.is_valid(), "no presence written yet");
        let presence = Lease::worker_presence("me");
        store.create_lease_if_absent(&presence).await.unwrap();
        let taken = store.take_lease(&presence, "me").await.unwrap();
        let presence = HeldLease::new(
            Arc::new(store.clone()),
            taken,
            Duration::from_secs(9),
            Instant::now(),
        )
        .beating(Arc::clone(&heartbeat));
        assert!(lease.is_valid());
        tokio::time::advance(Duration::from_secs(4)).await;
        lease.renew().await.unwrap();
        presence.renew_presence(1).await.unwrap();
        assert_eq!(
            store
                .get(&presence.snapshot().await.key)
                .unwrap()
                .held_leases,
            Some(1)
        );
        tokio::time::advance(Duration::from_secs(4)).await;
        lease.renew().await.unwrap();
        assert!(lease.is_valid());
        // The shard lease is renewed, but the presence item is not: others
        // judging by presence alone may soon take it.
        tokio::time::advance(Duration::from_secs(3)).await;
        lease.renew().await.unwrap();
        assert!(!lease.is_valid(), "7 s of a 9 s lease without a heartbeat");
    }

    #[tokio::test(start_paused = true)]
    async fn validity_ends_before_others_could_judge_the_lease_expired() {
        let store = MemoryLeaseStore::new();
        let lease = held(&store).await;
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(lease.is_valid());
        tokio::time::advance(Duration::from_millis(1_000)).await;
        assert!(!lease.is_valid(), "7 s of a 9 s lease without a write");
        lease.renew().await.unwrap();
        assert!(lease.is_valid());
    }
}

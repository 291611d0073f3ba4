//! An in-memory [`LeaseStore`] with the same conditional semantics as the
//! DynamoDB one, for unit tests of the coordinator and the lease protocol.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;

use super::{Checkpoint, Lease, LeaseError, LeaseScan, LeaseStore};

/// Leases in memory; clones share state, so a test can play several workers.
#[derive(Debug, Clone, Default)]
pub struct MemoryLeaseStore {
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    leases: BTreeMap<String, Lease>,
    failures: VecDeque<LeaseError>,
}

impl MemoryLeaseStore {
    /// An empty table.
    pub fn new() -> Self {
        MemoryLeaseStore::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The lease stored under `key`, as another worker would read it.
    pub fn get(&self, key: &str) -> Option<Lease> {
        self.lock().leases.get(key).cloned()
    }

    /// Every lease, by key.
    pub fn all(&self) -> Vec<Lease> {
        self.lock().leases.values().cloned().collect()
    }

    /// Overwrites a lease unconditionally, as another worker or an operator might.
    pub fn put(&self, lease: Lease) {
        self.lock().leases.insert(lease.key.clone(), lease);
    }

    /// Makes the next write fail with `error`.
    pub fn fail_next(&self, error: LeaseError) {
        self.lock().failures.push_back(error);
    }

    /// Changes the stored item of `lease`, whatever its counter, unless a
    /// failure is queued or the item is gone.
    fn change<T>(
        &self,
        lease: &Lease,
        change: impl FnOnce(&mut Lease) -> Result<T, LeaseError>,
    ) -> Result<T, LeaseError> {
        let mut state = self.lock();
        if let Some(error) = state.failures.pop_front() {
            return Err(error);
        }
        let stored = state
            .leases
            .get_mut(&lease.key)
            .ok_or_else(|| LeaseError::Conflict {
                key: lease.key.clone(),
            })?;
        change(stored)
    }

    fn update(&self, lease: &Lease, change: impl FnOnce(&mut Lease)) -> Result<Lease, LeaseError> {
        self.change(lease, |stored| {
            if stored.counter != lease.counter || stored.owner != lease.owner {
                return Err(LeaseError::Conflict {
                    key: lease.key.clone(),
                });
            }
            change(stored);
            stored.counter += 1;
            stored.updated_at_millis = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .ok()
                .map(|d| d.as_millis() as u64);
            Ok(stored.clone())
        })
    }
}

#[async_trait]
impl LeaseStore for MemoryLeaseStore {
    async fn ensure_table(&self) -> Result<(), LeaseError> {
        Ok(())
    }

    async fn list_leases(&self) -> Result<LeaseScan, LeaseError> {
        Ok(LeaseScan {
            leases: self.all(),
            malformed: Vec::new(),
        })
    }

    async fn create_lease_if_absent(&self, lease: &Lease) -> Result<bool, LeaseError> {
        let mut state = self.lock();
        if state.leases.contains_key(&lease.key) {
            return Ok(false);
        }
        state.leases.insert(lease.key.clone(), lease.clone());
        Ok(true)
    }

    async fn take_lease(&self, lease: &Lease, new_owner: &str) -> Result<Lease, LeaseError> {
        let switched = !lease.is_owned_by(new_owner);
        self.update(lease, |stored| {
            stored.owner = Some(new_owner.to_owned());
            stored.owner_switches_since_checkpoint += u64::from(switched);
            stored.pending_owner = None;
        })
    }

    async fn renew_lease(&self, lease: &Lease) -> Result<Lease, LeaseError> {
        self.update(lease, |_| {})
    }

    async fn update_checkpoint(
        &self,
        lease: &Lease,
        checkpoint: &Checkpoint,
    ) -> Result<Lease, LeaseError> {
        self.update(lease, |stored| {
            stored.checkpoint = checkpoint.clone();
            stored.checkpoint_sub_sequence_number = 0;
            stored.owner_switches_since_checkpoint = 0;
        })
    }

    async fn update_pipeline_checkpoints(
        &self,
        lease: &Lease,
        checkpoint: &Checkpoint,
        pipelines: &std::collections::BTreeMap<String, Checkpoint>,
    ) -> Result<Lease, LeaseError> {
        self.update(lease, |stored| {
            stored.checkpoint = checkpoint.clone();
            stored
                .pipeline_checkpoints
                .extend(pipelines.iter().map(|(k, v)| (k.clone(), v.clone())));
            stored.checkpoint_sub_sequence_number = 0;
            stored.owner_switches_since_checkpoint = 0;
        })
    }

    async fn remove_pipeline_checkpoints(
        &self,
        lease: &Lease,
        pipelines: &[String],
    ) -> Result<(), LeaseError> {
        self.change(lease, |stored| {
            for name in pipelines {
                stored.pipeline_checkpoints.remove(name);
            }
            Ok(())
        })
    }

    async fn update_snapshot(
        &self,
        lease: &Lease,
        progress: &super::SnapshotState,
    ) -> Result<Lease, LeaseError> {
        self.update(lease, |stored| {
            stored.snapshot = Some(progress.clone());
        })
    }

    async fn release_lease(&self, lease: &Lease) -> Result<Lease, LeaseError> {
        self.update(lease, |stored| stored.owner = None)
    }

    async fn request_handoff(&self, lease: &Lease, requester: &str) -> Result<Lease, LeaseError> {
        let mut state = self.lock();
        let stored = state
            .leases
            .get_mut(&lease.key)
            .filter(|stored| stored.counter == lease.counter && stored.owner == lease.owner)
            .ok_or_else(|| LeaseError::Conflict {
                key: lease.key.clone(),
            })?;
        stored.pending_owner = Some(requester.to_owned());
        Ok(stored.clone())
    }

    async fn hand_off_lease(&self, lease: &Lease) -> Result<Lease, LeaseError> {
        let next = lease
            .pending_owner
            .clone()
            .ok_or_else(|| LeaseError::Conflict {
                key: lease.key.clone(),
            })?;
        self.update(lease, |stored| {
            stored.owner = Some(next);
            stored.owner_switches_since_checkpoint += 1;
            stored.pending_owner = None;
        })
    }

    async fn delete_lease(&self, lease: &Lease) -> Result<(), LeaseError> {
        let mut state = self.lock();
        match state.leases.get(&lease.key) {
            Some(stored) if stored.counter == lease.counter => {
                state.leases.remove(&lease.key);
                Ok(())
            }
            _ => Err(LeaseError::Conflict {
                key: lease.key.clone(),
            }),
        }
    }
}

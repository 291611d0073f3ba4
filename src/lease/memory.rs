//! An in-memory [`LeaseStore`] with the same conditional semantics as the
//! DynamoDB one, for unit tests of the coordinator and the lease protocol.
//!
//! It also bills every read as DynamoDB would ([`ReadUnits`]), so that a
//! test can bound what a worker's reads of the lease table cost.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;

use super::dynamo::{item_size, lease_to_item, owner_index_size};
use super::{Checkpoint, IndexEntry, Lease, LeaseError, LeaseScan, LeaseStore};

/// The read unit: 4 KB.
const UNIT_BYTES: usize = 4096;
/// The most item data one Scan or Query page returns.
const PAGE_BYTES: usize = 1 << 20;

/// What reads cost, in DynamoDB's read-unit arithmetic: a GetItem is billed
/// one unit per 4 KB of its item (rounded up), a Scan or Query page one unit
/// per 4 KB of all the items it returns (summed, then rounded up), at least
/// one unit per call or page; an eventually consistent read (every Query on
/// a global secondary index) costs half. Counted in half units.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadUnits {
    /// Half read units, by DynamoDB call (`Scan`, `Query`, `GetItem`).
    pub half_units: BTreeMap<&'static str, u64>,
    /// Calls, by DynamoDB call.
    pub calls: BTreeMap<&'static str, u64>,
}

impl ReadUnits {
    /// Every read unit consumed.
    pub fn total(&self) -> f64 {
        self.half_units.values().sum::<u64>() as f64 / 2.0
    }

    /// The read units one call consumed.
    pub fn of(&self, call: &str) -> f64 {
        self.half_units.get(call).copied().unwrap_or(0) as f64 / 2.0
    }

    fn bill(&mut self, call: &'static str, half_units: u64) {
        *self.half_units.entry(call).or_default() += half_units;
        *self.calls.entry(call).or_default() += 1;
    }

    /// Bills a Scan or Query returning items of these sizes, page by page.
    fn bill_pages(
        &mut self,
        call: &'static str,
        sizes: impl Iterator<Item = usize>,
        consistent: bool,
    ) {
        let mut pages = vec![0usize];
        for size in sizes {
            let page = pages.last_mut().expect("one page at least");
            if *page + size > PAGE_BYTES {
                pages.push(size);
            } else {
                *page += size;
            }
        }
        let units: u64 = pages
            .iter()
            .map(|bytes| bytes.div_ceil(UNIT_BYTES).max(1) as u64)
            .sum();
        self.bill(call, if consistent { units * 2 } else { units });
    }
}

/// Leases in memory; clones share state, so a test can play several workers.
#[derive(Debug, Clone, Default)]
pub struct MemoryLeaseStore {
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    leases: BTreeMap<String, Lease>,
    failures: VecDeque<LeaseError>,
    reads: ReadUnits,
    /// Whether the indexes are missing (a table of an older version).
    without_indexes: bool,
}

fn size(lease: &Lease) -> usize {
    item_size(&lease_to_item(lease))
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

    /// A table without the indexes: the coordinator only scans it.
    pub fn without_indexes() -> Self {
        let store = MemoryLeaseStore::default();
        store.lock().without_indexes = true;
        store
    }

    /// What the reads so far cost.
    pub fn read_units(&self) -> ReadUnits {
        self.lock().reads.clone()
    }

    /// Forgets the reads so far.
    pub fn reset_read_units(&self) {
        self.lock().reads = ReadUnits::default();
    }

    /// What one strongly consistent Scan of the whole table would cost.
    pub fn scan_cost(&self) -> f64 {
        let state = self.lock();
        let mut units = ReadUnits::default();
        units.bill_pages("Scan", state.leases.values().map(size), true);
        units.total()
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

    /// The whole table, billed as a Scan.
    fn scan(&self, consistent: bool) -> LeaseScan {
        let mut state = self.lock();
        let leases: Vec<Lease> = state.leases.values().cloned().collect();
        state
            .reads
            .bill_pages("Scan", leases.iter().map(size), consistent);
        LeaseScan {
            leases,
            malformed: Vec::new(),
        }
    }

    /// One partition of `DynastreamIndex`, billed as an eventually
    /// consistent Query.
    fn query_entry(&self, entry: IndexEntry) -> LeaseScan {
        let mut state = self.lock();
        let leases: Vec<Lease> = state
            .leases
            .values()
            .filter(|l| l.index_entry() == Some(entry))
            .cloned()
            .collect();
        state
            .reads
            .bill_pages("Query", leases.iter().map(size), false);
        LeaseScan {
            leases,
            malformed: Vec::new(),
        }
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
        Ok(self.scan(true))
    }

    async fn list_leases_eventually(&self) -> Result<LeaseScan, LeaseError> {
        Ok(self.scan(false))
    }

    async fn renew_presence(&self, lease: &Lease, held_leases: u64) -> Result<Lease, LeaseError> {
        self.update(lease, |stored| stored.held_leases = Some(held_leases))
    }

    async fn indexes_ready(&self) -> Result<bool, LeaseError> {
        Ok(!self.lock().without_indexes)
    }

    async fn list_meta(&self) -> Result<LeaseScan, LeaseError> {
        Ok(self.query_entry(IndexEntry::Meta))
    }

    async fn list_free(&self) -> Result<LeaseScan, LeaseError> {
        Ok(self.query_entry(IndexEntry::Free))
    }

    async fn list_owned(&self, owner: &str) -> Result<Vec<String>, LeaseError> {
        let mut state = self.lock();
        let owned: Vec<&Lease> = state
            .leases
            .values()
            .filter(|l| l.is_owned_by(owner))
            .collect();
        let keys = owned.iter().map(|l| l.key.clone()).collect();
        let sizes: Vec<usize> = owned.iter().map(|l| owner_index_size(l)).collect();
        state.reads.bill_pages("Query", sizes.into_iter(), false);
        Ok(keys)
    }

    async fn get_lease(&self, key: &str, consistent: bool) -> Result<Option<Lease>, LeaseError> {
        let mut state = self.lock();
        let found = state.leases.get(key).cloned();
        let units = found
            .as_ref()
            .map_or(1, |l| size(l).div_ceil(UNIT_BYTES).max(1)) as u64;
        state
            .reads
            .bill("GetItem", if consistent { units * 2 } else { units });
        Ok(found)
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

//! How the coordinator reads the lease table, and when it scans it whole.
//!
//! A Scan costs a read unit per 4 KB of the whole table: at 10,000 leases,
//! hundreds of units, and every worker used to scan twice per renewal
//! interval. So a worker scans only at start-up, every
//! `table_scan_interval` (minutes) and while the fleet cannot be judged
//! otherwise; in between ([`ReadMode::Indexed`]) it reads:
//!
//! - the small items (presence, leadership, tables, segments) and the free
//!   shard leases, each with one Query on the table's own sparse index;
//! - the leases it holds from its own writes (a renewal returns the item);
//! - the keys of a dead worker's leases (or of a worker it steals from)
//!   with one Query on the owner index, then only the leases it takes;
//! - the parents of the shards it holds, while they are being read.
//!
//! A worker is dead when its presence item has not changed for a lease
//! duration on this worker's clock (confirmed by a strongly consistent read,
//! so that an index lagging behind never makes a live worker look dead);
//! its leases are taken then. That is safe because every worker that writes
//! `leaseCount` ties its shard leases to its presence heartbeat
//! ([`crate::lease::held::Heartbeat`]): it stops handing records on three
//! quarters of a lease duration after its last presence write, as it does
//! for a lease it cannot renew.
//!
//! The whole table is scanned every round instead ([`ReadMode::Scan`], the
//! earlier behaviour) while the indexes are missing or being built, or
//! when the last scan showed a worker that does not announce `leaseCount`
//! (an older version during a rolling upgrade) or a lease whose owner has no
//! presence item (the KCL, a worker that announced nothing): those are
//! judged lease by lease, which needs every lease's counter.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use tokio::time::Instant;

use crate::lease::{ItemKind, Lease};

/// How often a worker scans the whole lease table while it reads it through
/// its indexes: the safety net for what the indexes cannot show (leases
/// freed by another application, a lease whose index entry is stale).
pub const DEFAULT_TABLE_SCAN_INTERVAL: Duration = Duration::from_secs(300);

/// How often a worker that scans looks whether the indexes became usable.
const INDEX_CHECK_INTERVAL: Duration = Duration::from_secs(60);

/// How the lease table is read between whole scans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ReadMode {
    /// A whole strongly consistent Scan at every look.
    Scan,
    /// Queries on the indexes, GetItems of single leases.
    Indexed,
}

/// A worker judged dead, and what it still owned.
#[derive(Debug, Clone)]
pub(super) struct Dead {
    /// The presence item's counter when judged dead: a newer one means it
    /// came back (or another process took its name).
    pub counter: u64,
    /// Its shard leases, as the owner index listed them, less those found
    /// taken by others since.
    pub keys: Vec<String>,
}

/// What the coordinator knows about reading the table.
#[derive(Debug)]
pub(super) struct Reads {
    pub mode: ReadMode,
    scan_interval: Duration,
    last_scan: Option<Instant>,
    indexes_ready: bool,
    indexes_checked: Option<Instant>,
    /// The shard leases the last read showed free (nobody owns them, and
    /// they need reading). In [`ReadMode::Indexed`] only these count as
    /// free: the table's other shard leases are known from the last scan
    /// and may have been taken since.
    pub free: HashSet<String>,
    /// The free shard leases the last whole scan showed (what this worker
    /// reads, so also leases a pipeline added since still has to read, and
    /// leases freed by another application, which the index does not list):
    /// free until found taken.
    pub scanned_free: HashSet<String>,
    /// Workers judged dead, by id.
    pub dead: BTreeMap<String, Dead>,
    /// Presence items the last Query did not return (deleted when their
    /// worker stopped, or collected): kept, still observed, so that leases
    /// such a worker could not release are taken once it has been silent
    /// for a lease duration; not counted as live for balancing.
    pub vanished: HashSet<String>,
    /// No steal is asked for before this instant: the victim's announced
    /// lease count must have caught up with the last handoff first.
    pub steal_quiet_until: Option<Instant>,
    /// The reason to scan last reported (`Some(None)`: reading through the
    /// indexes was): each change is logged once.
    reported: Option<Option<String>>,
}

impl Reads {
    /// Starts scanning; looks for the indexes at the first scan.
    pub(super) fn new(scan_interval: Duration) -> Self {
        Reads {
            mode: ReadMode::Scan,
            scan_interval,
            last_scan: None,
            indexes_ready: false,
            indexes_checked: None,
            free: HashSet::new(),
            scanned_free: HashSet::new(),
            dead: BTreeMap::new(),
            vanished: HashSet::new(),
            steal_quiet_until: None,
            reported: None,
        }
    }

    /// Whether the next look at the table is a whole Scan.
    pub(super) fn scan_due(&self, now: Instant) -> bool {
        self.mode == ReadMode::Scan
            || self
                .last_scan
                .is_none_or(|at| now.duration_since(at) >= self.scan_interval)
    }

    /// Whether to ask the store again whether its indexes are usable.
    pub(super) fn index_check_due(&self, now: Instant) -> bool {
        !self.indexes_ready
            && self
                .indexes_checked
                .is_none_or(|at| now.duration_since(at) >= INDEX_CHECK_INTERVAL)
    }

    /// The indexes could not be read (the table was deleted or recreated
    /// without them): scan from the next look on, and look for them again.
    pub(super) fn indexes_lost(&mut self) {
        self.indexes_ready = false;
        self.indexes_checked = None;
        if self.mode == ReadMode::Indexed {
            self.set_blocker(Some(
                "the lease table's indexes could not be read".to_owned(),
            ));
        }
    }

    /// Records the store's answer about its indexes.
    pub(super) fn indexes_checked(&mut self, ready: bool, now: Instant) {
        self.indexes_ready = ready;
        self.indexes_checked = Some(now);
    }

    /// After a whole scan at `now` that showed these `free` leases: reads
    /// through the indexes from now on if they are usable and `blocker`
    /// (what [`scan_blocker`] found) is `None`. Logs each change of mode once.
    pub(super) fn scanned(&mut self, free: HashSet<String>, blocker: Option<String>, now: Instant) {
        self.last_scan = Some(now);
        self.dead.clear();
        self.vanished.clear();
        self.free.clone_from(&free);
        self.scanned_free = free;
        let blocker = match blocker {
            None if !self.indexes_ready => {
                Some("the lease table's indexes are not ACTIVE yet".to_owned())
            }
            other => other,
        };
        self.set_blocker(blocker);
    }

    /// Goes back to scanning whole (or on reading through the indexes) for
    /// the reason given.
    pub(super) fn set_blocker(&mut self, blocker: Option<String>) {
        let mode = match blocker {
            Some(_) => ReadMode::Scan,
            None => ReadMode::Indexed,
        };
        if self.reported.as_ref() != Some(&blocker) {
            match &blocker {
                Some(why) => {
                    tracing::info!(reason = %why, "scanning the whole lease table at every look")
                }
                None => tracing::info!(
                    "reading the lease table through its indexes; whole scans every {:?}",
                    self.scan_interval
                ),
            }
            self.reported = Some(blocker);
        }
        self.mode = mode;
    }
}

/// Why the leases cannot be judged by presence items alone, if they cannot:
/// a live presence item without `leaseCount` (a worker of an older version
/// judges leases one by one and would not tie its leases to its presence),
/// or a lease owned by a worker with no presence item at all.
pub(super) fn scan_blocker(
    me: &str,
    leases: &HashMap<String, Lease>,
    live: impl Fn(&Lease) -> bool,
) -> Option<String> {
    let mut announced = HashSet::new();
    for presence in leases.values().filter(|l| l.kind() == ItemKind::Worker) {
        let Some(worker) = presence.owner.as_deref() else {
            continue;
        };
        announced.insert(worker);
        if presence.held_leases.is_none() && worker != me && live(presence) {
            return Some(format!(
                "worker {worker} does not announce its lease count (an older version)"
            ));
        }
    }
    leases
        .values()
        .filter(|l| matches!(l.kind(), ItemKind::Shard))
        .filter_map(|l| l.owner.as_deref())
        .find(|owner| *owner != me && !announced.contains(owner))
        .map(|owner| format!("leases are owned by {owner}, which has no presence item"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::Checkpoint;

    fn table(leases: impl IntoIterator<Item = Lease>) -> HashMap<String, Lease> {
        leases.into_iter().map(|l| (l.key.clone(), l)).collect()
    }

    fn presence(worker: &str, count: Option<u64>) -> Lease {
        Lease {
            owner: Some(worker.into()),
            held_leases: count,
            ..Lease::worker_presence(worker)
        }
    }

    fn shard(key: &str, owner: Option<&str>) -> Lease {
        Lease {
            owner: owner.map(Into::into),
            ..Lease::new("arn", key, None, Checkpoint::TrimHorizon)
        }
    }

    #[test]
    fn only_a_fleet_that_announces_its_counts_is_judged_by_presence() {
        let fleet = table([
            presence("a", Some(1)),
            presence("b", Some(1)),
            shard("s1", Some("a")),
            shard("s2", Some("b")),
            shard("s3", None),
        ]);
        assert_eq!(scan_blocker("a", &fleet, |_| true), None);
        let mut older = fleet.clone();
        older.insert("p".into(), presence("c", None));
        assert!(scan_blocker("a", &older, |_| true)
            .unwrap()
            .contains("worker c"));
        assert_eq!(
            scan_blocker("a", &older, |_| false),
            None,
            "a dead older worker"
        );
        let mut kcl = fleet;
        kcl.insert("s4".into(), shard("s4", Some("kcl-worker")));
        assert!(scan_blocker("a", &kcl, |_| true)
            .unwrap()
            .contains("kcl-worker"));
    }

    #[test]
    fn a_worker_scans_until_the_indexes_are_ready_then_every_interval() {
        let t0 = Instant::now();
        let interval = Duration::from_secs(300);
        let mut reads = Reads::new(interval);
        assert!(reads.scan_due(t0));
        assert!(reads.index_check_due(t0));
        reads.indexes_checked(false, t0);
        reads.scanned(HashSet::new(), None, t0);
        assert_eq!(reads.mode, ReadMode::Scan);
        assert!(!reads.index_check_due(t0 + Duration::from_secs(59)));
        assert!(reads.index_check_due(t0 + INDEX_CHECK_INTERVAL));
        reads.indexes_checked(true, t0 + INDEX_CHECK_INTERVAL);
        let t1 = t0 + INDEX_CHECK_INTERVAL;
        reads.scanned(HashSet::from(["s1".to_owned()]), None, t1);
        assert_eq!(reads.mode, ReadMode::Indexed);
        assert_eq!(reads.free, HashSet::from(["s1".to_owned()]));
        assert!(!reads.scan_due(t1 + interval - Duration::from_millis(1)));
        assert!(reads.scan_due(t1 + interval));
        reads.set_blocker(Some("an older worker".into()));
        assert!(reads.scan_due(t1));
    }
}

//! Snapshot, then stream: a table's existing items before its changes.
//!
//! A table's snapshot is a parallel Scan of `DYNASTREAM_SNAPSHOT_SEGMENTS`
//! segments. The table's item in the lease table
//! (`dynastream:table:<table>`) records when the snapshot began, before any
//! Scan; each segment's item (`dynastream:segment:<table>#<n>`) is a lease
//! the workers share like a shard's, and records the segment's
//! `LastEvaluatedKey` after each delivered page, so a segment whose worker
//! dies is resumed where it got to. The workers' Scans share one read
//! budget ([`budget`]). Once every segment is complete the table's stream
//! is followed from where it was when the snapshot began: the coordinator
//! creates its shard leases at `TRIM_HORIZON` and passes over records created
//! before the snapshot's start (less [`CLOCK_MARGIN`]).
//!
//! Why that converges: every change committed before a segment's Scan read
//! an item is in what the Scan returned (the Scans are strongly
//! consistent), and every change after the snapshot began is delivered from
//! the stream, after every snapshot record, in the order it was made. So for
//! each item, the last record delivered is its last change since the
//! snapshot began, or, when it has not changed since, the snapshot's copy,
//! which is then its current state.
//!
//! [`Snapshots`] is driven by the coordinator: at each look at the lease
//! table it creates missing items, takes free segments towards this
//! worker's share (the unfinished segments over the live workers), asks a
//! worker holding more than its share to hand one over (the holder does at
//! its next page boundary, after recording the page, so nothing is
//! delivered twice), and sets its share of the read budget; it renews what
//! it holds on the coordinator's renewal clock and releases it at shutdown.

pub mod budget;
mod segment;

pub use segment::snapshot_record;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::backoff::Backoff;
use crate::config::{OnTrimmed, SnapshotMode};
use crate::dispatch::Dispatcher;
use crate::error::Error;
use crate::lease::held::HeldLease;
use crate::lease::{Checkpoint, ItemKind, Lease, LeaseError, LeaseStore, SnapshotState};
use crate::retry::{retry, Attempt, RetryError};
use crate::shard::ShardExit;
use crate::tables::{TablesApi, TablesError};
use crate::telemetry::metrics;
use budget::ReadBudget;

/// How long before the snapshot's start stream records are still
/// delivered: stream records carry their creation time in whole seconds
/// on DynamoDB's clock, the start is taken on the worker's. Changes in this
/// margin may be delivered twice (the snapshot holds them too); none is lost
/// while the two clocks are within it of each other.
pub const CLOCK_MARGIN: Duration = Duration::from_secs(60);

/// How long DynamoDB Streams holds a record. A snapshot that took longer
/// cannot be followed by every change made since it began.
pub const STREAM_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

/// Most segments one worker scans at once, whatever its share: the read
/// budget, not the number of segments, sets the pace, and a table of a
/// million segments must not become a million tasks.
pub const MAX_SEGMENTS_PER_WORKER: usize = 32;

/// How often a table's snapshot progress is logged.
const PROGRESS_LOG_INTERVAL: Duration = Duration::from_secs(30);

/// What the snapshots of this application are.
#[derive(Debug, Clone)]
pub struct SnapshotSettings {
    /// `on` or `only` (an `off` application has no [`Snapshots`]).
    pub mode: SnapshotMode,
    /// Segments of a new snapshot.
    pub segments: u32,
    /// Read capacity units per second for the whole application.
    pub rcu: f64,
    /// Most items per Scan page: one page is delivered as one batch.
    pub page_items: u32,
    /// The configured tables (found tables are registered by discovery).
    pub tables: Vec<String>,
    /// What to do with a snapshot that outlived the stream's retention.
    pub on_trimmed: OnTrimmed,
}

/// When the coordinator may follow a registered table's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamStart {
    /// Its snapshot is not complete yet.
    Wait,
    /// From the stream's start, passing over records created before this
    /// time (epoch seconds; `None`: no snapshot, the starting position).
    Follow(Option<i64>),
    /// Never: the snapshot outlived the stream's retention and
    /// `DYNASTREAM_ON_TRIMMED=stop`.
    Refused,
}

/// Every segment item of `table`, by segment number.
fn segments_of<'a>(
    leases: impl Iterator<Item = &'a Lease>,
    table: &str,
) -> BTreeMap<u32, &'a Lease> {
    leases
        .filter(|lease| lease.kind() == ItemKind::Segment)
        .filter_map(|lease| {
            let state = lease.snapshot.as_ref()?;
            (state.table == table).then_some((state.segment?, lease))
        })
        .collect()
}

/// Whether the snapshot a table item records is complete: every one of its
/// segments exists and was scanned to its end.
pub fn is_complete<'a>(leases: impl Iterator<Item = &'a Lease>, table_item: &Lease) -> bool {
    let Some(state) = &table_item.snapshot else {
        return true;
    };
    let segments = segments_of(leases, &state.table);
    (0..state.total_segments).all(|n| segments.get(&n).is_some_and(|s| segment_complete(s)))
}

fn segment_complete(lease: &Lease) -> bool {
    lease.snapshot.as_ref().is_some_and(|s| s.complete)
}

/// When the stream of a registered table may be followed, judged at
/// `now_millis`. A snapshot that took longer than the stream's retention
/// has lost changes from its first hours: that is logged as an error by
/// the caller, and followed only under `DYNASTREAM_ON_TRIMMED=skip`.
pub fn stream_start<'a>(
    leases: impl Iterator<Item = &'a Lease>,
    table_item: &Lease,
    now_millis: u64,
    on_trimmed: OnTrimmed,
) -> StreamStart {
    let Some(state) = &table_item.snapshot else {
        return StreamStart::Follow(None);
    };
    if !is_complete(leases, table_item) {
        return StreamStart::Wait;
    }
    if outlived_retention(table_item, now_millis) && on_trimmed == OnTrimmed::Stop {
        return StreamStart::Refused;
    }
    let start = (state.started_at_millis / 1000) as i64;
    StreamStart::Follow(Some(start - CLOCK_MARGIN.as_secs() as i64))
}

/// Whether the snapshot a table item records began longer ago than the
/// stream's retention: the stream may no longer hold every change since.
pub fn outlived_retention(table_item: &Lease, now_millis: u64) -> bool {
    table_item.snapshot.as_ref().is_some_and(|state| {
        Duration::from_millis(now_millis.saturating_sub(state.started_at_millis)) > STREAM_RETENTION
    })
}

/// A table item, as the lease table holds it.
pub fn table_item(table: &str, stream_arn: Option<&str>, snapshot: Option<SnapshotState>) -> Lease {
    let key = SnapshotState::table_key(table);
    let mut lease = Lease::new(
        stream_arn.unwrap_or_default(),
        &key,
        None,
        Checkpoint::ShardEnd,
    );
    lease.stream_arn = stream_arn.map(str::to_owned);
    lease.snapshot = snapshot;
    lease
}

/// A new snapshot's state on its table item, begun now.
pub fn begin(table: &str, segments: u32) -> SnapshotState {
    segment::fresh(table, epoch_millis(), segments, None)
}

fn epoch_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// How long until a snapshot completes at the pace it has kept since it
/// began: `None` before its first item or when the table's size is unknown.
pub fn estimated_remaining(
    items_done: u64,
    items_estimated: Option<u64>,
    elapsed: Duration,
) -> Option<Duration> {
    let total = items_estimated?;
    if items_done == 0 {
        return None;
    }
    let left = total.saturating_sub(items_done) as f64;
    Some(Duration::from_secs_f64(
        elapsed.as_secs_f64() * left / items_done as f64,
    ))
}

/// A segment this worker holds.
struct HeldSegment {
    lease: Arc<HeldLease>,
    /// Stops the segment's task at its next page boundary.
    stop: CancellationToken,
    /// The worker it is being handed to, once asked.
    handing_to: Option<String>,
}

/// This worker's part in the application's snapshots.
pub struct Snapshots {
    settings: SnapshotSettings,
    worker_id: String,
    lease_duration: Duration,
    api: Arc<dyn TablesApi>,
    store: Arc<dyn LeaseStore>,
    pipelines: Arc<[Arc<Dispatcher>]>,
    budget: Arc<ReadBudget>,
    held: HashMap<String, HeldSegment>,
    /// Segments whose records could not be delivered nor stored: kept
    /// leased (so no worker delivers past them) and not scanned again.
    halted: HashMap<String, String>,
    /// Each table's estimated item count (DescribeTable), for the ETA.
    item_counts: HashMap<String, Option<u64>>,
    last_progress_log: HashMap<String, Instant>,
    tasks: TaskTracker,
    aborts: Vec<AbortHandle>,
    stop: CancellationToken,
    exits_tx: mpsc::UnboundedSender<(String, ShardExit)>,
    exits_rx: mpsc::UnboundedReceiver<(String, ShardExit)>,
}

impl Snapshots {
    /// This worker's snapshots, delivering through `pipelines`.
    pub fn new(
        settings: SnapshotSettings,
        worker_id: &str,
        lease_duration: Duration,
        api: Arc<dyn TablesApi>,
        store: Arc<dyn LeaseStore>,
        pipelines: Vec<Arc<Dispatcher>>,
    ) -> Self {
        let (exits_tx, exits_rx) = mpsc::unbounded_channel();
        Snapshots {
            budget: Arc::new(ReadBudget::new(settings.rcu)),
            settings,
            worker_id: worker_id.to_owned(),
            lease_duration,
            api,
            store,
            pipelines: pipelines.into(),
            held: HashMap::new(),
            halted: HashMap::new(),
            item_counts: HashMap::new(),
            last_progress_log: HashMap::new(),
            tasks: TaskTracker::new(),
            aborts: Vec::new(),
            stop: CancellationToken::new(),
            exits_tx,
            exits_rx,
        }
    }

    /// The configured tables (`DYNASTREAM_TABLES`) this worker snapshots:
    /// registered at start-up, never dropped by discovery.
    pub fn configured_tables(&self) -> &[String] {
        &self.settings.tables
    }

    /// Whether the snapshot is all there is (`only`): no stream is followed.
    pub fn only(&self) -> bool {
        self.settings.mode == SnapshotMode::Only
    }

    /// The configured tables' items, created unless a previous run (or
    /// another worker) did: the snapshot begins here, once per table per
    /// application. A table that does not exist, or (for `on`) has no
    /// stream, is a configuration error.
    pub async fn register_configured(&mut self, shutdown: &CancellationToken) -> Result<(), Error> {
        for table in self.settings.tables.clone() {
            let api = Arc::clone(&self.api);
            let described = retry(&mut Backoff::for_aws_calls(), shutdown, || {
                let api = Arc::clone(&api);
                let table = table.clone();
                async move { Attempt::from(api.describe_table(&table).await) }
            })
            .await;
            let description = match described {
                Ok(description) => description,
                Err(RetryError::Cancelled(_)) => return Ok(()),
                Err(RetryError::Failed(TablesError::NotFound(_))) => {
                    return Err(Error::Config(format!(
                        "DYNASTREAM_TABLES: table {table:?} does not exist"
                    )))
                }
                Err(RetryError::Failed(err)) => return Err(Error::Tables(err)),
            };
            if description.stream_arn.is_none() && !self.only() {
                return Err(Error::NoStream { table });
            }
            self.item_counts
                .insert(table.clone(), description.item_count);
            let item = table_item(
                &table,
                description.stream_arn.as_deref(),
                Some(begin(&table, self.settings.segments)),
            );
            let store = Arc::clone(&self.store);
            let created = retry(&mut Backoff::for_aws_calls(), shutdown, || {
                let store = Arc::clone(&store);
                let item = item.clone();
                async move { Attempt::from(store.create_lease_if_absent(&item).await) }
            })
            .await;
            match created {
                Ok(true) => {
                    tracing::info!(%table, segments = self.settings.segments, "snapshot begun")
                }
                Ok(false) => {}
                Err(RetryError::Cancelled(_)) => return Ok(()),
                Err(RetryError::Failed(err)) => return Err(Error::Lease(err)),
            }
        }
        Ok(())
    }

    /// Whether every configured table's snapshot, and every other one the
    /// lease table records, is complete (for `only`: time to exit).
    pub fn finished(&self, leases: &HashMap<String, Lease>) -> bool {
        let configured_complete = self.settings.tables.iter().all(|table| {
            leases
                .get(&SnapshotState::table_key(table))
                .is_some_and(|item| is_complete(leases.values(), item))
        });
        configured_complete
            && self.held.is_empty()
            && leases
                .values()
                .filter(|l| l.kind() == ItemKind::Table)
                .all(|item| is_complete(leases.values(), item))
    }

    /// Segments halted on undeliverable records (the worker is not ready).
    pub fn halted(&self) -> usize {
        self.halted.len()
    }

    /// Acts on the lease table as just read: settles finished segment
    /// tasks, creates missing segment items, takes segments towards this
    /// worker's share of those left, and sets its share of the read budget.
    pub async fn tick(
        &mut self,
        leases: &HashMap<String, Lease>,
        is_expired: impl Fn(&Lease) -> bool,
        live_workers: usize,
    ) {
        self.settle_exits().await;
        self.create_missing_segments(leases).await;
        let me = self.worker_id.clone();
        let me = me.as_str();
        let unfinished: Vec<&Lease> = leases
            .values()
            .filter(|l| l.kind() == ItemKind::Segment && !segment_complete(l))
            .collect();
        let share = unfinished
            .len()
            .div_ceil(live_workers.max(1))
            .min(MAX_SEGMENTS_PER_WORKER);
        self.hand_over_asked(&unfinished);
        let mut free: Vec<&Lease> = unfinished
            .iter()
            .copied()
            .filter(|l| !self.held.contains_key(&l.key) && !self.halted.contains_key(&l.key))
            .filter(|l| l.owner.is_none() || l.is_owned_by(me) || is_expired(l))
            .collect();
        free.sort_by(|a, b| a.key.cmp(&b.key));
        for lease in free {
            if self.held.len() >= share {
                break;
            }
            self.take(lease).await;
        }
        self.ask_for_share(&unfinished, share, &is_expired).await;
        // The read budget is shared in proportion to the segments each
        // worker is scanning.
        let scanning = unfinished
            .iter()
            .filter(|l| self.held.contains_key(&l.key) || (l.owner.is_some() && !is_expired(l)))
            .count();
        let mine = self.held.len();
        if mine > 0 {
            let rate = self.settings.rcu * mine as f64 / scanning.max(mine) as f64;
            self.budget.set_rate(rate);
        }
        self.publish(leases, &is_expired).await;
    }

    /// Stops, at their next page boundary, the held segments another worker
    /// asked for; they are handed over when their tasks exit.
    fn hand_over_asked(&mut self, unfinished: &[&Lease]) {
        for lease in unfinished {
            let Some(held) = self.held.get_mut(&lease.key) else {
                continue;
            };
            let Some(next) = lease.pending_owner.as_deref() else {
                continue;
            };
            if held.handing_to.is_none()
                && next != self.worker_id
                && !self.halted.contains_key(&lease.key)
            {
                tracing::info!(segment = %lease.key, to = %next, "handing a snapshot segment over at its next page");
                held.handing_to = Some(next.to_owned());
                held.stop.cancel();
            }
        }
    }

    /// Below its share with no segment free, this worker asks the workers
    /// holding the most (above the share) for one each.
    async fn ask_for_share(
        &mut self,
        unfinished: &[&Lease],
        share: usize,
        is_expired: &impl Fn(&Lease) -> bool,
    ) {
        let me = self.worker_id.clone();
        // Segments already asked for count as coming, and no longer as
        // their holder's.
        let asked = unfinished
            .iter()
            .filter(|l| l.pending_owner.as_deref() == Some(me.as_str()))
            .count();
        let mut wanted = share.saturating_sub(self.held.len() + asked);
        if wanted == 0 {
            return;
        }
        let mut held_by: HashMap<&str, Vec<&Lease>> = HashMap::new();
        for lease in unfinished {
            if let Some(owner) = lease.owner.as_deref() {
                if owner != me && !is_expired(lease) && lease.pending_owner.is_none() {
                    held_by.entry(owner).or_default().push(lease);
                }
            }
        }
        while wanted > 0 {
            let Some((owner, leases)) = held_by
                .iter_mut()
                .filter(|(_, leases)| leases.len() > share)
                .max_by_key(|(owner, leases)| (leases.len(), std::cmp::Reverse(**owner)))
            else {
                return;
            };
            let owner = owner.to_string();
            let lease = leases.remove(0);
            match self.store.request_handoff(lease, &me).await {
                Ok(_) => {
                    tracing::info!(segment = %lease.key, from = %owner, "asked for a snapshot segment");
                    wanted -= 1;
                }
                Err(err) => {
                    tracing::debug!(segment = %lease.key, error = %err, "could not ask for a snapshot segment");
                    return;
                }
            }
        }
    }

    async fn take(&mut self, lease: &Lease) {
        let started = Instant::now();
        let taken = match self.store.take_lease(lease, &self.worker_id).await {
            Ok(taken) => taken,
            Err(LeaseError::Conflict { .. }) => return,
            Err(err) => {
                tracing::warn!(segment = %lease.key, error = %err, "could not take a snapshot segment");
                return;
            }
        };
        tracing::info!(segment = %lease.key, previous_owner = ?lease.owner, "took a snapshot segment");
        let held = Arc::new(HeldLease::new(
            Arc::clone(&self.store),
            taken,
            self.lease_duration,
            started,
        ));
        let stop = self.stop.child_token();
        self.held.insert(
            lease.key.clone(),
            HeldSegment {
                lease: Arc::clone(&held),
                stop: stop.clone(),
                handing_to: None,
            },
        );
        let scan = segment::SegmentScan {
            lease: held,
            api: Arc::clone(&self.api),
            pipelines: Arc::clone(&self.pipelines),
            budget: Arc::clone(&self.budget),
            page_items: self.settings.page_items,
        };
        let key = lease.key.clone();
        let exits = self.exits_tx.clone();
        let span = tracing::info_span!("snapshot", segment = %key);
        let task = self.tasks.spawn(
            async move {
                let exit = scan.run(stop).await;
                // Owned by the coordinator's `Snapshots` for its whole life.
                let _ = exits.send((key, exit));
            }
            .instrument(span),
        );
        self.aborts.retain(|task| !task.is_finished());
        self.aborts.push(task.abort_handle());
    }

    async fn settle_exits(&mut self) {
        while let Ok((key, exit)) = self.exits_rx.try_recv() {
            let Some(segment) = self.held.remove(&key) else {
                continue;
            };
            let held = Arc::clone(&segment.lease);
            match exit {
                ShardExit::Stopped if segment.handing_to.is_some() && !self.stop.is_cancelled() => {
                    let mut pending = held.snapshot().await;
                    pending.pending_owner = segment.handing_to.clone();
                    match held.hand_off(&pending).await {
                        Ok(()) => {
                            tracing::info!(segment = %key, to = ?segment.handing_to, "handed a snapshot segment over")
                        }
                        Err(err) => {
                            tracing::warn!(segment = %key, error = %err, "could not hand a snapshot segment over; it will expire instead")
                        }
                    }
                }
                ShardExit::Ended => {
                    if let Err(err) = held.release().await {
                        tracing::debug!(segment = %key, error = %err, "could not release a complete segment");
                    }
                }
                ShardExit::Halted(reason) => {
                    tracing::error!(segment = %key, %reason, "snapshot segment halted: its lease is kept so no worker delivers past the failed items; set DYNASTREAM_ON_FAILURE or fix the processor, then restart this worker");
                    self.halted.insert(key.clone(), reason);
                    self.held.insert(key, segment);
                }
                ShardExit::Failed(reason) => {
                    tracing::error!(segment = %key, %reason, "snapshot segment failed; releasing it so it is retried");
                    let _ = held.release().await;
                }
                ShardExit::LeaseLost => {
                    tracing::warn!(segment = %key, "stopped scanning a segment whose lease was lost")
                }
                ShardExit::Stopped => {}
            }
        }
    }

    async fn create_missing_segments(&mut self, leases: &HashMap<String, Lease>) {
        for item in leases.values().filter(|l| l.kind() == ItemKind::Table) {
            let Some(state) = &item.snapshot else {
                continue;
            };
            let existing = segments_of(leases.values(), &state.table);
            if existing.len() as u32 >= state.total_segments {
                continue;
            }
            for n in 0..state.total_segments {
                if existing.contains_key(&n) {
                    continue;
                }
                let key = SnapshotState::segment_key(&state.table, n);
                let mut segment = Lease::new("", &key, None, Checkpoint::TrimHorizon);
                segment.stream_arn = None;
                segment.snapshot = Some(segment::fresh(
                    &state.table,
                    state.started_at_millis,
                    state.total_segments,
                    Some(n),
                ));
                if let Err(err) = self.store.create_lease_if_absent(&segment).await {
                    tracing::warn!(%key, error = %err, "could not create a snapshot segment; will retry");
                    return;
                }
            }
        }
    }

    /// Segment gauges, and the estimated time to completion: in the log
    /// every 30 s while a snapshot runs, and as a gauge.
    async fn publish(
        &mut self,
        leases: &HashMap<String, Lease>,
        is_expired: &impl Fn(&Lease) -> bool,
    ) {
        let now = epoch_millis();
        for item in leases.values().filter(|l| l.kind() == ItemKind::Table) {
            let Some(state) = &item.snapshot else {
                continue;
            };
            let segments = segments_of(leases.values(), &state.table);
            let complete = segments.values().filter(|s| segment_complete(s)).count() as u64;
            let scanning = segments
                .values()
                .filter(|s| !segment_complete(s) && s.owner.is_some() && !is_expired(s))
                .count() as u64;
            let pending = u64::from(state.total_segments).saturating_sub(complete + scanning);
            let items: u64 = segments
                .values()
                .filter_map(|s| s.snapshot.as_ref().map(|s| s.items))
                .sum();
            let done = complete == u64::from(state.total_segments);
            if !done && !self.item_counts.contains_key(&state.table) {
                let count = self
                    .api
                    .describe_table(&state.table)
                    .await
                    .ok()
                    .and_then(|d| d.item_count);
                self.item_counts.insert(state.table.clone(), count);
            }
            let elapsed = Duration::from_millis(now.saturating_sub(state.started_at_millis));
            let eta = if done {
                Some(Duration::ZERO)
            } else {
                estimated_remaining(
                    items,
                    self.item_counts.get(&state.table).copied().flatten(),
                    elapsed,
                )
            };
            metrics::snapshot_progress(
                &state.table,
                pending,
                scanning,
                complete,
                eta.map(|eta| eta.as_secs_f64()),
            );
            let due = self
                .last_progress_log
                .get(&state.table)
                .is_none_or(|at| at.elapsed() >= PROGRESS_LOG_INTERVAL);
            if !done && due {
                self.last_progress_log
                    .insert(state.table.clone(), Instant::now());
                tracing::info!(
                    table = %state.table,
                    items,
                    segments_complete = complete,
                    segments_scanning = scanning,
                    segments_pending = pending,
                    eta_seconds = eta.map(|eta| eta.as_secs()),
                    "snapshot progress"
                );
            }
        }
    }

    /// Renews every held segment; a refused renewal means another worker
    /// has it, and its task stops at once.
    pub async fn renew(&mut self) {
        let renewals = self
            .held
            .iter()
            .map(|(key, held)| async move { (key.clone(), held.lease.renew().await) });
        for (key, result) in futures::future::join_all(renewals).await {
            match result {
                Ok(()) => {}
                Err(LeaseError::Conflict { .. }) => {
                    tracing::warn!(segment = %key, "lost a snapshot segment's lease");
                    self.held.remove(&key);
                    self.halted.remove(&key);
                }
                Err(err) => {
                    tracing::warn!(segment = %key, error = %err, "could not renew a snapshot segment; will retry")
                }
            }
        }
    }

    /// Stops every segment task at its next page boundary (each records
    /// its last delivered page first), waits up to `grace`, then releases
    /// the segments so other workers resume them at once.
    pub async fn shut_down(mut self, grace: Duration) {
        self.stop.cancel();
        self.tasks.close();
        if tokio::time::timeout(grace, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("snapshot segments still delivering after the shutdown grace period; their last page will be delivered again by the next owner");
            for task in self.aborts.drain(..) {
                task.abort();
            }
            self.tasks.wait().await;
        }
        self.settle_exits().await;
        for (key, held) in self.held.drain() {
            if let Err(err) = held.lease.release().await {
                tracing::debug!(segment = %key, error = %err, "could not release a snapshot segment; it will expire instead");
            }
        }
    }
}

#[cfg(test)]
mod tests;

//! The coordinator: discovery, lease balancing, and the shard tasks it owns.
//!
//! One task per worker. It resolves the configured tables to their current
//! streams, announces the worker in the lease table, and then, on three
//! clocks:
//!
//! - every half renewal interval it looks at the lease table (through its
//!   indexes, scanning it whole only every few minutes: [`reads`]), judges
//!   expiry on its own monotonic clock, takes or steals leases towards its
//!   fair share ([`balance`]) and starts a shard task ([`Pipelines::shard_task`]) for each held lease whose
//!   parents are done ([`graph`]);
//! - every renewal interval (a third of the lease duration) it renews what it
//!   holds: its shard leases, its presence item and, if it has it, the
//!   shard-sync leadership;
//! - as shard-sync leader, it lists each stream on its own clock (new
//!   shards only; whole once per refresh interval), creates missing leases
//!   and deletes leases of shards long gone: [`discovery`] decides what to
//!   list and when, the syncer task lists, the collector picks what to delete.
//!
//! Each consumer reports how it ended with one [`ShardExit`]. On shutdown the
//! coordinator stops the consumers, waits for in-flight batches (renewing
//! meanwhile) and releases every lease so other workers take them at once.

pub mod balance;
mod collect;
mod discovery;
pub mod graph;
mod lease_view;
pub mod reads;
mod state;
mod sync_set;
mod syncer;
pub mod table_discovery;

use collect::{CollectView, Collector};
use discovery::{Discovery, DiscoverySettings, SyncRequest};
use lease_view::{Ask, HeldVerdict, LeaseView, Observations};
use reads::{Dead, ReadMode, Reads};
use state::{Handoff, ShardState};
use sync_set::SyncSet;
use syncer::{Listing, ShardSyncer};
use table_discovery::{TableDiscovery, TableDiscoverySettings};

use futures::StreamExt;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::backoff::Backoff;
use crate::config::StartingPosition;
use crate::error::Error;
use crate::lease::held::{Heartbeat, HeldLease};
use crate::lease::{Checkpoint, ItemKind, Lease, LeaseError, LeaseScan, LeaseStore, PipelineStart};
use crate::pipeline::{Parents, Pipelines};
use crate::retry::{retry, Attempt, RetryError, Retryable};
use crate::shard::{ShardExit, ShardSettings};
use crate::snapshot::{Snapshots, StreamStart};
use crate::streams::{newest_stream, ShardInfo, StreamStatus, StreamsApi, StreamsError};
use crate::tables::TablesApi;
use crate::telemetry::events::{
    LeaseHandedOver, LeaseLost, LeaseReleased, LeaseRenewFailed, LeaseRequested, LeaseStolen,
    LeaseTaken, LostBy,
};
use crate::telemetry::metrics;
use crate::telemetry::server::Health;

/// Most lease writes a worker has in flight at once (renewals, releases).
/// Each holds a connection to DynamoDB, and the SDK's pool keeps every
/// connection it opened: renewing 1,000 leases all at once kept 1,000 open.
const LEASE_WRITES_IN_FLIGHT: usize = 32;
/// Where the coordinator's streams come from and how it keeps leases.
#[derive(Debug, Clone)]
pub struct CoordinatorSettings {
    /// This worker's identity in the lease table.
    pub worker_id: String,
    /// Tables whose current stream to consume.
    pub tables: Vec<String>,
    /// Streams given by ARN.
    pub stream_arns: Vec<String>,
    /// Where a new application starts.
    pub starting_position: StartingPosition,
    /// How long a lease lives without renewal.
    pub lease_duration: Duration,
    /// How often held leases are renewed.
    pub renew_interval: Duration,
    /// How often the shard-sync leader lists each stream's new shards (at
    /// least; stretched to keep within a quarter of `describe_stream_rps`).
    pub shard_sync_interval: Duration,
    /// How often each table's current stream is looked up again
    /// (ListStreams) and each stream listed whole.
    pub stream_refresh_interval: Duration,
    /// DescribeStream calls per second this worker may make.
    pub describe_stream_rps: f64,
    /// The bound on finishing in-flight batches at shutdown.
    pub shutdown_grace: Duration,
    /// Most leases this worker holds, whatever its fair share.
    pub max_leases: Option<usize>,
    /// How each shard is read.
    pub shard: ShardSettings,
    /// How tables are found besides `tables` (`None`: they are not).
    pub table_discovery: Option<TableDiscoverySettings>,
    /// Whether found tables are snapshotted before their stream is followed.
    pub snapshot_found_tables: Option<u32>,
    /// How often the whole lease table is scanned while it is read through
    /// its indexes ([`reads::DEFAULT_TABLE_SCAN_INTERVAL`]).
    pub table_scan_interval: Duration,
}

impl CoordinatorSettings {
    /// How often the lease table is read: twice per renewal interval, so a
    /// dead worker's leases are taken within a lease duration plus one
    /// renewal interval of its last renewal.
    fn scan_interval(&self) -> Duration {
        (self.renew_interval / 2).max(Duration::from_millis(50))
    }
}

struct Held {
    lease: Arc<HeldLease>,
    stream_arn: String,
    state: ShardState,
    /// Stops this shard's consumer at its next batch boundary.
    stop: CancellationToken,
}

/// How the presence item is named among the held items being renewed.
const PRESENCE: &str = "presence";

/// Runs one worker's share of the application.
pub struct Coordinator {
    settings: CoordinatorSettings,
    api: Arc<dyn StreamsApi>,
    store: Arc<dyn LeaseStore>,
    pipelines: Pipelines,
    /// How each named pipeline starts on a shard new to it (none for the one
    /// unnamed pipeline), derived once from `pipelines`.
    pipeline_starts: Vec<PipelineStart>,
    discovery: Discovery,
    leases: HashMap<String, Lease>,
    shard_keys: HashMap<(String, String), String>,
    observed: Observations,
    reported_malformed: HashSet<String>,
    held: HashMap<String, Held>,
    presence: Option<Arc<HeldLease>>,
    /// Beaten by the presence item's writes; the shard leases are tied to it.
    heartbeat: Arc<Heartbeat>,
    /// How the lease table is read.
    reads: Reads,
    leader: Option<Arc<HeldLease>>,
    handoff_requests: HashMap<String, Instant>,
    /// Set while the lease table cannot be found (deleted under us).
    lease_table_missing: bool,
    collector: Collector,
    sync_results: mpsc::UnboundedReceiver<Listing>,
    syncer: Option<ShardSyncer>,
    health: Arc<Health>,
    /// The shard leases after each look at the lease table, for pipelines
    /// waiting to finish a parent shard (published only while one waits).
    lease_table: tokio::sync::watch::Sender<Arc<[Lease]>>,
    tasks: TaskTracker,
    /// Every task in `tasks` can be aborted: when the shutdown grace runs
    /// out, none may outlive [`Coordinator::run`].
    aborts: Vec<AbortHandle>,
    stop_consumers: CancellationToken,
    exits_tx: mpsc::UnboundedSender<(String, ShardExit)>,
    exits_rx: mpsc::UnboundedReceiver<(String, ShardExit)>,
    /// This worker's part in the application's snapshots.
    snapshots: Option<Snapshots>,
    /// Table reads, for discovery.
    tables_api: Option<Arc<dyn TablesApi>>,
    table_discovery: Option<TableDiscovery>,
    /// Streams of snapshotted tables: records created before this time
    /// (epoch seconds) are passed over.
    stream_cutoffs: HashMap<String, i64>,
    /// Registered tables whose stream is not followed (their snapshot
    /// outlived the stream's retention under `DYNASTREAM_ON_TRIMMED=stop`).
    refused_streams: HashSet<String>,
}

impl Coordinator {
    /// A coordinator over the given seams.
    pub fn new(
        settings: CoordinatorSettings,
        api: Arc<dyn StreamsApi>,
        store: Arc<dyn LeaseStore>,
        pipelines: impl Into<Pipelines>,
    ) -> Self {
        let pipelines: Pipelines = pipelines.into();
        let reads = Reads::new(settings.table_scan_interval);
        let (exits_tx, exits_rx) = mpsc::unbounded_channel();
        let pending = Arc::new(SyncSet::default());
        let (results_tx, sync_results) = mpsc::unbounded_channel();
        let syncer = ShardSyncer::new(Arc::clone(&api), Arc::clone(&pending), results_tx);
        let collector = Collector::new(&settings.worker_id, settings.lease_duration);
        let discovery = Discovery::new(
            DiscoverySettings {
                shard_sync_interval: settings.shard_sync_interval,
                stream_refresh_interval: settings.stream_refresh_interval,
                describe_stream_rps: settings.describe_stream_rps,
            },
            Arc::clone(&pending),
        );
        Coordinator {
            settings,
            api,
            store,
            pipeline_starts: pipelines.starts(),
            pipelines,
            discovery,
            leases: HashMap::new(),
            shard_keys: HashMap::new(),
            observed: Observations::default(),
            reported_malformed: HashSet::new(),
            held: HashMap::new(),
            presence: None,
            heartbeat: Heartbeat::new(),
            reads,
            leader: None,
            handoff_requests: HashMap::new(),
            lease_table_missing: false,
            collector,
            sync_results,
            syncer: Some(syncer),
            health: Health::new(),
            lease_table: tokio::sync::watch::channel(Arc::from(Vec::new())).0,
            tasks: TaskTracker::new(),
            aborts: Vec::new(),
            stop_consumers: CancellationToken::new(),
            exits_tx,
            exits_rx,
            snapshots: None,
            tables_api: None,
            table_discovery: None,
            stream_cutoffs: HashMap::new(),
            refused_streams: HashSet::new(),
        }
    }

    /// Takes part in the application's snapshots.
    pub fn with_snapshots(mut self, snapshots: Snapshots) -> Self {
        self.snapshots = Some(snapshots);
        self
    }

    /// Reads tables through `api`: table discovery (when configured) needs it.
    pub fn with_tables(mut self, api: Arc<dyn TablesApi>) -> Self {
        self.table_discovery = self
            .settings
            .table_discovery
            .clone()
            .map(TableDiscovery::new);
        self.tables_api = Some(api);
        self
    }

    /// Whether this worker only takes snapshots (`DYNASTREAM_SNAPSHOT=only`).
    fn snapshot_only(&self) -> bool {
        self.snapshots.as_ref().is_some_and(Snapshots::only)
    }

    /// Reports readiness and status through `health` (the HTTP endpoints).
    pub fn with_health(mut self, health: Arc<Health>) -> Self {
        self.health = health;
        self
    }

    /// Runs until `shutdown` fires, then drains and releases its leases.
    ///
    /// Returns an error only for what retrying cannot fix at start-up (a table
    /// without a stream, a refused lease table); transient failures are
    /// retried with backoff for as long as it takes.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), Error> {
        if let Err(err) = self.start(&shutdown).await {
            // Interrupted start-up calls fail with their last error; a
            // requested shutdown is not a failure.
            return if shutdown.is_cancelled() {
                Ok(())
            } else {
                Err(err)
            };
        }
        if shutdown.is_cancelled() {
            return Ok(());
        }
        tracing::info!(
            worker = %self.settings.worker_id,
            streams = self.discovery.streams.len(),
            "coordinator running"
        );
        self.health.set_ready(true);
        let mut renew = tokio::time::interval(self.settings.renew_interval);
        renew.set_missed_tick_behavior(MissedTickBehavior::Delay);
        renew.reset();
        let mut scan = tokio::time::interval(self.settings.scan_interval());
        scan.set_missed_tick_behavior(MissedTickBehavior::Delay);
        scan.reset();
        loop {
            if self.snapshot_only()
                && self
                    .snapshots
                    .as_ref()
                    .is_some_and(|s| s.finished(&self.leases))
            {
                tracing::info!("every snapshot is complete (DYNASTREAM_SNAPSHOT=only): stopping");
                break;
            }
            let listing_due = self.discovery.next_listing_due();
            let table_due = self.discovery.next_table_due();
            let next_expiry = self.next_expiry();
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = renew.tick() => self.renew_all().await,
                _ = scan.tick() => self.balance().await,
                // Look again the moment another worker's lease would expire,
                // rather than up to a scan interval later.
                _ = sleep_until_opt(next_expiry) => self.balance().await,
                _ = sleep_until_opt(listing_due) => self.discovery.request_due_listings(Instant::now()),
                _ = sleep_until_opt(table_due) => self.follow_tables().await,
                Some(listing) = self.sync_results.recv() => {
                    let mut changed = self.on_listing(listing).await;
                    while let Ok(listing) = self.sync_results.try_recv() {
                        changed |= self.on_listing(listing).await;
                    }
                    if changed {
                        self.balance().await;
                    }
                }
                Some((key, exit)) = self.exits_rx.recv() => self.on_exit(key, exit).await,
            }
        }
        self.drain_and_release().await;
        Ok(())
    }

    async fn start(&mut self, shutdown: &CancellationToken) -> Result<(), Error> {
        let store = Arc::clone(&self.store);
        retry_until_done("create the lease table", shutdown, || store.ensure_table())
            .await
            .map_err(Error::Lease)?;
        if let Some(snapshots) = &mut self.snapshots {
            snapshots.register_configured(shutdown).await?;
        }
        let mut table_streams = HashMap::new();
        for table in self.settings.tables.clone() {
            let api = Arc::clone(&self.api);
            let found = retry_until_done("list the table's streams", shutdown, || {
                let api = Arc::clone(&api);
                let table = table.clone();
                async move { api.list_streams(&table).await }
            })
            .await;
            let found = match found {
                Ok(found) => found,
                Err(StreamsError::NotFound(_)) => return Err(Error::NoStream { table }),
                Err(err) => return Err(Error::Streams(err)),
            };
            match newest_stream(&found) {
                Some(stream) => {
                    tracing::info!(%table, stream = %stream.stream_arn, "resolved the table's stream");
                    table_streams.insert(table.clone(), stream.stream_arn.clone());
                }
                None if shutdown.is_cancelled() => return Ok(()),
                None => return Err(Error::NoStream { table }),
            }
        }
        self.discovery.follow(
            self.settings.stream_arns.clone(),
            table_streams,
            Instant::now(),
        );
        if let Some(syncer) = self.syncer.take() {
            // Owned by the coordinator: stopped with the consumers and
            // awaited with them at shutdown.
            let task = self
                .tasks
                .spawn(syncer.run(self.stop_consumers.child_token()));
            self.own(task.abort_handle());
        }
        self.announce().await;
        self.refresh_leases().await;
        self.elect_leader().await;
        // Every worker looks for tables once at start-up (registering is
        // idempotent); afterwards only the leader does.
        self.discover_tables().await;
        // Streams no lease mentions yet (a new application, or a stream the
        // leader does not know) are listed by this worker itself, from
        // within balance() when it is not the leader.
        self.balance().await;
        Ok(())
    }

    /// Looks up each configured table's current stream again. A table whose
    /// stream was disabled and re-enabled has a new stream: it is followed
    /// from its start, while the old stream's remaining records are drained.
    async fn follow_tables(&mut self) {
        let now = Instant::now();
        for (table, current) in self.discovery.due_tables(now) {
            let found = match self.api.list_streams(&table).await {
                Ok(found) => found,
                Err(err) => {
                    tracing::debug!(%table, error = %err, "could not list the table's streams");
                    continue;
                }
            };
            let Some(newest) = newest_stream(&found) else {
                continue;
            };
            if newest.stream_arn == current {
                continue;
            }
            tracing::warn!(
                %table,
                old = %current,
                new = %newest.stream_arn,
                "the table has a new stream (its stream was disabled and enabled again); \
                 following it from its start, after the old one's remaining records"
            );
            let is_leader = self.leader.is_some();
            self.discovery
                .follow_successor(&table, &newest.stream_arn, is_leader, now);
        }
    }

    /// Lists this worker's pipelines in its presence item (the keys of its
    /// `pipelineCheckpoints`), replacing what an earlier run under the same
    /// worker id listed, so the leader keeps their checkpoints; `None` when
    /// it could not be written (the announcement is retried).
    async fn announce_pipelines(&self, presence: Lease) -> Option<Lease> {
        let names: Vec<String> = self
            .pipeline_starts
            .iter()
            .map(|p| p.name.clone())
            .collect();
        let stale: Vec<String> = presence
            .pipeline_checkpoints
            .keys()
            .filter(|name| !names.contains(name))
            .cloned()
            .collect();
        if !stale.is_empty() {
            if let Err(err) = self
                .store
                .remove_pipeline_checkpoints(&presence, &stale)
                .await
            {
                tracing::warn!(error = %err, "could not announce this worker's pipelines; will retry");
                return None;
            }
        }
        if names.is_empty() {
            return Some(presence);
        }
        let entries = names
            .into_iter()
            .map(|name| (name, Checkpoint::ShardEnd))
            .collect();
        match self
            .store
            .update_pipeline_checkpoints(&presence, &Checkpoint::ShardEnd, &entries)
            .await
        {
            Ok(announced) => Some(announced),
            Err(err) => {
                tracing::warn!(error = %err, "could not announce this worker's pipelines; will retry");
                None
            }
        }
    }

    /// Writes this worker's presence item, so others count it in their fair
    /// share before it holds any lease.
    async fn announce(&mut self) {
        let presence = Lease::worker_presence(&self.settings.worker_id);
        if let Err(err) = self.store.create_lease_if_absent(&presence).await {
            tracing::warn!(error = %err, "could not announce this worker; will retry");
            return;
        }
        let Ok(Some(current)) = self.store.get_lease(&presence.key, true).await else {
            return;
        };
        let started = Instant::now();
        match self
            .store
            .take_lease(&current, &self.settings.worker_id)
            .await
        {
            Ok(taken) => {
                let Some(taken) = self.announce_pipelines(taken).await else {
                    return;
                };
                // The count, at once: a presence item without one (left by
                // an older version) would make every worker scan.
                let held = self.held.len() as u64;
                let taken = match self.store.renew_presence(&taken, held).await {
                    Ok(renewed) => renewed,
                    Err(err) => {
                        tracing::warn!(error = %err, "could not announce this worker; will retry");
                        return;
                    }
                };
                self.presence = Some(Arc::new(
                    HeldLease::new(
                        Arc::clone(&self.store),
                        taken,
                        self.settings.lease_duration,
                        started,
                    )
                    .beating(Arc::clone(&self.heartbeat)),
                ));
            }
            Err(err) => tracing::warn!(error = %err, "could not announce this worker; will retry"),
        }
    }

    /// Looks at the lease table: a whole Scan when one is due, else through
    /// its indexes ([`reads`]). `false` when it could not be read.
    async fn refresh_leases(&mut self) -> bool {
        let now = Instant::now();
        if self.reads.scan_due(now) {
            return self.scan_table(now).await;
        }
        self.read_through_indexes().await
    }

    /// Notes a failed read of the lease table; always `false`. Anything
    /// but a transient failure (the table gone, an index missing: a table
    /// recreated by hand) sends the next look back to a whole scan, which
    /// looks for the indexes again.
    fn read_failed(&mut self, err: LeaseError) -> bool {
        if !err.is_retryable() {
            self.reads.indexes_lost();
        }
        match err {
            LeaseError::TableNotFound { table } => {
                if !self.lease_table_missing {
                    // Recreating it would restart every shard from the
                    // starting position: lost or repeated records. An
                    // operator decides (restore it, or recreate it knowingly).
                    tracing::error!(
                        %table,
                        "the lease table no longer exists: no checkpoint can be written, so this \
                         worker stops handing records on and reports not ready until the table is back"
                    );
                }
                self.lease_table_missing = true;
                self.health.set_ready(false);
            }
            err => tracing::warn!(error = %err, "could not read the lease table; will retry"),
        }
        false
    }

    /// Notes a successful read, reporting each unreadable item once.
    fn read_succeeded(&mut self, malformed: Vec<LeaseError>) {
        if self.lease_table_missing {
            tracing::info!("the lease table is back");
            self.lease_table_missing = false;
        }
        for malformed in malformed {
            let text = malformed.to_string();
            if self.reported_malformed.insert(text.clone()) {
                tracing::error!(error = %text, "skipping a lease-table item that is not a lease");
            }
        }
    }

    /// Reads the whole lease table and updates what we know of other
    /// workers; then decides how to read it until the next scan.
    async fn scan_table(&mut self, now: Instant) -> bool {
        // Judging leases one by one needs every counter as written; the
        // periodic scan between reads through the indexes does not.
        let scanned = match self.reads.mode {
            ReadMode::Scan => self.store.list_leases().await,
            ReadMode::Indexed => self.store.list_leases_eventually().await,
        };
        let scan = match scanned {
            Ok(scan) => scan,
            Err(err) => return self.read_failed(err),
        };
        self.read_succeeded(scan.malformed);
        self.leases = scan
            .leases
            .into_iter()
            .map(|lease| (lease.key.clone(), lease))
            .collect();
        self.observed.observe(&self.leases, Instant::now());
        self.index_shard_leases();
        if self.reads.index_check_due(now) {
            let ready = match self.store.indexes_ready().await {
                Ok(ready) => ready,
                Err(err) => {
                    tracing::warn!(error = %err, "could not look at the lease table's indexes (or add them); scanning the table instead");
                    false
                }
            };
            self.reads.indexes_checked(ready, now);
        }
        let view = self.view();
        let blocker = reads::scan_blocker(&self.settings.worker_id, &self.leases, |presence| {
            !view.is_expired(presence)
        });
        // Whether this worker may read them is decided when taking: the
        // streams' listings may not have arrived yet.
        let free = self
            .leases
            .values()
            .filter(|l| l.kind() == ItemKind::Shard && l.owner.is_none())
            .filter(|l| l.needs_reading(&self.pipeline_starts))
            .map(|l| l.key.clone())
            .collect();
        self.reads.scanned(free, blocker, now);
        if self.reads.mode == ReadMode::Indexed {
            // A worker that fell silent is judged at this look too.
            self.find_dead().await;
        }
        true
    }

    /// Reads the small items and the free leases through the table's own
    /// index, and what it must of the rest: what dead workers owned, the
    /// parents of the shards held here.
    async fn read_through_indexes(&mut self) -> bool {
        let meta = match self.store.list_meta().await {
            Ok(meta) => meta,
            Err(err) => return self.read_failed(err),
        };
        let free = match self.store.list_free().await {
            Ok(free) => free,
            Err(err) => return self.read_failed(err),
        };
        let LeaseScan {
            leases,
            mut malformed,
        } = meta;
        malformed.extend(free.malformed);
        self.read_succeeded(malformed);
        let now = Instant::now();
        let returned: HashSet<&str> = leases.iter().map(|l| l.key.as_str()).collect();
        self.reads.vanished = self
            .leases
            .values()
            .filter(|l| l.kind() == ItemKind::Worker && !returned.contains(l.key.as_str()))
            .map(|l| l.key.clone())
            .collect();
        for lease in leases {
            self.leases.insert(lease.key.clone(), lease);
        }
        self.reads.free.clone_from(&self.reads.scanned_free);
        for lease in free.leases {
            if lease.kind() != ItemKind::Shard {
                continue;
            }
            // An owned one was taken by another application, which left
            // its index entry: still news about it.
            if lease.owner.is_none() {
                self.reads.free.insert(lease.key.clone());
            }
            self.leases.insert(lease.key.clone(), lease);
        }
        // Ours, as our own last writes left them (a renewal returns the
        // item: a handoff request shows there).
        for held in self.held.values() {
            if let Some(lease) = held.lease.try_snapshot() {
                self.leases.insert(lease.key.clone(), lease);
            }
        }
        let small: HashMap<String, Lease> = self
            .leases
            .iter()
            .filter(|(_, l)| l.kind() != ItemKind::Shard)
            .map(|(key, l)| (key.clone(), l.clone()))
            .collect();
        self.observed.observe(&small, now);
        let view = self.view();
        let blocker = reads::scan_blocker(&self.settings.worker_id, &small, |presence| {
            !view.is_expired(presence)
        });
        if blocker.is_some() {
            self.reads.set_blocker(blocker);
        }
        self.find_dead().await;
        self.refresh_parents().await;
        let shards: Vec<String> = self.reads.free.iter().cloned().collect();
        for key in shards {
            self.index_lease(&key);
        }
        true
    }

    /// Judges workers dead by their presence items (unchanged for a lease
    /// duration, confirmed by a strongly consistent read) and lists the
    /// leases they still own, once per silence.
    async fn find_dead(&mut self) {
        let now = Instant::now();
        let me = self.settings.worker_id.as_str();
        let silent: Vec<Lease> = self
            .leases
            .values()
            .filter(|l| l.kind() == ItemKind::Worker && l.presence_of() != Some(me))
            .filter(|l| {
                self.observed
                    .is_expired(l, self.settings.lease_duration, now)
            })
            .cloned()
            .collect();
        let silent_workers: HashSet<&str> = silent.iter().filter_map(Lease::presence_of).collect();
        self.reads
            .dead
            .retain(|worker, _| silent_workers.contains(worker.as_str()));
        for presence in &silent {
            let Some(worker) = presence.presence_of() else {
                continue;
            };
            if self
                .reads
                .dead
                .get(worker)
                .is_some_and(|dead| dead.counter == presence.counter)
            {
                continue;
            }
            match self.store.get_lease(&presence.key, true).await {
                Ok(Some(current))
                    if current.counter != presence.counter || current.owner != presence.owner =>
                {
                    // The index lagged: it is alive.
                    self.observed.note([&current], now);
                    self.reads.vanished.remove(&current.key);
                    self.leases.insert(current.key.clone(), current);
                    continue;
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::debug!(%worker, error = %err, "could not confirm a silent worker's presence");
                    continue;
                }
            }
            let keys: Vec<String> = match self.store.list_owned(worker).await {
                Ok(keys) => keys
                    .into_iter()
                    .filter(|key| ItemKind::of_key(key) == ItemKind::Shard)
                    .collect(),
                Err(err) => {
                    tracing::debug!(%worker, error = %err, "could not list a dead worker's leases");
                    continue;
                }
            };
            if !keys.is_empty() {
                tracing::info!(%worker, leases = keys.len(), "a worker's presence item has not changed for a lease duration: its leases are free to take");
            }
            self.reads.dead.insert(
                worker.to_owned(),
                Dead {
                    counter: presence.counter,
                    keys,
                },
            );
        }
    }

    /// Reads again the parents of the shards held here while they are still
    /// being read (by whichever worker): a child starts, and each pipeline
    /// waiting in it goes on, once they are done.
    async fn refresh_parents(&mut self) {
        let listed = |shard: &str| {
            self.discovery
                .listings
                .values()
                .any(|shards| shards.iter().any(|s| s.shard_id == shard))
        };
        let mut keys = BTreeSet::new();
        for (key, held) in &self.held {
            let Some(lease) = self.leases.get(key) else {
                continue;
            };
            for parent in &lease.parent_shard_ids {
                let known = self
                    .shard_keys
                    .get(&(held.stream_arn.clone(), parent.clone()))
                    .and_then(|key| self.leases.get(key));
                match known {
                    Some(parent) if parent.needs_reading(&self.pipeline_starts) => {
                        keys.insert(parent.key.clone());
                    }
                    Some(_) => {}
                    // Listed and not known: its lease may be new.
                    None if listed(parent) => {
                        keys.insert(parent.clone());
                    }
                    None => {}
                }
            }
        }
        for key in keys {
            match self.store.get_lease(&key, false).await {
                Ok(Some(parent)) => self.learn(parent),
                Ok(None) => {
                    self.leases.remove(&key);
                }
                Err(err) => {
                    tracing::debug!(lease = %key, error = %err, "could not read a parent's lease")
                }
            }
        }
    }

    /// Maps (stream, shard id) to lease keys, inferring the stream of leases
    /// written without one (KCL tables) from the shard listings.
    fn index_shard_leases(&mut self) {
        let mut index = HashMap::new();
        for lease in self.leases.values() {
            if lease.kind() != ItemKind::Shard {
                continue;
            }
            if let Some(stream) = self.stream_of(lease) {
                index.insert((stream, lease.shard_id.clone()), lease.key.clone());
            }
        }
        self.shard_keys = index;
    }

    /// Adds one shard lease to the (stream, shard id) index.
    fn index_lease(&mut self, key: &str) {
        let Some(lease) = self.leases.get(key) else {
            return;
        };
        if lease.kind() != ItemKind::Shard {
            return;
        }
        if let Some(stream) = self.stream_of(lease) {
            let shard = lease.shard_id.clone();
            self.shard_keys.insert((stream, shard), key.to_owned());
        }
    }

    /// The stream a shard lease belongs to, if it is one of ours.
    fn stream_of(&self, lease: &Lease) -> Option<String> {
        self.discovery.stream_of(lease)
    }

    fn lease_of(&self, stream_arn: &str, shard_id: &str) -> Option<&Lease> {
        self.shard_keys
            .get(&(stream_arn.to_owned(), shard_id.to_owned()))
            .and_then(|key| self.leases.get(key))
    }

    /// The lease table as last read, judged at this instant.
    fn view(&self) -> LeaseView<'_> {
        LeaseView {
            me: &self.settings.worker_id,
            leases: &self.leases,
            observed: &self.observed,
            lease_duration: self.settings.lease_duration,
            now: Instant::now(),
            by_presence: self.reads.mode == ReadMode::Indexed,
        }
    }

    /// Whether a shard lease is there to take: nobody owns it or its owner
    /// is gone (through the indexes: the free-lease Query listed it, or its
    /// owner was judged dead).
    fn is_free(&self, lease: &Lease) -> bool {
        match self.reads.mode {
            ReadMode::Scan => lease.owner.is_none() || self.is_expired(lease),
            ReadMode::Indexed => {
                self.reads.free.contains(&lease.key)
                    || lease
                        .owner
                        .as_deref()
                        .is_some_and(|owner| self.reads.dead.contains_key(owner))
            }
        }
    }

    /// Whether a shard lease is this worker's to read (a followed stream's,
    /// not read to its end by every pipeline).
    fn ours(&self, lease: &Lease) -> bool {
        self.stream_of(lease).is_some() && self.to_read(lease)
    }

    fn is_expired(&self, lease: &Lease) -> bool {
        self.view().is_expired(lease)
    }

    /// When the next lease held by another worker would expire if its
    /// counter does not move again.
    fn next_expiry(&self) -> Option<Instant> {
        self.observed.next_expiry(
            &self.settings.worker_id,
            self.settings.lease_duration,
            Instant::now(),
        )
    }

    /// Takes the shard-sync leadership when nobody holds it.
    async fn elect_leader(&mut self) {
        if self.leader.as_ref().is_some_and(|l| !l.is_lost()) {
            return;
        }
        self.leader = None;
        let current = match self.leases.get(crate::lease::SHARD_SYNC_LEADER_KEY) {
            Some(current) => current.clone(),
            None => {
                let fresh = Lease::shard_sync_leader();
                if let Err(err) = self.store.create_lease_if_absent(&fresh).await {
                    tracing::debug!(error = %err, "could not create the leader item");
                    return;
                }
                fresh
            }
        };
        let me = &self.settings.worker_id;
        if current.owner.is_some() && !current.is_owned_by(me) && !self.is_expired(&current) {
            return;
        }
        let started = Instant::now();
        match self.store.take_lease(&current, me).await {
            Ok(taken) => {
                tracing::info!("this worker is now the shard-sync leader");
                self.leases.insert(taken.key.clone(), taken.clone());
                self.leader = Some(Arc::new(HeldLease::new(
                    Arc::clone(&self.store),
                    taken,
                    self.settings.lease_duration,
                    started,
                )));
                self.discovery.lead(Instant::now());
            }
            Err(LeaseError::Conflict { .. }) => {}
            Err(err) => tracing::debug!(error = %err, "could not take the shard-sync leadership"),
        }
    }

    /// Reads the lease table, takes and steals leases towards this worker's
    /// fair share, and starts the shards that may run.
    async fn balance(&mut self) {
        if !self.refresh_leases().await {
            return;
        }
        if self.presence.as_ref().is_none_or(|p| p.is_lost()) {
            self.announce().await;
        }
        self.elect_leader().await;
        if self.leader.is_none() {
            self.discovery.follow_leader();
            let shard_keys = &self.shard_keys;
            self.discovery.request_orphans(Instant::now(), |stream| {
                shard_keys.keys().any(|(leased, _)| leased == stream)
            });
        }
        self.reconcile_held().await;
        if self.leader.as_ref().is_some_and(|l| !l.is_lost())
            && self
                .table_discovery
                .as_ref()
                .is_some_and(|d| d.is_due(Instant::now()))
        {
            self.discover_tables().await;
        }
        self.run_snapshots().await;
        self.adopt_tables();
        if self.reads.mode == ReadMode::Indexed {
            self.balance_by_counts().await;
        } else {
            let decisions = self.view().decide(
                |key| self.held.contains_key(key),
                |lease| self.ours(lease),
                self.settings.max_leases,
            );
            for key in decisions.take {
                self.take(&key, false).await;
            }
            for key in decisions.ask_for {
                self.ask_for(&key).await;
            }
        }
        self.start_ready_shards();
        self.publish();
    }

    /// Balancing while the table is read through its indexes: the lease
    /// counts the live workers announce, the free leases and the dead
    /// workers' leases stand in for the whole table ([`balance::share`]).
    async fn balance_by_counts(&mut self) {
        let me = self.settings.worker_id.clone();
        self.follow_handoffs().await;
        // Owned here but not held (a restart under the same id): first.
        let mine: Vec<String> = self
            .leases
            .values()
            .filter(|l| l.kind() == ItemKind::Shard && l.is_owned_by(&me))
            .filter(|l| !self.held.contains_key(&l.key) && self.ours(l))
            .map(|l| l.key.clone())
            .collect();
        for key in mine {
            self.take(&key, false).await;
        }
        let view = self.view();
        let mut held: BTreeMap<String, usize> = self
            .leases
            .values()
            .filter(|l| l.kind() == ItemKind::Worker && !self.reads.vanished.contains(&l.key))
            .filter(|presence| !view.is_expired(presence))
            .filter_map(|presence| {
                let worker = presence.presence_of()?;
                Some((
                    worker.to_owned(),
                    presence.held_leases.unwrap_or(0) as usize,
                ))
            })
            .collect();
        held.insert(me.clone(), self.held.len());
        let takeable = |key: &String| {
            !self.held.contains_key(key) && self.leases.get(key).is_none_or(|l| self.ours(l))
        };
        let mut free: Vec<String> = self
            .reads
            .free
            .iter()
            .filter(|key| self.leases.contains_key(*key))
            .filter(|key| takeable(key))
            .cloned()
            .collect();
        for dead in self.reads.dead.values() {
            free.extend(dead.keys.iter().filter(|key| takeable(key)).cloned());
        }
        free.sort();
        free.dedup();
        let share = balance::share(&me, &held, free.len(), self.settings.max_leases);
        for key in balance::steal_candidates(&me, free.iter().map(String::as_str), share.take) {
            self.take_free(&key).await;
        }
        if let Some((victim, count)) = share.steal_from {
            self.steal_from(&victim, count).await;
        }
    }

    /// Takes a lease the free-lease Query listed, or one a dead worker
    /// left, which is read first (strongly consistent) to write on its
    /// current counter.
    async fn take_free(&mut self, key: &str) {
        let dead_owner = self
            .reads
            .dead
            .iter()
            .find(|(_, dead)| dead.keys.iter().any(|k| k == key))
            .map(|(worker, _)| worker.clone());
        if !self.reads.free.contains(key) {
            match self.store.get_lease(key, true).await {
                Ok(Some(lease))
                    if lease.owner.is_none() || lease.owner.as_deref() == dead_owner.as_deref() =>
                {
                    self.learn(lease);
                }
                Ok(found) => {
                    // Taken by another worker (or gone) since.
                    if let Some(lease) = found {
                        self.learn(lease);
                    }
                    self.forget_dead_lease(key);
                    return;
                }
                Err(err) => {
                    tracing::debug!(lease = %key, error = %err, "could not read a free lease");
                    return;
                }
            }
        }
        if self.leases.get(key).is_some_and(|l| self.ours(l)) && self.take(key, false).await {
            self.reads.free.remove(key);
            self.reads.scanned_free.remove(key);
            self.forget_dead_lease(key);
        }
    }

    /// Keeps a lease just read. One owned by a worker without a presence
    /// item announcing its count cannot be judged through the indexes: the
    /// next look scans the whole table.
    fn learn(&mut self, lease: Lease) {
        if self.reads.mode == ReadMode::Indexed && lease.kind() == ItemKind::Shard {
            let me = self.settings.worker_id.as_str();
            if let Some(owner) = lease.owner.as_deref().filter(|owner| *owner != me) {
                let presence = format!("{}{owner}", crate::lease::WORKER_KEY_PREFIX);
                if self
                    .leases
                    .get(&presence)
                    .is_none_or(|p| p.held_leases.is_none())
                {
                    self.reads.set_blocker(Some(format!(
                        "lease {} is owned by {owner}, which announces no lease count",
                        lease.key
                    )));
                }
            }
        }
        let key = lease.key.clone();
        self.leases.insert(key.clone(), lease);
        self.index_lease(&key);
    }

    /// Reads a lease this worker lost, to learn who has it now.
    async fn look_at(&mut self, key: &str) {
        if self.reads.mode != ReadMode::Indexed {
            return;
        }
        match self.store.get_lease(key, true).await {
            Ok(Some(lease)) => self.learn(lease),
            Ok(None) => {
                self.leases.remove(key);
            }
            Err(err) => tracing::debug!(lease = %key, error = %err, "could not read a lost lease"),
        }
    }

    fn forget_dead_lease(&mut self, key: &str) {
        for dead in self.reads.dead.values_mut() {
            dead.keys.retain(|k| k != key);
        }
    }

    /// Asks `victim` for `count` of its leases (listed by the owner index,
    /// each read before asking), unless a request is pending or the
    /// victim's announced count may not yet show the last handoff.
    async fn steal_from(&mut self, victim: &str, count: usize) {
        let now = Instant::now();
        if !self.handoff_requests.is_empty()
            || self
                .reads
                .steal_quiet_until
                .is_some_and(|until| now < until)
        {
            return;
        }
        let keys = match self.store.list_owned(victim).await {
            Ok(keys) => keys,
            Err(err) => {
                tracing::debug!(%victim, error = %err, "could not list an overloaded worker's leases");
                return;
            }
        };
        let me = self.settings.worker_id.clone();
        let shards = keys
            .iter()
            .filter(|key| ItemKind::of_key(key) == ItemKind::Shard)
            .map(String::as_str);
        for key in balance::steal_candidates(&me, shards, count) {
            match self.store.get_lease(&key, true).await {
                Ok(Some(lease)) if lease.is_owned_by(victim) && self.ours(&lease) => {
                    self.learn(lease);
                    self.ask_for(&key).await;
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::debug!(lease = %key, error = %err, "could not read a lease to ask for")
                }
            }
        }
    }

    /// Follows this worker's pending handoff requests (through the indexes,
    /// no scan shows them): takes what was handed over, waits, asks again or
    /// takes outright as [`LeaseView::ask`] says, and forgets requests
    /// overtaken by events.
    async fn follow_handoffs(&mut self) {
        let me = self.settings.worker_id.clone();
        let keys: Vec<String> = self.handoff_requests.keys().cloned().collect();
        for key in keys {
            match self.store.get_lease(&key, true).await {
                Ok(Some(lease)) => {
                    let handed = lease.is_owned_by(&me);
                    let waiting = lease.pending_owner.as_deref() == Some(me.as_str());
                    self.learn(lease);
                    if handed {
                        if !self.held.contains_key(&key) {
                            self.take(&key, false).await;
                        }
                        self.handoff_requests.remove(&key);
                        // The victim's count shows the handoff at its next
                        // renewal: ask for nothing more before that.
                        self.reads.steal_quiet_until = Some(
                            Instant::now()
                                + self.settings.renew_interval
                                + self.settings.scan_interval(),
                        );
                    } else if waiting {
                        self.ask_for(&key).await;
                    } else {
                        self.handoff_requests.remove(&key);
                    }
                }
                Ok(None) => {
                    self.handoff_requests.remove(&key);
                }
                Err(err) => {
                    tracing::debug!(lease = %key, error = %err, "could not read a requested lease")
                }
            }
        }
    }

    /// Publishes what this worker holds and sees: gauges, `/status`, and the
    /// shard leases to pipelines waiting for a parent.
    fn publish(&self) {
        if self.lease_table.receiver_count() > 0 {
            let shard_leases: Vec<Lease> = self
                .leases
                .values()
                .filter(|l| l.kind() == ItemKind::Shard)
                .cloned()
                .collect();
            self.lease_table.send_replace(Arc::from(shard_leases));
        }
        let me = self.settings.worker_id.as_str();
        let mut view = metrics::FleetView {
            workers: self.view().live_workers().len().max(1) as u64,
            ..metrics::FleetView::default()
        };
        let mut shards = Vec::new();
        for stream in &self.discovery.streams {
            let label = metrics::stream_label(stream);
            view.leases_held.insert(label.clone(), 0);
            view.unowned.insert(label, 0);
        }
        // Through the indexes, only the free, the dead's and the held leases
        // are known well enough to count (and walking the whole table at
        // every look would cost CPU the reads no longer do).
        let candidates: Box<dyn Iterator<Item = &Lease>> = match self.reads.mode {
            ReadMode::Scan => Box::new(self.leases.values()),
            ReadMode::Indexed => {
                let keys: BTreeSet<&String> = self
                    .reads
                    .free
                    .iter()
                    .chain(self.reads.dead.values().flat_map(|dead| dead.keys.iter()))
                    .chain(self.held.keys())
                    .collect();
                Box::new(keys.into_iter().filter_map(|key| self.leases.get(key)))
            }
        };
        for lease in candidates.filter(|l| l.kind() == ItemKind::Shard) {
            let Some(stream) = self.stream_of(lease) else {
                continue;
            };
            let label = metrics::stream_label(&stream);
            let free = self.is_free(lease);
            let to_read = self.to_read(lease);
            if free && to_read {
                *view.unowned.entry(label.clone()).or_default() += 1;
            }
            let Some(held) = self.held.get(&lease.key) else {
                continue;
            };
            *view.leases_held.entry(label.clone()).or_default() += 1;
            let state = if held.state.halted().is_some() {
                "halted"
            } else if !to_read {
                "ended"
            } else if held.state.has_consumer() {
                "active"
            } else {
                "waiting_for_parent"
            };
            *view.shards.entry(state).or_default() += 1;
            // Our own last write is newer than the table read.
            let lease = held.lease.try_snapshot().unwrap_or_else(|| lease.clone());
            let pipelines: serde_json::Map<String, serde_json::Value> = self
                .pipeline_starts
                .iter()
                .map(|PipelineStart { name, .. }| {
                    let checkpoint = lease.pipeline_checkpoints.get(name).map(|c| c.as_stored());
                    let age = metrics::pipeline_shard_age(&label, name, &lease.shard_id);
                    let entry = serde_json::json!({
                        "checkpoint": checkpoint,
                        "iteratorAgeSeconds": age.map(|a| (a * 1000.0).round() / 1000.0),
                    });
                    (name.clone(), entry)
                })
                .collect();
            shards.push(serde_json::json!({
                "stream": stream,
                "shard": lease.shard_id,
                "leaseKey": lease.key,
                "state": state,
                "checkpoint": lease.checkpoint.as_stored(),
                "leaseCounter": lease.counter,
                "parents": lease.parent_shard_ids,
                "halted": held.state.halted(),
                "handingOff": held.state.is_handing_off(),
                "pipelines": pipelines,
            }));
        }
        metrics::fleet(&view);
        metrics::republish();
        // A halted shard needs an operator: the worker stops counting as ready.
        let halted = self
            .held
            .values()
            .filter(|h| h.state.halted().is_some())
            .count();
        let halted = halted + self.snapshots.as_ref().map_or(0, Snapshots::halted);
        self.health
            .set_ready(halted == 0 && !self.lease_table_missing);
        self.health.set_status(serde_json::json!({
            "worker": me,
            "ready": self.health.is_ready(),
            "leader": self.leader.as_ref().is_some_and(|l| !l.is_lost()),
            "liveWorkers": view.workers,
            "streams": self.discovery.streams,
            "shardSyncPending": self.discovery.pending(),
            "shards": shards,
        }));
    }

    /// Compares what this worker holds with what the lease table just said:
    /// a lease that moved on is dropped at once (rather than at the next
    /// write), and a lease another worker asked for is handed over at the
    /// consumer's next batch boundary.
    async fn reconcile_held(&mut self) {
        let keys: Vec<String> = self.held.keys().cloned().collect();
        for key in keys {
            let verdict = self.view().judge_held(&key);
            let Some(held) = self.held.get_mut(&key) else {
                continue;
            };
            match verdict {
                HeldVerdict::Keep => {}
                HeldVerdict::Requested { by } => {
                    // A shard already handing off was asked before; a halted
                    // one keeps its lease.
                    let Ok(when) = held.state.request_handoff(&by) else {
                        continue;
                    };
                    let shard = self
                        .leases
                        .get(&key)
                        .map_or(key.as_str(), |l| l.shard_id.as_str());
                    tracing::info!(shard = %shard, to = %by, "another worker asked for this lease; handing it over after the batch in flight");
                    held.stop.cancel();
                    if when == Handoff::Now {
                        self.hand_over(&key).await;
                    }
                }
                HeldVerdict::Lost => {
                    if !held.lease.is_lost() {
                        LeaseLost {
                            lease: &key,
                            by: LostBy::Scan,
                        }
                        .emit();
                        held.lease.abandon();
                    }
                    if held.state.forget_when_lost() {
                        self.held.remove(&key);
                    }
                }
            }
        }
    }

    /// Gives a lease to the worker that asked for it (after its consumer
    /// stopped and checkpointed).
    async fn hand_over(&mut self, key: &str) {
        let Some(held) = self.held.remove(key) else {
            return;
        };
        let Some(table) = self.leases.get(key).cloned() else {
            return;
        };
        match held.lease.hand_off(&table).await {
            Ok(()) => LeaseHandedOver {
                shard: &table.shard_id,
                to: &table.pending_owner,
            }
            .emit(),
            Err(err) => {
                tracing::warn!(shard = %table.shard_id, error = %err, "could not hand a lease over; it will be taken when it expires")
            }
        }
        self.remember(&held.lease);
    }

    /// Keeps what this worker last wrote of a lease it lets go of: through
    /// the indexes nothing shows it again before the next whole scan (a
    /// released lease read to its end is in neither), and decisions such as
    /// whether its stream is drained read it.
    fn remember(&mut self, lease: &HeldLease) {
        if let Some(last) = lease.try_snapshot() {
            self.leases.insert(last.key.clone(), last);
        }
    }

    /// Asks the owner of a lease to hand it over at its next batch boundary,
    /// so rebalancing processes nothing twice; takes it outright only when a
    /// request has gone unanswered for two lease durations (an owner that
    /// does not hand over, such as an older version).
    async fn ask_for(&mut self, key: &str) {
        let Some(lease) = self.leases.get(key).cloned() else {
            return;
        };
        let asked_at = self.handoff_requests.get(key).copied();
        match self.view().ask(&lease, asked_at) {
            Ask::Wait => return,
            Ask::Take => {
                tracing::warn!(shard = %lease.shard_id, owner = ?lease.owner, "the owner did not hand the lease over; taking it");
                self.handoff_requests.remove(key);
                self.take(key, true).await;
                return;
            }
            Ask::Request => {}
        }
        let me = self.settings.worker_id.clone();
        match self.store.request_handoff(&lease, &me).await {
            Ok(updated) => {
                LeaseRequested {
                    shard: &lease.shard_id,
                    owner: &lease.owner,
                }
                .emit();
                self.handoff_requests.insert(key.to_owned(), Instant::now());
                self.leases.insert(key.to_owned(), updated);
            }
            Err(LeaseError::Conflict { .. }) => {}
            Err(err) => {
                tracing::debug!(shard = %lease.shard_id, error = %err, "could not ask for a lease")
            }
        }
    }

    /// Takes a lease towards this worker's share; `true` once it is settled
    /// (taken here, or found taken by another worker).
    async fn take(&mut self, key: &str, steal: bool) -> bool {
        let Some(lease) = self.leases.get(key).cloned() else {
            return false;
        };
        if self.held.contains_key(key) {
            return true;
        }
        let Some(stream_arn) = self.stream_of(&lease) else {
            return false;
        };
        let started = Instant::now();
        match self
            .store
            .take_lease(&lease, &self.settings.worker_id)
            .await
        {
            Ok(taken) => {
                self.handoff_requests.remove(key);
                if steal {
                    LeaseStolen {
                        shard: &taken.shard_id,
                        from: &lease.owner,
                    }
                    .emit();
                    self.observed.mark_stolen(key, Instant::now());
                } else {
                    LeaseTaken {
                        shard: &taken.shard_id,
                        previous_owner: &lease.owner,
                    }
                    .emit();
                }
                self.leases.insert(taken.key.clone(), taken.clone());
                self.index_lease(key);
                let held = HeldLease::new(
                    Arc::clone(&self.store),
                    taken,
                    self.settings.lease_duration,
                    started,
                )
                .tied_to(Arc::clone(&self.heartbeat));
                self.held.insert(
                    key.to_owned(),
                    Held {
                        lease: Arc::new(held),
                        stream_arn,
                        state: ShardState::WaitingForParents,
                        stop: self.stop_consumers.child_token(),
                    },
                );
                true
            }
            Err(LeaseError::Conflict { .. }) => {
                tracing::debug!(shard = %lease.shard_id, "another worker took the lease first");
                true
            }
            Err(err) => {
                tracing::warn!(shard = %lease.shard_id, error = %err, "could not take a lease");
                false
            }
        }
    }

    fn start_ready_shards(&mut self) {
        let listed: HashSet<String> = self
            .discovery
            .listings
            .values()
            .flat_map(|shards| shards.iter().map(|s| s.shard_id.clone()))
            .collect();
        let waiting = self
            .held
            .iter()
            .filter(|(_, held)| held.state.may_start() && !held.lease.is_lost())
            .map(|(key, held)| (key, held.stream_arn.as_str()));
        let ready =
            self.view()
                .ready_to_start(waiting, &self.shard_keys, &listed, &self.pipeline_starts);
        for key in ready {
            let Some(held) = self.held.get_mut(&key) else {
                continue;
            };
            let shard_id = self
                .leases
                .get(&key)
                .map(|l| l.shard_id.clone())
                .unwrap_or_else(|| key.clone());
            let parent_keys: Vec<String> = self
                .leases
                .get(&key)
                .map(|lease| {
                    lease
                        .parent_shard_ids
                        .iter()
                        .filter_map(|parent| {
                            self.shard_keys
                                .get(&(held.stream_arn.clone(), parent.clone()))
                                .cloned()
                        })
                        .collect()
                })
                .unwrap_or_default();
            let known_parents: Vec<Lease> = parent_keys
                .iter()
                .filter_map(|key| self.leases.get(key).cloned())
                .collect();
            if held.state.start().is_err() {
                continue;
            }
            let mut settings = self.settings.shard.clone();
            settings.skip_created_before = self.stream_cutoffs.get(&held.stream_arn).copied();
            let consumer = self.pipelines.shard_task(
                &held.stream_arn,
                &shard_id,
                Arc::clone(&self.api),
                Arc::clone(&held.lease),
                settings,
                Parents::new(parent_keys, known_parents, self.lease_table.subscribe()),
            );
            let span = tracing::info_span!("shard", stream = %held.stream_arn, shard = %shard_id);
            let stop = held.stop.clone();
            let exits = self.exits_tx.clone();
            let task = self.tasks.spawn(
                async move {
                    let exit = consumer.run(stop).await;
                    // The coordinator owns the receiver for its whole life;
                    // a send fails only after it has stopped listening.
                    let _ = exits.send((key, exit));
                }
                .instrument(span),
            );
            self.own(task.abort_handle());
        }
    }

    /// Keeps a task's abort handle, forgetting those of finished tasks.
    fn own(&mut self, task: AbortHandle) {
        self.aborts.retain(|task| !task.is_finished());
        self.aborts.push(task);
    }

    /// Renews every held item concurrently: shard leases, presence, leadership.
    async fn renew_all(&mut self) {
        if let Some(snapshots) = &mut self.snapshots {
            snapshots.renew().await;
        }
        // A shard lease checkpointed within the last half interval needs no
        // renewal: the checkpoint moved its counter. Presence and leadership
        // have no other writes.
        let just_written = self.settings.renew_interval / 2;
        let mut handles: Vec<(String, Arc<HeldLease>, Duration)> = self
            .held
            .iter()
            .map(|(key, held)| (key.clone(), Arc::clone(&held.lease), just_written))
            .collect();
        handles.extend(
            self.presence
                .iter()
                .map(|p| (PRESENCE.to_owned(), Arc::clone(p), Duration::ZERO)),
        );
        handles.extend(
            self.leader
                .iter()
                .map(|l| ("leader".to_owned(), Arc::clone(l), Duration::ZERO)),
        );
        let held_leases = self.held.len() as u64;
        let renewals = handles
            .into_iter()
            .map(|(key, lease, recently)| async move {
                let result = if key == PRESENCE {
                    lease.renew_presence(held_leases).await
                } else {
                    lease.renew_unless_written_within(recently).await
                };
                (key, result)
            });
        let mut lost = Vec::new();
        let results: Vec<(String, Result<(), LeaseError>)> = futures::stream::iter(renewals)
            .buffer_unordered(LEASE_WRITES_IN_FLIGHT)
            .collect()
            .await;
        for (key, result) in results {
            match result {
                Ok(()) => {}
                Err(LeaseError::Conflict { .. }) => {
                    LeaseLost {
                        lease: &key,
                        by: LostBy::Renewal,
                    }
                    .emit();
                    if self.held.contains_key(&key) {
                        lost.push(key.clone());
                    }
                    if self
                        .held
                        .get(&key)
                        .is_some_and(|held| held.state.forget_when_lost())
                    {
                        self.held.remove(&key);
                    }
                }
                Err(err) => LeaseRenewFailed {
                    lease: &key,
                    error: &err,
                }
                .emit(),
            }
        }
        for key in lost {
            self.look_at(&key).await;
        }
    }

    async fn on_exit(&mut self, key: String, exit: ShardExit) {
        let Some(held) = self.held.remove(&key) else {
            return;
        };
        let shard_id = self
            .leases
            .get(&key)
            .map(|l| l.shard_id.clone())
            .unwrap_or_else(|| key.clone());
        if !matches!(exit, ShardExit::Halted(_)) {
            metrics::shard_left(&metrics::stream_label(&held.stream_arn), &shard_id);
        }
        match exit {
            ShardExit::Ended => {
                LeaseReleased.emit();
                if let Err(err) = held.lease.release().await {
                    tracing::warn!(shard = %shard_id, error = %err, "could not release an ended shard's lease");
                }
                self.remember(&held.lease);
                self.discovery.request(SyncRequest::ChildrenOf {
                    stream_arn: held.stream_arn.clone(),
                    shard_id: shard_id.clone(),
                });
            }
            ShardExit::LeaseLost => {
                tracing::warn!(shard = %shard_id, "stopped reading a shard whose lease was lost");
                self.look_at(&key).await;
                for processor in self.pipelines.processors() {
                    processor.lease_lost(&held.stream_arn, &shard_id);
                }
            }
            ShardExit::Stopped if held.state.is_handing_off() => {
                self.held.insert(key.clone(), held);
                self.hand_over(&key).await;
            }
            ShardExit::Stopped => {}
            ShardExit::Halted(reason) => {
                tracing::error!(
                    shard = %shard_id,
                    %reason,
                    "shard halted: its lease is kept so no worker reads past the failed records; \
                     set DYNASTREAM_ON_FAILURE or fix the processor, then restart this worker"
                );
                let mut held = held;
                if let Err(refused) = held.state.halt(reason) {
                    tracing::warn!(shard = %shard_id, %refused, "an impossible shard exit");
                }
                self.held.insert(key, held);
            }
            ShardExit::Failed(reason) => {
                tracing::error!(shard = %shard_id, %reason, "shard consumer failed; releasing its lease so it is retried");
                if let Err(err) = held.lease.release().await {
                    tracing::warn!(shard = %shard_id, error = %err, "could not release a failed shard's lease");
                }
                self.remember(&held.lease);
            }
        }
    }

    async fn drain_and_release(mut self) {
        self.health.set_ready(false);
        tracing::info!(
            shards = self.held.len(),
            "shutting down: finishing in-flight batches"
        );
        self.stop_consumers.cancel();
        self.tasks.close();
        if let Some(snapshots) = self.snapshots.take() {
            snapshots.shut_down(self.settings.shutdown_grace).await;
        }
        let deadline = tokio::time::sleep(self.settings.shutdown_grace);
        tokio::pin!(deadline);
        let mut renew = tokio::time::interval(self.settings.renew_interval);
        renew.set_missed_tick_behavior(MissedTickBehavior::Delay);
        renew.reset();
        loop {
            tokio::select! {
                _ = self.tasks.wait() => break,
                _ = &mut deadline => {
                    tracing::warn!(
                        "shards still processing after the shutdown grace period; their last batch \
                         will be processed again by the next owner"
                    );
                    // A library user may drop its processors once `run`
                    // returns: no call may still be running then, and none
                    // may run after its lease was released below.
                    for task in self.aborts.drain(..) {
                        task.abort();
                    }
                    self.tasks.wait().await;
                    break;
                }
                _ = renew.tick() => self.renew_all().await,
                Some((key, exit)) = self.exits_rx.recv() => {
                    if exit == ShardExit::Ended {
                        if let Some(held) = self.held.remove(&key) {
                            let _ = held.lease.release().await;
                        }
                    }
                }
            }
        }
        let mut handles: Vec<(String, Arc<HeldLease>)> = self
            .held
            .iter()
            .map(|(key, held)| (key.clone(), Arc::clone(&held.lease)))
            .collect();
        handles.extend(
            self.leader
                .iter()
                .map(|l| ("leader".to_owned(), Arc::clone(l))),
        );
        let releases = handles.into_iter().map(|(key, lease)| async move {
            let result = lease.release().await;
            (key, result)
        });
        let mut released = 0usize;
        let mut results: Vec<(String, Result<(), LeaseError>)> = futures::stream::iter(releases)
            .buffer_unordered(LEASE_WRITES_IN_FLIGHT)
            .collect()
            .await;
        // Leases handed to this worker since its last look at the table are
        // its own too: release them as well, or they would wait to expire.
        if let Some(unheld) = self.owned_but_not_held().await {
            for lease in unheld {
                let result = self.store.release_lease(&lease).await.map(drop);
                results.push((lease.key.clone(), result));
            }
        }
        for (key, result) in results {
            match result {
                Ok(()) => {
                    LeaseReleased.emit();
                    released += 1
                }
                Err(err) => {
                    tracing::warn!(lease = %key, error = %err, "could not release a lease; it will expire instead")
                }
            }
        }
        if let Some(presence) = &self.presence {
            let lease = presence.snapshot().await;
            if let Err(err) = self.store.delete_lease(&lease).await {
                tracing::debug!(error = %err, "could not remove this worker's presence item");
            }
        }
        tracing::info!(released, "leases released; worker stopped");
    }

    /// The shard leases the table says this worker owns but it does not
    /// hold (handed over since its last look); `None` when the table could
    /// not be read.
    async fn owned_but_not_held(&mut self) -> Option<Vec<Lease>> {
        let me = self.settings.worker_id.clone();
        if self.reads.mode == ReadMode::Scan {
            if !self.refresh_leases().await {
                return None;
            }
            return Some(
                self.leases
                    .values()
                    .filter(|lease| lease.kind() == ItemKind::Shard && lease.is_owned_by(&me))
                    .filter(|lease| !self.held.contains_key(&lease.key))
                    .cloned()
                    .collect(),
            );
        }
        let keys = self.store.list_owned(&me).await.ok()?;
        let mut unheld = Vec::new();
        for key in keys {
            if ItemKind::of_key(&key) != ItemKind::Shard || self.held.contains_key(&key) {
                continue;
            }
            if let Ok(Some(lease)) = self.store.get_lease(&key, true).await {
                if lease.is_owned_by(&me) {
                    unheld.push(lease);
                }
            }
        }
        Some(unheld)
    }

    /// Acts on a listing: creates missing leases and, for the leader after a
    /// whole-stream listing, deletes the ones no longer needed. Returns
    /// whether the lease table may have changed, so that the caller reads it
    /// again only then: a worker following hundreds of quiet streams gets a
    /// listing every half second, and reading the whole lease table twice
    /// for each was most of its idle cost.
    async fn on_listing(&mut self, listing: Listing) -> bool {
        let stream_arn = listing.stream_arn.clone();
        if listing.missing {
            self.discovery.check_table_soon(&stream_arn, Instant::now());
            return false;
        }
        if !self.discovery.record(&listing) {
            // Asked for before the stream was dropped.
            return false;
        }
        let unknown = listing
            .shards
            .iter()
            .any(|shard| self.lease_of(&stream_arn, &shard.shard_id).is_none());
        // New shards or ended ones are rare and their children should start
        // at once: always worth a fresh look.
        let mut changed = !listing.complete;
        if unknown {
            // Another worker may have created them since the last read.
            self.refresh_leases().await;
            changed = self
                .create_missing_leases(&stream_arn, &listing.shards)
                .await;
        }
        if listing.status == Some(StreamStatus::Disabled) {
            // Its table may have a new stream already.
            self.discovery.check_table_soon(&stream_arn, Instant::now());
            let known = self.discovery.listings.get(&stream_arn).cloned();
            if known.is_some_and(|known| self.drained(&stream_arn, &known)) {
                // Nothing more will ever be written to it: stop listing it.
                tracing::info!(stream = %stream_arn, "the stream is disabled and every record it held was read; no longer following it");
                self.discovery.forget_stream(&stream_arn);
                return true;
            }
        }
        if listing.complete && self.leader.as_ref().is_some_and(|l| !l.is_lost()) {
            changed |= self.clean_up().await;
        }
        changed
    }

    /// Whether every shard of a listing has been read to its end.
    fn drained(&self, stream_arn: &str, shards: &[ShardInfo]) -> bool {
        shards.iter().all(|shard| {
            self.lease_of(stream_arn, &shard.shard_id)
                .is_some_and(|lease| !self.to_read(lease))
        })
    }

    /// Whether a shard lease still has to be read here: by the application,
    /// or by a pipeline that has not finished it, such as one added with
    /// `TRIM_HORIZON` after the others finished a shard the stream still
    /// lists (an unlisted one is past retention: nothing is left to read).
    fn to_read(&self, lease: &Lease) -> bool {
        if !lease.checkpoint.is_shard_end() {
            return true;
        }
        lease.needs_reading(&self.pipeline_starts)
            && self.stream_of(lease).is_some_and(|stream| {
                self.discovery
                    .listings
                    .get(&stream)
                    .is_some_and(|shards| shards.iter().any(|s| s.shard_id == lease.shard_id))
            })
    }

    /// Creates a lease for each shard that has none; returns whether any
    /// lease was created here or found created by another worker.
    async fn create_missing_leases(&mut self, stream_arn: &str, shards: &[ShardInfo]) -> bool {
        let mut changed = false;
        let first_sight = !self
            .shard_keys
            .keys()
            .any(|(stream, _)| stream == stream_arn);
        for shard in shards {
            if self.lease_of(stream_arn, &shard.shard_id).is_some() {
                continue;
            }
            let starting_position = if self.discovery.successor_streams.contains(stream_arn)
                || self.stream_cutoffs.contains_key(stream_arn)
            {
                StartingPosition::TrimHorizon
            } else {
                self.settings.starting_position
            };
            let checkpoint = graph::initial_checkpoint(shard, first_sight, starting_position);
            let mut lease = Lease::new(
                stream_arn,
                &shard.shard_id,
                shard.parent_shard_id.as_deref(),
                checkpoint,
            );
            if let Some(other) = self.leases.get(&shard.shard_id) {
                tracing::warn!(shard = %shard.shard_id, stream = %stream_arn, other_stream = ?other.stream_arn,
                    "another stream's lease has this shard id; using a stream-qualified lease key");
                lease.key = Lease::qualified_key(stream_arn, &shard.shard_id);
            }
            match self.store.create_lease_if_absent(&lease).await {
                Ok(true) => {
                    tracing::info!(stream = %stream_arn, shard = %shard.shard_id, checkpoint = %lease.checkpoint, "created a lease");
                    self.shard_keys.insert(
                        (stream_arn.to_owned(), shard.shard_id.clone()),
                        lease.key.clone(),
                    );
                    self.leases.insert(lease.key.clone(), lease);
                    changed = true;
                }
                Ok(false) => {
                    // Created by another worker since this one last scanned.
                    if self.reads.mode == ReadMode::Indexed {
                        if let Ok(Some(existing)) = self.store.get_lease(&lease.key, false).await {
                            self.shard_keys.insert(
                                (stream_arn.to_owned(), shard.shard_id.clone()),
                                existing.key.clone(),
                            );
                            self.learn(existing);
                        }
                    }
                    changed = true
                }
                Err(err) => {
                    tracing::warn!(shard = %shard.shard_id, error = %err, "could not create a lease; will retry");
                }
            }
        }
        changed
    }

    /// Lets the snapshots act on the lease table as just read.
    async fn run_snapshots(&mut self) {
        let Some(mut snapshots) = self.snapshots.take() else {
            return;
        };
        let live = self.view().live_workers().len().max(1);
        let view = self.view();
        let expired: HashSet<String> = self
            .leases
            .values()
            .filter(|l| l.kind() == ItemKind::Segment && view.is_expired(l))
            .map(|l| l.key.clone())
            .collect();
        snapshots
            .tick(&self.leases, |lease| expired.contains(&lease.key), live)
            .await;
        self.snapshots = Some(snapshots);
    }

    /// Follows the stream of every registered table (found by discovery,
    /// or snapshotted) once it may be: at once without a snapshot, after
    /// it with one, from where the stream was when the snapshot began.
    fn adopt_tables(&mut self) {
        if self.snapshot_only() {
            return;
        }
        let now_millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let is_leader = self.leader.as_ref().is_some_and(|l| !l.is_lost());
        let items: Vec<Lease> = self
            .leases
            .values()
            .filter(|l| l.kind() == ItemKind::Table)
            .cloned()
            .collect();
        for item in items {
            let Some(stream) = item.stream_arn.clone() else {
                continue;
            };
            if self.discovery.streams.contains(&stream) || self.refused_streams.contains(&stream) {
                continue;
            }
            let table = item.registered_table().unwrap_or(&item.key).to_owned();
            let on_trimmed = self.settings.shard.on_trimmed;
            let start =
                crate::snapshot::stream_start(self.leases.values(), &item, now_millis, on_trimmed);
            match start {
                StreamStart::Wait => {}
                StreamStart::Refused => {
                    tracing::error!(%table, stream = %stream, "the table's snapshot took longer than the stream's 24-hour retention: changes made in its first hours may be trimmed; DYNASTREAM_ON_TRIMMED=stop, so its stream is not followed (take a new snapshot: delete the table's dynastream:table and dynastream:segment items, or set DYNASTREAM_ON_TRIMMED=skip)");
                    self.refused_streams.insert(stream);
                }
                StreamStart::Follow(cutoff) => {
                    if crate::snapshot::outlived_retention(&item, now_millis) {
                        tracing::error!(%table, stream = %stream, "the table's snapshot took longer than the stream's 24-hour retention: changes made in its first hours may have been trimmed unread; following the stream anyway (DYNASTREAM_ON_TRIMMED=skip)");
                    }
                    tracing::info!(%table, stream = %stream, skip_created_before = ?cutoff, "following the table's stream");
                    if let Some(cutoff) = cutoff {
                        self.stream_cutoffs.insert(stream.clone(), cutoff);
                    }
                    self.discovery.follow_table(
                        &table,
                        &stream,
                        cutoff.is_some(),
                        is_leader,
                        Instant::now(),
                    );
                }
            }
        }
    }

    /// Looks for tables matching the prefix or tag, registers new ones in
    /// the lease table and drops those that are gone.
    async fn discover_tables(&mut self) {
        let only = self.snapshot_only();
        let (Some(api), Some(discovery)) = (self.tables_api.clone(), self.table_discovery.as_mut())
        else {
            return;
        };
        let found = match discovery.look(api.as_ref(), Instant::now()).await {
            Ok(found) => found,
            Err(err) => {
                tracing::warn!(error = %err, "could not look for tables; will look again at the next interval");
                return;
            }
        };
        let snapshot_segments = self.settings.snapshot_found_tables;
        // Configured tables are registered (with a snapshot) or followed
        // (without) whatever discovery finds, and never dropped by it.
        let configured: HashSet<&str> = self
            .settings
            .tables
            .iter()
            .chain(self.snapshots.iter().flat_map(|s| s.configured_tables()))
            .map(String::as_str)
            .collect();
        for table in &found {
            let key = crate::lease::SnapshotState::table_key(&table.name);
            if self.leases.contains_key(&key) || configured.contains(table.name.as_str()) {
                continue;
            }
            if table.stream_arn.is_none() && !only {
                if discovery.report_once(&table.name) {
                    tracing::error!(table = %table.name, "a table matching DYNASTREAM_TABLE_PREFIX or DYNASTREAM_TABLE_TAG has no stream: it is not consumed until DynamoDB Streams is enabled on it (looked for again every DYNASTREAM_TABLE_DISCOVERY_INTERVAL_MS)");
                }
                continue;
            }
            let snapshot =
                snapshot_segments.map(|segments| crate::snapshot::begin(&table.name, segments));
            let item =
                crate::snapshot::table_item(&table.name, table.stream_arn.as_deref(), snapshot);
            match self.store.create_lease_if_absent(&item).await {
                Ok(true) => {
                    tracing::info!(table = %table.name, stream = ?table.stream_arn, snapshot = item.snapshot.is_some(), "found a new table");
                    self.leases.insert(item.key.clone(), item);
                }
                Ok(false) => {}
                Err(err) => {
                    tracing::warn!(table = %table.name, error = %err, "could not register a found table; will retry")
                }
            }
        }
        let found: HashSet<&str> = found.iter().map(|t| t.name.as_str()).collect();
        let gone: Vec<(String, Lease)> = self
            .leases
            .values()
            .filter_map(|l| Some((l.registered_table()?, l)))
            .filter(|(table, _)| !found.contains(table) && !configured.contains(table))
            .map(|(table, l)| (table.to_owned(), l.clone()))
            .collect();
        for (table, item) in gone {
            tracing::warn!(%table, "a found table no longer exists or matches: dropping it (its stream is read to its end while it can still be read)");
            let segments: Vec<Lease> = self
                .leases
                .values()
                .filter(|l| {
                    l.kind() == ItemKind::Segment
                        && l.snapshot.as_ref().is_some_and(|s| s.table == table)
                })
                .cloned()
                .collect();
            for lease in segments.iter().chain(std::iter::once(&item)) {
                if let Err(err) = self.store.delete_lease(lease).await {
                    tracing::debug!(key = %lease.key, error = %err, "could not delete a dropped table's item");
                }
            }
        }
    }

    /// Removes, from every shard lease, the checkpoints of pipelines that no
    /// live worker declares any more (each worker lists its pipelines as the
    /// keys of its presence item's `pipelineCheckpoints`).
    async fn remove_undeclared_pipelines(&mut self, now: Instant) {
        let live = self.view().live_workers();
        let mut declared: BTreeSet<String> = self
            .pipeline_starts
            .iter()
            .map(|p| p.name.clone())
            .collect();
        for presence in self
            .leases
            .values()
            .filter(|l| l.kind() == ItemKind::Worker)
        {
            if presence.owner.as_ref().is_some_and(|o| live.contains(o)) {
                declared.extend(presence.pipeline_checkpoints.keys().cloned());
            }
        }
        let removable = self
            .collector
            .undeclared_pipelines(self.leases.values(), &declared, now);
        for (lease, names) in removable {
            match self.store.remove_pipeline_checkpoints(&lease, &names).await {
                Ok(()) => {
                    tracing::info!(lease = %lease.key, pipelines = ?names, "removed the checkpoints of pipelines no live worker declares");
                    if let Some(known) = self.leases.get_mut(&lease.key) {
                        for name in &names {
                            known.pipeline_checkpoints.remove(name);
                        }
                    }
                }
                Err(err) => {
                    tracing::debug!(lease = %lease.key, error = %err, "could not remove pipeline checkpoints")
                }
            }
        }
    }

    /// Deletes the leases the [`Collector`] finds nobody needs any more.
    async fn clean_up(&mut self) -> bool {
        let now = Instant::now();
        let view = CollectView {
            leases: &self.leases,
            listings: &self.discovery.listings,
            unchanged_for: |key: &str| self.observed.unchanged_for(key, now),
            stream_of: |lease: &Lease| self.stream_of(lease),
        };
        let doomed = self.collector.doomed(&view);
        let deleted = !doomed.is_empty();
        self.remove_undeclared_pipelines(now).await;
        for lease in doomed {
            match self.store.delete_lease(&lease).await {
                Ok(()) => {
                    tracing::info!(lease = %lease.key, "deleted a lease that is no longer needed");
                    self.leases.remove(&lease.key);
                }
                Err(err) => {
                    tracing::debug!(lease = %lease.key, error = %err, "could not delete a lease")
                }
            }
        }
        self.index_shard_leases();
        deleted
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Retries a start-up call with backoff until it succeeds, fails for good,
/// or shutdown is requested (then the last error is returned).
async fn retry_until_done<T, E, F, Fut>(
    what: &str,
    shutdown: &CancellationToken,
    mut call: F,
) -> Result<T, E>
where
    E: Retryable + std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    retry(&mut Backoff::for_aws_calls(), shutdown, || {
        let attempt = call();
        async move {
            let attempt = Attempt::from(attempt.await);
            if let Attempt::Retry(err) = &attempt {
                tracing::warn!(error = %err, "could not {what}; retrying");
            }
            attempt
        }
    })
    .await
    .map_err(RetryError::into_inner)
}

#[cfg(test)]
mod tests;

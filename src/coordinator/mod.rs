//! The coordinator: discovery, lease taking, and the shard tasks it owns.
//!
//! One task per worker. It resolves the configured tables to their current
//! streams, lists their shards and creates a lease per shard, takes the
//! leases that are free or expired, starts a [`ShardConsumer`] for each held
//! lease whose parents are done, renews held leases every third of the lease
//! duration, and reacts to each consumer's [`ShardExit`]. On shutdown it
//! stops the consumers, waits for in-flight batches (renewing meanwhile),
//! and releases every lease so other workers can take them at once.

pub mod graph;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::backoff::Backoff;
use crate::config::StartingPosition;
use crate::dispatch::Dispatcher;
use crate::error::Error;
use crate::lease::held::HeldLease;
use crate::lease::{Lease, LeaseError, LeaseStore};
use crate::shard::{ShardConsumer, ShardExit, ShardSettings};
use crate::streams::{list_all_shards, newest_stream, ShardInfo, StreamsApi, StreamsError};

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
    /// How often held leases are renewed and free ones looked for.
    pub renew_interval: Duration,
    /// How often shards are listed again.
    pub shard_sync_interval: Duration,
    /// The bound on finishing in-flight batches at shutdown.
    pub shutdown_grace: Duration,
    /// How each shard is read.
    pub shard: ShardSettings,
}

struct Held {
    lease: Arc<HeldLease>,
    stream_arn: String,
    running: bool,
}

/// What the coordinator last saw of a lease owned by someone, to judge
/// expiry on our own clock: a counter that has not moved for a whole lease
/// duration means its owner is gone.
struct Observation {
    counter: u64,
    owner: Option<String>,
    since: Instant,
}

/// Runs one worker's share of the application.
pub struct Coordinator {
    settings: CoordinatorSettings,
    api: Arc<dyn StreamsApi>,
    store: Arc<dyn LeaseStore>,
    dispatcher: Arc<Dispatcher>,
    streams: Vec<String>,
    listings: HashMap<String, Vec<ShardInfo>>,
    leases: HashMap<String, Lease>,
    observed: HashMap<String, Observation>,
    reported_malformed: HashSet<String>,
    held: HashMap<String, Held>,
    tasks: TaskTracker,
    stop_consumers: CancellationToken,
    exits_tx: mpsc::UnboundedSender<(String, ShardExit)>,
    exits_rx: mpsc::UnboundedReceiver<(String, ShardExit)>,
}

impl Coordinator {
    /// A coordinator over the given seams.
    pub fn new(
        settings: CoordinatorSettings,
        api: Arc<dyn StreamsApi>,
        store: Arc<dyn LeaseStore>,
        dispatcher: Arc<Dispatcher>,
    ) -> Self {
        let (exits_tx, exits_rx) = mpsc::unbounded_channel();
        Coordinator {
            settings,
            api,
            store,
            dispatcher,
            streams: Vec::new(),
            listings: HashMap::new(),
            leases: HashMap::new(),
            observed: HashMap::new(),
            reported_malformed: HashSet::new(),
            held: HashMap::new(),
            tasks: TaskTracker::new(),
            stop_consumers: CancellationToken::new(),
            exits_tx,
            exits_rx,
        }
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
            streams = self.streams.len(),
            "coordinator running"
        );
        let mut renew = tokio::time::interval(self.settings.renew_interval);
        renew.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut sync = tokio::time::interval_at(
            Instant::now() + self.settings.shard_sync_interval,
            self.settings.shard_sync_interval,
        );
        sync.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = renew.tick() => {
                    self.renew_all().await;
                    self.balance().await;
                }
                _ = sync.tick() => {
                    self.sync_shards().await;
                    self.balance().await;
                }
                Some((key, exit)) = self.exits_rx.recv() => self.on_exit(key, exit).await,
            }
        }
        self.drain_and_release().await;
        Ok(())
    }

    async fn start(&mut self, shutdown: &CancellationToken) -> Result<(), Error> {
        retry_until_done("create the lease table", shutdown, || {
            self.store.ensure_table()
        })
        .await
        .map_err(Error::Lease)?;
        let mut streams = self.settings.stream_arns.clone();
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
                    streams.push(stream.stream_arn.clone());
                }
                None if shutdown.is_cancelled() => return Ok(()),
                None => return Err(Error::NoStream { table }),
            }
        }
        streams.sort();
        streams.dedup();
        self.streams = streams;
        self.refresh_leases().await;
        self.sync_shards().await;
        self.balance().await;
        Ok(())
    }

    /// Lists every stream's shards and creates the leases that are missing.
    async fn sync_shards(&mut self) {
        for stream_arn in self.streams.clone() {
            match list_all_shards(self.api.as_ref(), &stream_arn).await {
                Ok((_status, shards)) => {
                    self.create_missing_leases(&stream_arn, &shards).await;
                    self.listings.insert(stream_arn, shards);
                }
                Err(err) => {
                    tracing::warn!(stream = %stream_arn, error = %err, "could not list the stream's shards; will retry");
                }
            }
        }
    }

    async fn create_missing_leases(&mut self, stream_arn: &str, shards: &[ShardInfo]) {
        let listed: HashSet<&str> = shards.iter().map(|s| s.shard_id.as_str()).collect();
        let first_sight = !self.leases.values().any(|lease| {
            lease.stream_arn.as_deref() == Some(stream_arn)
                || (lease.stream_arn.is_none() && listed.contains(lease.key.as_str()))
        });
        for shard in shards {
            if let Some(existing) = self.leases.get(&shard.shard_id) {
                if let Some(other) = existing.stream_arn.as_deref().filter(|a| *a != stream_arn) {
                    tracing::error!(shard = %shard.shard_id, stream = %stream_arn, other_stream = %other,
                        "two streams list the same shard id; the lease belongs to the other stream");
                }
                continue;
            }
            let checkpoint =
                graph::initial_checkpoint(shard, first_sight, self.settings.starting_position);
            let lease = Lease::new(
                stream_arn,
                &shard.shard_id,
                shard.parent_shard_id.as_deref(),
                checkpoint,
            );
            match self.store.create_lease_if_absent(&lease).await {
                Ok(true) => {
                    tracing::info!(stream = %stream_arn, shard = %shard.shard_id, checkpoint = %lease.checkpoint, "created a lease");
                    self.leases.insert(lease.key.clone(), lease);
                }
                Ok(false) => {}
                Err(err) => {
                    tracing::warn!(shard = %shard.shard_id, error = %err, "could not create a lease; will retry");
                }
            }
        }
    }

    /// Reads the lease table and updates what we know of other workers.
    async fn refresh_leases(&mut self) -> bool {
        let scan = match self.store.list_leases().await {
            Ok(scan) => scan,
            Err(err) => {
                tracing::warn!(error = %err, "could not read the lease table; will retry");
                return false;
            }
        };
        for malformed in scan.malformed {
            let text = malformed.to_string();
            if self.reported_malformed.insert(text.clone()) {
                tracing::error!(error = %text, "skipping a lease-table item that is not a lease");
            }
        }
        let now = Instant::now();
        let mut leases = HashMap::with_capacity(scan.leases.len());
        for lease in scan.leases {
            let changed = match self.observed.get(&lease.key) {
                Some(seen) => seen.counter != lease.counter || seen.owner != lease.owner,
                None => true,
            };
            if changed {
                self.observed.insert(
                    lease.key.clone(),
                    Observation {
                        counter: lease.counter,
                        owner: lease.owner.clone(),
                        since: now,
                    },
                );
            }
            leases.insert(lease.key.clone(), lease);
        }
        self.observed.retain(|key, _| leases.contains_key(key));
        self.leases = leases;
        true
    }

    fn is_expired(&self, lease: &Lease) -> bool {
        lease.owner.is_some()
            && self
                .observed
                .get(&lease.key)
                .is_some_and(|seen| seen.since.elapsed() >= self.settings.lease_duration)
    }

    fn is_ours(&self, lease: &Lease) -> bool {
        match lease.stream_arn.as_deref() {
            Some(arn) => self.streams.iter().any(|s| s == arn),
            None => self
                .listings
                .values()
                .any(|shards| shards.iter().any(|s| s.shard_id == lease.key)),
        }
    }

    /// Takes the leases this worker should hold and starts the shards that may run.
    async fn balance(&mut self) {
        if !self.refresh_leases().await {
            return;
        }
        let me = self.settings.worker_id.clone();
        let mut available: Vec<Lease> = self
            .leases
            .values()
            .filter(|lease| self.is_ours(lease))
            .filter(|lease| !lease.checkpoint.is_shard_end())
            .filter(|lease| !self.held.contains_key(&lease.key))
            .filter(|lease| {
                lease.owner.is_none() || lease.is_owned_by(&me) || self.is_expired(lease)
            })
            .cloned()
            .collect();
        available.sort_by(|a, b| a.key.cmp(&b.key));
        for lease in available {
            let started = Instant::now();
            match self.store.take_lease(&lease, &me).await {
                Ok(taken) => {
                    tracing::info!(shard = %taken.key, previous_owner = ?lease.owner, "took a lease");
                    let stream_arn = taken
                        .stream_arn
                        .clone()
                        .or_else(|| self.stream_listing(&taken.key))
                        .unwrap_or_default();
                    self.leases.insert(taken.key.clone(), taken.clone());
                    let held = HeldLease::new(
                        Arc::clone(&self.store),
                        taken,
                        self.settings.lease_duration,
                        started,
                    );
                    self.held.insert(
                        lease.key.clone(),
                        Held {
                            lease: Arc::new(held),
                            stream_arn,
                            running: false,
                        },
                    );
                }
                Err(LeaseError::Conflict { .. }) => {
                    tracing::debug!(shard = %lease.key, "another worker took the lease first");
                }
                Err(err) => {
                    tracing::warn!(shard = %lease.key, error = %err, "could not take a lease")
                }
            }
        }
        self.start_ready_shards();
    }

    fn stream_listing(&self, shard_id: &str) -> Option<String> {
        self.listings
            .iter()
            .find(|(_, shards)| shards.iter().any(|s| s.shard_id == shard_id))
            .map(|(arn, _)| arn.clone())
    }

    fn start_ready_shards(&mut self) {
        let listed: HashSet<String> = self
            .listings
            .values()
            .flat_map(|shards| shards.iter().map(|s| s.shard_id.clone()))
            .collect();
        let ready: Vec<String> = self
            .held
            .iter()
            .filter(|(_, held)| !held.running && !held.lease.is_lost())
            .filter(|(key, _)| {
                self.leases
                    .get(*key)
                    .is_some_and(|lease| graph::parents_done(lease, &self.leases, &listed))
            })
            .map(|(key, _)| key.clone())
            .collect();
        for key in ready {
            let Some(held) = self.held.get_mut(&key) else {
                continue;
            };
            held.running = true;
            let consumer = ShardConsumer::new(
                &held.stream_arn,
                &key,
                Arc::clone(&self.api),
                Arc::clone(&held.lease),
                Arc::clone(&self.dispatcher),
                self.settings.shard.clone(),
            );
            let span = tracing::info_span!("shard", stream = %held.stream_arn, shard = %key);
            let stop = self.stop_consumers.child_token();
            let exits = self.exits_tx.clone();
            self.tasks.spawn(
                async move {
                    let exit = consumer.run(stop).await;
                    // The coordinator owns the receiver for its whole life;
                    // a send fails only after it has stopped listening.
                    let _ = exits.send((key, exit));
                }
                .instrument(span),
            );
        }
    }

    async fn renew_all(&mut self) {
        let renewals = self.held.iter().map(|(key, held)| {
            let lease = Arc::clone(&held.lease);
            let key = key.clone();
            async move { (key, lease.renew().await) }
        });
        for (key, result) in futures::future::join_all(renewals).await {
            match result {
                Ok(()) => {}
                Err(LeaseError::Conflict { .. }) => {
                    tracing::warn!(shard = %key, "lease lost: another worker owns it now");
                    if let Some(held) = self.held.get(&key) {
                        if !held.running {
                            self.held.remove(&key);
                        }
                    }
                }
                Err(err) => {
                    tracing::warn!(shard = %key, error = %err, "lease renewal failed; will retry")
                }
            }
        }
    }

    async fn on_exit(&mut self, key: String, exit: ShardExit) {
        let Some(held) = self.held.remove(&key) else {
            return;
        };
        match exit {
            ShardExit::Ended => {
                if let Err(err) = held.lease.release().await {
                    tracing::warn!(shard = %key, error = %err, "could not release an ended shard's lease");
                }
                self.discover_children(&held.stream_arn, &key).await;
                self.balance().await;
            }
            ShardExit::LeaseLost => {
                tracing::warn!(shard = %key, "stopped reading a shard whose lease was lost");
                for processor in self.dispatcher.processors() {
                    processor.lease_lost(&held.stream_arn, &key);
                }
            }
            ShardExit::Stopped => {}
            ShardExit::Failed(reason) => {
                tracing::error!(shard = %key, %reason, "shard consumer failed; releasing its lease so it is retried");
                if let Err(err) = held.lease.release().await {
                    tracing::warn!(shard = %key, error = %err, "could not release a failed shard's lease");
                }
            }
        }
    }

    /// Finds the children of a shard that just ended and creates their
    /// leases, asking DescribeStream for that shard's children only.
    async fn discover_children(&mut self, stream_arn: &str, shard_id: &str) {
        let page = self
            .api
            .describe_stream(stream_arn, None, Some(shard_id))
            .await;
        let children: Vec<ShardInfo> = match page {
            Ok(page) => graph::children_of(&page.shards, shard_id)
                .into_iter()
                .cloned()
                .collect(),
            Err(err) => {
                tracing::warn!(shard = %shard_id, error = %err, "could not list the children of an ended shard");
                Vec::new()
            }
        };
        if children.is_empty() {
            // Either the filter is unsupported and the page was partial, or
            // the children are not listed yet: a full listing settles both.
            self.sync_shards().await;
            return;
        }
        self.refresh_leases().await;
        self.create_missing_leases(stream_arn, &children).await;
        if let Some(listing) = self.listings.get_mut(stream_arn) {
            for child in children {
                if !listing.iter().any(|s| s.shard_id == child.shard_id) {
                    listing.push(child);
                }
            }
        }
    }

    async fn drain_and_release(mut self) {
        tracing::info!(
            shards = self.held.len(),
            "shutting down: finishing in-flight batches"
        );
        self.stop_consumers.cancel();
        self.tasks.close();
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
        let releases = self.held.iter().map(|(key, held)| {
            let lease = Arc::clone(&held.lease);
            let key = key.clone();
            async move { (key, lease.release().await) }
        });
        let mut released = 0usize;
        for (key, result) in futures::future::join_all(releases).await {
            match result {
                Ok(()) => released += 1,
                Err(err) => {
                    tracing::warn!(shard = %key, error = %err, "could not release a lease; it will expire instead")
                }
            }
        }
        tracing::info!(released, "leases released; worker stopped");
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
    E: RetryClass + std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut backoff = Backoff::for_aws_calls();
    loop {
        match call().await {
            Ok(value) => return Ok(value),
            Err(err) if err.retryable() && !shutdown.is_cancelled() => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %err, retry_in_ms = delay.as_millis() as u64, "could not {what}; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return Err(err),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
            Err(err) => return Err(err),
        }
    }
}

/// Errors that say whether retrying may help.
trait RetryClass {
    fn retryable(&self) -> bool;
}

impl RetryClass for LeaseError {
    fn retryable(&self) -> bool {
        self.is_retryable()
    }
}

impl RetryClass for StreamsError {
    fn retryable(&self) -> bool {
        self.is_retryable()
    }
}

#[cfg(test)]
mod tests;

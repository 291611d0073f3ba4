//! Discovery: listing shards, creating their leases, finding children, and
//! removing leases of shards that are long gone.
//!
//! Listings go through DescribeStream, which is limited per account and
//! which each worker spaces to its configured rate, so a full listing of many
//! streams can take seconds. It therefore runs in its own task, the
//! [`ShardSyncer`], and never holds up lease renewals or takeovers: the
//! coordinator sends it [`SyncRequest`]s and acts on the [`Listing`]s it
//! sends back. Whole-stream listings are requested by the shard-sync leader
//! only, plus once by any worker that finds a configured stream without a
//! single lease. A worker whose shard ends asks for that shard's children.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::collect::CollectView;
pub(super) use super::sync_set::SyncRequest;
use super::sync_set::{SyncSet, Wanted};
use super::{graph, Coordinator};
use crate::config::StartingPosition;
use crate::lease::Lease;
use crate::streams::{list_all_shards, ShardInfo, StreamStatus, StreamsApi, StreamsError};

/// How often a listing that looks mid-split is read again before it is used anyway.
const INCONSISTENT_LISTING_RETRIES: u32 = 3;

/// What the syncer found.
#[derive(Debug, Clone)]
pub(super) struct Listing {
    pub stream_arn: String,
    /// The stream's status, when a page of it was read.
    pub status: Option<StreamStatus>,
    pub shards: Vec<ShardInfo>,
    /// `true` for a whole-stream listing, `false` for new shards only.
    pub complete: bool,
    /// The stream could not be found: its table may have a new one.
    pub missing: bool,
}

/// Lists shards on request, in its own task, one stream at a time from the
/// [`SyncSet`].
pub(super) struct ShardSyncer {
    api: Arc<dyn StreamsApi>,
    pending: Arc<SyncSet>,
    listings: mpsc::UnboundedSender<Listing>,
    /// The shards each stream is known to have, and the newest of them: a
    /// listing asks only for shards after it, one DescribeStream call for a
    /// stream that did not change.
    known: HashMap<String, (HashSet<String>, String)>,
}

impl ShardSyncer {
    pub(super) fn new(
        api: Arc<dyn StreamsApi>,
        pending: Arc<SyncSet>,
        listings: mpsc::UnboundedSender<Listing>,
    ) -> Self {
        ShardSyncer {
            api,
            pending,
            listings,
            known: HashMap::new(),
        }
    }

    /// Serves requests until `stop` fires or the coordinator goes away.
    pub(super) async fn run(mut self, stop: CancellationToken) {
        loop {
            let (stream_arn, wanted) = tokio::select! {
                _ = stop.cancelled() => return,
                taken = self.pending.take() => taken,
            };
            let listing = tokio::select! {
                _ = stop.cancelled() => return,
                listing = self.serve(stream_arn, wanted) => listing,
            };
            if let Some(listing) = listing {
                if self.listings.send(listing).is_err() {
                    return;
                }
            }
        }
    }

    async fn serve(&mut self, stream_arn: String, wanted: Wanted) -> Option<Listing> {
        let newest = self
            .known
            .get(&stream_arn)
            .map(|(_, newest)| newest.clone());
        let Some(newest) = newest.filter(|_| !wanted.full) else {
            return self.list_stream(stream_arn).await;
        };
        let mut found = Vec::new();
        let mut status = None;
        if wanted.newer || !wanted.children_of.is_empty() {
            match self.list_newer(&stream_arn, &newest).await {
                Ok((now, shards)) => {
                    status = Some(now);
                    found = shards;
                }
                Err(err) => return self.failed(stream_arn, err),
            }
        }
        for shard_id in &wanted.children_of {
            let known = |child: &ShardInfo| {
                self.known
                    .get(&stream_arn)
                    .is_some_and(|(known, _)| known.contains(&child.shard_id))
            };
            if found
                .iter()
                .any(|s| s.parent_shard_id.as_deref() == Some(shard_id))
            {
                continue;
            }
            let page = self
                .api
                .describe_stream(&stream_arn, None, Some(shard_id))
                .await;
            let children: Vec<ShardInfo> = match page {
                // DynamoDB Local ignores the filter: a whole single page
                // still holds the children; a partial one may not.
                Ok(page) if page.last_evaluated_shard_id.is_none() => {
                    graph::children_of(&page.shards, shard_id)
                        .into_iter()
                        .cloned()
                        .collect()
                }
                Ok(_) => Vec::new(),
                Err(err) => {
                    tracing::warn!(shard = %shard_id, error = %err, "could not list the children of an ended shard");
                    Vec::new()
                }
            };
            if children.is_empty() {
                // Not listed yet, or a partial answer: a full listing
                // of this stream settles both.
                return self.list_stream(stream_arn).await;
            }
            found.extend(children.into_iter().filter(|c| !known(c)));
        }
        if let Some((known, _)) = self.known.get_mut(&stream_arn) {
            known.extend(found.iter().map(|s| s.shard_id.clone()));
        }
        // An unchanged, enabled stream: nothing to tell the coordinator.
        if found.is_empty() && status.is_none_or(|s| s == StreamStatus::Enabled) {
            return None;
        }
        Some(Listing {
            stream_arn,
            status,
            shards: found,
            complete: false,
            missing: false,
        })
    }

    /// The shards listed after `newest`, without those already known.
    async fn list_newer(
        &mut self,
        stream_arn: &str,
        newest: &str,
    ) -> Result<(StreamStatus, Vec<ShardInfo>), StreamsError> {
        let mut shards = Vec::new();
        let mut start = newest.to_owned();
        loop {
            let page = self
                .api
                .describe_stream(stream_arn, Some(&start), None)
                .await?;
            let last = page.last_evaluated_shard_id.clone();
            if let Some(shard) = page.shards.last() {
                if let Some((_, newest)) = self.known.get_mut(stream_arn) {
                    newest.clone_from(&shard.shard_id);
                }
            }
            let known = self.known.get(stream_arn);
            shards.extend(
                page.shards
                    .into_iter()
                    .filter(|s| known.is_none_or(|(known, _)| !known.contains(&s.shard_id))),
            );
            match last {
                Some(next) if next != start => start = next,
                _ => return Ok((page.status, shards)),
            }
        }
    }

    fn failed(&self, stream_arn: String, err: StreamsError) -> Option<Listing> {
        tracing::warn!(stream = %stream_arn, error = %err, "could not list the stream's shards; will retry");
        matches!(err, StreamsError::NotFound(_)).then_some(Listing {
            stream_arn,
            status: None,
            shards: Vec::new(),
            complete: false,
            missing: true,
        })
    }

    async fn list_stream(&mut self, stream_arn: String) -> Option<Listing> {
        let mut attempt = 0;
        loop {
            match list_all_shards(self.api.as_ref(), &stream_arn).await {
                Ok((status, shards)) => {
                    if graph::is_inconsistent(&shards) && attempt < INCONSISTENT_LISTING_RETRIES {
                        attempt += 1;
                        tracing::info!(stream = %stream_arn, attempt, "the listing shows a parent open beside its child; reading it again");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                    match shards.last() {
                        Some(last) => {
                            let known = shards.iter().map(|s| s.shard_id.clone()).collect();
                            self.known
                                .insert(stream_arn.clone(), (known, last.shard_id.clone()));
                        }
                        None => {
                            self.known.remove(&stream_arn);
                        }
                    }
                    return Some(Listing {
                        stream_arn,
                        status: Some(status),
                        shards,
                        complete: true,
                        missing: false,
                    });
                }
                Err(err) => return self.failed(stream_arn, err),
            }
        }
    }
}

/// The share of the worker's DescribeStream rate the leader's periodic
/// listings may use; the rest is for children of ended shards and for
/// other workers' first listings.
const LISTING_SHARE: f64 = 0.25;

/// When the leader next lists a stream.
#[derive(Debug, Clone, Copy)]
pub(super) struct ListingDue {
    /// The next listing (of new shards only, unless a full one is due).
    next: Instant,
    /// From when the next listing is a whole one.
    next_full: Instant,
}

impl Coordinator {
    /// How often the leader lists each stream: the sync interval, stretched
    /// so that periodic listings use at most [`LISTING_SHARE`] of the
    /// DescribeStream rate however many streams there are.
    fn listing_period(&self) -> Duration {
        let budget = (self.settings.describe_stream_rps * LISTING_SHARE).max(0.001);
        let needed = Duration::from_secs_f64(self.streams.len() as f64 / budget);
        self.settings.shard_sync_interval.max(needed)
    }

    /// On becoming the leader: every stream is listed in full at once, then
    /// each on its own clock, spread evenly over the period so the listings
    /// do not arrive in bursts.
    pub(super) fn schedule_listings(&mut self) {
        let now = Instant::now();
        let period = self.listing_period();
        let refresh = self.settings.stream_refresh_interval;
        let count = u32::try_from(self.streams.len()).unwrap_or(u32::MAX).max(1);
        self.listing_schedule.clear();
        for (i, stream) in self.streams.clone().into_iter().enumerate() {
            self.request_sync(SyncRequest::Full(stream.clone()));
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            self.listing_schedule.insert(
                stream,
                ListingDue {
                    next: now + period + period / count * i,
                    next_full: now + refresh + refresh / count * i,
                },
            );
        }
    }

    /// Lists a stream the leader did not follow before (a table's new one).
    pub(super) fn schedule_listing(&mut self, stream: &str) {
        self.request_sync(SyncRequest::Full(stream.to_owned()));
        if self.leader.is_some() {
            let now = Instant::now();
            self.listing_schedule.insert(
                stream.to_owned(),
                ListingDue {
                    next: now + self.listing_period(),
                    next_full: now + self.settings.stream_refresh_interval,
                },
            );
        }
    }

    /// When the leader's next periodic listing is due.
    pub(super) fn next_listing_due(&self) -> Option<Instant> {
        self.listing_schedule.values().map(|due| due.next).min()
    }

    /// Asks for the listings now due: of new shards only, or of whole
    /// streams once per refresh interval (to notice shards trimmed past
    /// retention).
    pub(super) fn request_due_listings(&mut self) {
        let now = Instant::now();
        let period = self.listing_period();
        let refresh = self.settings.stream_refresh_interval;
        let mut requests = Vec::new();
        for (stream, due) in &mut self.listing_schedule {
            if due.next > now {
                continue;
            }
            due.next = now + period;
            if due.next_full <= now {
                due.next_full = now + refresh;
                requests.push(SyncRequest::Full(stream.clone()));
            } else {
                requests.push(SyncRequest::Newer(stream.clone()));
            }
        }
        for request in requests {
            self.request_sync(request);
        }
    }

    /// Asks for the listing of the configured streams that have no lease at all yet.
    pub(super) fn request_sync_of_streams_without_leases(&mut self) {
        let orphans: Vec<String> = self
            .streams
            .iter()
            .filter(|arn| !self.shard_keys.keys().any(|(stream, _)| stream == *arn))
            .cloned()
            .collect();
        for stream_arn in orphans {
            self.request_sync(SyncRequest::Full(stream_arn));
        }
    }

    pub(super) fn request_sync(&mut self, request: SyncRequest) {
        self.pending.add(request);
    }

    /// Stops following a stream: no listing of it is asked for any more.
    fn forget_stream(&mut self, stream_arn: &str) {
        self.streams.retain(|s| s != stream_arn);
        self.listings.remove(stream_arn);
        self.listing_schedule.remove(stream_arn);
        self.pending.forget(stream_arn);
    }

    /// Acts on a listing: creates missing leases and, for the leader after a
    /// whole-stream listing, deletes the ones no longer needed. Returns
    /// whether the lease table may have changed, so that the caller reads it
    /// again only then: a worker following hundreds of quiet streams gets a
    /// listing every half second, and reading the whole lease table twice
    /// for each was most of its idle cost.
    pub(super) async fn on_listing(&mut self, listing: Listing) -> bool {
        let stream_arn = listing.stream_arn.clone();
        if !self.streams.contains(&stream_arn) {
            // Asked for before the stream was dropped.
            return false;
        }
        if listing.missing {
            self.check_table_soon(&stream_arn);
            return false;
        }
        if listing.complete {
            self.listings
                .insert(stream_arn.clone(), listing.shards.clone());
        } else {
            let known = self.listings.entry(stream_arn.clone()).or_default();
            for child in &listing.shards {
                if !known.iter().any(|s| s.shard_id == child.shard_id) {
                    known.push(child.clone());
                }
            }
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
            self.check_table_soon(&stream_arn);
            let known = self.listings.get(&stream_arn).cloned();
            if known.is_some_and(|known| self.drained(&stream_arn, &known)) {
                // Nothing more will ever be written to it: stop listing it.
                tracing::info!(stream = %stream_arn, "the stream is disabled and every record it held was read; no longer following it");
                self.forget_stream(&stream_arn);
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
                .is_some_and(|lease| lease.checkpoint.is_shard_end())
        })
    }

    /// Creates a lease for each shard that has none; returns whether any
    /// lease was created here or found created by another worker.
    pub(super) async fn create_missing_leases(
        &mut self,
        stream_arn: &str,
        shards: &[ShardInfo],
    ) -> bool {
        let mut changed = false;
        let first_sight = !self
            .shard_keys
            .keys()
            .any(|(stream, _)| stream == stream_arn);
        for shard in shards {
            if self.lease_of(stream_arn, &shard.shard_id).is_some() {
                continue;
            }
            let starting_position = if self.successor_streams.contains(stream_arn) {
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
                Ok(false) => changed = true,
                Err(err) => {
                    tracing::warn!(shard = %shard.shard_id, error = %err, "could not create a lease; will retry");
                }
            }
        }
        changed
    }

    /// Deletes the leases the [`Collector`] finds nobody needs any more.
    async fn clean_up(&mut self) -> bool {
        let now = Instant::now();
        let view = CollectView {
            leases: &self.leases,
            listings: &self.listings,
            unchanged_for: |key: &str| self.observed.get(key).map(|seen| now - seen.since),
            stream_of: |lease: &Lease| self.stream_of(lease),
        };
        let doomed = self.collector.doomed(&view);
        let deleted = !doomed.is_empty();
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

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

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{graph, Coordinator};
use crate::config::StartingPosition;
use crate::lease::{Checkpoint, ItemKind, Lease};
use crate::streams::{list_all_shards, ShardInfo, StreamStatus, StreamsApi};

/// How often a listing that looks mid-split is read again before it is used anyway.
const INCONSISTENT_LISTING_RETRIES: u32 = 3;

/// What the coordinator asks the syncer to list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum SyncRequest {
    /// Every shard of a stream.
    Stream(String),
    /// The children of a shard that ended.
    ChildrenOf {
        /// The stream.
        stream_arn: String,
        /// The shard that ended.
        shard_id: String,
    },
}

/// What the syncer found.
#[derive(Debug, Clone)]
pub(super) struct Listing {
    pub stream_arn: String,
    /// The stream's status, for whole-stream listings.
    pub status: Option<StreamStatus>,
    pub shards: Vec<ShardInfo>,
    /// `true` for a whole-stream listing, `false` for children only.
    pub complete: bool,
}

/// Lists shards on request, in its own task.
pub(super) struct ShardSyncer {
    api: Arc<dyn StreamsApi>,
    requests: mpsc::UnboundedReceiver<SyncRequest>,
    listings: mpsc::UnboundedSender<Listing>,
}

impl ShardSyncer {
    pub(super) fn new(
        api: Arc<dyn StreamsApi>,
        requests: mpsc::UnboundedReceiver<SyncRequest>,
        listings: mpsc::UnboundedSender<Listing>,
    ) -> Self {
        ShardSyncer {
            api,
            requests,
            listings,
        }
    }

    /// Serves requests until `stop` fires or the coordinator goes away.
    pub(super) async fn run(mut self, stop: CancellationToken) {
        loop {
            let request = tokio::select! {
                _ = stop.cancelled() => return,
                request = self.requests.recv() => match request {
                    Some(request) => request,
                    None => return,
                },
            };
            let listing = tokio::select! {
                _ = stop.cancelled() => return,
                listing = self.serve(request) => listing,
            };
            if let Some(listing) = listing {
                if self.listings.send(listing).is_err() {
                    return;
                }
            }
        }
    }

    async fn serve(&self, request: SyncRequest) -> Option<Listing> {
        match request {
            SyncRequest::Stream(stream_arn) => self.list_stream(stream_arn).await,
            SyncRequest::ChildrenOf {
                stream_arn,
                shard_id,
            } => {
                let page = self
                    .api
                    .describe_stream(&stream_arn, None, Some(&shard_id))
                    .await;
                let children: Vec<ShardInfo> = match page {
                    // DynamoDB Local ignores the filter: a whole single page
                    // still holds the children; a partial one may not.
                    Ok(page) if page.last_evaluated_shard_id.is_none() => {
                        graph::children_of(&page.shards, &shard_id)
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
                Some(Listing {
                    stream_arn,
                    status: None,
                    shards: children,
                    complete: false,
                })
            }
        }
    }

    async fn list_stream(&self, stream_arn: String) -> Option<Listing> {
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
                    return Some(Listing {
                        stream_arn,
                        status: Some(status),
                        shards,
                        complete: true,
                    });
                }
                Err(err) => {
                    tracing::warn!(stream = %stream_arn, error = %err, "could not list the stream's shards; will retry");
                    return None;
                }
            }
        }
    }
}

impl Coordinator {
    /// The leader's periodic work: ask for every stream's listing.
    pub(super) fn request_full_sync(&mut self) {
        self.next_full_sync = self
            .leader
            .as_ref()
            .filter(|leader| !leader.is_lost())
            .map(|_| Instant::now() + self.settings.shard_sync_interval);
        for stream_arn in self.streams.clone() {
            self.request_sync(SyncRequest::Stream(stream_arn));
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
            self.request_sync(SyncRequest::Stream(stream_arn));
        }
    }

    pub(super) fn request_sync(&mut self, request: SyncRequest) {
        // The syncer lives as long as the coordinator; a failed send means
        // it has stopped for shutdown, when listings no longer matter.
        let _ = self.sync_requests.send(request);
    }

    /// Acts on a listing: creates missing leases and, for the leader after a
    /// whole-stream listing, deletes the ones no longer needed. Returns
    /// whether the lease table may have changed, so that the caller reads it
    /// again only then: a worker following hundreds of quiet streams gets a
    /// listing every half second, and reading the whole lease table twice
    /// for each was most of its idle cost.
    pub(super) async fn on_listing(&mut self, listing: Listing) -> bool {
        let stream_arn = listing.stream_arn.clone();
        if listing.complete {
            self.listings
                .insert(stream_arn.clone(), listing.shards.clone());
        } else if let Some(known) = self.listings.get_mut(&stream_arn) {
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
        // A lookup of an ended shard's children is rare and its children
        // should start at once: always worth a fresh look.
        let mut changed = !listing.complete;
        if unknown {
            // Another worker may have created them since the last read.
            self.refresh_leases().await;
            changed = self
                .create_missing_leases(&stream_arn, &listing.shards)
                .await;
        }
        if listing.status == Some(StreamStatus::Disabled)
            && self.drained(&stream_arn, &listing.shards)
        {
            // Nothing more will ever be written to it: stop listing it.
            tracing::info!(stream = %stream_arn, "the stream is disabled and every record it held was read; no longer following it");
            self.streams.retain(|s| s != &stream_arn);
            self.listings.remove(&stream_arn);
            return true;
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

    /// Deletes leases nobody needs any more: shards read to their end that
    /// the stream no longer lists (past the 24-hour retention) and whose
    /// children have started, and presence items of workers long gone.
    async fn clean_up(&mut self) -> bool {
        let long_gone = self.settings.lease_duration * 10;
        let mut doomed = Vec::new();
        for lease in self.leases.values() {
            match lease.kind() {
                ItemKind::Worker => {
                    let gone = self
                        .observed
                        .get(&lease.key)
                        .is_some_and(|seen| seen.since.elapsed() >= long_gone);
                    let mine = lease.owner.as_deref() == Some(self.settings.worker_id.as_str());
                    if gone && !mine {
                        doomed.push(lease.clone());
                    }
                }
                ItemKind::Leader => {}
                ItemKind::Shard => {
                    if !lease.checkpoint.is_shard_end() || lease.owner.is_some() {
                        continue;
                    }
                    let Some(stream) = self.stream_of(lease) else {
                        continue;
                    };
                    let Some(listing) = self.listings.get(&stream) else {
                        continue;
                    };
                    if listing.iter().any(|s| s.shard_id == lease.shard_id) {
                        continue;
                    }
                    let children_started = self
                        .leases
                        .values()
                        .filter(|child| child.parent_shard_ids.contains(&lease.shard_id))
                        .filter(|child| self.stream_of(child).as_deref() == Some(stream.as_str()))
                        .all(|child| {
                            matches!(
                                child.checkpoint,
                                Checkpoint::Sequence(_) | Checkpoint::ShardEnd
                            )
                        });
                    if children_started {
                        doomed.push(lease.clone());
                    }
                }
            }
        }
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

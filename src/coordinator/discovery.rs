//! Discovery: listing shards, creating their leases, finding children, and
//! removing leases of shards that are long gone.
//!
//! Whole-stream listings are the expensive call (DescribeStream is limited
//! per account), so they are made by the shard-sync leader only, plus once by
//! any worker that finds a configured stream without a single lease. A worker
//! whose shard ends asks for that shard's children alone.

use std::time::Duration;

use tokio::time::Instant;

use super::{graph, Coordinator};
use crate::lease::{Checkpoint, ItemKind, Lease};
use crate::streams::{list_all_shards, ShardInfo};

/// How often a listing that looks mid-split is read again before it is used anyway.
const INCONSISTENT_LISTING_RETRIES: u32 = 3;

impl Coordinator {
    /// The leader's periodic work: list every stream, create missing leases,
    /// delete leases that are no longer needed.
    pub(super) async fn full_sync(&mut self) {
        self.next_full_sync = self
            .leader
            .as_ref()
            .filter(|leader| !leader.is_lost())
            .map(|_| Instant::now() + self.settings.shard_sync_interval);
        for stream_arn in self.streams.clone() {
            self.sync_stream(&stream_arn).await;
        }
        self.clean_up().await;
    }

    /// Lists the configured streams that have no lease at all yet.
    pub(super) async fn sync_streams_without_leases(&mut self) {
        let orphans: Vec<String> = self
            .streams
            .iter()
            .filter(|arn| !self.shard_keys.keys().any(|(stream, _)| stream == *arn))
            .cloned()
            .collect();
        for stream_arn in orphans {
            self.sync_stream(&stream_arn).await;
        }
    }

    /// Lists one stream's shards and creates the leases that are missing.
    pub(super) async fn sync_stream(&mut self, stream_arn: &str) {
        let mut attempt = 0;
        let shards = loop {
            match list_all_shards(self.api.as_ref(), stream_arn).await {
                Ok((_status, shards)) => {
                    if graph::is_inconsistent(&shards) && attempt < INCONSISTENT_LISTING_RETRIES {
                        attempt += 1;
                        tracing::info!(stream = %stream_arn, attempt, "the listing shows a parent open beside its child; reading it again");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                    break shards;
                }
                Err(err) => {
                    tracing::warn!(stream = %stream_arn, error = %err, "could not list the stream's shards; will retry");
                    return;
                }
            }
        };
        self.listings.insert(stream_arn.to_owned(), shards.clone());
        self.index_shard_leases();
        self.create_missing_leases(stream_arn, &shards).await;
    }

    pub(super) async fn create_missing_leases(&mut self, stream_arn: &str, shards: &[ShardInfo]) {
        let first_sight = !self
            .shard_keys
            .keys()
            .any(|(stream, _)| stream == stream_arn);
        for shard in shards {
            if self.lease_of(stream_arn, &shard.shard_id).is_some() {
                continue;
            }
            let checkpoint =
                graph::initial_checkpoint(shard, first_sight, self.settings.starting_position);
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
                }
                Ok(false) => {}
                Err(err) => {
                    tracing::warn!(shard = %shard.shard_id, error = %err, "could not create a lease; will retry");
                }
            }
        }
    }

    /// Finds the children of a shard that just ended and creates their
    /// leases, asking DescribeStream for that shard's children only.
    pub(super) async fn discover_children(&mut self, stream_arn: &str, shard_id: &str) {
        let page = self
            .api
            .describe_stream(stream_arn, None, Some(shard_id))
            .await;
        let children: Vec<ShardInfo> = match page {
            // A page that is not filtered (DynamoDB Local ignores the filter)
            // may still hold the children, or may be a partial listing.
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
            // The children are not listed yet, or the answer was partial: a
            // full listing of this stream settles both.
            self.sync_stream(stream_arn).await;
            return;
        }
        self.refresh_leases().await;
        if let Some(listing) = self.listings.get_mut(stream_arn) {
            for child in &children {
                if !listing.iter().any(|s| s.shard_id == child.shard_id) {
                    listing.push(child.clone());
                }
            }
        }
        self.create_missing_leases(stream_arn, &children).await;
    }

    /// Deletes leases nobody needs any more: shards read to their end that
    /// the stream no longer lists (past the 24-hour retention) and whose
    /// children have started, and presence items of workers long gone.
    async fn clean_up(&mut self) {
        let long_gone = self.settings.lease_duration * 10;
        let mut doomed = Vec::new();
        for lease in self.leases.values() {
            match lease.kind() {
                ItemKind::Worker => {
                    let gone = self
                        .observed
                        .get(&lease.key)
                        .is_some_and(|seen| seen.since.elapsed() >= long_gone);
                    if gone && !lease.key.ends_with(&self.settings.worker_id) {
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
    }
}

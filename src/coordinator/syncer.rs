//! The shard syncer: the task that lists shards, one stream at a time.
//!
//! Listings go through DescribeStream, which is limited per account and
//! which each worker spaces to its configured rate, so listing many streams
//! takes a while. The syncer therefore runs in its own task and never holds
//! up lease renewals or takeovers: it takes streams from the [`SyncSet`]
//! and sends back [`Listing`]s. It remembers the newest shard of each
//! stream, so a stream that did not change costs one call.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::graph;
use super::sync_set::{SyncSet, Wanted};
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

//! The pending shard-sync requests: at most one entry per stream.
//!
//! Listings are served at the worker's DescribeStream rate, which is far
//! slower than they can be asked for (every shard that ends, every stream at
//! every sync interval). A queue of requests would grow without bound and
//! list the same stream many times over; this set merges every request for a
//! stream into the one entry already waiting, so its size never exceeds the
//! number of streams followed, and serves streams in the order they were
//! first asked for.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Mutex;

use tokio::sync::Notify;

/// What one listing of a stream must find.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Wanted {
    /// Every shard of the stream (to notice shards trimmed past retention).
    pub full: bool,
    /// Only the shards newer than the newest already known.
    pub newer: bool,
    /// The children of these ended shards.
    pub children_of: BTreeSet<String>,
}

impl Wanted {
    fn merge(&mut self, other: Wanted) {
        self.full |= other.full;
        self.newer |= other.newer;
        self.children_of.extend(other.children_of);
    }
}

/// One request for a stream's listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum SyncRequest {
    /// Every shard of a stream.
    Full(String),
    /// The shards of a stream newer than the newest known.
    Newer(String),
    /// The children of a shard that ended.
    ChildrenOf {
        /// The stream.
        stream_arn: String,
        /// The shard that ended.
        shard_id: String,
    },
}

impl SyncRequest {
    fn split(self) -> (String, Wanted) {
        match self {
            SyncRequest::Full(stream) => (
                stream,
                Wanted {
                    full: true,
                    ..Wanted::default()
                },
            ),
            SyncRequest::Newer(stream) => (
                stream,
                Wanted {
                    newer: true,
                    ..Wanted::default()
                },
            ),
            SyncRequest::ChildrenOf {
                stream_arn,
                shard_id,
            } => (
                stream_arn,
                Wanted {
                    children_of: BTreeSet::from([shard_id]),
                    ..Wanted::default()
                },
            ),
        }
    }
}

#[derive(Debug, Default)]
struct Entries {
    order: VecDeque<String>,
    wanted: HashMap<String, Wanted>,
}

/// The pending requests, shared by the coordinator (which adds) and the
/// syncer (which takes).
#[derive(Debug, Default)]
pub(super) struct SyncSet {
    entries: Mutex<Entries>,
    ready: Notify,
}

impl SyncSet {
    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds a request, merged into the stream's pending entry if it has one.
    pub(super) fn add(&self, request: SyncRequest) {
        let (stream, wanted) = request.split();
        let depth = {
            let mut entries = self.lock();
            match entries.wanted.get_mut(&stream) {
                Some(pending) => pending.merge(wanted),
                None => {
                    entries.order.push_back(stream.clone());
                    entries.wanted.insert(stream, wanted);
                }
            }
            entries.order.len()
        };
        crate::telemetry::metrics::shard_sync_pending(depth);
        self.ready.notify_one();
    }

    /// Forgets a stream's pending entry (a stream no longer followed).
    pub(super) fn forget(&self, stream: &str) {
        let depth = {
            let mut entries = self.lock();
            entries.order.retain(|s| s != stream);
            entries.wanted.remove(stream);
            entries.order.len()
        };
        crate::telemetry::metrics::shard_sync_pending(depth);
    }

    /// The oldest entry, if any.
    pub(super) fn try_take(&self) -> Option<(String, Wanted)> {
        let (taken, depth) = {
            let mut entries = self.lock();
            let taken = entries.order.pop_front().map(|stream| {
                let wanted = entries.wanted.remove(&stream).unwrap_or_default();
                (stream, wanted)
            });
            (taken, entries.order.len())
        };
        if taken.is_some() {
            crate::telemetry::metrics::shard_sync_pending(depth);
        }
        taken
    }

    /// Waits for the oldest entry. Cancellation safe: an entry is removed
    /// only when it is returned.
    pub(super) async fn take(&self) -> (String, Wanted) {
        loop {
            if let Some(taken) = self.try_take() {
                return taken;
            }
            self.ready.notified().await;
        }
    }

    /// How many streams wait for a listing.
    pub(super) fn len(&self) -> usize {
        self.lock().order.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn children(stream: &str, shard: &str) -> SyncRequest {
        SyncRequest::ChildrenOf {
            stream_arn: stream.into(),
            shard_id: shard.into(),
        }
    }

    #[test]
    fn requests_for_one_stream_merge_into_one_entry() {
        let set = SyncSet::default();
        for _ in 0..10 {
            set.add(SyncRequest::Newer("a".into()));
            set.add(SyncRequest::Newer("b".into()));
        }
        set.add(children("a", "s1"));
        set.add(children("a", "s2"));
        set.add(SyncRequest::Full("b".into()));
        assert_eq!(set.len(), 2);
        let (stream, wanted) = set.try_take().unwrap();
        assert_eq!(stream, "a", "first asked, first served");
        assert_eq!(
            wanted,
            Wanted {
                full: false,
                newer: true,
                children_of: BTreeSet::from(["s1".to_owned(), "s2".to_owned()]),
            }
        );
        let (stream, wanted) = set.try_take().unwrap();
        assert_eq!(stream, "b");
        assert!(wanted.full && wanted.newer && wanted.children_of.is_empty());
        assert!(set.try_take().is_none());
    }

    #[test]
    fn a_forgotten_stream_is_not_listed() {
        let set = SyncSet::default();
        set.add(SyncRequest::Full("a".into()));
        set.add(SyncRequest::Full("b".into()));
        set.forget("a");
        assert_eq!(set.len(), 1);
        assert_eq!(set.try_take().unwrap().0, "b");
    }

    #[tokio::test(start_paused = true)]
    async fn take_waits_for_a_request() {
        let set = std::sync::Arc::new(SyncSet::default());
        let waiter = tokio::spawn({
            let set = std::sync::Arc::clone(&set);
            async move { set.take().await.0 }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        set.add(SyncRequest::Newer("a".into()));
        assert_eq!(waiter.await.unwrap(), "a");
    }
}

//! Lease garbage collection: which lease-table items nobody needs any more.
//!
//! Only the shard-sync leader collects, right after a whole-stream listing,
//! so the decision rests on what the stream lists now. The decision is pure
//! (the caller passes what it knows and deletes what it is told); a lease is
//! never deleted while it could still be read or still gates a child.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use tokio::time::Instant;

use crate::lease::{Checkpoint, ItemKind, Lease};
use crate::streams::ShardInfo;

/// What the collector needs to know of the lease table and the streams.
pub(super) struct CollectView<'a, G, S>
where
    G: Fn(&str) -> Option<Duration>,
    S: Fn(&Lease) -> Option<String>,
{
    /// Every item of the lease table, by key.
    pub leases: &'a HashMap<String, Lease>,
    /// The latest whole listing of each stream followed.
    pub listings: &'a HashMap<String, Vec<ShardInfo>>,
    /// How long an item's counter has not moved, on this worker's clock.
    pub unchanged_for: G,
    /// The stream a shard lease belongs to, if it is one followed.
    pub stream_of: S,
}

/// Decides which leases to delete.
#[derive(Debug, Clone)]
pub(super) struct Collector {
    /// This worker: its own presence item is never collected.
    worker_id: String,
    /// How long a worker's presence item must be unchanged to be collected.
    long_gone: Duration,
    /// How long a pipeline's entry must have been seen undeclared by every
    /// live worker before it is removed: a worker just started may write
    /// entries before a scan that missed its presence item ends.
    settle: Duration,
    /// Entries (lease key, pipeline) seen undeclared, and since when.
    undeclared_since: HashMap<(String, String), Instant>,
}

impl Collector {
    /// A collector for this worker: presence items of workers silent for
    /// ten lease durations are collected.
    pub(super) fn new(worker_id: &str, lease_duration: Duration) -> Self {
        Collector {
            worker_id: worker_id.to_owned(),
            long_gone: lease_duration * 10,
            settle: lease_duration * 2,
            undeclared_since: HashMap::new(),
        }
    }

    /// The pipeline entries nobody needs any more, per shard lease: entries
    /// of pipelines that no live worker declares (`declared`, the union of
    /// the live workers' announcements) and that have been undeclared for
    /// two lease durations, so that a rolling deploy that adds a pipeline
    /// never loses its checkpoints.
    pub(super) fn undeclared_pipelines<'a>(
        &mut self,
        leases: impl Iterator<Item = &'a Lease>,
        declared: &BTreeSet<String>,
        now: Instant,
    ) -> Vec<(Lease, Vec<String>)> {
        let mut seen = HashMap::new();
        let mut removable = Vec::new();
        for lease in leases.filter(|l| l.kind() == ItemKind::Shard) {
            let mut names = Vec::new();
            for name in lease.pipeline_checkpoints.keys() {
                if declared.contains(name) {
                    continue;
                }
                let key = (lease.key.clone(), name.clone());
                let since = self.undeclared_since.get(&key).copied().unwrap_or(now);
                if now.duration_since(since) >= self.settle {
                    names.push(name.clone());
                }
                seen.insert(key, since);
            }
            if !names.is_empty() {
                removable.push((lease.clone(), names));
            }
        }
        self.undeclared_since = seen;
        removable
    }

    /// The items nobody needs any more: shards read to their end that the
    /// stream no longer lists (past the 24-hour retention) and whose
    /// children have started, and presence items of workers long gone.
    pub(super) fn doomed<G, S>(&self, view: &CollectView<'_, G, S>) -> Vec<Lease>
    where
        G: Fn(&str) -> Option<Duration>,
        S: Fn(&Lease) -> Option<String>,
    {
        let mut doomed = Vec::new();
        for lease in view.leases.values() {
            match lease.kind() {
                ItemKind::Worker => {
                    let gone =
                        (view.unchanged_for)(&lease.key).is_some_and(|for_| for_ >= self.long_gone);
                    let mine = lease.owner.as_deref() == Some(self.worker_id.as_str());
                    if gone && !mine {
                        doomed.push(lease.clone());
                    }
                }
                // A table's items are removed with the table (by discovery),
                // never collected as done: they are how a restarted fleet
                // knows a snapshot is complete.
                ItemKind::Leader | ItemKind::Table | ItemKind::Segment => {}
                ItemKind::Shard => {
                    if self.shard_is_done(view, lease) {
                        doomed.push(lease.clone());
                    }
                }
            }
        }
        doomed
    }

    fn shard_is_done<G, S>(&self, view: &CollectView<'_, G, S>, lease: &Lease) -> bool
    where
        G: Fn(&str) -> Option<Duration>,
        S: Fn(&Lease) -> Option<String>,
    {
        if !lease.checkpoint.is_shard_end() || lease.owner.is_some() {
            return false;
        }
        let Some(stream) = (view.stream_of)(lease) else {
            return false;
        };
        let Some(listing) = view.listings.get(&stream) else {
            return false;
        };
        if listing.iter().any(|s| s.shard_id == lease.shard_id) {
            return false;
        }
        view.leases
            .values()
            .filter(|child| child.parent_shard_ids.contains(&lease.shard_id))
            .filter(|child| (view.stream_of)(child).as_deref() == Some(stream.as_str()))
            .all(|child| {
                matches!(
                    child.checkpoint,
                    Checkpoint::Sequence(_) | Checkpoint::ShardEnd
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::SequenceNumber;

    const STREAM: &str = "arn:s";

    fn shard(id: &str) -> ShardInfo {
        ShardInfo {
            shard_id: id.into(),
            parent_shard_id: None,
            starting_sequence_number: None,
            ending_sequence_number: None,
        }
    }

    fn doomed(leases: &[Lease], listed: &[&str], unchanged_for: Duration) -> Vec<String> {
        let leases: HashMap<String, Lease> =
            leases.iter().map(|l| (l.key.clone(), l.clone())).collect();
        let listings = HashMap::from([(
            STREAM.to_owned(),
            listed.iter().map(|id| shard(id)).collect::<Vec<_>>(),
        )]);
        let view = CollectView {
            leases: &leases,
            listings: &listings,
            unchanged_for: |_: &str| Some(unchanged_for),
            stream_of: |_: &Lease| Some(STREAM.to_owned()),
        };
        let mut keys: Vec<String> = Collector::new("me", Duration::from_secs(10))
            .doomed(&view)
            .into_iter()
            .map(|l| l.key)
            .collect();
        keys.sort();
        keys
    }

    fn child(checkpoint: Checkpoint) -> Lease {
        Lease::new(STREAM, "child", Some("parent"), checkpoint)
    }

    #[test]
    fn an_undeclared_pipelines_entry_goes_only_after_settling() {
        let mut collector = Collector::new("me", Duration::from_secs(10));
        let mut lease = Lease::new(STREAM, "shard", None, Checkpoint::TrimHorizon);
        for name in ["kept", "gone"] {
            lease
                .pipeline_checkpoints
                .insert(name.into(), Checkpoint::Sequence(SequenceNumber::from("7")));
        }
        let declared: BTreeSet<String> = ["kept".to_owned()].into();
        let start = Instant::now();
        let at = |secs: u64| start + Duration::from_secs(secs);
        let mut removable =
            |now| collector.undeclared_pipelines(std::iter::once(&lease), &declared, now);
        assert!(removable(at(0)).is_empty(), "first seen undeclared");
        assert!(removable(at(19)).is_empty(), "not settled yet");
        let found = removable(at(20));
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].1, ["gone"]);
        // Declared again in between: the clock starts over.
        let mut collector = Collector::new("me", Duration::from_secs(10));
        assert!(collector
            .undeclared_pipelines(std::iter::once(&lease), &declared, at(0))
            .is_empty());
        let all: BTreeSet<String> = ["kept".to_owned(), "gone".to_owned()].into();
        assert!(collector
            .undeclared_pipelines(std::iter::once(&lease), &all, at(10))
            .is_empty());
        assert!(collector
            .undeclared_pipelines(std::iter::once(&lease), &declared, at(25))
            .is_empty());
    }

    #[test]
    fn an_ended_unlisted_shard_goes_once_its_children_started() {
        let parent = Lease::new(STREAM, "parent", None, Checkpoint::ShardEnd);
        let seq = Checkpoint::Sequence(SequenceNumber::from("5"));
        assert_eq!(
            doomed(&[parent.clone(), child(seq)], &["child"], Duration::ZERO),
            ["parent"]
        );
        assert!(
            doomed(
                &[parent.clone(), child(Checkpoint::TrimHorizon)],
                &["child"],
                Duration::ZERO
            )
            .is_empty(),
            "a child not started yet keeps its parent"
        );
        assert!(
            doomed(std::slice::from_ref(&parent), &["parent"], Duration::ZERO).is_empty(),
            "a shard still listed stays"
        );
        let owned = Lease {
            owner: Some("other".into()),
            ..parent
        };
        assert!(
            doomed(&[owned], &[], Duration::ZERO).is_empty(),
            "an owned lease stays"
        );
        let reading = Lease::new(STREAM, "open", None, Checkpoint::TrimHorizon);
        assert!(doomed(&[reading], &[], Duration::ZERO).is_empty());
    }

    #[test]
    fn presence_of_a_worker_long_gone_goes_but_never_our_own() {
        let other = Lease {
            owner: Some("other".into()),
            ..Lease::worker_presence("other")
        };
        let mine = Lease {
            owner: Some("me".into()),
            ..Lease::worker_presence("me")
        };
        let both = [other.clone(), mine];
        assert!(doomed(&both, &[], Duration::from_secs(99)).is_empty());
        assert_eq!(doomed(&both, &[], Duration::from_secs(100)), [other.key]);
    }
}

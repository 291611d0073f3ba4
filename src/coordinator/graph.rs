//! The shard graph: which shard descends from which, and which may start.
//!
//! DynamoDB Streams splits shards as a table grows and rolls them over every
//! few hours; a child's records follow its parent's, so a child may be read
//! only once its parents were read to their ends (`SHARD_END`). This module is
//! pure logic over a listing and the leases, so it is tested without any API.

use std::collections::HashSet;

use crate::config::StartingPosition;
use crate::lease::{Checkpoint, Lease, PipelineStart};
use crate::streams::ShardInfo;

/// The checkpoint a new lease starts with.
///
/// The first time an application sees a stream, the configured starting
/// position applies: `TRIM_HORIZON` reads every shard from its oldest record;
/// `LATEST` reads open shards from now on and marks closed shards as already
/// ended, so their children are not held back by history nobody asked for.
/// Shards found later are continuations of shards already leased (splits and
/// roll-overs), so they are read from their start whatever the setting.
pub fn initial_checkpoint(
    shard: &ShardInfo,
    first_sight_of_stream: bool,
    starting_position: StartingPosition,
) -> Checkpoint {
    if !first_sight_of_stream {
        return Checkpoint::TrimHorizon;
    }
    match starting_position {
        StartingPosition::TrimHorizon => Checkpoint::TrimHorizon,
        StartingPosition::Latest if shard.is_closed() => Checkpoint::ShardEnd,
        StartingPosition::Latest => Checkpoint::Latest,
    }
}

/// Whether a shard was read to its end: by the application (its checkpoint
/// is `SHARD_END`) or by any of the declared `pipelines`, which may go on
/// to its children while others are still behind.
pub fn finished_by_any(lease: &Lease, pipelines: &[PipelineStart]) -> bool {
    lease.checkpoint.is_shard_end() || pipelines.iter().any(|p| lease.is_finished_by(p))
}

/// Whether every parent of `lease` has been read to its end (by the
/// application, or by one of `pipelines`: see [`finished_by_any`]).
///
/// A parent with a lease must be at `SHARD_END`. A parent without a lease
/// counts as done only if the stream no longer lists it (trimmed after 24
/// hours); a listed parent without a lease is about to get one and must be
/// read first. `parent_lease` finds the lease of a parent shard of the same
/// stream.
pub fn parents_done<'a>(
    lease: &Lease,
    parent_lease: impl Fn(&str) -> Option<&'a Lease>,
    listed_shards: &HashSet<String>,
    pipelines: &[PipelineStart],
) -> bool {
    lease
        .parent_shard_ids
        .iter()
        .all(|parent| match parent_lease(parent) {
            Some(parent_lease) => finished_by_any(parent_lease, pipelines),
            None => !listed_shards.contains(parent),
        })
}

/// Whether a listing is inconsistent: a shard listed as open although one of
/// its children is listed too. DescribeStream can answer like this while a
/// split is under way; such a listing is read again before it is trusted.
pub fn is_inconsistent(shards: &[ShardInfo]) -> bool {
    let open: HashSet<&str> = shards
        .iter()
        .filter(|s| !s.is_closed())
        .map(|s| s.shard_id.as_str())
        .collect();
    shards
        .iter()
        .filter_map(|s| s.parent_shard_id.as_deref())
        .any(|parent| open.contains(parent))
}

/// The children of `shard_id` in a listing.
pub fn children_of<'a>(shards: &'a [ShardInfo], shard_id: &str) -> Vec<&'a ShardInfo> {
    shards
        .iter()
        .filter(|s| s.parent_shard_id.as_deref() == Some(shard_id))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn shard(id: &str, parent: Option<&str>, closed: bool) -> ShardInfo {
        ShardInfo {
            shard_id: id.into(),
            parent_shard_id: parent.map(Into::into),
            starting_sequence_number: None,
            ending_sequence_number: closed.then(|| "9".into()),
        }
    }

    #[test]
    fn latest_skips_closed_history_but_continuations_start_at_their_beginning() {
        let closed = shard("a", None, true);
        let open = shard("b", Some("a"), false);
        let latest = StartingPosition::Latest;
        assert_eq!(
            initial_checkpoint(&closed, true, latest),
            Checkpoint::ShardEnd
        );
        assert_eq!(initial_checkpoint(&open, true, latest), Checkpoint::Latest);
        assert_eq!(
            initial_checkpoint(&open, false, latest),
            Checkpoint::TrimHorizon
        );
        assert_eq!(
            initial_checkpoint(&closed, true, StartingPosition::TrimHorizon),
            Checkpoint::TrimHorizon
        );
    }

    #[test]
    fn a_child_waits_for_a_listed_parent_without_a_lease() {
        let child = Lease::new("s", "b", Some("a"), Checkpoint::TrimHorizon);
        let mut leases: HashMap<String, Lease> = HashMap::new();
        let listed: HashSet<String> = ["a".to_string(), "b".to_string()].into();
        assert!(!parents_done(&child, |p| leases.get(p), &listed, &[]));
        leases.insert(
            "a".into(),
            Lease::new("s", "a", None, Checkpoint::Sequence("5".into())),
        );
        assert!(!parents_done(&child, |p| leases.get(p), &listed, &[]));
        leases.get_mut("a").unwrap().checkpoint = Checkpoint::ShardEnd;
        assert!(parents_done(&child, |p| leases.get(p), &listed, &[]));
        assert!(
            parents_done(&child, |_| None, &HashSet::new(), &[]),
            "trimmed parent"
        );
        // With pipelines, a parent one declared pipeline finished is done
        // for the child to start; an entry of an undeclared one is not.
        let parent = leases.get_mut("a").unwrap();
        parent.checkpoint = Checkpoint::Sequence("9".into());
        parent
            .pipeline_checkpoints
            .insert("gone".into(), Checkpoint::ShardEnd);
        let declared = ["search", "audit"].map(|name| PipelineStart {
            name: name.into(),
            from_trim_horizon: false,
        });
        assert!(!parents_done(&child, |p| leases.get(p), &listed, &declared));
        assert!(!parents_done(&child, |p| leases.get(p), &listed, &[]));
        leases
            .get_mut("a")
            .unwrap()
            .pipeline_checkpoints
            .insert("audit".into(), Checkpoint::ShardEnd);
        assert!(parents_done(&child, |p| leases.get(p), &listed, &declared));
        assert!(!parents_done(&child, |p| leases.get(p), &listed, &[]));
    }

    #[test]
    fn an_open_parent_beside_its_child_is_inconsistent() {
        let consistent = [shard("a", None, true), shard("b", Some("a"), false)];
        assert!(!is_inconsistent(&consistent));
        let split_in_progress = [shard("a", None, false), shard("b", Some("a"), false)];
        assert!(is_inconsistent(&split_in_progress));
    }
}

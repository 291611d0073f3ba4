//! The lease table as this worker sees it, and the decisions it implies.
//!
//! Pure: the coordinator passes in the last scan and the current instant,
//! and carries out what comes back (the lease-table writes). Expiry is
//! judged on this worker's monotonic clock only: a counter that has not
//! moved for a whole lease duration means its owner is gone. Wall clocks of
//! other hosts are never compared.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use tokio::time::Instant;

use super::{balance, graph};
use crate::lease::{ItemKind, Lease, PipelineStart};

/// What this worker last saw of an item, and since when.
#[derive(Debug, Clone)]
struct Observation {
    counter: u64,
    owner: Option<String>,
    since: Instant,
    stolen_at: Option<Instant>,
}

/// Every item's last observed counter and owner, for expiry.
#[derive(Debug, Default)]
pub(super) struct Observations {
    seen: HashMap<String, Observation>,
}

impl Observations {
    /// Records a scan read at `now`: a changed counter or owner restarts
    /// the item's clock; an owner replaced by another marks a steal; items
    /// gone from the table are forgotten.
    pub(super) fn observe(&mut self, leases: &HashMap<String, Lease>, now: Instant) {
        for lease in leases.values() {
            match self.seen.get_mut(&lease.key) {
                Some(seen) if seen.counter == lease.counter && seen.owner == lease.owner => {}
                Some(seen) => {
                    let stolen =
                        seen.owner.is_some() && lease.owner.is_some() && seen.owner != lease.owner;
                    seen.counter = lease.counter;
                    seen.owner = lease.owner.clone();
                    seen.since = now;
                    if stolen {
                        seen.stolen_at = Some(now);
                    }
                }
                None => {
                    self.seen.insert(
                        lease.key.clone(),
                        Observation {
                            counter: lease.counter,
                            owner: lease.owner.clone(),
                            since: now,
                            stolen_at: None,
                        },
                    );
                }
            }
        }
        self.seen.retain(|key, _| leases.contains_key(key));
    }

    /// Records single items read at `now`, as [`Observations::observe`]
    /// does, without forgetting the others.
    pub(super) fn note<'a>(&mut self, leases: impl IntoIterator<Item = &'a Lease>, now: Instant) {
        let mut seen = std::mem::take(&mut self.seen);
        let read: HashMap<String, Lease> = leases
            .into_iter()
            .map(|l| (l.key.clone(), l.clone()))
            .collect();
        let mut just_these = Observations {
            seen: read
                .keys()
                .filter_map(|key| seen.remove_entry(key))
                .collect(),
        };
        just_these.observe(&read, now);
        seen.extend(just_these.seen);
        self.seen = seen;
    }

    /// Records that this worker stole `key` at `now`.
    pub(super) fn mark_stolen(&mut self, key: &str, now: Instant) {
        if let Some(seen) = self.seen.get_mut(key) {
            seen.stolen_at = Some(now);
        }
    }

    /// How long an item has not changed.
    pub(super) fn unchanged_for(&self, key: &str, now: Instant) -> Option<Duration> {
        self.seen.get(key).map(|seen| now - seen.since)
    }

    /// Whether an owned item's owner is gone: its counter has not moved
    /// for a lease duration.
    pub(super) fn is_expired(&self, lease: &Lease, lease_duration: Duration, now: Instant) -> bool {
        lease.owner.is_some()
            && self
                .seen
                .get(&lease.key)
                .is_some_and(|seen| now - seen.since >= lease_duration)
    }

    /// When the next item held by another worker than `me` would expire if
    /// its counter does not move again.
    pub(super) fn next_expiry(
        &self,
        me: &str,
        lease_duration: Duration,
        now: Instant,
    ) -> Option<Instant> {
        self.seen
            .values()
            .filter(|seen| seen.owner.as_deref().is_some_and(|owner| owner != me))
            .map(|seen| seen.since + lease_duration)
            .filter(|expiry| *expiry > now)
            .min()
    }

    fn recently_stolen(&self, key: &str, quiet: Duration, now: Instant) -> bool {
        self.seen
            .get(key)
            .and_then(|seen| seen.stolen_at)
            .is_some_and(|at| now - at < quiet)
    }
}

/// One look at the lease table: the scan, what was observed of it, and the
/// instant of the decision.
pub(super) struct LeaseView<'a> {
    pub(super) me: &'a str,
    pub(super) leases: &'a HashMap<String, Lease>,
    pub(super) observed: &'a Observations,
    pub(super) lease_duration: Duration,
    pub(super) now: Instant,
    /// Whether shard leases are judged by their owner's presence item (the
    /// table is read through its indexes) rather than one by one.
    pub(super) by_presence: bool,
}

/// What to do towards this worker's fair share.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Decisions {
    /// Leases to take: first those this worker owns in the table but does
    /// not hold (a restart with the same worker id), then free or expired
    /// ones.
    pub(super) take: Vec<String>,
    /// Leases to ask their owner for (or take when asking went unanswered).
    pub(super) ask_for: Vec<String>,
}

/// What the table says of a lease this worker holds.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum HeldVerdict {
    /// Still ours, nobody asked for it.
    Keep,
    /// Still ours, but another worker asked for it.
    Requested {
        /// The worker that asked.
        by: String,
    },
    /// Gone from the table or owned by another worker: drop it at once
    /// rather than at the next write.
    Lost,
}

/// What to do about a lease this worker wants from a live owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ask {
    /// Asked already; the owner still has time to hand it over.
    Wait,
    /// Asked two lease durations ago and not handed over (an owner that
    /// does not hand over, such as an older version): take it outright.
    Take,
    /// Ask (again: the request was not made, or was cleared).
    Request,
}

impl LeaseView<'_> {
    /// Whether to ask for a lease, wait for the owner, or take it, given
    /// when this worker last asked for it.
    pub(super) fn ask(&self, lease: &Lease, asked_at: Option<Instant>) -> Ask {
        let patience = self.lease_duration * 2;
        let pending_here = lease.pending_owner.as_deref() == Some(self.me);
        match asked_at {
            Some(at) if pending_here && self.now - at < patience => Ask::Wait,
            Some(_) if pending_here => Ask::Take,
            _ => Ask::Request,
        }
    }

    /// Which of the held shards waiting to start may start now: still
    /// owned here as the table says, and their parents done ([`graph`]).
    /// `waiting` gives each one's lease key and stream; `shard_keys` maps
    /// (stream, shard id) to lease keys; `listed` is every listed shard;
    /// `pipelines` the declared pipelines, any of which having finished the
    /// parents lets a child start (the others wait for them inside it).
    pub(super) fn ready_to_start<'k>(
        &self,
        waiting: impl IntoIterator<Item = (&'k String, &'k str)>,
        shard_keys: &HashMap<(String, String), String>,
        listed: &HashSet<String>,
        pipelines: &[PipelineStart],
    ) -> Vec<String> {
        let leases = self.leases;
        waiting
            .into_iter()
            .filter(|(key, stream)| {
                leases.get(*key).is_some_and(|lease| {
                    lease.is_owned_by(self.me)
                        && graph::parents_done(
                            lease,
                            |parent| {
                                shard_keys
                                    .get(&((*stream).to_owned(), parent.to_owned()))
                                    .and_then(|key| leases.get(key))
                            },
                            listed,
                            pipelines,
                        )
                })
            })
            .map(|(key, _)| key.clone())
            .collect()
    }

    /// Judges a held lease against the table.
    pub(super) fn judge_held(&self, key: &str) -> HeldVerdict {
        match self.leases.get(key) {
            Some(lease) if lease.is_owned_by(self.me) => {
                match lease.pending_owner.as_deref().filter(|p| *p != self.me) {
                    Some(by) => HeldVerdict::Requested { by: by.to_owned() },
                    None => HeldVerdict::Keep,
                }
            }
            _ => HeldVerdict::Lost,
        }
    }

    /// Whether the lease's owner is gone: its counter has not moved for a
    /// lease duration or, when judged by presence, its owner's presence
    /// item's has not (a shard lease whose owner has none is not judged so).
    pub(super) fn is_expired(&self, lease: &Lease) -> bool {
        if self.by_presence && lease.kind() == ItemKind::Shard {
            return lease.owner.as_deref().is_some_and(|owner| {
                self.leases
                    .get(&format!("{}{owner}", crate::lease::WORKER_KEY_PREFIX))
                    .is_some_and(|presence| {
                        self.observed
                            .is_expired(presence, self.lease_duration, self.now)
                    })
            });
        }
        self.observed
            .is_expired(lease, self.lease_duration, self.now)
    }

    /// The workers whose presence items are alive.
    pub(super) fn live_workers(&self) -> BTreeSet<String> {
        self.leases
            .values()
            .filter(|lease| lease.kind() == ItemKind::Worker && !self.is_expired(lease))
            .filter_map(|lease| lease.owner.clone())
            .collect()
    }

    /// Which leases to take and which to ask for, given which this worker
    /// holds, which leases are its to read (a followed stream's, not read
    /// to its end by every pipeline), and its cap.
    pub(super) fn decide(
        &self,
        holds: impl Fn(&str) -> bool,
        ours: impl Fn(&Lease) -> bool,
        max_leases: Option<usize>,
    ) -> Decisions {
        let steal_quiet_period = self.lease_duration * 2;
        let states: Vec<balance::LeaseState> = self
            .leases
            .values()
            .filter(|lease| lease.kind() == ItemKind::Shard)
            .filter(|lease| ours(lease))
            .map(|lease| balance::LeaseState {
                key: lease.key.clone(),
                owner: lease.owner.clone(),
                expired: self.is_expired(lease),
                recently_stolen: self.observed.recently_stolen(
                    &lease.key,
                    steal_quiet_period,
                    self.now,
                ),
            })
            .collect();
        let plan = balance::plan(self.me, &states, &self.live_workers(), max_leases);
        let mut take: Vec<String> = states
            .iter()
            .filter(|s| s.owner.as_deref() == Some(self.me) && !holds(&s.key))
            .map(|s| s.key.clone())
            .collect();
        take.extend(plan.take);
        Decisions {
            take,
            ask_for: plan.steal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::Checkpoint;

    /// The leases an application with one pipeline reads.
    fn unread(lease: &Lease) -> bool {
        lease.needs_reading(&[])
    }

    const DURATION: Duration = Duration::from_secs(10);

    fn shard(key: &str, owner: Option<&str>, counter: u64) -> Lease {
        let mut lease = Lease::new("arn:stream", key, None, Checkpoint::TrimHorizon);
        lease.owner = owner.map(Into::into);
        lease.counter = counter;
        lease
    }

    fn worker(name: &str, counter: u64) -> Lease {
        let mut lease = Lease::worker_presence(name);
        lease.owner = Some(name.into());
        lease.counter = counter;
        lease
    }

    fn table(leases: impl IntoIterator<Item = Lease>) -> HashMap<String, Lease> {
        leases.into_iter().map(|l| (l.key.clone(), l)).collect()
    }

    fn view<'a>(
        leases: &'a HashMap<String, Lease>,
        observed: &'a Observations,
        now: Instant,
    ) -> LeaseView<'a> {
        LeaseView {
            me: "a",
            leases,
            observed,
            lease_duration: DURATION,
            now,
            by_presence: false,
        }
    }

    #[test]
    fn a_lease_expires_a_lease_duration_after_its_counter_last_moved() {
        let t0 = Instant::now();
        let mut observed = Observations::default();
        let leases = table([shard("s1", Some("b"), 1)]);
        observed.observe(&leases, t0);
        let lease = &leases["s1"];
        assert!(!observed.is_expired(lease, DURATION, t0 + DURATION - Duration::from_millis(1)));
        assert!(observed.is_expired(lease, DURATION, t0 + DURATION));
        // A renewal seen later restarts the clock.
        let renewed = table([shard("s1", Some("b"), 2)]);
        observed.observe(&renewed, t0 + DURATION / 2);
        assert!(!observed.is_expired(&renewed["s1"], DURATION, t0 + DURATION));
        assert!(observed.is_expired(&renewed["s1"], DURATION, t0 + DURATION * 3 / 2));
        assert_eq!(
            observed.unchanged_for("s1", t0 + DURATION),
            Some(DURATION / 2)
        );
    }

    #[test]
    fn an_unowned_lease_never_expires_and_a_vanished_one_is_forgotten() {
        let t0 = Instant::now();
        let mut observed = Observations::default();
        let leases = table([shard("s1", None, 1), shard("s2", Some("b"), 1)]);
        observed.observe(&leases, t0);
        assert!(!observed.is_expired(&leases["s1"], DURATION, t0 + DURATION * 5));
        observed.observe(&table([shard("s1", None, 1)]), t0 + DURATION);
        assert_eq!(observed.unchanged_for("s2", t0 + DURATION), None);
        // Seen again, it starts a fresh clock.
        observed.observe(&leases, t0 + DURATION * 2);
        assert!(!observed.is_expired(&leases["s2"], DURATION, t0 + DURATION * 2));
    }

    #[test]
    fn the_next_expiry_is_the_earliest_of_other_workers_leases_still_ahead() {
        let t0 = Instant::now();
        let mut observed = Observations::default();
        observed.observe(
            &table([shard("mine", Some("a"), 1), shard("s1", Some("b"), 1)]),
            t0,
        );
        observed.observe(
            &table([
                shard("mine", Some("a"), 1),
                shard("s1", Some("b"), 1),
                shard("s2", Some("c"), 1),
            ]),
            t0 + Duration::from_secs(3),
        );
        assert_eq!(observed.next_expiry("a", DURATION, t0), Some(t0 + DURATION));
        // Past expiries are not waited for.
        assert_eq!(
            observed.next_expiry("a", DURATION, t0 + DURATION),
            Some(t0 + Duration::from_secs(13))
        );
        assert_eq!(observed.next_expiry("a", DURATION, t0 + DURATION * 2), None);
    }

    #[test]
    fn an_owned_lease_not_held_is_taken_back_before_free_ones() {
        let t0 = Instant::now();
        let leases = table([
            worker("a", 1),
            shard("mine", Some("a"), 1),
            shard("free", None, 1),
            shard("done", None, 1),
        ]);
        let mut leases = leases;
        leases.get_mut("done").unwrap().checkpoint = Checkpoint::ShardEnd;
        let mut observed = Observations::default();
        observed.observe(&leases, t0);
        let decisions = view(&leases, &observed, t0).decide(|_| false, unread, None);
        assert_eq!(decisions.take, vec!["mine".to_owned(), "free".to_owned()]);
        assert!(decisions.ask_for.is_empty());
        // Held already: nothing to take back.
        let decisions = view(&leases, &observed, t0).decide(|key| key == "mine", unread, None);
        assert_eq!(decisions.take, vec!["free".to_owned()]);
    }

    #[test]
    fn a_dead_workers_leases_are_taken_once_expired_and_a_live_ones_asked_for() {
        let t0 = Instant::now();
        let leases = table([
            worker("a", 1),
            worker("b", 1),
            shard("s1", Some("b"), 1),
            shard("s2", Some("b"), 1),
            shard("s3", Some("b"), 1),
            shard("s4", Some("b"), 1),
        ]);
        let mut observed = Observations::default();
        observed.observe(&leases, t0);
        // b is alive: a asks for half of its leases.
        let decisions = view(&leases, &observed, t0).decide(|_| false, unread, None);
        assert!(decisions.take.is_empty());
        assert_eq!(decisions.ask_for.len(), 2);
        assert_eq!(
            view(&leases, &observed, t0).live_workers(),
            ["a", "b"].map(String::from).into()
        );
        // b stopped renewing: a lease duration later it is gone, and a
        // (renewing its own presence) takes everything.
        let mut later = leases.clone();
        later.insert(worker("a", 2).key.clone(), worker("a", 2));
        observed.observe(&later, t0 + DURATION / 2);
        let now = t0 + DURATION;
        let view = view(&later, &observed, now);
        assert_eq!(view.live_workers(), ["a"].map(String::from).into());
        let mut decisions = view.decide(|_| false, unread, None);
        decisions.take.sort();
        assert_eq!(decisions.take, ["s1", "s2", "s3", "s4"].map(String::from));
        assert!(decisions.ask_for.is_empty());
    }

    #[test]
    fn a_lease_just_stolen_is_not_asked_for_again_and_foreign_streams_are_ignored() {
        let t0 = Instant::now();
        let leases = table([
            worker("a", 1),
            worker("b", 1),
            shard("s1", Some("b"), 1),
            shard("s2", Some("b"), 1),
            shard("s3", Some("b"), 1),
            shard("s4", Some("b"), 1),
        ]);
        let mut observed = Observations::default();
        observed.observe(&leases, t0);
        for key in ["s1", "s2", "s3", "s4"] {
            observed.mark_stolen(key, t0);
        }
        let decisions = view(&leases, &observed, t0 + DURATION).decide(|_| false, unread, None);
        assert!(decisions.ask_for.is_empty(), "within the quiet period");
        // b keeps renewing; the quiet period runs out.
        let renewed = table([
            worker("a", 2),
            worker("b", 2),
            shard("s1", Some("b"), 2),
            shard("s2", Some("b"), 2),
            shard("s3", Some("b"), 2),
            shard("s4", Some("b"), 2),
        ]);
        observed.observe(&renewed, t0 + DURATION * 3 / 2);
        let decisions =
            view(&renewed, &observed, t0 + DURATION * 2).decide(|_| false, unread, None);
        assert!(decisions.take.is_empty());
        assert_eq!(decisions.ask_for.len(), 2, "after the quiet period");
        let decisions = view(&leases, &observed, t0).decide(|_| false, |_| false, None);
        assert_eq!(decisions, Decisions::default());
    }

    #[test]
    fn a_held_lease_is_kept_requested_or_lost_as_the_table_says() {
        let t0 = Instant::now();
        let observed = Observations::default();
        let mut asked = shard("asked", Some("a"), 1);
        asked.pending_owner = Some("b".into());
        let mut asked_by_me = shard("asked_by_me", Some("a"), 1);
        asked_by_me.pending_owner = Some("a".into());
        let leases = table([
            shard("kept", Some("a"), 1),
            asked,
            asked_by_me,
            shard("taken", Some("b"), 2),
            shard("freed", None, 2),
        ]);
        let view = view(&leases, &observed, t0);
        assert_eq!(view.judge_held("kept"), HeldVerdict::Keep);
        assert_eq!(view.judge_held("asked_by_me"), HeldVerdict::Keep);
        assert_eq!(
            view.judge_held("asked"),
            HeldVerdict::Requested { by: "b".into() }
        );
        assert_eq!(view.judge_held("taken"), HeldVerdict::Lost);
        assert_eq!(view.judge_held("freed"), HeldVerdict::Lost);
        assert_eq!(view.judge_held("deleted"), HeldVerdict::Lost);
    }

    #[test]
    fn an_unanswered_request_is_waited_on_for_two_lease_durations_then_the_lease_taken() {
        let t0 = Instant::now();
        let observed = Observations::default();
        let mut asked = shard("s1", Some("b"), 1);
        asked.pending_owner = Some("a".into());
        let leases = table([asked.clone()]);
        let at = |now| view(&leases, &observed, now);
        assert_eq!(at(t0).ask(&asked, None), Ask::Request);
        assert_eq!(at(t0 + DURATION).ask(&asked, Some(t0)), Ask::Wait);
        assert_eq!(
            at(t0 + DURATION * 2 - Duration::from_millis(1)).ask(&asked, Some(t0)),
            Ask::Wait
        );
        assert_eq!(at(t0 + DURATION * 2).ask(&asked, Some(t0)), Ask::Take);
        // The request was cleared (the owner wrote over it): ask again.
        let mut cleared = asked.clone();
        cleared.pending_owner = None;
        assert_eq!(at(t0 + DURATION).ask(&cleared, Some(t0)), Ask::Request);
        let mut other = asked;
        other.pending_owner = Some("c".into());
        assert_eq!(at(t0 + DURATION * 3).ask(&other, Some(t0)), Ask::Request);
    }

    #[test]
    fn a_child_starts_once_its_parent_reached_its_end_and_only_if_still_ours() {
        let t0 = Instant::now();
        let observed = Observations::default();
        let mut parent = shard("parent", Some("b"), 1);
        let mut child = Lease::new(
            "arn:stream",
            "child",
            Some("parent"),
            Checkpoint::TrimHorizon,
        );
        child.owner = Some("a".into());
        let mut orphan = Lease::new(
            "arn:stream",
            "orphan",
            Some("gone"),
            Checkpoint::TrimHorizon,
        );
        orphan.owner = Some("a".into());
        let taken = shard("taken", Some("b"), 1);
        let keys: HashMap<(String, String), String> = ["parent", "child", "orphan", "taken"]
            .map(|id| (("arn:stream".to_owned(), id.to_owned()), id.to_owned()))
            .into();
        let listed: HashSet<String> = ["parent", "child", "orphan", "taken"]
            .map(String::from)
            .into();
        let waiting: Vec<String> = ["child", "orphan", "taken"].map(String::from).into();
        let ready = |leases: &HashMap<String, Lease>| {
            let mut ready = view(leases, &observed, t0).ready_to_start(
                waiting.iter().map(|key| (key, "arn:stream")),
                &keys,
                &listed,
                &[],
            );
            ready.sort();
            ready
        };
        let leases = table([parent.clone(), child.clone(), orphan.clone(), taken.clone()]);
        // The parent is still read; a parent neither leased nor listed was
        // trimmed long ago; a lease now another's never starts here.
        assert_eq!(ready(&leases), vec!["orphan".to_owned()]);
        parent.checkpoint = Checkpoint::ShardEnd;
        let leases = table([parent, child, orphan, taken]);
        assert_eq!(
            ready(&leases),
            vec!["child".to_owned(), "orphan".to_owned()]
        );
    }

    #[test]
    fn an_owner_replaced_by_another_counts_as_a_steal() {
        let t0 = Instant::now();
        let mut observed = Observations::default();
        observed.observe(&table([shard("s1", Some("b"), 1)]), t0);
        assert!(!observed.recently_stolen("s1", DURATION * 2, t0));
        observed.observe(&table([shard("s1", Some("c"), 2)]), t0 + DURATION);
        assert!(observed.recently_stolen("s1", DURATION * 2, t0 + DURATION));
        assert!(!observed.recently_stolen("s1", DURATION * 2, t0 + DURATION * 3));
    }
}

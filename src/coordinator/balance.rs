//! Lease balancing: which leases this worker should take or steal.
//!
//! Each worker aims at its fair share, `ceil(leases / live workers)` (capped
//! by `DYNASTREAM_MAX_LEASES_PER_WORKER`). It first takes leases nobody holds
//! (free or expired), then steals from the most loaded worker, but only while
//! that worker holds at least two leases more than itself, and never more
//! than half the difference: every steal strictly narrows the gap between two
//! workers, so balancing converges, and a lease just stolen can never be
//! stolen back in the next round (that would need the gap the other way).
//! Leases stolen recently are also left alone, to keep churn low while views
//! of the table differ between workers. Pure logic, tested without any I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};

/// What the balancer needs to know about one shard lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseState {
    /// The lease key.
    pub key: String,
    /// The current owner, if any.
    pub owner: Option<String>,
    /// Whether its owner stopped renewing it (judged on our clock).
    pub expired: bool,
    /// Whether it was stolen from one worker by another lately.
    pub recently_stolen: bool,
}

/// The leases to write, in the order to try them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Free or expired leases to take.
    pub take: Vec<String>,
    /// Leases to steal from an over-loaded worker.
    pub steal: Vec<String>,
}

/// The number of leases a worker aims at.
pub fn fair_share(leases: usize, workers: usize, max_leases: Option<usize>) -> usize {
    let share = leases.div_ceil(workers.max(1));
    max_leases.map_or(share, |max| share.min(max))
}

/// A per-worker order of the keys, so that workers racing for the same free
/// leases try them in different orders instead of colliding on each one.
fn spread<'a>(me: &str, keys: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut keyed: Vec<(u64, &str)> = keys
        .map(|key| {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            (me, key).hash(&mut hasher);
            (hasher.finish(), key)
        })
        .collect();
    keyed.sort();
    keyed.into_iter().map(|(_, key)| key.to_owned()).collect()
}

/// How many leases a worker should take and from whom it should steal, from
/// counts alone: what every live worker holds (`held`, `me` included or
/// not) and how many leases nobody holds (`free`: unowned or expired).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Share {
    /// How many free leases to take.
    pub take: usize,
    /// The most loaded worker and how many of its leases to steal.
    pub steal_from: Option<(String, usize)>,
}

/// Decides how many leases `me` should take and steal. The rules of the
/// module's header, on counts: the coordinator applies them to the leases
/// of a whole scan ([`plan`]), or to the counts the workers' presence items
/// announce when it reads the table through its indexes.
pub fn share(
    me: &str,
    held: &BTreeMap<String, usize>,
    free: usize,
    max_leases: Option<usize>,
) -> Share {
    let workers = held.len() + usize::from(!held.contains_key(me));
    let total = held.values().sum::<usize>() + free;
    let target = fair_share(total, workers, max_leases);
    let mine = held.get(me).copied().unwrap_or(0);
    let need = target.saturating_sub(mine);
    let take = need.min(free);
    let need = need - take;
    let mut share = Share {
        take,
        steal_from: None,
    };
    if need == 0 {
        return share;
    }
    let mine_after_taking = mine + take;
    let victim = held
        .iter()
        .filter(|(owner, _)| owner.as_str() != me)
        .max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0)));
    if let Some((victim, &count)) = victim {
        if count >= mine_after_taking + 2 {
            let steal = need.min((count - mine_after_taking) / 2);
            share.steal_from = Some((victim.clone(), steal));
        }
    }
    share
}

/// Leases to steal from `victim`: `count` of `keys` (its leases, except
/// those stolen lately), in this worker's order.
pub fn steal_candidates<'a>(
    me: &str,
    keys: impl Iterator<Item = &'a str>,
    count: usize,
) -> Vec<String> {
    spread(me, keys).into_iter().take(count).collect()
}

/// Decides what `me` should take and steal.
///
/// `live_workers` are the workers seen alive in the lease table (their
/// presence items renewed); `me` counts whether listed or not. Owners of
/// unexpired leases count as live too, so a worker whose presence item is
/// missing (an older version, or the KCL) is never ignored.
pub fn plan(
    me: &str,
    leases: &[LeaseState],
    live_workers: &BTreeSet<String>,
    max_leases: Option<usize>,
) -> Plan {
    let mut held: BTreeMap<String, usize> = live_workers.iter().map(|w| (w.clone(), 0)).collect();
    held.entry(me.to_owned()).or_default();
    for lease in leases {
        if let (Some(owner), false) = (lease.owner.as_deref(), lease.expired) {
            *held.entry(owner.to_owned()).or_default() += 1;
        }
    }
    let free: Vec<&str> = leases
        .iter()
        .filter(|lease| lease.owner.is_none() || lease.expired)
        .filter(|lease| lease.owner.as_deref() != Some(me) || lease.expired)
        .map(|lease| lease.key.as_str())
        .collect();
    let share = share(me, &held, free.len(), max_leases);
    let mut plan = Plan {
        take: spread(me, free.into_iter())
            .into_iter()
            .take(share.take)
            .collect(),
        steal: Vec::new(),
    };
    if let Some((victim, count)) = share.steal_from {
        let candidates = leases.iter().filter(|lease| {
            lease.owner.as_deref() == Some(victim.as_str())
                && !lease.expired
                && !lease.recently_stolen
        });
        plan.steal = steal_candidates(me, candidates.map(|lease| lease.key.as_str()), count);
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn lease(key: &str, owner: Option<&str>) -> LeaseState {
        LeaseState {
            key: key.into(),
            owner: owner.map(Into::into),
            expired: false,
            recently_stolen: false,
        }
    }

    fn workers(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn a_new_worker_takes_free_leases_up_to_its_share() {
        let leases: Vec<_> = (0..6).map(|i| lease(&format!("s{i}"), None)).collect();
        let plan = plan("a", &leases, &workers(&["a", "b", "c"]), None);
        assert_eq!(plan.take.len(), 2);
        assert!(plan.steal.is_empty());
    }

    #[test]
    fn expired_leases_are_free_and_a_cap_is_respected() {
        let mut leases: Vec<_> = (0..4)
            .map(|i| lease(&format!("s{i}"), Some("dead")))
            .collect();
        for l in &mut leases {
            l.expired = true;
        }
        let plan_all = plan("a", &leases, &workers(&["a"]), None);
        assert_eq!(plan_all.take.len(), 4);
        let capped = plan("a", &leases, &workers(&["a"]), Some(3));
        assert_eq!(capped.take.len(), 3);
    }

    #[test]
    fn a_worker_far_below_its_share_steals_several_at_once() {
        let leases: Vec<_> = (0..8).map(|i| lease(&format!("s{i}"), Some("a"))).collect();
        let plan = plan("b", &leases, &workers(&["a", "b"]), None);
        assert_eq!(plan.steal.len(), 4);
        assert!(plan.take.is_empty());
    }

    #[test]
    fn a_gap_of_one_is_left_alone() {
        let mut leases: Vec<_> = (0..3).map(|i| lease(&format!("a{i}"), Some("a"))).collect();
        leases.extend((0..2).map(|i| lease(&format!("b{i}"), Some("b"))));
        assert_eq!(
            plan("b", &leases, &workers(&["a", "b"]), None),
            Plan::default()
        );
    }

    #[test]
    fn recently_stolen_leases_are_not_stolen_again() {
        let mut leases: Vec<_> = (0..4).map(|i| lease(&format!("s{i}"), Some("a"))).collect();
        for l in &mut leases {
            l.recently_stolen = true;
        }
        assert!(plan("b", &leases, &workers(&["a", "b"]), None)
            .steal
            .is_empty());
    }

    /// Runs balancing rounds over a shared table until nothing changes.
    fn simulate(
        owners: Vec<Option<usize>>,
        worker_count: usize,
    ) -> (Vec<Option<usize>>, usize, usize) {
        let names: Vec<String> = (0..worker_count).map(|w| format!("w{w}")).collect();
        let live: BTreeSet<String> = names.iter().cloned().collect();
        let mut owners = owners;
        let mut moves: HashMap<usize, usize> = HashMap::new();
        let mut ping_pong = 0;
        let mut last_thief: HashMap<usize, usize> = HashMap::new();
        for round in 0..50 {
            let mut changed = false;
            for (w, name) in names.iter().enumerate() {
                let states: Vec<LeaseState> = owners
                    .iter()
                    .enumerate()
                    .map(|(i, o)| LeaseState {
                        key: format!("s{i:03}"),
                        owner: o.map(|w| names[w].clone()),
                        expired: false,
                        recently_stolen: false,
                    })
                    .collect();
                let plan = plan(name, &states, &live, None);
                for key in plan.take.iter().chain(plan.steal.iter()) {
                    let index: usize = key[1..].parse().unwrap();
                    if let Some(previous) = owners[index] {
                        if last_thief.get(&index) == Some(&previous)
                            && moves.get(&index) == Some(&w)
                        {
                            ping_pong += 1;
                        }
                        last_thief.insert(index, w);
                        moves.insert(index, previous);
                    }
                    owners[index] = Some(w);
                    changed = true;
                }
            }
            if !changed {
                return (owners, round, ping_pong);
            }
        }
        (owners, 50, ping_pong)
    }

    proptest! {
        #[test]
        fn balancing_converges_evenly_without_ping_pong(
            worker_count in 1usize..8,
            initial in proptest::collection::vec(proptest::option::of(0usize..8), 0..60),
        ) {
            let initial: Vec<Option<usize>> = initial
                .into_iter()
                .map(|o| o.filter(|w| *w < worker_count))
                .collect();
            let lease_count = initial.len();
            let (owners, rounds, ping_pong) = simulate(initial, worker_count);
            prop_assert!(rounds < 20, "converged in {} rounds", rounds);
            prop_assert_eq!(ping_pong, 0);
            prop_assert!(owners.iter().all(Option::is_some), "every lease owned");
            let mut counts = vec![0usize; worker_count];
            for owner in owners.iter().flatten() {
                counts[*owner] += 1;
            }
            let max = counts.iter().max().copied().unwrap_or(0);
            let min = counts.iter().min().copied().unwrap_or(0);
            prop_assert!(max - min <= 1, "counts {:?} for {} leases", counts, lease_count);
        }
    }
}

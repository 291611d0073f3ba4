//! Discovery: which streams this worker follows and when each is listed.
//!
//! [`Discovery`] owns the configured tables' current streams, the latest
//! listing of each stream, and the clocks that decide when a listing or a
//! table lookup is due; requests go into the [`SyncSet`] that the
//! [`super::syncer::ShardSyncer`] serves. Periodic listings are made by the
//! shard-sync leader only, each stream on its own clock spread over the
//! period, plus once by any worker that finds a configured stream without a
//! single lease; a worker whose shard ends asks for that shard's children.
//! A table's stream is looked up again once per refresh interval, or at
//! once when its stream is disabled or cannot be found.
//!
//! Everything here is synchronous and takes the current time as an
//! argument: the coordinator's loop carries out what it asks for.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

pub(super) use super::sync_set::SyncRequest;
use super::sync_set::SyncSet;
use super::syncer::Listing;
use crate::lease::Lease;
use crate::streams::ShardInfo;

/// The share of the worker's DescribeStream rate the leader's periodic
/// listings may use; the rest is for children of ended shards and for
/// other workers' first listings.
const LISTING_SHARE: f64 = 0.25;

/// When the leader next lists a stream.
#[derive(Debug, Clone, Copy)]
struct ListingDue {
    /// The next listing (of new shards only, unless a full one is due).
    next: Instant,
    /// From when the next listing is a whole one.
    next_full: Instant,
}

/// How often discovery lists and looks up.
#[derive(Debug, Clone, Copy)]
pub(super) struct DiscoverySettings {
    /// The shortest period between two periodic listings of a stream.
    pub shard_sync_interval: Duration,
    /// How often tables are looked up again and streams listed whole.
    pub stream_refresh_interval: Duration,
    /// DescribeStream calls per second this worker may make.
    pub describe_stream_rps: f64,
}

/// The streams followed, their listings, and the clocks of both.
#[derive(Debug)]
pub(super) struct Discovery {
    settings: DiscoverySettings,
    /// Every stream followed, sorted.
    pub streams: Vec<String>,
    /// The shards each stream is known to have.
    pub listings: HashMap<String, Vec<ShardInfo>>,
    /// The current stream of each configured table, to notice a stream
    /// disabled and re-enabled (a new ARN).
    pub table_streams: HashMap<String, String>,
    /// Streams that replaced a table's disabled stream: read from their
    /// start whatever the starting position, since they continue the table.
    pub successor_streams: HashSet<String>,
    /// When each table's current stream is next looked up.
    table_checks: HashMap<String, Instant>,
    /// The leader's clock for each stream's periodic listing.
    listing_schedule: HashMap<String, ListingDue>,
    /// When this worker, not being the leader, last listed streams without leases.
    last_orphan_sync: Option<Instant>,
    pending: Arc<SyncSet>,
}

impl Discovery {
    /// Discovery over the given set of pending listings.
    pub(super) fn new(settings: DiscoverySettings, pending: Arc<SyncSet>) -> Self {
        Discovery {
            settings,
            streams: Vec::new(),
            listings: HashMap::new(),
            table_streams: HashMap::new(),
            successor_streams: HashSet::new(),
            table_checks: HashMap::new(),
            listing_schedule: HashMap::new(),
            last_orphan_sync: None,
            pending,
        }
    }

    /// Starts following the resolved streams; each table is looked up again
    /// on its own clock, spread over the refresh interval.
    pub(super) fn follow(
        &mut self,
        mut streams: Vec<String>,
        table_streams: HashMap<String, String>,
        now: Instant,
    ) {
        streams.extend(table_streams.values().cloned());
        streams.sort();
        streams.dedup();
        self.streams = streams;
        let refresh = self.settings.stream_refresh_interval;
        let count = u32::try_from(table_streams.len())
            .unwrap_or(u32::MAX)
            .max(1);
        for (i, table) in table_streams.keys().enumerate() {
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            self.table_checks
                .insert(table.clone(), now + refresh + refresh / count * i);
        }
        self.table_streams = table_streams;
    }

    /// The set of pending listings, for tests that watch its size.
    #[cfg(test)]
    pub(super) fn sync_set(&self) -> Arc<SyncSet> {
        Arc::clone(&self.pending)
    }

    /// How many streams wait for a listing.
    pub(super) fn pending(&self) -> usize {
        self.pending.len()
    }

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
    pub(super) fn lead(&mut self, now: Instant) {
        let period = self.listing_period();
        let refresh = self.settings.stream_refresh_interval;
        let count = u32::try_from(self.streams.len()).unwrap_or(u32::MAX).max(1);
        self.listing_schedule.clear();
        for (i, stream) in self.streams.iter().enumerate() {
            self.pending.add(SyncRequest::Full(stream.clone()));
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            self.listing_schedule.insert(
                stream.clone(),
                ListingDue {
                    next: now + period + period / count * i,
                    next_full: now + refresh + refresh / count * i,
                },
            );
        }
    }

    /// On losing (or not having) the leadership: periodic listings stop.
    pub(super) fn follow_leader(&mut self) {
        self.listing_schedule.clear();
    }

    /// When the leader's next periodic listing is due.
    pub(super) fn next_listing_due(&self) -> Option<Instant> {
        self.listing_schedule.values().map(|due| due.next).min()
    }

    /// Asks for the listings now due: of new shards only, or of whole
    /// streams once per refresh interval (to notice shards trimmed past
    /// retention).
    pub(super) fn request_due_listings(&mut self, now: Instant) {
        let period = self.listing_period();
        let refresh = self.settings.stream_refresh_interval;
        for (stream, due) in &mut self.listing_schedule {
            if due.next > now {
                continue;
            }
            due.next = now + period;
            if due.next_full <= now {
                due.next_full = now + refresh;
                self.pending.add(SyncRequest::Full(stream.clone()));
            } else {
                self.pending.add(SyncRequest::Newer(stream.clone()));
            }
        }
    }

    /// For a worker that is not the leader: once per sync interval, asks for
    /// the listing of the streams that have no lease at all yet.
    pub(super) fn request_orphans(&mut self, now: Instant, has_lease: impl Fn(&str) -> bool) {
        let due = self
            .last_orphan_sync
            .is_none_or(|at| now - at >= self.settings.shard_sync_interval);
        if !due {
            return;
        }
        self.last_orphan_sync = Some(now);
        for stream in &self.streams {
            if !has_lease(stream) {
                self.pending.add(SyncRequest::Full(stream.clone()));
            }
        }
    }

    /// Asks for a listing.
    pub(super) fn request(&self, request: SyncRequest) {
        self.pending.add(request);
    }

    /// Follows a table's new stream (its old one was disabled and enabled
    /// again), listing it at once and then, for the leader, periodically.
    pub(super) fn follow_successor(
        &mut self,
        table: &str,
        stream: &str,
        is_leader: bool,
        now: Instant,
    ) {
        self.follow_table(table, stream, true, is_leader, now);
    }

    /// Follows a table's stream, listing it at once and then, for the
    /// leader, periodically; `from_start` reads it from its start whatever
    /// the starting position.
    pub(super) fn follow_table(
        &mut self,
        table: &str,
        stream: &str,
        from_start: bool,
        is_leader: bool,
        now: Instant,
    ) {
        self.table_streams
            .insert(table.to_owned(), stream.to_owned());
        self.table_checks
            .entry(table.to_owned())
            .or_insert(now + self.settings.stream_refresh_interval);
        if from_start {
            self.successor_streams.insert(stream.to_owned());
        }
        self.streams.push(stream.to_owned());
        self.streams.sort();
        self.streams.dedup();
        self.pending.add(SyncRequest::Full(stream.to_owned()));
        if is_leader {
            self.listing_schedule.insert(
                stream.to_owned(),
                ListingDue {
                    next: now + self.listing_period(),
                    next_full: now + self.settings.stream_refresh_interval,
                },
            );
        }
    }

    /// Stops following a stream: no listing of it is asked for any more.
    pub(super) fn forget_stream(&mut self, stream_arn: &str) {
        self.streams.retain(|s| s != stream_arn);
        self.listings.remove(stream_arn);
        self.listing_schedule.remove(stream_arn);
        self.pending.forget(stream_arn);
    }

    /// When the next table lookup is due.
    pub(super) fn next_table_due(&self) -> Option<Instant> {
        self.table_checks.values().min().copied()
    }

    /// The tables whose stream is due to be looked up, with their current
    /// stream; each is rescheduled a refresh interval later.
    pub(super) fn due_tables(&mut self, now: Instant) -> Vec<(String, String)> {
        let mut due = Vec::new();
        for (table, at) in &mut self.table_checks {
            if *at > now {
                continue;
            }
            *at = now + self.settings.stream_refresh_interval;
            if let Some(current) = self.table_streams.get(table) {
                due.push((table.clone(), current.clone()));
            }
        }
        due
    }

    /// Looks the table of `stream_arn` up again at once: its stream was
    /// disabled or could not be found, so the table may have a new one.
    pub(super) fn check_table_soon(&mut self, stream_arn: &str, now: Instant) {
        for (table, current) in &self.table_streams {
            if current == stream_arn {
                self.table_checks.insert(table.clone(), now);
            }
        }
    }

    /// Records a listing's shards: replaces the stream's listing when whole,
    /// adds the new shards otherwise. `false` for a stream no longer followed.
    pub(super) fn record(&mut self, listing: &Listing) -> bool {
        if !self.streams.contains(&listing.stream_arn) {
            return false;
        }
        if listing.complete {
            self.listings
                .insert(listing.stream_arn.clone(), listing.shards.clone());
        } else {
            let known = self.listings.entry(listing.stream_arn.clone()).or_default();
            for shard in &listing.shards {
                if !known.iter().any(|s| s.shard_id == shard.shard_id) {
                    known.push(shard.clone());
                }
            }
        }
        true
    }

    /// The stream a shard lease belongs to, if it is one followed; leases
    /// written without one (KCL tables) are placed by the listings.
    pub(super) fn stream_of(&self, lease: &Lease) -> Option<String> {
        match lease.stream_arn.as_deref() {
            Some(arn) => self.streams.iter().find(|s| *s == arn).cloned(),
            None => {
                let listed = self
                    .listings
                    .iter()
                    .find(|(_, shards)| shards.iter().any(|s| s.shard_id == lease.shard_id))
                    .map(|(arn, _)| arn.clone());
                listed.or_else(|| (self.streams.len() == 1).then(|| self.streams[0].clone()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn discovery(streams: usize) -> (Discovery, Arc<SyncSet>) {
        let pending = Arc::new(SyncSet::default());
        let mut discovery = Discovery::new(
            DiscoverySettings {
                shard_sync_interval: SECOND * 60,
                stream_refresh_interval: SECOND * 600,
                describe_stream_rps: 2.0,
            },
            Arc::clone(&pending),
        );
        let arns = (0..streams).map(|i| format!("arn:{i:03}")).collect();
        discovery.follow(arns, HashMap::new(), Instant::now());
        (discovery, pending)
    }

    fn drain(pending: &SyncSet) -> Vec<(String, bool)> {
        std::iter::from_fn(|| pending.try_take())
            .map(|(stream, wanted)| (stream, wanted.full))
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn the_leader_lists_each_stream_once_per_period_spread_and_whole_once_per_refresh() {
        let (mut discovery, pending) = discovery(200);
        let start = Instant::now();
        discovery.lead(start);
        let first = drain(&pending);
        assert_eq!(first.len(), 200);
        assert!(
            first.iter().all(|(_, full)| *full),
            "the first listing is whole"
        );
        // 200 streams at a quarter of 2 calls a second: a 400 s period.
        let mut per_second = Vec::new();
        let mut listed = HashMap::<String, usize>::new();
        let mut whole = 0;
        for second in 1..=1_200u32 {
            discovery.request_due_listings(start + SECOND * second);
            let due = drain(&pending);
            per_second.push(due.len());
            for (stream, full) in due {
                *listed.entry(stream).or_default() += 1;
                whole += usize::from(full);
            }
        }
        assert!(
            per_second.iter().all(|n| *n <= 1),
            "listings are spread, not bursts: {:?}",
            per_second.iter().max()
        );
        assert_eq!(listed.len(), 200);
        assert!(
            listed.values().all(|n| (2..=3).contains(n)),
            "each stream once per 400 s period"
        );
        assert!(
            (200..=400).contains(&whole),
            "whole listings once per refresh: {whole}"
        );
        discovery.follow_leader();
        discovery.request_due_listings(start + SECOND * 5_000);
        assert!(
            drain(&pending).is_empty(),
            "only the leader lists periodically"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_table_is_looked_up_per_refresh_or_at_once_when_its_stream_is_in_trouble() {
        let pending = Arc::new(SyncSet::default());
        let mut discovery = Discovery::new(
            DiscoverySettings {
                shard_sync_interval: SECOND * 60,
                stream_refresh_interval: SECOND * 600,
                describe_stream_rps: 2.0,
            },
            pending,
        );
        let start = Instant::now();
        let tables = HashMap::from([("orders".to_owned(), "arn:old".to_owned())]);
        discovery.follow(Vec::new(), tables, start);
        assert!(discovery.due_tables(start + SECOND * 599).is_empty());
        discovery.check_table_soon("arn:other", start + SECOND);
        assert!(discovery.due_tables(start + SECOND * 2).is_empty());
        discovery.check_table_soon("arn:old", start + SECOND * 3);
        assert_eq!(
            discovery.due_tables(start + SECOND * 3),
            [("orders".to_owned(), "arn:old".to_owned())]
        );
        assert!(discovery.due_tables(start + SECOND * 602).is_empty());
        assert_eq!(discovery.due_tables(start + SECOND * 603).len(), 1);
    }
}

//! Gathering records from several reads into one batch for dispatch.
//!
//! A read rarely returns exactly a batch: a busy shard returns pages of up
//! to 1,000 records, a quiet one a few at a time. The gatherer holds what was
//! read until there is enough for every lane (by count or by bytes), the
//! batching window since the first held record has closed, or the shard has
//! no more to give, and then hands it all on at once.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::record::StreamRecord;

/// Records read but not yet handed to dispatch.
#[derive(Debug)]
pub(crate) struct Gatherer {
    target_records: usize,
    target_bytes: u64,
    window: Duration,
    records: Vec<Arc<StreamRecord>>,
    bytes: u64,
    window_closes: Option<Instant>,
}

impl Gatherer {
    /// A gatherer that hands on `target_records` records or `target_bytes`
    /// bytes at once, or whatever it holds `window` after its first record.
    pub(crate) fn new(target_records: usize, target_bytes: u64, window: Duration) -> Self {
        Gatherer {
            target_records: target_records.max(1),
            target_bytes,
            window,
            records: Vec::new(),
            bytes: 0,
            window_closes: None,
        }
    }

    /// How many more records the next read should ask for.
    pub(crate) fn room(&self) -> usize {
        self.target_records.saturating_sub(self.records.len())
    }

    /// Drops what is held: the shard is read again from the last checkpoint.
    pub(crate) fn restart(&mut self) {
        self.records.clear();
        self.bytes = 0;
        self.window_closes = None;
    }

    /// Holds a read's records; the first held record opens the window.
    pub(crate) fn add(&mut self, records: Vec<StreamRecord>) {
        self.add_shared(records.into_iter().map(Arc::new));
    }

    /// Holds records another reader read (shared with other gatherers).
    pub(crate) fn add_shared(&mut self, records: impl IntoIterator<Item = Arc<StreamRecord>>) {
        for record in records {
            self.bytes += record.dynamodb.size_bytes.max(0) as u64;
            self.records.push(record);
        }
        if !self.records.is_empty() && self.window_closes.is_none() {
            self.window_closes = Some(Instant::now() + self.window);
        }
    }

    /// Everything held, when it is enough, the window has closed or
    /// `shard_closed` says no more will come; `None` while it should wait.
    pub(crate) fn take_batch(&mut self, shard_closed: bool) -> Option<Vec<Arc<StreamRecord>>> {
        if self.records.is_empty() {
            return None;
        }
        let full = self.records.len() >= self.target_records || self.bytes >= self.target_bytes;
        let window_over = self.window_closes.is_some_and(|at| Instant::now() >= at);
        if !(full || window_over || shard_closed) {
            return None;
        }
        let batch = std::mem::take(&mut self.records);
        self.restart();
        Some(batch)
    }

    /// How long until the window closes, if records are held.
    pub(crate) fn window_closes_in(&self) -> Option<Duration> {
        self.window_closes
            .map(|at| at.saturating_duration_since(Instant::now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::EventName;
    use crate::streams::memory::MemoryStreams;

    fn records(count: usize, size_bytes: i64) -> Vec<StreamRecord> {
        let streams = MemoryStreams::new();
        let arn = streams.create_stream("orders", "shard-1");
        for i in 0..count {
            streams.put(&arn, "shard-1", EventName::Insert, &format!("k{i}"));
        }
        streams
            .records(&arn, "shard-1")
            .into_iter()
            .map(|mut record| {
                record.dynamodb.size_bytes = size_bytes;
                record
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_window_records_are_handed_on_at_once() {
        let mut gatherer = Gatherer::new(10, u64::MAX, Duration::ZERO);
        assert!(gatherer.take_batch(false).is_none(), "nothing held");
        gatherer.add(records(3, 10));
        assert_eq!(gatherer.take_batch(false).map(|b| b.len()), Some(3));
        assert_eq!(gatherer.room(), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn a_window_holds_records_until_it_closes() {
        let mut gatherer = Gatherer::new(10, u64::MAX, Duration::from_secs(1));
        gatherer.add(records(3, 10));
        assert!(gatherer.take_batch(false).is_none());
        assert_eq!(gatherer.room(), 7);
        tokio::time::advance(Duration::from_millis(600)).await;
        gatherer.add(records(2, 10));
        assert!(gatherer.take_batch(false).is_none());
        assert_eq!(
            gatherer.window_closes_in(),
            Some(Duration::from_millis(400))
        );
        tokio::time::advance(Duration::from_millis(400)).await;
        assert_eq!(gatherer.take_batch(false).map(|b| b.len()), Some(5));
        assert_eq!(
            gatherer.window_closes_in(),
            None,
            "the next window opens with the next record"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn enough_records_or_bytes_end_the_window_early() {
        let mut by_count = Gatherer::new(4, u64::MAX, Duration::from_secs(60));
        by_count.add(records(4, 10));
        assert_eq!(by_count.take_batch(false).map(|b| b.len()), Some(4));

        let mut by_bytes = Gatherer::new(100, 250, Duration::from_secs(60));
        by_bytes.add(records(2, 100));
        assert!(by_bytes.take_batch(false).is_none());
        by_bytes.add(records(1, 100));
        assert_eq!(by_bytes.take_batch(false).map(|b| b.len()), Some(3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_shard_hands_on_what_is_held() {
        let mut gatherer = Gatherer::new(10, u64::MAX, Duration::from_secs(60));
        gatherer.add(records(2, 10));
        assert_eq!(gatherer.take_batch(true).map(|b| b.len()), Some(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_restart_drops_what_is_held() {
        let mut gatherer = Gatherer::new(10, 100, Duration::from_secs(60));
        gatherer.add(records(2, 60));
        gatherer.restart();
        assert_eq!(gatherer.room(), 10);
        assert_eq!(gatherer.window_closes_in(), None);
        gatherer.add(records(1, 60));
        assert!(
            gatherer.take_batch(false).is_none(),
            "the bytes were dropped too"
        );
    }
}

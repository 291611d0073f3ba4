//! The pages one shard's reader has read and not every pipeline has taken.
//!
//! Pages are numbered from the reader's start; the log holds a window of
//! them, at most `capacity` records (but always the newest page). A pipeline
//! whose next page fell out of the window reads on with its own iterator and
//! comes back once its position is inside the window again.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::record::{SequenceNumber, StreamRecord};

/// One page with records, as the shared reader read it.
#[derive(Debug, Clone)]
pub(super) struct LoggedPage {
    /// The last record read before this page; `None` for the reader's first
    /// page (nothing was read before it in this run).
    pub after: Option<SequenceNumber>,
    /// Its records, in shard order; never empty.
    pub records: Arc<[Arc<StreamRecord>]>,
    /// Records between `after` and this page fell behind the stream's
    /// retention before the reader got to them (it went on from the oldest
    /// record held): each pipeline's `DYNASTREAM_ON_TRIMMED` decides.
    pub trimmed_before: bool,
}

impl LoggedPage {
    fn last(&self) -> &SequenceNumber {
        self.records
            .last()
            .expect("a logged page has records")
            .sequence_number()
    }
}

/// A bounded window over the pages read from one shard.
#[derive(Debug)]
pub(super) struct PageLog {
    pages: VecDeque<LoggedPage>,
    base: u64,
    records: usize,
    capacity: usize,
    last_read: Option<SequenceNumber>,
}

impl PageLog {
    /// An empty log holding at most `capacity` records (and always the newest page).
    pub fn new(capacity: usize) -> Self {
        PageLog {
            pages: VecDeque::new(),
            base: 0,
            records: 0,
            capacity: capacity.max(1),
            last_read: None,
        }
    }

    /// The number the next page appended gets.
    pub fn end(&self) -> u64 {
        self.base + self.pages.len() as u64
    }

    /// The number of the oldest page still held.
    pub fn origin(&self) -> u64 {
        self.base
    }

    /// Whether a page of `count` more records fits without evicting.
    pub fn has_room_for(&self, count: usize) -> bool {
        self.records + count <= self.capacity
    }

    /// Appends a page read after everything held (empty pages are not
    /// kept), noting whether records before it were trimmed unread, and
    /// evicts the oldest pages beyond the capacity.
    pub fn append(&mut self, records: Vec<StreamRecord>, trimmed_before: bool) {
        if records.is_empty() {
            return;
        }
        let page = LoggedPage {
            after: self.last_read.clone(),
            records: records.into_iter().map(Arc::new).collect(),
            trimmed_before,
        };
        self.last_read = Some(page.last().clone());
        self.records += page.records.len();
        self.pages.push_back(page);
        while self.records > self.capacity && self.pages.len() > 1 {
            self.pop_oldest();
        }
    }

    /// Drops the pages before `index`: every pipeline reading from the log has taken them.
    pub fn evict_before(&mut self, index: u64) {
        while self.base < index && !self.pages.is_empty() {
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        if let Some(page) = self.pages.pop_front() {
            self.records -= page.records.len();
            self.base += 1;
        }
    }

    /// Page `index`, if it is held.
    pub fn get(&self, index: u64) -> Option<&LoggedPage> {
        let offset = index.checked_sub(self.base)?;
        self.pages.get(usize::try_from(offset).ok()?)
    }

    /// Where a reader that has seen everything up to `seen` (`None`:
    /// nothing, from the shared reader's start) continues in the log without
    /// a gap: the first held page with a record after `seen`, provided
    /// nothing between `seen` and that page was evicted; the end when `seen`
    /// is at or past everything read. `None` when the log cannot serve it.
    pub fn resume_after(&self, seen: Option<&SequenceNumber>) -> Option<u64> {
        let Some(seen) = seen else {
            // Nothing seen: only the reader's very first page follows that.
            return match self.pages.front() {
                Some(first) if first.after.is_none() => Some(self.base),
                Some(_) => None,
                None => self.last_read.is_none().then_some(self.base),
            };
        };
        for (offset, page) in self.pages.iter().enumerate() {
            if page.last() > seen {
                let no_gap = page.after.as_ref().is_none_or(|after| after <= seen);
                return no_gap.then_some(self.base + offset as u64);
            }
        }
        match &self.last_read {
            Some(last) if last > seen => None,
            _ => Some(self.end()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::EventName;
    use crate::streams::memory::MemoryStreams;
    use proptest::prelude::*;

    fn page(from: u64, count: u64) -> Vec<StreamRecord> {
        let streams = MemoryStreams::new();
        let arn = streams.create_stream("orders", "shard-1");
        streams.put(&arn, "shard-1", EventName::Insert, "k");
        let template = streams.records(&arn, "shard-1").remove(0);
        (from..from + count)
            .map(|n| {
                let mut record = template.clone();
                record.dynamodb.sequence_number = seq(n);
                record
            })
            .collect()
    }

    fn seq(n: u64) -> SequenceNumber {
        SequenceNumber::from(n.to_string().as_str())
    }

    #[test]
    fn the_window_keeps_the_capacity_and_the_newest_page() {
        let mut log = PageLog::new(10);
        log.append(page(1, 4), false);
        log.append(page(5, 4), false);
        log.append(Vec::new(), false);
        assert_eq!((log.origin(), log.end(), log.records), (0, 2, 8));
        log.append(page(9, 4), false);
        assert_eq!((log.origin(), log.end(), log.records), (1, 3, 8));
        log.append(page(13, 30), false);
        assert_eq!((log.origin(), log.end(), log.records), (3, 4, 30));
        assert!(log.get(2).is_none());
        assert_eq!(log.get(3).unwrap().after, Some(seq(12)));
        log.evict_before(4);
        assert_eq!((log.origin(), log.end(), log.records), (4, 4, 0));
    }

    #[test]
    fn a_lagging_reader_rejoins_only_without_a_gap() {
        let mut log = PageLog::new(100);
        assert_eq!(log.resume_after(None), Some(0));
        log.append(page(10, 5), false); // 10..=14
        log.append(page(15, 5), false); // 15..=19
        assert_eq!(log.resume_after(None), Some(0));
        assert_eq!(log.resume_after(Some(&seq(12))), Some(0));
        assert_eq!(log.resume_after(Some(&seq(14))), Some(1));
        assert_eq!(log.resume_after(Some(&seq(19))), Some(2));
        assert_eq!(log.resume_after(Some(&seq(25))), Some(2));
        log.evict_before(1);
        assert_eq!(log.resume_after(Some(&seq(12))), None, "14 was evicted");
        assert_eq!(log.resume_after(None), None);
        assert_eq!(log.resume_after(Some(&seq(14))), Some(1));
        log.evict_before(2);
        assert_eq!(log.resume_after(Some(&seq(17))), None);
        assert_eq!(log.resume_after(Some(&seq(19))), Some(2));
    }

    proptest! {
        /// Wherever a reader stands, resuming from the log hands it exactly
        /// the records after its position, or nothing when there is a gap.
        #[test]
        fn resuming_never_skips_or_repeats(
            sizes in proptest::collection::vec(1u64..20, 1..12),
            capacity in 1usize..60,
            seen in 0u64..200,
        ) {
            let mut log = PageLog::new(capacity);
            let mut next = 1;
            for size in sizes {
                log.append(page(next, size), false);
                next += size;
            }
            let seen_seq = (seen > 0).then(|| seq(seen));
            if let Some(index) = log.resume_after(seen_seq.as_ref()) {
                let mut got = Vec::new();
                for i in index..log.end() {
                    for record in log.get(i).unwrap().records.iter() {
                        got.push(record.sequence_number().clone());
                    }
                }
                let got: Vec<SequenceNumber> = got
                    .into_iter()
                    .filter(|s| seen_seq.as_ref().is_none_or(|seen| s > seen))
                    .collect();
                let want: Vec<SequenceNumber> = (seen + 1..next).map(seq).collect();
                prop_assert_eq!(got, want);
            } else {
                let oldest = log.get(log.origin()).map(|p| p.records[0].sequence_number().clone());
                prop_assert!(oldest.is_some_and(|o| o > seq(seen + 1)) || seen == 0);
            }
        }
    }
}

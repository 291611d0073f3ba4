//! The read budget: how fast this worker's snapshot Scans may consume read
//! capacity.
//!
//! A token bucket in read capacity units. The application's budget
//! (`DYNASTREAM_SNAPSHOT_RCU`) is split between the workers in proportion to
//! the segments each is scanning, and this worker's share is set again at
//! every look at the lease table. A Scan's cost is known only from its
//! response, so each page reserves what the last one cost before it is read
//! and settles the difference after: the bucket may go below zero by one
//! page's error, never by a burst of pages, and the next page waits until it
//! is paid back.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// The most a bucket saves up while idle: one second of its rate, so a
/// worker that waited cannot then read at many times its share.
const BURST: Duration = Duration::from_secs(1);

/// A token bucket of read capacity units per second.
#[derive(Debug)]
pub struct ReadBudget {
    state: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    rate: f64,
    balance: f64,
    updated: Instant,
    /// What the last settled page cost: the reservation of a segment's
    /// first page, before it has a cost of its own.
    last_cost: f64,
}

impl Bucket {
    fn refill(&mut self, now: Instant) {
        let earned = self.rate * (now - self.updated).as_secs_f64();
        self.balance = (self.balance + earned).min(self.rate * BURST.as_secs_f64());
        self.updated = now;
    }
}

impl ReadBudget {
    /// A budget of `rate` units per second, starting empty (no burst at
    /// start-up).
    pub fn new(rate: f64) -> Self {
        ReadBudget {
            state: Mutex::new(Bucket {
                rate: rate.max(0.001),
                balance: 0.0,
                updated: Instant::now(),
                last_cost: 1.0,
            }),
        }
    }

    fn bucket(&self) -> std::sync::MutexGuard<'_, Bucket> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Changes the rate from now on (this worker's share of the application's).
    pub fn set_rate(&self, rate: f64) {
        let mut bucket = self.bucket();
        bucket.refill(Instant::now());
        bucket.rate = rate.max(0.001);
    }

    /// What the last page read under this budget cost (1 before any).
    pub fn last_page_cost(&self) -> f64 {
        self.bucket().last_cost
    }

    /// Waits until the bucket is not in debt, then reserves `estimate` units.
    pub async fn reserve(&self, estimate: f64) {
        loop {
            let wait = {
                let mut bucket = self.bucket();
                bucket.refill(Instant::now());
                if bucket.balance >= 0.0 {
                    bucket.balance -= estimate;
                    return;
                }
                Duration::from_secs_f64(-bucket.balance / bucket.rate)
            };
            tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
        }
    }

    /// Settles a reservation of `estimate` units with what the page cost.
    pub fn settle(&self, estimate: f64, actual: f64) {
        let mut bucket = self.bucket();
        bucket.refill(Instant::now());
        bucket.balance += estimate - actual;
        if actual > 0.0 {
            bucket.last_cost = actual;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pages of uneven cost read back to back for `span`: what they cost in
    /// all, against what the rate allows.
    async fn consumed_over(budget: &ReadBudget, span: Duration, costs: &[f64]) -> f64 {
        let start = Instant::now();
        let mut spent = 0.0;
        let mut estimate = 1.0;
        for cost in costs.iter().cycle() {
            budget.reserve(estimate).await;
            if Instant::now() - start >= span {
                budget.settle(estimate, 0.0);
                break;
            }
            budget.settle(estimate, *cost);
            spent += cost;
            estimate = *cost;
        }
        spent
    }

    #[tokio::test(start_paused = true)]
    async fn pages_of_uneven_cost_stay_within_the_rate_over_a_minute() {
        let budget = ReadBudget::new(50.0);
        let spent = consumed_over(&budget, Duration::from_secs(60), &[10.0, 80.0, 3.0, 40.0]).await;
        let allowed = 50.0 * 60.0;
        assert!(spent <= allowed * 1.05, "spent {spent} of {allowed}");
        assert!(
            spent >= allowed * 0.9,
            "spent {spent}: the budget went unused"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_lowered_share_slows_the_next_pages() {
        let budget = ReadBudget::new(100.0);
        consumed_over(&budget, Duration::from_secs(5), &[20.0]).await;
        budget.set_rate(10.0);
        let spent = consumed_over(&budget, Duration::from_secs(30), &[20.0]).await;
        assert!(spent <= 10.0 * 30.0 + 20.0 + 100.0, "spent {spent}");
        assert!(spent >= 10.0 * 30.0 * 0.8, "spent {spent}");
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_readers_share_one_rate() {
        let budget = std::sync::Arc::new(ReadBudget::new(20.0));
        let readers: Vec<_> = (0..4)
            .map(|_| {
                let budget = std::sync::Arc::clone(&budget);
                tokio::spawn(async move {
                    consumed_over(&budget, Duration::from_secs(60), &[5.0]).await
                })
            })
            .collect();
        let mut spent = 0.0;
        for reader in readers {
            spent += reader.await.unwrap();
        }
        assert!(spent <= 20.0 * 60.0 * 1.05, "spent {spent}");
        assert!(spent >= 20.0 * 60.0 * 0.9, "spent {spent}");
    }
}

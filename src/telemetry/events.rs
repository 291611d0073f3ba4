//! Internal events: each notable thing that happens to a lease, a shard or a
//! batch is one type whose `emit()` logs it and counts it together, so the
//! logs and the metrics never disagree (vector's internal events).
//!
//! The log lines keep their level, message text and fields: operators and
//! tests read them.

use std::fmt::{Debug, Display};
use std::time::Duration;

use metrics::counter;

use super::handles::{StreamMetrics, TargetMetrics};
use super::metrics::{
    BatchOutcomeLabel, LeaseEvent, TargetRecordOutcome, TargetRequestOutcome, LEASE_EVENTS,
};

fn count_lease(event: LeaseEvent) {
    counter!(LEASE_EVENTS, "event" => event.label()).increment(1);
}

/// A free or expired lease was taken.
#[derive(Debug)]
pub struct LeaseTaken<'a> {
    /// The lease's shard.
    pub shard: &'a str,
    /// Who held it before, if anyone.
    pub previous_owner: &'a Option<String>,
}

impl LeaseTaken<'_> {
    /// Logs and counts the event.
    pub fn emit(self) {
        count_lease(LeaseEvent::Taken);
        tracing::info!(shard = %self.shard, previous_owner = ?self.previous_owner, "took a lease");
    }
}

/// A lease was taken from a live worker to balance the fleet.
#[derive(Debug)]
pub struct LeaseStolen<'a> {
    /// The lease's shard.
    pub shard: &'a str,
    /// The worker it was taken from.
    pub from: &'a Option<String>,
}

impl LeaseStolen<'_> {
    /// Logs and counts the event.
    pub fn emit(self) {
        count_lease(LeaseEvent::Stolen);
        tracing::info!(shard = %self.shard, from = ?self.from, "stole a lease to balance the fleet");
    }
}

/// How this worker learnt that a lease it held went to another worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LostBy {
    /// The lease table's scan shows another owner.
    Scan,
    /// A renewal was refused.
    Renewal,
}

/// A lease this worker held went to another worker.
#[derive(Debug)]
pub struct LeaseLost<'a> {
    /// The lease's key.
    pub lease: &'a str,
    /// How it was noticed.
    pub by: LostBy,
}

impl LeaseLost<'_> {
    /// Logs and counts the event.
    pub fn emit(self) {
        count_lease(LeaseEvent::Lost);
        match self.by {
            LostBy::Scan => {
                tracing::warn!(lease = %self.lease, "the lease table shows this lease owned by another worker; stopping it")
            }
            LostBy::Renewal => {
                tracing::warn!(lease = %self.lease, "lease lost: another worker owns it now")
            }
        }
    }
}

/// A renewal failed for a reason other than losing the lease.
#[derive(Debug)]
pub struct LeaseRenewFailed<'a, E> {
    /// The lease's key.
    pub lease: &'a str,
    /// Why.
    pub error: &'a E,
}

impl<E: Display> LeaseRenewFailed<'_, E> {
    /// Logs and counts the event.
    pub fn emit(self) {
        count_lease(LeaseEvent::RenewFailed);
        tracing::warn!(lease = %self.lease, error = %self.error, "lease renewal failed; will retry");
    }
}

/// A lease was released (shutdown, shard ended). Counted only: the places
/// that release log what went wrong, not what went right.
#[derive(Debug)]
pub struct LeaseReleased;

impl LeaseReleased {
    /// Counts the event.
    pub fn emit(self) {
        count_lease(LeaseEvent::Released);
    }
}

/// This worker asked another for a lease.
#[derive(Debug)]
pub struct LeaseRequested<'a> {
    /// The lease's shard.
    pub shard: &'a str,
    /// Its owner, asked to hand it over.
    pub owner: &'a Option<String>,
}

impl LeaseRequested<'_> {
    /// Logs and counts the event.
    pub fn emit(self) {
        count_lease(LeaseEvent::Requested);
        tracing::info!(shard = %self.shard, owner = ?self.owner, "asked for a lease to balance the fleet");
    }
}

/// A lease was handed to a worker that asked for it.
#[derive(Debug)]
pub struct LeaseHandedOver<'a> {
    /// The lease's shard.
    pub shard: &'a str,
    /// The worker that asked.
    pub to: &'a Option<String>,
}

impl LeaseHandedOver<'_> {
    /// Logs and counts the event.
    pub fn emit(self) {
        count_lease(LeaseEvent::HandedOver);
        tracing::info!(shard = %self.shard, to = ?self.to, "handed a lease over");
    }
}

/// Records went to the failure destination and the shard moves on.
#[derive(Debug)]
pub struct RecordsSentToDestination<'a, R> {
    /// The stream they came from.
    pub stream: &'a StreamMetrics,
    /// The destination's kind.
    pub destination: &'static str,
    /// How many.
    pub records: usize,
    /// The first record's sequence number.
    pub start: &'a str,
    /// The last record's sequence number.
    pub end: &'a str,
    /// Why they were given up.
    pub reason: &'a R,
}

impl<R: Debug> RecordsSentToDestination<'_, R> {
    /// Logs and counts the event.
    pub fn emit(self) {
        self.stream.batch(BatchOutcomeLabel::SentToDestination);
        super::metrics::records_failed(self.destination, self.stream.pipeline())
            .increment(self.records as u64);
        tracing::warn!(
            destination = self.destination,
            records = self.records,
            start = %self.start,
            end = %self.end,
            reason = ?self.reason,
            "records sent to the failure destination; the shard moves on"
        );
    }
}

/// A shard position fell behind the stream's retention and
/// `DYNASTREAM_ON_TRIMMED=skip`: records were lost, reading goes on from the
/// oldest record held.
#[derive(Debug)]
pub struct TrimmedDataSkipped<'a, P> {
    /// The shard's stream.
    pub stream: &'a StreamMetrics,
    /// The service's message.
    pub message: &'a str,
    /// The position that fell behind.
    pub position: &'a P,
}

impl<P: Debug> TrimmedDataSkipped<'_, P> {
    /// Logs and counts the event.
    pub fn emit(self) {
        self.stream.trimmed();
        tracing::error!(
            message = %self.message,
            position = ?self.position,
            "the shard position fell behind the stream's 24-hour retention: records were \
             lost before they could be read; continuing from the oldest record still held"
        );
    }
}

/// A shard position fell behind the stream's retention and
/// `DYNASTREAM_ON_TRIMMED=stop`: the shard stops until an operator acts.
#[derive(Debug)]
pub struct TrimmedDataStopped<'a> {
    /// The shard's stream.
    pub stream: &'a StreamMetrics,
    /// What happened, for the operator.
    pub reason: &'a str,
}

impl TrimmedDataStopped<'_> {
    /// Logs and counts the event.
    pub fn emit(self) {
        self.stream.trimmed();
        tracing::error!(reason = %self.reason, "shard stopped on trimmed data");
    }
}

/// A shard iterator expired (it lives 15 minutes); a new one is asked for
/// from the last processed record.
#[derive(Debug)]
pub struct IteratorExpired<'a> {
    /// The service's message.
    pub message: &'a str,
}

impl IteratorExpired<'_> {
    /// Logs the event.
    pub fn emit(self) {
        tracing::info!(message = %self.message, "shard iterator expired; re-acquiring from the last processed record");
    }
}

/// A shard stopped on records it could neither process nor store.
#[derive(Debug)]
pub struct ShardHalted<'a> {
    /// What happened, for the operator.
    pub message: &'a str,
}

impl ShardHalted<'_> {
    /// Logs the event; the halted shard shows in `dynastream_shards{state="halted"}`
    /// and fails `/readyz`.
    pub fn emit(self) {
        tracing::error!(message = %self.message, "shard halted");
    }
}

/// One call to a delivery target's API and what became of its records.
#[derive(Debug)]
pub struct TargetRequest {
    /// The target.
    pub target: &'static str,
    /// How the call ended.
    pub outcome: TargetRequestOutcome,
    /// How long it took.
    pub took: Duration,
    /// Records accepted.
    pub delivered: usize,
    /// Records refused as throttled (retried).
    pub throttled: usize,
    /// Records refused or lost with a failed call (retried).
    pub failed: usize,
    /// Records that can never be accepted (to the failure destination).
    pub rejected: usize,
}

impl TargetRequest {
    /// Counts the call and its records.
    pub fn emit(self) {
        let target = TargetMetrics::of(self.target);
        target.request(self.outcome, self.took);
        target.records(TargetRecordOutcome::Delivered, self.delivered as u64);
        target.records(TargetRecordOutcome::Throttled, self.throttled as u64);
        target.records(TargetRecordOutcome::Failed, self.failed as u64);
        target.records(TargetRecordOutcome::Rejected, self.rejected as u64);
    }
}

//! The metrics contract: every metric dynastream exports, in one place.
//!
//! Names follow Prometheus conventions (`dynastream_<name>_<unit>[_total]`,
//! base units); label values come from small fixed sets or from the stream
//! (its table name), never from shard ids unless
//! `DYNASTREAM_METRICS_SHARD_LABELS=true`, and per-shard series are removed
//! when the shard leaves the worker. The dashboard in `dashboards/` and the
//! alert rules in `deploy/prometheus/` rely on these names; a test evaluates
//! every one of their queries against a real Prometheus.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge};

pub use super::handles::{
    pipeline_shard_age, processor_duration, republish, ShardMetrics, StreamMetrics,
};
use super::handles::{ApiMetrics, TargetMetrics};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;
use tokio_util::sync::CancellationToken;

/// Records counted for the stream, by event name, once processed.
pub const RECORDS: &str = "dynastream_records_total";
/// Records no filter pattern matched.
pub const RECORDS_FILTERED: &str = "dynastream_records_filtered_total";
/// Age of the newest record read, the maximum over this worker's shards of a stream.
pub const ITERATOR_AGE: &str = "dynastream_iterator_age_seconds";
/// Per-shard iterator age, only with shard labels on.
pub const SHARD_ITERATOR_AGE: &str = "dynastream_shard_iterator_age_seconds";
/// Time from a record's creation to every processor's success with it.
pub const PROCESSING_LAG: &str = "dynastream_processing_lag_seconds";
/// Processor calls by outcome.
pub const BATCHES: &str = "dynastream_batches_total";
/// Time a processor took with a batch.
pub const PROCESSOR_DURATION: &str = "dynastream_processor_duration_seconds";
/// AWS calls by API and outcome.
pub const API_CALLS: &str = "dynastream_api_calls_total";
/// Lease-table writes by the item written and what the write did: what a
/// lease table costs, and which part of it the shards' checkpoints are.
pub const LEASE_WRITES: &str = "dynastream_lease_writes_total";
/// Time an AWS call took.
pub const API_CALL_DURATION: &str = "dynastream_api_call_duration_seconds";
/// Shard leases this worker holds.
pub const LEASES_HELD: &str = "dynastream_leases_held";
/// Lease events by kind.
pub const LEASE_EVENTS: &str = "dynastream_lease_events_total";
/// Live workers seen in the lease table.
pub const WORKERS: &str = "dynastream_workers";
/// This worker's shards by state.
pub const SHARDS: &str = "dynastream_shards";
/// Shard leases of a stream that no live worker holds, as this worker sees them.
pub const SHARDS_UNOWNED: &str = "dynastream_shards_unowned";
/// Records sent to the failure destination.
pub const RECORDS_FAILED: &str = "dynastream_records_failed_total";
/// Times a shard position fell behind the stream's retention.
pub const TRIMMED_DATA: &str = "dynastream_trimmed_data_total";
/// Calls to a delivery target's API, by target and outcome.
pub const TARGET_REQUESTS: &str = "dynastream_target_requests_total";
/// Time a call to a delivery target's API took.
pub const TARGET_REQUEST_DURATION: &str = "dynastream_target_request_duration_seconds";
/// Records a delivery target handled, by target and outcome.
pub const TARGET_RECORDS: &str = "dynastream_target_records_total";
/// Always 1, labelled with the version.
pub const BUILD_INFO: &str = "dynastream_build_info";

/// Shards of a stream on which a named pipeline halted, on this worker.
pub const PIPELINE_SHARDS_HALTED: &str = "dynastream_pipeline_shards_halted";

/// Items a table's snapshot delivered.
pub const SNAPSHOT_ITEMS: &str = "dynastream_snapshot_items_total";
/// A table's snapshot segments by state, as this worker sees the lease table.
pub const SNAPSHOT_SEGMENTS: &str = "dynastream_snapshot_segments";
/// Read capacity units the snapshot Scans of this worker consumed.
pub const SNAPSHOT_CONSUMED_RCU: &str = "dynastream_snapshot_consumed_rcu_total";
/// Snapshot Scans refused for the table's read capacity.
pub const SNAPSHOT_THROTTLED: &str = "dynastream_snapshot_throttled_total";
/// Stream records passed over because the table's snapshot already held them.
pub const SNAPSHOT_CHANGES_SKIPPED: &str = "dynastream_snapshot_changes_skipped_total";
/// Seconds until the table's snapshot completes, estimated from its pace.
pub const SNAPSHOT_ETA: &str = "dynastream_snapshot_eta_seconds";

/// Streams waiting for a shard listing on this worker.
pub const SHARD_SYNC_PENDING: &str = "dynastream_shard_sync_pending";

/// Every metric name, for checks that dashboards and alerts use only these.
pub const ALL: &[&str] = &[
    RECORDS,
    RECORDS_FILTERED,
    ITERATOR_AGE,
    SHARD_ITERATOR_AGE,
    PROCESSING_LAG,
    BATCHES,
    PROCESSOR_DURATION,
    API_CALLS,
    API_CALL_DURATION,
    LEASE_WRITES,
    LEASES_HELD,
    LEASE_EVENTS,
    WORKERS,
    SHARDS,
    SHARDS_UNOWNED,
    RECORDS_FAILED,
    TRIMMED_DATA,
    TARGET_REQUESTS,
    TARGET_REQUEST_DURATION,
    TARGET_RECORDS,
    SHARD_SYNC_PENDING,
    PIPELINE_SHARDS_HALTED,
    SNAPSHOT_ITEMS,
    SNAPSHOT_SEGMENTS,
    SNAPSHOT_CONSUMED_RCU,
    SNAPSHOT_THROTTLED,
    SNAPSHOT_CHANGES_SKIPPED,
    SNAPSHOT_ETA,
    BUILD_INFO,
];

/// How an AWS call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOutcome {
    /// Answered with success.
    Ok,
    /// Refused with a throttling error.
    Throttled,
    /// A conditional write refused because the item moved on (leases).
    Conflict,
    /// Any other failure.
    Error,
}

impl CallOutcome {
    pub(super) fn label(self) -> &'static str {
        match self {
            CallOutcome::Ok => "ok",
            CallOutcome::Throttled => "throttled",
            CallOutcome::Conflict => "conflict",
            CallOutcome::Error => "error",
        }
    }
}

/// How a processor call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchOutcomeLabel {
    /// Every processor succeeded.
    Success,
    /// Some records failed and will be retried.
    PartialFailure,
    /// The call failed and will be retried.
    Failure,
    /// The records went to the failure destination.
    SentToDestination,
}

impl BatchOutcomeLabel {
    pub(super) fn label(self) -> &'static str {
        match self {
            BatchOutcomeLabel::Success => "success",
            BatchOutcomeLabel::PartialFailure => "partial_failure",
            BatchOutcomeLabel::Failure => "failure",
            BatchOutcomeLabel::SentToDestination => "sent_to_destination",
        }
    }
}

/// How a call to a delivery target's API ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetRequestOutcome {
    /// Every entry was accepted.
    Ok,
    /// The call was answered, some entries refused.
    Partial,
    /// The whole call was refused as throttled.
    Throttled,
    /// The whole call failed otherwise.
    Error,
}

impl TargetRequestOutcome {
    pub(super) fn label(self) -> &'static str {
        match self {
            TargetRequestOutcome::Ok => "ok",
            TargetRequestOutcome::Partial => "partial",
            TargetRequestOutcome::Throttled => "throttled",
            TargetRequestOutcome::Error => "error",
        }
    }
}

/// What a delivery target made of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetRecordOutcome {
    /// The service accepted it.
    Delivered,
    /// The service refused it as throttled; it is retried.
    Throttled,
    /// The service refused it or the call failed; it is retried.
    Failed,
    /// It can never be accepted (e.g. over the service's size limit); it
    /// goes to the failure destination.
    Rejected,
}

impl TargetRecordOutcome {
    pub(super) fn label(self) -> &'static str {
        match self {
            TargetRecordOutcome::Delivered => "delivered",
            TargetRecordOutcome::Throttled => "throttled",
            TargetRecordOutcome::Failed => "failed",
            TargetRecordOutcome::Rejected => "rejected",
        }
    }
}

/// A change in lease ownership, as counted in `dynastream_lease_events_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseEvent {
    /// A free or expired lease was taken.
    Taken,
    /// A lease was taken from a live worker that did not hand it over.
    Stolen,
    /// A lease this worker held went to another worker.
    Lost,
    /// A lease was released (shutdown, shard ended).
    Released,
    /// A renewal failed for a reason other than losing the lease.
    RenewFailed,
    /// A lease was handed to a worker that asked for it.
    HandedOver,
    /// This worker asked another for a lease.
    Requested,
}

impl LeaseEvent {
    pub(super) fn label(self) -> &'static str {
        match self {
            LeaseEvent::Taken => "taken",
            LeaseEvent::Stolen => "stolen",
            LeaseEvent::Lost => "lost",
            LeaseEvent::Released => "released",
            LeaseEvent::RenewFailed => "renew_failed",
            LeaseEvent::HandedOver => "handed_over",
            LeaseEvent::Requested => "requested",
        }
    }
}

/// The stream label: its table's name, short and stable enough for dashboards.
pub fn stream_label(stream_arn: &str) -> String {
    crate::record::table_name(stream_arn).to_owned()
}

static SHARD_LABELS: OnceLock<bool> = OnceLock::new();

/// Installs the Prometheus recorder (once per process) and returns the handle
/// that renders `/metrics`.
pub fn install(shard_labels: bool) -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    let handle = HANDLE
        .get_or_init(|| {
            let seconds = [
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ];
            let lag = [
                0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
            ];
            // Gauges not set for a minute disappear: that is how per-shard
            // series go once their shard has left this worker. Every other
            // gauge is set again at least twice per renewal interval.
            let builder = PrometheusBuilder::new()
                .idle_timeout(MetricKindMask::GAUGE, Some(Duration::from_secs(60)))
                .set_buckets_for_metric(Matcher::Full(PROCESSING_LAG.into()), &lag)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Suffix("duration_seconds".into()), &seconds)
                });
            let handle = match builder.map(|b| b.install_recorder()) {
                Ok(Ok(handle)) => handle,
                Ok(Err(err)) | Err(err) => {
                    // Another recorder is installed (a host program's): metrics
                    // go there, and /metrics renders an empty local recorder.
                    tracing::warn!(error = %err, "could not install the Prometheus recorder");
                    PrometheusBuilder::new().build_recorder().handle()
                }
            };
            describe();
            gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            handle
        })
        .clone();
    // After the recorder: handle caches start filling once this is set.
    let _ = SHARD_LABELS.set(shard_labels);
    handle
}

/// How often histogram samples are folded into their buckets.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Folds the recorder's histogram samples into their buckets every
/// [`UPKEEP_INTERVAL`] until `stop` fires.
///
/// The recorder keeps every sample of a histogram until something drains
/// them, which otherwise only a scrape does: a worker nobody scrapes (no
/// Prometheus yet, or `DYNASTREAM_METRICS_ADDR` unset) would hold each AWS
/// call's duration forever, about half a gigabyte a day at 1,000 shards.
pub async fn upkeep(handle: PrometheusHandle, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(UPKEEP_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => handle.run_upkeep(),
        }
    }
}

fn describe() {
    describe_counter!(RECORDS, "Records processed, by stream and event name.");
    describe_counter!(
        RECORDS_FILTERED,
        "Records no filter pattern matched (not processed, still checkpointed)."
    );
    describe_gauge!(ITERATOR_AGE, "Age of the newest record read, the maximum over this worker's shards of the stream; 0 when caught up.");
    describe_gauge!(SHARD_ITERATOR_AGE, "Age of the newest record read from one shard (only with DYNASTREAM_METRICS_SHARD_LABELS=true).");
    describe_histogram!(
        PROCESSING_LAG,
        "Seconds from a record's creation to every processor's success with it."
    );
    describe_counter!(BATCHES, "Processor calls by outcome.");
    describe_histogram!(
        PROCESSOR_DURATION,
        "Seconds a processor took with one batch."
    );
    describe_counter!(
        API_CALLS,
        "AWS calls by API and outcome (ok, throttled, conflict, error)."
    );
    describe_counter!(
        LEASE_WRITES,
        "Lease-table writes by item (shard, worker, leader, table, segment) and write (take, renew, checkpoint, release, handoff, snapshot)."
    );
    describe_histogram!(API_CALL_DURATION, "Seconds an AWS call took.");
    describe_gauge!(LEASES_HELD, "Shard leases this worker holds.");
    describe_counter!(
        LEASE_EVENTS,
        "Lease events: taken, stolen, lost, released, renew_failed, handed_over, requested."
    );
    describe_gauge!(WORKERS, "Live workers seen in the lease table.");
    describe_gauge!(
        SHARDS,
        "This worker's shards by state: active, waiting_for_parent, ended, halted."
    );
    describe_gauge!(
        SHARDS_UNOWNED,
        "Shard leases of the stream that no live worker holds, as this worker sees them."
    );
    describe_counter!(RECORDS_FAILED, "Records sent to the failure destination.");
    describe_counter!(TRIMMED_DATA, "Times a shard position fell behind the stream's 24-hour retention: records were lost before they could be read.");
    describe_counter!(
        TARGET_REQUESTS,
        "Calls to a delivery target's API by target and outcome (ok, partial, throttled, error)."
    );
    describe_histogram!(
        TARGET_REQUEST_DURATION,
        "Seconds a call to a delivery target's API took."
    );
    describe_counter!(
        TARGET_RECORDS,
        "Records a delivery target handled by outcome (delivered, throttled, failed, rejected)."
    );
    describe_gauge!(
        PIPELINE_SHARDS_HALTED,
        "Shards of the stream on which the pipeline halted on this worker; the other pipelines go on."
    );
    describe_gauge!(
        SHARD_SYNC_PENDING,
        "Streams waiting for a shard listing; at most the streams followed."
    );
    describe_counter!(
        SNAPSHOT_ITEMS,
        "Items a table's snapshot delivered through the pipelines."
    );
    describe_gauge!(SNAPSHOT_SEGMENTS, "A table's snapshot segments by state (pending, scanning, complete), as this worker last read the lease table.");
    describe_gauge!(SNAPSHOT_CONSUMED_RCU, "Read capacity units this worker's snapshot Scans consumed, as the Scan responses report them.");
    describe_counter!(
        SNAPSHOT_THROTTLED,
        "Snapshot Scans refused for the table's read capacity and tried again after a backoff."
    );
    describe_counter!(SNAPSHOT_CHANGES_SKIPPED, "Stream records created before the table's snapshot began, passed over since the snapshot holds their effect.");
    describe_gauge!(SNAPSHOT_ETA, "Seconds until the table's snapshot completes, from the fleet's pace and the table's item count; 0 once complete.");
    describe_gauge!(
        BUILD_INFO,
        "Always 1; the version label says which build runs."
    );
}

pub(super) fn shard_labels() -> bool {
    SHARD_LABELS.get().copied().unwrap_or(false)
}

/// Whether [`install`] has run, so handles built now bind to the recorder
/// that will stay.
pub(super) fn installed() -> bool {
    SHARD_LABELS.get().is_some()
}

/// Counts one lease-table write: `item` is the item's kind (`shard`,
/// `worker`, `leader`, `table`, `segment`), `write` what it did.
pub fn lease_write(item: &'static str, write: &'static str) {
    counter!(LEASE_WRITES, "item" => item, "write" => write).increment(1);
}

/// Counts an AWS call.
pub fn api_call(api: &'static str, outcome: CallOutcome, took: Duration) {
    ApiMetrics::of(api).call(outcome, took);
}

/// The failed-records counter of a destination, for one named pipeline or
/// the application's one pipeline.
pub(super) fn records_failed(
    destination: &'static str,
    pipeline: Option<&str>,
) -> metrics::Counter {
    match pipeline {
        Some(pipeline) => {
            counter!(RECORDS_FAILED, "destination" => destination, "pipeline" => pipeline.to_owned())
        }
        None => counter!(RECORDS_FAILED, "destination" => destination),
    }
}

/// Makes the failed-records series of a destination exist, at 0.
pub fn records_failed_seen(destination: &'static str, pipeline: Option<&str>) {
    records_failed(destination, pipeline).increment(0);
}

/// Makes a delivery target's series exist, at 0, so dashboards and alerts
/// see it before its first record.
pub fn target_seen(target: &'static str) {
    TargetMetrics::of(target);
}

/// Counts a call to a delivery target's API.
pub fn target_request(target: &'static str, outcome: TargetRequestOutcome, took: Duration) {
    TargetMetrics::of(target).request(outcome, took);
}

/// Counts records a delivery target handled.
pub fn target_records(target: &'static str, outcome: TargetRecordOutcome, count: u64) {
    if count > 0 {
        TargetMetrics::of(target).records(outcome, count);
    }
}

/// Forgets a shard that left this worker, for every pipeline: its age no
/// longer counts in the stream's maximum and its per-shard series goes.
pub fn shard_left(stream: &str, shard: &str) {
    super::handles::shard_left(stream, shard);
}

/// The coordinator's view after a look at the lease table.
#[derive(Debug, Default, Clone)]
pub struct FleetView {
    /// Leases held, by stream label.
    pub leases_held: HashMap<String, u64>,
    /// Live workers.
    pub workers: u64,
    /// This worker's shards by state.
    pub shards: HashMap<&'static str, u64>,
    /// Unowned shard leases, by stream label.
    pub unowned: HashMap<String, u64>,
}

/// Publishes the coordinator's view as gauges.
pub fn fleet(view: &FleetView) {
    for (stream, count) in &view.leases_held {
        gauge!(LEASES_HELD, "stream" => stream.clone()).set(*count as f64);
    }
    gauge!(WORKERS).set(view.workers as f64);
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    for state in ["active", "waiting_for_parent", "ended", "halted"] {
        gauge!(SHARDS, "state" => state).set(view.shards.get(state).copied().unwrap_or(0) as f64);
    }
    for (stream, count) in &view.unowned {
        gauge!(SHARDS_UNOWNED, "stream" => stream.clone()).set(*count as f64);
    }
}

// --- Shard sync (coordinator) ---

/// How many streams wait for a shard listing: bounded by the streams
/// followed; a value that stays near that bound means listings cannot keep
/// up with the DescribeStream rate.
pub fn shard_sync_pending(depth: usize) {
    gauge!(SHARD_SYNC_PENDING).set(depth as f64);
}

/// Counts the items and capacity of one delivered snapshot page.
pub fn snapshot_page(table: &str, items: u64, consumed_rcu: f64) {
    let table = table.to_owned();
    counter!(SNAPSHOT_ITEMS, "table" => table.clone()).increment(items);
    // A gauge only ever increased: a counter holds whole numbers, and a
    // page can cost half a unit. `rate()` reads it as it would a counter.
    gauge!(SNAPSHOT_CONSUMED_RCU, "table" => table).increment(consumed_rcu);
}

/// Counts a throttled snapshot Scan.
pub fn snapshot_throttled(table: &str) {
    counter!(SNAPSHOT_THROTTLED, "table" => table.to_owned()).increment(1);
}

/// Publishes a table's segments by state and its estimated time to completion.
pub fn snapshot_progress(
    table: &str,
    pending: u64,
    scanning: u64,
    complete: u64,
    eta: Option<f64>,
) {
    for (state, count) in [
        ("pending", pending),
        ("scanning", scanning),
        ("complete", complete),
    ] {
        gauge!(SNAPSHOT_SEGMENTS, "table" => table.to_owned(), "state" => state).set(count as f64);
    }
    if let Some(eta) = eta {
        gauge!(SNAPSHOT_ETA, "table" => table.to_owned()).set(eta);
    }
}

/// Counts stream records passed over as older than the table's snapshot.
pub fn snapshot_changes_skipped(stream_arn: &str, count: u64) {
    counter!(SNAPSHOT_CHANGES_SKIPPED, "stream" => stream_label(stream_arn)).increment(count);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The upkeep task folds samples without losing them, and its owner
    /// can stop it at any time.
    #[tokio::test(start_paused = true)]
    async fn upkeep_keeps_every_sample_and_stops_when_told() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            for _ in 0..1_000 {
                metrics::histogram!("upkeep_test_seconds").record(0.5);
            }
        });
        let stop = CancellationToken::new();
        let task = tokio::spawn(upkeep(handle.clone(), stop.clone()));
        tokio::time::sleep(UPKEEP_INTERVAL * 3).await;
        assert!(
            handle.render().contains("upkeep_test_seconds_count 1000"),
            "{}",
            handle.render()
        );
        stop.cancel();
        tokio::time::timeout(Duration::from_millis(1), task)
            .await
            .expect("upkeep returns once stopped")
            .unwrap();
    }

    #[test]
    fn the_stream_label_is_the_table_name() {
        assert_eq!(
            stream_label(
                "arn:aws:dynamodb:us-east-1:1:table/orders/stream/2026-01-01T00:00:00.000"
            ),
            "orders"
        );
        assert_eq!(stream_label("weird"), "weird");
    }

    #[test]
    fn every_name_follows_the_conventions() {
        for name in ALL {
            assert!(name.starts_with("dynastream_"), "{name}");
            assert!(
                name.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{name}"
            );
        }
        for counter in [
            RECORDS,
            RECORDS_FILTERED,
            BATCHES,
            API_CALLS,
            LEASE_EVENTS,
            RECORDS_FAILED,
            TRIMMED_DATA,
        ] {
            assert!(counter.ends_with("_total"), "{counter}");
        }
    }
}

//! Metric handles registered once per stream, shard, processor and delivery
//! target, and kept: the per-record and per-page paths only add to atomics,
//! never build label strings or look a series up in the recorder.
//!
//! Handles bind to the recorder installed when they are built, so the shared
//! caches here fill only once [`super::metrics::install`] has run; before
//! that, every lookup builds fresh handles (for the process-wide no-op
//! recorder, or a host program's).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use metrics::{counter, histogram, Counter, Histogram, Key, Label, Level, Metadata, SharedString};

use super::metrics::{
    installed, shard_labels, BatchOutcomeLabel, CallOutcome, TargetRecordOutcome,
    TargetRequestOutcome, API_CALLS, API_CALL_DURATION, BATCHES, ITERATOR_AGE, PROCESSING_LAG,
    PROCESSOR_DURATION, RECORDS, RECORDS_FILTERED, SHARD_ITERATOR_AGE, TARGET_RECORDS,
    TARGET_REQUESTS, TARGET_REQUEST_DURATION, TRIMMED_DATA,
};
use crate::record::{EventName, StreamRecord};

static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// A gauge whose key is built once and which is looked up again on every
/// set: the exporter drops gauges idle for a minute (that is how per-shard
/// series go), and a kept `Gauge` handle would then write to a series no
/// longer exported. The lookup of an existing key does not allocate.
#[derive(Debug)]
pub(super) struct KeyedGauge(Key);

impl KeyedGauge {
    pub(super) fn new(name: &'static str, labels: Vec<Label>) -> Self {
        KeyedGauge(Key::from_parts(name, labels))
    }

    pub(super) fn set(&self, value: f64) {
        metrics::with_recorder(|recorder| recorder.register_gauge(&self.0, &METADATA)).set(value);
    }
}

/// Handles shared by key, built on first use after the recorder is installed.
struct Cache<K, T>(OnceLock<RwLock<HashMap<K, Arc<T>>>>);

impl<K: Eq + Hash, T> Cache<K, T> {
    const fn new() -> Self {
        Cache(OnceLock::new())
    }

    fn get<Q>(&self, key: &Q) -> Option<Arc<T>>
    where
        K: std::borrow::Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        let map = self.0.get()?.read().unwrap_or_else(|p| p.into_inner());
        map.get(key).cloned()
    }

    fn get_or_build<Q>(
        &self,
        key: &Q,
        owned: impl FnOnce() -> K,
        build: impl FnOnce() -> T,
    ) -> Arc<T>
    where
        K: std::borrow::Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        if !installed() {
            return Arc::new(build());
        }
        if let Some(found) = self.get(key) {
            return found;
        }
        let map = self.0.get_or_init(RwLock::default);
        let mut map = map.write().unwrap_or_else(|p| p.into_inner());
        Arc::clone(map.entry(owned()).or_insert_with(|| Arc::new(build())))
    }
}

static STREAMS: Cache<Box<str>, StreamMetrics> = Cache::new();
static PROCESSORS: Cache<Box<str>, Histogram> = Cache::new();
static TARGETS: Cache<&'static str, TargetMetrics> = Cache::new();

/// The label values of [`BatchOutcomeLabel`], in the order of
/// [`StreamMetrics`]' batch counters.
const BATCH_OUTCOMES: [BatchOutcomeLabel; 4] = [
    BatchOutcomeLabel::Success,
    BatchOutcomeLabel::PartialFailure,
    BatchOutcomeLabel::Failure,
    BatchOutcomeLabel::SentToDestination,
];

fn event_index(name: EventName) -> usize {
    match name {
        EventName::Insert => 0,
        EventName::Modify => 1,
        EventName::Remove => 2,
    }
}

/// One stream's series (labelled with its table's name), shared by every
/// shard and lane of the stream on this worker.
#[derive(Debug)]
pub struct StreamMetrics {
    label: SharedString,
    records: [Counter; 3],
    filtered: Counter,
    batches: [Counter; 4],
    trimmed: Counter,
    lag: Histogram,
    iterator_age: KeyedGauge,
    /// Each shard's latest age (`f64` bits), for the stream's maximum. The
    /// lock is per stream and only written when a shard joins or leaves.
    ages: RwLock<Vec<(Arc<str>, Arc<AtomicU64>)>>,
}

impl StreamMetrics {
    /// The handles of the stream `stream_arn` belongs to, registered on first
    /// use. Two streams of one table (the stream was re-enabled) share them,
    /// as they share the `stream` label.
    pub fn of(stream_arn: &str) -> Arc<StreamMetrics> {
        let label = crate::record::table_name(stream_arn);
        STREAMS.get_or_build(label, || label.into(), || StreamMetrics::new(label))
    }

    /// Registers a stream's series under `label`, bypassing the shared cache
    /// (tests use it against a local recorder).
    pub fn new(label: &str) -> StreamMetrics {
        let label = SharedString::from(label.to_owned());
        let records = ["INSERT", "MODIFY", "REMOVE"]
            .map(|event| counter!(RECORDS, "stream" => label.clone(), "event_name" => event));
        let batches = BATCH_OUTCOMES.map(
            |outcome| counter!(BATCHES, "stream" => label.clone(), "outcome" => outcome.label()),
        );
        let trimmed = counter!(TRIMMED_DATA, "stream" => label.clone());
        // The data-loss counter exists from the start, at 0, so that
        // increase() sees its first event.
        trimmed.increment(0);
        StreamMetrics {
            records,
            filtered: counter!(RECORDS_FILTERED, "stream" => label.clone()),
            batches,
            trimmed,
            lag: histogram!(PROCESSING_LAG),
            iterator_age: KeyedGauge::new(ITERATOR_AGE, vec![Label::new("stream", label.clone())]),
            ages: RwLock::default(),
            label,
        }
    }

    /// The `stream` label value.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Counts records every processor succeeded with, by event name, and
    /// their lag from creation.
    pub fn processed(&self, records: &[Arc<StreamRecord>]) {
        let mut by_event = [0u64; 3];
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        for record in records {
            by_event[event_index(record.event_name)] += 1;
            if let Some(created) = record.dynamodb.approximate_creation_date_time {
                self.lag.record((now - created as f64).max(0.0));
            }
        }
        for (counter, count) in self.records.iter().zip(by_event) {
            if count > 0 {
                counter.increment(count);
            }
        }
    }

    /// Counts records no filter matched.
    pub fn filtered(&self, count: u64) {
        self.filtered.increment(count);
    }

    /// Counts a processor call's outcome.
    pub fn batch(&self, outcome: BatchOutcomeLabel) {
        let index = BATCH_OUTCOMES
            .iter()
            .position(|o| *o == outcome)
            .unwrap_or(0);
        self.batches[index].increment(1);
    }

    /// Counts a fall behind the stream's retention.
    pub(super) fn trimmed(&self) {
        self.trimmed.increment(1);
    }

    /// The handles of one shard of this stream; its age counts in the
    /// stream's maximum from now until [`shard_left`].
    pub fn shard(self: &Arc<Self>, shard_id: &str) -> ShardMetrics {
        self.shard_labelled(shard_id, shard_labels())
    }

    /// [`StreamMetrics::shard`], with or without the per-shard series.
    pub(super) fn shard_labelled(self: &Arc<Self>, shard_id: &str, labelled: bool) -> ShardMetrics {
        let mut ages = self.ages.write().unwrap_or_else(|p| p.into_inner());
        let age = match ages.iter().find(|(shard, _)| &**shard == shard_id) {
            Some((_, age)) => Arc::clone(age),
            None => {
                let age = Arc::new(AtomicU64::new(0f64.to_bits()));
                ages.push((Arc::from(shard_id), Arc::clone(&age)));
                age
            }
        };
        let shard_age = labelled.then(|| {
            KeyedGauge::new(
                SHARD_ITERATOR_AGE,
                vec![
                    Label::new("stream", self.label.clone()),
                    Label::new("shard", shard_id.to_owned()),
                ],
            )
        });
        ShardMetrics {
            stream: Arc::clone(self),
            age,
            shard_age,
        }
    }

    fn publish_max_age(&self) {
        let ages = self.ages.read().unwrap_or_else(|p| p.into_inner());
        let max = ages
            .iter()
            .map(|(_, age)| f64::from_bits(age.load(Ordering::Relaxed)))
            .fold(0.0, f64::max);
        self.iterator_age.set(max);
    }

    fn forget(&self, shard_id: &str) {
        self.ages
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(shard, _)| &**shard != shard_id);
        self.publish_max_age();
    }
}

/// One shard's handles, kept by its consumer.
#[derive(Debug)]
pub struct ShardMetrics {
    stream: Arc<StreamMetrics>,
    age: Arc<AtomicU64>,
    shard_age: Option<KeyedGauge>,
}

impl ShardMetrics {
    /// The stream's handles.
    pub fn stream(&self) -> &StreamMetrics {
        &self.stream
    }

    /// Sets the shard's iterator age and its stream's maximum over this
    /// worker's shards. Two shards setting at once may publish a maximum one
    /// page old; the next page of either corrects it.
    pub fn iterator_age(&self, age_seconds: f64) {
        let age = age_seconds.max(0.0);
        self.age.store(age.to_bits(), Ordering::Relaxed);
        self.stream.publish_max_age();
        if let Some(gauge) = &self.shard_age {
            gauge.set(age);
        }
    }
}

/// Forgets a shard that left this worker: its age no longer counts in the
/// stream's maximum and its per-shard series goes.
pub fn shard_left(stream: &str, shard: &str) {
    if let Some(of_stream) = STREAMS.get(stream) {
        of_stream.forget(shard);
    }
    if shard_labels() {
        // Zero, then gone from the next scrape's point of view: the exporter
        // keeps no idle series past its idle timeout, and a zero age is true.
        metrics::gauge!(SHARD_ITERATOR_AGE, "stream" => stream.to_owned(), "shard" => shard.to_owned())
            .set(0.0);
    }
}

/// Records how long a processor took, in the processor's histogram.
pub fn processor_duration(processor: &str, took: Duration) {
    PROCESSORS
        .get_or_build(
            processor,
            || processor.into(),
            || histogram!(PROCESSOR_DURATION, "processor" => processor.to_owned()),
        )
        .record(took.as_secs_f64());
}

const REQUEST_OUTCOMES: [TargetRequestOutcome; 4] = [
    TargetRequestOutcome::Ok,
    TargetRequestOutcome::Partial,
    TargetRequestOutcome::Throttled,
    TargetRequestOutcome::Error,
];
const RECORD_OUTCOMES: [TargetRecordOutcome; 4] = [
    TargetRecordOutcome::Delivered,
    TargetRecordOutcome::Throttled,
    TargetRecordOutcome::Failed,
    TargetRecordOutcome::Rejected,
];

/// A delivery target's series, every one registered at 0 so dashboards and
/// alerts see the target before its first record.
#[derive(Debug)]
pub struct TargetMetrics {
    requests: [Counter; 4],
    records: [Counter; 4],
    duration: Histogram,
}

impl TargetMetrics {
    /// The handles of `target`, registered on first use.
    pub fn of(target: &'static str) -> Arc<TargetMetrics> {
        TARGETS.get_or_build(target, || target, || TargetMetrics::new(target))
    }

    /// Registers a target's series, bypassing the shared cache.
    pub fn new(target: &'static str) -> TargetMetrics {
        let requests = REQUEST_OUTCOMES.map(
            |outcome| counter!(TARGET_REQUESTS, "target" => target, "outcome" => outcome.label()),
        );
        let records = RECORD_OUTCOMES.map(
            |outcome| counter!(TARGET_RECORDS, "target" => target, "outcome" => outcome.label()),
        );
        for counter in requests.iter().chain(&records) {
            counter.increment(0);
        }
        TargetMetrics {
            requests,
            records,
            duration: histogram!(TARGET_REQUEST_DURATION, "target" => target),
        }
    }

    /// Counts a call to the target's API.
    pub fn request(&self, outcome: TargetRequestOutcome, took: Duration) {
        let index = REQUEST_OUTCOMES
            .iter()
            .position(|o| *o == outcome)
            .unwrap_or(0);
        self.requests[index].increment(1);
        self.duration.record(took.as_secs_f64());
    }

    /// Counts records the target handled.
    pub fn records(&self, outcome: TargetRecordOutcome, count: u64) {
        if count > 0 {
            let index = RECORD_OUTCOMES
                .iter()
                .position(|o| *o == outcome)
                .unwrap_or(0);
            self.records[index].increment(count);
        }
    }
}

const CALL_OUTCOMES: [CallOutcome; 4] = [
    CallOutcome::Ok,
    CallOutcome::Throttled,
    CallOutcome::Conflict,
    CallOutcome::Error,
];

static APIS: Cache<&'static str, ApiMetrics> = Cache::new();

/// One AWS API's series: calls by outcome and their duration.
#[derive(Debug)]
pub struct ApiMetrics {
    calls: [Counter; 4],
    duration: Histogram,
}

impl ApiMetrics {
    /// The handles of `api`, registered on first use.
    pub fn of(api: &'static str) -> Arc<ApiMetrics> {
        APIS.get_or_build(api, || api, || ApiMetrics::new(api))
    }

    /// Registers an API's series, bypassing the shared cache.
    pub fn new(api: &'static str) -> ApiMetrics {
        ApiMetrics {
            calls: CALL_OUTCOMES
                .map(|outcome| counter!(API_CALLS, "api" => api, "outcome" => outcome.label())),
            duration: histogram!(API_CALL_DURATION, "api" => api),
        }
    }

    /// Counts one call.
    pub fn call(&self, outcome: CallOutcome, took: Duration) {
        let index = CALL_OUTCOMES
            .iter()
            .position(|o| *o == outcome)
            .unwrap_or(0);
        self.calls[index].increment(1);
        self.duration.record(took.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use metrics_exporter_prometheus::PrometheusBuilder;

    use super::*;

    fn stream_age(rendered: &str) -> Option<f64> {
        rendered
            .lines()
            .find(|l| l.starts_with("dynastream_iterator_age_seconds{stream=\"orders\"}"))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    #[test]
    fn the_stream_age_is_the_maximum_over_the_shards_still_here() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let stream = Arc::new(StreamMetrics::new("orders"));
            let a = stream.shard_labelled("a", false);
            let b = stream.shard_labelled("b", false);
            a.iterator_age(5.0);
            b.iterator_age(2.0);
            assert_eq!(stream_age(&handle.render()), Some(5.0));
            a.iterator_age(1.0);
            assert_eq!(stream_age(&handle.render()), Some(2.0));
            b.iterator_age(-3.0);
            assert_eq!(stream_age(&handle.render()), Some(1.0));
            stream.forget("a");
            assert_eq!(stream_age(&handle.render()), Some(0.0));
            // A shard taken again reuses its slot: one age per shard.
            let a_again = stream.shard_labelled("a", false);
            a_again.iterator_age(4.0);
            assert_eq!(stream.ages.read().unwrap().len(), 2);
            assert_eq!(stream_age(&handle.render()), Some(4.0));
        });
    }

    #[test]
    fn per_shard_ages_exist_only_when_asked_for() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let stream = Arc::new(StreamMetrics::new("orders"));
            stream.shard_labelled("a", false).iterator_age(1.0);
            assert!(!handle
                .render()
                .contains("dynastream_shard_iterator_age_seconds"));
            stream.shard_labelled("b", true).iterator_age(1.0);
            assert!(handle.render().contains(
                "dynastream_shard_iterator_age_seconds{stream=\"orders\",shard=\"b\"} 1"
            ));
        });
    }
}

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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use metrics::{counter, histogram, Counter, Histogram, Key, Label, Level, Metadata, SharedString};

use super::metrics::{
    installed, shard_labels, BatchOutcomeLabel, CallOutcome, TargetRecordOutcome,
    TargetRequestOutcome, API_CALLS, API_CALL_DURATION, BATCHES, ITERATOR_AGE,
    PIPELINE_SHARDS_HALTED, PROCESSING_LAG, PROCESSOR_DURATION, RECORDS, RECORDS_FILTERED,
    SHARD_ITERATOR_AGE, TARGET_RECORDS, TARGET_REQUESTS, TARGET_REQUEST_DURATION, TRIMMED_DATA,
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

/// Stream handles by pipeline name ("" for the one unnamed pipeline), then
/// by stream label.
static STREAMS: Cache<Box<str>, Cache<Box<str>, StreamMetrics>> = Cache::new();
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

/// The labels of a stream's series: `stream`, `pipeline` for a named
/// pipeline, then `more`.
fn series_labels(
    stream: &SharedString,
    pipeline: Option<&SharedString>,
    more: &[(&'static str, SharedString)],
) -> Vec<Label> {
    let mut labels = vec![Label::new("stream", stream.clone())];
    labels.extend(pipeline.map(|p| Label::new("pipeline", p.clone())));
    labels.extend(more.iter().map(|(k, v)| Label::new(*k, v.clone())));
    labels
}

fn now_epoch_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Where one shard's reader (or one pipeline's consumer of it) stands: the
/// creation time of the newest record it took, so that its age keeps growing
/// while it is stuck on them, and whether that pipeline halted there.
#[derive(Debug)]
struct ShardSlot {
    shard: Arc<str>,
    /// Epoch seconds (`f64` bits) of the newest record taken; 0 when caught up.
    newest_created: AtomicU64,
    halted: AtomicBool,
    gauge: Option<KeyedGauge>,
}

impl ShardSlot {
    /// Sets the shard's own age series, where there is one.
    fn publish_own(&self, now: f64) {
        if let Some(gauge) = &self.gauge {
            gauge.set(self.age(now));
        }
    }

    fn age(&self, now: f64) -> f64 {
        let created = f64::from_bits(self.newest_created.load(Ordering::Relaxed));
        if created > 0.0 {
            (now - created).max(0.0)
        } else {
            0.0
        }
    }
}

/// One stream's series (labelled with its table's name, and with the
/// pipeline's name in an application of named pipelines), shared by every
/// shard and lane of the stream on this worker.
#[derive(Debug)]
pub struct StreamMetrics {
    label: SharedString,
    pipeline: Option<SharedString>,
    records: [Counter; 3],
    filtered: Counter,
    batches: [Counter; 4],
    trimmed: Counter,
    lag: Histogram,
    iterator_age: KeyedGauge,
    halted: Option<KeyedGauge>,
    /// The shards of the stream on this worker. The lock is per stream and
    /// only written when a shard joins or leaves.
    shards: RwLock<Vec<Arc<ShardSlot>>>,
}

impl StreamMetrics {
    /// The handles of the stream `stream_arn` belongs to, registered on first
    /// use. Two streams of one table (the stream was re-enabled) share them,
    /// as they share the `stream` label.
    pub fn of(stream_arn: &str) -> Arc<StreamMetrics> {
        StreamMetrics::of_pipeline(stream_arn, None)
    }

    /// The handles of the stream for one named pipeline (`None`: the
    /// application's one unnamed pipeline, or the shared reader).
    pub fn of_pipeline(stream_arn: &str, pipeline: Option<&str>) -> Arc<StreamMetrics> {
        let label = crate::record::table_name(stream_arn);
        let name = pipeline.unwrap_or_default();
        STREAMS
            .get_or_build(name, || name.into(), Cache::new)
            .get_or_build(
                label,
                || label.into(),
                || StreamMetrics::new(label, pipeline),
            )
    }

    /// Registers a stream's series under `label` (and `pipeline`), bypassing
    /// the shared cache (tests use it against a local recorder).
    pub fn new(label: &str, pipeline: Option<&str>) -> StreamMetrics {
        let label = SharedString::from(label.to_owned());
        let pipeline = pipeline.map(|p| SharedString::from(p.to_owned()));
        let labels =
            |more: &[(&'static str, SharedString)]| series_labels(&label, pipeline.as_ref(), more);
        let register = |name: &'static str, labels: Vec<Label>| {
            metrics::with_recorder(|r| {
                r.register_counter(&Key::from_parts(name, labels), &METADATA)
            })
        };
        let records = ["INSERT", "MODIFY", "REMOVE"]
            .map(|event| register(RECORDS, labels(&[("event_name", event.into())])));
        let batches = BATCH_OUTCOMES
            .map(|outcome| register(BATCHES, labels(&[("outcome", outcome.label().into())])));
        let trimmed = register(TRIMMED_DATA, labels(&[]));
        // The data-loss counter exists from the start, at 0, so that
        // increase() sees its first event.
        trimmed.increment(0);
        let lag_labels: Vec<Label> = pipeline
            .iter()
            .map(|p| Label::new("pipeline", p.clone()))
            .collect();
        let lag = metrics::with_recorder(|r| {
            r.register_histogram(&Key::from_parts(PROCESSING_LAG, lag_labels), &METADATA)
        });
        let halted = pipeline
            .is_some()
            .then(|| KeyedGauge::new(PIPELINE_SHARDS_HALTED, labels(&[])));
        StreamMetrics {
            records,
            filtered: register(RECORDS_FILTERED, labels(&[])),
            batches,
            trimmed,
            lag,
            iterator_age: KeyedGauge::new(ITERATOR_AGE, labels(&[])),
            halted,
            shards: RwLock::default(),
            label,
            pipeline,
        }
    }

    /// The `stream` label value.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The `pipeline` label value, if the application names its pipelines.
    pub fn pipeline(&self) -> Option<&str> {
        self.pipeline.as_deref()
    }

    /// Counts records every processor succeeded with, by event name, and
    /// their lag from creation.
    pub fn processed(&self, records: &[Arc<StreamRecord>]) {
        let mut by_event = [0u64; 3];
        let now = now_epoch_secs();
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
        let mut shards = self.shards.write().unwrap_or_else(|p| p.into_inner());
        let slot = match shards.iter().find(|slot| &*slot.shard == shard_id) {
            Some(slot) => Arc::clone(slot),
            None => {
                let labels = series_labels(
                    &self.label,
                    self.pipeline.as_ref(),
                    &[("shard", shard_id.to_owned().into())],
                );
                let slot = Arc::new(ShardSlot {
                    shard: Arc::from(shard_id),
                    newest_created: AtomicU64::new(0f64.to_bits()),
                    halted: AtomicBool::new(false),
                    gauge: labelled.then(|| KeyedGauge::new(SHARD_ITERATOR_AGE, labels)),
                });
                shards.push(Arc::clone(&slot));
                slot
            }
        };
        ShardMetrics {
            stream: Arc::clone(self),
            slot,
        }
    }

    /// Sets the stream's series from its shards: the maximum age and the
    /// shards its pipeline halted on.
    fn publish(&self) {
        let now = now_epoch_secs();
        let shards = self.shards.read().unwrap_or_else(|p| p.into_inner());
        let mut max = 0.0f64;
        let mut halted = 0u32;
        for slot in shards.iter() {
            max = max.max(slot.age(now));
            halted += u32::from(slot.halted.load(Ordering::Relaxed));
        }
        self.iterator_age.set(max);
        if let Some(gauge) = &self.halted {
            gauge.set(f64::from(halted));
        }
    }

    /// [`StreamMetrics::publish`], and each shard's own age series (which
    /// a read sets only for its own shard).
    fn publish_every_shard(&self) {
        let now = now_epoch_secs();
        for slot in self.shards.read().unwrap_or_else(|p| p.into_inner()).iter() {
            slot.publish_own(now);
        }
        self.publish();
    }

    /// The age of `shard_id`'s position here, if this worker reads it.
    pub fn shard_age(&self, shard_id: &str) -> Option<f64> {
        let shards = self.shards.read().unwrap_or_else(|p| p.into_inner());
        let slot = shards.iter().find(|slot| &*slot.shard == shard_id)?;
        Some(slot.age(now_epoch_secs()))
    }

    fn forget(&self, shard_id: &str) {
        let gone: Vec<Arc<ShardSlot>> = {
            let mut shards = self.shards.write().unwrap_or_else(|p| p.into_inner());
            let (gone, kept) = std::mem::take(&mut *shards)
                .into_iter()
                .partition(|slot| &*slot.shard == shard_id);
            *shards = kept;
            gone
        };
        // Zero, then gone from the next scrape's point of view: the exporter
        // keeps no idle series past its idle timeout, and a zero age is true.
        for slot in gone {
            if let Some(gauge) = &slot.gauge {
                gauge.set(0.0);
            }
        }
        self.publish();
    }
}

/// One shard's handles, kept by its consumer.
#[derive(Debug)]
pub struct ShardMetrics {
    stream: Arc<StreamMetrics>,
    slot: Arc<ShardSlot>,
}

impl ShardMetrics {
    /// The stream's handles.
    pub fn stream(&self) -> &StreamMetrics {
        &self.stream
    }

    /// Records the creation time of the newest record just read or taken
    /// (`None`: an empty read, caught up with the stream), and publishes the
    /// shard's age and its stream's maximum over this worker's shards. Two
    /// shards setting at once may publish a maximum one page old; the next
    /// page of either, or the next [`republish`], corrects it.
    pub fn read_up_to(&self, newest_created_epoch_secs: Option<i64>) {
        let created = newest_created_epoch_secs.map_or(0.0, |secs| secs.max(1) as f64);
        self.follow_mark(created);
    }

    /// Takes the position of `other` (a pipeline caught up with its shard's
    /// reader is as far behind as the reader).
    pub fn caught_up_with(&self, other: &ShardMetrics) {
        self.follow_mark(f64::from_bits(
            other.slot.newest_created.load(Ordering::Relaxed),
        ));
    }

    fn follow_mark(&self, created: f64) {
        self.slot
            .newest_created
            .store(created.to_bits(), Ordering::Relaxed);
        self.slot.publish_own(now_epoch_secs());
        self.stream.publish();
    }

    /// The pipeline halted on this shard: counted in
    /// `dynastream_pipeline_shards_halted` until the shard leaves.
    pub fn halted(&self) {
        self.slot.halted.store(true, Ordering::Relaxed);
        self.stream.publish();
    }

    /// The pipeline read this shard to its end: it no longer counts in the
    /// stream's age.
    pub fn ended(&self) {
        self.stream.forget(&self.slot.shard);
    }
}

/// Forgets a shard that left this worker, for every pipeline: its age no
/// longer counts in the stream's maximum and its per-shard series goes.
pub fn shard_left(stream: &str, shard: &str) {
    for_each_stream(|of_stream| {
        if of_stream.label() == stream {
            of_stream.forget(shard);
        }
    });
}

/// Publishes every stream's ages again, so that a shard stuck on a batch
/// shows its age growing and its series stay past the exporter's idle
/// timeout.
pub fn republish() {
    for_each_stream(StreamMetrics::publish_every_shard);
}

/// The age of a pipeline's position in a shard on this worker, if it reads it.
pub fn pipeline_shard_age(stream: &str, pipeline: &str, shard: &str) -> Option<f64> {
    STREAMS.get(pipeline)?.get(stream)?.shard_age(shard)
}

fn for_each_stream(mut visit: impl FnMut(&StreamMetrics)) {
    let Some(pipelines) = STREAMS.0.get() else {
        return;
    };
    let pipelines: Vec<_> = pipelines
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .values()
        .cloned()
        .collect();
    for streams in pipelines {
        let Some(streams) = streams.0.get() else {
            continue;
        };
        let streams: Vec<_> = streams
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for stream in streams {
            visit(&stream);
        }
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

    fn value(rendered: &str, series: &str) -> Option<f64> {
        rendered
            .lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    fn stream_age(rendered: &str) -> Option<f64> {
        value(
            rendered,
            "dynastream_iterator_age_seconds{stream=\"orders\"}",
        )
    }

    /// Seconds since the epoch, `ago` seconds back.
    fn created(ago: i64) -> Option<i64> {
        Some(now_epoch_secs() as i64 - ago)
    }

    fn about(found: Option<f64>, expected: f64) -> bool {
        found.is_some_and(|f| (f - expected).abs() < 1.5)
    }

    #[test]
    fn the_stream_age_is_the_maximum_over_the_shards_still_here() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let stream = Arc::new(StreamMetrics::new("orders", None));
            let a = stream.shard_labelled("a", false);
            let b = stream.shard_labelled("b", false);
            a.read_up_to(created(50));
            b.read_up_to(created(20));
            assert!(about(stream_age(&handle.render()), 50.0));
            a.read_up_to(created(10));
            assert!(about(stream_age(&handle.render()), 20.0));
            b.read_up_to(None);
            assert!(about(stream_age(&handle.render()), 10.0));
            stream.forget("a");
            assert_eq!(stream_age(&handle.render()), Some(0.0));
            // A shard taken again reuses its slot: one age per shard.
            let a_again = stream.shard_labelled("a", false);
            a_again.read_up_to(created(40));
            assert_eq!(stream.shards.read().unwrap().len(), 2);
            assert!(about(stream_age(&handle.render()), 40.0));
        });
    }

    #[test]
    fn a_position_stuck_on_old_records_keeps_ageing() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let stream = Arc::new(StreamMetrics::new("orders", None));
            let shard = stream.shard_labelled("a", false);
            shard.read_up_to(created(5));
            let first = stream_age(&handle.render()).unwrap();
            std::thread::sleep(Duration::from_millis(1100));
            stream.publish();
            let later = stream_age(&handle.render()).unwrap();
            assert!(later >= first + 1.0, "{first} then {later}");
        });
    }

    #[test]
    fn per_shard_ages_exist_only_when_asked_for() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let stream = Arc::new(StreamMetrics::new("orders", None));
            stream.shard_labelled("a", false).read_up_to(created(1));
            assert!(!handle
                .render()
                .contains("dynastream_shard_iterator_age_seconds"));
            stream.shard_labelled("b", true).read_up_to(None);
            assert!(handle.render().contains(
                "dynastream_shard_iterator_age_seconds{stream=\"orders\",shard=\"b\"} 0"
            ));
        });
    }

    #[test]
    fn a_named_pipeline_has_its_own_series_its_own_age_and_its_halted_shards() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let reader = Arc::new(StreamMetrics::new("orders", None));
            let search = Arc::new(StreamMetrics::new("orders", Some("search")));
            let audit = Arc::new(StreamMetrics::new("orders", Some("audit")));
            let read = reader.shard_labelled("a", false);
            read.read_up_to(None);
            search.shard_labelled("a", false).caught_up_with(&read);
            let audit_a = audit.shard_labelled("a", false);
            audit_a.read_up_to(created(600));
            audit_a.halted();
            search.processed(&[]);
            let rendered = handle.render();
            let age = |pipeline: &str| {
                value(
                    &rendered,
                    &format!(
                        "dynastream_iterator_age_seconds{{stream=\"orders\",pipeline=\"{pipeline}\"}}"
                    ),
                )
            };
            assert_eq!(age("search"), Some(0.0));
            assert!(about(age("audit"), 600.0), "{rendered}");
            assert_eq!(stream_age(&rendered), Some(0.0));
            assert_eq!(
                value(
                    &rendered,
                    "dynastream_pipeline_shards_halted{stream=\"orders\",pipeline=\"audit\"}"
                ),
                Some(1.0)
            );
            assert_eq!(
                value(
                    &rendered,
                    "dynastream_pipeline_shards_halted{stream=\"orders\",pipeline=\"search\"}"
                ),
                Some(0.0)
            );
            assert!(rendered.contains(
                "dynastream_records_total{stream=\"orders\",pipeline=\"search\",event_name=\"INSERT\"} 0"
            ));
            // The pipeline finished the shard: its position no longer counts.
            audit_a.ended();
            assert_eq!(age_after(&handle, "audit"), Some(0.0));
        });
    }

    fn age_after(
        handle: &metrics_exporter_prometheus::PrometheusHandle,
        pipeline: &str,
    ) -> Option<f64> {
        value(
            &handle.render(),
            &format!(
                "dynastream_iterator_age_seconds{{stream=\"orders\",pipeline=\"{pipeline}\"}}"
            ),
        )
    }
}

//! Every metric the README documents and the dashboard and alert rules query
//! is emitted by some event or handle, with the labels the README names: the
//! emitters are driven once against a local Prometheus recorder and the
//! rendered exposition is compared with the documents.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusBuilder;

use super::events::*;
use super::handles::{processor_duration, ApiMetrics, StreamMetrics, TargetMetrics};
use super::metrics::{
    fleet, shard_sync_pending, BatchOutcomeLabel, CallOutcome, FleetView, TargetRequestOutcome, ALL,
};
use crate::record::{EventName, SequenceNumber, StreamRecord};
use crate::streams::memory::test_record;

fn read(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The metric tables of the README: name, and the label keys of the
/// operations table (`| name | type | labels | meaning |`).
fn readme_metrics() -> BTreeMap<String, Option<BTreeSet<String>>> {
    let mut found = BTreeMap::new();
    for line in read("README.md").lines() {
        let Some(row) = line.strip_prefix("| `dynastream_") else {
            continue;
        };
        let cells: Vec<&str> = line.split(" | ").collect();
        let name = format!("dynastream_{}", row.split('`').next().unwrap_or_default());
        let labels = (cells.len() == 4 && matches!(cells[1], "counter" | "gauge" | "histogram"))
            .then(|| {
                cells[2]
                    .split('`')
                    .skip(1)
                    .step_by(2)
                    .map(str::to_owned)
                    .collect()
            });
        let entry = found.entry(name).or_insert(None);
        if labels.is_some() {
            *entry = labels;
        }
    }
    found
}

/// Metric names in a file of queries, histogram series folded to their
/// metric's name.
fn queried_metrics(relative: &str) -> BTreeSet<String> {
    let text = read(relative);
    let mut names = BTreeSet::new();
    for (start, _) in text.match_indices("dynastream_") {
        let name: String = text[start..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
            .collect();
        names.insert(histogram_metric(&name).to_owned());
    }
    names
}

fn histogram_metric(series: &str) -> &str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|suffix| series.strip_suffix(suffix))
        .unwrap_or(series)
}

fn record() -> Arc<StreamRecord> {
    let mut record = test_record(
        "arn:aws:dynamodb:us-east-1:1:table/orders/stream/2026-01-01T00:00:00.000",
        &SequenceNumber("100".into()),
        EventName::Insert,
        "a",
    );
    record.dynamodb.approximate_creation_date_time = Some(1_700_000_000);
    Arc::new(record)
}

/// Drives every event and handle once; returns each rendered metric with
/// the label keys its series carry.
fn emitted() -> BTreeMap<String, BTreeSet<String>> {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        let stream = Arc::new(StreamMetrics::new("orders", None));
        stream.processed(&[record()]);
        stream.filtered(1);
        stream.batch(BatchOutcomeLabel::Success);
        stream
            .shard_labelled("shard-1", true)
            .read_up_to(Some(1_700_000_000));
        // A named pipeline's series carry its name as well.
        let pipeline = Arc::new(StreamMetrics::new("orders", Some("search")));
        pipeline.processed(&[record()]);
        pipeline.filtered(1);
        pipeline.batch(BatchOutcomeLabel::Success);
        let pipeline_shard = pipeline.shard_labelled("shard-1", true);
        pipeline_shard.read_up_to(Some(1_700_000_000));
        pipeline_shard.halted();
        processor_duration("stdout", Duration::from_millis(2));
        ApiMetrics::new("GetRecords").call(CallOutcome::Ok, Duration::from_millis(5));
        super::metrics::lease_write("shard", "checkpoint");
        TargetMetrics::new("sqs");
        TargetRequest {
            target: "sqs",
            outcome: TargetRequestOutcome::Partial,
            took: Duration::from_millis(7),
            delivered: 1,
            throttled: 1,
            failed: 1,
            rejected: 1,
        }
        .emit();
        LeaseTaken {
            shard: "shard-1",
            previous_owner: &None,
        }
        .emit();
        for stream in [&stream, &pipeline] {
            RecordsSentToDestination {
                stream,
                destination: "sqs",
                records: 1,
                start: "100",
                end: "100",
                reason: &"test",
            }
            .emit();
        }
        TrimmedDataSkipped {
            stream: &stream,
            message: "trimmed",
            position: &"TRIM_HORIZON",
        }
        .emit();
        shard_sync_pending(3);
        super::metrics::snapshot_page("orders", 100, 2.5);
        super::metrics::snapshot_throttled("orders");
        super::metrics::snapshot_progress("orders", 1, 2, 3, Some(60.0));
        super::metrics::snapshot_changes_skipped(
            "arn:aws:dynamodb:us-east-1:1:table/orders/stream/x",
            2,
        );
        fleet(&FleetView {
            leases_held: [("orders".to_owned(), 1)].into(),
            workers: 1,
            shards: [("active", 1)].into(),
            unowned: [("orders".to_owned(), 0)].into(),
        });
    });
    let mut found: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in handle
        .render()
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = found
            .entry(histogram_metric(&line[..end]).to_owned())
            .or_default();
        if let Some(inside) = line[end..]
            .strip_prefix('{')
            .and_then(|l| l.split_once('}'))
        {
            for pair in inside.0.split("\",") {
                if let Some((key, _)) = pair.split_once('=') {
                    if key != "le" && key != "quantile" {
                        labels.insert(key.to_owned());
                    }
                }
            }
        }
    }
    found
}

#[test]
fn every_documented_and_queried_metric_is_emitted_with_its_labels() {
    let documented = readme_metrics();
    assert!(
        documented.len() >= 20,
        "the README's metrics table was not found: {documented:?}"
    );
    let mut wanted: BTreeSet<String> = documented.keys().cloned().collect();
    for file in [
        "dashboards/dynastream.json",
        "deploy/prometheus/alerts.yaml",
        "deploy/prometheus/alerts_test.yaml",
    ] {
        let queried = queried_metrics(file);
        assert!(!queried.is_empty(), "no metric found in {file}");
        wanted.extend(queried);
    }
    let emitted = emitted();
    let missing: Vec<&String> = wanted
        .iter()
        .filter(|name| !emitted.contains_key(*name))
        .collect();
    assert!(
        missing.is_empty(),
        "documented or queried but emitted by no event or handle: {missing:?}\nemitted: {:?}",
        emitted.keys()
    );
    for (name, labels) in &documented {
        if let Some(labels) = labels {
            assert_eq!(&emitted[name], labels, "the labels of {name}");
        }
    }
    let undocumented: Vec<&&str> = ALL
        .iter()
        .filter(|name| !documented.contains_key(**name))
        .collect();
    assert!(
        undocumented.is_empty(),
        "exported but not in the README: {undocumented:?}"
    );
}

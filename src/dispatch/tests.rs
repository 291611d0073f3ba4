//! Dispatch semantics on fakes: retries, bisect, partial failures, age,
//! destinations, halting, lanes and per-key order.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use proptest::prelude::*;
use tokio_util::sync::CancellationToken;

use super::destination::{DestinationError, FailedBatch, FailureDestination, FailureReason};
use super::*;
use crate::processor::{Batch, BatchOutcome, Processor, ProcessorError};
use crate::record::{EventName, SequenceNumber, StreamRecord};
use crate::streams::memory::test_record;

fn record(sequence: u64, key: &str) -> Arc<StreamRecord> {
    let sequence = SequenceNumber(format!("{sequence:05}"));
    Arc::new(test_record("arn:s", &sequence, EventName::Insert, key))
}

fn records(count: u64) -> Vec<Arc<StreamRecord>> {
    (1..=count).map(|i| record(i, &format!("k{i}"))).collect()
}

fn seq(n: u64) -> SequenceNumber {
    SequenceNumber(format!("{n:05}"))
}

/// Records what it was given; fails on records it was told are poison.
#[derive(Default)]
struct Scripted {
    poison: Vec<SequenceNumber>,
    partial: bool,
    fail_first: AtomicU32,
    calls: Mutex<Vec<Vec<SequenceNumber>>>,
    delays: HashMap<String, Duration>,
}

impl Scripted {
    fn calls(&self) -> Vec<Vec<SequenceNumber>> {
        self.calls.lock().unwrap().clone()
    }

    fn attempts_including(&self, sequence: &SequenceNumber) -> usize {
        self.calls().iter().filter(|c| c.contains(sequence)).count()
    }
}

#[async_trait]
impl Processor for Scripted {
    fn name(&self) -> &str {
        "scripted"
    }

    async fn process(&self, batch: &Batch) -> Result<BatchOutcome, ProcessorError> {
        let sequences: Vec<SequenceNumber> = batch
            .records
            .iter()
            .map(|r| r.sequence_number().clone())
            .collect();
        self.calls.lock().unwrap().push(sequences.clone());
        if let Some(crate::record::AttributeValue::S(key)) = batch
            .records
            .first()
            .and_then(|r| r.dynamodb.keys.get("pk"))
        {
            if let Some(delay) = self.delays.get(key) {
                tokio::time::sleep(*delay).await;
            }
        }
        if self
            .fail_first
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(ProcessorError::retryable("not yet"));
        }
        let bad: Vec<SequenceNumber> = sequences
            .iter()
            .filter(|s| self.poison.contains(s))
            .cloned()
            .collect();
        if bad.is_empty() {
            Ok(BatchOutcome::Success)
        } else if self.partial {
            Ok(BatchOutcome::PartialFailure(bad))
        } else {
            Err(ProcessorError::retryable(format!(
                "poison record {}",
                bad[0]
            )))
        }
    }
}

#[derive(Debug, Default)]
struct Collected(Mutex<Vec<FailedBatch>>);

#[async_trait]
impl FailureDestination for Collected {
    fn kind(&self) -> &'static str {
        "memory"
    }
    async fn send(&self, failed: &FailedBatch) -> Result<(), DestinationError> {
        self.0.lock().unwrap().push(failed.clone());
        Ok(())
    }
}

impl Collected {
    fn sequences(&self) -> Vec<SequenceNumber> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .flat_map(|f| f.records.iter().map(|r| r.sequence_number().clone()))
            .collect()
    }
}

fn settings(batch_size: usize, retries: Option<u32>, bisect: bool) -> DispatchSettings {
    DispatchSettings {
        batch_size,
        max_retry_attempts: retries,
        bisect_on_error: bisect,
        ..DispatchSettings::default()
    }
}

async fn run(
    dispatcher: &Dispatcher,
    records: Vec<Arc<StreamRecord>>,
) -> Result<Dispatched, Undelivered> {
    let never = CancellationToken::new();
    dispatcher
        .dispatch(
            &Arc::from("arn:s"),
            &Arc::from("shard-1"),
            records,
            &never,
            &never,
        )
        .await
}

#[tokio::test(start_paused = true)]
async fn failures_are_retried_with_backoff_until_the_processor_succeeds() {
    let processor = Arc::new(Scripted {
        fail_first: AtomicU32::new(2),
        ..Scripted::default()
    });
    let dispatcher = Dispatcher::new(vec![processor.clone()]);
    let started = tokio::time::Instant::now();
    let report = run(&dispatcher, records(3)).await.unwrap();
    assert_eq!(report.processed, 3);
    assert_eq!(processor.calls().len(), 3);
    assert!(
        started.elapsed() >= Duration::from_millis(100 + 200),
        "backed off between attempts"
    );
}

#[tokio::test(start_paused = true)]
async fn a_poison_record_goes_to_the_destination_after_three_attempts_and_the_rest_follow() {
    let processor = Arc::new(Scripted {
        poison: vec![seq(3)],
        ..Scripted::default()
    });
    let destination = Arc::new(Collected::default());
    let dispatcher = Dispatcher::new(vec![processor.clone()])
        .with_settings(settings(4, Some(2), false))
        .with_destination(destination.clone());
    let report = run(&dispatcher, records(10)).await.unwrap();
    assert_eq!(
        processor.attempts_including(&seq(3)),
        3,
        "1 attempt + 2 retries"
    );
    // Without bisect the whole chunk holding the poison record is given up.
    assert_eq!(destination.sequences(), [seq(1), seq(2), seq(3), seq(4)]);
    let failed = destination.0.lock().unwrap()[0].clone();
    assert_eq!(failed.attempts, 3);
    assert_eq!(failed.reason, FailureReason::RetriesExhausted);
    assert!(failed.last_error.unwrap().contains("poison record 00003"));
    assert_eq!(report.processed, 6, "the records behind it are processed");
    assert!(processor.calls().iter().any(|c| c.contains(&seq(10))));
}

#[tokio::test(start_paused = true)]
async fn with_bisect_only_the_poison_record_lands_in_the_destination() {
    let processor = Arc::new(Scripted {
        poison: vec![seq(3)],
        ..Scripted::default()
    });
    let destination = Arc::new(Collected::default());
    let dispatcher = Dispatcher::new(vec![processor.clone()])
        .with_settings(settings(8, Some(2), true))
        .with_destination(destination.clone());
    let report = run(&dispatcher, records(8)).await.unwrap();
    assert_eq!(destination.sequences(), [seq(3)]);
    assert_eq!(report.processed, 7);
    assert_eq!(report.sent_to_destination, 1);
    let alone: Vec<_> = processor
        .calls()
        .into_iter()
        .filter(|c| c == &vec![seq(3)])
        .collect();
    assert_eq!(
        alone.len(),
        3,
        "the isolated record gets 1 attempt + 2 retries; splits are free"
    );
}

#[tokio::test(start_paused = true)]
async fn partial_failures_retry_only_the_failed_record_and_what_follows() {
    let processor = Arc::new(Scripted {
        poison: vec![seq(4)],
        partial: true,
        ..Scripted::default()
    });
    let destination = Arc::new(Collected::default());
    let dispatcher = Dispatcher::new(vec![processor.clone()])
        .with_settings(settings(6, Some(1), false))
        .with_destination(destination.clone());
    let report = run(&dispatcher, records(6)).await.unwrap();
    let calls = processor.calls();
    assert_eq!(calls[0], (1..=6).map(seq).collect::<Vec<_>>());
    assert_eq!(
        calls[1],
        (4..=6).map(seq).collect::<Vec<_>>(),
        "retry from the earliest failure"
    );
    assert_eq!(destination.sequences(), [seq(4), seq(5), seq(6)]);
    assert_eq!(report.processed, 3);
}

#[tokio::test(start_paused = true)]
async fn an_unknown_item_identifier_fails_the_whole_batch() {
    struct Liar;
    #[async_trait]
    impl Processor for Liar {
        fn name(&self) -> &str {
            "liar"
        }
        async fn process(&self, _batch: &Batch) -> Result<BatchOutcome, ProcessorError> {
            Ok(BatchOutcome::PartialFailure(vec![seq(999)]))
        }
    }
    let destination = Arc::new(Collected::default());
    let dispatcher = Dispatcher::new(vec![Arc::new(Liar)])
        .with_settings(settings(10, Some(0), false))
        .with_destination(destination.clone());
    run(&dispatcher, records(3)).await.unwrap();
    assert_eq!(destination.sequences(), [seq(1), seq(2), seq(3)]);
    let error = destination.0.lock().unwrap()[0].last_error.clone().unwrap();
    assert!(error.contains("not in the batch"), "{error}");
}

#[tokio::test(start_paused = true)]
async fn without_a_destination_exhausted_retries_halt_the_shard() {
    let processor = Arc::new(Scripted {
        poison: vec![seq(2)],
        ..Scripted::default()
    });
    let dispatcher =
        Dispatcher::new(vec![processor.clone()]).with_settings(settings(10, Some(1), false));
    let result = run(&dispatcher, records(3)).await;
    match result {
        Err(Undelivered::Halted(message)) => {
            assert!(message.contains("DYNASTREAM_ON_FAILURE"), "{message}")
        }
        other => panic!("expected a halt, got {other:?}"),
    }
    assert_eq!(processor.calls().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn records_older_than_the_age_limit_go_to_the_destination_unprocessed() {
    let processor = Arc::new(Scripted::default());
    let destination = Arc::new(Collected::default());
    let dispatcher = Dispatcher::new(vec![processor.clone()])
        .with_settings(DispatchSettings {
            max_record_age: Some(Duration::from_secs(60)),
            ..DispatchSettings::default()
        })
        .with_destination(destination.clone());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mut batch = records(4);
    for (i, record) in batch.iter_mut().enumerate() {
        let mut changed = (**record).clone();
        changed.dynamodb.approximate_creation_date_time =
            Some(if i < 2 { now - 3600 } else { now });
        *record = Arc::new(changed);
    }
    let report = run(&dispatcher, batch).await.unwrap();
    assert_eq!(destination.sequences(), [seq(1), seq(2)]);
    assert_eq!(
        destination.0.lock().unwrap()[0].reason,
        FailureReason::RecordTooOld
    );
    assert_eq!(report.processed, 2);
    assert_eq!(processor.calls(), vec![vec![seq(3), seq(4)]]);
}

#[tokio::test(start_paused = true)]
async fn shutdown_ends_the_retries_without_success() {
    let processor = Arc::new(Scripted {
        fail_first: AtomicU32::new(5),
        ..Scripted::default()
    });
    let dispatcher = Dispatcher::new(vec![processor.clone()]);
    let shutdown = CancellationToken::new();
    shutdown.cancel();
    let result = dispatcher
        .dispatch(
            &Arc::from("arn:s"),
            &Arc::from("shard-1"),
            records(2),
            &CancellationToken::new(),
            &shutdown,
        )
        .await;
    assert_eq!(result, Err(Undelivered::ShuttingDown));
    assert_eq!(
        processor.calls().len(),
        1,
        "the call in flight finished; no retry"
    );
}

#[test]
fn chunks_respect_the_record_and_byte_caps() {
    let batch = records(10);
    let by_count = chunks(batch.clone(), 4, u64::MAX);
    assert_eq!(by_count.iter().map(Vec::len).collect::<Vec<_>>(), [4, 4, 2]);
    // test_record reports 64 bytes per record.
    let by_bytes = chunks(batch.clone(), 100, 200);
    assert_eq!(
        by_bytes.iter().map(Vec::len).collect::<Vec<_>>(),
        [3, 3, 3, 1]
    );
    let tiny = chunks(batch, 100, 1);
    assert_eq!(
        tiny.len(),
        10,
        "a record larger than the cap still goes, alone"
    );
}

#[test]
fn lanes_keep_each_key_together_and_in_order() {
    let batch: Vec<_> = (1..=200)
        .map(|i| record(i, &format!("key{}", i % 17)))
        .collect();
    let lanes = split_into_lanes(batch, 10);
    assert!(lanes.len() > 1 && lanes.len() <= 10);
    let mut lane_of_key: HashMap<String, usize> = HashMap::new();
    for (index, lane) in lanes.iter().enumerate() {
        assert!(lane
            .windows(2)
            .all(|w| w[0].sequence_number() < w[1].sequence_number()));
        for record in lane {
            let key = format!("{:?}", record.dynamodb.keys);
            assert_eq!(*lane_of_key.entry(key).or_insert(index), index);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// With ten lanes and random processor delays, every key's records are
    /// processed in shard order, each exactly once when nothing fails.
    #[test]
    fn per_key_order_holds_with_parallelization_ten(
        keys in proptest::collection::vec(0u8..12, 1..120),
        delays in proptest::collection::vec(0u64..50, 12),
        batch_size in 1usize..8,
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(async {
            let batch: Vec<_> = keys
                .iter()
                .enumerate()
                .map(|(i, k)| record(i as u64 + 1, &format!("key{k}")))
                .collect();
            let delays: HashMap<String, Duration> = delays
                .iter()
                .enumerate()
                .map(|(k, ms)| (format!("key{k}"), Duration::from_millis(*ms)))
                .collect();
            let processor = Arc::new(Scripted { delays, ..Scripted::default() });
            let dispatcher = Dispatcher::new(vec![processor.clone()]).with_settings(DispatchSettings {
                batch_size,
                parallelization_factor: 10,
                ..DispatchSettings::default()
            });
            let report = run(&dispatcher, batch.clone()).await.unwrap();
            prop_assert_eq!(report.processed, batch.len());
            let mut seen_by_key: HashMap<String, Vec<SequenceNumber>> = HashMap::new();
            let by_sequence: HashMap<SequenceNumber, String> = batch
                .iter()
                .map(|r| (r.sequence_number().clone(), format!("{:?}", r.dynamodb.keys)))
                .collect();
            let mut total = 0;
            for call in processor.calls() {
                for sequence in call {
                    total += 1;
                    seen_by_key.entry(by_sequence[&sequence].clone()).or_default().push(sequence);
                }
            }
            prop_assert_eq!(total, batch.len(), "each record exactly once");
            for (key, sequences) in seen_by_key {
                prop_assert!(sequences.windows(2).all(|w| w[0] < w[1]), "key {} out of order: {:?}", key, sequences);
            }
            Ok(())
        })?;
    }
}

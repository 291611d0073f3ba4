use super::*;

fn table(segments: u32, started_at_millis: u64) -> Lease {
    let mut state = begin("orders", segments);
    state.started_at_millis = started_at_millis;
    table_item(
        "orders",
        Some("arn:aws:dynamodb:us-east-1:1:table/orders/stream/x"),
        Some(state),
    )
}

fn segment(n: u32, complete: bool) -> Lease {
    let key = SnapshotState::segment_key("orders", n);
    let mut lease = Lease::new("", &key, None, Checkpoint::TrimHorizon);
    let mut state = segment::fresh("orders", 0, 2, Some(n));
    state.complete = complete;
    lease.snapshot = Some(state);
    lease
}

#[test]
fn the_items_of_a_snapshot_are_told_apart_by_their_keys() {
    assert_eq!(table(2, 0).kind(), ItemKind::Table);
    assert_eq!(segment(1, false).kind(), ItemKind::Segment);
    assert_eq!(segment(1, false).key, "dynastream:segment:orders#1");
}

#[test]
fn the_stream_follows_only_a_complete_snapshot_from_where_it_began() {
    let started = 1_700_000_000_000;
    let item = table(2, started);
    let now = started + 5_000;
    let skip = OnTrimmed::Skip;
    assert_eq!(stream_start([].iter(), &item, now, skip), StreamStart::Wait);
    let half = [segment(0, true), segment(1, false)];
    assert_eq!(
        stream_start(half.iter(), &item, now, skip),
        StreamStart::Wait
    );
    let all = [segment(0, true), segment(1, true)];
    assert_eq!(
        stream_start(all.iter(), &item, now, skip),
        StreamStart::Follow(Some(1_700_000_000 - 60))
    );
    // A table found without a snapshot is followed at once.
    let plain = table_item("orders", Some("arn"), None);
    assert_eq!(
        stream_start([].iter(), &plain, now, skip),
        StreamStart::Follow(None)
    );
}

#[test]
fn a_snapshot_that_outlived_the_retention_follows_the_trimmed_policy() {
    let item = table(2, 0);
    let all = [segment(0, true), segment(1, true)];
    let late = STREAM_RETENTION.as_millis() as u64 + 1;
    assert_eq!(
        stream_start(all.iter(), &item, late, OnTrimmed::Stop),
        StreamStart::Refused
    );
    assert!(matches!(
        stream_start(all.iter(), &item, late, OnTrimmed::Skip),
        StreamStart::Follow(Some(_))
    ));
}

#[test]
fn the_time_to_completion_follows_the_pace_so_far() {
    let minute = Duration::from_secs(60);
    assert_eq!(estimated_remaining(0, Some(100), minute), None);
    assert_eq!(estimated_remaining(10, None, minute), None);
    assert_eq!(
        estimated_remaining(25, Some(100), minute),
        Some(Duration::from_secs(180))
    );
    // The estimate of the item count may be below what was read.
    assert_eq!(
        estimated_remaining(120, Some(100), minute),
        Some(Duration::ZERO)
    );
}

mod fleet {
    //! Workers sharing a snapshot through the in-memory lease store and a
    //! fake table: the engine's logic, deterministic under paused time.

    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use async_trait::async_trait;

    use super::*;
    use crate::lease::memory::MemoryLeaseStore;
    use crate::processor::{Batch, BatchOutcome, Processor, ProcessorError};
    use crate::record::{AttributeValue, Item};
    use crate::tables::{ScanPage, SegmentPage, TableDescription};
    use crate::test_support::lock;

    /// A table of `items` items `{pk: k<i>}`, each in segment `i % total`.
    #[derive(Debug)]
    struct FakeTable {
        items: usize,
    }

    #[async_trait]
    impl TablesApi for FakeTable {
        async fn describe_table(&self, table: &str) -> Result<TableDescription, TablesError> {
            Ok(TableDescription {
                name: table.into(),
                arn: format!("arn:aws:dynamodb:us-east-1:1:table/{table}"),
                key_attributes: vec!["pk".into()],
                stream_arn: Some(format!(
                    "arn:aws:dynamodb:us-east-1:1:table/{table}/stream/x"
                )),
                stream_view_type: None,
                item_count: Some(self.items as u64),
            })
        }

        async fn scan_page(&self, page: SegmentPage<'_>) -> Result<ScanPage, TablesError> {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let after = match page.start_key.and_then(|key| key.get("pk")) {
                Some(AttributeValue::S(pk)) => pk[1..].parse::<usize>().ok(),
                _ => None,
            };
            let mine: Vec<usize> = (0..self.items)
                .filter(|i| i % page.total_segments as usize == page.segment as usize)
                .filter(|i| after.is_none_or(|after| *i > after))
                .take(page.limit as usize)
                .collect();
            let item = |i: usize| -> Item {
                [("pk".to_owned(), AttributeValue::S(format!("k{i}")))].into()
            };
            let last = mine.last().copied();
            let more = last.is_some_and(|last| {
                (last + 1..self.items)
                    .any(|i| i % page.total_segments as usize == page.segment as usize)
            });
            Ok(ScanPage {
                consumed_rcu: mine.len() as f64 * 0.5,
                last_evaluated_key: more.then(|| item(last.unwrap_or_default())),
                items: mine.into_iter().map(item).collect(),
            })
        }

        async fn list_tables(&self) -> Result<Vec<String>, TablesError> {
            Ok(vec!["orders".into()])
        }

        async fn tags_of(&self, _arn: &str) -> Result<Vec<(String, String)>, TablesError> {
            Ok(Vec::new())
        }
    }

    /// Every snapshot record delivered, by event id.
    #[derive(Default)]
    struct Collect(Mutex<Vec<String>>);

    #[async_trait]
    impl Processor for Collect {
        fn name(&self) -> &str {
            "collect"
        }

        async fn process(&self, batch: &Batch) -> Result<BatchOutcome, ProcessorError> {
            lock(&self.0).extend(batch.records.iter().map(|r| {
                assert!(r.is_snapshot());
                r.event_id.clone()
            }));
            Ok(BatchOutcome::Success)
        }
    }

    fn worker(
        id: &str,
        store: &MemoryLeaseStore,
        table: &Arc<FakeTable>,
        collect: &Arc<Collect>,
    ) -> Snapshots {
        let processor: Arc<dyn Processor> = Arc::clone(collect) as Arc<dyn Processor>;
        Snapshots::new(
            SnapshotSettings {
                mode: SnapshotMode::On,
                segments: 4,
                rcu: 1000.0,
                page_items: 10,
                tables: vec!["orders".into()],
                on_trimmed: OnTrimmed::Skip,
            },
            id,
            Duration::from_secs(10),
            Arc::clone(table) as Arc<dyn TablesApi>,
            Arc::new(store.clone()),
            vec![Arc::new(Dispatcher::new(vec![processor]))],
        )
    }

    async fn look(
        snapshots: &mut Snapshots,
        store: &MemoryLeaseStore,
        live: usize,
    ) -> HashMap<String, Lease> {
        let leases: HashMap<String, Lease> = store
            .all()
            .into_iter()
            .map(|l| (l.key.clone(), l))
            .collect();
        snapshots.tick(&leases, |_| false, live).await;
        leases
    }

    #[tokio::test(start_paused = true)]
    async fn a_second_worker_is_handed_half_the_segments_and_nothing_is_delivered_twice() {
        let store = MemoryLeaseStore::new();
        let table = Arc::new(FakeTable { items: 400 });
        let collect = Arc::new(Collect::default());
        let mut first = worker("first", &store, &table, &collect);
        let mut second = worker("second", &store, &table, &collect);
        let shutdown = CancellationToken::new();
        first.register_configured(&shutdown).await.unwrap();
        second.register_configured(&shutdown).await.unwrap();
        // Alone, the first worker creates the segments and takes them all.
        look(&mut first, &store, 1).await;
        look(&mut first, &store, 1).await;
        assert_eq!(first.held.len(), 4);
        let mut owners_seen: BTreeMap<String, usize> = BTreeMap::new();
        for _ in 0..200 {
            look(&mut second, &store, 2).await;
            let leases = look(&mut first, &store, 2).await;
            for lease in leases.values().filter(|l| l.kind() == ItemKind::Segment) {
                if let Some(owner) = &lease.owner {
                    *owners_seen.entry(owner.clone()).or_default() += 1;
                }
            }
            if first.finished(&leases) && second.finished(&leases) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let leases: HashMap<String, Lease> = store
            .all()
            .into_iter()
            .map(|l| (l.key.clone(), l))
            .collect();
        assert!(first.finished(&leases), "{leases:#?}");
        assert!(
            owners_seen.contains_key("second"),
            "the second worker scanned too: {owners_seen:?}"
        );
        let delivered = lock(&collect.0).clone();
        let distinct: std::collections::HashSet<&String> = delivered.iter().collect();
        assert_eq!(distinct.len(), 400, "every item");
        assert_eq!(
            delivered.len(),
            400,
            "once each: hand-offs happen between pages"
        );
        first.shut_down(Duration::from_secs(1)).await;
        second.shut_down(Duration::from_secs(1)).await;
    }
}

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

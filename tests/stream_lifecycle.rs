//! A table's stream disabled and enabled again (a new stream ARN): the
//! worker drains what the old stream still holds, then follows the new one
//! from its start. Streams come from the scripted endpoint, leases from
//! DynamoDB Local.

mod support;

use std::time::Duration;

use dynastream::record::EventName;
use dynastream::streams::memory::MemoryStreams;
use support::scripted_streams::ScriptedStreams;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_re_enabled_stream_is_followed_from_its_start_after_the_old_one_drains() {
    let model = MemoryStreams::new();
    let table = unique_name("lifecycle");
    let old = model.create_stream(&table, "shard-old");
    model.put(&old, "shard-old", EventName::Insert, "old-1");
    model.put(&old, "shard-old", EventName::Insert, "old-2");
    let server = ScriptedStreams::start(model.clone()).await;
    let mut env = worker_env(&[
        ("DYNASTREAM_TABLES", &table),
        ("DYNASTREAM_APPLICATION", &unique_name("lifecycle-app")),
        ("DYNASTREAM_STARTING_POSITION", "TRIM_HORIZON"),
        ("DYNASTREAM_SHARD_SYNC_INTERVAL_MS", "1000"),
    ]);
    env.push(server.endpoint_env());
    let worker = Worker::start(&env);
    worker.wait_for_records(2, WAIT).await;

    // The stream is disabled with one record still unread, and enabled again:
    // the table now has a second stream, with changes of its own.
    model.put(&old, "shard-old", EventName::Modify, "old-3");
    model.disable_stream(&old);
    let new = model.create_stream(&table, "shard-new");
    assert!(model.stream_label(&new) > model.stream_label(&old));
    model.put(&new, "shard-new", EventName::Insert, "new-1");
    model.put(&new, "shard-new", EventName::Insert, "new-2");

    worker.wait_for_records(5, WAIT).await;
    // Once drained, the disabled stream is no longer listed.
    worker.wait_for_log("no longer following it", 1, WAIT).await;
    // (A listing already queued when it was dropped may still go out.)
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.clear_calls();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let old_listings = server
        .requests(dynastream::streams::memory::Operation::DescribeStream)
        .into_iter()
        .filter(|r| r["StreamArn"] == old.as_str())
        .count();
    assert_eq!(
        old_listings, 0,
        "the drained, disabled stream is not listed any more"
    );
    let (status, records, logs) = worker.terminate().await;
    assert!(status.success(), "{}", logs.join("\n"));
    let of_stream = |arn: &str| -> Vec<String> {
        let from: Vec<serde_json::Value> = records
            .iter()
            .filter(|r| r["eventSourceARN"] == arn)
            .cloned()
            .collect();
        keys_of(&from)
    };
    assert_eq!(
        of_stream(&old),
        ["old-1", "old-2", "old-3"],
        "the old stream drained"
    );
    assert_eq!(
        of_stream(&new),
        ["new-1", "new-2"],
        "the new stream from its start"
    );
    assert_eq!(records.len(), 5, "nothing twice");
    assert!(logs
        .iter()
        .any(|l| l.contains("the table has a new stream")));
    server.shutdown().await;
}

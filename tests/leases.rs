//! The lease table against DynamoDB Local: fencing of a worker whose lease
//! was taken, resuming from a lease table written by the Java KCL, and
//! `dynastream status`.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use dynastream::lease::dynamo::DynamoLeaseStore;
use dynastream::lease::held::HeldLease;
use dynastream::lease::{Checkpoint, ItemKind, Lease, LeaseError, LeaseStore, PipelineStart};
use dynastream::record::SequenceNumber;
use support::*;
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_lease_was_taken_cannot_checkpoint() {
    let store = lease_store(&unique_name("fencing-leases")).await;
    store.ensure_table().await.unwrap();
    let lease = Lease::new("arn:stream", "shardId-1", None, Checkpoint::TrimHorizon);
    assert!(store.create_lease_if_absent(&lease).await.unwrap());
    assert!(
        !store.create_lease_if_absent(&lease).await.unwrap(),
        "created once"
    );
    let taken = store.take_lease(&lease, "worker-a").await.unwrap();
    let worker_a = HeldLease::new(
        Arc::new(store.clone()),
        taken,
        Duration::from_secs(10),
        Instant::now(),
    );
    worker_a
        .checkpoint(&Checkpoint::Sequence(SequenceNumber::from("100")))
        .await
        .unwrap();

    let current = store
        .list_leases()
        .await
        .unwrap()
        .leases
        .into_iter()
        .find(|l| l.key == "shardId-1")
        .unwrap();
    let stolen = store.take_lease(&current, "worker-b").await.unwrap();
    assert_eq!(stolen.owner_switches_since_checkpoint, 1);

    let refused = worker_a
        .checkpoint(&Checkpoint::Sequence(SequenceNumber::from("200")))
        .await;
    assert!(
        matches!(refused, Err(LeaseError::Conflict { .. })),
        "{refused:?}"
    );
    assert!(worker_a.is_lost() && !worker_a.is_valid());
    assert!(matches!(
        worker_a.renew().await,
        Err(LeaseError::Conflict { .. })
    ));
    let stored = store
        .list_leases()
        .await
        .unwrap()
        .leases
        .into_iter()
        .find(|l| l.key == "shardId-1")
        .unwrap();
    assert_eq!(stored.owner.as_deref(), Some("worker-b"));
    assert_eq!(
        stored.checkpoint,
        Checkpoint::Sequence(SequenceNumber::from("100"))
    );
}

/// A new lease table `table` with one shard lease, held by `worker-a`.
async fn held_by_worker_a(table: &str) -> (DynamoLeaseStore, HeldLease) {
    let store = lease_store(table).await;
    store.ensure_table().await.unwrap();
    let lease = Lease::new("arn:stream", "shardId-1", None, Checkpoint::TrimHorizon);
    store.create_lease_if_absent(&lease).await.unwrap();
    let taken = store.take_lease(&lease, "worker-a").await.unwrap();
    let held = HeldLease::new(
        Arc::new(store.clone()),
        taken,
        Duration::from_secs(10),
        Instant::now(),
    );
    (store, held)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_checkpoints_are_one_fenced_map_beside_the_kcl_checkpoint() {
    let table = unique_name("pipeline-leases");
    let (store, held) = held_by_worker_a(&table).await;
    let declared = ["search", "audit"].map(|name| PipelineStart {
        name: name.into(),
        from_trim_horizon: false,
    });
    let seq = |n: &str| Checkpoint::Sequence(SequenceNumber::from(n));
    held.checkpoint_pipeline("search", &seq("500"), &declared)
        .await
        .unwrap();
    held.checkpoint_pipeline("audit", &seq("300"), &declared)
        .await
        .unwrap();

    let client = dynamodb().await;
    let item = client
        .get_item()
        .table_name(&table)
        .key("leaseKey", AttributeValue::S("shardId-1".into()))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item
        .unwrap();
    assert_eq!(item["checkpoint"], AttributeValue::S("300".into()));
    let map = item["pipelineCheckpoints"].as_m().unwrap();
    assert_eq!(map["search"], AttributeValue::S("500".into()));
    assert_eq!(map["audit"], AttributeValue::S("300".into()));

    let stored = store.list_leases().await.unwrap().leases.remove(0);
    assert_eq!(stored.pipeline_checkpoints["search"], seq("500"));
    let stolen = store.take_lease(&stored, "worker-b").await.unwrap();
    let refused = held
        .checkpoint_pipeline("audit", &seq("900"), &declared)
        .await;
    assert!(
        matches!(refused, Err(LeaseError::Conflict { .. })),
        "{refused:?}"
    );
    let after = store.list_leases().await.unwrap().leases.remove(0);
    assert_eq!(
        after.counter, stolen.counter,
        "the fenced write changed nothing"
    );
    assert_eq!(after.pipeline_checkpoints["audit"], seq("300"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_pipelines_entry_goes_without_fencing_the_owner_and_is_never_written_back() {
    let (store, held) = held_by_worker_a(&unique_name("pipeline-cleanup")).await;
    let seq = |n: &str| Checkpoint::Sequence(SequenceNumber::from(n));
    let start = |name: &str| PipelineStart {
        name: name.into(),
        from_trim_horizon: false,
    };
    // An earlier deployment declared `old` as well.
    held.checkpoint_pipeline("old", &seq("100"), &[start("kept"), start("old")])
        .await
        .unwrap();
    // The leader removes `old`'s entry while `worker-a` holds the lease.
    let stored = store.list_leases().await.unwrap().leases.remove(0);
    store
        .remove_pipeline_checkpoints(&stored, &["old".to_owned()])
        .await
        .unwrap();
    let after_removal = store.list_leases().await.unwrap().leases.remove(0);
    assert_eq!(after_removal.counter, stored.counter, "not a fencing write");
    // The owner, now declaring only `kept`, goes on writing: its write is
    // accepted and does not bring `old` back.
    held.checkpoint_pipeline("kept", &seq("700"), &[start("kept")])
        .await
        .unwrap();
    let after = store.list_leases().await.unwrap().leases.remove(0);
    assert_eq!(
        after.pipeline_checkpoints.keys().collect::<Vec<_>>(),
        ["kept"]
    );
    assert_eq!(after.pipeline_checkpoints["kept"], seq("700"));
    assert_eq!(after.checkpoint, seq("700"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_worker_stops_a_shard_whose_lease_was_taken() {
    let client = dynamodb().await;
    let table = unique_name("fenced");
    create_table(&client, &table).await;
    let application = unique_name("fenced-app");
    let worker = Worker::start(&worker_env(&[
        ("DYNASTREAM_TABLES", &table),
        ("DYNASTREAM_APPLICATION", &application),
        ("DYNASTREAM_WORKER_ID", "victim"),
        ("DYNASTREAM_LEASE_DURATION_MS", "3000"),
    ]));
    worker.wait_for_log("shard consumer started", 1, WAIT).await;
    put(&client, &table, "before", 1).await;
    worker.wait_for_records(1, WAIT).await;

    // Another "worker" takes the lease and keeps renewing it. The victim
    // may checkpoint or renew between the scan and the take (the take is
    // conditional on the lease counter): scan again and retry then.
    let store = lease_store(&format!("{application}-leases")).await;
    let mut attempts = 0;
    let taken = loop {
        let scan = store.list_leases().await.unwrap();
        let lease = scan
            .leases
            .into_iter()
            .find(|l| l.kind() == ItemKind::Shard && l.owner.as_deref() == Some("victim"))
            .unwrap();
        match store.take_lease(&lease, "thief").await {
            Ok(taken) => break taken,
            Err(LeaseError::Conflict { .. }) if attempts < 20 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(err) => panic!("take the lease: {err}"),
        }
    };
    let thief = HeldLease::new(
        Arc::new(store.clone()),
        taken,
        Duration::from_secs(3),
        Instant::now(),
    );
    worker
        .wait_for_log("stopped reading a shard whose lease was lost", 1, WAIT)
        .await;
    for i in 0..3 {
        put(&client, &table, &format!("after-{i}"), i).await;
    }
    let renew_until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < renew_until {
        thief.renew().await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        keys_of(&worker.records()),
        ["before"],
        "nothing read under a lost lease"
    );

    // Once the other worker lets go, the shard comes back and nothing is lost.
    thief.release().await.unwrap();
    worker.wait_for_records(4, WAIT).await;
    let (status, records, _) = worker.terminate().await;
    assert!(status.success());
    assert_eq!(
        keys_of(&records),
        ["before", "after-0", "after-1", "after-2"]
    );
}

/// Writes a lease item exactly as the Java KCL 2.x/3.x (single-stream, with
/// the DynamoDB Streams Kinesis Adapter) leaves it, extra attributes included.
async fn put_kcl_item(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    shard_id: &str,
    checkpoint: &str,
    owner: Option<&str>,
) {
    let mut item = HashMap::from([
        ("leaseKey".to_string(), AttributeValue::S(shard_id.into())),
        ("leaseCounter".to_string(), AttributeValue::N("42".into())),
        (
            "checkpoint".to_string(),
            AttributeValue::S(checkpoint.into()),
        ),
        (
            "checkpointSubSequenceNumber".to_string(),
            AttributeValue::N("0".into()),
        ),
        (
            "ownerSwitchesSinceCheckpoint".to_string(),
            AttributeValue::N("0".into()),
        ),
        ("startingHashKey".to_string(), AttributeValue::S("0".into())),
        (
            "endingHashKey".to_string(),
            AttributeValue::S("340282366920938463463374607431768211455".into()),
        ),
    ]);
    if let Some(owner) = owner {
        item.insert("leaseOwner".to_string(), AttributeValue::S(owner.into()));
    }
    put_item(client, table, item).await;
}

async fn create_kcl_lease_table(client: &aws_sdk_dynamodb::Client, table: &str) {
    create_plain_table(client, table, "leaseKey").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kcl_lease_table_is_resumed_from_its_checkpoints() {
    let client = dynamodb().await;
    let table = unique_name("from-kcl");
    let stream_arn = create_table(&client, &table).await;
    for i in 0..5 {
        put(&client, &table, &format!("kcl-{i}"), i).await;
    }
    let (shard_id, sequence_numbers) = shard_and_sequence_numbers(&stream_arn).await;
    assert_eq!(sequence_numbers.len(), 5);
    let lease_table = unique_name("kcl-app");
    create_kcl_lease_table(&client, &lease_table).await;
    // The KCL worker processed the first three records, then went away
    // without releasing its lease (its counter will not move again).
    put_kcl_item(
        &client,
        &lease_table,
        &shard_id,
        &sequence_numbers[2],
        Some("kcl-worker-1"),
    )
    .await;

    let started = Instant::now();
    let worker = Worker::start(&worker_env(&[
        ("DYNASTREAM_TABLES", &table),
        ("DYNASTREAM_LEASE_TABLE", &lease_table),
        ("DYNASTREAM_LEASE_DURATION_MS", "3000"),
        // TRIM_HORIZON would re-read everything if the checkpoint were ignored.
        ("DYNASTREAM_STARTING_POSITION", "TRIM_HORIZON"),
    ]));
    worker.wait_for_records(2, WAIT).await;
    let waited = started.elapsed();
    put(&client, &table, "after-migration", 9).await;
    worker.wait_for_records(3, WAIT).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (status, records, _) = worker.terminate().await;
    assert!(status.success());
    assert_eq!(
        keys_of(&records),
        ["kcl-3", "kcl-4", "after-migration"],
        "no reprocessing, no loss"
    );
    assert!(
        waited >= Duration::from_secs(3),
        "the KCL owner's lease was left to expire first: {waited:?}"
    );

    let item = client
        .get_item()
        .table_name(&lease_table)
        .key("leaseKey", AttributeValue::S(shard_id.clone()))
        .send()
        .await
        .unwrap()
        .item
        .unwrap();
    assert!(
        item.contains_key("startingHashKey"),
        "the KCL's own attributes are kept"
    );
    assert!(!item.contains_key("leaseOwner"), "released at shutdown");
    let checkpoint = item["checkpoint"].as_s().unwrap().clone();
    assert_eq!(
        checkpoint,
        records.last().unwrap()["dynamodb"]["SequenceNumber"]
            .as_str()
            .unwrap(),
        "checkpointed in the KCL's format: the plain sequence number"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kcl_sentinels_and_released_leases_are_understood() {
    let client = dynamodb().await;
    let table = unique_name("kcl-sentinel");
    let stream_arn = create_table(&client, &table).await;
    put(&client, &table, "old", 1).await;
    let (shard_id, _) = shard_and_sequence_numbers(&stream_arn).await;
    let lease_table = unique_name("kcl-released");
    create_kcl_lease_table(&client, &lease_table).await;
    // A released KCL lease (no owner) at TRIM_HORIZON: taken at once, read from the start.
    put_kcl_item(&client, &lease_table, &shard_id, "TRIM_HORIZON", None).await;
    let started = Instant::now();
    let worker = Worker::start(&worker_env(&[
        ("DYNASTREAM_TABLES", &table),
        ("DYNASTREAM_LEASE_TABLE", &lease_table),
        ("DYNASTREAM_STARTING_POSITION", "LATEST"),
    ]));
    worker.wait_for_records(1, WAIT).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "no wait for a released lease"
    );
    let (_, records, _) = worker.terminate().await;
    assert_eq!(
        keys_of(&records),
        ["old"],
        "the KCL's TRIM_HORIZON wins over our LATEST"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_prints_the_lease_table_as_text_and_json() {
    let client = dynamodb().await;
    let table = unique_name("status");
    create_table(&client, &table).await;
    let application = unique_name("status-app");
    let worker = Worker::start(&worker_env(&[
        ("DYNASTREAM_TABLES", &table),
        ("DYNASTREAM_APPLICATION", &application),
        ("DYNASTREAM_WORKER_ID", "status-worker"),
    ]));
    worker.wait_for_log("shard consumer started", 1, WAIT).await;
    put(&client, &table, "one", 1).await;
    worker.wait_for_records(1, WAIT).await;

    let run_status = |json: bool| {
        let args: &[&str] = if json { &["--json"] } else { &["--lag"] };
        dynastream_status(&application, args)
    };
    let text = run_status(false);
    assert!(
        text.status.success(),
        "{}",
        String::from_utf8_lossy(&text.stderr)
    );
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(
        text.contains("STREAM") && text.contains("CHECKPOINT"),
        "{text}"
    );
    assert!(
        text.contains("status-worker") && text.contains("active"),
        "{text}"
    );
    assert!(text.contains(&table), "{text}");
    assert!(
        text.contains("LAG_SECONDS") && text.lines().nth(2).is_some_and(|l| l.ends_with(" 0")),
        "caught up: no record waits\n{text}"
    );

    let json = run_status(true);
    assert!(json.status.success());
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let shard = &report["shards"][0];
    assert_eq!(shard["owner"], "status-worker");
    assert_eq!(shard["state"], "active");
    assert_eq!(
        shard["checkpoint"],
        worker.records()[0]["dynamodb"]["SequenceNumber"],
        "the checkpoint is the last processed record"
    );
    assert_eq!(report["workers"][0]["worker"], "status-worker");
    assert_eq!(report["workers"][0]["leader"], true);
    worker.terminate().await;
}

/// The indexes of a lease table, by name: (key attributes, projection).
async fn indexes_of(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
) -> HashMap<String, (Vec<String>, String, String)> {
    let described = client
        .describe_table()
        .table_name(table)
        .send()
        .await
        .unwrap();
    described
        .table
        .unwrap()
        .global_secondary_indexes()
        .iter()
        .map(|index| {
            let keys = index
                .key_schema()
                .iter()
                .map(|k| format!("{}:{}", k.attribute_name(), k.key_type().as_str()))
                .collect();
            let projection = index
                .projection()
                .and_then(|p| p.projection_type())
                .map(|p| p.as_str().to_owned())
                .unwrap_or_default();
            let status = index
                .index_status()
                .map(|s| s.as_str().to_owned())
                .unwrap_or_default();
            (
                index.index_name().unwrap_or_default().to_owned(),
                (keys, projection, status),
            )
        })
        .collect()
}

/// Asks the store until it says its indexes are ACTIVE (adding each).
async fn wait_for_indexes(store: &DynamoLeaseStore) {
    eventually(WAIT, "the lease table's indexes are ACTIVE", || async {
        match store.indexes_ready().await {
            Ok(true) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kcl_lease_table_gets_the_kcls_owner_index_and_ours_and_the_cheap_reads_answer() {
    let client = dynamodb().await;
    let lease_table = unique_name("kcl-indexed");
    create_kcl_lease_table(&client, &lease_table).await;
    put_kcl_item(
        &client,
        &lease_table,
        "shardId-kcl-owned",
        "TRIM_HORIZON",
        Some("kcl-worker-1"),
    )
    .await;
    put_kcl_item(
        &client,
        &lease_table,
        "shardId-kcl-free",
        "TRIM_HORIZON",
        None,
    )
    .await;
    let store = lease_store(&lease_table).await;
    store.ensure_table().await.unwrap();
    wait_for_indexes(&store).await;
    let indexes = indexes_of(&client, &lease_table).await;
    assert_eq!(
        indexes["LeaseOwnerToLeaseKeyIndex"],
        (
            vec!["leaseOwner:HASH".to_owned(), "leaseKey:RANGE".to_owned()],
            "KEYS_ONLY".to_owned(),
            "ACTIVE".to_owned()
        ),
        "exactly as the KCL 3.x creates it"
    );
    assert_eq!(
        indexes["DynastreamIndex"],
        (
            vec![
                "dynastreamIndex:HASH".to_owned(),
                "leaseKey:RANGE".to_owned()
            ],
            "ALL".to_owned(),
            "ACTIVE".to_owned()
        )
    );
    // The KCL's items are in the owner index (backfilled), not in ours:
    // an unowned KCL lease is found by the periodic whole scan.
    assert_eq!(
        store.list_owned("kcl-worker-1").await.unwrap(),
        ["shardId-kcl-owned"]
    );
    assert!(store.list_free().await.unwrap().leases.is_empty());

    let lease = Lease::new("arn:stream", "shardId-1", None, Checkpoint::TrimHorizon);
    assert!(store.create_lease_if_absent(&lease).await.unwrap());
    let free_keys = |scan: dynastream::lease::LeaseScan| -> Vec<String> {
        scan.leases.into_iter().map(|l| l.key).collect()
    };
    assert_eq!(free_keys(store.list_free().await.unwrap()), ["shardId-1"]);
    let taken = store.take_lease(&lease, "worker-a").await.unwrap();
    assert!(
        store.list_free().await.unwrap().leases.is_empty(),
        "owned: out of the free list"
    );
    assert_eq!(store.list_owned("worker-a").await.unwrap(), ["shardId-1"]);
    let renewed = store.renew_lease(&taken).await.unwrap();
    let released = store.release_lease(&renewed).await.unwrap();
    assert_eq!(
        free_keys(store.list_free().await.unwrap()),
        ["shardId-1"],
        "released: free again"
    );
    // A lease read to its end is not free to take, even released.
    let taken = store.take_lease(&released, "worker-a").await.unwrap();
    let ended = store
        .update_checkpoint(&taken, &Checkpoint::ShardEnd)
        .await
        .unwrap();
    store.release_lease(&ended).await.unwrap();
    assert!(store.list_free().await.unwrap().leases.is_empty());

    let presence = Lease::worker_presence("worker-a");
    assert!(store.create_lease_if_absent(&presence).await.unwrap());
    let presence = store.take_lease(&presence, "worker-a").await.unwrap();
    let presence = store.renew_presence(&presence, 7).await.unwrap();
    assert_eq!(presence.held_leases, Some(7));
    let meta = store.list_meta().await.unwrap().leases;
    assert_eq!(meta.len(), 1);
    assert_eq!(meta[0].key, presence.key);
    assert_eq!(meta[0].held_leases, Some(7));
    assert_eq!(meta[0].counter, presence.counter);
    let read = store.get_lease(&presence.key, true).await.unwrap().unwrap();
    assert_eq!(read, presence);
    assert_eq!(store.get_lease("shardId-none", false).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_lease_table_has_both_indexes_from_the_start() {
    let client = dynamodb().await;
    let lease_table = unique_name("new-indexed");
    let store = lease_store(&lease_table).await;
    store.ensure_table().await.unwrap();
    wait_for_indexes(&store).await;
    let indexes = indexes_of(&client, &lease_table).await;
    assert_eq!(indexes.len(), 2, "{indexes:?}");
    assert!(indexes.contains_key("LeaseOwnerToLeaseKeyIndex"));
    assert!(indexes.contains_key("DynastreamIndex"));
}

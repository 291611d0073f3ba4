//! Items at DynamoDB's limits reach processors intact: an item near the
//! 400 KB maximum, attribute names and values in any Unicode, maps and lists
//! nested 30 levels deep, sets and binary at their edges. And a lease table
//! holding an item that is not a lease: a clear error naming it, and the rest
//! keeps working.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;
use serde_json::{json, Value};
use support::*;

fn nested(depth: usize) -> (AttributeValue, Value) {
    let mut sdk = AttributeValue::S("bottom".into());
    let mut expected = json!({"S": "bottom"});
    for level in 0..depth {
        if level % 2 == 0 {
            sdk = AttributeValue::M(HashMap::from([(format!("level{level}"), sdk)]));
            expected = json!({"M": {format!("level{level}"): expected}});
        } else {
            sdk = AttributeValue::L(vec![sdk]);
            expected = json!({"L": [expected]});
        }
    }
    (sdk, expected)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_at_dynamodbs_limits_arrive_intact() {
    let client = dynamodb().await;
    let table = unique_name("limits");
    create_table(&client, &table).await;
    let worker = Worker::start(&worker_env(&[
        ("DYNASTREAM_TABLES", &table),
        ("DYNASTREAM_APPLICATION", &unique_name("limits-app")),
    ]));
    worker.wait_for_log("shard consumer started", 1, WAIT).await;

    // Near the 400 KB item limit (the name and key count too).
    let big = "x".repeat(395 * 1024);
    let unicode_name = "名前 ✓ émoji 🦀 \u{200b}zero-width";
    let unicode_value = "Ωμέγα — \"quotes\" \\ backslash \n newline \t tab 🦀";
    let (deep, deep_expected) = nested(30);
    let items = [
        HashMap::from([
            ("pk".to_string(), AttributeValue::S("big".into())),
            ("payload".to_string(), AttributeValue::S(big.clone())),
        ]),
        HashMap::from([
            ("pk".to_string(), AttributeValue::S("ключ-🔑".into())),
            (
                unicode_name.to_string(),
                AttributeValue::S(unicode_value.into()),
            ),
            ("empty".to_string(), AttributeValue::S(String::new())),
        ]),
        HashMap::from([
            ("pk".to_string(), AttributeValue::S("deep".into())),
            ("tree".to_string(), deep),
        ]),
        HashMap::from([
            ("pk".to_string(), AttributeValue::S("edges".into())),
            (
                "n".to_string(),
                AttributeValue::N("-0.0000000000000000000000000000000000001".into()),
            ),
            (
                "big_n".to_string(),
                AttributeValue::N("9.9999999999999999999999999999999999999E+125".into()),
            ),
            (
                "bin".to_string(),
                AttributeValue::B(Blob::new((0..=255u8).collect::<Vec<_>>())),
            ),
            (
                "empty_bin".to_string(),
                AttributeValue::B(Blob::new(Vec::new())),
            ),
            (
                "ns".to_string(),
                AttributeValue::Ns((0..100).map(|i| i.to_string()).collect()),
            ),
        ]),
    ];
    for item in items {
        put_item(&client, &table, item).await;
    }
    let records = worker.wait_for_records(4, WAIT).await;
    let (status, _, _) = worker.terminate().await;
    assert!(status.success());

    let image = |i: usize| records[i]["dynamodb"]["NewImage"].clone();
    assert_eq!(
        image(0)["payload"]["S"].as_str().map(str::len),
        Some(big.len())
    );
    assert!(records[0]["dynamodb"]["SizeBytes"].as_i64().unwrap() > 395 * 1024);
    assert_eq!(image(1)[unicode_name], json!({"S": unicode_value}));
    assert_eq!(image(1)["empty"], json!({"S": ""}));
    assert_eq!(records[1]["dynamodb"]["Keys"]["pk"]["S"], "ключ-🔑");
    assert_eq!(image(2)["tree"], deep_expected);
    let edges = image(3);
    assert_eq!(
        edges["n"]["N"].as_str().unwrap().parse::<f64>().unwrap(),
        -1e-37
    );
    assert_eq!(
        edges["bin"]["B"],
        base64_of(&(0..=255u8).collect::<Vec<_>>())
    );
    assert_eq!(edges["empty_bin"], json!({"B": ""}));
    assert_eq!(edges["ns"]["NS"].as_array().unwrap().len(), 100);
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_lease_item_is_named_and_the_rest_keeps_working() {
    let client = dynamodb().await;
    let table = unique_name("malformed");
    create_table(&client, &table).await;
    let application = unique_name("malformed-app");
    let worker = Worker::start(&worker_env(&[
        ("DYNASTREAM_TABLES", &table),
        ("DYNASTREAM_APPLICATION", &application),
        // An item that is not a lease is in neither index: only a whole
        // scan shows it, every DYNASTREAM_LEASE_SCAN_INTERVAL_MS.
        ("DYNASTREAM_LEASE_SCAN_INTERVAL_MS", "2000"),
    ]));
    worker.wait_for_log("shard consumer started", 1, WAIT).await;
    client
        .put_item()
        .table_name(format!("{application}-leases"))
        .item("leaseKey", AttributeValue::S("shardId-not-a-lease".into()))
        .item("leaseCounter", AttributeValue::S("seven".into()))
        .send()
        .await
        .unwrap();
    worker.wait_for_log("shardId-not-a-lease", 1, WAIT).await;
    put(&client, &table, "after", 1).await;
    worker.wait_for_records(1, WAIT).await;
    let (status, _, logs) = worker.terminate().await;
    assert!(status.success());
    let line = logs
        .iter()
        .find(|l| l.contains("shardId-not-a-lease"))
        .unwrap();
    assert!(
        line.contains("leaseCounter"),
        "the error says what is wrong: {line}"
    );
    assert_eq!(
        logs.iter()
            .filter(|l| l.contains("shardId-not-a-lease"))
            .count(),
        1,
        "reported once, not at every look at the table"
    );
    assert!(!logs.iter().any(|l| l.contains("panicked")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_lease_table_stops_processing_loudly_until_it_is_back() {
    let client = dynamodb().await;
    let table = unique_name("no-lease-table");
    create_table(&client, &table).await;
    let application = unique_name("no-lease-app");
    let lease_table = format!("{application}-leases");
    let worker = Worker::start(&worker_env(&[
        ("DYNASTREAM_TABLES", &table),
        ("DYNASTREAM_APPLICATION", &application),
        ("DYNASTREAM_LEASE_DURATION_MS", "3000"),
    ]));
    let base = worker.endpoints().await;
    worker.wait_for_log("shard consumer started", 1, WAIT).await;
    wait_for_http(&format!("{base}/readyz"), 200).await;

    client
        .delete_table()
        .table_name(&lease_table)
        .send()
        .await
        .unwrap();
    worker
        .wait_for_log("the lease table no longer exists", 1, WAIT)
        .await;
    wait_for_http(&format!("{base}/readyz"), 503).await;
    assert_eq!(
        http_get(&format!("{base}/healthz")).0,
        200,
        "alive, just not ready"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let reported = worker
        .logs()
        .iter()
        .filter(|l| l.contains("the lease table no longer exists"))
        .count();
    assert_eq!(reported, 1, "said once, clearly, not at every look");

    // An operator recreates it: the worker picks up again.
    create_plain_table(&client, &lease_table, "leaseKey").await;
    worker
        .wait_for_log("the lease table is back", 1, WAIT)
        .await;
    wait_for_http(&format!("{base}/readyz"), 200).await;
    worker.wait_for_log("shard consumer started", 2, WAIT).await;
    put(&client, &table, "after", 1).await;
    worker.wait_for_records(1, WAIT).await;
    let (status, _, logs) = worker.terminate().await;
    assert!(status.success());
    assert!(!logs.iter().any(|l| l.contains("panicked")));
}

/// GetRecords answers are parsed straight into dynastream's record model
/// (`streams::wire`); the same pages read through the SDK's own parser and
/// converted must give exactly the same records, for every attribute type,
/// any Unicode, deep nesting, and INSERT, MODIFY and REMOVE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_parsed_from_the_wire_equal_the_sdks() {
    use dynastream::streams::sdk::SdkStreams;
    use dynastream::streams::{IteratorPosition, StreamsApi};

    let client = dynamodb().await;
    let table = unique_name("wire");
    let stream_arn = create_table(&client, &table).await;
    let (deep, _) = nested(30);
    let every_type = HashMap::from([
        ("pk".to_string(), AttributeValue::S("types".into())),
        (
            "s".to_string(),
            AttributeValue::S("Ωμέγα \"q\" \\ \n\t\u{1} 🦀".into()),
        ),
        ("n".to_string(), AttributeValue::N("-12.5E+3".into())),
        (
            "b".to_string(),
            AttributeValue::B(Blob::new((0..=255u8).collect::<Vec<_>>())),
        ),
        (
            "ss".to_string(),
            AttributeValue::Ss(vec!["a".into(), "名前".into()]),
        ),
        (
            "ns".to_string(),
            AttributeValue::Ns(vec!["1".into(), "0.001".into()]),
        ),
        (
            "bs".to_string(),
            AttributeValue::Bs(vec![Blob::new(vec![0]), Blob::new(vec![1, 2])]),
        ),
        ("nul".to_string(), AttributeValue::Null(true)),
        ("yes".to_string(), AttributeValue::Bool(true)),
        ("tree".to_string(), deep),
        ("empty_m".to_string(), AttributeValue::M(HashMap::new())),
        ("empty_l".to_string(), AttributeValue::L(Vec::new())),
    ]);
    put_item(&client, &table, every_type).await;
    for key in ["a", "b", "c"] {
        put(&client, &table, key, 1).await;
    }
    put(&client, &table, "a", 2).await;
    delete(&client, &table, "b").await;

    let (shard_id, _) = shard_and_sequence_numbers(&stream_arn).await;
    let read_all = |streams: SdkStreams| {
        let stream_arn = stream_arn.clone();
        let shard_id = shard_id.clone();
        async move {
            let mut iterator = streams
                .get_shard_iterator(&stream_arn, &shard_id, &IteratorPosition::TrimHorizon)
                .await
                .expect("an iterator");
            let mut records = Vec::new();
            while let Some(current) = iterator.take() {
                // Small pages, so that several answers are parsed.
                let page = streams
                    .get_records(&stream_arn, &current, 2)
                    .await
                    .expect("a page");
                if page.records.is_empty() {
                    break;
                }
                records.extend(page.records);
                iterator = page.next_iterator;
            }
            records
        }
    };
    let streams = dynamodb_streams().await;
    let parsed_before = dynastream::streams::wire::answers_parsed();
    let from_the_wire = read_all(SdkStreams::new(streams.clone())).await;
    let parsed_here = dynastream::streams::wire::answers_parsed() - parsed_before;
    assert!(
        parsed_here >= 3,
        "three pages of two parsed from the wire, not {parsed_here}"
    );
    let through_the_sdk = read_all(SdkStreams::new(streams).with_sdk_parsing()).await;
    assert_eq!(
        dynastream::streams::wire::answers_parsed() - parsed_before,
        parsed_here,
        "with_sdk_parsing leaves every page to the SDK"
    );
    assert_eq!(from_the_wire.len(), 6, "every change read");
    let names: Vec<_> = from_the_wire
        .iter()
        .map(|r| r.event_name.as_str())
        .collect();
    assert_eq!(
        names,
        ["INSERT", "INSERT", "INSERT", "INSERT", "MODIFY", "REMOVE"]
    );
    assert!(from_the_wire[4].dynamodb.old_image.is_some());
    assert_eq!(from_the_wire, through_the_sdk);
}

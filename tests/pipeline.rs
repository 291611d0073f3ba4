//! One worker, end to end, against DynamoDB Local with the real AWS SDK:
//! records in Lambda's shape, restarts, starting positions, several tables,
//! streams by ARN.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;
use serde_json::json;
use support::*;

fn every_type_item(key: &str) -> HashMap<String, AttributeValue> {
    let mut nested = HashMap::new();
    nested.insert("inner".to_string(), AttributeValue::S("ünïcødé ✓".into()));
    nested.insert(
        "deeper".to_string(),
        AttributeValue::M(HashMap::from([(
            "n".to_string(),
            AttributeValue::N("-0.001".into()),
        )])),
    );
    HashMap::from([
        ("pk".to_string(), AttributeValue::S(key.into())),
        ("s".to_string(), AttributeValue::S("hello".into())),
        (
            "n".to_string(),
            AttributeValue::N("12345678901234567890123456789012345678".into()),
        ),
        ("f".to_string(), AttributeValue::N("3.14159".into())),
        (
            "b".to_string(),
            AttributeValue::B(Blob::new(vec![0u8, 1, 2, 254, 255])),
        ),
        (
            "ss".to_string(),
            AttributeValue::Ss(vec!["a".into(), "b".into()]),
        ),
        (
            "ns".to_string(),
            AttributeValue::Ns(vec!["1".into(), "2.5".into()]),
        ),
        (
            "bs".to_string(),
            AttributeValue::Bs(vec![Blob::new(vec![1u8]), Blob::new(vec![2u8, 3])]),
        ),
        ("m".to_string(), AttributeValue::M(nested)),
        (
            "l".to_string(),
            AttributeValue::L(vec![
                AttributeValue::S("x".into()),
                AttributeValue::N("7".into()),
                AttributeValue::Bool(true),
            ]),
        ),
        ("nul".to_string(), AttributeValue::Null(true)),
        ("t".to_string(), AttributeValue::Bool(false)),
    ])
}

fn sorted(mut values: Vec<serde_json::Value>) -> Vec<serde_json::Value> {
    values.sort_by_key(|v| v.to_string());
    values
}

fn expected_image(key: &str) -> serde_json::Value {
    json!({
        "pk": {"S": key},
        "s": {"S": "hello"},
        "n": {"N": "12345678901234567890123456789012345678"},
        "f": {"N": "3.14159"},
        "b": {"B": "AAEC/v8="},
        "ss": {"SS": ["a", "b"]},
        "ns": {"NS": ["1", "2.5"]},
        "bs": {"BS": ["AQ==", "AgM="]},
        "m": {"M": {"inner": {"S": "ünïcødé ✓"}, "deeper": {"M": {"n": {"N": "-0.001"}}}}},
        "l": {"L": [{"S": "x"}, {"N": "7"}, {"BOOL": true}]},
        "nul": {"NULL": true},
        "t": {"BOOL": false},
    })
}

/// Sets are unordered in DynamoDB: compare them as sorted lists.
fn normalize_sets(value: &serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => serde_json::Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let v = if matches!(k.as_str(), "SS" | "NS" | "BS") {
                        serde_json::Value::Array(sorted(v.as_array().cloned().unwrap_or_default()))
                    } else {
                        normalize_sets(v)
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.iter().map(normalize_sets).collect())
        }
        other => other.clone(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lambda_handler_sees_insert_modify_remove_with_every_attribute_type() {
    let client = dynamodb().await;
    let table = unique_name("handler");
    let stream_arn = create_table(&client, &table).await;
    let worker = Worker::start(&worker_env(&[
        ("DYNASTREAM_TABLES", &table),
        ("DYNASTREAM_APPLICATION", &unique_name("app")),
    ]));
    worker.wait_for_log("shard consumer started", 1, WAIT).await;

    put_item(&client, &table, every_type_item("item-1")).await;
    let mut changed = every_type_item("item-1");
    changed.insert("s".into(), AttributeValue::S("changed".into()));
    put_item(&client, &table, changed).await;
    delete(&client, &table, "item-1").await;

    worker.wait_for_records(3, WAIT).await;
    let (status, records, _) = worker.terminate().await;
    assert!(status.success(), "clean exit: {status:?}");
    assert_eq!(records.len(), 3, "{records:#?}");

    let names: Vec<&str> = records
        .iter()
        .map(|r| r["eventName"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["INSERT", "MODIFY", "REMOVE"]);
    let mut modified = expected_image("item-1");
    modified["s"] = json!({"S": "changed"});
    for record in &records {
        assert_eq!(record["eventSource"], "aws:dynamodb");
        assert_eq!(record["eventSourceARN"], stream_arn.as_str());
        assert_eq!(
            record["awsRegion"].as_str().map(|r| !r.is_empty()),
            Some(true)
        );
        assert!(record["eventID"].as_str().is_some_and(|id| !id.is_empty()));
        assert!(record["eventVersion"].is_string());
        let ddb = &record["dynamodb"];
        assert_eq!(ddb["Keys"], json!({"pk": {"S": "item-1"}}));
        assert_eq!(ddb["StreamViewType"], "NEW_AND_OLD_IMAGES");
        assert!(ddb["SequenceNumber"]
            .as_str()
            .is_some_and(|s| s.bytes().all(|b| b.is_ascii_digit())));
        assert!(ddb["SizeBytes"].as_i64().is_some_and(|n| n > 0));
        assert!(ddb["ApproximateCreationDateTime"]
            .as_i64()
            .is_some_and(|t| t > 1_600_000_000));
    }
    let insert = &records[0]["dynamodb"];
    assert_eq!(
        normalize_sets(&insert["NewImage"]),
        normalize_sets(&expected_image("item-1"))
    );
    assert!(insert.get("OldImage").is_none());
    let modify = &records[1]["dynamodb"];
    assert_eq!(
        normalize_sets(&modify["OldImage"]),
        normalize_sets(&expected_image("item-1"))
    );
    assert_eq!(
        normalize_sets(&modify["NewImage"]),
        normalize_sets(&modified)
    );
    let remove = &records[2]["dynamodb"];
    assert_eq!(
        normalize_sets(&remove["OldImage"]),
        normalize_sets(&modified)
    );
    assert!(remove.get("NewImage").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_worker_resumes_after_its_checkpoint() {
    let client = dynamodb().await;
    let table = unique_name("restart");
    create_table(&client, &table).await;
    let env = worker_env(&[
        ("DYNASTREAM_TABLES", &table),
        ("DYNASTREAM_APPLICATION", &unique_name("app")),
        ("DYNASTREAM_WORKER_ID", "worker-a"),
    ]);
    let first = Worker::start(&env);
    first.wait_for_log("shard consumer started", 1, WAIT).await;
    for i in 0..5 {
        put(&client, &table, &format!("before-{i}"), i).await;
    }
    first.wait_for_records(5, WAIT).await;
    let (status, seen_first, logs) = first.terminate().await;
    assert!(status.success(), "clean exit: {status:?}");
    assert!(
        logs.iter().any(|l| l.contains("leases released")),
        "leases released at shutdown"
    );

    for i in 0..4 {
        put(&client, &table, &format!("while-down-{i}"), i).await;
    }
    let second = Worker::start(&env);
    second.wait_for_records(4, WAIT).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (status, seen_second, _) = second.terminate().await;
    assert!(status.success());

    let expected_first: Vec<String> = (0..5).map(|i| format!("before-{i}")).collect();
    let expected_second: Vec<String> = (0..4).map(|i| format!("while-down-{i}")).collect();
    assert_eq!(keys_of(&seen_first), expected_first);
    assert_eq!(
        keys_of(&seen_second),
        expected_second,
        "nothing twice, nothing lost"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trim_horizon_reads_history_and_latest_does_not() {
    let client = dynamodb().await;
    let table = unique_name("positions");
    create_table(&client, &table).await;
    for i in 0..3 {
        put(&client, &table, &format!("history-{i}"), i).await;
    }
    let from_start = Worker::start(&worker_env(&[
        ("DYNASTREAM_TABLES", &table),
        ("DYNASTREAM_APPLICATION", &unique_name("horizon")),
        ("DYNASTREAM_STARTING_POSITION", "TRIM_HORIZON"),
    ]));
    let from_now = Worker::start(&worker_env(&[
        ("DYNASTREAM_TABLES", &table),
        ("DYNASTREAM_APPLICATION", &unique_name("latest")),
        ("DYNASTREAM_STARTING_POSITION", "LATEST"),
    ]));
    from_start
        .wait_for_log("shard consumer started", 1, WAIT)
        .await;
    from_now
        .wait_for_log("shard consumer started", 1, WAIT)
        .await;
    put(&client, &table, "new-0", 0).await;

    from_start.wait_for_records(4, WAIT).await;
    from_now.wait_for_records(1, WAIT).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (_, horizon_records, _) = from_start.terminate().await;
    let (_, latest_records, _) = from_now.terminate().await;
    assert_eq!(
        keys_of(&horizon_records),
        ["history-0", "history-1", "history-2", "new-0"]
    );
    assert_eq!(keys_of(&latest_records), ["new-0"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_reads_two_tables_and_a_stream_given_by_arn() {
    let client = dynamodb().await;
    let table_a = unique_name("two-a");
    let table_b = unique_name("two-b");
    let table_c = unique_name("by-arn");
    let arn_a = create_table(&client, &table_a).await;
    let arn_b = create_table(&client, &table_b).await;
    let arn_c = create_table(&client, &table_c).await;
    let tables = format!("{table_a},{table_b}");
    let worker = Worker::start(&worker_env(&[
        ("DYNASTREAM_TABLES", &tables),
        ("DYNASTREAM_STREAM_ARNS", &arn_c),
        ("DYNASTREAM_APPLICATION", &unique_name("app")),
    ]));
    worker.wait_for_log("shard consumer started", 3, WAIT).await;
    for i in 0..3 {
        put(&client, &table_a, &format!("a-{i}"), i).await;
        put(&client, &table_b, &format!("b-{i}"), i).await;
        put(&client, &table_c, &format!("c-{i}"), i).await;
    }
    worker.wait_for_records(9, WAIT).await;
    let (status, records, _) = worker.terminate().await;
    assert!(status.success());
    for (arn, prefix) in [(&arn_a, "a"), (&arn_b, "b"), (&arn_c, "c")] {
        let from_stream: Vec<serde_json::Value> = records
            .iter()
            .filter(|r| r["eventSourceARN"] == arn.as_str())
            .cloned()
            .collect();
        let expected: Vec<String> = (0..3).map(|i| format!("{prefix}-{i}")).collect();
        assert_eq!(
            keys_of(&from_stream),
            expected,
            "records of {arn}, in order"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_without_a_stream_is_a_clear_error() {
    let client = dynamodb().await;
    let table = unique_name("nostream");
    create_plain_table(&client, &table, "pk").await;
    let mut worker = Worker::start(&worker_env(&[
        ("DYNASTREAM_TABLES", &table),
        ("DYNASTREAM_APPLICATION", &unique_name("app")),
    ]));
    let (status, _, logs) = worker.wait(WAIT).await;
    assert_eq!(status.code(), Some(2), "{logs:#?}");
    assert!(
        logs.iter()
            .any(|l| l.contains(&table) && l.contains("has no stream")),
        "{logs:#?}"
    );
}

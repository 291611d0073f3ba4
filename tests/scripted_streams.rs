//! The scripted DynamoDB Streams endpoint (tests/support/scripted_streams.rs)
//! against the real AWS SDK for Rust, through dynastream's SDK adapter: what
//! the model holds is what the SDK reads, errors come back typed, calls are
//! logged with their times, and listings can be made inconsistent. Loopback
//! only; no DynamoDB Local.

mod support;

use std::time::Duration;

use aws_sdk_dynamodbstreams::types::{KeyType, StreamStatus as SdkStreamStatus};
use dynastream::aws::FailureKind;
use dynastream::record::{AttributeValue, EventName, Item, SequenceNumber, UserIdentity};
use dynastream::streams::memory::{test_record, MemoryStreams, Operation};
use dynastream::streams::{
    list_all_shards, newest_stream, IteratorPosition, StreamStatus, StreamsApi, StreamsError,
};
use serde_json::{json, Value};
use support::scripted_streams::{wire_record, ScriptedStreams};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn endpoint() -> ScriptedStreams {
    ScriptedStreams::start(MemoryStreams::new()).await
}

fn shard_ids(shards: &[dynastream::streams::ShardInfo]) -> Vec<&str> {
    shards.iter().map(|s| s.shard_id.as_str()).collect()
}

/// A raw HTTP/1.1 request, to check the wire shape the SDK hides.
async fn raw_post(endpoint: &str, target: Option<&str>, body: &str) -> (u16, String, Value) {
    let address = endpoint.trim_start_matches("http://");
    let mut socket = tokio::net::TcpStream::connect(address).await.unwrap();
    let target = target
        .map(|t| format!("X-Amz-Target: {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "POST / HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/x-amz-json-1.0\r\n\
         {target}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    socket.read_to_string(&mut answer).await.unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").expect("a head and a body");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (
        status,
        head.to_ascii_lowercase(),
        serde_json::from_str(body).unwrap(),
    )
}

#[tokio::test]
async fn lists_the_streams_of_a_table() {
    let server = endpoint().await;
    let old = server.model.create_stream("orders", "shard-old");
    let other = server.model.create_stream("payments", "shard-p");
    let current = server.model.create_stream("orders", "shard-new");
    let api = server.sdk_streams();

    let streams = api.list_streams("orders").await.unwrap();
    let mut arns: Vec<&str> = streams.iter().map(|s| s.stream_arn.as_str()).collect();
    arns.sort();
    let mut expected = vec![old.as_str(), current.as_str()];
    expected.sort();
    assert_eq!(arns, expected);
    assert!(streams.iter().all(|s| s.table_name == "orders"));
    assert_eq!(newest_stream(&streams).unwrap().stream_arn, current);
    assert_eq!(
        newest_stream(&streams).unwrap().stream_label,
        server.model.stream_label(&current).unwrap()
    );
    assert_eq!(
        api.list_streams("payments").await.unwrap()[0].stream_arn,
        other
    );
    assert!(api.list_streams("nothing").await.unwrap().is_empty());

    // ListStreams pages by Limit and ExclusiveStartStreamArn; the adapter
    // follows LastEvaluatedStreamArn.
    let client = server.sdk_client();
    let first = client
        .list_streams()
        .table_name("orders")
        .limit(1)
        .send()
        .await
        .unwrap();
    assert_eq!(first.streams().len(), 1);
    let next = first.last_evaluated_stream_arn().expect("a second page");
    let second = client
        .list_streams()
        .table_name("orders")
        .limit(1)
        .exclusive_start_stream_arn(next)
        .send()
        .await
        .unwrap();
    assert_eq!(second.streams().len(), 1);
    assert_ne!(
        second.streams()[0].stream_arn(),
        first.streams()[0].stream_arn()
    );
    assert_eq!(server.calls(Operation::ListStreams).len(), 5);
}

#[tokio::test]
async fn pages_through_describe_stream_and_counts_calls() {
    let server = endpoint().await;
    let model = &server.model;
    let arn = model.create_stream_with_shards("orders", &["shard-1", "shard-2"]);
    let first = model.put(&arn, "shard-1", EventName::Insert, "a");
    let last = model.put(&arn, "shard-1", EventName::Modify, "a");
    model.close_shard(&arn, "shard-1");
    model.add_shard(&arn, "shard-3", Some("shard-1"));
    model.add_shard(&arn, "shard-4", Some("shard-1"));
    model.add_shard(&arn, "shard-5", Some("shard-2"));
    model.set_page_size(2);
    let api = server.sdk_streams();

    let (status, shards) = list_all_shards(&api, &arn).await.unwrap();
    assert_eq!(status, StreamStatus::Enabled);
    assert_eq!(
        shard_ids(&shards),
        ["shard-1", "shard-2", "shard-3", "shard-4", "shard-5"]
    );
    // What the SDK read is what the model lists.
    let (_, from_model) = list_all_shards(model, &arn).await.unwrap();
    assert_eq!(shards, from_model);
    assert_eq!(shards[0].starting_sequence_number, Some(first));
    assert_eq!(shards[0].ending_sequence_number, Some(last));
    assert!(!shards[1].is_closed());
    assert_eq!(shards[2].parent_shard_id.as_deref(), Some("shard-1"));

    // Three pages, each a logged DescribeStream with the previous page's last shard.
    assert_eq!(server.describe_stream_calls().len(), 3);
    let starts: Vec<Value> = server
        .requests(Operation::DescribeStream)
        .iter()
        .map(|r| {
            r.get("ExclusiveStartShardId")
                .cloned()
                .unwrap_or(Value::Null)
        })
        .collect();
    assert_eq!(starts, [Value::Null, json!("shard-2"), json!("shard-4")]);
    assert_eq!(
        server.max_calls_in_window(Operation::DescribeStream, Duration::from_secs(60)),
        3
    );

    // The rest of the description, and the request's own Limit, through the raw client.
    let answer = server
        .sdk_client()
        .describe_stream()
        .stream_arn(&arn)
        .limit(1)
        .send()
        .await
        .unwrap();
    let description = answer.stream_description().unwrap();
    assert_eq!(description.stream_arn(), Some(arn.as_str()));
    assert_eq!(description.table_name(), Some("orders"));
    assert_eq!(
        description.stream_label(),
        server.model.stream_label(&arn).as_deref()
    );
    assert_eq!(description.stream_status(), Some(&SdkStreamStatus::Enabled));
    assert_eq!(description.key_schema()[0].attribute_name(), "pk");
    assert_eq!(description.key_schema()[0].key_type(), &KeyType::Hash);
    assert_eq!(description.shards().len(), 1);
    assert_eq!(description.last_evaluated_shard_id(), Some("shard-1"));
    assert_eq!(server.describe_stream_calls().len(), 4);

    server.clear_calls();
    assert!(server.describe_stream_calls().is_empty());
}

#[tokio::test]
async fn filters_child_shards() {
    let server = endpoint().await;
    let model = &server.model;
    let arn = model.create_stream("orders", "parent");
    model.put(&arn, "parent", EventName::Insert, "a");
    model.close_shard(&arn, "parent");
    model.add_shard(&arn, "unrelated", None);
    model.add_shard(&arn, "child-1", Some("parent"));
    model.add_shard(&arn, "child-2", Some("parent"));
    let api = server.sdk_streams();

    let page = api
        .describe_stream(&arn, None, Some("parent"))
        .await
        .unwrap();
    assert_eq!(shard_ids(&page.shards), ["child-1", "child-2"]);
    assert!(page.last_evaluated_shard_id.is_none());
    let sent = &server.requests(Operation::DescribeStream)[0];
    assert_eq!(
        sent["ShardFilter"],
        json!({"Type": "CHILD_SHARDS", "ShardId": "parent"})
    );
    let none = api
        .describe_stream(&arn, None, Some("child-1"))
        .await
        .unwrap();
    assert!(none.shards.is_empty());
}

fn every_type_image(key: &str) -> Item {
    Item::from([
        ("pk".to_string(), AttributeValue::S(key.into())),
        (
            "n".to_string(),
            AttributeValue::N("12345678901234567890123456789012345678".into()),
        ),
        ("f".to_string(), AttributeValue::N("-0.001".into())),
        ("b".to_string(), AttributeValue::B(vec![0, 1, 254, 255])),
        (
            "ss".to_string(),
            AttributeValue::Ss(vec!["a".into(), "ünïcødé ✓".into()]),
        ),
        (
            "ns".to_string(),
            AttributeValue::Ns(vec!["1".into(), "2.5".into()]),
        ),
        (
            "bs".to_string(),
            AttributeValue::Bs(vec![vec![1], vec![2, 3]]),
        ),
        (
            "m".to_string(),
            AttributeValue::M(Item::from([(
                "inner".to_string(),
                AttributeValue::L(vec![AttributeValue::Bool(true), AttributeValue::Null(true)]),
            )])),
        ),
        ("empty".to_string(), AttributeValue::L(vec![])),
    ])
}

#[tokio::test]
async fn reads_records_in_lambda_shape() {
    let server = endpoint().await;
    let model = &server.model;
    let arn = model.create_stream("orders", "shard-1");
    let insert = model.put(&arn, "shard-1", EventName::Insert, "a");
    let modify = model.put(&arn, "shard-1", EventName::Modify, "a");
    let mut rich = test_record(&arn, &SequenceNumber("0".into()), EventName::Modify, "b");
    rich.dynamodb.new_image = Some(every_type_image("b"));
    rich.dynamodb.old_image = Some(every_type_image("b"));
    let rich_sequence = model.put_record(&arn, "shard-1", rich);
    let mut ttl = test_record(&arn, &SequenceNumber("0".into()), EventName::Remove, "c");
    ttl.user_identity = Some(UserIdentity {
        kind: "Service".into(),
        principal_id: "dynamodb.amazonaws.com".into(),
    });
    ttl.dynamodb.old_image = Some(every_type_image("c"));
    model.put_record(&arn, "shard-1", ttl);
    let api = server.sdk_streams();
    let held = model.records(&arn, "shard-1");
    assert_eq!(held.len(), 4);

    // TRIM_HORIZON, two records a call: every record as the model holds it,
    // Lambda's JSON included.
    let iterator = api
        .get_shard_iterator(&arn, "shard-1", &IteratorPosition::TrimHorizon)
        .await
        .unwrap()
        .expect("an iterator into an open shard");
    let page = api.get_records(&arn, &iterator, 2).await.unwrap();
    assert_eq!(page.records, held[..2]);
    let next = page.next_iterator.expect("an open shard goes on");
    let page = api.get_records(&arn, &next, 1000).await.unwrap();
    assert_eq!(page.records, held[2..]);
    assert_eq!(
        serde_json::to_value(&page.records[1]).unwrap(),
        serde_json::to_value(&held[3]).unwrap()
    );
    assert_eq!(
        serde_json::to_value(&page.records[1]).unwrap()["userIdentity"],
        json!({"type": "Service", "principalId": "dynamodb.amazonaws.com"})
    );
    assert_eq!(
        server.requests(Operation::GetRecords)[0],
        json!({"ShardIterator": iterator, "Limit": 2})
    );

    // The wire shape: Lambda's minus eventSourceARN, with the API's userIdentity.
    let wire = wire_record(&held[3]);
    assert!(wire.get("eventSourceARN").is_none());
    assert_eq!(
        wire["userIdentity"]["PrincipalId"],
        "dynamodb.amazonaws.com"
    );
    assert_eq!(
        wire["dynamodb"]["ApproximateCreationDateTime"],
        1_700_000_000
    );

    // The other positions.
    let at = api
        .get_shard_iterator(
            &arn,
            "shard-1",
            &IteratorPosition::AtSequenceNumber(modify.clone()),
        )
        .await
        .unwrap()
        .unwrap();
    let page = api.get_records(&arn, &at, 1).await.unwrap();
    assert_eq!(page.records[0].sequence_number(), &modify);
    let after = api
        .get_shard_iterator(
            &arn,
            "shard-1",
            &IteratorPosition::AfterSequenceNumber(insert),
        )
        .await
        .unwrap()
        .unwrap();
    let page = api.get_records(&arn, &after, 1).await.unwrap();
    assert_eq!(page.records[0].sequence_number(), &modify);
    let sent = server.requests(Operation::GetShardIterator);
    assert_eq!(sent[2]["ShardIteratorType"], "AFTER_SEQUENCE_NUMBER");
    assert_eq!(
        sent[2]["SequenceNumber"],
        held[0].sequence_number().as_str()
    );
    let latest = api
        .get_shard_iterator(&arn, "shard-1", &IteratorPosition::Latest)
        .await
        .unwrap()
        .unwrap();
    let page = api.get_records(&arn, &latest, 100).await.unwrap();
    assert!(page.records.is_empty());
    let latest = page.next_iterator.unwrap();
    let fresh = model.put(&arn, "shard-1", EventName::Insert, "d");
    let page = api.get_records(&arn, &latest, 100).await.unwrap();
    assert_eq!(page.records.len(), 1);
    assert_eq!(page.records[0].sequence_number(), &fresh);
    assert!(rich_sequence < fresh);

    // A closed shard read to its end has no next iterator.
    model.close_shard(&arn, "shard-1");
    let page = api
        .get_records(&arn, &page.next_iterator.unwrap(), 100)
        .await
        .unwrap();
    assert!(page.records.is_empty());
    assert!(page.next_iterator.is_none());
}

#[tokio::test]
async fn scripted_failures_come_back_typed() {
    let server = endpoint().await;
    let model = &server.model;
    let arn = model.create_stream("orders", "shard-1");
    model.put(&arn, "shard-1", EventName::Insert, "a");
    let api = server.sdk_streams();
    let iterator = api
        .get_shard_iterator(&arn, "shard-1", &IteratorPosition::TrimHorizon)
        .await
        .unwrap()
        .unwrap();

    model.fail_next(
        Operation::GetRecords,
        StreamsError::ExpiredIterator("too old".into()),
    );
    match api.get_records(&arn, &iterator, 10).await {
        Err(StreamsError::ExpiredIterator(message)) => assert_eq!(message, "too old"),
        other => panic!("expected an expired iterator, got {other:?}"),
    }

    model.fail_next(
        Operation::GetShardIterator,
        StreamsError::TrimmedData("gone".into()),
    );
    match api
        .get_shard_iterator(&arn, "shard-1", &IteratorPosition::TrimHorizon)
        .await
    {
        Err(StreamsError::TrimmedData(message)) => assert_eq!(message, "gone"),
        other => panic!("expected trimmed data, got {other:?}"),
    }

    model.fail_next(
        Operation::DescribeStream,
        StreamsError::NotFound("no such stream".into()),
    );
    match api.describe_stream(&arn, None, None).await {
        Err(StreamsError::NotFound(message)) => assert_eq!(message, "no such stream"),
        other => panic!("expected not found, got {other:?}"),
    }

    let transient = |kind| StreamsError::Transient {
        operation: "scripted",
        kind,
        message: format!("scripted {kind:?}"),
    };
    model.fail_next(Operation::GetRecords, transient(FailureKind::Throttled));
    let err = api.get_records(&arn, &iterator, 10).await.unwrap_err();
    assert!(err.is_throttle(), "{err:?}");
    match err {
        StreamsError::Transient {
            operation, message, ..
        } => {
            assert_eq!(operation, "GetRecords");
            assert_eq!(message, "scripted Throttled");
        }
        other => panic!("expected a throttle, got {other:?}"),
    }

    model.fail_next(
        Operation::ListStreams,
        transient(FailureKind::ServiceUnavailable),
    );
    match api.list_streams("orders").await {
        Err(StreamsError::Transient {
            kind: FailureKind::ServiceUnavailable,
            operation: "ListStreams",
            ..
        }) => {}
        other => panic!("expected a service failure, got {other:?}"),
    }

    // A transport failure drops the connection without an answer.
    model.fail_next(Operation::GetRecords, transient(FailureKind::Transport));
    match api.get_records(&arn, &iterator, 10).await {
        Err(StreamsError::Transient {
            kind: FailureKind::Transport,
            ..
        }) => {}
        other => panic!("expected a transport failure, got {other:?}"),
    }

    model.fail_next(
        Operation::DescribeStream,
        StreamsError::Rejected {
            operation: "scripted",
            message: "not allowed".into(),
        },
    );
    match api.describe_stream(&arn, None, None).await {
        Err(StreamsError::Rejected { message, .. }) => assert_eq!(message, "not allowed"),
        other => panic!("expected a rejection, got {other:?}"),
    }

    // Failures the model makes by itself, and the client still works after all that.
    assert!(matches!(
        api.describe_stream(
            "arn:aws:dynamodb:us-east-1:000000000000:table/x/stream/y",
            None,
            None
        )
        .await,
        Err(StreamsError::NotFound(_))
    ));
    assert!(matches!(
        api.get_records(&arn, "not-an-iterator", 10).await,
        Err(StreamsError::ExpiredIterator(_))
    ));
    let page = api.get_records(&arn, &iterator, 10).await.unwrap();
    assert_eq!(page.records.len(), 1);
    // Every attempt was logged, failed ones included.
    assert_eq!(server.calls(Operation::GetRecords).len(), 5);
    assert_eq!(server.calls(Operation::DescribeStream).len(), 3);
}

#[tokio::test]
async fn speaks_the_json_protocol_on_the_wire() {
    let server = endpoint().await;
    let arn = server.model.create_stream("orders", "shard-1");

    let (status, head, body) = raw_post(
        &server.endpoint,
        Some("DynamoDBStreams_20120810.DescribeStream"),
        &json!({"StreamArn": arn}).to_string(),
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        head.contains("content-type: application/x-amz-json-1.0"),
        "{head}"
    );
    assert!(head.contains("x-amzn-requestid: "), "{head}");
    assert_eq!(body["StreamDescription"]["Shards"][0]["ShardId"], "shard-1");

    server.model.fail_next(
        Operation::GetRecords,
        StreamsError::ExpiredIterator("too old".into()),
    );
    let (status, _, body) = raw_post(
        &server.endpoint,
        Some("DynamoDBStreams_20120810.GetRecords"),
        r#"{"ShardIterator":"x"}"#,
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        json!({
            "__type": "com.amazonaws.dynamodb.v20120810#ExpiredIteratorException",
            "message": "too old",
        })
    );

    server.model.fail_next(
        Operation::GetRecords,
        StreamsError::Transient {
            operation: "scripted",
            kind: FailureKind::ServiceUnavailable,
            message: "boom".into(),
        },
    );
    let (status, _, body) = raw_post(
        &server.endpoint,
        Some("DynamoDBStreams_20120810.GetRecords"),
        r#"{"ShardIterator":"x"}"#,
    )
    .await;
    assert_eq!(status, 500);
    assert_eq!(
        body["__type"],
        "com.amazonaws.dynamodb.v20120810#InternalServerError"
    );

    let (status, _, body) = raw_post(
        &server.endpoint,
        Some("DynamoDBStreams_20120810.GetRecords"),
        r#"{"ShardIterator":"x","Limit":1001}"#,
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(
        body["__type"],
        "com.amazonaws.dynamodb.v20120810#ValidationException"
    );

    let (status, _, body) =
        raw_post(&server.endpoint, Some("DynamoDB_20120810.PutItem"), "{}").await;
    assert_eq!(status, 400);
    assert_eq!(
        body["__type"],
        "com.amazonaws.dynamodb.v20120810#UnknownOperationException"
    );
    let (status, _, _) = raw_post(&server.endpoint, None, "{}").await;
    assert_eq!(status, 400);
    // Unknown operations are not logged; the rest are.
    assert_eq!(server.call_log().len(), 4);
}

#[tokio::test]
async fn logs_call_times_for_rate_assertions() {
    let server = endpoint().await;
    let arn = server.model.create_stream("orders", "shard-1");
    let api = server.sdk_streams();
    let started = tokio::time::Instant::now();
    for _ in 0..3 {
        api.describe_stream(&arn, None, None).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..2 {
        api.describe_stream(&arn, None, None).await.unwrap();
    }
    let times = server.describe_stream_calls();
    assert_eq!(times.len(), 5);
    assert!(times.windows(2).all(|w| w[0] <= w[1]));
    assert!(times[0] >= started);
    assert!(times[3].duration_since(times[2]) >= Duration::from_millis(1100));
    assert_eq!(
        server.max_calls_in_window(Operation::DescribeStream, Duration::from_secs(1)),
        3
    );
    assert_eq!(
        server.max_calls_in_window(Operation::DescribeStream, Duration::from_secs(60)),
        5
    );
    assert_eq!(
        server.max_calls_in_window(Operation::GetRecords, Duration::from_secs(1)),
        0
    );
    assert_eq!(server.model.calls("DescribeStream"), 5);
}

#[tokio::test]
async fn inconsistent_listings_show_closed_parents_open() {
    let server = endpoint().await;
    let model = &server.model;
    let arn = model.create_stream("orders", "parent");
    model.put(&arn, "parent", EventName::Insert, "a");
    model.close_shard(&arn, "parent");
    model.add_shard(&arn, "child", Some("parent"));
    model.add_shard(&arn, "other", None);
    model.set_page_size(2);
    let api = server.sdk_streams();

    server.set_inconsistent_listings(2);
    assert_eq!(server.inconsistent_listings_left(), 2);
    for left in [1, 0] {
        let (_, shards) = list_all_shards(&api, &arn).await.unwrap();
        assert_eq!(shard_ids(&shards), ["parent", "child", "other"]);
        assert!(
            shards.iter().all(|s| !s.is_closed()),
            "the closed parent looks open beside its child: {shards:?}"
        );
        assert!(shards[0].starting_sequence_number.is_some());
        assert_eq!(server.inconsistent_listings_left(), left);
    }

    // Filtered pages are not affected, and do not count.
    server.set_inconsistent_listings(1);
    let children = api
        .describe_stream(&arn, None, Some("parent"))
        .await
        .unwrap();
    assert_eq!(shard_ids(&children.shards), ["child"]);
    assert_eq!(server.inconsistent_listings_left(), 1);
    let (_, shards) = list_all_shards(&api, &arn).await.unwrap();
    assert!(!shards[0].is_closed());
    assert_eq!(server.inconsistent_listings_left(), 0);

    // Then the listing is consistent again.
    let (_, shards) = list_all_shards(&api, &arn).await.unwrap();
    assert!(shards[0].is_closed());
    assert!(!shards[1].is_closed());
}

#[tokio::test]
async fn a_disabled_stream_lists_closed_shards() {
    let server = endpoint().await;
    let arn = server
        .model
        .create_stream_with_shards("orders", &["a", "b"]);
    server.model.disable_stream(&arn);
    let (status, shards) = list_all_shards(&server.sdk_streams(), &arn).await.unwrap();
    assert_eq!(status, StreamStatus::Disabled);
    assert!(shards.iter().all(|s| s.is_closed()));
    server.model.set_stream_status(&arn, StreamStatus::Enabling);
    let (status, _) = list_all_shards(&server.sdk_streams(), &arn).await.unwrap();
    assert_eq!(status, StreamStatus::Enabling);
}

#[tokio::test]
async fn shutdown_stops_the_server() {
    let server = endpoint().await;
    let arn = server.model.create_stream("orders", "shard-1");
    let api = server.sdk_streams();
    api.describe_stream(&arn, None, None).await.unwrap();
    let address = server.endpoint.trim_start_matches("http://").to_owned();
    server.shutdown().await;
    assert!(tokio::net::TcpStream::connect(&address).await.is_err());
    match api.describe_stream(&arn, None, None).await {
        Err(StreamsError::Transient {
            kind: FailureKind::Transport,
            ..
        }) => {}
        other => panic!("expected a transport failure, got {other:?}"),
    }
}

//! The fault-injecting proxy (`dynastream-fault-proxy`, tools/fault_proxy)
//! in front of DynamoDB Local, driven through its control endpoint: the real
//! AWS SDK (its retries off, as in dynastream) sees each injected fault as the
//! typed error the real service would give, and the built `dynastream` binary
//! still delivers every record through a proxy that throttles half its reads.

mod support;

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodbstreams::types::ShardIteratorType;
use hyper::{Method, StatusCode};
use serde_json::{json, Value};
use support::fault_proxy::Proxy;
use support::*;
use tokio::time::Instant;

async fn sdk_config(endpoint: &str, timeout: Option<Duration>) -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "local", "local", None, None, "tests",
        ))
        .retry_config(RetryConfig::disabled());
    if let Some(timeout) = timeout {
        loader = loader.timeout_config(TimeoutConfig::builder().operation_timeout(timeout).build());
    }
    loader.load().await
}

async fn ddb(proxy: &Proxy) -> aws_sdk_dynamodb::Client {
    aws_sdk_dynamodb::Client::new(&sdk_config(&proxy.url, None).await)
}

async fn streams(proxy: &Proxy) -> aws_sdk_dynamodbstreams::Client {
    aws_sdk_dynamodbstreams::Client::new(&sdk_config(&proxy.url, None).await)
}

async fn get(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    key: &str,
) -> Result<(), SdkError<aws_sdk_dynamodb::operation::get_item::GetItemError>> {
    client
        .get_item()
        .table_name(table)
        .key("pk", AttributeValue::S(key.into()))
        .send()
        .await
        .map(|_| ())
}

/// A table with one item `k1`, created through the proxy.
async fn table_with_item(client: &aws_sdk_dynamodb::Client) -> (String, String) {
    let table = unique_name("proxy");
    let stream = create_table(client, &table).await;
    put(client, &table, "k1", 1).await;
    (table, stream)
}

fn injected(stats: &Value, api: &str, kind: &str) -> u64 {
    stats[api]["injected"][kind].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn forwards_requests_unchanged() {
    let proxy = Proxy::start();
    let client = ddb(&proxy).await;
    let (table, _) = table_with_item(&client).await;
    let item = client
        .get_item()
        .table_name(&table)
        .key("pk", AttributeValue::S("k1".into()))
        .send()
        .await
        .expect("get through the proxy")
        .item
        .expect("the item is there");
    assert_eq!(item["n"], AttributeValue::N("1".into()));

    let stats = proxy.stats().await;
    for api in ["CreateTable", "PutItem", "GetItem"] {
        let api = format!("DynamoDB_20120810.{api}");
        assert_eq!(stats[&api]["forwarded"], 1, "{api}: {stats}");
        assert_eq!(stats[&api]["injected"], json!({}), "{api}: {stats}");
    }
    let (status, rules) = proxy.call(Method::GET, "/rules", None).await;
    assert_eq!((status, rules), (StatusCode::OK, json!([])));
}

#[tokio::test(flavor = "multi_thread")]
async fn throttles_with_the_rules_code_and_honours_the_count() {
    let proxy = Proxy::start();
    let client = ddb(&proxy).await;
    let (table, stream_arn) = table_with_item(&client).await;

    let id = proxy
        .rule(json!({"api": "DynamoDB_20120810.GetItem", "fault": "throttle", "probability": 1.0, "count": 2}))
        .await;
    for _ in 0..2 {
        let err = get(&client, &table, "k1").await.expect_err("throttled");
        assert_eq!(err.code(), Some("ProvisionedThroughputExceededException"));
        assert!(err
            .as_service_error()
            .unwrap()
            .is_provisioned_throughput_exceeded_exception());
    }
    get(&client, &table, "k1")
        .await
        .expect("the count is used up");
    let (_, rules) = proxy.call(Method::GET, "/rules", None).await;
    assert_eq!(rules[0]["id"], id);
    assert_eq!(rules[0]["fired"], 2);
    proxy.remove(id).await;

    proxy
        .rule(json!({"api": "DynamoDB_20120810.*", "fault": "throttle", "code": "ThrottlingException", "count": 1}))
        .await;
    let err = get(&client, &table, "k1").await.expect_err("throttled");
    assert_eq!(err.code(), Some("ThrottlingException"));
    assert!(err.as_service_error().unwrap().is_throttling_exception());

    // Streams APIs throttle with LimitExceededException unless told otherwise.
    proxy
        .rule(json!({"api": "DynamoDBStreams_20120810.*", "fault": "throttle"}))
        .await;
    let err = streams(&proxy)
        .await
        .describe_stream()
        .stream_arn(&stream_arn)
        .send()
        .await
        .expect_err("throttled");
    assert_eq!(err.code(), Some("LimitExceededException"));
    // DescribeStream models no LimitExceededException: the code is what counts.

    let stats = proxy.stats().await;
    assert_eq!(
        injected(&stats, "DynamoDB_20120810.GetItem", "throttle"),
        3,
        "{stats}"
    );
    assert_eq!(
        stats["DynamoDB_20120810.GetItem"]["forwarded"], 1,
        "{stats}"
    );
    assert_eq!(
        injected(
            &stats,
            "DynamoDBStreams_20120810.DescribeStream",
            "throttle"
        ),
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn error500_gives_an_internal_server_error() {
    let proxy = Proxy::start();
    let client = ddb(&proxy).await;
    let (table, _) = table_with_item(&client).await;
    proxy
        .rule(json!({"api": "*", "fault": "error500", "count": 1}))
        .await;
    let err = client
        .put_item()
        .table_name(&table)
        .item("pk", AttributeValue::S("k2".into()))
        .send()
        .await
        .expect_err("a 500");
    assert_eq!(err.code(), Some("InternalServerError"));
    assert!(err.as_service_error().unwrap().is_internal_server_error());
    assert_eq!(err.raw_response().unwrap().status().as_u16(), 500);
    get(&client, &table, "k1")
        .await
        .expect("count 1: served again");
    let stats = proxy.stats().await;
    assert_eq!(
        injected(&stats, "DynamoDB_20120810.PutItem", "error500"),
        1,
        "{stats}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rewrites_successful_answers_into_stream_errors() {
    let proxy = Proxy::start();
    let client = ddb(&proxy).await;
    let (_, stream_arn) = table_with_item(&client).await;
    let streams = streams(&proxy).await;
    let shard = streams
        .describe_stream()
        .stream_arn(&stream_arn)
        .send()
        .await
        .expect("describe stream")
        .stream_description
        .and_then(|d| d.shards.and_then(|s| s.into_iter().next()))
        .and_then(|s| s.shard_id)
        .expect("a shard");
    let iterator = streams
        .get_shard_iterator()
        .stream_arn(&stream_arn)
        .shard_id(&shard)
        .shard_iterator_type(ShardIteratorType::TrimHorizon)
        .send()
        .await
        .expect("get shard iterator")
        .shard_iterator
        .expect("an iterator");

    for code in [
        "ExpiredIteratorException",
        "TrimmedDataAccessException",
        "ResourceNotFoundException",
    ] {
        let id = proxy
            .rule(json!({"api": "DynamoDBStreams_20120810.GetRecords", "fault": "rewrite", "code": code}))
            .await;
        let err = streams
            .get_records()
            .shard_iterator(&iterator)
            .send()
            .await
            .expect_err("rewritten");
        assert_eq!(err.code(), Some(code));
        assert_eq!(err.message(), Some("injected"));
        let typed = err.as_service_error().unwrap();
        let matched = match code {
            "ExpiredIteratorException" => typed.is_expired_iterator_exception(),
            "TrimmedDataAccessException" => typed.is_trimmed_data_access_exception(),
            _ => typed.is_resource_not_found_exception(),
        };
        assert!(matched, "{code} is typed: {typed:?}");
        proxy.remove(id).await;
    }
    let page = streams
        .get_records()
        .shard_iterator(&iterator)
        .send()
        .await
        .expect("no rule left");
    assert_eq!(page.records().len(), 1);

    let stats = proxy.stats().await;
    let api = "DynamoDBStreams_20120810.GetRecords";
    assert_eq!(injected(&stats, api, "rewrite"), 3, "{stats}");
    assert_eq!(
        stats[api]["forwarded"], 4,
        "rewritten calls were forwarded: {stats}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn latency_delays_the_answer() {
    let proxy = Proxy::start();
    let client = ddb(&proxy).await;
    let (table, _) = table_with_item(&client).await;
    proxy
        .rule(json!({"api": "DynamoDB_20120810.GetItem", "fault": "latency", "ms": 400}))
        .await;
    let started = Instant::now();
    get(&client, &table, "k1").await.expect("slow but served");
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(400), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(20), "{elapsed:?}");
    let stats = proxy.stats().await;
    assert_eq!(injected(&stats, "DynamoDB_20120810.GetItem", "latency"), 1);
    assert_eq!(stats["DynamoDB_20120810.GetItem"]["forwarded"], 1);
}

fn is_transport_failure<E, R>(err: &SdkError<E, R>) -> bool {
    matches!(
        err,
        SdkError::DispatchFailure(_) | SdkError::ResponseError(_)
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn reset_and_stall_drop_the_connection() {
    let proxy = Proxy::start();
    let client = ddb(&proxy).await;
    let (table, _) = table_with_item(&client).await;

    let id = proxy
        .rule(json!({"api": "DynamoDB_20120810.GetItem", "fault": "reset"}))
        .await;
    let err = get(&client, &table, "k1").await.expect_err("reset");
    assert!(is_transport_failure(&err), "{err:?}");
    proxy.remove(id).await;

    let id = proxy
        .rule(json!({"api": "DynamoDB_20120810.GetItem", "fault": "stall", "ms": 300}))
        .await;
    let started = Instant::now();
    let err = get(&client, &table, "k1").await.expect_err("stalled");
    assert!(is_transport_failure(&err), "{err:?}");
    assert!(started.elapsed() >= Duration::from_millis(300));
    proxy.remove(id).await;

    // Without ms, a stall lasts until its rule goes.
    let id = proxy
        .rule(json!({"api": "DynamoDB_20120810.GetItem", "fault": "stall"}))
        .await;
    let call = {
        let client = client.clone();
        let table = table.clone();
        tokio::spawn(async move { get(&client, &table, "k1").await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!call.is_finished(), "held until the rule is removed");
    proxy.remove(id).await;
    let err = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("released when the rule went")
        .unwrap()
        .expect_err("dropped");
    assert!(is_transport_failure(&err), "{err:?}");

    get(&client, &table, "k1").await.expect("served again");
    let stats = proxy.stats().await;
    assert_eq!(
        injected(&stats, "DynamoDB_20120810.GetItem", "reset"),
        1,
        "{stats}"
    );
    assert_eq!(
        injected(&stats, "DynamoDB_20120810.GetItem", "stall"),
        2,
        "{stats}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn blackhole_times_calls_out_until_removed() {
    let proxy = Proxy::start();
    let client = ddb(&proxy).await;
    let (table, _) = table_with_item(&client).await;
    let impatient = aws_sdk_dynamodb::Client::new(
        &sdk_config(&proxy.url, Some(Duration::from_millis(500))).await,
    );

    let id = proxy.rule(json!({"api": "*", "fault": "blackhole"})).await;
    for _ in 0..2 {
        let started = Instant::now();
        let err = get(&impatient, &table, "k1").await.expect_err("no answer");
        assert!(matches!(err, SdkError::TimeoutError(_)), "{err:?}");
        assert!(started.elapsed() >= Duration::from_millis(500));
    }
    proxy.remove(id).await;
    get(&impatient, &table, "k1")
        .await
        .expect("service restored");
    let stats = proxy.stats().await;
    assert_eq!(
        injected(&stats, "DynamoDB_20120810.GetItem", "blackhole"),
        2,
        "{stats}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_control_endpoint_refuses_bad_rules() {
    let proxy = Proxy::start();
    for rule in [
        json!({"api": "*", "fault": "latency"}),
        json!({"api": "*", "fault": "rewrite"}),
        json!({"api": "*", "fault": "throttle", "probability": 1.5}),
        json!({"api": "*", "fault": "reset", "code": "X"}),
        json!({"api": "*", "fault": "melt"}),
        json!({"api": "*", "fault": "throttle", "probabilty": 0.5}),
    ] {
        let (status, answer) = proxy.call(Method::POST, "/rules", Some(rule.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{rule}: {answer}");
        assert!(answer["error"].is_string(), "{answer}");
    }
    let a = proxy
        .rule(json!({"api": "*", "fault": "reset", "probability": 0.0}))
        .await;
    proxy
        .rule(json!({"api": "*", "fault": "reset", "probability": 0.0}))
        .await;
    let (status, _) = proxy.call(Method::DELETE, "/rules/999", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    proxy.remove(a).await;
    let (_, rules) = proxy.call(Method::GET, "/rules", None).await;
    assert_eq!(rules.as_array().unwrap().len(), 1);
    let (status, _) = proxy.call(Method::DELETE, "/rules", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, rules) = proxy.call(Method::GET, "/rules", None).await;
    assert_eq!(rules, json!([]));
}

#[tokio::test(flavor = "multi_thread")]
async fn dynastream_delivers_every_record_through_throttled_reads() {
    let proxy = Proxy::start();
    let client = dynamodb().await;
    let table = unique_name("proxy-worker");
    create_table(&client, &table).await;
    proxy
        .rule(json!({"api": "DynamoDBStreams_20120810.GetRecords", "fault": "throttle", "probability": 0.5}))
        .await;
    let worker = Worker::start(&worker_env(&[
        ("AWS_ENDPOINT_URL", &proxy.url),
        ("DYNASTREAM_TABLES", &table),
        ("DYNASTREAM_APPLICATION", &unique_name("app")),
        ("DYNASTREAM_STARTING_POSITION", "TRIM_HORIZON"),
        ("DYNASTREAM_POLL_INTERVAL_MS", "200"),
    ]));
    worker.wait_for_log("shard consumer started", 1, WAIT).await;
    let expected: Vec<String> = (0..20).map(|i| format!("key-{i:02}")).collect();
    for (i, key) in expected.iter().enumerate() {
        put(&client, &table, key, i as i64).await;
        if i % 5 == 4 {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    worker.wait_for_records(expected.len(), WAIT).await;
    let (status, records, _) = worker.terminate().await;
    assert!(status.success(), "clean exit: {status:?}");
    assert_eq!(keys_of(&records), expected, "every record once, in order");

    let stats = proxy.stats().await;
    let api = "DynamoDBStreams_20120810.GetRecords";
    assert!(injected(&stats, api, "throttle") > 0, "{stats}");
    assert!(stats[api]["forwarded"].as_u64().unwrap() > 0, "{stats}");
}

/// A worker cut off from DynamoDB (a black hole in front of it) loses its
/// shard to another worker within a lease duration plus a renewal interval,
/// and when it comes back it neither checkpoints nor hands on any record of
/// that shard: the records written meanwhile are delivered once, by the
/// other worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cut_off_loses_its_shard_and_delivers_nothing_more_of_it() {
    let proxy = Proxy::start();
    let client = dynamodb().await;
    let table = unique_name("cut-off");
    create_table(&client, &table).await;
    let application = unique_name("cut-off-app");
    let settings = |id: &'static str| {
        vec![
            ("DYNASTREAM_TABLES", table.clone()),
            ("DYNASTREAM_APPLICATION", application.clone()),
            ("DYNASTREAM_WORKER_ID", id.to_owned()),
            ("DYNASTREAM_STARTING_POSITION", "TRIM_HORIZON".to_owned()),
            ("DYNASTREAM_LEASE_DURATION_MS", "3000".to_owned()),
        ]
    };
    let as_env = |pairs: &Vec<(&str, String)>| -> Vec<(String, String)> {
        let borrowed: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        worker_env(&borrowed)
    };
    let mut cut_env = as_env(&settings("cut-off"));
    cut_env.push(("AWS_ENDPOINT_URL".into(), proxy.url.clone()));
    let cut_off = Worker::start(&cut_env);
    cut_off
        .wait_for_log("shard consumer started", 1, WAIT)
        .await;
    let other = Worker::start(&as_env(&settings("other")));
    for i in 0..3 {
        put(&client, &table, &format!("before-{i}"), i).await;
    }
    cut_off.wait_for_records(3, WAIT).await;
    // Past the checkpoint interval (1 s), so that what was delivered is
    // checkpointed before the cut: only then is "once each" the promise.
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    let blackhole = proxy.rule(json!({"api": "*", "fault": "blackhole"})).await;
    let cut_at = tokio::time::Instant::now();
    for i in 0..5 {
        put(&client, &table, &format!("during-{i}"), i).await;
    }
    other.wait_for_records(5, WAIT).await;
    let takeover = cut_at.elapsed();
    proxy.remove(blackhole).await;
    // Back on the network: it must learn it lost the lease and stay quiet.
    cut_off.wait_for_log("lease", 1, WAIT).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    for i in 5..7 {
        put(&client, &table, &format!("during-{i}"), i).await;
    }
    other.wait_for_records(7, WAIT).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (cut_status, cut_records, cut_logs) = cut_off.terminate().await;
    let (other_status, other_records, _) = other.terminate().await;
    assert!(cut_status.success() && other_status.success());
    eprintln!("faults: shard taken over {takeover:.2?} after the worker was cut off (lease 3 s, renewal 1 s)");
    assert_eq!(
        keys_of(&cut_records),
        ["before-0", "before-1", "before-2"],
        "nothing after the cut"
    );
    let during: Vec<String> = (0..7).map(|i| format!("during-{i}")).collect();
    assert_eq!(
        keys_of(&other_records),
        during,
        "the other worker delivered the rest, once each"
    );
    assert!(
        cut_logs
            .iter()
            .any(|l| l.contains("lease lost") || l.contains("owned by another worker")),
        "the cut-off worker noticed it lost the lease"
    );
    assert!(
        takeover < Duration::from_secs(6),
        "takeover and delivery took {takeover:?} (lease 3 s + renewal 1 s + reading)"
    );
}

/// Trimmed data, injected on a real worker's reads: with the default `skip`
/// it is counted in the data-loss metric and reading goes on; with `stop`
/// the shard stops and the worker reports not ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trimmed_data_is_counted_and_skipped_or_stops_the_shard() {
    for mode in ["skip", "stop"] {
        let proxy = Proxy::start();
        let client = dynamodb().await;
        let table = unique_name("trimmed");
        create_table(&client, &table).await;
        let mut env = worker_env(&[
            ("DYNASTREAM_TABLES", &table),
            ("DYNASTREAM_APPLICATION", &unique_name("trimmed-app")),
            ("DYNASTREAM_ON_TRIMMED", mode),
        ]);
        env.push(("AWS_ENDPOINT_URL".into(), proxy.url.clone()));
        let worker = Worker::start(&env);
        let base = worker.endpoints().await;
        worker.wait_for_log("shard consumer started", 1, WAIT).await;
        put(&client, &table, "first", 1).await;
        worker.wait_for_records(1, WAIT).await;

        proxy
            .rule(json!({"api": "DynamoDBStreams_20120810.GetRecords", "fault": "rewrite", "code": "TrimmedDataAccessException", "count": 1}))
            .await;
        let stream = format!("dynastream_trimmed_data_total{{stream=\"{table}\"}} 1");
        let what = format!("{mode}: the trimmed-data counter to reach 1");
        eventually(WAIT, what, || async {
            http_get(&format!("{base}/metrics")).1.contains(&stream)
        })
        .await;
        put(&client, &table, "second", 2).await;
        if mode == "skip" {
            worker.wait_for_records(2, WAIT).await;
            assert_eq!(http_get(&format!("{base}/readyz")).0, 200);
        } else {
            worker
                .wait_for_log("shard stopped on trimmed data", 1, WAIT)
                .await;
            wait_for_http(&format!("{base}/readyz"), 503).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            assert_eq!(
                keys_of(&worker.records()),
                ["first"],
                "nothing read past the gap"
            );
        }
        let (status, _, _) = worker.terminate().await;
        assert!(status.success(), "{mode}: clean exit");
    }
}

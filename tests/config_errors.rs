//! Bad configuration: the binary exits 2 with one line naming the variable
//! and what it accepts, before touching AWS, and never panics.

use std::process::{Command, Output};

fn run(env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dynastream"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", std::env::temp_dir())
        // Never ask the EC2 metadata service: tests talk only to loopback.
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .envs(env.iter().copied())
        .output()
        .expect("run dynastream")
}

fn assert_config_error(env: &[(&str, &str)], must_mention: &[&str]) {
    let output = run(env);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{env:?}: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.starts_with("dynastream: invalid configuration: "),
        "{stderr}"
    );
    for needle in must_mention {
        assert!(
            stderr.contains(needle),
            "{env:?}: {stderr:?} lacks {needle:?}"
        );
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(output.stdout.is_empty(), "nothing on stdout");
}

#[test]
fn tables_or_stream_arns_are_required() {
    assert_config_error(&[], &["DYNASTREAM_TABLES", "DYNASTREAM_STREAM_ARNS"]);
    assert_config_error(&[("DYNASTREAM_TABLES", " , ")], &["DYNASTREAM_TABLES"]);
}

#[test]
fn an_unknown_starting_position_lists_the_allowed_ones() {
    assert_config_error(
        &[
            ("DYNASTREAM_TABLES", "orders"),
            ("DYNASTREAM_STARTING_POSITION", "EARLIEST"),
        ],
        &[
            "DYNASTREAM_STARTING_POSITION",
            "\"EARLIEST\"",
            "LATEST, TRIM_HORIZON",
        ],
    );
}

#[test]
fn batch_size_must_be_a_number_in_range() {
    for bad in ["0", "abc", "10001", "-5", ""] {
        assert_config_error(
            &[
                ("DYNASTREAM_TABLES", "orders"),
                ("DYNASTREAM_BATCH_SIZE", bad),
            ],
            &["DYNASTREAM_BATCH_SIZE", "from 1 to 10000"],
        );
    }
}

#[test]
fn every_numeric_setting_states_its_range() {
    for (variable, bad, range) in [
        ("DYNASTREAM_POLL_INTERVAL_MS", "10", "from 200 to 60000"),
        ("DYNASTREAM_LEASE_DURATION_MS", "999", "from 1000 to 600000"),
        (
            "DYNASTREAM_SHARD_SYNC_INTERVAL_MS",
            "x",
            "from 1000 to 3600000",
        ),
        ("DYNASTREAM_SHUTDOWN_GRACE_MS", "0", "from 1000 to 600000"),
        (
            "DYNASTREAM_STREAM_REFRESH_INTERVAL_MS",
            "9999",
            "from 10000 to 86400000",
        ),
        ("DYNASTREAM_STREAMS_CONCURRENCY", "0", "from 1 to 10000"),
        (
            "DYNASTREAM_CHECKPOINT_INTERVAL_MS",
            "300001",
            "from 0 to 300000",
        ),
    ] {
        assert_config_error(
            &[("DYNASTREAM_TABLES", "orders"), (variable, bad)],
            &[variable, range],
        );
    }
}

#[test]
fn names_and_arns_are_checked() {
    assert_config_error(
        &[("DYNASTREAM_TABLES", "ok-table,x")],
        &["DYNASTREAM_TABLES", "\"x\""],
    );
    assert_config_error(
        &[("DYNASTREAM_STREAM_ARNS", "not-an-arn")],
        &["DYNASTREAM_STREAM_ARNS"],
    );
    assert_config_error(
        &[
            ("DYNASTREAM_TABLES", "orders"),
            ("DYNASTREAM_LEASE_TABLE", "a b"),
        ],
        &["DYNASTREAM_LEASE_TABLE"],
    );
}

#[test]
fn unknown_processors_and_log_settings_are_refused() {
    assert_config_error(
        &[
            ("DYNASTREAM_TABLES", "orders"),
            ("DYNASTREAM_PROCESSOR", "stdout,kafka"),
        ],
        &["DYNASTREAM_PROCESSOR", "\"kafka\"", "stdout"],
    );
    assert_config_error(
        &[
            ("DYNASTREAM_TABLES", "orders"),
            ("DYNASTREAM_LOG_FORMAT", "xml"),
        ],
        &["DYNASTREAM_LOG_FORMAT", "json, text"],
    );
    assert_config_error(
        &[("DYNASTREAM_TABLES", "orders"), ("DYNASTREAM_LOG", "[[")],
        &["DYNASTREAM_LOG"],
    );
}

#[test]
fn malformed_target_uris_are_refused_before_anything_starts() {
    for (uri, mentions) in [
        ("kafka://broker/topic", "unknown scheme \"kafka\""),
        ("sqs://", "not a queue URL"),
        ("sns://orders-topic", "not a topic ARN"),
        ("s3://archive/cdc?gzip=maybe", "true or false"),
        ("s3://Not_A_Bucket", "not a bucket name"),
        ("kinesis://changes?shards=2", "takes no options"),
        ("eventbridge://orders?sauce=x", "does not take ?sauce="),
        ("states://arn:aws:sns:us-east-1:1:t", "state machine ARN"),
        ("lambda://bad name", "not a function name"),
    ] {
        assert_config_error(
            &[
                ("DYNASTREAM_TABLES", "orders"),
                ("DYNASTREAM_PROCESSOR", &format!("stdout,{uri}")),
            ],
            &["DYNASTREAM_PROCESSOR", mentions],
        );
    }
    assert_config_error(
        &[
            ("DYNASTREAM_TABLES", "orders"),
            ("DYNASTREAM_FORMAT", "xml"),
        ],
        &["DYNASTREAM_FORMAT", "lambda, document"],
    );
    assert_config_error(
        &[
            ("DYNASTREAM_TABLES", "orders"),
            ("DYNASTREAM_EXEC_CONCURRENCY", "0"),
        ],
        &["DYNASTREAM_EXEC_CONCURRENCY", "from 1 to 64"],
    );
}

#[test]
fn a_missing_region_is_a_configuration_error() {
    assert_config_error(&[("DYNASTREAM_TABLES", "orders")], &["AWS_REGION"]);
}

#[test]
fn help_lists_every_variable_with_its_default() {
    let output = Command::new(env!("CARGO_BIN_EXE_dynastream"))
        .arg("--help")
        .output()
        .expect("run dynastream --help");
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for (variable, default) in dynastream::config::Config::variables() {
        assert!(
            help.contains(&format!("[env: {variable}")),
            "{variable} in --help"
        );
        if let Some(default) = default {
            assert!(
                help.contains(&format!("[default: {default}]")),
                "{variable} default {default}"
            );
        }
    }
}

#[test]
fn an_idle_poll_interval_below_the_poll_interval_is_refused() {
    assert_config_error(
        &[
            ("DYNASTREAM_TABLES", "orders"),
            ("DYNASTREAM_POLL_INTERVAL_MS", "1000"),
            ("DYNASTREAM_IDLE_POLL_INTERVAL_MS", "500"),
        ],
        &[
            "DYNASTREAM_IDLE_POLL_INTERVAL_MS (500)",
            "DYNASTREAM_POLL_INTERVAL_MS (1000)",
        ],
    );
    for bad in ["199", "60001", "x"] {
        assert_config_error(
            &[
                ("DYNASTREAM_TABLES", "orders"),
                ("DYNASTREAM_IDLE_POLL_INTERVAL_MS", bad),
            ],
            &["DYNASTREAM_IDLE_POLL_INTERVAL_MS"],
        );
    }
    assert_config_error(
        &[
            ("DYNASTREAM_TABLES", "orders"),
            ("DYNASTREAM_IDLE_AFTER_MS", "999"),
        ],
        &["DYNASTREAM_IDLE_AFTER_MS"],
    );
}

#[test]
fn pipeline_settings_name_the_variable_at_fault() {
    let tables = ("DYNASTREAM_TABLES", "orders");
    let declared = ("DYNASTREAM_PIPELINES", "search,audit");
    assert_config_error(
        &[
            tables,
            declared,
            ("DYNASTREAM_PIPELINE_AUDIT_BATCH_SIZE", "0"),
        ],
        &[
            "DYNASTREAM_PIPELINE_AUDIT_BATCH_SIZE",
            "\"0\"",
            "1 to 10000",
        ],
    );
    assert_config_error(
        &[tables, declared, ("DYNASTREAM_PIPELINE_CACHE_FILTER", "{}")],
        &[
            "DYNASTREAM_PIPELINE_CACHE_FILTER",
            "declared: search, audit",
        ],
    );
    assert_config_error(
        &[tables, ("DYNASTREAM_PIPELINE_SEARCH_PROCESSOR", "count")],
        &[
            "DYNASTREAM_PIPELINE_SEARCH_PROCESSOR",
            "DYNASTREAM_PIPELINES is not set",
        ],
    );
    assert_config_error(
        &[
            tables,
            declared,
            ("DYNASTREAM_PIPELINE_SEARCH_WORKER_ID", "w"),
        ],
        &[
            "DYNASTREAM_PIPELINE_SEARCH_WORKER_ID",
            "not a per-pipeline setting",
        ],
    );
    assert_config_error(
        &[
            tables,
            declared,
            ("DYNASTREAM_PIPELINE_SEARCH_FILTER", "[{\"eventName\":[1]}"),
        ],
        &["DYNASTREAM_PIPELINE_SEARCH_FILTER"],
    );
    assert_config_error(
        &[
            tables,
            declared,
            ("DYNASTREAM_PIPELINE_SEARCH_STARTING_POSITION", "EARLIEST"),
        ],
        &[
            "DYNASTREAM_PIPELINE_SEARCH_STARTING_POSITION",
            "LATEST, TRIM_HORIZON",
        ],
    );
    assert_config_error(
        &[
            tables,
            declared,
            ("DYNASTREAM_PIPELINE_AUDIT_PROCESSOR", "exec"),
        ],
        &[
            "DYNASTREAM_PIPELINE_AUDIT_PROCESSOR includes exec",
            "DYNASTREAM_PIPELINE_AUDIT_EXEC_COMMAND",
        ],
    );
    assert_config_error(
        &[tables, ("DYNASTREAM_PIPELINES", "search,Search")],
        &["DYNASTREAM_PIPELINES", "a-z, 0-9 and '_'"],
    );
    assert_config_error(
        &[tables, ("DYNASTREAM_PIPELINES", "search,search")],
        &["DYNASTREAM_PIPELINES", "twice"],
    );
    assert_config_error(
        &[
            tables,
            declared,
            ("DYNASTREAM_PIPELINE_BUFFER_RECORDS", "10"),
        ],
        &["DYNASTREAM_PIPELINE_BUFFER_RECORDS", "1000 to 1000000"],
    );
}

#[test]
fn snapshot_and_discovery_settings_are_checked() {
    let t = ("DYNASTREAM_TABLES", "orders");
    assert_config_error(
        &[t, ("DYNASTREAM_SNAPSHOT", "sometimes")],
        &["DYNASTREAM_SNAPSHOT", "off", "on", "only"],
    );
    for bad in ["0", "1000001", "x"] {
        assert_config_error(
            &[t, ("DYNASTREAM_SNAPSHOT_SEGMENTS", bad)],
            &["DYNASTREAM_SNAPSHOT_SEGMENTS", "1 to 1000000"],
        );
    }
    for bad in ["0", "2000000", "-5"] {
        assert_config_error(
            &[t, ("DYNASTREAM_SNAPSHOT_RCU", bad)],
            &["DYNASTREAM_SNAPSHOT_RCU", "1 to 1000000"],
        );
    }
    for bad in ["", "orders/*", "a b"] {
        assert_config_error(
            &[t, ("DYNASTREAM_TABLE_PREFIX", bad)],
            &["DYNASTREAM_TABLE_PREFIX"],
        );
    }
    for bad in ["cdc", "=on", "cdc:on"] {
        assert_config_error(
            &[t, ("DYNASTREAM_TABLE_TAG", bad)],
            &["DYNASTREAM_TABLE_TAG", "key=value"],
        );
    }
    for bad in ["999", "86400001", "soon"] {
        assert_config_error(
            &[t, ("DYNASTREAM_TABLE_DISCOVERY_INTERVAL_MS", bad)],
            &["DYNASTREAM_TABLE_DISCOVERY_INTERVAL_MS", "1000 to 86400000"],
        );
    }
    for bad in ["-1", "300001", "1s"] {
        assert_config_error(
            &[t, ("DYNASTREAM_CHECKPOINT_INTERVAL_MS", bad)],
            &["DYNASTREAM_CHECKPOINT_INTERVAL_MS", "0 to 300000"],
        );
    }
    // A stream ARN names no table to scan.
    assert_config_error(
        &[
            (
                "DYNASTREAM_STREAM_ARNS",
                "arn:aws:dynamodb:us-east-1:1:table/t/stream/2024",
            ),
            ("DYNASTREAM_SNAPSHOT", "on"),
        ],
        &[
            "DYNASTREAM_SNAPSHOT",
            "DYNASTREAM_TABLES",
            "DYNASTREAM_TABLE_PREFIX",
        ],
    );
}

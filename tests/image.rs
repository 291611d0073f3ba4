//! The container images, run: `./scripts/image test` builds them (podman,
//! runc, local bases made from Debian's packages) and runs these tests, which
//! `./scripts/test` does too. Each container uses the host's network and a
//! DynamoDB Local started for this test binary.
//!
//! They are `#[ignore]`d for a plain `cargo test`, which does not build the
//! images; run through the script they are never skipped: without podman
//! or an image they fail with one line saying why.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use support::*;

fn image(flavour: &str) -> String {
    let version = std::env::var("DYNASTREAM_IMAGE_VERSION")
        .unwrap_or_else(|_| env!("CARGO_PKG_VERSION").to_owned());
    format!("localhost/dynastream:{version}{flavour}")
}

/// Runs podman with runc (crun fails on this host's cgroups).
fn podman(args: &[&str]) -> std::process::Output {
    Command::new("podman")
        .arg("--runtime")
        .arg("runc")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("podman cannot run here ({e}): run ./scripts/image build, which installs it")
        })
}

fn require(image: &str) {
    let output = podman(&["image", "exists", image]);
    assert!(
        output.status.success(),
        "image {image} is missing: run ./scripts/image build"
    );
}

/// A container run in the foreground by `podman run`, its stdout and
/// stderr read line by line.
struct Container {
    name: String,
    process: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    metrics: String,
}

impl Container {
    fn start(image: &str, settings: &[(&str, &str)]) -> Container {
        let name = unique_name("dynastream-image");
        let port = free_port();
        let metrics = format!("127.0.0.1:{port}");
        let mut command = Command::new("podman");
        command.args(["--runtime", "runc", "run", "--rm", "--name", &name]);
        command.args(["--network", "host"]);
        command.args([
            "--ulimit",
            "nofile=20000:20000",
            "--ulimit",
            "nproc=32768:32768",
        ]);
        let mut env = aws_env();
        env.push(("DYNASTREAM_METRICS_ADDR".into(), metrics.clone()));
        env.extend(settings.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        for (key, value) in &env {
            command.arg("--env").arg(format!("{key}={value}"));
        }
        command.arg(image);
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut process = command.spawn().expect("podman run");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        for (pipe, lines) in [
            (
                Box::new(process.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
                Arc::clone(&stdout),
            ),
            (
                Box::new(process.stderr.take().unwrap()),
                Arc::clone(&stderr),
            ),
        ] {
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if std::env::var_os("DYNASTREAM_TEST_LOGS").is_some() {
                        eprintln!("[container] {line}");
                    }
                    lines.lock().unwrap().push(line);
                }
            });
        }
        Container {
            name,
            process,
            stdout,
            stderr,
            metrics,
        }
    }

    fn stdout(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    fn stderr(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    async fn wait_for(&self, what: &str, done: impl Fn(&Container) -> bool) {
        let what = lazy(|| format!("{what}; container log:\n{}", self.stderr().join("\n")));
        eventually(WAIT, what, || async { done(self) }).await
    }

    async fn wait_until_ready(&self) {
        let url = format!("http://{}/readyz", self.metrics);
        self.wait_for("readiness", |_| http_get(&url).0 == 200)
            .await;
    }

    /// The container's process as the host sees it: (uid, pid inside).
    fn process_identity(&self) -> (String, String) {
        let output = podman(&["inspect", "--format", "{{.State.Pid}}", &self.name]);
        let pid = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_else(|| panic!("{name} in {status}"))
                .split_whitespace()
                .skip(1)
                .collect::<Vec<_>>()
        };
        let uid = field("Uid:")[0].to_owned();
        let pid_inside = field("NSpid:").last().unwrap().to_string();
        (uid, pid_inside)
    }

    /// `podman stop` (SIGTERM, then SIGKILL after 30 s): how long the
    /// container took and its exit code.
    async fn stop(mut self) -> (Duration, Option<i32>, Vec<String>) {
        let started = tokio::time::Instant::now();
        let output = podman(&["stop", "--time", "30", &self.name]);
        assert!(output.status.success(), "podman stop: {output:?}");
        let status = self.process.wait().expect("podman run exits");
        let took = started.elapsed();
        // Let the readers take the last lines.
        tokio::time::sleep(Duration::from_millis(200)).await;
        (took, status.code(), self.stderr())
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman(&["rm", "--force", "--time", "0", &self.name]);
        let _ = self.process.wait();
    }
}

async fn three_changes(table: &str, key: &str) {
    let client = dynamodb().await;
    put(&client, table, key, 1).await;
    put(&client, table, key, 2).await;
    delete(&client, table, key).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the images: ./scripts/image test"]
async fn the_worker_image_delivers_runs_as_nonroot_pid_1_and_hands_over_on_sigterm() {
    let image = image("");
    require(&image);
    let table = unique_name("image");
    create_table(&dynamodb().await, &table).await;
    let application = unique_name("image-app");
    let settings = [
        ("DYNASTREAM_TABLES", table.as_str()),
        ("DYNASTREAM_APPLICATION", application.as_str()),
        ("DYNASTREAM_STARTING_POSITION", "TRIM_HORIZON"),
    ];
    let first = Container::start(
        &image,
        &[&settings[..], &[("DYNASTREAM_WORKER_ID", "image-a")]].concat(),
    );
    first.wait_until_ready().await;
    let (status, body) = http_get(&format!("http://{}/healthz", first.metrics));
    assert_eq!(status, 200, "{body}");

    three_changes(&table, "img-1").await;
    first
        .wait_for("three records on stdout", |c| c.stdout().len() >= 3)
        .await;
    let records: Vec<Value> = first
        .stdout()
        .iter()
        .map(|l| serde_json::from_str(l).expect("stdout holds only records"))
        .collect();
    let names: Vec<&str> = records
        .iter()
        .map(|r| r["eventName"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["INSERT", "MODIFY", "REMOVE"]);
    for record in &records {
        assert_eq!(record["eventSource"], "aws:dynamodb", "Lambda's shape");
        assert_eq!(record["dynamodb"]["Keys"]["pk"]["S"], "img-1");
    }

    let (uid, pid) = first.process_identity();
    assert_eq!(uid, "65532", "runs as the nonroot user");
    assert_eq!(pid, "1", "dynastream is the container's PID 1");

    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("ca-certificates.crt");
    let copied = podman(&[
        "cp",
        &format!("{}:/etc/ssl/certs/ca-certificates.crt", first.name),
        bundle.to_str().unwrap(),
    ]);
    assert!(
        copied.status.success(),
        "the CA bundle is in the image: {copied:?}"
    );
    let certificates = std::fs::read_to_string(&bundle)
        .unwrap()
        .matches("BEGIN CERTIFICATE")
        .count();
    assert!(
        certificates > 100,
        "{certificates} certificates in the bundle"
    );

    let (took, code, logs) = first.stop().await;
    assert_eq!(code, Some(0), "exit 0 on SIGTERM:\n{}", logs.join("\n"));
    assert!(
        took < Duration::from_secs(20),
        "stopped within the 20 s grace: {took:?}"
    );
    assert!(
        logs.iter().any(|l| l.contains("leases released")),
        "{}",
        logs.join("\n")
    );
    let store = lease_store(&format!("{application}-leases")).await;
    let owners = lease_owners(&store).await;
    assert!(
        !owners.is_empty() && owners.values().all(Option::is_none),
        "released: {owners:?}"
    );

    // A second container takes the released shard at once, not after the
    // 10 s lease duration. It also has an https processor configured: it
    // would not start (exit 2) if the TLS client found no CA certificates.
    let second = Container::start(
        &image,
        &[
            &settings[..],
            &[
                ("DYNASTREAM_WORKER_ID", "image-b"),
                ("DYNASTREAM_PROCESSOR", "stdout,http"),
                ("DYNASTREAM_HTTP_URL", "https://127.0.0.1:9/unused"),
            ],
        ]
        .concat(),
    );
    let what = lazy(|| {
        format!(
            "the second container to take the shard\n{}",
            second.stderr().join("\n")
        )
    });
    eventually(Duration::from_secs(5), what, || async {
        let owners = lease_owners(&store).await;
        if owners.values().all(|o| o.as_deref() == Some("image-b")) && !owners.is_empty() {
            Ok(())
        } else {
            Err(format!("{owners:?}"))
        }
    })
    .await;
    let (_, code, logs) = second.stop().await;
    assert_eq!(code, Some(0), "{}", logs.join("\n"));
}

/// A handler image runs the adapter's unmodified example handler: its
/// prints (one per record) reach the container's stderr.
async fn handler_image_runs_the_example_handler(flavour: &str) {
    let image = image(flavour);
    require(&image);
    let table = unique_name("handler-image");
    create_table(&dynamodb().await, &table).await;
    let application = unique_name("handler-app");
    let container = Container::start(
        &image,
        &[
            ("DYNASTREAM_TABLES", table.as_str()),
            ("DYNASTREAM_APPLICATION", application.as_str()),
            ("DYNASTREAM_STARTING_POSITION", "TRIM_HORIZON"),
        ],
    );
    container.wait_until_ready().await;
    three_changes(&table, "hd-1").await;
    let printed = |c: &Container| {
        c.stderr()
            .iter()
            .filter(|l| l.contains(r#"{"pk":"hd-1"}"#))
            .map(|l| l.split_whitespace().next().unwrap_or_default().to_owned())
            .collect::<Vec<_>>()
    };
    container
        .wait_for("the handler's three prints", |c| printed(c).len() >= 3)
        .await;
    assert_eq!(printed(&container), ["INSERT", "MODIFY", "REMOVE"]);
    let (uid, pid) = container.process_identity();
    assert_eq!((uid.as_str(), pid.as_str()), ("65532", "1"));
    let (took, code, logs) = container.stop().await;
    assert_eq!(code, Some(0), "{}", logs.join("\n"));
    assert!(took < Duration::from_secs(20), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the images: ./scripts/image test"]
async fn the_python_image_runs_an_unmodified_lambda_handler() {
    handler_image_runs_the_example_handler("-python").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the images: ./scripts/image test"]
async fn the_node_image_runs_an_unmodified_lambda_handler() {
    handler_image_runs_the_example_handler("-node").await;
}

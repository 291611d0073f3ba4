//! A real Prometheus (Debian's build, through `scripts/prometheus-local`)
//! scrapes a running worker, loads the alert rules, and evaluates every query
//! of the Grafana dashboard and of the alert rules through its HTTP API: each
//! must be valid, and the throughput, lag and lease panels must return data.

mod support;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use support::*;

struct Prometheus {
    child: Child,
    url: String,
    _data: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_prometheus(target: &str) -> Prometheus {
    let install = Command::new(repo().join("scripts/prometheus-local"))
        .arg("install")
        .stderr(Stdio::inherit())
        .output()
        .expect("run scripts/prometheus-local");
    assert!(
        install.status.success(),
        "scripts/prometheus-local install failed"
    );
    let binary = String::from_utf8(install.stdout).unwrap().trim().to_owned();
    let data = tempfile::tempdir().unwrap();
    let config = data.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {rules}\nscrape_configs:\n  - job_name: dynastream\n    static_configs:\n      - targets: ['{target}']\n",
            rules = repo().join("deploy/prometheus/alerts.yaml").display(),
        ),
    )
    .unwrap();
    let port = free_port();
    let child = Command::new(binary)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            data.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus");
    Prometheus {
        child,
        url: format!("http://127.0.0.1:{port}"),
        _data: data,
    }
}

/// Runs an instant query; returns (status, number of series).
fn query(prometheus: &str, expr: &str) -> (String, usize, Value) {
    let output = Command::new("curl")
        .args(["-s", "-m", "5", "-G", &format!("{prometheus}/api/v1/query")])
        .arg("--data-urlencode")
        .arg(format!("query={expr}"))
        .output()
        .expect("run curl");
    let answer: Value = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
    let status = answer["status"].as_str().unwrap_or("no answer").to_owned();
    let series = answer["data"]["result"].as_array().map_or(0, Vec::len);
    (status, series, answer)
}

/// A dashboard query made concrete: Grafana's variables replaced as Grafana would.
fn concrete(expr: &str) -> String {
    expr.replace("$__rate_interval", "20s")
        .replace("$__interval", "5s")
        .replace("$__range", "5m")
        .replace("$stream", ".*")
        .replace("$worker", ".*")
        .replace("$pipeline", ".*")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_a_worker_and_every_dashboard_and_alert_query_works() {
    let client = dynamodb().await;
    let table = unique_name("scraped");
    create_table(&client, &table).await;
    let worker = Worker::start(&worker_env(&[
        ("DYNASTREAM_TABLES", &table),
        ("DYNASTREAM_APPLICATION", &unique_name("scraped-app")),
    ]));
    let endpoints = worker.endpoints().await;
    worker.wait_for_log("shard consumer started", 1, WAIT).await;
    let target = endpoints.trim_start_matches("http://").to_owned();
    let prometheus = start_prometheus(&target);

    // Keep changes flowing so that rates and the lag histogram have data.
    let writing = Arc::new(AtomicBool::new(true));
    let writer = {
        let client = client.clone();
        let table = table.clone();
        let writing = Arc::clone(&writing);
        tokio::spawn(async move {
            let mut n = 0;
            while writing.load(Ordering::SeqCst) {
                n += 1;
                put(&client, &table, &format!("k{}", n % 7), n).await;
                if n % 5 == 0 {
                    delete(&client, &table, &format!("k{}", n % 7)).await;
                }
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        })
    };

    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("dashboards/dynastream.json")).unwrap(),
    )
    .unwrap();
    let mut panels: Vec<(String, String)> = Vec::new();
    let mut stack: Vec<&Value> = dashboard["panels"].as_array().unwrap().iter().collect();
    while let Some(panel) = stack.pop() {
        if let Some(nested) = panel["panels"].as_array() {
            stack.extend(nested.iter());
        }
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                panels.push((
                    panel["title"].as_str().unwrap_or("?").to_owned(),
                    expr.to_owned(),
                ));
            }
        }
    }
    assert!(
        panels.len() >= 10,
        "the dashboard has queries: {}",
        panels.len()
    );

    // Data must be there for the panels an operator looks at first.
    let must_have_data = |title: &str| {
        let title = title.to_ascii_lowercase();
        [
            "processed by event type",
            "processing lag",
            "leases per worker",
            "iterator age by stream",
        ]
        .iter()
        .any(|t| title.contains(t))
    };
    // Prometheus scrapes once a second: no need to ask more often.
    eventually_every(
        Duration::from_secs(1),
        WAIT,
        "data for every panel",
        || async {
            let missing: Vec<&(String, String)> = panels
                .iter()
                .filter(|(title, _)| must_have_data(title))
                .filter(|(_, expr)| query(&prometheus.url, &concrete(expr)).1 == 0)
                .collect();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(format!("no data for: {missing:#?}"))
            }
        },
    )
    .await;
    for (title, expr) in &panels {
        let (status, series, answer) = query(&prometheus.url, &concrete(expr));
        assert_eq!(status, "success", "panel {title:?}: {expr}\n{answer}");
        eprintln!("prometheus: panel {title:?}: {series} series");
    }

    // The alert rules: loaded without error, and each expression evaluates.
    let rules = Command::new("curl")
        .args(["-s", "-m", "5", &format!("{}/api/v1/rules", prometheus.url)])
        .output()
        .unwrap();
    let rules: Value = serde_json::from_slice(&rules.stdout).unwrap();
    let mut alerts = 0;
    for group in rules["data"]["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            alerts += 1;
            let name = rule["name"].as_str().unwrap_or("?");
            assert_ne!(rule["health"], "err", "rule {name}: {}", rule["lastError"]);
            let (status, series, answer) = query(&prometheus.url, rule["query"].as_str().unwrap());
            assert_eq!(status, "success", "rule {name}\n{answer}");
            eprintln!(
                "prometheus: alert {name}: {series} firing series, state {}",
                rule["state"]
            );
        }
    }
    assert!(alerts >= 7, "alert rules loaded: {alerts}");
    writing.store(false, Ordering::SeqCst);
    writer.await.unwrap();
    let (status, _, _) = worker.terminate().await;
    assert!(status.success());
}

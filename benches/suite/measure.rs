//! What the suite measures about a process and a run: CPU time and memory
//! from `/proc`, percentiles, and the worker's Prometheus samples.

use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// CPU and memory of one process, read from `/proc/<pid>` while it runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcStats {
    /// User plus system CPU time since the process started.
    pub cpu_seconds: f64,
    /// Resident set size now.
    pub rss_bytes: u64,
    /// The highest resident set size so far (`VmHWM`).
    pub peak_rss_bytes: u64,
}

fn clock_ticks_per_second() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// The process's figures now; `None` once it has exited.
pub fn proc_stats(pid: u32) -> Option<ProcStats> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may itself hold spaces: state is
    // the 1st, utime the 12th and stime the 13th.
    let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split(' ').collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |name: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Some(ProcStats {
        cpu_seconds: ticks / clock_ticks_per_second(),
        rss_bytes: kib("VmRSS:") * 1024,
        peak_rss_bytes: kib("VmHWM:") * 1024,
    })
}

/// The process id of this scenario's DynamoDB Local, from the pid file
/// `scripts/dynamodb-local` keeps beside its log.
fn dynamodb_local_pid() -> Option<u32> {
    let endpoint = &crate::support::dynamodb_local().endpoint;
    let port = endpoint.rsplit(':').next()?;
    let dir =
        std::env::var("DYNASTREAM_RUN_DIR").unwrap_or_else(|_| "/tmp/dynastream-ddb-local".into());
    std::fs::read_to_string(format!("{dir}/{port}/pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// DynamoDB Local's CPU seconds so far (0 when its pid is unknown): it
/// shares the machine's two cores with the consumer measured, so the work a
/// consumer asks of it slows the consumer too.
pub fn dynamodb_local_cpu_seconds() -> f64 {
    dynamodb_local_pid()
        .and_then(proc_stats)
        .map_or(0.0, |stats| stats.cpu_seconds)
}

/// The `q` quantile (0..=1) of `values`, by nearest rank; 0 when empty.
pub fn quantile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// The median of `values`.
pub fn median(values: &[f64]) -> f64 {
    quantile(values, 0.5)
}

/// The sum of every sample of `name` in a Prometheus text page whose labels
/// contain every needle.
pub fn metric_sum(page: &str, name: &str, needles: &[&str]) -> f64 {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The body of a plain HTTP GET on loopback, or `None` when nothing answered
/// within a second. Written on a bare socket so that polling a worker costs
/// the suite a connection, not a `curl` process.
pub async fn http_get(url: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://")?;
    let (host, path) = match rest.split_once('/') {
        Some((host, path)) => (host, format!("/{path}")),
        None => (rest, "/".to_owned()),
    };
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(host).await.ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        let text = String::from_utf8_lossy(&response).into_owned();
        Some(text.split_once("\r\n\r\n")?.1.to_owned())
    };
    tokio::time::timeout(Duration::from_secs(1), exchange)
        .await
        .ok()
        .flatten()
}

//! dynastream's benchmark suite, run by `./scripts/bench`.
//!
//! Every scenario runs dynastream and its ceiling (the plain AWS SDK loop in
//! `ceiling.rs`) in the same run, on the same data, and reports both and
//! their ratio: a shared machine is noisy, a ratio much less so. Nothing
//! here passes or fails on a timing; the figures are printed, and a target
//! missed is reported as missed.
//!
//! Each scenario runs in its own process (`suite --scenario NAME`) with its
//! own fresh DynamoDB Local, because DynamoDB Local slows down as stream
//! data piles up. `suite [NAME...]` runs the scenarios named (all by
//! default) one after the other and prints the figures as a table.
//! `suite --ceiling ...` is the raw loop as a process, and
//! `suite --endpoint ...` the consumer-bound scenario's in-memory DynamoDB
//! Streams endpoint (`endpoint.rs`).

#[path = "../../tests/support/mod.rs"]
mod support;

mod ceiling;
mod dataset;
mod endpoint;
mod measure;
mod report;
mod scenarios;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use report::{Figure, FIGURE_PREFIX};

/// The allocator dynastream's binary uses, so that the ceiling (run from
/// this binary) is measured with the same one: the comparison is of the
/// code, not of allocators.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // cargo passes `--bench` to a bench target without a harness.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime")
    };
    match args.first().map(String::as_str) {
        Some("--ceiling") => {
            let mut expected = None;
            let mut poll_ms = 250;
            let mut arns = Vec::new();
            let mut rest = args[1..].iter();
            while let Some(arg) = rest.next() {
                match arg.as_str() {
                    "--expected" => expected = rest.next().and_then(|v| v.parse().ok()),
                    "--poll-ms" => {
                        poll_ms = rest.next().and_then(|v| v.parse().ok()).unwrap_or(250)
                    }
                    arn => arns.push(arn.to_owned()),
                }
            }
            runtime().block_on(ceiling::run_process(
                arns,
                expected,
                Duration::from_millis(poll_ms),
            ));
        }
        Some("--endpoint") => {
            let setup = endpoint::Setup::from_args(&args[1..]);
            runtime().block_on(endpoint::run_process(setup));
        }
        Some("--scenario") => {
            let name = args.get(1).expect("--scenario NAME");
            runtime().block_on(scenarios::run(name));
        }
        _ => run_suite(&args),
    }
}

/// Runs each named scenario (every one when none is named) in its own
/// process, then prints every figure as one table and writes it to
/// `target/bench/latest.md`.
fn run_suite(names: &[String]) {
    let names: Vec<String> = if names.is_empty() {
        scenarios::ALL.iter().map(|s| s.to_string()).collect()
    } else {
        for name in names {
            if !scenarios::ALL.contains(&name.as_str()) {
                eprintln!(
                    "unknown scenario {name:?}: choose from {}",
                    scenarios::ALL.join(", ")
                );
                std::process::exit(2);
            }
        }
        names.to_vec()
    };
    let mut figures: Vec<Figure> = Vec::new();
    for name in &names {
        eprintln!("==> scenario {name}");
        let started = std::time::SystemTime::now();
        let mut child = Command::new(std::env::current_exe().expect("own path"))
            .args(["--scenario", name])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start a scenario process");
        let stdout = child.stdout.take().expect("piped stdout");
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            match line.strip_prefix(FIGURE_PREFIX) {
                Some(json) => {
                    let figure: Figure = serde_json::from_str(json).expect("a figure line");
                    eprintln!(
                        "    {}: dynastream {:.3}, ceiling {:?}",
                        figure.name, figure.dynastream, figure.ceiling
                    );
                    figures.push(figure);
                }
                None => println!("{line}"),
            }
        }
        let status = child.wait().expect("wait for the scenario");
        let took = started.elapsed().unwrap_or_default();
        eprintln!(
            "==> scenario {name}: {status} after {:.0} s",
            took.as_secs_f64()
        );
        if !status.success() {
            eprintln!("scenario {name} failed; its figures so far are kept");
        }
    }
    let table = report::table(&figures);
    println!("\n{table}");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&dir).expect("create target/bench");
    std::fs::write(dir.join("latest.md"), &table).expect("write target/bench/latest.md");
    eprintln!("figures written to target/bench/latest.md");
}

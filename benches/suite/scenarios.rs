//! The scenarios of the benchmark list, each run in its own process.

mod consumer;
mod drain;
mod failover;
mod idle;
mod latency;
mod startup;

/// Every scenario, in the order the suite runs them.
pub const ALL: &[&str] = &[
    "drain", "consumer", "latency", "idle", "failover", "startup",
];

/// Runs one scenario, printing its figures on standard output.
pub async fn run(name: &str) {
    match name {
        "drain" => drain::run().await,
        "consumer" => consumer::run().await,
        "latency" => latency::run().await,
        "idle" => idle::run().await,
        "failover" => failover::run().await,
        "startup" => startup::run().await,
        other => panic!("unknown scenario {other}"),
    }
}

/// A whole number from the environment, or `default`: how a run is scaled
/// down for a quick look (`DYNASTREAM_BENCH_ITEMS=10000 ./scripts/bench drain`).
pub fn setting(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(text) => text
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} is not a whole number")),
        Err(_) => default,
    }
}

/// How a figure's name says how many rounds its median is of.
pub fn rounds_text(rounds: u64) -> String {
    match rounds {
        1 => "1 round".to_owned(),
        n => format!("median of {n} rounds"),
    }
}

/// A worker's environment (see `support::worker_env`) plus the settings in
/// `DYNASTREAM_BENCH_WORKER_SETTINGS` (`NAME=value` pairs separated by
/// spaces), which override the scenario's own: how the cost of a setting is
/// measured, e.g. `DYNASTREAM_BENCH_WORKER_SETTINGS="DYNASTREAM_IDLE_POLL_INTERVAL_MS=250"`.
pub fn worker_env(settings: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env = crate::support::worker_env(settings);
    let extra = std::env::var("DYNASTREAM_BENCH_WORKER_SETTINGS").unwrap_or_default();
    for pair in extra.split_whitespace() {
        let (name, value) = pair.split_once('=').unwrap_or_else(|| {
            panic!("DYNASTREAM_BENCH_WORKER_SETTINGS: {pair:?} is not NAME=value")
        });
        env.retain(|(existing, _)| existing != name);
        env.push((name.to_owned(), value.to_owned()));
    }
    env
}

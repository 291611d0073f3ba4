//! dynastream: a long-running DynamoDB Streams consumer.
//!
//! A tour of the modules, in the order a record travels:
//!
//! - [`config`]: every setting, from flags and `DYNASTREAM_*` variables.
//! - [`streams`]: the [`streams::StreamsApi`] trait over DynamoDB Streams reads,
//!   its SDK implementation and an in-memory fake (only under `cfg(test)` or
//!   the `testing` feature, like the lease store's).
//! - [`lease`]: the lease table (KCL layout), the [`lease::LeaseStore`] trait and
//!   the protocol for a lease a worker holds.
//! - [`coordinator`]: resolves streams, builds the shard graph, takes leases and
//!   owns one shard task per held lease.
//! - [`shard`]: one shard's loop: a GetRecords cursor, a batch gatherer,
//!   dispatch, checkpoint.
//! - [`pipeline`]: with `DYNASTREAM_PIPELINES`, one read of each shard feeding
//!   several pipelines, each with its own filter, processors and checkpoint.
//! - [`tables`]: the [`tables::TablesApi`] trait over table reads (Scan,
//!   DescribeTable, ListTables, tags) for snapshots and table discovery.
//! - [`snapshot`]: a table's existing items before its changes, in Scan
//!   segments leased like shards.
//! - [`filter`]: Lambda's FilterCriteria, matched against the typed record.
//! - [`dispatch`]: gets each batch through every processor, with retries.
//! - [`processor`]: the [`processor::Processor`] trait and the built-ins.
//! - [`record`]: the record model, in exactly Lambda's event shape.
//! - [`telemetry`]: logs, metrics kept per stream and shard, and events that
//!   log and count together.
//! - [`retry`]: the one retry loop every AWS call and processor batch goes
//!   through, with [`backoff`]'s delays.
//!
//! [`Engine`] ties them together; `src/main.rs` only parses the configuration
//! and calls it.
//!
//! Delivery is at least once and in order per shard: a batch is checkpointed
//! only after every processor succeeded with it.

pub mod aws;
pub mod backoff;
pub mod config;
pub mod coordinator;
pub mod dispatch;
pub mod error;
pub mod filter;
pub mod lease;
pub mod pipeline;
pub mod processor;
pub mod record;
pub mod retry;
pub mod shard;
pub mod snapshot;
pub mod streams;
pub mod tables;
pub mod telemetry;

#[cfg(test)]
mod test_support;

mod engine;

pub use engine::{status_report, Engine};
pub use error::Error;

/// Compiles the README's Rust example as a doctest, so it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

#[cfg(test)]
mod tests {
    /// The in-memory fakes are test tools: a release build of the library
    /// must not carry them (they would be public API nobody should ship on).
    #[test]
    fn the_in_memory_fakes_are_compiled_only_for_tests() {
        for (file, source) in [
            ("src/streams/mod.rs", include_str!("streams/mod.rs")),
            ("src/lease/mod.rs", include_str!("lease/mod.rs")),
        ] {
            let lines: Vec<&str> = source.lines().collect();
            let at = lines
                .iter()
                .position(|line| line.trim() == "pub mod memory;")
                .unwrap_or_else(|| panic!("{file} declares no `memory` module"));
            assert_eq!(
                lines[at.saturating_sub(1)].trim(),
                r#"#[cfg(any(test, feature = "testing"))]"#,
                "{file}: the fake must sit behind the `testing` feature"
            );
        }
        let manifest = include_str!("../Cargo.toml");
        assert!(
            manifest.contains(r#"dynastream = { path = ".", features = ["testing"] }"#),
            "the integration tests and benches turn the fakes on as a dev-dependency"
        );
        assert!(
            !manifest.contains(r#"default = ["testing"]"#),
            "the fakes are never on by default"
        );
    }
}

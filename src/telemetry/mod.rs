//! Telemetry: logs, metrics ([`metrics`]) and the HTTP endpoints ([`server`]).
//!
//! Logs go to standard error so that standard output carries only what
//! processors write. Lines about a shard carry its stream and shard id as
//! fields (from the shard task's span), never record contents.

#[cfg(test)]
mod coverage;
pub mod events;
pub mod handles;
pub mod instrument;
pub mod metrics;
pub mod server;

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{Config, LogFormat};

/// Installs the global log subscriber. A bad `DYNASTREAM_LOG` filter is a
/// configuration error reported to the caller, not a panic.
pub fn init_logs(config: &Config) -> Result<(), String> {
    let filter = EnvFilter::try_new(&config.log)
        .map_err(|e| format!("invalid DYNASTREAM_LOG value {:?}: {e}", config.log))?;
    let format = config
        .log_format
        .unwrap_or(if std::io::stderr().is_terminal() {
            LogFormat::Text
        } else {
            LogFormat::Json
        });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let result = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
    result.map_err(|e| format!("could not install the logger: {e}"))
}

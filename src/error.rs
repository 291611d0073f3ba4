//! The engine's error type.

use crate::lease::LeaseError;
use crate::streams::StreamsError;

/// Why the engine stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configured table has no stream to consume.
    #[error(
        "table {table:?} has no stream: enable DynamoDB Streams on it (StreamSpecification, \
         e.g. NEW_AND_OLD_IMAGES) or remove it from DYNASTREAM_TABLES"
    )]
    NoStream {
        /// The table name.
        table: String,
    },
    /// A table call (DescribeTable, Scan, ListTables) failed for good.
    #[error("DynamoDB: {0}")]
    Tables(#[from] crate::tables::TablesError),
    /// A DynamoDB Streams call failed for good.
    #[error("DynamoDB Streams: {0}")]
    Streams(#[from] StreamsError),
    /// A lease-table call failed for good.
    #[error("lease table: {0}")]
    Lease(#[from] LeaseError),
    /// The configuration cannot run.
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl Error {
    /// Whether the same operation may succeed later (the engine already
    /// retried it; a supervisor may restart the worker).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Streams(e) => e.is_retryable(),
            Error::Lease(e) => e.is_retryable(),
            Error::Tables(e) => e.is_retryable(),
            Error::NoStream { .. } | Error::Config(_) => false,
        }
    }

    /// Whether the error is a problem of configuration (exit code 2).
    pub fn is_configuration(&self) -> bool {
        matches!(self, Error::Config(_) | Error::NoStream { .. })
    }
}

//! Tables: the trait over the DynamoDB table reads that snapshots and table
//! discovery need, and its SDK implementation.
//!
//! [`crate::streams`] reads a table's changes; this module reads the table
//! itself: what it is (DescribeTable), its items one Scan segment page at a
//! time, and which tables exist or carry a tag (ListTables,
//! ListTagsOfResource). Items come back in the record model's
//! [`Item`](crate::record::Item), so a snapshot record is built from them
//! exactly as a stream record is.

pub mod sdk;

use async_trait::async_trait;

use crate::aws::FailureKind;
use crate::record::Item;

/// What a snapshot and discovery need to know of a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableDescription {
    /// The table's name.
    pub name: String,
    /// The table's ARN (tags are read by ARN).
    pub arn: String,
    /// The primary key's attribute names (hash key, then range key): a
    /// snapshot record's `Keys` are these attributes of the item.
    pub key_attributes: Vec<String>,
    /// The table's current stream, when one is enabled.
    pub stream_arn: Option<String>,
    /// The stream's view type (`NEW_IMAGE`, ...), when one is enabled.
    pub stream_view_type: Option<String>,
    /// DynamoDB's estimate of the item count (updated about every six
    /// hours): the basis of a snapshot's estimated time to completion.
    pub item_count: Option<u64>,
}

/// One page of one Scan segment.
#[derive(Debug, Clone, Default)]
pub struct ScanPage {
    /// The items, whole.
    pub items: Vec<Item>,
    /// Where the next page starts; `None` once the segment is read to its end.
    pub last_evaluated_key: Option<Item>,
    /// The read capacity the page consumed, as the response reported it.
    pub consumed_rcu: f64,
}

/// Which page of which segment to read.
#[derive(Debug, Clone, Copy)]
pub struct SegmentPage<'a> {
    /// The table.
    pub table: &'a str,
    /// This segment.
    pub segment: u32,
    /// All segments of the parallel Scan.
    pub total_segments: u32,
    /// Where the page starts (the previous page's `LastEvaluatedKey`).
    pub start_key: Option<&'a Item>,
    /// Most items on the page.
    pub limit: u32,
}

/// Why a table call failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum TablesError {
    /// The table does not exist (any more).
    #[error("table not found: {0}")]
    NotFound(String),
    /// Retryable: throttled, service failure or transport failure.
    #[error("{kind:?} in {operation}: {message}")]
    Transient {
        /// The API call.
        operation: &'static str,
        /// Which kind of transient failure.
        kind: FailureKind,
        /// What the service or transport said.
        message: String,
    },
    /// Fatal: refused for a reason retrying cannot fix (permissions, validation).
    #[error("{operation} refused: {message}")]
    Rejected {
        /// The API call.
        operation: &'static str,
        /// What the service said.
        message: String,
    },
}

impl TablesError {
    /// Whether the same call may succeed if tried again after a backoff.
    pub fn is_retryable(&self) -> bool {
        matches!(self, TablesError::Transient { .. })
    }

    /// Whether the service asked us to slow down (a Scan over the table's
    /// provisioned read capacity).
    pub fn is_throttle(&self) -> bool {
        matches!(
            self,
            TablesError::Transient {
                kind: FailureKind::Throttled,
                ..
            }
        )
    }
}

/// The table reads of snapshots and discovery. Implementations do not retry.
#[async_trait]
pub trait TablesApi: Send + Sync + std::fmt::Debug + 'static {
    /// DescribeTable.
    async fn describe_table(&self, table: &str) -> Result<TableDescription, TablesError>;

    /// One page of a parallel Scan segment, strongly consistent, with its
    /// consumed capacity.
    async fn scan_page(&self, page: SegmentPage<'_>) -> Result<ScanPage, TablesError>;

    /// Every table name in the account and region (ListTables, all pages).
    async fn list_tables(&self) -> Result<Vec<String>, TablesError>;

    /// The tags of a table, by its ARN (ListTagsOfResource, all pages).
    async fn tags_of(&self, table_arn: &str) -> Result<Vec<(String, String)>, TablesError>;
}

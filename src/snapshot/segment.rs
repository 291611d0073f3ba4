//! One snapshot segment's loop: Scan a page within the read budget, deliver
//! it as snapshot records through every pipeline, record the page's
//! `LastEvaluatedKey` in the segment's lease, until the segment ends.
//!
//! A segment taken over from a worker that died resumes after the last page
//! that worker recorded; at most the one page it was delivering when it died
//! is delivered again.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::budget::ReadBudget;
use crate::backoff::Backoff;
use crate::dispatch::Dispatcher;
use crate::lease::held::HeldLease;
use crate::lease::SnapshotState;
use crate::record::{
    ChangeData, EventName, Item, SequenceNumber, StreamRecord, UserIdentity, SNAPSHOT_PRINCIPAL,
};
use crate::retry::{retry, Attempt, RetryError};
use crate::shard::ShardExit;
use crate::tables::sdk::{key_from_text, key_to_text};
use crate::tables::{SegmentPage, TableDescription, TablesApi, TablesError};
use crate::telemetry::metrics;

/// What a segment task needs.
pub(super) struct SegmentScan {
    pub lease: Arc<HeldLease>,
    pub api: Arc<dyn TablesApi>,
    /// Every pipeline's dispatcher: each page goes through all of them.
    pub pipelines: Arc<[Arc<Dispatcher>]>,
    pub budget: Arc<ReadBudget>,
    /// Most items per Scan page (one page is one batch).
    pub page_items: u32,
}

impl SegmentScan {
    /// Scans the segment from its recorded position to its end.
    pub(super) async fn run(self, shutdown: CancellationToken) -> ShardExit {
        let lease = self.lease.snapshot().await;
        let Some(mut progress) = lease.snapshot.clone() else {
            return ShardExit::Failed(format!("segment item {} has no snapshot state", lease.key));
        };
        if progress.complete {
            return ShardExit::Ended;
        }
        let table = match self.describe(&progress.table, &shutdown).await {
            Ok(table) => table,
            Err(exit) => return exit,
        };
        // Snapshot records name the stream that continues them; a table
        // scanned without one (`only`) is named by its own ARN.
        let source: Arc<str> = Arc::from(table.stream_arn.as_deref().unwrap_or(&table.arn));
        let label: Arc<str> = Arc::from(format!(
            "snapshot-segment-{}",
            progress.segment.unwrap_or_default()
        ));
        let mut start_key: Option<Item> = match progress.resume_key.as_deref() {
            None => None,
            Some(text) => match key_from_text(text) {
                Some(key) => Some(key),
                None => {
                    return ShardExit::Failed(format!(
                        "segment item {} has an unreadable resume key {text:?}",
                        lease.key
                    ))
                }
            },
        };
        if start_key.is_some() {
            tracing::info!(
                items = progress.items,
                "resuming the segment from its recorded position"
            );
        }
        let mut estimate = self.budget.last_page_cost();
        let mut backoff = Backoff::for_aws_calls();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return ShardExit::Stopped,
                _ = self.lease.lost().cancelled() => return ShardExit::LeaseLost,
                _ = self.budget.reserve(estimate) => {}
            }
            let page = SegmentPage {
                table: &progress.table,
                segment: progress.segment.unwrap_or_default(),
                total_segments: progress.total_segments,
                start_key: start_key.as_ref(),
                limit: self.page_items,
            };
            let api = &self.api;
            let table_name = progress.table.clone();
            let read = retry(&mut backoff, &shutdown, || async {
                match api.scan_page(page).await {
                    Ok(page) => Attempt::Done(page),
                    Err(err) if err.is_throttle() => {
                        metrics::snapshot_throttled(&table_name);
                        Attempt::Retry(err)
                    }
                    Err(err) if err.is_retryable() => {
                        tracing::warn!(error = %err, "snapshot Scan failed; retrying");
                        Attempt::Retry(err)
                    }
                    Err(err) => Attempt::Fail(err),
                }
            })
            .await;
            let read = match read {
                Ok(read) => read,
                Err(RetryError::Cancelled(_)) => {
                    self.budget.settle(estimate, 0.0);
                    return ShardExit::Stopped;
                }
                Err(RetryError::Failed(err)) => {
                    self.budget.settle(estimate, 0.0);
                    return ShardExit::Failed(format!(
                        "snapshot Scan of {}: {err}",
                        progress.table
                    ));
                }
            };
            backoff.reset();
            self.budget.settle(estimate, read.consumed_rcu);
            estimate = read.consumed_rcu.max(0.5);
            let count = read.items.len() as u64;
            let records: Vec<Arc<StreamRecord>> = read
                .items
                .into_iter()
                .enumerate()
                .map(|(index, item)| {
                    Arc::new(snapshot_record(
                        &table,
                        &source,
                        progress.segment.unwrap_or_default(),
                        progress.items + index as u64,
                        item,
                    ))
                })
                .collect();
            if !records.is_empty() {
                if let Err(exit) = self.deliver(&source, &label, records, &shutdown).await {
                    return exit;
                }
            }
            metrics::snapshot_page(&progress.table, count, read.consumed_rcu);
            progress.items += count;
            progress.complete = read.last_evaluated_key.is_none();
            progress.resume_key = read.last_evaluated_key.as_ref().map(key_to_text);
            let position = format!("segment item count {}", progress.items);
            if !crate::shard::write_checkpoint(&self.lease, position.as_str(), || {
                self.lease.record_snapshot(&progress)
            })
            .await
            {
                return ShardExit::LeaseLost;
            }
            if progress.complete {
                tracing::info!(items = progress.items, "snapshot segment complete");
                return ShardExit::Ended;
            }
            start_key = read.last_evaluated_key;
        }
    }

    /// Hands one page to every pipeline, each with its own filter, batching,
    /// retries and failure destination; `Err` with how the segment ends when
    /// one cannot take it.
    async fn deliver(
        &self,
        source: &Arc<str>,
        label: &Arc<str>,
        records: Vec<Arc<StreamRecord>>,
        shutdown: &CancellationToken,
    ) -> Result<(), ShardExit> {
        crate::shard::wait_for_valid_lease(&self.lease, shutdown).await?;
        let deliveries = self.pipelines.iter().map(|dispatcher| {
            dispatcher.dispatch(source, label, records.clone(), self.lease.lost(), shutdown)
        });
        for result in futures::future::join_all(deliveries).await {
            result.map_err(ShardExit::from)?;
        }
        Ok(())
    }

    async fn describe(
        &self,
        table: &str,
        shutdown: &CancellationToken,
    ) -> Result<TableDescription, ShardExit> {
        let api = &self.api;
        let described = retry(&mut Backoff::for_aws_calls(), shutdown, || async {
            Attempt::from(api.describe_table(table).await)
        })
        .await;
        match described {
            Ok(table) => Ok(table),
            Err(RetryError::Cancelled(_)) => Err(ShardExit::Stopped),
            Err(RetryError::Failed(TablesError::NotFound(_))) => Err(ShardExit::Failed(format!(
                "table {table} no longer exists; its snapshot cannot go on"
            ))),
            Err(RetryError::Failed(err)) => Err(ShardExit::Failed(err.to_string())),
        }
    }
}

/// An existing item as a Lambda-shaped `INSERT`, marked with
/// [`SNAPSHOT_PRINCIPAL`]. Its sequence number and event id are its place in
/// its segment's scan, the same however often the page is read.
pub fn snapshot_record(
    table: &TableDescription,
    source: &Arc<str>,
    segment: u32,
    ordinal: u64,
    item: Item,
) -> StreamRecord {
    let keys: Item = table
        .key_attributes
        .iter()
        .filter_map(|name| item.get(name).map(|value| (name.clone(), value.clone())))
        .collect();
    let size_bytes = serde_json::to_vec(&item).map(|v| v.len()).unwrap_or(0) as i64;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    StreamRecord {
        event_id: format!("snapshot-{segment}-{ordinal}"),
        event_name: EventName::Insert,
        event_version: "1.1".into(),
        event_source: "aws:dynamodb".into(),
        aws_region: table.arn.split(':').nth(3).unwrap_or_default().to_owned(),
        dynamodb: ChangeData {
            approximate_creation_date_time: Some(now),
            keys,
            new_image: Some(item),
            old_image: None,
            sequence_number: SequenceNumber(format!("{ordinal:021}")),
            size_bytes,
            stream_view_type: Some(
                table
                    .stream_view_type
                    .clone()
                    .unwrap_or_else(|| "NEW_IMAGE".into()),
            ),
        },
        event_source_arn: Arc::clone(source),
        user_identity: Some(UserIdentity {
            kind: "Service".into(),
            principal_id: SNAPSHOT_PRINCIPAL.into(),
        }),
    }
}

/// The state of a new segment item.
pub(super) fn fresh(
    table: &str,
    started_at_millis: u64,
    total: u32,
    segment: Option<u32>,
) -> SnapshotState {
    SnapshotState {
        table: table.to_owned(),
        started_at_millis,
        total_segments: total,
        segment,
        resume_key: None,
        items: 0,
        complete: false,
    }
}

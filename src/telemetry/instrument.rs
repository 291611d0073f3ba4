//! Metered decorators for the AWS seams: every call to DynamoDB Streams, to
//! the lease table and to the tables read by snapshots and discovery is
//! counted and timed, by API and outcome, without the SDK adapters knowing
//! about metrics.

use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use super::metrics::{self, CallOutcome};
use crate::aws::FailureKind;
use crate::lease::{Checkpoint, Lease, LeaseError, LeaseScan, LeaseStore};
use crate::streams::{
    IteratorPosition, RecordsPage, StreamPage, StreamSummary, StreamsApi, StreamsError,
};
use crate::tables::{ScanPage, SegmentPage, TableDescription, TablesApi, TablesError};

fn streams_outcome<T>(result: &Result<T, StreamsError>) -> CallOutcome {
    match result {
        Ok(_) => CallOutcome::Ok,
        Err(err) if err.is_throttle() => CallOutcome::Throttled,
        Err(_) => CallOutcome::Error,
    }
}

fn lease_outcome<T>(result: &Result<T, LeaseError>) -> CallOutcome {
    match result {
        Ok(_) => CallOutcome::Ok,
        Err(LeaseError::Conflict { .. }) => CallOutcome::Conflict,
        Err(LeaseError::Transient {
            kind: FailureKind::Throttled,
            ..
        }) => CallOutcome::Throttled,
        Err(_) => CallOutcome::Error,
    }
}

fn tables_outcome<T>(result: &Result<T, TablesError>) -> CallOutcome {
    match result {
        Ok(_) => CallOutcome::Ok,
        Err(err) if err.is_throttle() => CallOutcome::Throttled,
        Err(_) => CallOutcome::Error,
    }
}

fn record<T, E>(
    api: &'static str,
    started: Instant,
    result: &Result<T, E>,
    outcome: fn(&Result<T, E>) -> CallOutcome,
) {
    let took: Duration = started.elapsed();
    metrics::api_call(api, outcome(result), took);
}

/// Counts a lease-table write that was made (refused writes cost a write
/// unit too, and are counted as well).
fn counted_write<T>(lease: &Lease, write: &'static str, result: &Result<T, LeaseError>) {
    if !matches!(result, Err(LeaseError::Transient { .. })) {
        metrics::lease_write(lease.kind().label(), write);
    }
}

/// [`StreamsApi`] with every call counted and timed.
#[derive(Debug)]
pub struct MeteredStreams<S>(pub S);

#[async_trait]
impl<S: StreamsApi> StreamsApi for MeteredStreams<S> {
    async fn list_streams(&self, table_name: &str) -> Result<Vec<StreamSummary>, StreamsError> {
        let started = Instant::now();
        let result = self.0.list_streams(table_name).await;
        record("ListStreams", started, &result, streams_outcome);
        result
    }

    async fn describe_stream(
        &self,
        stream_arn: &str,
        exclusive_start_shard_id: Option<&str>,
        children_of: Option<&str>,
    ) -> Result<StreamPage, StreamsError> {
        let started = Instant::now();
        let result = self
            .0
            .describe_stream(stream_arn, exclusive_start_shard_id, children_of)
            .await;
        record("DescribeStream", started, &result, streams_outcome);
        result
    }

    async fn get_shard_iterator(
        &self,
        stream_arn: &str,
        shard_id: &str,
        position: &IteratorPosition,
    ) -> Result<Option<String>, StreamsError> {
        let started = Instant::now();
        let result = self
            .0
            .get_shard_iterator(stream_arn, shard_id, position)
            .await;
        record("GetShardIterator", started, &result, streams_outcome);
        result
    }

    async fn get_records(
        &self,
        stream_arn: &str,
        iterator: &str,
        limit: u32,
    ) -> Result<RecordsPage, StreamsError> {
        let started = Instant::now();
        let result = self.0.get_records(stream_arn, iterator, limit).await;
        record("GetRecords", started, &result, streams_outcome);
        result
    }
}

/// [`LeaseStore`] with every call counted and timed, by the DynamoDB API it uses.
#[derive(Debug)]
pub struct MeteredLeases<S>(pub S);

#[async_trait]
impl<S: LeaseStore> LeaseStore for MeteredLeases<S> {
    async fn ensure_table(&self) -> Result<(), LeaseError> {
        let started = Instant::now();
        let result = self.0.ensure_table().await;
        record("CreateTable", started, &result, lease_outcome);
        result
    }

    async fn list_leases(&self) -> Result<LeaseScan, LeaseError> {
        let started = Instant::now();
        let result = self.0.list_leases().await;
        record("Scan", started, &result, lease_outcome);
        result
    }

    async fn create_lease_if_absent(&self, lease: &Lease) -> Result<bool, LeaseError> {
        let started = Instant::now();
        let result = self.0.create_lease_if_absent(lease).await;
        record("PutItem", started, &result, lease_outcome);
        result
    }

    async fn take_lease(&self, lease: &Lease, new_owner: &str) -> Result<Lease, LeaseError> {
        let started = Instant::now();
        let result = self.0.take_lease(lease, new_owner).await;
        record("UpdateItem", started, &result, lease_outcome);
        counted_write(lease, "take", &result);
        result
    }

    async fn renew_lease(&self, lease: &Lease) -> Result<Lease, LeaseError> {
        let started = Instant::now();
        let result = self.0.renew_lease(lease).await;
        record("UpdateItem", started, &result, lease_outcome);
        counted_write(lease, "renew", &result);
        result
    }

    async fn update_checkpoint(
        &self,
        lease: &Lease,
        checkpoint: &Checkpoint,
    ) -> Result<Lease, LeaseError> {
        let started = Instant::now();
        let result = self.0.update_checkpoint(lease, checkpoint).await;
        record("UpdateItem", started, &result, lease_outcome);
        counted_write(lease, "checkpoint", &result);
        result
    }

    async fn update_pipeline_checkpoints(
        &self,
        lease: &Lease,
        checkpoint: &Checkpoint,
        pipelines: &std::collections::BTreeMap<String, Checkpoint>,
    ) -> Result<Lease, LeaseError> {
        let started = Instant::now();
        let result = self
            .0
            .update_pipeline_checkpoints(lease, checkpoint, pipelines)
            .await;
        record("UpdateItem", started, &result, lease_outcome);
        counted_write(lease, "checkpoint", &result);
        result
    }

    async fn remove_pipeline_checkpoints(
        &self,
        lease: &Lease,
        pipelines: &[String],
    ) -> Result<(), LeaseError> {
        let started = Instant::now();
        let result = self.0.remove_pipeline_checkpoints(lease, pipelines).await;
        record("UpdateItem", started, &result, lease_outcome);
        result
    }

    async fn release_lease(&self, lease: &Lease) -> Result<Lease, LeaseError> {
        let started = Instant::now();
        let result = self.0.release_lease(lease).await;
        record("UpdateItem", started, &result, lease_outcome);
        counted_write(lease, "release", &result);
        result
    }

    async fn request_handoff(&self, lease: &Lease, requester: &str) -> Result<Lease, LeaseError> {
        let started = Instant::now();
        let result = self.0.request_handoff(lease, requester).await;
        record("UpdateItem", started, &result, lease_outcome);
        counted_write(lease, "handoff", &result);
        result
    }

    async fn hand_off_lease(&self, lease: &Lease) -> Result<Lease, LeaseError> {
        let started = Instant::now();
        let result = self.0.hand_off_lease(lease).await;
        record("UpdateItem", started, &result, lease_outcome);
        counted_write(lease, "handoff", &result);
        result
    }

    async fn update_snapshot(
        &self,
        lease: &Lease,
        progress: &crate::lease::SnapshotState,
    ) -> Result<Lease, LeaseError> {
        let started = Instant::now();
        let result = self.0.update_snapshot(lease, progress).await;
        record("UpdateItem", started, &result, lease_outcome);
        counted_write(lease, "snapshot", &result);
        result
    }

    async fn delete_lease(&self, lease: &Lease) -> Result<(), LeaseError> {
        let started = Instant::now();
        let result = self.0.delete_lease(lease).await;
        record("DeleteItem", started, &result, lease_outcome);
        result
    }

    async fn list_leases_eventually(&self) -> Result<LeaseScan, LeaseError> {
        let started = Instant::now();
        let result = self.0.list_leases_eventually().await;
        record("Scan", started, &result, lease_outcome);
        result
    }

    async fn renew_presence(&self, lease: &Lease, held_leases: u64) -> Result<Lease, LeaseError> {
        let started = Instant::now();
        let result = self.0.renew_presence(lease, held_leases).await;
        record("UpdateItem", started, &result, lease_outcome);
        counted_write(lease, "renew", &result);
        result
    }

    async fn indexes_ready(&self) -> Result<bool, LeaseError> {
        let started = Instant::now();
        let result = self.0.indexes_ready().await;
        record("DescribeTable", started, &result, lease_outcome);
        result
    }

    async fn list_meta(&self) -> Result<LeaseScan, LeaseError> {
        let started = Instant::now();
        let result = self.0.list_meta().await;
        record("Query", started, &result, lease_outcome);
        result
    }

    async fn list_free(&self) -> Result<LeaseScan, LeaseError> {
        let started = Instant::now();
        let result = self.0.list_free().await;
        record("Query", started, &result, lease_outcome);
        result
    }

    async fn list_owned(&self, owner: &str) -> Result<Vec<String>, LeaseError> {
        let started = Instant::now();
        let result = self.0.list_owned(owner).await;
        record("Query", started, &result, lease_outcome);
        result
    }

    async fn get_lease(&self, key: &str, consistent: bool) -> Result<Option<Lease>, LeaseError> {
        let started = Instant::now();
        let result = self.0.get_lease(key, consistent).await;
        record("GetItem", started, &result, lease_outcome);
        result
    }
}

/// [`TablesApi`] with every call counted and timed.
#[derive(Debug)]
pub struct MeteredTables<T>(pub T);

#[async_trait]
impl<T: TablesApi> TablesApi for MeteredTables<T> {
    async fn describe_table(&self, table: &str) -> Result<TableDescription, TablesError> {
        let started = Instant::now();
        let result = self.0.describe_table(table).await;
        record("DescribeTable", started, &result, tables_outcome);
        result
    }

    async fn scan_page(&self, page: SegmentPage<'_>) -> Result<ScanPage, TablesError> {
        let started = Instant::now();
        let result = self.0.scan_page(page).await;
        record("Scan", started, &result, tables_outcome);
        result
    }

    async fn list_tables(&self) -> Result<Vec<String>, TablesError> {
        let started = Instant::now();
        let result = self.0.list_tables().await;
        record("ListTables", started, &result, tables_outcome);
        result
    }

    async fn tags_of(&self, table_arn: &str) -> Result<Vec<(String, String)>, TablesError> {
        let started = Instant::now();
        let result = self.0.tags_of(table_arn).await;
        record("ListTagsOfResource", started, &result, tables_outcome);
        result
    }
}

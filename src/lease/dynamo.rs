//! [`LeaseStore`] in a DynamoDB table, in the Java KCL's item layout.
//!
//! Every write is a conditional UpdateItem that names the counter and owner it
//! expects, so a worker never overwrites a lease that moved on without it.
//! Lease-table traffic is small (a renewal per lease every few seconds), so
//! the table is created PAY_PER_REQUEST.
//!
//! Two global secondary indexes make the frequent reads cheap (a whole Scan
//! costs a read unit per 4 KB of the whole table):
//!
//! - `LeaseOwnerToLeaseKeyIndex` (`leaseOwner` → `leaseKey`, keys only),
//!   exactly as the KCL 3.x creates it, so either can use the other's table:
//!   the keys of one worker's leases. Keys only, so a renewal or checkpoint
//!   (which does not change the owner) costs no index write.
//! - `DynastreamIndex` (`dynastreamIndex` → `leaseKey`, whole items): a
//!   sparse index of the small items (`meta`: presence, leadership, tables,
//!   segments) and of the shard leases nobody owns that still need reading
//!   (`free`). Other applications ignore the attribute and the index.
//!
//! Both are created with a new table and added to an existing one (a KCL
//! table, or one of an older version) by [`LeaseStore::indexes_ready`];
//! until they are ACTIVE the coordinator scans as before.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb as ddb;
use aws_sdk_dynamodb::client::Waiters;
use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, CreateGlobalSecondaryIndexAction,
    GlobalSecondaryIndex, GlobalSecondaryIndexUpdate, IndexStatus, KeySchemaElement, KeyType,
    Projection, ProjectionType, ProvisionedThroughput, ReturnValue, ScalarAttributeType,
    TableDescription,
};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_runtime_api::client::waiters::error::WaiterError;

use super::{
    Checkpoint, IndexEntry, ItemKind, Lease, LeaseError, LeaseScan, LeaseStore, SnapshotState,
};
use crate::aws::{classify, FailureKind};

/// How long start-up waits for a new lease table to become ACTIVE before it
/// counts as a transient failure (and is tried again).
const TABLE_ACTIVE_WAIT: Duration = Duration::from_secs(60);

const LEASE_KEY: &str = "leaseKey";
const LEASE_OWNER: &str = "leaseOwner";
const LEASE_COUNTER: &str = "leaseCounter";
const CHECKPOINT: &str = "checkpoint";
const CHECKPOINT_SUB_SEQUENCE: &str = "checkpointSubSequenceNumber";
/// Each named pipeline's checkpoint, a map of pipeline name to the text a
/// `checkpoint` holds; absent for an application with one pipeline.
const PIPELINE_CHECKPOINTS: &str = "pipelineCheckpoints";
const OWNER_SWITCHES: &str = "ownerSwitchesSinceCheckpoint";
const PARENT_SHARD_ID: &str = "parentShardId";
const STREAM_ARN: &str = "streamArn";
const SHARD_ID: &str = "shardId";
const UPDATED_AT: &str = "updatedAtMillis";
const PENDING_OWNER: &str = "pendingOwner";
const SNAPSHOT_TABLE: &str = "snapshotTable";
const SNAPSHOT_STARTED_AT: &str = "snapshotStartedAtMillis";
const SNAPSHOT_SEGMENTS: &str = "snapshotSegments";
const SNAPSHOT_SEGMENT: &str = "snapshotSegment";
const SNAPSHOT_RESUME_KEY: &str = "snapshotResumeKey";
const SNAPSHOT_ITEMS: &str = "snapshotItems";
const SNAPSHOT_COMPLETE: &str = "snapshotComplete";
/// On presence items: the shard leases the worker holds.
const LEASE_COUNT: &str = "leaseCount";
/// The key of `DynastreamIndex`: `meta` or `free` (see [`IndexEntry`]).
const INDEX_ENTRY: &str = "dynastreamIndex";
/// The KCL 3.x's index of leases by owner; same name, keys and projection.
pub const OWNER_INDEX: &str = "LeaseOwnerToLeaseKeyIndex";
/// Dynastream's sparse index of small items and free leases.
pub const ENTRY_INDEX: &str = "DynastreamIndex";

fn now_millis() -> AttributeValue {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    number(millis)
}

/// Leases in a DynamoDB table.
#[derive(Debug, Clone)]
pub struct DynamoLeaseStore {
    client: ddb::Client,
    table: String,
}

impl DynamoLeaseStore {
    /// Leases in `table`, through `client`.
    pub fn new(client: ddb::Client, table: impl Into<String>) -> Self {
        DynamoLeaseStore {
            client,
            table: table.into(),
        }
    }

    /// Every page of a Scan of the whole table.
    async fn scan(&self, consistent: bool) -> Result<LeaseScan, LeaseError> {
        let mut scan = LeaseScan::default();
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        loop {
            let answer = self
                .client
                .scan()
                .table_name(&self.table)
                .consistent_read(consistent)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| self.error("Scan", "", e))?;
            for item in answer.items.unwrap_or_default() {
                match lease_from_item(&item) {
                    Ok(lease) => scan.leases.push(lease),
                    Err(err) => scan.malformed.push(err),
                }
            }
            match answer.last_evaluated_key {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => return Ok(scan),
            }
        }
    }

    /// Every page of a Query on one of the indexes.
    async fn query_index(
        &self,
        index: &str,
        attribute: &str,
        value: &str,
    ) -> Result<Vec<HashMap<String, AttributeValue>>, LeaseError> {
        let mut items = Vec::new();
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        loop {
            let answer = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(index)
                .key_condition_expression("#k = :v")
                .expression_attribute_names("#k", attribute)
                .expression_attribute_values(":v", AttributeValue::S(value.to_owned()))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| self.error("Query", "", e))?;
            items.extend(answer.items.unwrap_or_default());
            match answer.last_evaluated_key {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => return Ok(items),
            }
        }
    }

    /// The leases of one partition of `DynastreamIndex`.
    async fn list_entry(&self, entry: IndexEntry) -> Result<LeaseScan, LeaseError> {
        let mut scan = LeaseScan::default();
        for item in self
            .query_index(ENTRY_INDEX, INDEX_ENTRY, entry.as_stored())
            .await?
        {
            match lease_from_item(&item) {
                Ok(lease) => scan.leases.push(lease),
                Err(err) => scan.malformed.push(err),
            }
        }
        Ok(scan)
    }

    /// Starts building the first missing index, unless one is being built
    /// (DynamoDB adds one index per UpdateTable). On a provisioned table (a
    /// KCL table may be one) the index gets the table's capacity, as the KCL
    /// gives its own.
    async fn create_missing_index(&self, table: &TableDescription) -> Result<(), LeaseError> {
        let indexes = table.global_secondary_indexes();
        if indexes
            .iter()
            .any(|i| i.index_status() != Some(&IndexStatus::Active))
        {
            return Ok(());
        }
        let present = |name: &str| indexes.iter().any(|i| i.index_name() == Some(name));
        let (name, hash) = if !present(OWNER_INDEX) {
            (OWNER_INDEX, LEASE_OWNER)
        } else if !present(ENTRY_INDEX) {
            (ENTRY_INDEX, INDEX_ENTRY)
        } else {
            return Ok(());
        };
        let provisioned = table
            .billing_mode_summary()
            .and_then(|b| b.billing_mode())
            .is_none_or(|mode| *mode == BillingMode::Provisioned);
        let throughput = match table.provisioned_throughput() {
            Some(t) if provisioned => Some(
                ProvisionedThroughput::builder()
                    .read_capacity_units(t.read_capacity_units().unwrap_or(1).max(1))
                    .write_capacity_units(t.write_capacity_units().unwrap_or(1).max(1))
                    .build()
                    .map_err(|e| rejected("UpdateTable", e))?,
            ),
            _ => None,
        };
        let index = global_index(name, hash)?;
        let create = CreateGlobalSecondaryIndexAction::builder()
            .index_name(name)
            .set_key_schema(Some(index.key_schema))
            .set_projection(index.projection)
            .set_provisioned_throughput(throughput)
            .build()
            .map_err(|e| rejected("UpdateTable", e))?;
        let answer = self
            .client
            .update_table()
            .table_name(&self.table)
            // Only the new index's keys: DynamoDB refuses definitions no key uses.
            .set_attribute_definitions(Some(attribute_definitions(&[LEASE_KEY, hash])?))
            .global_secondary_index_updates(
                GlobalSecondaryIndexUpdate::builder().create(create).build(),
            )
            .send()
            .await;
        match answer {
            Ok(_) => {
                tracing::info!(table = %self.table, index = name, "adding an index to the lease table; the table is scanned until it is ACTIVE");
                Ok(())
            }
            // Another worker asked first, or the table is busy: look again later.
            Err(err)
                if matches!(
                    err.code(),
                    Some("ResourceInUseException" | "LimitExceededException")
                ) =>
            {
                Ok(())
            }
            Err(err) => Err(self.error("UpdateTable", "", err)),
        }
    }

    /// The lease table's name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Records progress: the checkpoint and, when given, every pipeline's
    /// (written whole); resets the KCL's sub-sequence and owner-switch counts.
    async fn write_checkpoint(
        &self,
        lease: &Lease,
        checkpoint: &Checkpoint,
        pipelines: Option<&BTreeMap<String, Checkpoint>>,
    ) -> Result<Lease, LeaseError> {
        let mut values = HashMap::new();
        values.insert(":one".into(), number(1));
        values.insert(":zero".into(), number(0));
        values.insert(
            ":checkpoint".into(),
            AttributeValue::S(checkpoint.as_stored().to_owned()),
        );
        let mut names = HashMap::new();
        names.insert("#checkpoint".into(), CHECKPOINT.into());
        names.insert("#sub".into(), CHECKPOINT_SUB_SEQUENCE.into());
        names.insert("#switches".into(), OWNER_SWITCHES.into());
        let mut update = "SET #counter = #counter + :one, #checkpoint = :checkpoint, \
                          #sub = :zero, #switches = :zero"
            .to_owned();
        if let Some(pipelines) = pipelines {
            names.insert("#pipelines".into(), PIPELINE_CHECKPOINTS.into());
            if lease.pipeline_checkpoints.is_empty() {
                // No map yet (as of our own last write, which the counter
                // condition vouches for): create it.
                values.insert(":pipelines".into(), pipeline_checkpoints_value(pipelines));
                update.push_str(", #pipelines = :pipelines");
            } else {
                // Only our entries: a removed pipeline's entry, which the
                // leader may be deleting, is never written back.
                for (index, (name, checkpoint)) in pipelines.iter().enumerate() {
                    names.insert(format!("#p{index}"), name.clone());
                    values.insert(
                        format!(":p{index}"),
                        AttributeValue::S(checkpoint.as_stored().to_owned()),
                    );
                    update.push_str(&format!(", #pipelines.#p{index} = :p{index}"));
                }
            }
        }
        self.conditional_update("Checkpoint", lease, update, values, names)
            .await
    }

    fn error<E>(
        &self,
        operation: &'static str,
        key: &str,
        err: SdkError<E, HttpResponse>,
    ) -> LeaseError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let failure = classify(&err);
        match failure.code.as_deref() {
            Some("ConditionalCheckFailedException") => LeaseError::Conflict {
                key: key.to_owned(),
            },
            Some("ResourceNotFoundException") => LeaseError::TableNotFound {
                table: self.table.clone(),
            },
            _ => match failure.kind {
                FailureKind::Rejected => LeaseError::Rejected {
                    operation,
                    message: failure.message,
                },
                kind => LeaseError::Transient {
                    operation,
                    kind,
                    message: failure.message,
                },
            },
        }
    }

    /// A conditional update on the lease's counter and owner, returning the
    /// new item. `owned_after` says whether the item has an owner once
    /// written, which decides its entry in `DynastreamIndex`.
    async fn conditional_update(
        &self,
        operation: &'static str,
        lease: &Lease,
        update: String,
        values: HashMap<String, AttributeValue>,
        names: HashMap<String, String>,
    ) -> Result<Lease, LeaseError> {
        let owned_after = lease.owner.is_some();
        self.conditional_update_as(operation, lease, owned_after, update, values, names)
            .await
    }

    async fn conditional_update_as(
        &self,
        operation: &'static str,
        lease: &Lease,
        owned_after: bool,
        update: String,
        mut values: HashMap<String, AttributeValue>,
        mut names: HashMap<String, String>,
    ) -> Result<Lease, LeaseError> {
        let update = with_index_entry(
            &update,
            entry_after(lease, owned_after),
            &mut values,
            &mut names,
        );
        let mut condition = "#counter = :expected_counter".to_owned();
        values.insert(":expected_counter".into(), number(lease.counter));
        values.insert(":updated_at".into(), now_millis());
        names.insert("#counter".into(), LEASE_COUNTER.into());
        names.insert("#updated_at".into(), UPDATED_AT.into());
        names.insert("#owner".into(), LEASE_OWNER.into());
        match &lease.owner {
            Some(owner) => {
                condition.push_str(" AND #owner = :expected_owner");
                values.insert(":expected_owner".into(), AttributeValue::S(owner.clone()));
            }
            None => condition.push_str(" AND attribute_not_exists(#owner)"),
        }
        let answer = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(LEASE_KEY, AttributeValue::S(lease.key.clone()))
            .update_expression(with_update_time(&update))
            .condition_expression(condition)
            .set_expression_attribute_values(Some(values))
            .set_expression_attribute_names(Some(names))
            .return_values(ReturnValue::AllNew)
            .send()
            .await
            .map_err(|e| self.error(operation, &lease.key, e))?;
        let item = answer.attributes.unwrap_or_default();
        lease_from_item(&item)
    }
}

/// The entry an item has in `DynastreamIndex` once written with (or
/// without) an owner.
fn entry_after(lease: &Lease, owned_after: bool) -> Option<IndexEntry> {
    match lease.kind() {
        ItemKind::Shard if owned_after || lease.is_finished() => None,
        ItemKind::Shard => Some(IndexEntry::Free),
        _ => Some(IndexEntry::Meta),
    }
}

/// Sets or removes the item's `DynastreamIndex` key in an update.
fn with_index_entry(
    update: &str,
    entry: Option<IndexEntry>,
    values: &mut HashMap<String, AttributeValue>,
    names: &mut HashMap<String, String>,
) -> String {
    names.insert("#index".into(), INDEX_ENTRY.into());
    match entry {
        Some(entry) => {
            values.insert(":index".into(), AttributeValue::S(entry.as_stored().into()));
            match update.find(" REMOVE ") {
                Some(at) => format!("{}, #index = :index{}", &update[..at], &update[at..]),
                None => format!("{update}, #index = :index"),
            }
        }
        None if update.contains(" REMOVE ") => format!("{update}, #index"),
        None => format!("{update} REMOVE #index"),
    }
}

fn rejected(operation: &'static str, err: impl std::fmt::Display) -> LeaseError {
    LeaseError::Rejected {
        operation,
        message: err.to_string(),
    }
}

fn key_element(name: &str, key_type: KeyType) -> Result<KeySchemaElement, LeaseError> {
    KeySchemaElement::builder()
        .attribute_name(name)
        .key_type(key_type)
        .build()
        .map_err(|e| rejected("CreateTable", e))
}

/// String attribute definitions of these key attributes.
fn attribute_definitions(names: &[&str]) -> Result<Vec<AttributeDefinition>, LeaseError> {
    names
        .iter()
        .map(|name| {
            AttributeDefinition::builder()
                .attribute_name(*name)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .map_err(|e| rejected("CreateTable", e))
        })
        .collect()
}

/// One of the two indexes, keyed on `hash` then `leaseKey`: the owner
/// index projects keys only (as the KCL's), ours whole items.
fn global_index(name: &str, hash: &str) -> Result<GlobalSecondaryIndex, LeaseError> {
    let projection = if name == OWNER_INDEX {
        ProjectionType::KeysOnly
    } else {
        ProjectionType::All
    };
    GlobalSecondaryIndex::builder()
        .index_name(name)
        .key_schema(key_element(hash, KeyType::Hash)?)
        .key_schema(key_element(LEASE_KEY, KeyType::Range)?)
        .projection(Projection::builder().projection_type(projection).build())
        .build()
        .map_err(|e| rejected("CreateTable", e))
}

/// Adds `#updated_at = :updated_at` to the SET clause of an update.
fn with_update_time(update: &str) -> String {
    match update.find(" REMOVE ") {
        Some(at) => format!(
            "{}, #updated_at = :updated_at{}",
            &update[..at],
            &update[at..]
        ),
        None => format!("{update}, #updated_at = :updated_at"),
    }
}

fn number(value: u64) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

/// Reads a lease item; an item that is not a lease is reported, not guessed at.
pub fn lease_from_item(item: &HashMap<String, AttributeValue>) -> Result<Lease, LeaseError> {
    let key = match item.get(LEASE_KEY) {
        Some(AttributeValue::S(key)) => key.clone(),
        _ => {
            return Err(LeaseError::Malformed {
                key: "?".into(),
                reason: "no string leaseKey".into(),
            })
        }
    };
    let malformed = |reason: String| LeaseError::Malformed {
        key: key.clone(),
        reason,
    };
    let read_number = |name: &str| -> Result<u64, LeaseError> {
        match item.get(name) {
            None => Ok(0),
            Some(AttributeValue::N(n)) => n
                .parse()
                .map_err(|_| malformed(format!("{name} is not a whole number: {n:?}"))),
            Some(other) => Err(malformed(format!("{name} is not a number: {other:?}"))),
        }
    };
    let read_string = |name: &str| -> Result<Option<String>, LeaseError> {
        match item.get(name) {
            None | Some(AttributeValue::Null(_)) => Ok(None),
            Some(AttributeValue::S(s)) => Ok(Some(s.clone())),
            Some(other) => Err(malformed(format!("{name} is not a string: {other:?}"))),
        }
    };
    let checkpoint_text = read_string(CHECKPOINT)?.unwrap_or_else(|| "TRIM_HORIZON".into());
    let checkpoint = Checkpoint::parse(&checkpoint_text)
        .ok_or_else(|| malformed(format!("checkpoint {checkpoint_text:?} is not a sequence number or TRIM_HORIZON/LATEST/SHARD_END")))?;
    let parent_shard_ids = match item.get(PARENT_SHARD_ID) {
        None => Vec::new(),
        Some(AttributeValue::Ss(set)) => set.clone(),
        Some(AttributeValue::S(one)) => vec![one.clone()],
        Some(other) => {
            return Err(malformed(format!(
                "parentShardId is not a string set: {other:?}"
            )))
        }
    };
    let pipeline_checkpoints = match item.get(PIPELINE_CHECKPOINTS) {
        None | Some(AttributeValue::Null(_)) => BTreeMap::new(),
        Some(AttributeValue::M(map)) => map
            .iter()
            .map(|(name, value)| match value {
                AttributeValue::S(text) => Checkpoint::parse(text)
                    .map(|checkpoint| (name.clone(), checkpoint))
                    .ok_or_else(|| {
                        malformed(format!(
                            "pipelineCheckpoints.{name} is not a checkpoint: {text:?}"
                        ))
                    }),
                other => Err(malformed(format!(
                    "pipelineCheckpoints.{name} is not a string: {other:?}"
                ))),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(malformed(format!(
                "pipelineCheckpoints is not a map: {other:?}"
            )))
        }
    };
    let snapshot = match read_string(SNAPSHOT_TABLE)? {
        None => None,
        Some(table) => {
            let segments = read_number(SNAPSHOT_SEGMENTS)?;
            Some(SnapshotState {
                table,
                started_at_millis: read_number(SNAPSHOT_STARTED_AT)?,
                total_segments: u32::try_from(segments).map_err(|_| {
                    malformed(format!("{SNAPSHOT_SEGMENTS} is too large: {segments}"))
                })?,
                segment: match item.get(SNAPSHOT_SEGMENT) {
                    None => None,
                    Some(_) => Some(
                        u32::try_from(read_number(SNAPSHOT_SEGMENT)?)
                            .map_err(|_| malformed(format!("{SNAPSHOT_SEGMENT} is too large")))?,
                    ),
                },
                resume_key: read_string(SNAPSHOT_RESUME_KEY)?,
                items: read_number(SNAPSHOT_ITEMS)?,
                complete: matches!(
                    item.get(SNAPSHOT_COMPLETE),
                    Some(AttributeValue::Bool(true))
                ),
            })
        }
    };
    let held_leases = match item.get(LEASE_COUNT) {
        None => None,
        Some(_) => Some(read_number(LEASE_COUNT)?),
    };
    Ok(Lease {
        held_leases,
        snapshot,
        pipeline_checkpoints,
        shard_id: read_string(SHARD_ID)?.unwrap_or_else(|| key.clone()),
        pending_owner: read_string(PENDING_OWNER)?,
        updated_at_millis: match item.get(UPDATED_AT) {
            Some(AttributeValue::N(n)) => n.parse().ok(),
            _ => None,
        },
        stream_arn: read_string(STREAM_ARN)?,
        owner: read_string(LEASE_OWNER)?,
        counter: read_number(LEASE_COUNTER)?,
        checkpoint,
        checkpoint_sub_sequence_number: read_number(CHECKPOINT_SUB_SEQUENCE)?,
        owner_switches_since_checkpoint: read_number(OWNER_SWITCHES)?,
        parent_shard_ids,
        key,
    })
}

/// An item's size as DynamoDB bills it: each attribute's name plus its
/// value (strings by their UTF-8 bytes, numbers about one byte per two
/// digits plus one, sets and maps by their members plus a few bytes).
pub fn item_size(item: &HashMap<String, AttributeValue>) -> usize {
    fn value_size(value: &AttributeValue) -> usize {
        match value {
            AttributeValue::S(s) => s.len(),
            AttributeValue::N(n) => n.trim_start_matches('-').len().div_ceil(2) + 1,
            AttributeValue::Ss(set) => set.iter().map(String::len).sum(),
            AttributeValue::M(map) => {
                3 + map
                    .iter()
                    .map(|(name, value)| name.len() + value_size(value) + 1)
                    .sum::<usize>()
            }
            AttributeValue::L(list) => 3 + list.iter().map(|v| value_size(v) + 1).sum::<usize>(),
            _ => 1,
        }
    }
    item.iter()
        .map(|(name, value)| name.len() + value_size(value))
        .sum()
}

/// The size of an item as `LeaseOwnerToLeaseKeyIndex` holds it (keys only).
pub fn owner_index_size(lease: &Lease) -> usize {
    LEASE_KEY.len()
        + lease.key.len()
        + LEASE_OWNER.len()
        + lease.owner.as_deref().map_or(0, str::len)
}

/// Writes a lease as an item.
pub fn lease_to_item(lease: &Lease) -> HashMap<String, AttributeValue> {
    let mut item = HashMap::new();
    item.insert(LEASE_KEY.into(), AttributeValue::S(lease.key.clone()));
    if let Some(owner) = &lease.owner {
        item.insert(LEASE_OWNER.into(), AttributeValue::S(owner.clone()));
    }
    if let Some(arn) = &lease.stream_arn {
        item.insert(STREAM_ARN.into(), AttributeValue::S(arn.clone()));
    }
    if let Some(pending) = &lease.pending_owner {
        item.insert(PENDING_OWNER.into(), AttributeValue::S(pending.clone()));
    }
    if lease.shard_id != lease.key {
        item.insert(SHARD_ID.into(), AttributeValue::S(lease.shard_id.clone()));
    }
    item.insert(UPDATED_AT.into(), now_millis());
    item.insert(LEASE_COUNTER.into(), number(lease.counter));
    item.insert(
        CHECKPOINT.into(),
        AttributeValue::S(lease.checkpoint.as_stored().to_owned()),
    );
    item.insert(
        CHECKPOINT_SUB_SEQUENCE.into(),
        number(lease.checkpoint_sub_sequence_number),
    );
    item.insert(
        OWNER_SWITCHES.into(),
        number(lease.owner_switches_since_checkpoint),
    );
    if !lease.parent_shard_ids.is_empty() {
        item.insert(
            PARENT_SHARD_ID.into(),
            AttributeValue::Ss(lease.parent_shard_ids.clone()),
        );
    }
    if !lease.pipeline_checkpoints.is_empty() {
        item.insert(
            PIPELINE_CHECKPOINTS.into(),
            pipeline_checkpoints_value(&lease.pipeline_checkpoints),
        );
    }
    if let Some(count) = lease.held_leases {
        item.insert(LEASE_COUNT.into(), number(count));
    }
    if let Some(entry) = lease.index_entry() {
        item.insert(
            INDEX_ENTRY.into(),
            AttributeValue::S(entry.as_stored().into()),
        );
    }
    if let Some(snapshot) = &lease.snapshot {
        item.insert(
            SNAPSHOT_TABLE.into(),
            AttributeValue::S(snapshot.table.clone()),
        );
        item.insert(
            SNAPSHOT_STARTED_AT.into(),
            number(snapshot.started_at_millis),
        );
        item.insert(
            SNAPSHOT_SEGMENTS.into(),
            number(u64::from(snapshot.total_segments)),
        );
        if let Some(segment) = snapshot.segment {
            item.insert(SNAPSHOT_SEGMENT.into(), number(u64::from(segment)));
        }
        if let Some(key) = &snapshot.resume_key {
            item.insert(SNAPSHOT_RESUME_KEY.into(), AttributeValue::S(key.clone()));
        }
        item.insert(SNAPSHOT_ITEMS.into(), number(snapshot.items));
        item.insert(
            SNAPSHOT_COMPLETE.into(),
            AttributeValue::Bool(snapshot.complete),
        );
    }
    item
}

fn pipeline_checkpoints_value(pipelines: &BTreeMap<String, Checkpoint>) -> AttributeValue {
    AttributeValue::M(
        pipelines
            .iter()
            .map(|(name, checkpoint)| {
                (
                    name.clone(),
                    AttributeValue::S(checkpoint.as_stored().to_owned()),
                )
            })
            .collect(),
    )
}

#[async_trait]
impl LeaseStore for DynamoLeaseStore {
    async fn ensure_table(&self) -> Result<(), LeaseError> {
        let created = self
            .client
            .create_table()
            .table_name(&self.table)
            .set_attribute_definitions(Some(attribute_definitions(&[
                LEASE_KEY,
                LEASE_OWNER,
                INDEX_ENTRY,
            ])?))
            .key_schema(key_element(LEASE_KEY, KeyType::Hash)?)
            .global_secondary_indexes(global_index(OWNER_INDEX, LEASE_OWNER)?)
            .global_secondary_indexes(global_index(ENTRY_INDEX, INDEX_ENTRY)?)
            .billing_mode(BillingMode::PayPerRequest)
            .send()
            .await;
        match created {
            Ok(_) => tracing::info!(table = %self.table, "created the lease table"),
            Err(err) if err.code() == Some("ResourceInUseException") => {}
            Err(err) => return Err(self.error("CreateTable", "", err)),
        }
        // The SDK's own waiter polls DescribeTable until the table is ACTIVE.
        // Past the wait the error is transient, and start-up tries again.
        let waited = self
            .client
            .wait_until_table_exists()
            .table_name(&self.table)
            .wait(TABLE_ACTIVE_WAIT)
            .await;
        match waited {
            Ok(_) => {
                // An existing table may lack the indexes: start building them
                // now rather than at the coordinator's first look.
                if let Err(err) = self.indexes_ready().await {
                    tracing::warn!(table = %self.table, error = %err, "could not add the lease table's indexes; the table is scanned instead");
                }
                Ok(())
            }
            Err(WaiterError::OperationFailed(failed)) => {
                Err(self.error("DescribeTable", "", failed.into_error()))
            }
            Err(WaiterError::ExceededMaxWait(_)) => Err(LeaseError::Transient {
                operation: "DescribeTable",
                kind: FailureKind::ServiceUnavailable,
                message: format!(
                    "lease table {} did not become ACTIVE within {} s",
                    self.table,
                    TABLE_ACTIVE_WAIT.as_secs()
                ),
            }),
            Err(other) => Err(LeaseError::Transient {
                operation: "DescribeTable",
                kind: FailureKind::ServiceUnavailable,
                message: format!(
                    "waiting for lease table {} to become ACTIVE: {other}",
                    self.table
                ),
            }),
        }
    }

    async fn list_leases(&self) -> Result<LeaseScan, LeaseError> {
        self.scan(true).await
    }

    async fn list_leases_eventually(&self) -> Result<LeaseScan, LeaseError> {
        self.scan(false).await
    }

    async fn create_lease_if_absent(&self, lease: &Lease) -> Result<bool, LeaseError> {
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(lease_to_item(lease)))
            .condition_expression("attribute_not_exists(#key)")
            .expression_attribute_names("#key", LEASE_KEY)
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(err) => match self.error("PutItem", &lease.key, err) {
                LeaseError::Conflict { .. } => Ok(false),
                other => Err(other),
            },
        }
    }

    async fn take_lease(&self, lease: &Lease, new_owner: &str) -> Result<Lease, LeaseError> {
        let switched = !lease.is_owned_by(new_owner);
        let mut values = HashMap::new();
        values.insert(":one".into(), number(1));
        values.insert(":new_owner".into(), AttributeValue::S(new_owner.to_owned()));
        values.insert(":zero".into(), number(0));
        values.insert(":switch".into(), number(u64::from(switched)));
        let mut names = HashMap::new();
        names.insert("#switches".into(), OWNER_SWITCHES.into());
        names.insert("#pending".into(), PENDING_OWNER.into());
        let update = "SET #counter = #counter + :one, #owner = :new_owner, \
                      #switches = if_not_exists(#switches, :zero) + :switch REMOVE #pending"
            .to_owned();
        self.conditional_update_as("TakeLease", lease, true, update, values, names)
            .await
    }

    async fn renew_presence(&self, lease: &Lease, held_leases: u64) -> Result<Lease, LeaseError> {
        let values = HashMap::from([
            (":one".to_owned(), number(1)),
            (":count".to_owned(), number(held_leases)),
        ]);
        let names = HashMap::from([("#count".to_owned(), LEASE_COUNT.to_owned())]);
        self.conditional_update(
            "RenewPresence",
            lease,
            "SET #counter = #counter + :one, #count = :count".into(),
            values,
            names,
        )
        .await
    }

    async fn indexes_ready(&self) -> Result<bool, LeaseError> {
        let described = self
            .client
            .describe_table()
            .table_name(&self.table)
            .send()
            .await
            .map_err(|e| self.error("DescribeTable", "", e))?;
        let Some(table) = described.table else {
            return Ok(false);
        };
        let active = |name: &str| {
            table.global_secondary_indexes().iter().any(|i| {
                i.index_name() == Some(name)
                    && i.index_status() == Some(&IndexStatus::Active)
                    && i.backfilling() != Some(true)
            })
        };
        if active(OWNER_INDEX) && active(ENTRY_INDEX) {
            tracing::debug!(table = %self.table, "the lease table's indexes are ACTIVE");
            return Ok(true);
        }
        self.create_missing_index(&table).await?;
        Ok(false)
    }

    async fn list_meta(&self) -> Result<LeaseScan, LeaseError> {
        self.list_entry(IndexEntry::Meta).await
    }

    async fn list_free(&self) -> Result<LeaseScan, LeaseError> {
        self.list_entry(IndexEntry::Free).await
    }

    async fn list_owned(&self, owner: &str) -> Result<Vec<String>, LeaseError> {
        let items = self.query_index(OWNER_INDEX, LEASE_OWNER, owner).await?;
        Ok(items
            .into_iter()
            .filter_map(|item| match item.get(LEASE_KEY) {
                Some(AttributeValue::S(key)) => Some(key.clone()),
                _ => None,
            })
            .collect())
    }

    async fn get_lease(&self, key: &str, consistent: bool) -> Result<Option<Lease>, LeaseError> {
        let answer = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(LEASE_KEY, AttributeValue::S(key.to_owned()))
            .consistent_read(consistent)
            .send()
            .await
            .map_err(|e| self.error("GetItem", key, e))?;
        answer.item.map(|item| lease_from_item(&item)).transpose()
    }

    async fn renew_lease(&self, lease: &Lease) -> Result<Lease, LeaseError> {
        let mut values = HashMap::new();
        values.insert(":one".into(), number(1));
        self.conditional_update(
            "RenewLease",
            lease,
            "SET #counter = #counter + :one".into(),
            values,
            HashMap::new(),
        )
        .await
    }

    async fn update_checkpoint(
        &self,
        lease: &Lease,
        checkpoint: &Checkpoint,
    ) -> Result<Lease, LeaseError> {
        self.write_checkpoint(lease, checkpoint, None).await
    }

    async fn update_pipeline_checkpoints(
        &self,
        lease: &Lease,
        checkpoint: &Checkpoint,
        pipelines: &BTreeMap<String, Checkpoint>,
    ) -> Result<Lease, LeaseError> {
        self.write_checkpoint(lease, checkpoint, Some(pipelines))
            .await
    }

    async fn remove_pipeline_checkpoints(
        &self,
        lease: &Lease,
        pipelines: &[String],
    ) -> Result<(), LeaseError> {
        if pipelines.is_empty() {
            return Ok(());
        }
        let mut names = HashMap::from([
            ("#key".to_owned(), LEASE_KEY.to_owned()),
            ("#pipelines".to_owned(), PIPELINE_CHECKPOINTS.to_owned()),
        ]);
        let mut paths = Vec::new();
        for (index, name) in pipelines.iter().enumerate() {
            names.insert(format!("#p{index}"), name.clone());
            paths.push(format!("#pipelines.#p{index}"));
        }
        self.client
            .update_item()
            .table_name(&self.table)
            .key(LEASE_KEY, AttributeValue::S(lease.key.clone()))
            .update_expression(format!("REMOVE {}", paths.join(", ")))
            .condition_expression("attribute_exists(#key)")
            .set_expression_attribute_names(Some(names))
            .send()
            .await
            .map_err(|e| self.error("RemovePipelineCheckpoints", &lease.key, e))?;
        Ok(())
    }

    async fn update_snapshot(
        &self,
        lease: &Lease,
        progress: &SnapshotState,
    ) -> Result<Lease, LeaseError> {
        let mut values = HashMap::from([
            (":one".to_owned(), number(1)),
            (":items".to_owned(), number(progress.items)),
            (
                ":complete".to_owned(),
                AttributeValue::Bool(progress.complete),
            ),
        ]);
        let mut names = HashMap::from([
            ("#items".to_owned(), SNAPSHOT_ITEMS.to_owned()),
            ("#complete".to_owned(), SNAPSHOT_COMPLETE.to_owned()),
        ]);
        let mut update =
            "SET #counter = #counter + :one, #items = :items, #complete = :complete".to_owned();
        if let Some(key) = &progress.resume_key {
            values.insert(":resume".into(), AttributeValue::S(key.clone()));
            names.insert("#resume".into(), SNAPSHOT_RESUME_KEY.into());
            update.push_str(", #resume = :resume");
        }
        self.conditional_update("SnapshotProgress", lease, update, values, names)
            .await
    }

    async fn release_lease(&self, lease: &Lease) -> Result<Lease, LeaseError> {
        let mut values = HashMap::new();
        values.insert(":one".into(), number(1));
        self.conditional_update_as(
            "ReleaseLease",
            lease,
            false,
            "SET #counter = #counter + :one REMOVE #owner".into(),
            values,
            HashMap::new(),
        )
        .await
    }

    async fn request_handoff(&self, lease: &Lease, requester: &str) -> Result<Lease, LeaseError> {
        let mut values = HashMap::new();
        values.insert(":requester".into(), AttributeValue::S(requester.to_owned()));
        let mut names = HashMap::new();
        names.insert("#pending".into(), PENDING_OWNER.into());
        self.conditional_update(
            "RequestHandoff",
            lease,
            "SET #pending = :requester".into(),
            values,
            names,
        )
        .await
    }

    async fn hand_off_lease(&self, lease: &Lease) -> Result<Lease, LeaseError> {
        let Some(next) = lease.pending_owner.clone() else {
            return Err(LeaseError::Conflict {
                key: lease.key.clone(),
            });
        };
        let mut values = HashMap::new();
        values.insert(":one".into(), number(1));
        values.insert(":zero".into(), number(0));
        values.insert(":next".into(), AttributeValue::S(next));
        let mut names = HashMap::new();
        names.insert("#pending".into(), PENDING_OWNER.into());
        names.insert("#switches".into(), OWNER_SWITCHES.into());
        self.conditional_update_as(
            "HandOffLease",
            lease,
            true,
            "SET #counter = #counter + :one, #owner = :next, \
             #switches = if_not_exists(#switches, :zero) + :one REMOVE #pending"
                .into(),
            values,
            names,
        )
        .await
    }

    async fn delete_lease(&self, lease: &Lease) -> Result<(), LeaseError> {
        let condition = if lease.owner.is_none() {
            "#counter = :expected_counter AND attribute_not_exists(#owner)"
        } else {
            "#counter = :expected_counter"
        };
        let mut request = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key(LEASE_KEY, AttributeValue::S(lease.key.clone()))
            .condition_expression(condition)
            .expression_attribute_names("#counter", LEASE_COUNTER)
            .expression_attribute_values(":expected_counter", number(lease.counter));
        if lease.owner.is_none() {
            request = request.expression_attribute_names("#owner", LEASE_OWNER);
        }
        request
            .send()
            .await
            .map_err(|e| self.error("DeleteItem", &lease.key, e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_round_trip() {
        let mut lease = Lease::new("arn:s", "shardId-1", Some("shardId-0"), Checkpoint::Latest);
        lease.owner = Some("w1".into());
        lease.counter = 7;
        let mut back = lease_from_item(&lease_to_item(&lease)).unwrap();
        assert!(back.updated_at_millis.is_some());
        back.updated_at_millis = None;
        assert_eq!(back, lease);
        assert!(!lease_to_item(&lease).contains_key(PIPELINE_CHECKPOINTS));
        lease
            .pipeline_checkpoints
            .insert("search".into(), Checkpoint::ShardEnd);
        lease.pipeline_checkpoints.insert(
            "audit_log".into(),
            Checkpoint::Sequence(crate::record::SequenceNumber::from("12")),
        );
        let mut back = lease_from_item(&lease_to_item(&lease)).unwrap();
        back.updated_at_millis = None;
        assert_eq!(back, lease);
        assert_eq!(
            with_update_time("SET #a = :b REMOVE #owner"),
            "SET #a = :b, #updated_at = :updated_at REMOVE #owner"
        );
    }

    #[test]
    fn a_malformed_item_names_itself() {
        let mut item = lease_to_item(&Lease::new(
            "arn:s",
            "shardId-9",
            None,
            Checkpoint::TrimHorizon,
        ));
        item.insert(LEASE_COUNTER.into(), AttributeValue::S("x".into()));
        let err = lease_from_item(&item).unwrap_err();
        assert!(err.to_string().contains("shardId-9"), "{err}");
        item.insert(LEASE_COUNTER.into(), number(1));
        item.insert(CHECKPOINT.into(), AttributeValue::S("garbage".into()));
        assert!(lease_from_item(&item).is_err());
    }
}

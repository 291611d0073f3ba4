//! The engine: a configured coordinator over real or injected seams.

use std::num::NonZeroUsize;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::{
    setting_variable, Config, FailureDestination, Processing, ProcessorSpec, SnapshotMode,
    StartingPosition,
};
use crate::coordinator::table_discovery::TableDiscoverySettings;
use crate::coordinator::{Coordinator, CoordinatorSettings};
use crate::dispatch::destination::{
    FailureDestination as Destination, FileDestination, SqsDestination,
};
use crate::dispatch::{DispatchSettings, Dispatcher};
use crate::error::Error;
use crate::filter::FilterSet;
use crate::lease::dynamo::DynamoLeaseStore;
use crate::lease::LeaseStore;
use crate::pipeline::{Pipeline, Pipelines};
use crate::processor::count::CountProcessor;
use crate::processor::exec::ExecProcessor;
use crate::processor::http::HttpProcessor;
use crate::processor::stdout::StdoutProcessor;
use crate::processor::Processor;
use crate::shard::ShardSettings;
use crate::snapshot::{SnapshotSettings, Snapshots};
use crate::streams::concurrency::ConcurrencyLimit;
use crate::streams::rate_limit::DescribeRateLimit;
use crate::streams::sdk::SdkStreams;
use crate::streams::IteratorPosition;
use crate::streams::StreamsApi;
use crate::tables::sdk::SdkTables;
use crate::tables::TablesApi;
use crate::telemetry;
use crate::telemetry::instrument::{MeteredLeases, MeteredStreams, MeteredTables};
use crate::telemetry::server::Health;

/// A dynastream worker, ready to run.
///
/// Build it from a [`Config`] with [`Engine::connect`] (real AWS SDK clients,
/// the built-in processors named by the configuration) or with
/// [`Engine::with_parts`] to plug in your own processor or fakes.
pub struct Engine {
    settings: CoordinatorSettings,
    metrics_addr: Option<std::net::SocketAddr>,
    shard_labels: bool,
    streams: Arc<dyn StreamsApi>,
    leases: Arc<dyn LeaseStore>,
    /// One entry without `DYNASTREAM_PIPELINES` (named `None`), else one per
    /// named pipeline.
    pipelines: Vec<PipelineParts>,
    buffer_records: usize,
    /// The snapshot settings, unless `DYNASTREAM_SNAPSHOT=off`.
    snapshot: Option<SnapshotSettings>,
    /// Table reads, for snapshots and table discovery.
    tables_api: Option<Arc<dyn TablesApi>>,
}

/// What one pipeline's dispatcher is built from.
struct PipelineParts {
    name: Option<String>,
    shard: ShardSettings,
    dispatch: DispatchSettings,
    filter: Option<FilterSet>,
    destination: Option<Arc<dyn Destination>>,
    processors: Vec<Arc<dyn Processor>>,
    from_trim_horizon: bool,
}

impl PipelineParts {
    fn dispatcher(self) -> Dispatcher {
        let mut dispatcher = Dispatcher::new(self.processors).with_settings(self.dispatch);
        if let Some(name) = &self.name {
            dispatcher = dispatcher.with_pipeline(name);
        }
        if let Some(filter) = self.filter {
            dispatcher = dispatcher.with_filter(filter);
        }
        if let Some(destination) = self.destination {
            dispatcher = dispatcher.with_destination(destination);
        }
        dispatcher
    }
}

/// Each pipeline's name (`None` for the one unnamed pipeline), its
/// processing settings, and whether it replays from `TRIM_HORIZON` when new
/// to a shard.
fn processing_of(config: &Config) -> Vec<(Option<&str>, &Processing, bool)> {
    if config.pipelines.is_empty() {
        vec![(None, &config.processing, false)]
    } else {
        config
            .pipelines
            .iter()
            .map(|p| {
                (
                    Some(p.name.as_str()),
                    &p.settings,
                    p.starting_position == StartingPosition::TrimHorizon,
                )
            })
            .collect()
    }
}

/// The processors a pipeline's settings name.
fn build_processors(
    name: Option<&str>,
    processing: &Processing,
    sdk: &aws_config::SdkConfig,
) -> Result<Vec<Arc<dyn Processor>>, Error> {
    let mut processors: Vec<Arc<dyn Processor>> = Vec::new();
    for spec in &processing.processor {
        processors.push(match spec {
            ProcessorSpec::Stdout => {
                Arc::new(StdoutProcessor::new().with_format(processing.format))
            }
            ProcessorSpec::Count => Arc::new(CountProcessor::new()),
            ProcessorSpec::Target(target) => {
                crate::processor::target::build(target, sdk, processing.format)
            }
            ProcessorSpec::Http => Arc::new(
                HttpProcessor::new(
                    processing.http_url.as_deref().unwrap_or_default(),
                    processing.http_timeout,
                )
                .map_err(|e| {
                    Error::Config(format!("{}: {e}", setting_variable(name, "HTTP_URL")))
                })?,
            ),
            ProcessorSpec::Exec => Arc::new(
                ExecProcessor::new(
                    processing.exec_command.as_deref().unwrap_or_default(),
                    processing.exec_timeout,
                )
                .with_concurrency(processing.exec_concurrency.get()),
            ),
        });
    }
    Ok(processors)
}

/// The failure destination a pipeline's settings name.
fn build_destination(
    processing: &Processing,
    sdk: &aws_config::SdkConfig,
) -> Option<Arc<dyn Destination>> {
    match &processing.on_failure {
        None => None,
        Some(FailureDestination::File(path)) => Some(Arc::new(FileDestination::new(path))),
        Some(FailureDestination::Sqs(queue_url)) => Some(Arc::new(SqsDestination::new(
            aws_sdk_sqs::Client::new(sdk),
            queue_url,
        ))),
    }
}

/// Reads the application's lease table and renders it for an operator
/// (`dynastream status`), as aligned text or as JSON.
/// With `lag`, it also reads, for each shard not finished, the first record
/// after each pipeline's checkpoint (one GetShardIterator and one
/// GetRecords of one record each) to show how far behind it is.
pub async fn status_report(config: &Config, json: bool, lag: bool) -> Result<String, Error> {
    let sdk = load_checked_sdk_config().await?;
    let table = config.lease_table_name();
    let store = DynamoLeaseStore::new(aws_sdk_dynamodb::Client::new(&sdk), table.clone());
    let scan = store.list_leases().await?;
    let now_millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let mut report = crate::lease::report::build(&table, &scan, now_millis);
    // A running snapshot's time to completion, from the table's estimated
    // item count and the pace kept since it began.
    let tables = SdkTables::new(aws_sdk_dynamodb::Client::new(&sdk));
    for row in report
        .snapshots
        .iter_mut()
        .filter(|r| r.eta_seconds.is_none())
    {
        let count = tables
            .describe_table(&row.table)
            .await
            .ok()
            .and_then(|d| d.item_count);
        row.eta_seconds = crate::snapshot::estimated_remaining(
            row.items,
            count,
            std::time::Duration::from_secs(row.elapsed_seconds),
        )
        .map(|eta| eta.as_secs());
    }
    if lag {
        let api = SdkStreams::from_conf(&sdk);
        let now = (now_millis / 1000) as i64;
        for row in &mut report.shards {
            let mut lags = std::collections::BTreeMap::new();
            for (name, checkpoint) in row.positions() {
                // LATEST starts at the newest record: nothing older waits.
                let position = match checkpoint.resume_position() {
                    Some(IteratorPosition::Latest) | None => {
                        lags.insert(name, Some(0));
                        continue;
                    }
                    Some(position) => position,
                };
                let age = crate::streams::age_of_next_record(
                    &api,
                    &row.stream,
                    &row.shard,
                    &position,
                    now,
                )
                .await;
                lags.insert(name, age.ok());
            }
            row.lag_seconds = Some(lags);
        }
    }
    Ok(if json {
        serde_json::to_string_pretty(&report).unwrap_or_default() + "\n"
    } else {
        crate::lease::report::render_text(&report)
    })
}

async fn load_checked_sdk_config() -> Result<aws_config::SdkConfig, Error> {
    let sdk = crate::aws::load_sdk_config().await;
    if sdk.region().is_none() {
        return Err(Error::Config(
            "AWS_REGION is not set (and no region was found in the AWS profile)".into(),
        ));
    }
    Ok(sdk)
}

impl Engine {
    /// Builds SDK clients from the standard AWS configuration and the
    /// processors the configuration names.
    pub async fn connect(config: &Config) -> Result<Engine, Error> {
        let sdk = load_checked_sdk_config().await?;
        // The rate limit wraps the meter, so waiting for a slot is not
        // counted as the call's duration.
        let streams: Arc<dyn StreamsApi> = Arc::new(DescribeRateLimit::new(
            ConcurrencyLimit::new(
                MeteredStreams(SdkStreams::from_conf(&sdk)),
                config.streams_concurrency.get(),
            ),
            config.describe_stream_rps,
        ));
        let leases: Arc<dyn LeaseStore> = Arc::new(MeteredLeases(DynamoLeaseStore::new(
            aws_sdk_dynamodb::Client::new(&sdk),
            config.lease_table_name(),
        )));
        let mut engine =
            Engine::with_parts(config, streams, leases, Vec::new())?.with_tables(Arc::new(
                MeteredTables(SdkTables::new(aws_sdk_dynamodb::Client::new(&sdk))),
            ));
        for (parts, (name, processing, _)) in engine.pipelines.iter_mut().zip(processing_of(config))
        {
            parts.processors = build_processors(name, processing, &sdk)?;
            parts.destination = build_destination(processing, &sdk);
        }
        Ok(engine)
    }

    /// An engine over the given stream reader, lease store and processors.
    ///
    /// The configuration's filter is applied; its failure destination is not
    /// (it needs AWS clients for SQS): add one with [`Engine::with_destination`].
    pub fn with_parts(
        config: &Config,
        streams: Arc<dyn StreamsApi>,
        leases: Arc<dyn LeaseStore>,
        processors: Vec<Arc<dyn Processor>>,
    ) -> Result<Engine, Error> {
        let snapshot = (config.snapshot != SnapshotMode::Off).then(|| SnapshotSettings {
            mode: config.snapshot,
            segments: config.snapshot_segments.get(),
            rcu: config.snapshot_rcu.get() as f64,
            page_items: processing_of(config)
                .iter()
                .map(|(_, processing, _)| u32::from(processing.batch_size.get()))
                .max()
                .unwrap_or(100),
            tables: config.table_names(),
            on_trimmed: config.processing.on_trimmed,
        });
        let settings = CoordinatorSettings {
            worker_id: config.resolve_worker_id(),
            // With a snapshot, the configured tables are followed through
            // their items in the lease table, once their snapshot is complete.
            tables: match config.snapshot {
                SnapshotMode::Off => config.table_names(),
                _ => Vec::new(),
            },
            stream_arns: match config.snapshot {
                SnapshotMode::Only => Vec::new(),
                _ => config.stream_arn_list(),
            },
            table_discovery: config.discovers_tables().then(|| TableDiscoverySettings {
                prefix: config.table_prefix.clone(),
                tag: config.table_tag.clone(),
                interval: config.table_discovery_interval,
            }),
            snapshot_found_tables: (config.snapshot != SnapshotMode::Off)
                .then(|| config.snapshot_segments.get()),
            starting_position: config.starting_position,
            lease_duration: config.lease_duration,
            renew_interval: config.renew_interval(),
            shard_sync_interval: config.shard_sync_interval,
            stream_refresh_interval: config.stream_refresh_interval,
            describe_stream_rps: config.describe_stream_rps,
            shutdown_grace: config.shutdown_grace,
            max_leases: config.max_leases_per_worker.map(NonZeroUsize::get),
            table_scan_interval: config.lease_scan_interval,
            shard: shard_settings(config, &config.processing),
        };
        let pipelines = processing_of(config)
            .into_iter()
            .map(|(name, processing, from_trim_horizon)| PipelineParts {
                name: name.map(str::to_owned),
                shard: shard_settings(config, processing),
                dispatch: DispatchSettings {
                    batch_size: usize::from(processing.batch_size.get()),
                    max_bytes: processing.batch_max_bytes,
                    parallelization_factor: processing.parallelization_factor.get(),
                    max_retry_attempts: processing.max_retry_attempts.0,
                    max_record_age: processing.max_record_age.0,
                    bisect_on_error: processing.bisect_on_error,
                    ..DispatchSettings::default()
                },
                filter: processing.filter.clone(),
                destination: None,
                processors: processors.clone(),
                from_trim_horizon,
            })
            .collect();
        Ok(Engine {
            settings,
            metrics_addr: Some(config.metrics_addr),
            shard_labels: config.metrics_shard_labels,
            streams,
            leases,
            pipelines,
            buffer_records: config.pipeline_buffer_records.get(),
            snapshot,
            tables_api: None,
        })
    }

    /// Reads tables (Scan, DescribeTable, ListTables, tags) through `api`:
    /// what snapshots and table discovery need. [`Engine::connect`] uses
    /// the SDK's.
    pub fn with_tables(mut self, api: Arc<dyn TablesApi>) -> Engine {
        self.tables_api = Some(api);
        self
    }

    /// Sends records whose retries or age run out to `destination`, in
    /// every pipeline.
    pub fn with_destination(mut self, destination: Arc<dyn Destination>) -> Engine {
        for parts in &mut self.pipelines {
            parts.destination = Some(Arc::clone(&destination));
        }
        self
    }

    /// Replaces the processors of every pipeline, keeping everything else:
    /// how a Rust program plugs its own processing into an engine built by
    /// [`Engine::connect`].
    pub fn with_processors(mut self, processors: Vec<Arc<dyn Processor>>) -> Engine {
        for parts in &mut self.pipelines {
            parts.processors.clone_from(&processors);
        }
        self
    }

    /// Replaces the processors of the pipeline named `name` (declared in
    /// `DYNASTREAM_PIPELINES`); an error naming it when there is none.
    pub fn with_pipeline_processors(
        mut self,
        name: &str,
        processors: Vec<Arc<dyn Processor>>,
    ) -> Result<Engine, Error> {
        let parts = self
            .pipelines
            .iter_mut()
            .find(|parts| parts.name.as_deref() == Some(name))
            .ok_or_else(|| {
                Error::Config(format!(
                    "no pipeline named {name:?} in DYNASTREAM_PIPELINES"
                ))
            })?;
        parts.processors = processors;
        Ok(self)
    }

    /// Serves the metrics and health endpoints elsewhere, or (`None`) not at all.
    pub fn with_metrics_addr(mut self, addr: Option<std::net::SocketAddr>) -> Engine {
        self.metrics_addr = addr;
        self
    }

    /// This worker's id in the lease table.
    pub fn worker_id(&self) -> &str {
        &self.settings.worker_id
    }

    /// Runs until `shutdown` is cancelled, then finishes in-flight batches,
    /// checkpoints and releases its leases before returning.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), Error> {
        if self.snapshot.is_some() && self.tables_api.is_none() {
            return Err(Error::Config(
                "DYNASTREAM_SNAPSHOT needs table reads: give the engine a TablesApi with Engine::with_tables".into(),
            ));
        }
        let handle = telemetry::metrics::install(self.shard_labels);
        let health = Health::new();
        let server_stop = CancellationToken::new();
        let server = match self.metrics_addr {
            Some(addr) => {
                let listener = telemetry::server::bind(addr).await.map_err(|err| {
                    Error::Config(format!(
                        "DYNASTREAM_METRICS_ADDR {addr}: cannot listen there: {err}"
                    ))
                })?;
                let bound = listener.local_addr().unwrap_or(addr);
                tracing::info!(addr = %bound, "metrics and health endpoints listening");
                Some(tokio::spawn(telemetry::server::serve(
                    listener,
                    handle.clone(),
                    Arc::clone(&health),
                    server_stop.clone(),
                )))
            }
            None => None,
        };
        let upkeep = tokio::spawn(telemetry::metrics::upkeep(handle, server_stop.clone()));
        let buffer_records = self.buffer_records;
        let worker_id = self.settings.worker_id.clone();
        let lease_duration = self.settings.lease_duration;
        let mut parts = self.pipelines;
        let pipelines = match parts.first() {
            Some(first) if first.name.is_none() => {
                Pipelines::Single(Arc::new(parts.remove(0).dispatcher()))
            }
            _ => Pipelines::named(
                parts
                    .into_iter()
                    .map(|parts| Pipeline {
                        name: parts.name.clone().unwrap_or_default(),
                        settings: parts.shard.clone(),
                        from_trim_horizon: parts.from_trim_horizon,
                        dispatcher: Arc::new(parts.dispatcher()),
                    })
                    .collect(),
                buffer_records,
            ),
        };
        let dispatchers: Vec<Arc<Dispatcher>> = match &pipelines {
            Pipelines::Single(dispatcher) => vec![Arc::clone(dispatcher)],
            Pipelines::Named { pipelines, .. } => pipelines
                .iter()
                .map(|p| Arc::clone(&p.dispatcher))
                .collect(),
        };
        let leases = Arc::clone(&self.leases);
        let mut coordinator = Coordinator::new(self.settings, self.streams, self.leases, pipelines)
            .with_health(health);
        if let Some(api) = &self.tables_api {
            coordinator = coordinator.with_tables(Arc::clone(api));
        }
        if let (Some(settings), Some(api)) = (self.snapshot, self.tables_api) {
            coordinator = coordinator.with_snapshots(Snapshots::new(
                settings,
                &worker_id,
                lease_duration,
                api,
                leases,
                dispatchers,
            ));
        }
        let outcome = coordinator.run(shutdown).await;
        server_stop.cancel();
        let _ = upkeep.await;
        if let Some(server) = server {
            let _ = server.await;
        }
        outcome
    }
}

/// A pipeline's shard settings: the application's poll intervals, the
/// pipeline's batching.
fn shard_settings(config: &Config, processing: &Processing) -> ShardSettings {
    ShardSettings {
        batch_size: u32::from(processing.batch_size.get()),
        poll_interval: config.poll_interval,
        idle_poll_interval: config.idle_poll_interval,
        idle_after: config.idle_after,
        batch_window: processing.batch_window,
        on_trimmed: processing.on_trimmed,
        checkpoint_interval: config.checkpoint_interval,
        skip_created_before: None,
    }
}

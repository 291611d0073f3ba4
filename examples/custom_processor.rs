//! A Rust program that runs the dynastream engine with its own processor.
//!
//! Delivery rule: a batch is checkpointed only after `process` returns
//! success for it, and a shard's next batch for the same item keys is handed
//! over only after that; so process, then return, and never return success
//! for work that has not happened. Return `BatchOutcome::PartialFailure` with
//! the sequence numbers of records that failed, and only those and the ones
//! after them are retried (Lambda's `batchItemFailures`).
//!
//! The processor reads typed records: no JSON is produced unless a processor
//! asks for it (`Batch::to_lambda_json`).
//!
//! Run against DynamoDB Local (see `scripts/dynamodb-local`):
//!
//! ```sh
//! AWS_ENDPOINT_URL=http://127.0.0.1:8000 AWS_REGION=us-east-1 \
//! AWS_ACCESS_KEY_ID=x AWS_SECRET_ACCESS_KEY=x \
//! cargo run --example custom_processor -- --tables demo-orders
//! ```
//!
//! Every setting of the binary works here too (flags or `DYNASTREAM_*`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use dynastream::config::{Config, Invocation};
use dynastream::processor::{Batch, BatchOutcome, Processor, ProcessorError};
use dynastream::record::{AttributeValue, EventName};
use dynastream::Engine;
use tokio_util::sync::CancellationToken;

/// Keeps a running total of order values, by reading records as typed values.
#[derive(Default)]
struct OrderTotals {
    cents: AtomicU64,
}

#[async_trait]
impl Processor for OrderTotals {
    fn name(&self) -> &str {
        "order-totals"
    }

    async fn process(&self, batch: &Batch) -> Result<BatchOutcome, ProcessorError> {
        for record in &batch.records {
            let image = match record.event_name {
                EventName::Insert | EventName::Modify => record.dynamodb.new_image.as_ref(),
                EventName::Remove => record.dynamodb.old_image.as_ref(),
            };
            let total = image.and_then(|item| match item.get("total") {
                Some(AttributeValue::N(number)) => number.parse::<f64>().ok(),
                _ => None,
            });
            if let (EventName::Insert, Some(total)) = (record.event_name, total) {
                self.cents
                    .fetch_add((total * 100.0).round() as u64, Ordering::Relaxed);
            }
            println!(
                "{} {} total={:?} running={:.2}",
                record.event_name.as_str(),
                record.sequence_number(),
                total,
                self.cents.load(Ordering::Relaxed) as f64 / 100.0
            );
        }
        Ok(BatchOutcome::Success)
    }

    fn lease_lost(&self, _stream_arn: &str, shard_id: &str) {
        eprintln!("another worker took {shard_id}; totals from it may now be counted there");
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = match Config::from_args(std::env::args_os())? {
        Invocation::Run(config) => config,
        Invocation::Print(text) => {
            print!("{text}");
            return Ok(());
        }
    };
    let engine = Engine::connect(&config)
        .await?
        .with_processors(vec![Arc::new(OrderTotals::default())]);
    let shutdown = CancellationToken::new();
    let run = engine.run(shutdown.clone());
    tokio::pin!(run);
    tokio::select! {
        result = &mut run => result?,
        _ = tokio::signal::ctrl_c() => {
            // Stop polling, finish and checkpoint what is in flight, release leases.
            shutdown.cancel();
            run.await?;
        }
    }
    Ok(())
}

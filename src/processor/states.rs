//! The `states://<state machine ARN>` target: StartExecution per batch with
//! `{"Records": [...]}` as the input.
//!
//! The execution's name is derived from the stream, the shard and the
//! batch's sequence range, so a batch sent again after a failure finds its
//! own execution instead of starting a second one: Step Functions answers a
//! repeated name with the running execution, or `ExecutionAlreadyExists`
//! once it has finished, and both mean the batch was delivered. (Express
//! state machines do not keep names unique; there a retried batch may run
//! twice.)

use async_trait::async_trait;
use sha2::Digest;

use super::target::book_call;
use super::{Batch, BatchOutcome, Processor, ProcessorError};
use crate::aws::classify;

/// Starts one execution per batch.
#[derive(Debug, Clone)]
pub struct StatesTarget {
    client: aws_sdk_sfn::Client,
    state_machine_arn: String,
    shown: String,
}

impl StatesTarget {
    /// Starts executions of `state_machine_arn` through `client`.
    pub fn new(client: aws_sdk_sfn::Client, state_machine_arn: &str) -> Self {
        crate::telemetry::metrics::target_seen("states");
        StatesTarget {
            client,
            state_machine_arn: state_machine_arn.to_owned(),
            shown: format!("states://{state_machine_arn}"),
        }
    }
}

/// The execution name of a batch: at most 80 characters of letters,
/// digits, `-` and `_`, as Step Functions requires, and the same for the
/// same records on every worker.
pub fn execution_name(batch: &Batch) -> String {
    let first = batch
        .records
        .first()
        .map(|r| r.sequence_number().as_str())
        .unwrap_or("");
    let last = batch
        .records
        .last()
        .map(|r| r.sequence_number().as_str())
        .unwrap_or("");
    let mut hasher = sha2::Sha256::new();
    for part in [&*batch.stream_arn, &*batch.shard_id, first, last] {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    let digest = hasher.finalize();
    let hex: String = digest[..20].iter().map(|b| format!("{b:02x}")).collect();
    // The shard id's tail tells an operator where an execution came from.
    let shard_tail: String = batch
        .shard_id
        .chars()
        .rev()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(16)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("dynastream-{shard_tail}-{hex}")
}

#[async_trait]
impl Processor for StatesTarget {
    fn name(&self) -> &str {
        "states"
    }

    async fn process(&self, batch: &Batch) -> Result<BatchOutcome, ProcessorError> {
        let name = execution_name(batch);
        let input = String::from_utf8(batch.to_lambda_json()).unwrap_or_default();
        let started = tokio::time::Instant::now();
        let result = match self
            .client
            .start_execution()
            .state_machine_arn(&self.state_machine_arn)
            .name(&name)
            .input(input)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_execution_already_exists()) =>
            {
                tracing::info!(execution = %name, "the batch's execution exists already: delivered before");
                Ok(())
            }
            Err(err) => Err(classify(&err)),
        };
        book_call(
            "states",
            &self.shown,
            batch.len(),
            started.elapsed(),
            result,
        )?;
        Ok(BatchOutcome::Success)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::EventName;
    use crate::streams::memory::test_record;
    use std::sync::Arc;

    fn batch(first: &str, last: &str) -> Batch {
        let stream = "arn:aws:dynamodb:us-east-1:1:table/orders/stream/2026-11-30T00:00:00.000";
        Batch {
            stream_arn: stream.into(),
            shard_id: "shardId-00000001764460800000-0123abcd".into(),
            records: vec![
                Arc::new(test_record(stream, &first.into(), EventName::Insert, "a")),
                Arc::new(test_record(stream, &last.into(), EventName::Insert, "b")),
            ],
        }
    }

    #[test]
    fn execution_names_are_valid_stable_and_distinct() {
        let name = execution_name(&batch("100", "200"));
        assert!(name.len() <= 80, "{name}");
        assert!(name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        assert_eq!(name, execution_name(&batch("100", "200")));
        assert_ne!(name, execution_name(&batch("100", "201")));
        assert!(name.contains("0123abcd"), "{name}");
    }
}

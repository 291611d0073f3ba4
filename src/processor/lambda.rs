//! The `lambda://<function name or ARN>` target: a synchronous Invoke per
//! batch with exactly Lambda's DynamoDB event, `{"Records": [...]}`.
//!
//! An existing function keeps working unchanged while dynastream does the
//! polling: a `FunctionError` (the handler raised) fails the batch, which is
//! retried; an answer with `batchItemFailures` is honoured as Lambda's event
//! source mapping honours it (see [`super::http::outcome_of_response`]).

use async_trait::async_trait;
use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::InvocationType;
use serde_json::Value;

use super::http::{excerpt, outcome_of_response};
use super::target::book_call;
use super::{Batch, BatchOutcome, Processor, ProcessorError};
use crate::aws::classify;

/// Invokes one function per batch.
#[derive(Debug, Clone)]
pub struct LambdaTarget {
    client: aws_sdk_lambda::Client,
    function: String,
    shown: String,
}

impl LambdaTarget {
    /// Invokes `function` through `client`.
    pub fn new(client: aws_sdk_lambda::Client, function: &str) -> Self {
        crate::telemetry::metrics::target_seen("lambda");
        LambdaTarget {
            client,
            function: function.to_owned(),
            shown: format!("lambda://{function}"),
        }
    }
}

#[async_trait]
impl Processor for LambdaTarget {
    fn name(&self) -> &str {
        "lambda"
    }

    async fn process(&self, batch: &Batch) -> Result<BatchOutcome, ProcessorError> {
        let started = tokio::time::Instant::now();
        let result = self
            .client
            .invoke()
            .function_name(&self.function)
            .invocation_type(InvocationType::RequestResponse)
            .payload(Blob::new(batch.to_lambda_json()))
            .send()
            .await
            .map_err(|e| classify(&e));
        let answer = book_call(
            "lambda",
            &self.shown,
            batch.len(),
            started.elapsed(),
            result,
        )?;
        let payload = answer.payload().map(Blob::as_ref).unwrap_or_default();
        if let Some(kind) = answer.function_error() {
            return Err(ProcessorError::retryable(format!(
                "{}: the function failed ({kind}): {}",
                self.shown,
                excerpt(payload)
            )));
        }
        let text = payload.trim_ascii();
        if text.is_empty() {
            return Ok(BatchOutcome::Success);
        }
        match serde_json::from_slice::<Value>(text) {
            Err(_) => Ok(BatchOutcome::Success),
            Ok(value) => outcome_of_response(&value, batch)
                .map_err(|message| ProcessorError::retryable(format!("{}: {message}", self.shown))),
        }
    }
}

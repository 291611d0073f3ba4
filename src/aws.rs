//! AWS SDK set-up and the error classification shared by the SDK adapters.
//!
//! Retries live in one layer, ours: the SDK's own retries are switched off so
//! that a throttled call is not retried three times inside the SDK and then
//! again around it, and so that every attempt is visible to our backoff and
//! logs.

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::BehaviorVersion;
use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;

/// Loads the shared SDK configuration from the standard AWS variables
/// (`AWS_REGION`, `AWS_ENDPOINT_URL*`, the credential chain).
pub async fn load_sdk_config() -> aws_config::SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .retry_config(RetryConfig::disabled())
        // Every call has an operation timeout (below), which bounds a
        // stalled body too; the protection's per-call throughput tracking
        // cost a worker on 1,000 quiet shards a tenth of its CPU.
        .stalled_stream_protection(
            aws_config::stalled_stream_protection::StalledStreamProtectionConfig::disabled(),
        )
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(3))
                .operation_attempt_timeout(Duration::from_secs(10))
                .operation_timeout(Duration::from_secs(10))
                .build(),
        )
        .load()
        .await
}

/// How a failed AWS call should be treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The service asked us to slow down: retry after a backoff.
    Throttled,
    /// The service failed (5xx): retry after a backoff.
    ServiceUnavailable,
    /// The request did not complete (connection, timeout): retry after a backoff.
    Transport,
    /// The request itself is wrong or not allowed: retrying will not help.
    Rejected,
}

impl FailureKind {
    /// Whether the same call may succeed if tried again later.
    pub fn is_retryable(self) -> bool {
        !matches!(self, FailureKind::Rejected)
    }
}

/// An SDK failure reduced to what the engine acts on: the service's error
/// code (when it answered), a message, and how to treat it.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The service's error code, e.g. `ExpiredIteratorException`.
    pub code: Option<String>,
    /// A one-line description for logs.
    pub message: String,
    /// How to treat it.
    pub kind: FailureKind,
}

/// Whether an error code (of a call, or of one entry of a batch call) asks
/// the caller to slow down.
pub fn is_throttling_code(code: &str) -> bool {
    THROTTLING_CODES.contains(&code)
}

const THROTTLING_CODES: &[&str] = &[
    "LimitExceededException",
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "Throttling",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "RequestThrottled",
    // Firehose's and SNS's words for it.
    "ServiceUnavailableException",
    "ThrottledException",
];

/// Classifies any SDK error by its code, HTTP status and failure stage.
pub fn classify<E>(err: &SdkError<E, HttpResponse>) -> Failure
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match err {
        SdkError::ServiceError(service) => {
            let inner = service.err();
            let code = inner.code().map(str::to_owned);
            let message = inner
                .message()
                .map(str::to_owned)
                .unwrap_or_else(|| code.clone().unwrap_or_else(|| "service error".into()));
            let status = service.raw().status().as_u16();
            let kind = match code.as_deref() {
                Some(c) if is_throttling_code(c) => FailureKind::Throttled,
                Some("InternalServerError" | "InternalFailure" | "ServiceUnavailable") => {
                    FailureKind::ServiceUnavailable
                }
                _ if status >= 500 => FailureKind::ServiceUnavailable,
                _ => FailureKind::Rejected,
            };
            Failure {
                code,
                message,
                kind,
            }
        }
        SdkError::TimeoutError(_) => Failure {
            code: None,
            message: "request timed out".into(),
            kind: FailureKind::Transport,
        },
        SdkError::DispatchFailure(failure) => Failure {
            code: None,
            message: format!("request not sent or answer lost: {failure:?}"),
            kind: FailureKind::Transport,
        },
        SdkError::ResponseError(_) => Failure {
            code: None,
            message: "malformed or interrupted response".into(),
            kind: FailureKind::Transport,
        },
        other => Failure {
            code: None,
            message: display_chain(other),
            kind: FailureKind::Rejected,
        },
    }
}

/// An error and its sources on one line.
pub fn display_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

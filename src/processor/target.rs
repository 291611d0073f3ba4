//! What `DYNASTREAM_PROCESSOR` can name, and how each becomes a processor.
//!
//! A name (`stdout`, `http`, `exec`, `count`) or a target URI
//! (`sqs://<queue URL>`, `sns://<topic ARN>`, `eventbridge://<bus>`,
//! `kinesis://<stream>`, `firehose://<delivery stream>`,
//! `s3://<bucket>/<prefix>`, `lambda://<function>`,
//! `states://<state machine ARN>`), checked when the configuration is read:
//! a malformed URI, an unknown scheme or an option its scheme does not take
//! stops the start with a message naming the variable.
//!
//! Every target's client comes from the one AWS configuration chain, so the
//! SDK's service-specific endpoint variables (`AWS_ENDPOINT_URL_SQS`,
//! `AWS_ENDPOINT_URL_S3`, ...) point any of them elsewhere.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use super::Processor;
use crate::record::RecordFormat;

/// One entry of `DYNASTREAM_PROCESSOR`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessorSpec {
    /// One record per line on standard output.
    Stdout,
    /// POST Lambda's event to `DYNASTREAM_HTTP_URL`.
    Http,
    /// Lambda's event to long-running children (`DYNASTREAM_EXEC_COMMAND`).
    Exec,
    /// Count records and keep nothing.
    Count,
    /// An AWS service.
    Target(Target),
}

/// An AWS service records are delivered to, parsed from its URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `sqs://<queue URL>`.
    Sqs {
        /// The queue's URL (https:// added when the URI gave none).
        queue_url: String,
    },
    /// `sns://<topic ARN>`.
    Sns {
        /// The topic's ARN.
        topic_arn: String,
    },
    /// `eventbridge://<bus name or ARN>[?source=...]`.
    EventBridge {
        /// The event bus's name or ARN.
        bus: String,
        /// The events' `Source` (default `dynastream`).
        source: String,
    },
    /// `kinesis://<stream name or ARN>`.
    Kinesis {
        /// The stream's name or ARN.
        stream: String,
    },
    /// `firehose://<delivery stream name>`.
    Firehose {
        /// The delivery stream's name.
        delivery_stream: String,
    },
    /// `s3://<bucket>/<prefix>[?gzip=true]`.
    S3 {
        /// The bucket.
        bucket: String,
        /// Prepended to every key, as given.
        prefix: String,
        /// Write `.jsonl.gz` objects.
        gzip: bool,
    },
    /// `lambda://<function name or ARN>`.
    Lambda {
        /// The function's name, ARN or partial ARN, with a qualifier if any.
        function: String,
    },
    /// `states://<state machine ARN>`.
    States {
        /// The state machine's ARN.
        state_machine_arn: String,
    },
}

impl Target {
    /// The URI scheme, which is also the target's name in metrics.
    pub fn scheme(&self) -> &'static str {
        match self {
            Target::Sqs { .. } => "sqs",
            Target::Sns { .. } => "sns",
            Target::EventBridge { .. } => "eventbridge",
            Target::Kinesis { .. } => "kinesis",
            Target::Firehose { .. } => "firehose",
            Target::S3 { .. } => "s3",
            Target::Lambda { .. } => "lambda",
            Target::States { .. } => "states",
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Sqs { queue_url } => write!(f, "sqs://{queue_url}"),
            Target::Sns { topic_arn } => write!(f, "sns://{topic_arn}"),
            Target::EventBridge { bus, .. } => write!(f, "eventbridge://{bus}"),
            Target::Kinesis { stream } => write!(f, "kinesis://{stream}"),
            Target::Firehose { delivery_stream } => write!(f, "firehose://{delivery_stream}"),
            Target::S3 { bucket, prefix, .. } => write!(f, "s3://{bucket}/{prefix}"),
            Target::Lambda { function } => write!(f, "lambda://{function}"),
            Target::States { state_machine_arn } => write!(f, "states://{state_machine_arn}"),
        }
    }
}

const SCHEMES: &str = "stdout, http, exec, count, sqs://<queue URL>, sns://<topic ARN>, \
                       eventbridge://<bus>, kinesis://<stream>, firehose://<delivery stream>, \
                       s3://<bucket>/<prefix>, lambda://<function>, states://<state machine ARN>";

impl FromStr for ProcessorSpec {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let value = value.trim();
        match value {
            "stdout" => return Ok(ProcessorSpec::Stdout),
            "http" => return Ok(ProcessorSpec::Http),
            "exec" => return Ok(ProcessorSpec::Exec),
            "count" => return Ok(ProcessorSpec::Count),
            _ => {}
        }
        let Some((scheme, rest)) = value.split_once("://") else {
            return Err(format!("expected one of: {SCHEMES}"));
        };
        let (address, query) = match rest.split_once('?') {
            Some((address, query)) => (address, Some(query)),
            None => (rest, None),
        };
        let options = Options::parse(scheme, query)?;
        let target = match scheme {
            "sqs" => {
                options.allow(&[])?;
                Target::Sqs {
                    queue_url: queue_url(address)?,
                }
            }
            "sns" => {
                options.allow(&[])?;
                Target::Sns {
                    topic_arn: arn(
                        address,
                        "sns",
                        "a topic ARN: arn:aws:sns:<region>:<account>:<topic>",
                    )?,
                }
            }
            "eventbridge" => {
                options.allow(&["source"])?;
                let source = options.get("source").unwrap_or("dynastream").to_owned();
                if source.is_empty() || source.len() > 256 {
                    return Err("eventbridge://: ?source= must be 1 to 256 characters".into());
                }
                Target::EventBridge {
                    bus: name_or_arn(
                        address,
                        "events",
                        256,
                        |c| c.is_ascii_alphanumeric() || "._-/".contains(c),
                        "an event bus name or ARN",
                    )?,
                    source,
                }
            }
            "kinesis" => {
                options.allow(&[])?;
                Target::Kinesis {
                    stream: name_or_arn(
                        address,
                        "kinesis",
                        128,
                        |c| c.is_ascii_alphanumeric() || "._-".contains(c),
                        "a stream name or ARN",
                    )?,
                }
            }
            "firehose" => {
                options.allow(&[])?;
                Target::Firehose {
                    delivery_stream: name_or_arn(
                        address,
                        "firehose",
                        64,
                        |c| c.is_ascii_alphanumeric() || "._-".contains(c),
                        "a delivery stream name",
                    )?,
                }
            }
            "s3" => {
                options.allow(&["gzip"])?;
                let gzip = match options.get("gzip") {
                    None | Some("false") => false,
                    Some("true") => true,
                    Some(other) => {
                        return Err(format!("s3://: ?gzip= takes true or false, not {other:?}"))
                    }
                };
                let (bucket, prefix) = address.split_once('/').unwrap_or((address, ""));
                let valid_bucket = (3..=63).contains(&bucket.len())
                    && bucket.chars().all(|c| {
                        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-'
                    });
                if !valid_bucket {
                    return Err(format!(
                        "s3://: {bucket:?} is not a bucket name (3-63 characters of a-z, 0-9, '.' and '-'); \
                         expected s3://<bucket>/<prefix>"
                    ));
                }
                Target::S3 {
                    bucket: bucket.to_owned(),
                    prefix: prefix.to_owned(),
                    gzip,
                }
            }
            "lambda" => {
                options.allow(&[])?;
                let valid = !address.is_empty()
                    && address.len() <= 170
                    && address
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_:$.".contains(c));
                if !valid {
                    return Err(format!(
                        "lambda://: {address:?} is not a function name or ARN"
                    ));
                }
                Target::Lambda {
                    function: address.to_owned(),
                }
            }
            "states" => {
                options.allow(&[])?;
                Target::States {
                    state_machine_arn: arn(
                        address,
                        "states",
                        "a state machine ARN: arn:aws:states:<region>:<account>:stateMachine:<name>",
                    )?,
                }
            }
            other => {
                return Err(format!(
                    "unknown scheme {other:?}: expected one of: {SCHEMES}"
                ))
            }
        };
        Ok(ProcessorSpec::Target(target))
    }
}

/// The `?name=value&...` part of a target URI.
struct Options<'a> {
    scheme: &'a str,
    pairs: Vec<(&'a str, &'a str)>,
}

impl<'a> Options<'a> {
    fn parse(scheme: &'a str, query: Option<&'a str>) -> Result<Self, String> {
        let mut pairs = Vec::new();
        for pair in query
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty())
        {
            let Some((name, value)) = pair.split_once('=') else {
                return Err(format!(
                    "{scheme}://: option {pair:?} has no value (name=value)"
                ));
            };
            if pairs.iter().any(|(seen, _)| *seen == name) {
                return Err(format!("{scheme}://: option {name:?} is given twice"));
            }
            pairs.push((name, value));
        }
        Ok(Options { scheme, pairs })
    }

    fn allow(&self, known: &[&str]) -> Result<(), String> {
        match self.pairs.iter().find(|(name, _)| !known.contains(name)) {
            None => Ok(()),
            Some((name, _)) if known.is_empty() => Err(format!(
                "{}:// takes no options, but ?{name}= was given",
                self.scheme
            )),
            Some((name, _)) => Err(format!(
                "{}:// does not take ?{name}= (it takes: {})",
                self.scheme,
                known.join(", ")
            )),
        }
    }

    fn get(&self, name: &str) -> Option<&'a str> {
        self.pairs.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }
}

fn queue_url(address: &str) -> Result<String, String> {
    let url = if address.starts_with("http://") || address.starts_with("https://") {
        address.to_owned()
    } else {
        format!("https://{address}")
    };
    let path = url
        .split_once("://")
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    match path.split_once('/') {
        Some((host, queue))
            if !host.is_empty() && !queue.is_empty() && !url.contains(char::is_whitespace) =>
        {
            Ok(url)
        }
        _ => Err(format!(
            "sqs://: {address:?} is not a queue URL: expected \
             sqs://https://sqs.<region>.amazonaws.com/<account>/<queue>"
        )),
    }
}

/// An ARN of `service` (`arn:<partition>:<service>:...`).
fn arn(address: &str, service: &str, expected: &str) -> Result<String, String> {
    let parts: Vec<&str> = address.splitn(6, ':').collect();
    let valid = parts.len() == 6
        && parts[0] == "arn"
        && parts[2] == service
        && !parts[5].is_empty()
        && !address.contains(char::is_whitespace);
    if valid {
        Ok(address.to_owned())
    } else {
        Err(format!("{service}: {address:?} is not {expected}"))
    }
}

/// A resource name, or the ARN of one.
fn name_or_arn(
    address: &str,
    service: &str,
    max: usize,
    allowed: impl Fn(char) -> bool,
    expected: &str,
) -> Result<String, String> {
    if address.starts_with("arn:") {
        return arn(address, service, expected);
    }
    if !address.is_empty() && address.len() <= max && address.chars().all(allowed) {
        Ok(address.to_owned())
    } else {
        Err(format!("{service}: {address:?} is not {expected}"))
    }
}

/// Books one call of a target that sends a whole batch per call (S3,
/// Lambda, Step Functions) in the target metrics, and turns its failure
/// into the batch's error (retryable: the retry policy decides how long).
pub(crate) fn book_call<T>(
    target: &'static str,
    shown: &str,
    records: usize,
    took: Duration,
    result: Result<T, crate::aws::Failure>,
) -> Result<T, super::ProcessorError> {
    use crate::telemetry::events::TargetRequest;
    use crate::telemetry::metrics::TargetRequestOutcome;
    match result {
        Ok(value) => {
            TargetRequest {
                target,
                outcome: TargetRequestOutcome::Ok,
                took,
                delivered: records,
                throttled: 0,
                failed: 0,
                rejected: 0,
            }
            .emit();
            Ok(value)
        }
        Err(failure) => {
            let throttled = failure.kind == crate::aws::FailureKind::Throttled;
            TargetRequest {
                target,
                outcome: if throttled {
                    TargetRequestOutcome::Throttled
                } else {
                    TargetRequestOutcome::Error
                },
                took,
                delivered: 0,
                throttled: if throttled { records } else { 0 },
                failed: if throttled { 0 } else { records },
                rejected: 0,
            }
            .emit();
            Err(super::ProcessorError::retryable(format!(
                "{shown}: {}{}",
                failure
                    .code
                    .as_deref()
                    .map(|c| format!("{c}: "))
                    .unwrap_or_default(),
                failure.message
            )))
        }
    }
}

/// The timeout of one Lambda invocation: Lambda's longest function run
/// (15 minutes) and a little more, so the function's own timeout decides.
const LAMBDA_INVOKE_TIMEOUT: Duration = Duration::from_secs(15 * 60 + 10);

/// Builds the processor for `target` over clients from `sdk`.
pub fn build(
    target: &Target,
    sdk: &aws_config::SdkConfig,
    format: RecordFormat,
) -> Arc<dyn Processor> {
    let shown = target.to_string();
    match target {
        Target::Sqs { queue_url } => Arc::new(super::entries::EntryTarget::new(
            super::sqs::SqsApi::new(aws_sdk_sqs::Client::new(sdk), queue_url),
            format,
            shown,
        )),
        Target::Sns { topic_arn } => Arc::new(super::entries::EntryTarget::new(
            super::sns::SnsApi::new(aws_sdk_sns::Client::new(sdk), topic_arn),
            format,
            shown,
        )),
        Target::EventBridge { bus, source } => Arc::new(super::entries::EntryTarget::new(
            super::eventbridge::EventBridgeApi::new(
                aws_sdk_eventbridge::Client::new(sdk),
                bus,
                source,
            ),
            format,
            shown,
        )),
        Target::Kinesis { stream } => Arc::new(super::entries::EntryTarget::new(
            super::kinesis::KinesisApi::new(aws_sdk_kinesis::Client::new(sdk), stream),
            format,
            shown,
        )),
        Target::Firehose { delivery_stream } => Arc::new(super::entries::EntryTarget::new(
            super::firehose::FirehoseApi::new(aws_sdk_firehose::Client::new(sdk), delivery_stream),
            format,
            shown,
        )),
        Target::S3 {
            bucket,
            prefix,
            gzip,
        } => {
            // Local S3 implementations answer on one host: address buckets
            // by path whenever the endpoint is overridden.
            let overridden = ["AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"]
                .iter()
                .any(|name| std::env::var_os(name).is_some_and(|v| !v.is_empty()));
            let config = aws_sdk_s3::config::Builder::from(sdk)
                .force_path_style(overridden)
                .build();
            Arc::new(super::s3::S3Target::new(
                aws_sdk_s3::Client::from_conf(config),
                bucket,
                prefix,
                *gzip,
                format,
            ))
        }
        Target::Lambda { function } => {
            let timeouts = aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(3))
                .operation_attempt_timeout(LAMBDA_INVOKE_TIMEOUT)
                .operation_timeout(LAMBDA_INVOKE_TIMEOUT)
                .build();
            let config = aws_sdk_lambda::config::Builder::from(sdk)
                .timeout_config(timeouts)
                .build();
            Arc::new(super::lambda::LambdaTarget::new(
                aws_sdk_lambda::Client::from_conf(config),
                function,
            ))
        }
        Target::States { state_machine_arn } => Arc::new(super::states::StatesTarget::new(
            aws_sdk_sfn::Client::new(sdk),
            state_machine_arn,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(uri: &str) -> Target {
        match uri.parse::<ProcessorSpec>() {
            Ok(ProcessorSpec::Target(target)) => target,
            other => panic!("{uri}: {other:?}"),
        }
    }

    #[test]
    fn every_scheme_parses() {
        assert_eq!(
            target("sqs://https://sqs.us-east-1.amazonaws.com/1/q.fifo"),
            Target::Sqs {
                queue_url: "https://sqs.us-east-1.amazonaws.com/1/q.fifo".into()
            }
        );
        assert_eq!(
            target("sqs://sqs.us-east-1.amazonaws.com/1/q"),
            Target::Sqs {
                queue_url: "https://sqs.us-east-1.amazonaws.com/1/q".into()
            }
        );
        assert_eq!(
            target("sns://arn:aws:sns:us-east-1:1:t"),
            Target::Sns {
                topic_arn: "arn:aws:sns:us-east-1:1:t".into()
            }
        );
        assert_eq!(
            target("eventbridge://orders?source=shop.orders"),
            Target::EventBridge {
                bus: "orders".into(),
                source: "shop.orders".into()
            }
        );
        assert_eq!(
            target("eventbridge://default"),
            Target::EventBridge {
                bus: "default".into(),
                source: "dynastream".into()
            }
        );
        assert_eq!(target("kinesis://changes").scheme(), "kinesis");
        assert_eq!(
            target("kinesis://arn:aws:kinesis:us-east-1:1:stream/changes").scheme(),
            "kinesis"
        );
        assert_eq!(target("firehose://to-lake").scheme(), "firehose");
        assert_eq!(
            target("s3://archive/cdc/?gzip=true"),
            Target::S3 {
                bucket: "archive".into(),
                prefix: "cdc/".into(),
                gzip: true
            }
        );
        assert_eq!(
            target("s3://archive"),
            Target::S3 {
                bucket: "archive".into(),
                prefix: String::new(),
                gzip: false
            }
        );
        assert_eq!(target("lambda://my-function:live").scheme(), "lambda");
        assert_eq!(
            target("states://arn:aws:states:us-east-1:1:stateMachine:flow").scheme(),
            "states"
        );
        assert_eq!("stdout".parse::<ProcessorSpec>(), Ok(ProcessorSpec::Stdout));
    }

    #[test]
    fn bad_uris_say_what_is_wrong() {
        let error = |uri: &str| uri.parse::<ProcessorSpec>().unwrap_err();
        assert!(error("ftp://x").contains("unknown scheme \"ftp\""));
        assert!(error("nonsense").contains("expected one of"));
        assert!(error("sqs://").contains("not a queue URL"));
        assert!(error("sns://my-topic").contains("not a topic ARN"));
        assert!(error("sqs://https://h/1/q?region=x").contains("takes no options"));
        assert!(error("s3://archive/x?gzip=yes").contains("true or false"));
        assert!(error("s3://Archive").contains("not a bucket name"));
        assert!(error("eventbridge://b?sauce=x").contains("does not take ?sauce="));
        assert!(error("kinesis://a b").contains("not a stream name"));
        assert!(error("states://arn:aws:lambda:us-east-1:1:function:f").contains("state machine"));
        assert!(error("s3://bucket?gzip=true&gzip=false").contains("twice"));
    }
}

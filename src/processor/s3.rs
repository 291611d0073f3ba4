//! The `s3://<bucket>/<prefix>[?gzip=true]` target: one JSON Lines object
//! per batch.
//!
//! The key is `<prefix><table>/<yyyy>/<mm>/<dd>/<HH>/<shardId>-<first
//! sequence>-<last sequence>.jsonl` (`.jsonl.gz` gzipped), the hour being
//! the first record's creation time in UTC. Everything in it comes from the
//! records, so a batch sent again after a failure writes the same key and
//! replaces its own object instead of adding a second one.
//! `DYNASTREAM_BATCH_SIZE`, `DYNASTREAM_BATCH_MAX_BYTES` and
//! `DYNASTREAM_BATCH_WINDOW_MS` set how large objects grow, as Firehose's
//! buffering hints do.

use std::io::Write;

use async_trait::async_trait;
use aws_sdk_s3::primitives::ByteStream;
use aws_smithy_types::date_time::{DateTime, Format};

use super::target::book_call;
use super::{Batch, BatchOutcome, Processor, ProcessorError};
use crate::aws::classify;
use crate::record::RecordFormat;

/// Writes each batch as one object.
#[derive(Debug, Clone)]
pub struct S3Target {
    client: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
    gzip: bool,
    format: RecordFormat,
    shown: String,
}

impl S3Target {
    /// Writes to `bucket` under `prefix` through `client`.
    pub fn new(
        client: aws_sdk_s3::Client,
        bucket: &str,
        prefix: &str,
        gzip: bool,
        format: RecordFormat,
    ) -> Self {
        crate::telemetry::metrics::target_seen("s3");
        S3Target {
            client,
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
            gzip,
            format,
            shown: format!("s3://{bucket}/{prefix}"),
        }
    }

    /// The object key of `batch` (`None` for an empty batch).
    pub fn key(&self, batch: &Batch) -> Option<String> {
        let first = batch.records.first()?;
        let last = batch.records.last()?;
        let created = first.dynamodb.approximate_creation_date_time.unwrap_or(0);
        // "2026-11-30T15:04:05Z": the hour's path is read off its fields.
        let time = DateTime::from_secs(created)
            .fmt(Format::DateTime)
            .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned());
        Some(format!(
            "{prefix}{table}/{year}/{month}/{day}/{hour}/{shard}-{first}-{last}.jsonl{gz}",
            prefix = self.prefix,
            table = crate::record::table_name(&batch.stream_arn),
            year = &time[0..4],
            month = &time[5..7],
            day = &time[8..10],
            hour = &time[11..13],
            shard = batch.shard_id,
            first = first.sequence_number(),
            last = last.sequence_number(),
            gz = if self.gzip { ".gz" } else { "" },
        ))
    }

    fn body(&self, batch: &Batch) -> Result<Vec<u8>, ProcessorError> {
        let mut lines = Vec::with_capacity(batch.len() * 512);
        for record in &batch.records {
            self.format.write(record, &mut lines);
            lines.push(b'\n');
        }
        if !self.gzip {
            return Ok(lines);
        }
        let mut encoder = flate2::write::GzEncoder::new(
            Vec::with_capacity(lines.len() / 4),
            flate2::Compression::default(),
        );
        encoder
            .write_all(&lines)
            .and_then(|()| encoder.finish())
            .map_err(|e| ProcessorError::retryable(format!("{}: gzip: {e}", self.shown)))
    }
}

#[async_trait]
impl Processor for S3Target {
    fn name(&self) -> &str {
        "s3"
    }

    async fn process(&self, batch: &Batch) -> Result<BatchOutcome, ProcessorError> {
        let Some(key) = self.key(batch) else {
            return Ok(BatchOutcome::Success);
        };
        let body = self.body(batch)?;
        let started = tokio::time::Instant::now();
        let mut call = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(&key)
            .content_type("application/x-ndjson")
            .body(ByteStream::from(body));
        if self.gzip {
            call = call.content_encoding("gzip");
        }
        let result = call.send().await.map_err(|e| classify(&e));
        book_call("s3", &self.shown, batch.len(), started.elapsed(), result)?;
        tracing::debug!(bucket = %self.bucket, %key, records = batch.len(), "object written");
        Ok(BatchOutcome::Success)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::EventName;
    use crate::streams::memory::test_record;
    use std::sync::Arc;

    #[tokio::test]
    async fn keys_come_from_the_records_alone() {
        let sdk = aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .build();
        let target = S3Target::new(
            aws_sdk_s3::Client::new(&sdk),
            "archive",
            "cdc/",
            true,
            RecordFormat::Document,
        );
        let stream = "arn:aws:dynamodb:us-east-1:1:table/orders/stream/x";
        let mut first = test_record(stream, &"0100".into(), EventName::Insert, "a");
        first.dynamodb.approximate_creation_date_time = Some(1_764_515_045); // 2025-11-30T15:04:05Z
        let last = test_record(stream, &"0200".into(), EventName::Modify, "a");
        let batch = Batch {
            stream_arn: stream.into(),
            shard_id: "shardId-1".into(),
            records: vec![Arc::new(first), Arc::new(last)],
        };
        assert_eq!(
            target.key(&batch).unwrap(),
            "cdc/orders/2025/11/30/15/shardId-1-0100-0200.jsonl.gz"
        );
        let body = target.body(&batch).unwrap();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&body[..]), &mut text)
            .unwrap();
        assert_eq!(text.lines().count(), 2);
        assert!(text.lines().all(|l| l.contains("\"table\":\"orders\"")));
    }
}

//! The `http` processor (being written).

use std::time::Duration;

use async_trait::async_trait;

use super::{Batch, BatchOutcome, Processor, ProcessorError};

/// POSTs Lambda's event to a URL.
#[derive(Debug)]
pub struct HttpProcessor {
    url: String,
    timeout: Duration,
}

impl HttpProcessor {
    /// A processor posting to `url`, waiting at most `timeout` per batch.
    pub fn new(url: &str, timeout: Duration) -> Result<HttpProcessor, ProcessorError> {
        Ok(HttpProcessor {
            url: url.to_owned(),
            timeout,
        })
    }
}

#[async_trait]
impl Processor for HttpProcessor {
    fn name(&self) -> &str {
        "http"
    }

    async fn process(&self, _batch: &Batch) -> Result<BatchOutcome, ProcessorError> {
        Err(ProcessorError::fatal(format!(
            "http processor for {} (timeout {:?}) is not built yet",
            self.url, self.timeout
        )))
    }
}

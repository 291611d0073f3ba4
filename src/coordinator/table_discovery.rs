//! Table discovery: the tables an application follows besides
//! `DYNASTREAM_TABLES`, found by name prefix or by tag.
//!
//! The shard-sync leader looks every `DYNASTREAM_TABLE_DISCOVERY_INTERVAL_MS`
//! (every worker looks once at start-up) and registers each new table as an
//! item in the lease table; every worker follows the registered tables from
//! there (after their snapshot, when there is one). A table that no longer
//! exists or matches is dropped from the register; its stream is read to
//! its end while it still can be.

use std::collections::HashSet;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::TableTag;
use crate::tables::{TableDescription, TablesApi, TablesError};

/// How tables are found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableDiscoverySettings {
    /// Every table whose name starts with this.
    pub prefix: Option<String>,
    /// Every table carrying this tag.
    pub tag: Option<TableTag>,
    /// How often the leader looks.
    pub interval: Duration,
}

/// The leader's clock and what it has already said.
#[derive(Debug)]
pub(super) struct TableDiscovery {
    settings: TableDiscoverySettings,
    next_due: Option<Instant>,
    /// Tables without a stream, reported once each.
    reported: HashSet<String>,
}

impl TableDiscovery {
    pub(super) fn new(settings: TableDiscoverySettings) -> Self {
        TableDiscovery {
            settings,
            next_due: None,
            reported: HashSet::new(),
        }
    }

    /// Whether a look is due (at once the first time).
    pub(super) fn is_due(&self, now: Instant) -> bool {
        self.next_due.is_none_or(|due| due <= now)
    }

    /// Whether `table` was not reported yet as lacking a stream (and is now).
    pub(super) fn report_once(&mut self, table: &str) -> bool {
        self.reported.insert(table.to_owned())
    }

    /// Lists the tables and describes those that match. A table that
    /// vanishes between the listing and its description is left out.
    pub(super) async fn look(
        &mut self,
        api: &dyn TablesApi,
        now: Instant,
    ) -> Result<Vec<TableDescription>, TablesError> {
        self.next_due = Some(now + self.settings.interval);
        let mut found = Vec::new();
        for name in api.list_tables().await? {
            if let Some(prefix) = &self.settings.prefix {
                if !name.starts_with(prefix.as_str()) {
                    continue;
                }
            }
            let description = match api.describe_table(&name).await {
                Ok(description) => description,
                Err(TablesError::NotFound(_)) => continue,
                Err(err) => return Err(err),
            };
            if let Some(tag) = &self.settings.tag {
                let tags = match api.tags_of(&description.arn).await {
                    Ok(tags) => tags,
                    Err(TablesError::NotFound(_)) => continue,
                    Err(err) => return Err(err),
                };
                if !carries(&tags, tag) {
                    continue;
                }
            }
            found.push(description);
        }
        Ok(found)
    }
}

/// Whether a table's tags include `tag` with its value.
fn carries(tags: &[(String, String)], tag: &TableTag) -> bool {
    tags.iter()
        .any(|(key, value)| *key == tag.key && *value == tag.value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tag_matches_on_key_and_value_both() {
        let tag = TableTag {
            key: "cdc".into(),
            value: "on".into(),
        };
        assert!(carries(
            &[("team".into(), "a".into()), ("cdc".into(), "on".into())],
            &tag
        ));
        assert!(!carries(&[("cdc".into(), "off".into())], &tag));
        assert!(!carries(&[("on".into(), "cdc".into())], &tag));
        assert!(!carries(&[], &tag));
    }
}

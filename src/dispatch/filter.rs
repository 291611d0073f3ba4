//! Event filtering with Lambda's FilterCriteria (placeholder; being written).

/// A parsed set of filter patterns.
#[derive(Debug, Clone)]
pub struct FilterSet;

impl FilterSet {
    /// Parses FilterCriteria.
    pub fn parse(_text: &str) -> Result<FilterSet, String> {
        Ok(FilterSet)
    }
}

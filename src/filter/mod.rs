//! Event filtering with Lambda's `FilterCriteria`.
//!
//! An event source mapping with filter criteria hands a function only the
//! records that match at least one of its patterns; the rest are skipped and
//! still checkpointed. Lambda takes its pattern syntax from EventBridge, and
//! this module implements that syntax as Lambda applies it to DynamoDB stream
//! records: the pattern is matched against the record in Lambda's JSON shape
//! (`eventName`, `dynamodb.Keys`, `dynamodb.NewImage.<attr>.S`, ...), so a
//! filter copied from an event source mapping selects the same records here.
//!
//! # Accepted text
//!
//! - Lambda's API shape, `{"Filters": [{"Pattern": "<pattern as a JSON string>"}, ...]}`
//!   (a `Pattern` given as a JSON object is accepted too);
//! - a JSON array of patterns;
//! - one pattern object.
//!
//! A record passes when any pattern matches. Lambda allows 5 patterns (10 with
//! a quota increase); up to [`MAX_PATTERNS`] are accepted here.
//!
//! # Patterns
//!
//! A pattern is a JSON object. A field whose value is an object matches the
//! record's field of that name against the nested pattern; a field whose value
//! is an array is a leaf, matched by any one of the array's matchers. Every
//! field of an object must match, and `"$or": [{...}, {...}, ...]` (at least two
//! objects) at any level adds "one of these must match as well". Matchers:
//!
//! | Matcher | Matches a leaf value that |
//! |---|---|
//! | `"INSERT"`, `5`, `true`, `null` | equals it, type included (`5` is not `"5"`, nor `5.0`) |
//! | `{"prefix": "x"}`, `{"suffix": "x"}` | is a string starting / ending with `x` |
//! | `{"equals-ignore-case": "x"}` | is a string equal to `x` ignoring case |
//! | `{"anything-but": ...}` | is not one of a string, a number, a list of only strings or only numbers; or not `{"prefix": "x"}`, `{"suffix": "x"}`, `{"equals-ignore-case": "x" or [...]}` |
//! | `{"numeric": [">", 0, "<=", 5]}` | is a number in range (`=`, or a lower bound `>`/`>=` and/or an upper bound `<`/`<=`, lower first) |
//! | `{"exists": true}` / `{"exists": false}` | is present / absent |
//!
//! Where the record holds an array, a leaf matcher matches when any element
//! does, and a nested pattern matches when any one element matches all of it
//! (so fields matched together come from the same element).
//!
//! Three rules surprise people, and are Lambda's (EventBridge's) own:
//!
//! - Only leaves exist. A map is not a value: `{"NewImage": {"name": [{"exists": true}]}}`
//!   never matches, because `name` holds `{"S": "..."}`; write
//!   `{"name": {"S": [{"exists": true}]}}`. For the same reason
//!   `{"exists": false}` on a map's own name always matches.
//! - A field the record lacks matches only `{"exists": false}`: not `null`, not
//!   `anything-but`.
//! - Exact values compare as JSON: the DynamoDB number `{"N": "12"}` matches
//!   `"N": ["12"]`, not `"N": [12]`.
//!
//! One deliberate extension: `numeric` also matches strings holding a decimal
//! number. DynamoDB JSON carries every number as a string (`{"N": "12.5"}`),
//! so `{"N": [{"numeric": [">", 10]}]}` filters on the attribute's value here;
//! under EventBridge's rules, which only compare JSON numbers, it would match
//! nothing. Numbers are compared as `f64`.
//!
//! # Errors
//!
//! [`FilterSet::parse`] refuses what EventBridge's pattern rules refuse (as
//! Lambda does when the event source mapping is created), with one line that
//! names the pattern (counted from 1) and the field path, e.g.
//! `pattern 2, at dynamodb.NewImage.age.N: "numeric" needs pairs of operator
//! and number, got [">", "x"]`. Inside `$or`, the alternatives are counted
//! from 1 as well: `dynamodb.$or[2].OldImage`.
//!
//! # Cost
//!
//! Patterns are compiled once into a tree of nodes and matchers. Matching
//! walks that tree and the record together: [`FilterSet::matches_record`]
//! reads the typed [`StreamRecord`] in place, looking fields up in its item
//! maps as if it were Lambda's JSON, and converts nothing. A record's JSON is
//! never built for filtering; the one allocation is the base64 text of a
//! binary value, made only when a pattern reaches a `B` or `BS` attribute.
//!
//! # Layout
//!
//! `parse.rs` turns the accepted text into the compiled tree (and words the
//! errors); `matching.rs` holds the tree and walks it over a record or JSON.

mod matching;
mod parse;

#[cfg(test)]
mod oracle;
#[cfg(test)]
mod tests;

use serde_json::Value;

use crate::record::StreamRecord;
use matching::{At, Node};

/// Most patterns one filter may hold (Lambda's own limit is 5, or 10 with a
/// quota increase).
pub const MAX_PATTERNS: usize = 100;

/// A parsed set of filter patterns: a record passes when any one matches.
///
/// Parsing validates the whole text once (a configuration setting holds a
/// `FilterSet`, not its text), so a record is never judged by a pattern that
/// could not be compiled.
#[derive(Debug, Clone)]
pub struct FilterSet {
    patterns: Box<[Node]>,
}

impl FilterSet {
    /// Parses FilterCriteria: `{"Filters": [{"Pattern": "..."}]}`, an array
    /// of pattern objects, or one pattern object.
    ///
    /// The error is one line naming the pattern and field at fault.
    pub fn parse(text: &str) -> Result<FilterSet, String> {
        Ok(FilterSet {
            patterns: parse::patterns(text)?,
        })
    }

    /// How many patterns the set holds.
    pub fn len(&self) -> usize {
        self.patterns.len()
    }

    /// Whether the set holds no pattern (never true for a parsed set).
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether `record`, a stream record in Lambda's JSON shape, matches any
    /// pattern.
    ///
    /// For records that are JSON already (and the tests' reference
    /// semantics); a [`StreamRecord`] goes to [`FilterSet::matches_record`].
    pub fn matches(&self, record: &Value) -> bool {
        self.matches_at(At::Json(record))
    }

    /// Whether `record` matches any pattern, judged as if on its Lambda-shaped
    /// JSON (the same answer as [`FilterSet::matches`] on
    /// `serde_json::to_value(record)`), without building that JSON.
    pub fn matches_record(&self, record: &StreamRecord) -> bool {
        self.matches_at(At::Record(record))
    }

    fn matches_at(&self, record: At<'_>) -> bool {
        self.patterns
            .iter()
            .any(|pattern| pattern.matches(Some(record)))
    }
}

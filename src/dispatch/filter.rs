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
//! walks that tree and the record together, looks fields up in the record's
//! maps and allocates nothing. [`FilterSet::matches_record`] converts to JSON
//! only the parts of the record some pattern can reach (`eventName`, one
//! attribute of `NewImage`, ...), not the whole record with its item images.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;
use serde_json::{Map, Number, Value};

use crate::record::{ChangeData, Item, StreamRecord};

/// Most patterns one filter may hold (Lambda's own limit is 5, or 10 with a
/// quota increase).
pub const MAX_PATTERNS: usize = 100;

/// The keyword for "one of these objects must match".
const OR_KEY: &str = "$or";

/// The three forms [`FilterSet::parse`] accepts, for its error message.
const ACCEPTED_SHAPES: &str =
    "a pattern object, an array of patterns or {\"Filters\": [{\"Pattern\": \"...\"}]}";

/// Longest rendering of a value quoted in an error message, in characters.
const SHOWN_VALUE_CHARS: usize = 80;

/// A parsed set of filter patterns: a record passes when any one matches.
#[derive(Debug, Clone)]
pub struct FilterSet {
    patterns: Box<[Node]>,
    /// What of a record the patterns can reach, so that
    /// [`FilterSet::matches_record`] converts only that.
    projection: Projection,
}

impl FilterSet {
    /// Parses FilterCriteria: `{"Filters": [{"Pattern": "..."}]}`, an array
    /// of pattern objects, or one pattern object.
    ///
    /// The error is one line naming the pattern and field at fault.
    pub fn parse(text: &str) -> Result<FilterSet, String> {
        let root: Value =
            serde_json::from_str(text).map_err(|err| format!("not valid JSON: {err}"))?;
        let patterns = match root {
            Value::Object(map) if map.contains_key("Filters") => filters_shape(map)?,
            Value::Array(items) => items,
            Value::Object(map) => vec![Value::Object(map)],
            other => return Err(format!("expected {ACCEPTED_SHAPES}, got {}", show(&other))),
        };
        if patterns.is_empty() {
            return Err(
                "no patterns: give at least one, or unset the filter to pass every record".into(),
            );
        }
        if patterns.len() > MAX_PATTERNS {
            return Err(format!(
                "{} patterns: at most {MAX_PATTERNS} are allowed (Lambda allows 5, or 10 with a quota increase)",
                patterns.len()
            ));
        }
        let patterns = patterns
            .iter()
            .enumerate()
            .map(|(index, pattern)| {
                let mut site = Site::new(index + 1);
                match pattern {
                    Value::Object(map) => compile_node(map, &mut site),
                    other => Err(site.error(format_args!(
                        "a pattern must be a JSON object, got {}",
                        show(other)
                    ))),
                }
            })
            .collect::<Result<Box<[Node]>, _>>()?;
        let projection = Projection::of_patterns(&patterns);
        Ok(FilterSet {
            patterns,
            projection,
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
    pub fn matches(&self, record: &Value) -> bool {
        self.patterns
            .iter()
            .any(|pattern| pattern.matches(Some(record)))
    }

    /// Whether `record` matches any pattern, judged on its Lambda-shaped JSON.
    ///
    /// Only the fields the patterns can reach are converted: the answer is
    /// the same as [`FilterSet::matches`] on the whole record's JSON, without
    /// copying item images the patterns never look at.
    pub fn matches_record(&self, record: &StreamRecord) -> bool {
        match project_record(record, &self.projection) {
            Ok(value) => self.matches(&value),
            // A record always serializes (its maps have string keys); were it
            // ever not to, processing it beats silently dropping it.
            Err(_) => true,
        }
    }
}

/// Unwraps Lambda's API shape into the patterns it holds.
fn filters_shape(mut map: Map<String, Value>) -> Result<Vec<Value>, String> {
    if let Some(key) = map.keys().find(|key| *key != "Filters") {
        return Err(format!(
            "unexpected key {} beside \"Filters\"",
            show_str(key)
        ));
    }
    let Some(Value::Array(filters)) = map.remove("Filters") else {
        return Err("\"Filters\" must be an array of {\"Pattern\": \"...\"} objects".into());
    };
    filters
        .into_iter()
        .enumerate()
        .map(|(index, filter)| {
            let number = index + 1;
            let Value::Object(mut filter) = filter else {
                return Err(format!(
                    "pattern {number}: a filter must be an object like {{\"Pattern\": \"...\"}}, got {}",
                    show(&filter)
                ));
            };
            if let Some(key) = filter.keys().find(|key| *key != "Pattern") {
                return Err(format!(
                    "pattern {number}: unexpected key {} in a filter (only \"Pattern\" is allowed)",
                    show_str(key)
                ));
            }
            match filter.remove("Pattern") {
                Some(Value::String(text)) => serde_json::from_str(&text).map_err(|err| {
                    format!("pattern {number}: \"Pattern\" is not valid JSON: {err}")
                }),
                Some(pattern @ Value::Object(_)) => Ok(pattern),
                Some(other) => Err(format!(
                    "pattern {number}: \"Pattern\" must be a JSON string (or object), got {}",
                    show(&other)
                )),
                None => Err(format!("pattern {number}: a filter needs a \"Pattern\"")),
            }
        })
        .collect()
}

/// A compiled pattern object: every field must match, and one of `any_of`
/// too when there is a `$or`.
#[derive(Debug, Clone)]
struct Node {
    fields: Box<[(Box<str>, Rule)]>,
    any_of: Box<[Node]>,
}

/// What one field of a pattern object asks of the record's field.
#[derive(Debug, Clone)]
enum Rule {
    /// A leaf: any matcher may match.
    Leaf(Box<[Matcher]>),
    /// A nested object pattern.
    Nested(Node),
}

/// One entry of a leaf's array.
#[derive(Debug, Clone)]
enum Matcher {
    String(Box<str>),
    Number(Number),
    Bool(bool),
    Null,
    Prefix(Box<str>),
    Suffix(Box<str>),
    /// Holds the pattern lower-cased (character by character).
    EqualsIgnoreCase(Box<str>),
    AnythingBut(Exclusion),
    Numeric(Range),
    Exists(bool),
}

/// What `anything-but` rules out.
#[derive(Debug, Clone)]
enum Exclusion {
    Strings(Box<[Box<str>]>),
    Numbers(Box<[f64]>),
    Prefix(Box<str>),
    Suffix(Box<str>),
    /// Lower-cased like [`Matcher::EqualsIgnoreCase`].
    IgnoreCase(Box<[Box<str>]>),
}

/// A numeric interval; each bound is `(value, inclusive)`.
#[derive(Debug, Clone, Copy)]
struct Range {
    lower: Option<(f64, bool)>,
    upper: Option<(f64, bool)>,
}

impl Node {
    /// Whether `value` (the record's value at this node's path, `None` when
    /// absent) satisfies the node. Against an array, one element must satisfy
    /// the whole node.
    fn matches(&self, value: Option<&Value>) -> bool {
        match value {
            Some(Value::Array(items)) if !items.is_empty() => {
                items.iter().any(|item| self.matches(Some(item)))
            }
            _ => self.matches_fields(value.and_then(Value::as_object)),
        }
    }

    fn matches_fields(&self, object: Option<&Map<String, Value>>) -> bool {
        let fields = self.fields.iter().all(|(name, rule)| {
            let field = object.and_then(|object| object.get(&**name));
            match rule {
                Rule::Leaf(matchers) => leaf_matches(matchers, field),
                Rule::Nested(node) => node.matches(field),
            }
        });
        fields
            && (self.any_of.is_empty()
                || self.any_of.iter().any(|node| node.matches_fields(object)))
    }
}

/// Whether any of `matchers` accepts the record's field `value`.
fn leaf_matches(matchers: &[Matcher], value: Option<&Value>) -> bool {
    let mut present = false;
    if let Some(value) = value {
        let found = any_leaf(value, &mut |leaf| {
            present = true;
            matchers.iter().any(|matcher| matcher.accepts(leaf))
        });
        if found {
            return true;
        }
    }
    !present
        && matchers
            .iter()
            .any(|matcher| matches!(matcher, Matcher::Exists(false)))
}

/// Calls `accept` on each leaf of `value` (itself, or the elements of nested
/// arrays; objects are not leaves) until it returns true.
fn any_leaf(value: &Value, accept: &mut impl FnMut(&Value) -> bool) -> bool {
    match value {
        Value::Array(items) => items.iter().any(|item| any_leaf(item, accept)),
        Value::Object(_) => false,
        leaf => accept(leaf),
    }
}

impl Matcher {
    /// Whether this matcher accepts one leaf value (never an array or object).
    fn accepts(&self, leaf: &Value) -> bool {
        match self {
            Matcher::String(expected) => leaf.as_str() == Some(&**expected),
            Matcher::Number(expected) => matches!(leaf, Value::Number(n) if n == expected),
            Matcher::Bool(expected) => leaf.as_bool() == Some(*expected),
            Matcher::Null => leaf.is_null(),
            Matcher::Prefix(prefix) => leaf.as_str().is_some_and(|s| s.starts_with(&**prefix)),
            Matcher::Suffix(suffix) => leaf.as_str().is_some_and(|s| s.ends_with(&**suffix)),
            Matcher::EqualsIgnoreCase(folded) => {
                leaf.as_str().is_some_and(|s| equals_folded(folded, s))
            }
            Matcher::AnythingBut(exclusion) => !exclusion.excludes(leaf),
            Matcher::Numeric(range) => numeric_value(leaf).is_some_and(|n| range.contains(n)),
            Matcher::Exists(present) => *present,
        }
    }
}

impl Exclusion {
    fn excludes(&self, leaf: &Value) -> bool {
        match self {
            Exclusion::Strings(values) => leaf
                .as_str()
                .is_some_and(|s| values.iter().any(|v| **v == *s)),
            Exclusion::Numbers(values) => match leaf {
                Value::Number(n) => n.as_f64().is_some_and(|n| values.contains(&n)),
                _ => false,
            },
            Exclusion::Prefix(prefix) => leaf.as_str().is_some_and(|s| s.starts_with(&**prefix)),
            Exclusion::Suffix(suffix) => leaf.as_str().is_some_and(|s| s.ends_with(&**suffix)),
            Exclusion::IgnoreCase(values) => leaf
                .as_str()
                .is_some_and(|s| values.iter().any(|v| equals_folded(v, s))),
        }
    }
}

impl Range {
    fn contains(&self, n: f64) -> bool {
        let above = self
            .lower
            .is_none_or(|(bound, inclusive)| if inclusive { n >= bound } else { n > bound });
        let below = self
            .upper
            .is_none_or(|(bound, inclusive)| if inclusive { n <= bound } else { n < bound });
        above && below
    }
}

/// A leaf's numeric value: a JSON number, or a string holding a decimal
/// number (DynamoDB's `{"N": "12.5"}`).
fn numeric_value(leaf: &Value) -> Option<f64> {
    match leaf {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => {
            let decimal = s
                .bytes()
                .all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E'));
            if !decimal {
                return None;
            }
            s.parse::<f64>().ok().filter(|n| n.is_finite())
        }
        _ => None,
    }
}

/// Lower-cases character by character, the form `equals_folded` compares.
fn fold(text: &str) -> Box<str> {
    text.chars()
        .flat_map(char::to_lowercase)
        .collect::<String>()
        .into()
}

/// Whether `text` equals `folded` (already lower-cased) ignoring case.
fn equals_folded(folded: &str, text: &str) -> bool {
    folded.chars().eq(text.chars().flat_map(char::to_lowercase))
}

/// The part of a value that patterns can reach.
///
/// Matching reads a field only when a pattern names it, so a record cut down
/// to these fields matches exactly like the whole record; building only them
/// avoids serializing item images of which a filter reads one attribute.
#[derive(Debug, Clone)]
enum Projection {
    /// The value as it is: a leaf's matchers read all of it (its elements,
    /// whether it is present, whether it is a leaf at all).
    Whole,
    /// Only these fields, of the value or of each object in it when it is an
    /// array (a nested pattern is matched against each element).
    Fields(BTreeMap<Box<str>, Projection>),
}

impl Projection {
    /// What `patterns` can reach, together: a record passes on any of them.
    fn of_patterns(patterns: &[Node]) -> Projection {
        let mut projection = Projection::Fields(BTreeMap::new());
        for pattern in patterns {
            projection.add(pattern);
        }
        projection
    }

    /// Widens the projection to what `node` reaches at this level.
    fn add(&mut self, node: &Node) {
        // A whole value already holds whatever the node could read.
        let Projection::Fields(fields) = self else {
            return;
        };
        for (name, rule) in &node.fields {
            let reach = fields
                .entry(name.clone())
                .or_insert_with(|| Projection::Fields(BTreeMap::new()));
            match rule {
                Rule::Leaf(_) => *reach = Projection::Whole,
                Rule::Nested(inner) => reach.add(inner),
            }
        }
        // `$or` alternatives are matched against the same object.
        for alternative in &node.any_of {
            self.add(alternative);
        }
    }

    /// Cuts `value` down to the projection; arrays keep every element (cut
    /// in turn) and scalars stay as they are, so that a nested pattern meets
    /// the same shape as in the whole value.
    fn apply(&self, value: Value) -> Value {
        let Projection::Fields(fields) = self else {
            return value;
        };
        match value {
            Value::Object(mut object) => Value::Object(
                fields
                    .iter()
                    .filter_map(|(name, reach)| {
                        let field = object.remove(&**name)?;
                        Some((name.to_string(), reach.apply(field)))
                    })
                    .collect(),
            ),
            Value::Array(items) => {
                Value::Array(items.into_iter().map(|item| self.apply(item)).collect())
            }
            scalar => scalar,
        }
    }

    /// Serializes `value` and cuts it down, for a field of the record that is
    /// small, or that the projection takes whole anyway.
    fn serialize<T: Serialize + ?Sized>(&self, value: &T) -> Result<Value, serde_json::Error> {
        serde_json::to_value(value).map(|value| self.apply(value))
    }
}

/// `record`'s Lambda-shaped JSON, holding only what `projection` reaches.
///
/// Each field is serialized on its own with the record's serde attributes,
/// so it is exactly what `serde_json::to_value(record)` holds at that path,
/// and a field skipped when `None` stays absent.
fn project_record(
    record: &StreamRecord,
    projection: &Projection,
) -> Result<Value, serde_json::Error> {
    let Projection::Fields(fields) = projection else {
        return serde_json::to_value(record);
    };
    let mut whole = None;
    let mut projected = Map::new();
    for (name, reach) in fields {
        let value = match &**name {
            "eventID" => Some(reach.serialize(&record.event_id)?),
            "eventName" => Some(reach.serialize(&record.event_name)?),
            "eventVersion" => Some(reach.serialize(&record.event_version)?),
            "eventSource" => Some(reach.serialize(&record.event_source)?),
            "awsRegion" => Some(reach.serialize(&record.aws_region)?),
            "dynamodb" => Some(project_change(&record.dynamodb, reach)?),
            "eventSourceARN" => Some(reach.serialize(&record.event_source_arn)?),
            "userIdentity" => record
                .user_identity
                .as_ref()
                .map(|identity| reach.serialize(identity))
                .transpose()?,
            _ => serialized_field(&mut whole, record, name)?.map(|value| reach.apply(value)),
        };
        if let Some(value) = value {
            projected.insert(name.to_string(), value);
        }
    }
    Ok(Value::Object(projected))
}

/// The record's `dynamodb` part, holding only what `projection` reaches.
fn project_change(
    change: &ChangeData,
    projection: &Projection,
) -> Result<Value, serde_json::Error> {
    let Projection::Fields(fields) = projection else {
        return serde_json::to_value(change);
    };
    let mut whole = None;
    let mut projected = Map::new();
    for (name, reach) in fields {
        let value = match &**name {
            "ApproximateCreationDateTime" => change
                .approximate_creation_date_time
                .map(|time| reach.serialize(&time))
                .transpose()?,
            "Keys" => Some(project_item(&change.keys, reach)?),
            "NewImage" => change
                .new_image
                .as_ref()
                .map(|image| project_item(image, reach))
                .transpose()?,
            "OldImage" => change
                .old_image
                .as_ref()
                .map(|image| project_item(image, reach))
                .transpose()?,
            "SequenceNumber" => Some(reach.serialize(&change.sequence_number)?),
            "SizeBytes" => Some(reach.serialize(&change.size_bytes)?),
            "StreamViewType" => change
                .stream_view_type
                .as_ref()
                .map(|view| reach.serialize(view))
                .transpose()?,
            _ => serialized_field(&mut whole, change, name)?.map(|value| reach.apply(value)),
        };
        if let Some(value) = value {
            projected.insert(name.to_string(), value);
        }
    }
    Ok(Value::Object(projected))
}

/// An item image or key set, holding only the attributes `projection`
/// reaches: the point of projecting, as images are most of a record.
fn project_item(item: &Item, projection: &Projection) -> Result<Value, serde_json::Error> {
    let Projection::Fields(attributes) = projection else {
        return serde_json::to_value(item);
    };
    let mut projected = Map::new();
    for (name, reach) in attributes {
        if let Some(attribute) = item.get(&**name) {
            projected.insert(name.to_string(), reach.serialize(attribute)?);
        }
    }
    Ok(Value::Object(projected))
}

/// Field `name` of `source` taken from its whole serialization (made once,
/// into `whole`), for a name the projection code does not know: a field
/// added to the record model is then matched correctly, only without the
/// saving, and a name the record lacks stays absent.
fn serialized_field<T: Serialize>(
    whole: &mut Option<Value>,
    source: &T,
    name: &str,
) -> Result<Option<Value>, serde_json::Error> {
    if whole.is_none() {
        *whole = Some(serde_json::to_value(source)?);
    }
    Ok(whole
        .as_mut()
        .and_then(Value::as_object_mut)
        .and_then(|object| object.remove(name)))
}

/// Where in the input a pattern is being compiled, for error messages.
struct Site {
    pattern: usize,
    path: Vec<String>,
}

impl Site {
    fn new(pattern: usize) -> Self {
        Site {
            pattern,
            path: Vec::new(),
        }
    }

    fn error(&self, message: std::fmt::Arguments<'_>) -> String {
        if self.path.is_empty() {
            format!("pattern {}: {message}", self.pattern)
        } else {
            format!(
                "pattern {}, at {}: {message}",
                self.pattern,
                self.path.join(".")
            )
        }
    }
}

/// A field name as a path segment: as written, or quoted when it would be
/// ambiguous or break the line.
fn segment(key: &str) -> String {
    let plain = !key.is_empty() && !key.chars().any(|c| c.is_control() || c == '.' || c == '"');
    if plain {
        key.to_owned()
    } else {
        show_str(key)
    }
}

fn compile_node(map: &Map<String, Value>, site: &mut Site) -> Result<Node, String> {
    if map.is_empty() {
        return Err(site.error(format_args!(
            "an empty object matches nothing; give at least one field"
        )));
    }
    let mut fields = Vec::with_capacity(map.len());
    let mut any_of = Vec::new();
    for (key, value) in map {
        if key == OR_KEY {
            any_of = compile_or(value, site)?;
            continue;
        }
        site.path.push(segment(key));
        let rule = match value {
            Value::Array(items) => Rule::Leaf(compile_matchers(items, site)?),
            Value::Object(inner) => Rule::Nested(compile_node(inner, site)?),
            other => {
                return Err(site.error(format_args!(
                    "a field takes an array of values or an object of fields, got {}",
                    show(other)
                )))
            }
        };
        site.path.pop();
        fields.push((Box::from(key.as_str()), rule));
    }
    Ok(Node {
        fields: fields.into(),
        any_of: any_of.into(),
    })
}

fn compile_or(value: &Value, site: &mut Site) -> Result<Vec<Node>, String> {
    site.path.push(OR_KEY.to_owned());
    let alternatives = match value {
        Value::Array(items) if items.len() >= 2 => items,
        other => {
            return Err(site.error(format_args!(
                "\"$or\" takes an array of at least two pattern objects, got {}",
                show(other)
            )))
        }
    };
    site.path.pop();
    let mut nodes = Vec::with_capacity(alternatives.len());
    for (index, alternative) in alternatives.iter().enumerate() {
        site.path.push(format!("{OR_KEY}[{}]", index + 1));
        let Value::Object(map) = alternative else {
            return Err(site.error(format_args!(
                "each \"$or\" alternative must be a pattern object, got {}",
                show(alternative)
            )));
        };
        nodes.push(compile_node(map, site)?);
        site.path.pop();
    }
    Ok(nodes)
}

fn compile_matchers(items: &[Value], site: &Site) -> Result<Box<[Matcher]>, String> {
    if items.is_empty() {
        return Err(site.error(format_args!(
            "an empty array matches nothing; give at least one value or operator"
        )));
    }
    items
        .iter()
        .map(|item| compile_matcher(item, site))
        .collect()
}

fn compile_matcher(item: &Value, site: &Site) -> Result<Matcher, String> {
    Ok(match item {
        Value::String(s) => Matcher::String(s.as_str().into()),
        Value::Number(n) => Matcher::Number(n.clone()),
        Value::Bool(b) => Matcher::Bool(*b),
        Value::Null => Matcher::Null,
        Value::Array(_) => {
            return Err(site.error(format_args!(
                "a value must be a string, number, boolean, null or operator object, got {}",
                show(item)
            )))
        }
        Value::Object(map) => {
            let mut entries = map.iter();
            let (Some((operator, operand)), None) = (entries.next(), entries.next()) else {
                return Err(site.error(format_args!(
                    "an operator object holds exactly one operator, got {}",
                    show(item)
                )));
            };
            compile_operator(operator, operand, site)?
        }
    })
}

fn compile_operator(operator: &str, operand: &Value, site: &Site) -> Result<Matcher, String> {
    let string_operand = || match operand {
        Value::String(s) => Ok(s.as_str()),
        other => Err(site.error(format_args!(
            "\"{operator}\" takes a string, got {}",
            show(other)
        ))),
    };
    Ok(match operator {
        "prefix" => Matcher::Prefix(string_operand()?.into()),
        "suffix" => Matcher::Suffix(string_operand()?.into()),
        "equals-ignore-case" => Matcher::EqualsIgnoreCase(fold(string_operand()?)),
        "anything-but" => Matcher::AnythingBut(compile_anything_but(operand, site)?),
        "numeric" => Matcher::Numeric(compile_numeric(operand, site)?),
        "exists" => match operand {
            Value::Bool(present) => Matcher::Exists(*present),
            other => {
                return Err(site.error(format_args!(
                    "\"exists\" takes true or false, got {}",
                    show(other)
                )))
            }
        },
        "wildcard" | "cidr" => {
            return Err(site.error(format_args!(
                "\"{operator}\" is not supported (Lambda's event filtering documents prefix, suffix, equals-ignore-case, anything-but, numeric and exists)"
            )))
        }
        other => {
            return Err(site.error(format_args!(
                "unknown operator {}; expected prefix, suffix, equals-ignore-case, anything-but, numeric or exists",
                show_str(other)
            )))
        }
    })
}

fn compile_anything_but(operand: &Value, site: &Site) -> Result<Exclusion, String> {
    let wrong = |what: &Value| {
        site.error(format_args!(
            "\"anything-but\" takes a string, a number, an array of only strings or only numbers, or an object with \"prefix\", \"suffix\" or \"equals-ignore-case\", got {}",
            show(what)
        ))
    };
    Ok(match operand {
        Value::String(s) => Exclusion::Strings(Box::new([s.as_str().into()])),
        Value::Number(n) => Exclusion::Numbers(Box::new([as_f64(n, site)?])),
        Value::Array(items) => {
            if let Some(strings) = items
                .iter()
                .map(|item| item.as_str().map(Box::from))
                .collect::<Option<Box<[Box<str>]>>>()
                .filter(|strings| !strings.is_empty())
            {
                Exclusion::Strings(strings)
            } else if items.iter().all(Value::is_number) && !items.is_empty() {
                Exclusion::Numbers(
                    items
                        .iter()
                        .filter_map(Value::as_number)
                        .map(|n| as_f64(n, site))
                        .collect::<Result<_, _>>()?,
                )
            } else {
                return Err(wrong(operand));
            }
        }
        Value::Object(map) => {
            let mut entries = map.iter();
            let (Some((operator, inner)), None) = (entries.next(), entries.next()) else {
                return Err(wrong(operand));
            };
            match (operator.as_str(), inner) {
                ("prefix" | "suffix", Value::String(text)) if text.is_empty() => {
                    return Err(site.error(format_args!(
                        "\"anything-but\" with an empty \"{operator}\" would exclude every string"
                    )))
                }
                ("prefix", Value::String(text)) => Exclusion::Prefix(text.as_str().into()),
                ("suffix", Value::String(text)) => Exclusion::Suffix(text.as_str().into()),
                ("equals-ignore-case", Value::String(text)) => {
                    Exclusion::IgnoreCase(Box::new([fold(text)]))
                }
                ("equals-ignore-case", Value::Array(items)) => items
                    .iter()
                    .map(|item| item.as_str().map(fold))
                    .collect::<Option<Box<[Box<str>]>>>()
                    .filter(|texts| !texts.is_empty())
                    .map(Exclusion::IgnoreCase)
                    .ok_or_else(|| {
                        site.error(format_args!(
                            "\"anything-but\" \"equals-ignore-case\" takes a string or a non-empty array of strings, got {}",
                            show(inner)
                        ))
                    })?,
                _ => return Err(wrong(operand)),
            }
        }
        other => return Err(wrong(other)),
    })
}

fn as_f64(n: &Number, site: &Site) -> Result<f64, String> {
    n.as_f64()
        .filter(|n| n.is_finite())
        .ok_or_else(|| site.error(format_args!("{n} is not a usable number")))
}

fn compile_numeric(operand: &Value, site: &Site) -> Result<Range, String> {
    let pairs_needed = || {
        site.error(format_args!(
            "\"numeric\" needs pairs of operator and number, got {}",
            show(operand)
        ))
    };
    let Value::Array(items) = operand else {
        return Err(pairs_needed());
    };
    if items.is_empty() || items.len() % 2 != 0 {
        return Err(pairs_needed());
    }
    if items.len() > 4 {
        return Err(site.error(format_args!(
            "\"numeric\" takes one comparison or a range of two, got {}",
            show(operand)
        )));
    }
    let mut comparisons = Vec::with_capacity(2);
    for pair in items.chunks(2) {
        let (Value::String(op), Value::Number(n)) = (&pair[0], &pair[1]) else {
            return Err(pairs_needed());
        };
        if !matches!(op.as_str(), "=" | "<" | "<=" | ">" | ">=") {
            return Err(site.error(format_args!(
                "unknown numeric operator {}; expected =, <, <=, > or >=",
                show_str(op)
            )));
        }
        comparisons.push((op.as_str(), as_f64(n, site)?, n));
    }
    let range = match comparisons.as_slice() {
        [("=", n, _)] => Range {
            lower: Some((*n, true)),
            upper: Some((*n, true)),
        },
        [(op @ (">" | ">="), n, _)] => Range {
            lower: Some((*n, *op == ">=")),
            upper: None,
        },
        [(op @ ("<" | "<="), n, _)] => Range {
            lower: None,
            upper: Some((*n, *op == "<=")),
        },
        [(low_op @ (">" | ">="), low, low_text), (high_op @ ("<" | "<="), high, high_text)] => {
            if low >= high {
                return Err(site.error(format_args!(
                    "the range is empty: the lower bound {low_text} is not below the upper bound {high_text}"
                )));
            }
            Range {
                lower: Some((*low, *low_op == ">=")),
                upper: Some((*high, *high_op == "<=")),
            }
        }
        _ => {
            return Err(site.error(format_args!(
                "a numeric range is a lower bound (> or >=) followed by an upper bound (< or <=), and \"=\" stands alone; got {}",
                show(operand)
            )))
        }
    };
    Ok(range)
}

/// A value as compact, single-line JSON with a space after separators,
/// shortened when long.
fn show(value: &Value) -> String {
    let mut out = String::new();
    render(value, &mut out);
    if let Some((cut, _)) = out.char_indices().nth(SHOWN_VALUE_CHARS) {
        out.truncate(cut);
        out.push_str("...");
    }
    out
}

fn render(value: &Value, out: &mut String) {
    // Enough to show the start of any value; the rest is cut anyway.
    if out.len() > SHOWN_VALUE_CHARS * 4 {
        return;
    }
    match value {
        Value::Array(items) => {
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push_str(", ");
                }
                render(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (index, (key, item)) in map.iter().enumerate() {
                if index > 0 {
                    out.push_str(", ");
                }
                out.push_str(&show_str(key));
                out.push_str(": ");
                render(item, out);
            }
            out.push('}');
        }
        scalar => {
            let _ = write!(out, "{scalar}");
        }
    }
}

/// A string as a JSON string literal (quoted, escaped, one line).
fn show_str(text: &str) -> String {
    Value::String(text.to_owned()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{
        AttributeValue, ChangeData, EventName, Item, SequenceNumber, UserIdentity,
    };
    use proptest::prelude::*;
    use serde_json::json;
    use std::sync::Arc;

    fn s(text: &str) -> AttributeValue {
        AttributeValue::S(text.into())
    }

    fn n(text: &str) -> AttributeValue {
        AttributeValue::N(text.into())
    }

    fn item(entries: &[(&str, AttributeValue)]) -> Item {
        entries
            .iter()
            .map(|(name, value)| (name.to_string(), value.clone()))
            .collect()
    }

    fn record(
        event_name: EventName,
        keys: Item,
        new_image: Option<Item>,
        old_image: Option<Item>,
    ) -> StreamRecord {
        StreamRecord {
            event_id: "e-1".into(),
            event_name,
            event_version: "1.1".into(),
            event_source: "aws:dynamodb".into(),
            aws_region: "eu-west-1".into(),
            dynamodb: ChangeData {
                approximate_creation_date_time: Some(1_700_000_000),
                keys,
                new_image,
                old_image,
                sequence_number: SequenceNumber("100".into()),
                size_bytes: 120,
                stream_view_type: Some("NEW_AND_OLD_IMAGES".into()),
            },
            event_source_arn: Arc::from("arn:aws:dynamodb:eu-west-1:1:table/t/stream/x"),
            user_identity: None,
        }
    }

    /// The records the table refers to by name, in Lambda's JSON shape.
    fn fixture(name: &str) -> Value {
        match fixture_record(name) {
            Some(stream_record) => serde_json::to_value(stream_record).unwrap(),
            None => fixture_json(name),
        }
    }

    /// The fixtures that are stream records, for `matches_record`.
    fn fixture_record(name: &str) -> Option<StreamRecord> {
        let keys = item(&[("pk", s("user#1")), ("sk", n("7"))]);
        let stream_record = match name {
            "insert" => {
                let mut image = keys.clone();
                image.extend(item(&[
                    ("name", s("Alice")),
                    ("age", n("42")),
                    ("score", n("-3.5")),
                    ("big", n("12345678901234567890")),
                    ("empty", s("")),
                    (
                        "tags",
                        AttributeValue::Ss(vec!["red".into(), "blue".into()]),
                    ),
                    ("nums", AttributeValue::Ns(vec!["1".into(), "20".into()])),
                    ("active", AttributeValue::Bool(true)),
                    ("gone", AttributeValue::Null(true)),
                    ("blob", AttributeValue::B(vec![1, 2])),
                    ("address", AttributeValue::M(item(&[("city", s("Paris"))]))),
                    ("items", AttributeValue::L(vec![s("a"), n("5")])),
                ]));
                record(EventName::Insert, keys, Some(image), None)
            }
            "modify" => {
                let keys = item(&[("pk", s("user#2")), ("sk", n("7"))]);
                let mut new_image = keys.clone();
                new_image.insert("age".into(), n("43"));
                let mut old_image = keys.clone();
                old_image.insert("age".into(), n("42"));
                record(EventName::Modify, keys, Some(new_image), Some(old_image))
            }
            "remove" => {
                let mut old_image = keys.clone();
                old_image.insert("age".into(), n("50"));
                let mut removed = record(EventName::Remove, keys, None, Some(old_image));
                removed.user_identity = Some(UserIdentity {
                    kind: "Service".into(),
                    principal_id: "dynamodb.amazonaws.com".into(),
                });
                removed
            }
            _ => return None,
        };
        Some(stream_record)
    }

    /// The fixture that is plain JSON, for shapes no stream record has.
    fn fixture_json(name: &str) -> Value {
        match name {
            "json" => json!({
                "a": [1, "x", [2, [3]], {"b": "in-object"}],
                "list": [{"k": "v1", "n": 1}, {"k": "v2", "n": 2}],
                "empty": [],
                "nul": null,
                "flag": false,
                "num": 5,
                "float": 2.5,
                "str": "Hello World",
                "obj": {"inner": "x"}
            }),
            other => panic!("no fixture {other}"),
        }
    }

    /// (what, record, filter text, expected).
    #[rustfmt::skip]
    const MATCHES: &[(&str, &str, &str, bool)] = &[
        // Exact values.
        ("exact string", "insert", r#"{"eventName":["INSERT"]}"#, true),
        ("exact string, other", "modify", r#"{"eventName":["INSERT"]}"#, false),
        ("exact, any of", "modify", r#"{"eventName":["INSERT","MODIFY"]}"#, true),
        ("exact, none of", "remove", r#"{"eventName":["INSERT","MODIFY"]}"#, false),
        ("key S", "insert", r#"{"dynamodb":{"Keys":{"pk":{"S":["user#1"]}}}}"#, true),
        ("key S, other", "insert", r#"{"dynamodb":{"Keys":{"pk":{"S":["user#2"]}}}}"#, false),
        ("key N as text", "insert", r#"{"dynamodb":{"Keys":{"sk":{"N":["7"]}}}}"#, true),
        ("key N as number", "insert", r#"{"dynamodb":{"Keys":{"sk":{"N":[7]}}}}"#, false),
        ("empty string", "insert", r#"{"dynamodb":{"NewImage":{"empty":{"S":[""]}}}}"#, true),
        ("BOOL true", "insert", r#"{"dynamodb":{"NewImage":{"active":{"BOOL":[true]}}}}"#, true),
        ("BOOL false", "insert", r#"{"dynamodb":{"NewImage":{"active":{"BOOL":[false]}}}}"#, false),
        ("NULL attribute", "insert", r#"{"dynamodb":{"NewImage":{"gone":{"NULL":[true]}}}}"#, true),
        ("B as base64", "insert", r#"{"dynamodb":{"NewImage":{"blob":{"B":["AQI="]}}}}"#, true),
        ("M nested", "insert", r#"{"dynamodb":{"NewImage":{"address":{"M":{"city":{"S":["Paris"]}}}}}}"#, true),
        ("SS element", "insert", r#"{"dynamodb":{"NewImage":{"tags":{"SS":["blue"]}}}}"#, true),
        ("SS no element", "insert", r#"{"dynamodb":{"NewImage":{"tags":{"SS":["green"]}}}}"#, false),
        ("json null", "json", r#"{"nul":[null]}"#, true),
        ("json null, not null", "json", r#"{"num":[null]}"#, false),
        ("json null, absent", "json", r#"{"missing":[null]}"#, false),
        ("json false", "json", r#"{"flag":[false]}"#, true),
        ("json number", "json", r#"{"num":[5]}"#, true),
        ("json float", "json", r#"{"float":[2.5]}"#, true),
        ("number is not its text", "json", r#"{"num":["5"]}"#, false),
        ("int is not float", "json", r#"{"num":[5.0]}"#, false),
        ("SizeBytes", "insert", r#"{"dynamodb":{"SizeBytes":[120]}}"#, true),
        ("object is no value", "json", r#"{"obj":["x"]}"#, false),
        // Nesting and AND.
        ("and, both", "insert", r#"{"eventName":["INSERT"],"dynamodb":{"Keys":{"pk":{"S":["user#1"]}}}}"#, true),
        ("and, one fails", "insert", r#"{"eventName":["MODIFY"],"dynamodb":{"Keys":{"pk":{"S":["user#1"]}}}}"#, false),
        ("absent attribute", "insert", r#"{"dynamodb":{"NewImage":{"nope":{"S":["x"]}}}}"#, false),
        ("absent image", "insert", r#"{"dynamodb":{"OldImage":{"age":{"N":["42"]}}}}"#, false),
        ("old image", "modify", r#"{"dynamodb":{"OldImage":{"age":{"N":["42"]}}}}"#, true),
        ("several matchers", "insert", r#"{"eventName":["REMOVE",{"prefix":"INS"}]}"#, true),
        // prefix, suffix, equals-ignore-case.
        ("prefix", "insert", r#"{"dynamodb":{"Keys":{"pk":{"S":[{"prefix":"user#"}]}}}}"#, true),
        ("prefix, other", "insert", r#"{"dynamodb":{"Keys":{"pk":{"S":[{"prefix":"order#"}]}}}}"#, false),
        ("prefix, empty", "json", r#"{"str":[{"prefix":""}]}"#, true),
        ("prefix, number", "json", r#"{"num":[{"prefix":"5"}]}"#, false),
        ("prefix, case", "json", r#"{"str":[{"prefix":"hello"}]}"#, false),
        ("prefix, not at the start", "json", r#"{"str":[{"prefix":"World"}]}"#, false),
        ("suffix", "json", r#"{"str":[{"suffix":"World"}]}"#, true),
        ("suffix, case", "json", r#"{"str":[{"suffix":"world"}]}"#, false),
        ("suffix, not at the end", "json", r#"{"str":[{"suffix":"Hello"}]}"#, false),
        ("suffix, array", "insert", r#"{"dynamodb":{"NewImage":{"tags":{"SS":[{"suffix":"ue"}]}}}}"#, true),
        ("ignore case", "json", r#"{"str":[{"equals-ignore-case":"hello WORLD"}]}"#, true),
        ("ignore case, other", "json", r#"{"str":[{"equals-ignore-case":"hello"}]}"#, false),
        ("ignore case, event", "insert", r#"{"eventName":[{"equals-ignore-case":"insert"}]}"#, true),
        ("ignore case, number", "json", r#"{"num":[{"equals-ignore-case":"5"}]}"#, false),
        // anything-but.
        ("anything-but list", "insert", r#"{"eventName":[{"anything-but":["REMOVE"]}]}"#, true),
        ("anything-but list, hit", "remove", r#"{"eventName":[{"anything-but":["REMOVE"]}]}"#, false),
        ("anything-but single", "insert", r#"{"eventName":[{"anything-but":"INSERT"}]}"#, false),
        ("anything-but single, miss", "modify", r#"{"eventName":[{"anything-but":"INSERT"}]}"#, true),
        ("anything-but numbers", "json", r#"{"num":[{"anything-but":[4,6]}]}"#, true),
        ("anything-but numbers, hit", "json", r#"{"num":[{"anything-but":[4,5]}]}"#, false),
        ("anything-but number compares numerically", "json", r#"{"num":[{"anything-but":5.0}]}"#, false),
        ("anything-but number vs string", "json", r#"{"str":[{"anything-but":[1]}]}"#, true),
        ("anything-but absent", "json", r#"{"missing":[{"anything-but":"x"}]}"#, false),
        ("anything-but null value", "json", r#"{"nul":[{"anything-but":"x"}]}"#, true),
        ("anything-but prefix", "insert", r#"{"dynamodb":{"Keys":{"pk":{"S":[{"anything-but":{"prefix":"user#"}}]}}}}"#, false),
        ("anything-but prefix, miss", "insert", r#"{"dynamodb":{"Keys":{"pk":{"S":[{"anything-but":{"prefix":"order#"}}]}}}}"#, true),
        ("anything-but suffix", "json", r#"{"str":[{"anything-but":{"suffix":"World"}}]}"#, false),
        ("anything-but suffix, miss", "json", r#"{"str":[{"anything-but":{"suffix":"Moon"}}]}"#, true),
        ("anything-but ignore case", "insert", r#"{"eventName":[{"anything-but":{"equals-ignore-case":["insert","modify"]}}]}"#, false),
        ("anything-but ignore case, miss", "remove", r#"{"eventName":[{"anything-but":{"equals-ignore-case":"insert"}}]}"#, true),
        ("anything-but, array has other", "insert", r#"{"dynamodb":{"NewImage":{"tags":{"SS":[{"anything-but":"red"}]}}}}"#, true),
        ("anything-but, array all listed", "insert", r#"{"dynamodb":{"NewImage":{"tags":{"SS":[{"anything-but":["red","blue"]}]}}}}"#, false),
        // numeric, on DynamoDB's number strings and on JSON numbers.
        ("numeric >", "insert", r#"{"dynamodb":{"NewImage":{"age":{"N":[{"numeric":[">",40]}]}}}}"#, true),
        ("numeric > edge", "insert", r#"{"dynamodb":{"NewImage":{"age":{"N":[{"numeric":[">",42]}]}}}}"#, false),
        ("numeric >=", "insert", r#"{"dynamodb":{"NewImage":{"age":{"N":[{"numeric":[">=",42]}]}}}}"#, true),
        ("numeric =", "insert", r#"{"dynamodb":{"NewImage":{"age":{"N":[{"numeric":["=",42]}]}}}}"#, true),
        ("numeric = float form", "insert", r#"{"dynamodb":{"NewImage":{"age":{"N":[{"numeric":["=",4.2e1]}]}}}}"#, true),
        ("numeric <", "insert", r#"{"dynamodb":{"NewImage":{"age":{"N":[{"numeric":["<",42]}]}}}}"#, false),
        ("numeric <=", "insert", r#"{"dynamodb":{"NewImage":{"age":{"N":[{"numeric":["<=",42]}]}}}}"#, true),
        ("numeric range in", "insert", r#"{"dynamodb":{"NewImage":{"age":{"N":[{"numeric":[">",0,"<=",42]}]}}}}"#, true),
        ("numeric range out", "insert", r#"{"dynamodb":{"NewImage":{"age":{"N":[{"numeric":[">",0,"<",42]}]}}}}"#, false),
        ("numeric range >= <", "insert", r#"{"dynamodb":{"NewImage":{"age":{"N":[{"numeric":[">=",42,"<",43]}]}}}}"#, true),
        ("numeric negative decimal", "insert", r#"{"dynamodb":{"NewImage":{"score":{"N":[{"numeric":["<",-3]}]}}}}"#, true),
        ("numeric negative =", "insert", r#"{"dynamodb":{"NewImage":{"score":{"N":[{"numeric":["=",-3.5]}]}}}}"#, true),
        ("numeric big", "insert", r#"{"dynamodb":{"NewImage":{"big":{"N":[{"numeric":[">",1e19]}]}}}}"#, true),
        ("numeric NS element", "insert", r#"{"dynamodb":{"NewImage":{"nums":{"NS":[{"numeric":[">",10]}]}}}}"#, true),
        ("numeric NS none", "insert", r#"{"dynamodb":{"NewImage":{"nums":{"NS":[{"numeric":[">",20]}]}}}}"#, false),
        ("numeric on text", "insert", r#"{"dynamodb":{"NewImage":{"name":{"S":[{"numeric":[">",0]}]}}}}"#, false),
        ("numeric on bool", "json", r#"{"flag":[{"numeric":[">=",0]}]}"#, false),
        ("numeric JSON number", "insert", r#"{"dynamodb":{"SizeBytes":[{"numeric":[">=",100,"<",200]}]}}"#, true),
        ("numeric time", "insert", r#"{"dynamodb":{"ApproximateCreationDateTime":[{"numeric":[">",1600000000]}]}}"#, true),
        ("numeric absent", "json", r#"{"missing":[{"numeric":[">",0]}]}"#, false),
        ("threshold crossed", "modify", r#"{"dynamodb":{"NewImage":{"age":{"N":[{"numeric":[">",42]}]}},"OldImage":{"age":{"N":[{"numeric":["<=",42]}]}}}}"#, true),
        ("threshold not crossed", "insert", r#"{"dynamodb":{"NewImage":{"age":{"N":[{"numeric":[">",42]}]}},"OldImage":{"age":{"N":[{"numeric":["<=",42]}]}}}}"#, false),
        // exists.
        ("exists, present", "insert", r#"{"dynamodb":{"NewImage":{"name":{"S":[{"exists":true}]}}}}"#, true),
        ("exists, absent", "remove", r#"{"dynamodb":{"NewImage":{"name":{"S":[{"exists":true}]}}}}"#, false),
        ("not exists, present", "insert", r#"{"dynamodb":{"NewImage":{"name":{"S":[{"exists":false}]}}}}"#, false),
        ("not exists, absent", "remove", r#"{"dynamodb":{"NewImage":{"name":{"S":[{"exists":false}]}}}}"#, true),
        ("exists on a map is false", "insert", r#"{"dynamodb":{"NewImage":{"name":[{"exists":true}]}}}"#, false),
        ("not exists on a map is true", "insert", r#"{"dynamodb":{"NewImage":[{"exists":false}]}}"#, true),
        ("exists, userIdentity", "remove", r#"{"userIdentity":{"type":[{"exists":true}]}}"#, true),
        ("exists, no userIdentity", "insert", r#"{"userIdentity":{"type":[{"exists":true}]}}"#, false),
        ("exists, null is a value", "json", r#"{"nul":[{"exists":true}]}"#, true),
        ("exists, empty array", "json", r#"{"empty":[{"exists":true}]}"#, false),
        ("not exists, empty array", "json", r#"{"empty":[{"exists":false}]}"#, true),
        ("not exists under absent", "json", r#"{"missing":{"x":[{"exists":false}]}}"#, true),
        ("not exists under empty array", "json", r#"{"empty":{"x":[{"exists":false}]}}"#, true),
        ("not exists under a value", "json", r#"{"num":{"x":[{"exists":false}]}}"#, true),
        ("exists in L (Lambda's example)", "insert", r#"{"dynamodb":{"NewImage":{"items":{"L":{"S":[{"exists":true}]}}}}}"#, true),
        // Arrays in the record.
        ("nested arrays flatten", "json", r#"{"a":[3]}"#, true),
        ("array string element", "json", r#"{"a":["x"]}"#, true),
        ("objects in arrays are not values", "json", r#"{"a":["in-object"]}"#, false),
        ("pattern into array objects", "json", r#"{"a":{"b":["in-object"]}}"#, true),
        ("array objects, one field", "json", r#"{"list":{"k":["v2"]}}"#, true),
        ("array objects, same element", "json", r#"{"list":{"k":["v1"],"n":[1]}}"#, true),
        ("array objects, different elements", "json", r#"{"list":{"k":["v1"],"n":[2]}}"#, false),
        ("L of S", "insert", r#"{"dynamodb":{"NewImage":{"items":{"L":{"S":["a"]}}}}}"#, true),
        ("L of N numeric", "insert", r#"{"dynamodb":{"NewImage":{"items":{"L":{"N":[{"numeric":["=",5]}]}}}}}"#, true),
        // $or.
        ("$or top, second", "insert", r#"{"$or":[{"eventName":["REMOVE"]},{"dynamodb":{"Keys":{"pk":{"S":["user#1"]}}}}]}"#, true),
        ("$or top, first", "remove", r#"{"$or":[{"eventName":["REMOVE"]},{"dynamodb":{"Keys":{"pk":{"S":["user#1"]}}}}]}"#, true),
        ("$or top, neither", "modify", r#"{"$or":[{"eventName":["REMOVE"]},{"dynamodb":{"Keys":{"pk":{"S":["user#1"]}}}}]}"#, false),
        ("$or nested, new", "insert", r#"{"dynamodb":{"$or":[{"NewImage":{"age":{"N":["42"]}}},{"OldImage":{"age":{"N":["42"]}}}]}}"#, true),
        ("$or nested, old", "modify", r#"{"dynamodb":{"$or":[{"NewImage":{"age":{"N":["42"]}}},{"OldImage":{"age":{"N":["42"]}}}]}}"#, true),
        ("$or nested, neither", "remove", r#"{"dynamodb":{"$or":[{"NewImage":{"age":{"N":["42"]}}},{"OldImage":{"age":{"N":["42"]}}}]}}"#, false),
        ("$or and sibling", "modify", r#"{"eventName":["INSERT"],"$or":[{"eventName":["MODIFY"]},{"awsRegion":["eu-west-1"]}]}"#, false),
        ("$or and sibling, both", "insert", r#"{"eventName":["INSERT"],"$or":[{"eventName":["MODIFY"]},{"awsRegion":["eu-west-1"]}]}"#, true),
        ("$or inside $or", "remove", r#"{"$or":[{"eventName":["INSERT"]},{"$or":[{"eventName":["MODIFY"]},{"userIdentity":{"type":["Service"]}}]}]}"#, true),
        ("$or, same array element", "json", r#"{"list":{"$or":[{"k":["v1"],"n":[2]},{"k":["v3"]}]}}"#, false),
        // The three input forms.
        ("Filters form", "modify", r#"{"Filters":[{"Pattern":"{\"eventName\":[\"REMOVE\"]}"},{"Pattern":"{\"eventName\":[\"MODIFY\"]}"}]}"#, true),
        ("Filters form, none", "insert", r#"{"Filters":[{"Pattern":"{\"eventName\":[\"REMOVE\"]}"},{"Pattern":"{\"eventName\":[\"MODIFY\"]}"}]}"#, false),
        ("Filters form, object pattern", "remove", r#"{"Filters":[{"Pattern":{"eventName":["REMOVE"]}}]}"#, true),
        ("array form", "remove", r#"[{"eventName":["REMOVE"]},{"eventName":["MODIFY"]}]"#, true),
        ("array form, none", "insert", r#"[{"eventName":["REMOVE"]},{"eventName":["MODIFY"]}]"#, false),
        ("object form", "insert", r#" { "eventName" : [ "INSERT" ] } "#, true),
        ("duplicate keys: the last wins", "insert", r#"{"eventName":["REMOVE"],"eventName":["INSERT"]}"#, true),
    ];

    #[test]
    fn the_match_table() {
        let mut failures = Vec::new();
        for (what, fixture_name, text, expected) in MATCHES {
            let filter = FilterSet::parse(text)
                .unwrap_or_else(|err| panic!("{what}: {text} does not parse: {err}"));
            let got = filter.matches(&fixture(fixture_name));
            if got != *expected {
                failures.push(format!(
                    "{what}: {text} on {fixture_name}: expected {expected}, got {got}"
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn matches_record_follows_the_match_table() {
        let mut failures = Vec::new();
        for (what, fixture_name, text, expected) in MATCHES {
            let Some(stream_record) = fixture_record(fixture_name) else {
                continue;
            };
            let got = FilterSet::parse(text)
                .unwrap()
                .matches_record(&stream_record);
            if got != *expected {
                failures.push(format!(
                    "{what}: {text} on {fixture_name}: expected {expected}, got {got}"
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn matches_record_agrees_with_matches() {
        let filter = FilterSet::parse(
            r#"{"eventName":["INSERT"],"dynamodb":{"NewImage":{"age":{"N":[{"numeric":[">",40]}]}}}}"#,
        )
        .unwrap();
        let keys = item(&[("pk", s("k"))]);
        let young = record(
            EventName::Insert,
            keys.clone(),
            Some(item(&[("age", n("30"))])),
            None,
        );
        let old = record(
            EventName::Insert,
            keys,
            Some(item(&[("age", n("50"))])),
            None,
        );
        assert!(!filter.matches_record(&young));
        assert!(filter.matches_record(&old));
        assert_eq!(
            filter.matches(&serde_json::to_value(&old).unwrap()),
            filter.matches_record(&old)
        );
    }

    #[test]
    fn projection_holds_only_the_attribute_a_pattern_reads() {
        let filter =
            FilterSet::parse(r#"{"dynamodb":{"NewImage":{"status":{"S":["shipped"]}}}}"#).unwrap();
        let keys = item(&[("pk", s("order#1"))]);
        let mut image = keys.clone();
        image.extend(item(&[
            ("status", s("shipped")),
            ("total", n("12.50")),
            ("note", s("leave at the door")),
        ]));
        let mut shipped = record(EventName::Modify, keys, Some(image.clone()), Some(image));
        shipped.user_identity = Some(UserIdentity {
            kind: "Service".into(),
            principal_id: "dynamodb.amazonaws.com".into(),
        });
        assert_eq!(
            project_record(&shipped, &filter.projection).unwrap(),
            json!({ "dynamodb": { "NewImage": { "status": { "S": "shipped" } } } })
        );
        assert!(filter.matches_record(&shipped));

        shipped.dynamodb.new_image = None;
        assert_eq!(
            project_record(&shipped, &filter.projection).unwrap(),
            json!({ "dynamodb": {} })
        );
        assert!(!filter.matches_record(&shipped));
    }

    #[test]
    fn projection_joins_patterns_and_or_branches() {
        let filter = FilterSet::parse(
            r#"[
                {"eventName":["INSERT"]},
                {"dynamodb":{"$or":[
                    {"NewImage":{"status":{"S":["shipped"]}}},
                    {"NewImage":{"total":{"N":[{"numeric":[">",10]}]}},"Keys":[{"exists":true}]}
                ]}},
                {"dynamodb":{"NewImage":{"status":[{"exists":false}]}}}
            ]"#,
        )
        .unwrap();
        let keys = item(&[("pk", s("order#1"))]);
        let mut image = keys.clone();
        image.extend(item(&[
            ("status", s("shipped")),
            ("total", n("12.50")),
            ("note", s("leave at the door")),
        ]));
        let shipped = record(EventName::Modify, keys, Some(image.clone()), Some(image));
        // `status` is reached by a leaf in the third pattern, so whole.
        assert_eq!(
            project_record(&shipped, &filter.projection).unwrap(),
            json!({
                "eventName": "MODIFY",
                "dynamodb": {
                    "Keys": { "pk": { "S": "order#1" } },
                    "NewImage": { "status": { "S": "shipped" }, "total": { "N": "12.50" } }
                }
            })
        );
    }

    #[test]
    fn counts_patterns() {
        let one = FilterSet::parse(r#"{"eventName":["INSERT"]}"#).unwrap();
        assert_eq!((one.len(), one.is_empty()), (1, false));
        let three = FilterSet::parse(
            r#"{"Filters":[{"Pattern":"{\"a\":[1]}"},{"Pattern":"{\"b\":[1]}"},{"Pattern":"{\"c\":[1]}"}]}"#,
        )
        .unwrap();
        assert_eq!(three.len(), 3);
    }

    #[test]
    fn the_brief_example_error_reads_exactly() {
        let err = FilterSet::parse(
            r#"[{"eventName":["INSERT"]},{"dynamodb":{"NewImage":{"age":{"N":[{"numeric":[">","x"]}]}}}}]"#,
        )
        .unwrap_err();
        assert_eq!(
            err,
            r#"pattern 2, at dynamodb.NewImage.age.N: "numeric" needs pairs of operator and number, got [">", "x"]"#
        );
    }

    /// (filter text, fragment the error must contain).
    #[rustfmt::skip]
    const INVALID: &[(&str, &str)] = &[
        // The text as a whole.
        ("", "not valid JSON"),
        ("{", "not valid JSON"),
        ("eventName=INSERT", "not valid JSON"),
        (r#""INSERT""#, "expected a pattern object, an array of patterns"),
        ("5", "expected a pattern object"),
        ("[]", "no patterns"),
        (r#"{"Filters":[]}"#, "no patterns"),
        (r#"{"Filters":"x"}"#, r#""Filters" must be an array"#),
        (r#"{"Filters":[],"Other":1}"#, r#"unexpected key "Other" beside "Filters""#),
        (r#"{"Filters":[5]}"#, "pattern 1: a filter must be an object"),
        (r#"{"Filters":[{}]}"#, r#"pattern 1: a filter needs a "Pattern""#),
        (r#"{"Filters":[{"Pattern":"{}","Extra":1}]}"#, r#"pattern 1: unexpected key "Extra""#),
        (r#"{"Filters":[{"Pattern":"{\"a\":[1]}"},{"Pattern":"{"}]}"#, r#"pattern 2: "Pattern" is not valid JSON"#),
        (r#"{"Filters":[{"Pattern":5}]}"#, r#"pattern 1: "Pattern" must be a JSON string"#),
        (r#"{"Filters":[{"Pattern":"[]"}]}"#, "pattern 1: a pattern must be a JSON object, got []"),
        // Pattern structure.
        ("{}", "pattern 1: an empty object matches nothing"),
        (r#"[{"a":[1]},5]"#, "pattern 2: a pattern must be a JSON object, got 5"),
        (r#"{"eventName":"INSERT"}"#, r#"pattern 1, at eventName: a field takes an array of values or an object of fields, got "INSERT""#),
        (r#"{"a":{"b":5}}"#, "pattern 1, at a.b: a field takes an array"),
        (r#"{"eventName":[]}"#, "pattern 1, at eventName: an empty array matches nothing"),
        (r#"{"dynamodb":{}}"#, "pattern 1, at dynamodb: an empty object matches nothing"),
        (r#"{"eventName":[["INSERT"]]}"#, r#"at eventName: a value must be a string, number, boolean, null or operator object, got ["INSERT"]"#),
        (r#"{"a.b":{"c":[[]]}}"#, r#"at "a.b".c: a value must be"#),
        // Operators.
        (r#"{"eventName":[{}]}"#, "an operator object holds exactly one operator, got {}"),
        (r#"{"eventName":[{"prefix":"A","suffix":"B"}]}"#, "exactly one operator"),
        (r#"{"eventName":[{"contains":"A"}]}"#, r#"unknown operator "contains""#),
        (r#"{"eventName":[{"wildcard":"A*"}]}"#, r#""wildcard" is not supported"#),
        (r#"{"ip":[{"cidr":"10.0.0.0/8"}]}"#, r#""cidr" is not supported"#),
        (r#"{"eventName":[{"prefix":5}]}"#, r#"at eventName: "prefix" takes a string, got 5"#),
        (r#"{"eventName":[{"suffix":null}]}"#, r#""suffix" takes a string, got null"#),
        (r#"{"eventName":[{"equals-ignore-case":["a"]}]}"#, r#""equals-ignore-case" takes a string, got ["a"]"#),
        (r#"{"a":[{"exists":"yes"}]}"#, r#"at a: "exists" takes true or false, got "yes""#),
        (r#"{"a":[{"exists":1}]}"#, r#""exists" takes true or false"#),
        // numeric.
        (r#"{"a":[{"numeric":[">"]}]}"#, r#"at a: "numeric" needs pairs of operator and number, got [">"]"#),
        (r#"{"a":[{"numeric":[]}]}"#, r#""numeric" needs pairs"#),
        (r#"{"a":[{"numeric":5}]}"#, r#""numeric" needs pairs of operator and number, got 5"#),
        (r#"{"a":[{"numeric":[5,">"]}]}"#, r#""numeric" needs pairs"#),
        (r#"{"a":[{"numeric":[">","5"]}]}"#, r#""numeric" needs pairs"#),
        (r#"{"a":[{"numeric":["!=",5]}]}"#, r#"unknown numeric operator "!=""#),
        (r#"{"a":[{"numeric":[">",1,"<",5,"<"]}]}"#, r#""numeric" needs pairs"#),
        (r#"{"a":[{"numeric":[">",1,"<",5,"<",6]}]}"#, "one comparison or a range of two"),
        (r#"{"a":[{"numeric":["=",1,"<",5]}]}"#, "\"=\" stands alone"),
        (r#"{"a":[{"numeric":[">",1,">",5]}]}"#, "a numeric range is a lower bound"),
        (r#"{"a":[{"numeric":["<",5,">",1]}]}"#, "a numeric range is a lower bound"),
        (r#"{"a":[{"numeric":[">",5,"<",5]}]}"#, "the range is empty: the lower bound 5 is not below the upper bound 5"),
        // anything-but.
        (r#"{"a":[{"anything-but":[]}]}"#, r#""anything-but" takes a string"#),
        (r#"{"a":[{"anything-but":["x",1]}]}"#, r#"got ["x", 1]"#),
        (r#"{"a":[{"anything-but":null}]}"#, r#""anything-but" takes"#),
        (r#"{"a":[{"anything-but":true}]}"#, r#""anything-but" takes"#),
        (r#"{"a":[{"anything-but":[null]}]}"#, r#""anything-but" takes"#),
        (r#"{"a":[{"anything-but":{"prefix":""}}]}"#, "empty \"prefix\" would exclude every string"),
        (r#"{"a":[{"anything-but":{"prefix":1}}]}"#, r#""anything-but" takes"#),
        (r#"{"a":[{"anything-but":{"wildcard":"x*"}}]}"#, r#""anything-but" takes"#),
        (r#"{"a":[{"anything-but":{"prefix":"a","suffix":"b"}}]}"#, r#""anything-but" takes"#),
        (r#"{"a":[{"anything-but":{"equals-ignore-case":[1]}}]}"#, r#""equals-ignore-case" takes a string or a non-empty array"#),
        (r#"{"a":[{"anything-but":{"equals-ignore-case":[]}}]}"#, r#""equals-ignore-case" takes a string or a non-empty array"#),
        // $or.
        (r#"{"$or":{"a":[1]}}"#, r#"pattern 1, at $or: "$or" takes an array of at least two pattern objects"#),
        (r#"{"$or":[{"a":[1]}]}"#, "at least two pattern objects"),
        (r#"{"x":{"$or":[{"a":[1]},5]}}"#, r#"at x.$or[2]: each "$or" alternative must be a pattern object, got 5"#),
        (r#"{"$or":[{},{"a":[1]}]}"#, "at $or[1]: an empty object matches nothing"),
        (r#"{"d":{"$or":[{"a":[1]},{"b":[{"numeric":[">"]}]}]}}"#, r#"at d.$or[2].b: "numeric" needs pairs"#),
    ];

    #[test]
    fn the_invalid_table() {
        let mut failures = Vec::new();
        for (text, fragment) in INVALID {
            match FilterSet::parse(text) {
                Ok(_) => {
                    failures.push(format!("{text}: parsed, expected an error with {fragment}"))
                }
                Err(err) if !err.contains(fragment) => {
                    failures.push(format!("{text}: error {err:?} lacks {fragment:?}"))
                }
                Err(err) if err.contains('\n') => {
                    failures.push(format!("{text}: error {err:?} is not one line"))
                }
                Err(_) => {}
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn errors_stay_on_one_line_and_short() {
        let err = FilterSet::parse("{\"a\\nb\":\"x\"}").unwrap_err();
        assert!(err.starts_with(r#"pattern 1, at "a\nb": "#), "{err}");
        let long = format!(r#"{{"a":[{{"exists":"{}"}}]}}"#, "y".repeat(500));
        let err = FilterSet::parse(&long).unwrap_err();
        assert!(err.len() < 200 && err.ends_with("..."), "{err}");
        let err = FilterSet::parse("{\n\"a\": 1\n}").unwrap_err();
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn pattern_count_is_bounded() {
        let patterns = |count: usize| {
            let list: Vec<Value> = (0..count).map(|i| json!({ "n": [i] })).collect();
            Value::Array(list).to_string()
        };
        assert_eq!(
            FilterSet::parse(&patterns(MAX_PATTERNS)).unwrap().len(),
            MAX_PATTERNS
        );
        let err = FilterSet::parse(&patterns(MAX_PATTERNS + 1)).unwrap_err();
        assert!(err.contains("at most 100"), "{err}");
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            "[a-zA-Z0-9 #.-]{0,8}".prop_map(Value::from),
            any::<String>().prop_map(Value::from),
            "-?[0-9]{1,20}(\\.[0-9]{1,5})?([eE][-+]?[0-9]{1,3})?".prop_map(Value::from),
        ];
        leaf.prop_recursive(5, 64, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map(
                    prop_oneof![
                        Just("a".to_owned()),
                        Just("b".to_owned()),
                        Just("S".to_owned()),
                        Just("N".to_owned()),
                        "[a-z]{1,3}",
                    ],
                    inner,
                    0..6
                )
                .prop_map(|map| Value::Object(map.into_iter().collect())),
            ]
        })
    }

    /// JSON shaped like patterns, to reach deep into the compiler.
    fn pattern_like() -> impl Strategy<Value = Value> {
        let operand = prop_oneof![
            arb_json(),
            proptest::collection::vec(
                prop_oneof![
                    Just(json!(">")),
                    Just(json!("<=")),
                    Just(json!("=")),
                    Just(json!("!")),
                    any::<f64>().prop_map(Value::from),
                    any::<i32>().prop_map(Value::from),
                ],
                0..6
            )
            .prop_map(Value::Array),
        ];
        let operator = prop_oneof![
            Just("prefix"),
            Just("suffix"),
            Just("equals-ignore-case"),
            Just("anything-but"),
            Just("numeric"),
            Just("exists"),
            Just("wildcard"),
            Just("bogus"),
        ];
        let matcher = prop_oneof![
            arb_json(),
            (operator, operand).prop_map(|(op, operand)| json!({ op: operand })),
        ];
        let leaf = proptest::collection::vec(matcher, 0..4).prop_map(Value::Array);
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                proptest::collection::btree_map(
                    prop_oneof![
                        Just("a".to_owned()),
                        Just("b".to_owned()),
                        Just("$or".to_owned())
                    ],
                    inner.clone(),
                    0..4
                )
                .prop_map(|map| Value::Object(map.into_iter().collect())),
                proptest::collection::vec(inner, 0..4).prop_map(Value::Array),
            ]
        })
    }

    /// One pattern per operator, and $or, for the no-panic property.
    fn every_operator() -> Vec<FilterSet> {
        [
            r#"{"a":["x", 1, true, null]}"#,
            r#"{"a":{"b":[{"prefix":"x"}],"S":[{"suffix":"y"}]}}"#,
            r#"{"a":[{"equals-ignore-case":"ΣX"}]}"#,
            r#"{"a":[{"anything-but":["x","y"]}],"b":[{"anything-but":[1,2.5]}]}"#,
            r#"{"a":[{"anything-but":{"prefix":"x"}},{"anything-but":{"suffix":"x"}}]}"#,
            r#"{"a":[{"anything-but":{"equals-ignore-case":["x"]}}]}"#,
            r#"{"N":[{"numeric":[">",0,"<=",5]}],"a":[{"numeric":["=",-1e3]}]}"#,
            r#"{"a":[{"exists":true}],"b":{"c":[{"exists":false}]}}"#,
            r#"{"$or":[{"a":[1]},{"b":{"$or":[{"N":["1"]},{"S":[{"prefix":""}]}]}}]}"#,
        ]
        .iter()
        .map(|text| FilterSet::parse(text).unwrap())
        .collect()
    }

    fn arb_attribute() -> impl Strategy<Value = AttributeValue> {
        prop_oneof![
            any::<String>().prop_map(AttributeValue::S),
            "-?[0-9]{1,38}(\\.[0-9]{1,5})?".prop_map(AttributeValue::N),
            proptest::collection::vec(any::<u8>(), 1..32).prop_map(AttributeValue::B),
        ]
    }

    fn arb_record() -> impl Strategy<Value = StreamRecord> {
        let event_name = prop_oneof![
            Just(EventName::Insert),
            Just(EventName::Modify),
            Just(EventName::Remove),
        ];
        let keys = proptest::collection::btree_map(
            "[A-Za-z_][A-Za-z0-9_.#-]{0,12}",
            arb_attribute(),
            1..3,
        );
        (event_name, keys, any::<bool>()).prop_map(|(event_name, keys, with_image)| {
            let image = with_image.then(|| keys.clone());
            record(event_name, keys, image, None)
        })
    }

    /// The exact-value pattern for a record's own eventName and keys.
    fn own_pattern(record: &StreamRecord, event_name: &str) -> String {
        let keys: Map<String, Value> = serde_json::to_value(&record.dynamodb.keys)
            .unwrap()
            .as_object()
            .unwrap()
            .iter()
            .map(|(name, typed)| {
                let (kind, text) = typed.as_object().unwrap().iter().next().unwrap();
                (name.clone(), json!({ kind: [text] }))
            })
            .collect();
        json!({ "eventName": [event_name], "dynamodb": { "Keys": keys } }).to_string()
    }

    /// Words that records and patterns share: few, so that exact matchers,
    /// prefixes and `anything-but` often hit.
    fn word() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("shipped".to_owned()),
            Just("INSERT".to_owned()),
            Just("Service".to_owned()),
            Just("42".to_owned()),
            "[a-c]",
        ]
    }

    /// Attribute names that records and patterns share.
    fn attribute_name() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("pk".to_owned()),
            Just("status".to_owned()),
            Just("tags".to_owned()),
        ]
    }

    /// Any DynamoDB attribute value, nested maps and lists included.
    fn arb_any_attribute() -> impl Strategy<Value = AttributeValue> {
        let number = prop_oneof![Just("42".to_owned()), "-?[0-9]{1,20}(\\.[0-9]{1,3})?"];
        let leaf = prop_oneof![
            4 => prop_oneof![4 => word(), 1 => any::<String>()].prop_map(AttributeValue::S),
            2 => number.clone().prop_map(AttributeValue::N),
            1 => proptest::collection::vec(any::<u8>(), 0..4).prop_map(AttributeValue::B),
            1 => proptest::collection::vec(word(), 1..3).prop_map(AttributeValue::Ss),
            1 => proptest::collection::vec(number, 1..3).prop_map(AttributeValue::Ns),
            1 => proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..3), 1..3)
                .prop_map(AttributeValue::Bs),
            1 => Just(AttributeValue::Null(true)),
            1 => any::<bool>().prop_map(AttributeValue::Bool),
            // Lists whose later elements a nested pattern must reach too.
            2 => proptest::collection::vec(word().prop_map(AttributeValue::S), 2..4)
                .prop_map(AttributeValue::L),
        ];
        leaf.prop_recursive(2, 12, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(AttributeValue::L),
                proptest::collection::btree_map(attribute_name(), inner, 0..3)
                    .prop_map(AttributeValue::M),
            ]
        })
    }

    /// Records with and without each optional part.
    fn arb_any_record() -> impl Strategy<Value = StreamRecord> {
        let event_name = prop_oneof![
            Just(EventName::Insert),
            Just(EventName::Modify),
            Just(EventName::Remove),
        ];
        let image = || proptest::collection::btree_map(attribute_name(), arb_any_attribute(), 0..4);
        let identity =
            (word(), word()).prop_map(|(kind, principal_id)| UserIdentity { kind, principal_id });
        (
            (event_name, word(), word()),
            proptest::collection::btree_map(attribute_name(), arb_any_attribute(), 1..3),
            proptest::option::of(image()),
            proptest::option::of(image()),
            proptest::option::of(identity),
            proptest::option::of(-50i64..50),
            proptest::option::of(word()),
            (-50i64..50, "[0-9]{1,21}"),
        )
            .prop_map(
                |(
                    (event_name, event_id, region),
                    keys,
                    new_image,
                    old_image,
                    user_identity,
                    time,
                    view,
                    (size, sequence),
                )| {
                    let mut record = record(event_name, keys, new_image, old_image);
                    record.event_id = event_id;
                    record.aws_region = region;
                    record.user_identity = user_identity;
                    record.dynamodb.approximate_creation_date_time = time;
                    record.dynamodb.stream_view_type = view;
                    record.dynamodb.size_bytes = size;
                    record.dynamodb.sequence_number = SequenceNumber(sequence);
                    record
                },
            )
    }

    /// A valid matcher of any kind, mostly ones that often hit (`exists`,
    /// exact words, `anything-but`), so that a wrong projection shows.
    fn arb_matcher() -> impl Strategy<Value = Value> {
        let number = -50i64..50;
        prop_oneof![
            4 => any::<bool>().prop_map(|present| json!({ "exists": present })),
            3 => word().prop_map(Value::from),
            2 => word().prop_map(|w| json!({ "anything-but": w })),
            1 => (word(), word()).prop_map(|(a, b)| json!({ "anything-but": [a, b] })),
            1 => number.clone().prop_map(|n| json!({ "anything-but": n })),
            1 => word().prop_map(|w| json!({ "anything-but": { "prefix": w } })),
            1 => word().prop_map(|w| json!({ "prefix": w })),
            1 => word().prop_map(|w| json!({ "suffix": w })),
            1 => word().prop_map(|w| json!({ "equals-ignore-case": w })),
            1 => (prop_oneof![Just(">"), Just("<="), Just("=")], number.clone())
                .prop_map(|(op, n)| json!({ "numeric": [op, n] })),
            1 => number.prop_map(Value::from),
            1 => any::<bool>().prop_map(Value::from),
            1 => Just(Value::Null),
        ]
    }

    fn arb_leaf() -> BoxedStrategy<Value> {
        proptest::collection::vec(arb_matcher(), 1..3)
            .prop_map(Value::Array)
            .boxed()
    }

    /// A pattern object with `field`'s fields (mostly one, as each more
    /// makes a match rarer), sometimes with a `$or` of two or three more.
    fn arb_object(field: BoxedStrategy<(String, Value)>) -> BoxedStrategy<Value> {
        let object = prop_oneof![
            3 => proptest::collection::vec(field.clone(), 1..2),
            1 => proptest::collection::vec(field, 2..4),
        ]
        .prop_map(|fields| Value::Object(fields.into_iter().collect()));
        let alternatives = proptest::collection::vec(object.clone(), 2..4);
        (object, proptest::option::weighted(0.2, alternatives))
            .prop_map(|(mut object, any_of)| {
                if let (Value::Object(fields), Some(any_of)) = (&mut object, any_of) {
                    fields.insert(OR_KEY.to_owned(), Value::Array(any_of));
                }
                object
            })
            .boxed()
    }

    fn named(
        names: &'static [&'static str],
        value: BoxedStrategy<Value>,
    ) -> BoxedStrategy<(String, Value)> {
        (proptest::sample::select(names), value)
            .prop_map(|(name, value)| (name.to_owned(), value))
            .boxed()
    }

    /// A pattern on one attribute value (`{"S": [...]}`, `{"L": {"S": [...]}}`).
    fn arb_typed_pattern(depth: u32) -> BoxedStrategy<Value> {
        const COMMON: &[&str] = &["S", "N", "SS"];
        const OTHER: &[&str] = &["B", "NS", "BS", "BOOL", "NULL", "M", "L"];
        if depth == 0 {
            return arb_object(
                prop_oneof![3 => named(COMMON, arb_leaf()), 1 => named(OTHER, arb_leaf())].boxed(),
            );
        }
        arb_object(
            prop_oneof![
                3 => named(COMMON, arb_leaf()),
                1 => named(OTHER, arb_leaf()),
                1 => named(&["M"], arb_image_pattern(depth - 1)),
                2 => named(&["L"], arb_typed_pattern(depth - 1)),
            ]
            .boxed(),
        )
    }

    /// A pattern on an item image or key set.
    fn arb_image_pattern(depth: u32) -> BoxedStrategy<Value> {
        let attribute = (
            attribute_name(),
            prop_oneof![3 => arb_typed_pattern(depth), 1 => arb_leaf()],
        )
            .boxed();
        arb_object(attribute)
    }

    /// A pattern on the `dynamodb` part.
    fn arb_change_pattern() -> BoxedStrategy<Value> {
        arb_object(
            prop_oneof![
                4 => named(
                    &["Keys", "NewImage", "OldImage"],
                    prop_oneof![4 => arb_image_pattern(1), 1 => arb_leaf()].boxed(),
                ),
                1 => named(
                    &[
                        "ApproximateCreationDateTime",
                        "SequenceNumber",
                        "SizeBytes",
                        "StreamViewType",
                        "NotAField",
                    ],
                    arb_leaf(),
                ),
            ]
            .boxed(),
        )
    }

    /// A pattern on a whole record, in Lambda's shape.
    fn arb_record_pattern() -> BoxedStrategy<Value> {
        const TOP: &[&str] = &[
            "eventID",
            "eventName",
            "eventVersion",
            "eventSource",
            "awsRegion",
            "eventSourceARN",
            "notAField",
        ];
        let identity = arb_object(named(&["type", "principalId"], arb_leaf()));
        arb_object(
            prop_oneof![
                2 => named(TOP, arb_leaf()),
                1 => named(TOP, arb_object(named(&["x"], arb_leaf()))),
                6 => named(&["dynamodb"], prop_oneof![6 => arb_change_pattern(), 1 => arb_leaf()].boxed()),
                1 => named(&["userIdentity"], prop_oneof![identity, arb_leaf()].boxed()),
            ]
            .boxed(),
        )
    }

    proptest! {
        #[test]
        fn parse_never_panics_on_any_text(text in any::<String>()) {
            let _ = FilterSet::parse(&text);
        }

        #[test]
        fn parse_never_panics_on_pattern_like_json(pattern in pattern_like(), record in arb_json()) {
            for text in [
                pattern.to_string(),
                json!({ "Filters": [{ "Pattern": pattern.to_string() }] }).to_string(),
            ] {
                match FilterSet::parse(&text) {
                    Ok(filter) => {
                        let _ = filter.matches(&record);
                    }
                    Err(err) => prop_assert!(!err.contains('\n'), "{}", err),
                }
            }
        }

        #[test]
        fn matching_never_panics_on_any_json(record in arb_json()) {
            for filter in every_operator() {
                let _ = filter.matches(&record);
            }
        }

        #[test]
        fn exists_true_and_false_are_complements(record in arb_json()) {
            for path in [r#"{"a":[{"exists":%}]}"#, r#"{"a":{"b":[{"exists":%}]}}"#] {
                let present = FilterSet::parse(&path.replace('%', "true")).unwrap();
                let absent = FilterSet::parse(&path.replace('%', "false")).unwrap();
                // Against arrays of objects, a nested pattern is judged per
                // element, so both may hold; at the top level never neither.
                let (p, a) = (present.matches(&record), absent.matches(&record));
                prop_assert!(p || a);
                if !path.contains("\"b\"") && !record.is_array() {
                    prop_assert!(p != a);
                }
            }
        }

        #[test]
        fn a_record_matches_its_own_event_name_and_keys(record in arb_record()) {
            let own = own_pattern(&record, record.event_name.as_str());
            let filter = FilterSet::parse(&own).unwrap();
            prop_assert!(filter.matches_record(&record), "{} on {:?}", own, record);

            for other in [EventName::Insert, EventName::Modify, EventName::Remove] {
                if other != record.event_name {
                    let filter = FilterSet::parse(&own_pattern(&record, other.as_str())).unwrap();
                    prop_assert!(!filter.matches_record(&record));
                }
            }
            let not_own = json!({ "eventName": [{ "anything-but": record.event_name.as_str() }] });
            let filter = FilterSet::parse(&not_own.to_string()).unwrap();
            prop_assert!(!filter.matches_record(&record));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        #[test]
        fn projection_is_the_whole_record_cut_down(
            record in arb_any_record(),
            patterns in proptest::collection::vec(arb_record_pattern(), 1..4),
        ) {
            // Each field built on its own is what the whole serialization
            // holds at that path, and what the record lacks stays absent.
            let filter = FilterSet::parse(&Value::Array(patterns).to_string()).unwrap();
            let whole = serde_json::to_value(&record).unwrap();
            prop_assert_eq!(
                project_record(&record, &filter.projection).unwrap(),
                filter.projection.apply(whole)
            );
        }

        #[test]
        fn matches_record_agrees_with_matches_on_the_whole_record(
            record in arb_any_record(),
            patterns in proptest::collection::vec(arb_record_pattern(), 1..4),
        ) {
            let text = Value::Array(patterns).to_string();
            let filter = FilterSet::parse(&text);
            prop_assert!(filter.is_ok(), "{}: {:?}", text, filter.err());
            let filter = filter.unwrap();
            let whole = serde_json::to_value(&record).unwrap();
            prop_assert_eq!(
                filter.matches_record(&record),
                filter.matches(&whole),
                "{} on {}",
                text,
                whole
            );
        }
    }
}

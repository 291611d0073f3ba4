//! The compiled patterns, and matching them against a record where it lies.
//!
//! Patterns speak of Lambda's JSON shape (`dynamodb.NewImage.age.N`). A
//! [`StreamRecord`] is not JSON, but each of its parts knows what its JSON
//! would hold at a field name: [`At`] is a place in a record (or in plain
//! JSON) that answers "your field `name`", "your elements" and "your leaf
//! value" exactly as `serde_json::to_value(record)` would, without building
//! it. The matching rules below are written once against [`At`].

use std::borrow::Cow;
use std::slice;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::{Number, Value};

use crate::record::{AttributeValue, ChangeData, Item, StreamRecord, UserIdentity};

/// A compiled pattern object: every field must match, and one of `any_of`
/// too when there is a `$or`.
#[derive(Debug, Clone)]
pub(super) struct Node {
    pub(super) fields: Box<[(Box<str>, Rule)]>,
    pub(super) any_of: Box<[Node]>,
}

/// What one field of a pattern object asks of the record's field.
#[derive(Debug, Clone)]
pub(super) enum Rule {
    /// A leaf: any matcher may match.
    Leaf(Box<[Matcher]>),
    /// A nested object pattern.
    Nested(Node),
}

/// One entry of a leaf's array.
#[derive(Debug, Clone)]
pub(super) enum Matcher {
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
pub(super) enum Exclusion {
    Strings(Box<[Box<str>]>),
    Numbers(Box<[f64]>),
    Prefix(Box<str>),
    Suffix(Box<str>),
    /// Lower-cased like [`Matcher::EqualsIgnoreCase`].
    IgnoreCase(Box<[Box<str>]>),
}

/// A numeric interval; each bound is `(value, inclusive)`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Range {
    pub(super) lower: Option<(f64, bool)>,
    pub(super) upper: Option<(f64, bool)>,
}

/// A place in a record, seen as its Lambda-shaped JSON would show it.
///
/// Every variant borrows: walking a pattern over a record copies nothing.
/// The field names and the shapes here are those of the record model's serde
/// attributes (`crate::record`); the `oracle` tests hold the two together.
#[derive(Debug, Clone, Copy)]
pub(super) enum At<'a> {
    /// Plain JSON, for [`super::FilterSet::matches`].
    Json(&'a Value),
    /// A whole record: `eventName`, `dynamodb`, ...
    Record(&'a StreamRecord),
    /// A record's `dynamodb` part: `Keys`, `NewImage`, `SizeBytes`, ...
    Change(&'a ChangeData),
    /// A TTL delete's `userIdentity`: `type`, `principalId`.
    Identity(&'a UserIdentity),
    /// An item image, key set or `M` value: attribute name to typed value.
    Item(&'a Item),
    /// One typed value, an object of one field (`{"S": "x"}`).
    Attribute(&'a AttributeValue),
    /// A string leaf.
    Text(&'a str),
    /// A binary leaf, a base64 string in JSON.
    Bytes(&'a [u8]),
    /// A number leaf (`SizeBytes`, `ApproximateCreationDateTime`).
    Integer(i64),
    /// A boolean leaf (`BOOL`, `NULL`).
    Bool(bool),
    /// An array of strings (`SS`, `NS`).
    Texts(&'a [String]),
    /// An array of binary values (`BS`).
    ByteList(&'a [Vec<u8>]),
    /// An array of typed values (`L`).
    List(&'a [AttributeValue]),
}

impl<'a> At<'a> {
    /// The value of field `name`, when this is an object that has it.
    fn field(self, name: &str) -> Option<At<'a>> {
        match self {
            At::Json(Value::Object(object)) => object.get(name).map(At::Json),
            At::Record(record) => match name {
                "eventID" => Some(At::Text(&record.event_id)),
                "eventName" => Some(At::Text(record.event_name.as_str())),
                "eventVersion" => Some(At::Text(&record.event_version)),
                "eventSource" => Some(At::Text(&record.event_source)),
                "awsRegion" => Some(At::Text(&record.aws_region)),
                "dynamodb" => Some(At::Change(&record.dynamodb)),
                "eventSourceARN" => Some(At::Text(&record.event_source_arn)),
                "userIdentity" => record.user_identity.as_ref().map(At::Identity),
                _ => None,
            },
            At::Change(change) => match name {
                "ApproximateCreationDateTime" => {
                    change.approximate_creation_date_time.map(At::Integer)
                }
                "Keys" => Some(At::Item(&change.keys)),
                "NewImage" => change.new_image.as_ref().map(At::Item),
                "OldImage" => change.old_image.as_ref().map(At::Item),
                "SequenceNumber" => Some(At::Text(change.sequence_number.as_str())),
                "SizeBytes" => Some(At::Integer(change.size_bytes)),
                "StreamViewType" => change.stream_view_type.as_deref().map(At::Text),
                _ => None,
            },
            At::Identity(identity) => match name {
                "type" => Some(At::Text(&identity.kind)),
                "principalId" => Some(At::Text(&identity.principal_id)),
                _ => None,
            },
            At::Item(item) => item.get(name).map(At::Attribute),
            At::Attribute(value) => {
                let (tag, inner) = match value {
                    AttributeValue::S(text) => ("S", At::Text(text)),
                    AttributeValue::N(number) => ("N", At::Text(number)),
                    AttributeValue::B(bytes) => ("B", At::Bytes(bytes)),
                    AttributeValue::Ss(texts) => ("SS", At::Texts(texts)),
                    AttributeValue::Ns(numbers) => ("NS", At::Texts(numbers)),
                    AttributeValue::Bs(list) => ("BS", At::ByteList(list)),
                    AttributeValue::M(item) => ("M", At::Item(item)),
                    AttributeValue::L(values) => ("L", At::List(values)),
                    AttributeValue::Null(null) => ("NULL", At::Bool(*null)),
                    AttributeValue::Bool(value) => ("BOOL", At::Bool(*value)),
                };
                (tag == name).then_some(inner)
            }
            _ => None,
        }
    }

    /// The elements, when this is an array.
    fn items(self) -> Option<Items<'a>> {
        match self {
            At::Json(Value::Array(items)) => Some(Items::Json(items.iter())),
            At::Texts(texts) => Some(Items::Texts(texts.iter())),
            At::ByteList(list) => Some(Items::Bytes(list.iter())),
            At::List(values) => Some(Items::List(values.iter())),
            _ => None,
        }
    }

    /// The leaf value, when this is neither an array nor an object.
    fn leaf(self) -> Option<Leaf<'a>> {
        Some(match self {
            At::Json(Value::String(text)) => Leaf::Str(Cow::Borrowed(text)),
            At::Json(Value::Number(number)) => Leaf::Number(number.clone()),
            At::Json(Value::Bool(value)) => Leaf::Bool(*value),
            At::Json(Value::Null) => Leaf::Null,
            At::Text(text) => Leaf::Str(Cow::Borrowed(text)),
            // Only when a pattern reaches a binary value.
            At::Bytes(bytes) => Leaf::Str(Cow::Owned(STANDARD.encode(bytes))),
            At::Integer(number) => Leaf::Number(number.into()),
            At::Bool(value) => Leaf::Bool(value),
            _ => return None,
        })
    }
}

/// The elements of an array [`At`], borrowed.
enum Items<'a> {
    Json(slice::Iter<'a, Value>),
    Texts(slice::Iter<'a, String>),
    Bytes(slice::Iter<'a, Vec<u8>>),
    List(slice::Iter<'a, AttributeValue>),
}

impl<'a> Iterator for Items<'a> {
    type Item = At<'a>;

    fn next(&mut self) -> Option<At<'a>> {
        match self {
            Items::Json(items) => items.next().map(At::Json),
            Items::Texts(items) => items.next().map(|text| At::Text(text)),
            Items::Bytes(items) => items.next().map(|bytes| At::Bytes(bytes)),
            Items::List(items) => items.next().map(At::Attribute),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match self {
            Items::Json(items) => items.size_hint(),
            Items::Texts(items) => items.size_hint(),
            Items::Bytes(items) => items.size_hint(),
            Items::List(items) => items.size_hint(),
        }
    }
}

impl ExactSizeIterator for Items<'_> {}

/// One leaf value, as JSON would hold it.
#[derive(Debug)]
enum Leaf<'a> {
    Str(Cow<'a, str>),
    Number(Number),
    Bool(bool),
    Null,
}

impl Leaf<'_> {
    fn as_str(&self) -> Option<&str> {
        match self {
            Leaf::Str(text) => Some(text),
            _ => None,
        }
    }
}

impl Node {
    /// Whether `value` (the record's value at this node's path, `None` when
    /// absent) satisfies the node. Against an array, one element must satisfy
    /// the whole node.
    pub(super) fn matches(&self, value: Option<At<'_>>) -> bool {
        if let Some(mut items) = value.and_then(At::items) {
            if items.len() > 0 {
                return items.any(|item| self.matches(Some(item)));
            }
        }
        self.matches_fields(value)
    }

    /// Whether the fields of `object` satisfy the node (a value that is not
    /// an object has no fields).
    fn matches_fields(&self, object: Option<At<'_>>) -> bool {
        let fields = self.fields.iter().all(|(name, rule)| {
            let field = object.and_then(|object| object.field(name));
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
fn leaf_matches(matchers: &[Matcher], value: Option<At<'_>>) -> bool {
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
fn any_leaf(value: At<'_>, accept: &mut impl FnMut(&Leaf<'_>) -> bool) -> bool {
    if let Some(mut items) = value.items() {
        return items.any(|item| any_leaf(item, accept));
    }
    value.leaf().is_some_and(|leaf| accept(&leaf))
}

impl Matcher {
    /// Whether this matcher accepts one leaf value (never an array or object).
    fn accepts(&self, leaf: &Leaf<'_>) -> bool {
        match self {
            Matcher::String(expected) => leaf.as_str() == Some(&**expected),
            Matcher::Number(expected) => matches!(leaf, Leaf::Number(n) if n == expected),
            Matcher::Bool(expected) => matches!(leaf, Leaf::Bool(b) if b == expected),
            Matcher::Null => matches!(leaf, Leaf::Null),
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
    fn excludes(&self, leaf: &Leaf<'_>) -> bool {
        match self {
            Exclusion::Strings(values) => leaf
                .as_str()
                .is_some_and(|s| values.iter().any(|v| **v == *s)),
            Exclusion::Numbers(values) => match leaf {
                Leaf::Number(n) => n.as_f64().is_some_and(|n| values.contains(&n)),
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
fn numeric_value(leaf: &Leaf<'_>) -> Option<f64> {
    match leaf {
        Leaf::Number(n) => n.as_f64(),
        Leaf::Str(s) => {
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
pub(super) fn fold(text: &str) -> Box<str> {
    text.chars()
        .flat_map(char::to_lowercase)
        .collect::<String>()
        .into()
}

/// Whether `text` equals `folded` (already lower-cased) ignoring case.
fn equals_folded(folded: &str, text: &str) -> bool {
    folded.chars().eq(text.chars().flat_map(char::to_lowercase))
}

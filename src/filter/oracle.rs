//! The old way of matching a record, kept as the tests' reference: cut the
//! record's JSON down to what the patterns can reach, then match that JSON.
//!
//! [`super::FilterSet::matches_record`] once did exactly this on every
//! record; it now walks the typed record instead, and the tests hold it to
//! the same answers as this projection and as the whole record's JSON.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Map, Value};

use super::matching::{Node, Rule};
use crate::record::{ChangeData, Item, StreamRecord};

/// The part of a value that patterns can reach.
///
/// Matching reads a field only when a pattern names it, so a record cut down
/// to these fields matches exactly like the whole record; building only them
/// avoids serializing item images of which a filter reads one attribute.
#[derive(Debug, Clone)]
pub(super) enum Projection {
    /// The value as it is: a leaf's matchers read all of it (its elements,
    /// whether it is present, whether it is a leaf at all).
    Whole,
    /// Only these fields, of the value or of each object in it when it is an
    /// array (a nested pattern is matched against each element).
    Fields(BTreeMap<Box<str>, Projection>),
}

impl Projection {
    /// What `patterns` can reach, together: a record passes on any of them.
    pub(super) fn of_patterns(patterns: &[Node]) -> Projection {
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
    pub(super) fn apply(&self, value: Value) -> Value {
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
pub(super) fn project_record(
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

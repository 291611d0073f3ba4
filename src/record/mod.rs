//! The stream record model, in exactly the shape a Lambda handler receives.
//!
//! A team moving a handler from Lambda's event source mapping must not have to
//! touch the code that reads `record['dynamodb']['NewImage']`, so the model's
//! serde shape *is* Lambda's DynamoDB event record: field names, attribute
//! values in DynamoDB JSON, binary as base64, numbers as their original text.
//! Records are converted from the SDK once, in [`crate::streams`], and then
//! shared; JSON is produced only for processors that ask for it, in the
//! [`RecordFormat`] they ask for ([`document`] is the plain-JSON one).

pub mod document;
pub mod write;

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// An item image or key set: attribute name to value. Ordered so that the
/// JSON a processor sees is deterministic from run to run.
pub type Item = BTreeMap<String, AttributeValue>;

/// One DynamoDB attribute value, serialized as DynamoDB JSON (`{"S": "x"}`).
///
/// Numbers stay text so that `12.50` or a 38-digit number reach the handler
/// exactly as written; binary values are raw bytes here and base64 in JSON.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AttributeValue {
    /// A string.
    S(String),
    /// A number, kept as its decimal text.
    N(String),
    /// Binary data (base64 in JSON).
    B(#[serde(with = "base64_bytes")] Vec<u8>),
    /// A string set.
    #[serde(rename = "SS")]
    Ss(Vec<String>),
    /// A number set, each number as its decimal text.
    #[serde(rename = "NS")]
    Ns(Vec<String>),
    /// A binary set (each element base64 in JSON).
    #[serde(rename = "BS")]
    Bs(#[serde(with = "base64_bytes_list")] Vec<Vec<u8>>),
    /// A map of attributes.
    M(Item),
    /// A list of values.
    L(Vec<AttributeValue>),
    /// The null marker; DynamoDB always sends `true`.
    #[serde(rename = "NULL")]
    Null(bool),
    /// A boolean.
    #[serde(rename = "BOOL")]
    Bool(bool),
}

/// What happened to the item: Lambda's `eventName`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum EventName {
    /// A new item was written.
    Insert,
    /// An existing item was changed.
    Modify,
    /// An item was deleted (by a caller or by TTL).
    Remove,
}

impl EventName {
    /// The label used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            EventName::Insert => "INSERT",
            EventName::Modify => "MODIFY",
            EventName::Remove => "REMOVE",
        }
    }
}

/// A DynamoDB Streams sequence number.
///
/// Sequence numbers are decimal strings of varying length that must be compared
/// as numbers (`"9" < "10"`, `"0010"` is `"10"`), so they get their own type
/// rather than `String`. Equality, hashing and order all look at the number,
/// so the three agree; the text is kept as the service wrote it, for records
/// and checkpoints.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SequenceNumber(pub String);

impl SequenceNumber {
    /// The sequence number as the service wrote it.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The digits that carry the value: the text without leading zeros.
    fn significant(&self) -> &str {
        self.0.trim_start_matches('0')
    }
}

impl PartialEq for SequenceNumber {
    fn eq(&self, other: &Self) -> bool {
        self.significant() == other.significant()
    }
}

impl Eq for SequenceNumber {}

impl std::hash::Hash for SequenceNumber {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.significant().hash(state);
    }
}

impl Ord for SequenceNumber {
    fn cmp(&self, other: &Self) -> Ordering {
        let a = self.significant();
        let b = other.significant();
        a.len().cmp(&b.len()).then_with(|| a.cmp(b))
    }
}

impl PartialOrd for SequenceNumber {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for SequenceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for SequenceNumber {
    fn from(value: &str) -> Self {
        SequenceNumber(value.to_owned())
    }
}

/// Who made the change, present only for deletes done by DynamoDB's TTL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserIdentity {
    /// Always `Service` for TTL deletes.
    #[serde(rename = "type")]
    pub kind: String,
    /// Always `dynamodb.amazonaws.com` for TTL deletes.
    #[serde(rename = "principalId")]
    pub principal_id: String,
}

/// The `dynamodb` part of a Lambda record: what changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeData {
    /// When the change was written, in epoch seconds.
    #[serde(
        rename = "ApproximateCreationDateTime",
        skip_serializing_if = "Option::is_none",
        default
    )]
    pub approximate_creation_date_time: Option<i64>,
    /// The item's primary key attributes.
    #[serde(rename = "Keys", default)]
    pub keys: Item,
    /// The item after the change (INSERT, MODIFY) when the stream carries it.
    #[serde(rename = "NewImage", skip_serializing_if = "Option::is_none", default)]
    pub new_image: Option<Item>,
    /// The item before the change (MODIFY, REMOVE) when the stream carries it.
    #[serde(rename = "OldImage", skip_serializing_if = "Option::is_none", default)]
    pub old_image: Option<Item>,
    /// The record's position in its shard.
    #[serde(rename = "SequenceNumber")]
    pub sequence_number: SequenceNumber,
    /// The record's size as DynamoDB Streams counts it.
    #[serde(rename = "SizeBytes", default)]
    pub size_bytes: i64,
    /// `KEYS_ONLY`, `NEW_IMAGE`, `OLD_IMAGE` or `NEW_AND_OLD_IMAGES`.
    #[serde(
        rename = "StreamViewType",
        skip_serializing_if = "Option::is_none",
        default
    )]
    pub stream_view_type: Option<String>,
}

/// One stream record, field for field the record a Lambda handler receives in
/// `event['Records']`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamRecord {
    /// Unique id of the change.
    #[serde(rename = "eventID")]
    pub event_id: String,
    /// INSERT, MODIFY or REMOVE.
    #[serde(rename = "eventName")]
    pub event_name: EventName,
    /// The record format version (`1.1`).
    #[serde(rename = "eventVersion")]
    pub event_version: String,
    /// Always `aws:dynamodb`.
    #[serde(rename = "eventSource")]
    pub event_source: String,
    /// The table's region.
    #[serde(rename = "awsRegion")]
    pub aws_region: String,
    /// What changed.
    pub dynamodb: ChangeData,
    /// The ARN of the stream the record came from (Lambda adds it; GetRecords
    /// does not return it).
    #[serde(rename = "eventSourceARN")]
    pub event_source_arn: Arc<str>,
    /// Present for TTL deletes.
    #[serde(
        rename = "userIdentity",
        skip_serializing_if = "Option::is_none",
        default
    )]
    pub user_identity: Option<UserIdentity>,
}

/// The `principalId` of a snapshot record's `userIdentity`, marked the way
/// Lambda marks deletes made by DynamoDB's TTL, so that a handler can tell
/// an item that already existed from a new one.
pub const SNAPSHOT_PRINCIPAL: &str = "dynastream.snapshot";

impl StreamRecord {
    /// Whether a table's snapshot delivered this record (it is an existing
    /// item, not a change).
    pub fn is_snapshot(&self) -> bool {
        self.user_identity
            .as_ref()
            .is_some_and(|identity| identity.principal_id == SNAPSHOT_PRINCIPAL)
    }

    /// About how many bytes the record takes as JSON, so that its buffer is
    /// allocated once rather than grown: typed JSON is around one and a half
    /// times the record's size as DynamoDB Streams counts it, plus the
    /// envelope.
    pub fn estimated_json_len(&self) -> usize {
        let stream_bytes = usize::try_from(self.dynamodb.size_bytes).unwrap_or(0);
        stream_bytes + stream_bytes / 2 + 256
    }

    /// The record's sequence number, the unit of checkpointing.
    pub fn sequence_number(&self) -> &SequenceNumber {
        &self.dynamodb.sequence_number
    }
}

/// The table a stream ARN belongs to
/// (`arn:aws:dynamodb:<region>:<account>:table/<table>/stream/<label>`), or
/// the whole text when it is not shaped like one.
pub fn table_name(stream_arn: &str) -> &str {
    stream_arn
        .split(":table/")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or(stream_arn)
}

/// How a record is written as a message body (`DYNASTREAM_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum RecordFormat {
    /// Lambda's record, typed attribute values and all: what a handler reads.
    #[default]
    #[value(name = "lambda")]
    Lambda,
    /// One plain JSON object per record ([`document::Document`]).
    #[value(name = "document")]
    Document,
}

impl RecordFormat {
    /// Appends `record` in this format to `out`, as one line of JSON without
    /// its newline.
    pub fn write(self, record: &StreamRecord, out: &mut Vec<u8>) {
        match self {
            RecordFormat::Lambda => write::lambda(record, out),
            RecordFormat::Document => write::document(record, out),
        }
    }

    /// `record` in this format, as one line of JSON.
    pub fn to_vec(self, record: &StreamRecord) -> Vec<u8> {
        let mut out = Vec::with_capacity(record.estimated_json_len());
        self.write(record, &mut out);
        out
    }
}

/// The payload Lambda passes to a handler: `{"Records": [...]}`.
#[derive(Debug, Serialize)]
pub struct LambdaEvent<'a> {
    /// The batch's records, in shard order.
    #[serde(rename = "Records")]
    pub records: &'a [Arc<StreamRecord>],
}

mod base64_bytes {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        STANDARD
            .decode(text.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}

mod base64_bytes_list {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    use serde::ser::SerializeSeq;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(list: &[Vec<u8>], serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(list.len()))?;
        for bytes in list {
            seq.serialize_element(&STANDARD.encode(bytes))?;
        }
        seq.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<Vec<u8>>, D::Error> {
        let texts = Vec::<String>::deserialize(deserializer)?;
        texts
            .iter()
            .map(|text| STANDARD.decode(text.as_bytes()))
            .collect::<Result<_, _>>()
            .map_err(serde::de::Error::custom)
    }
}

/// Records and attribute values for the tests of the record formats.
#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;
    use proptest::prelude::*;

    pub fn sample() -> StreamRecord {
        let mut keys = Item::new();
        keys.insert("pk".into(), AttributeValue::S("user#1".into()));
        let mut image = keys.clone();
        image.insert("n".into(), AttributeValue::N("12.50".into()));
        image.insert("b".into(), AttributeValue::B(vec![0, 1, 2, 255]));
        image.insert(
            "ss".into(),
            AttributeValue::Ss(vec!["a".into(), "b".into()]),
        );
        image.insert(
            "ns".into(),
            AttributeValue::Ns(vec!["1".into(), "2".into()]),
        );
        image.insert("bs".into(), AttributeValue::Bs(vec![vec![1], vec![2]]));
        image.insert("nul".into(), AttributeValue::Null(true));
        image.insert("ok".into(), AttributeValue::Bool(false));
        image.insert(
            "l".into(),
            AttributeValue::L(vec![AttributeValue::S("x".into())]),
        );
        image.insert("m".into(), AttributeValue::M(keys.clone()));
        StreamRecord {
            event_id: "e1".into(),
            event_name: EventName::Insert,
            event_version: "1.1".into(),
            event_source: "aws:dynamodb".into(),
            aws_region: "us-east-1".into(),
            dynamodb: ChangeData {
                approximate_creation_date_time: Some(1_700_000_000),
                keys,
                new_image: Some(image),
                old_image: None,
                sequence_number: SequenceNumber("000100".into()),
                size_bytes: 42,
                stream_view_type: Some("NEW_AND_OLD_IMAGES".into()),
            },
            event_source_arn: Arc::from("arn:aws:dynamodb:us-east-1:1:table/t/stream/x"),
            user_identity: None,
        }
    }

    pub fn attribute_value() -> impl Strategy<Value = AttributeValue> {
        // DynamoDB's canonical number text: no leading zeros, no trailing
        // zeros after the point.
        let number = "-?(0|[1-9][0-9]{0,37})(\\.[0-9]{0,4}[1-9])?";
        let leaf = prop_oneof![
            any::<String>().prop_map(AttributeValue::S),
            number.prop_map(AttributeValue::N),
            proptest::collection::vec(any::<u8>(), 0..64).prop_map(AttributeValue::B),
            proptest::collection::vec(any::<String>(), 1..4).prop_map(AttributeValue::Ss),
            proptest::collection::vec(number, 1..4).prop_map(AttributeValue::Ns),
            proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..8), 1..4)
                .prop_map(AttributeValue::Bs),
            Just(AttributeValue::Null(true)),
            any::<bool>().prop_map(AttributeValue::Bool),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(AttributeValue::L),
                proptest::collection::btree_map(any::<String>(), inner, 0..4)
                    .prop_map(AttributeValue::M),
            ]
        })
    }

    pub fn item() -> impl Strategy<Value = Item> {
        proptest::collection::btree_map(any::<String>(), attribute_value(), 0..4)
    }

    /// Any record the model can hold, Lambda's usual values or not.
    pub fn stream_record() -> impl Strategy<Value = StreamRecord> {
        let identity = prop_oneof![
            Just(None),
            Just(Some(UserIdentity {
                kind: "Service".into(),
                principal_id: SNAPSHOT_PRINCIPAL.into(),
            })),
            (any::<String>(), any::<String>())
                .prop_map(|(kind, principal_id)| Some(UserIdentity { kind, principal_id })),
        ];
        let event_name = prop_oneof![
            Just(EventName::Insert),
            Just(EventName::Modify),
            Just(EventName::Remove)
        ];
        let arn = prop_oneof![
            "arn:aws:dynamodb:[a-z0-9-]{1,12}:[0-9]{12}:table/[A-Za-z0-9_.-]{1,20}/stream/[0-9T:.-]{1,23}",
            any::<String>(),
        ];
        let change = (
            proptest::option::of(any::<i64>()),
            item(),
            proptest::option::of(item()),
            proptest::option::of(item()),
            "[0-9]{1,40}",
            any::<i64>(),
            proptest::option::of(any::<String>()),
        )
            .prop_map(
                |(created, keys, new_image, old_image, sequence, size_bytes, view)| ChangeData {
                    approximate_creation_date_time: created,
                    keys,
                    new_image,
                    old_image,
                    sequence_number: SequenceNumber(sequence),
                    size_bytes,
                    stream_view_type: view,
                },
            );
        (
            any::<String>(),
            event_name,
            any::<String>(),
            any::<String>(),
            any::<String>(),
            change,
            arn,
            identity,
        )
            .prop_map(
                |(
                    event_id,
                    event_name,
                    event_version,
                    event_source,
                    aws_region,
                    dynamodb,
                    arn,
                    user_identity,
                )| {
                    StreamRecord {
                        event_id,
                        event_name,
                        event_version,
                        event_source,
                        aws_region,
                        dynamodb,
                        event_source_arn: Arc::from(arn),
                        user_identity,
                    }
                },
            )
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::{attribute_value, sample};
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn serializes_in_lambda_shape() {
        let value = serde_json::to_value(sample()).unwrap();
        assert_eq!(value["eventID"], "e1");
        assert_eq!(value["eventName"], "INSERT");
        assert_eq!(value["eventSource"], "aws:dynamodb");
        assert_eq!(
            value["eventSourceARN"],
            "arn:aws:dynamodb:us-east-1:1:table/t/stream/x"
        );
        let ddb = &value["dynamodb"];
        assert_eq!(ddb["ApproximateCreationDateTime"], 1_700_000_000);
        assert_eq!(ddb["Keys"], json!({"pk": {"S": "user#1"}}));
        assert_eq!(ddb["SequenceNumber"], "000100");
        assert_eq!(ddb["SizeBytes"], 42);
        assert!(ddb.get("OldImage").is_none());
        let image = &ddb["NewImage"];
        assert_eq!(image["n"], json!({"N": "12.50"}));
        assert_eq!(image["b"], json!({"B": "AAEC/w=="}));
        assert_eq!(image["ss"], json!({"SS": ["a", "b"]}));
        assert_eq!(image["ns"], json!({"NS": ["1", "2"]}));
        assert_eq!(image["bs"], json!({"BS": ["AQ==", "Ag=="]}));
        assert_eq!(image["nul"], json!({"NULL": true}));
        assert_eq!(image["ok"], json!({"BOOL": false}));
        assert_eq!(image["l"], json!({"L": [{"S": "x"}]}));
        assert_eq!(image["m"], json!({"M": {"pk": {"S": "user#1"}}}));
        assert!(value.get("userIdentity").is_none());
    }

    #[test]
    fn sequence_numbers_compare_as_numbers() {
        let small = SequenceNumber("9".into());
        let large = SequenceNumber("10".into());
        assert!(small < large);
        assert_eq!(SequenceNumber("0010".into()).cmp(&large), Ordering::Equal);
        assert_eq!(
            SequenceNumber("0010".into()),
            large,
            "equal as numbers, as ordered"
        );
        assert_eq!(
            SequenceNumber("0010".into()).as_str(),
            "0010",
            "the text is kept"
        );
    }

    proptest! {
        #[test]
        fn every_attribute_value_round_trips_through_json(value in attribute_value()) {
            let text = serde_json::to_string(&value).unwrap();
            let back: AttributeValue = serde_json::from_str(&text).unwrap();
            prop_assert_eq!(back, value);
        }

        #[test]
        fn sequence_equality_hashing_and_order_agree(
            (a, b) in (0u64..1_000).prop_flat_map(|a| (Just(a), prop_oneof![Just(a), 0u64..1_000])),
            pad_a in 0usize..4,
            pad_b in 0usize..4,
        ) {
            use std::hash::{BuildHasher, RandomState};
            let sa = SequenceNumber(format!("{}{a}", "0".repeat(pad_a)));
            let sb = SequenceNumber(format!("{}{b}", "0".repeat(pad_b)));
            prop_assert_eq!(sa == sb, sa.cmp(&sb) == Ordering::Equal);
            prop_assert_eq!(sa == sb, a == b);
            if sa == sb {
                let hasher = RandomState::new();
                prop_assert_eq!(hasher.hash_one(&sa), hasher.hash_one(&sb));
            }
        }

        #[test]
        fn sequence_order_matches_numeric_order(a in 0u128..u128::MAX, b in 0u128..u128::MAX) {
            let sa = SequenceNumber(a.to_string());
            let sb = SequenceNumber(b.to_string());
            prop_assert_eq!(sa.cmp(&sb), a.cmp(&b));
        }
    }

    #[test]
    fn whole_record_round_trips() {
        let record = sample();
        let text = serde_json::to_string(&record).unwrap();
        let back: StreamRecord = serde_json::from_str(&text).unwrap();
        assert_eq!(back, record);
    }
}

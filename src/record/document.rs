//! The `document` body format: a record as most consumers want it, in plain
//! JSON.
//!
//! Lambda's shape keeps DynamoDB's typed attribute values (`{"S": "x"}`),
//! which every consumer of an SQS queue, a Kinesis stream or an S3 archive
//! then unmarshals again. A document does it once, the way the AWS SDKs'
//! `unmarshall` helpers do: S to a string, N to a JSON number with
//! DynamoDB's exact digits (never through a float), BOOL, NULL to `null`, M
//! to an object, L to an array, SS and NS to arrays, B and BS to base64
//! strings. An image the stream does not carry is absent, not `null`.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};

use super::{AttributeValue, Item, SequenceNumber, StreamRecord};

/// One record as a document, borrowing from the record.
#[derive(Debug, Serialize)]
pub struct Document<'a> {
    /// Unique id of the change (Lambda's `eventID`).
    #[serde(rename = "eventID")]
    pub event_id: &'a str,
    /// INSERT, MODIFY or REMOVE; SNAPSHOT for an item a table's snapshot
    /// delivered (an INSERT in Lambda's shape).
    #[serde(rename = "eventName")]
    pub event_name: &'static str,
    /// The table the change was made to.
    pub table: &'a str,
    /// The item's primary key, unmarshalled.
    pub keys: Plain<'a>,
    /// The item after the change, when the stream carries it.
    #[serde(rename = "newImage", skip_serializing_if = "Option::is_none")]
    pub new_image: Option<Plain<'a>>,
    /// The item before the change, when the stream carries it.
    #[serde(rename = "oldImage", skip_serializing_if = "Option::is_none")]
    pub old_image: Option<Plain<'a>>,
    /// The record's position in its shard.
    #[serde(rename = "sequenceNumber")]
    pub sequence_number: &'a SequenceNumber,
    /// When the change was written, in epoch seconds.
    #[serde(
        rename = "approximateCreationDateTime",
        skip_serializing_if = "Option::is_none"
    )]
    pub approximate_creation_date_time: Option<i64>,
    /// The stream the record came from.
    #[serde(rename = "streamArn")]
    pub stream_arn: &'a str,
}

impl<'a> Document<'a> {
    /// The document view of `record`; nothing is copied.
    pub fn of(record: &'a StreamRecord) -> Document<'a> {
        let change = &record.dynamodb;
        Document {
            event_id: &record.event_id,
            event_name: if record.is_snapshot() {
                "SNAPSHOT"
            } else {
                record.event_name.as_str()
            },
            table: super::table_name(&record.event_source_arn),
            keys: Plain(&change.keys),
            new_image: change.new_image.as_ref().map(Plain),
            old_image: change.old_image.as_ref().map(Plain),
            sequence_number: &change.sequence_number,
            approximate_creation_date_time: change.approximate_creation_date_time,
            stream_arn: &record.event_source_arn,
        }
    }
}

/// An item serialized as plain JSON (unmarshalled).
#[derive(Debug, Clone, Copy)]
pub struct Plain<'a>(pub &'a Item);

impl Serialize for Plain<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, value) in self.0 {
            map.serialize_entry(name, &PlainValue(value))?;
        }
        map.end()
    }
}

/// One attribute value serialized as plain JSON.
struct PlainValue<'a>(&'a AttributeValue);

impl Serialize for PlainValue<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            AttributeValue::S(text) => serializer.serialize_str(text),
            AttributeValue::N(number) => serialize_number(number, serializer),
            AttributeValue::B(bytes) => serializer.serialize_str(&STANDARD.encode(bytes)),
            AttributeValue::Ss(texts) => texts.serialize(serializer),
            AttributeValue::Ns(numbers) => {
                let mut seq = serializer.serialize_seq(Some(numbers.len()))?;
                for number in numbers {
                    seq.serialize_element(&Number(number))?;
                }
                seq.end()
            }
            AttributeValue::Bs(list) => {
                let mut seq = serializer.serialize_seq(Some(list.len()))?;
                for bytes in list {
                    seq.serialize_element(&STANDARD.encode(bytes))?;
                }
                seq.end()
            }
            AttributeValue::M(item) => Plain(item).serialize(serializer),
            AttributeValue::L(values) => {
                let mut seq = serializer.serialize_seq(Some(values.len()))?;
                for value in values {
                    seq.serialize_element(&PlainValue(value))?;
                }
                seq.end()
            }
            AttributeValue::Null(_) => serializer.serialize_unit(),
            AttributeValue::Bool(value) => serializer.serialize_bool(*value),
        }
    }
}

struct Number<'a>(&'a str);

impl Serialize for Number<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serialize_number(self.0, serializer)
    }
}

/// Writes DynamoDB's number text as a JSON number, digit for digit.
///
/// DynamoDB numbers have up to 38 significant digits, more than a float
/// holds, so the text goes out as written (through serde_json's raw value),
/// only reshaped where JSON's grammar is stricter than DynamoDB's (`+1`,
/// `.5`, `5.`, `007`). Text that is not a number at all, which DynamoDB never
/// sends, is kept as a string rather than lost.
fn serialize_number<S: Serializer>(text: &str, serializer: S) -> Result<S::Ok, S::Error> {
    match json_number(text) {
        Some(number) => match serde_json::value::RawValue::from_string(number) {
            Ok(raw) => raw.serialize(serializer),
            Err(_) => serializer.serialize_str(text),
        },
        None => serializer.serialize_str(text),
    }
}

/// `text` in JSON's number grammar, or `None` if it is not a decimal number.
pub fn json_number(text: &str) -> Option<String> {
    let text = text.trim();
    let (sign, unsigned) = match text.as_bytes().first()? {
        b'-' => ("-", &text[1..]),
        b'+' => ("", &text[1..]),
        _ => ("", text),
    };
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(at) => (&unsigned[..at], Some(&unsigned[at + 1..])),
        None => (unsigned, None),
    };
    let (whole, fraction) = match mantissa.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (mantissa, None),
    };
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole)
        || !fraction.is_none_or(digits)
        || whole.is_empty() && fraction.is_none_or(str::is_empty)
    {
        return None;
    }
    let mut out = String::with_capacity(text.len() + 1);
    out.push_str(sign);
    let whole = whole.trim_start_matches('0');
    out.push_str(if whole.is_empty() { "0" } else { whole });
    if let Some(fraction) = fraction.filter(|f| !f.is_empty()) {
        out.push('.');
        out.push_str(fraction);
    }
    if let Some(exponent) = exponent {
        let (exp_sign, exp_digits) = match exponent.as_bytes().first()? {
            b'-' => ("-", &exponent[1..]),
            b'+' => ("", &exponent[1..]),
            _ => ("", exponent),
        };
        if exp_digits.is_empty() || !digits(exp_digits) {
            return None;
        }
        out.push('e');
        out.push_str(exp_sign);
        out.push_str(exp_digits);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests_support::{attribute_value, sample};
    use proptest::prelude::*;
    use serde_json::{json, Value};

    #[test]
    fn a_document_is_the_record_unmarshalled() {
        let record = sample();
        let value = serde_json::to_value(Document::of(&record)).unwrap();
        assert_eq!(value["eventID"], "e1");
        assert_eq!(value["eventName"], "INSERT");
        assert_eq!(value["table"], "t");
        assert_eq!(value["keys"], json!({"pk": "user#1"}));
        assert_eq!(value["sequenceNumber"], "000100");
        assert_eq!(value["approximateCreationDateTime"], 1_700_000_000);
        assert_eq!(
            value["streamArn"],
            "arn:aws:dynamodb:us-east-1:1:table/t/stream/x"
        );
        assert!(value.get("oldImage").is_none(), "absent, not null");
        let image = &value["newImage"];
        assert_eq!(image["b"], "AAEC/w==");
        assert_eq!(image["ss"], json!(["a", "b"]));
        assert_eq!(image["ns"], json!([1, 2]));
        assert_eq!(image["bs"], json!(["AQ==", "Ag=="]));
        assert_eq!(image["nul"], Value::Null);
        assert_eq!(image["ok"], false);
        assert_eq!(image["l"], json!(["x"]));
        assert_eq!(image["m"], json!({"pk": "user#1"}));
        let text = serde_json::to_string(&Document::of(&record)).unwrap();
        assert!(text.contains(r#""n":12.50"#), "digits kept: {text}");
    }

    #[test]
    fn numbers_keep_their_digits_and_follow_json_grammar() {
        assert_eq!(
            json_number("12345678901234567890123456789012345678").as_deref(),
            Some("12345678901234567890123456789012345678")
        );
        assert_eq!(json_number("-0.000100").as_deref(), Some("-0.000100"));
        assert_eq!(json_number("+5").as_deref(), Some("5"));
        assert_eq!(json_number(".5").as_deref(), Some("0.5"));
        assert_eq!(json_number("5.").as_deref(), Some("5"));
        assert_eq!(json_number("007").as_deref(), Some("7"));
        assert_eq!(json_number("1E+10").as_deref(), Some("1e10"));
        assert_eq!(json_number("abc"), None);
        assert_eq!(json_number("."), None);
        assert_eq!(json_number("1e"), None);
    }

    /// An independent statement of the SDKs' `unmarshall` conventions, as
    /// JSON text, numbers written as DynamoDB wrote them.
    fn expected(value: &AttributeValue) -> String {
        let string = |s: &str| serde_json::to_string(s).unwrap();
        let base64 = |b: &[u8]| string(&STANDARD.encode(b));
        let list = |items: Vec<String>| format!("[{}]", items.join(","));
        match value {
            AttributeValue::S(s) => string(s),
            AttributeValue::N(n) => n.clone(),
            AttributeValue::B(b) => base64(b),
            AttributeValue::Ss(v) => list(v.iter().map(|s| string(s)).collect()),
            AttributeValue::Ns(v) => list(v.clone()),
            AttributeValue::Bs(v) => list(v.iter().map(|b| base64(b)).collect()),
            AttributeValue::M(m) => format!(
                "{{{}}}",
                m.iter()
                    .map(|(k, v)| format!("{}:{}", string(k), expected(v)))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            AttributeValue::L(v) => list(v.iter().map(expected).collect()),
            AttributeValue::Null(_) => "null".into(),
            AttributeValue::Bool(b) => b.to_string(),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn unmarshalling_follows_the_sdk_conventions(value in attribute_value()) {
            let text = serde_json::to_string(&PlainValue(&value)).unwrap();
            prop_assert_eq!(&text, &expected(&value));
            // And it is JSON of the right kind.
            let parsed: Value = serde_json::from_str(&text).unwrap();
            let kind_ok = match &value {
                AttributeValue::S(_) | AttributeValue::B(_) => parsed.is_string(),
                AttributeValue::N(_) => parsed.is_number(),
                AttributeValue::Ss(_) | AttributeValue::Ns(_) | AttributeValue::Bs(_)
                | AttributeValue::L(_) => parsed.is_array(),
                AttributeValue::M(_) => parsed.is_object(),
                AttributeValue::Null(_) => parsed.is_null(),
                AttributeValue::Bool(_) => parsed.is_boolean(),
            };
            prop_assert!(kind_ok, "{} is not the right JSON kind for {:?}", text, value);
        }
    }
}

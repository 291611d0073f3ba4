//! Records written straight to JSON bytes.
//!
//! Every processor but `count` turns each record into JSON, so this is the
//! per-record cost that decides whether dynastream stays under the raw SDK
//! loop's CPU. serde's derived serializers are correct but general: they go
//! through the `Serializer` state machine field by field, base64-encode
//! binary values into a fresh `String`, and the document format validated
//! each number by parsing it again. These writers append the same bytes to a
//! caller's buffer directly, allocating nothing per record.
//!
//! The output is byte for byte what `serde_json` makes of the model's derived
//! `Serialize` (and of [`super::document::Document`]); the property tests
//! below hold the two together, so the serde shape stays the single
//! statement of the format.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use super::document::json_number;
use super::{AttributeValue, ChangeData, Item, StreamRecord};

/// Appends `record` in Lambda's shape.
pub fn lambda(record: &StreamRecord, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"eventID\":");
    string(&record.event_id, out);
    out.extend_from_slice(b",\"eventName\":\"");
    out.extend_from_slice(record.event_name.as_str().as_bytes());
    out.extend_from_slice(b"\",\"eventVersion\":");
    string(&record.event_version, out);
    out.extend_from_slice(b",\"eventSource\":");
    string(&record.event_source, out);
    out.extend_from_slice(b",\"awsRegion\":");
    string(&record.aws_region, out);
    out.extend_from_slice(b",\"dynamodb\":");
    change(&record.dynamodb, out);
    out.extend_from_slice(b",\"eventSourceARN\":");
    string(&record.event_source_arn, out);
    if let Some(identity) = &record.user_identity {
        out.extend_from_slice(b",\"userIdentity\":{\"type\":");
        string(&identity.kind, out);
        out.extend_from_slice(b",\"principalId\":");
        string(&identity.principal_id, out);
        out.push(b'}');
    }
    out.push(b'}');
}

/// Appends Lambda's event for a batch, `{"Records":[...]}`.
pub fn lambda_event<'a>(
    records: impl IntoIterator<Item = &'a std::sync::Arc<StreamRecord>>,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(b"{\"Records\":[");
    for (index, record) in records.into_iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        lambda(record, out);
    }
    out.extend_from_slice(b"]}");
}

fn change(change: &ChangeData, out: &mut Vec<u8>) {
    out.push(b'{');
    if let Some(seconds) = change.approximate_creation_date_time {
        out.extend_from_slice(b"\"ApproximateCreationDateTime\":");
        integer(seconds, out);
        out.push(b',');
    }
    out.extend_from_slice(b"\"Keys\":");
    typed_item(&change.keys, out);
    if let Some(image) = &change.new_image {
        out.extend_from_slice(b",\"NewImage\":");
        typed_item(image, out);
    }
    if let Some(image) = &change.old_image {
        out.extend_from_slice(b",\"OldImage\":");
        typed_item(image, out);
    }
    out.extend_from_slice(b",\"SequenceNumber\":");
    string(change.sequence_number.as_str(), out);
    out.extend_from_slice(b",\"SizeBytes\":");
    integer(change.size_bytes, out);
    if let Some(view) = &change.stream_view_type {
        out.extend_from_slice(b",\"StreamViewType\":");
        string(view, out);
    }
    out.push(b'}');
}

fn typed_item(item: &Item, out: &mut Vec<u8>) {
    object(item, out, typed_value);
}

/// `item` as a JSON object, each value written by `value`.
fn object(item: &Item, out: &mut Vec<u8>, value: fn(&AttributeValue, &mut Vec<u8>)) {
    out.push(b'{');
    for (index, (name, attribute)) in item.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        string(name, out);
        out.push(b':');
        value(attribute, out);
    }
    out.push(b'}');
}

/// One attribute value in DynamoDB JSON, `{"S":"x"}`.
fn typed_value(value: &AttributeValue, out: &mut Vec<u8>) {
    match value {
        AttributeValue::S(text) => {
            out.extend_from_slice(b"{\"S\":");
            string(text, out);
        }
        AttributeValue::N(number) => {
            out.extend_from_slice(b"{\"N\":");
            string(number, out);
        }
        AttributeValue::B(bytes) => {
            out.extend_from_slice(b"{\"B\":");
            base64(bytes, out);
        }
        AttributeValue::Ss(texts) => {
            out.extend_from_slice(b"{\"SS\":");
            list(texts, out, |text, out| string(text, out));
        }
        AttributeValue::Ns(numbers) => {
            out.extend_from_slice(b"{\"NS\":");
            list(numbers, out, |number, out| string(number, out));
        }
        AttributeValue::Bs(list_of_bytes) => {
            out.extend_from_slice(b"{\"BS\":");
            list(list_of_bytes, out, |bytes, out| base64(bytes, out));
        }
        AttributeValue::M(item) => {
            out.extend_from_slice(b"{\"M\":");
            typed_item(item, out);
        }
        AttributeValue::L(values) => {
            out.extend_from_slice(b"{\"L\":");
            list(values, out, typed_value);
        }
        AttributeValue::Null(flag) => {
            out.extend_from_slice(b"{\"NULL\":");
            boolean(*flag, out);
        }
        AttributeValue::Bool(flag) => {
            out.extend_from_slice(b"{\"BOOL\":");
            boolean(*flag, out);
        }
    }
    out.push(b'}');
}

/// Appends `record` as a [`super::document::Document`].
pub fn document(record: &StreamRecord, out: &mut Vec<u8>) {
    let change = &record.dynamodb;
    out.extend_from_slice(b"{\"eventID\":");
    string(&record.event_id, out);
    out.extend_from_slice(b",\"eventName\":\"");
    out.extend_from_slice(if record.is_snapshot() {
        b"SNAPSHOT".as_slice()
    } else {
        record.event_name.as_str().as_bytes()
    });
    out.extend_from_slice(b"\",\"table\":");
    string(super::table_name(&record.event_source_arn), out);
    out.extend_from_slice(b",\"keys\":");
    plain_item(&change.keys, out);
    if let Some(image) = &change.new_image {
        out.extend_from_slice(b",\"newImage\":");
        plain_item(image, out);
    }
    if let Some(image) = &change.old_image {
        out.extend_from_slice(b",\"oldImage\":");
        plain_item(image, out);
    }
    out.extend_from_slice(b",\"sequenceNumber\":");
    string(change.sequence_number.as_str(), out);
    if let Some(seconds) = change.approximate_creation_date_time {
        out.extend_from_slice(b",\"approximateCreationDateTime\":");
        integer(seconds, out);
    }
    out.extend_from_slice(b",\"streamArn\":");
    string(&record.event_source_arn, out);
    out.push(b'}');
}

fn plain_item(item: &Item, out: &mut Vec<u8>) {
    object(item, out, plain_value);
}

/// One attribute value unmarshalled, as the SDKs' `unmarshall` helpers do.
fn plain_value(value: &AttributeValue, out: &mut Vec<u8>) {
    match value {
        AttributeValue::S(text) => string(text, out),
        AttributeValue::N(number) => plain_number(number, out),
        AttributeValue::B(bytes) => base64(bytes, out),
        AttributeValue::Ss(texts) => list(texts, out, |text, out| string(text, out)),
        AttributeValue::Ns(numbers) => list(numbers, out, |number, out| plain_number(number, out)),
        AttributeValue::Bs(list_of_bytes) => {
            list(list_of_bytes, out, |bytes, out| base64(bytes, out))
        }
        AttributeValue::M(item) => plain_item(item, out),
        AttributeValue::L(values) => list(values, out, plain_value),
        AttributeValue::Null(_) => out.extend_from_slice(b"null"),
        AttributeValue::Bool(flag) => boolean(*flag, out),
    }
}

/// DynamoDB's number text as a JSON number, digit for digit (see
/// [`json_number`]); DynamoDB's own canonical text, the usual case, already
/// is one and goes out without a copy.
fn plain_number(text: &str, out: &mut Vec<u8>) {
    if is_plain_json_number(text) {
        out.extend_from_slice(text.as_bytes());
        return;
    }
    match json_number(text) {
        Some(number) => out.extend_from_slice(number.as_bytes()),
        None => string(text, out),
    }
}

/// Whether `text` is `-?(0|[1-9][0-9]*)(\.[0-9]+)?`: JSON's number grammar
/// without an exponent, which [`json_number`] returns unchanged.
fn is_plain_json_number(text: &str) -> bool {
    let bytes = text.as_bytes();
    let unsigned = bytes.strip_prefix(b"-").unwrap_or(bytes);
    let (whole, fraction) = match unsigned.iter().position(|&b| b == b'.') {
        Some(at) => (&unsigned[..at], Some(&unsigned[at + 1..])),
        None => (unsigned, None),
    };
    let digits = |part: &[u8]| !part.is_empty() && part.iter().all(u8::is_ascii_digit);
    digits(whole) && (whole == b"0" || whole[0] != b'0') && fraction.is_none_or(digits)
}

fn list<T>(items: &[T], out: &mut Vec<u8>, mut element: impl FnMut(&T, &mut Vec<u8>)) {
    out.push(b'[');
    for (index, item) in items.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        element(item, out);
    }
    out.push(b']');
}

fn boolean(flag: bool, out: &mut Vec<u8>) {
    out.extend_from_slice(if flag { b"true" } else { b"false" });
}

fn integer(value: i64, out: &mut Vec<u8>) {
    out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

/// `bytes` as a quoted base64 string, encoded in place.
fn base64(bytes: &[u8], out: &mut Vec<u8>) {
    out.push(b'"');
    let start = out.len();
    out.resize(start + bytes.len().div_ceil(3) * 4, 0);
    let written = STANDARD
        .encode_slice(bytes, &mut out[start..])
        .unwrap_or_default();
    out.truncate(start + written);
    out.push(b'"');
}

/// `text` as a JSON string, escaped exactly as `serde_json` escapes it:
/// quote, backslash and the control characters, nothing else.
pub fn string(text: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    let bytes = text.as_bytes();
    let mut clean_from = 0;
    let mut at = 0;
    while at < bytes.len() {
        // Eight bytes at a time while none of them needs escaping: most
        // text (an item's long strings above all) has nothing to escape.
        if let Some(word) = bytes.get(at..at + 8) {
            let word = u64::from_le_bytes(word.try_into().unwrap_or([0; 8]));
            if !needs_escape(word) {
                at += 8;
                continue;
            }
        }
        let byte = bytes[at];
        at += 1;
        let escape: &[u8] = match byte {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[clean_from..at - 1]);
        if escape.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(byte >> 4)]);
            out.push(HEX[usize::from(byte & 0xf)]);
        } else {
            out.extend_from_slice(escape);
        }
        clean_from = at;
    }
    out.extend_from_slice(&bytes[clean_from..]);
    out.push(b'"');
}

/// Whether any of the eight bytes in `word` is a control character, a quote
/// or a backslash (the classic "has zero byte" bit trick, applied to the
/// word and to the word xor-ed with each character looked for).
fn needs_escape(word: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let has_zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGHS != 0;
    // A byte below 0x20 (bytes of 0x80 and above have their high bit set
    // in `!word`'s complement and are excluded by `& !word`).
    let control = word.wrapping_sub(ONES * 0x20) & !word & HIGHS != 0;
    control
        || has_zero(word ^ (ONES * u64::from(b'"')))
        || has_zero(word ^ (ONES * u64::from(b'\\')))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::record::document::Document;
    use crate::record::tests_support::{attribute_value, sample, stream_record};
    use crate::record::LambdaEvent;
    use proptest::prelude::*;

    #[test]
    fn the_sample_record_matches_serde_in_both_formats() {
        let record = sample();
        let mut out = Vec::new();
        lambda(&record, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            serde_json::to_string(&record).unwrap()
        );
        let mut out = Vec::new();
        document(&record, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            serde_json::to_string(&Document::of(&record)).unwrap()
        );
    }

    proptest! {
        /// The word-at-a-time scan never skips a byte that needs escaping.
        #[test]
        fn any_text_is_escaped_as_serde_json_does(
            text in proptest::collection::vec(
                prop_oneof![Just('"'), Just('\\'), Just('\u{1f}'), Just('\u{7f}'), Just('é'), any::<char>(), Just('a')],
                0..40,
            ).prop_map(|chars| chars.into_iter().collect::<String>()),
        ) {
            let mut out = Vec::new();
            string(&text, &mut out);
            prop_assert_eq!(out, serde_json::to_vec(&text).unwrap());
        }
    }

    #[test]
    fn control_characters_are_escaped_as_serde_json_does() {
        let text: String = (0u8..0x80).map(char::from).chain("é€😀".chars()).collect();
        let mut out = Vec::new();
        string(&text, &mut out);
        assert_eq!(out, serde_json::to_vec(&text).unwrap());
    }

    /// Number texts DynamoDB sends and texts it never sends, so that the
    /// document writer's fast path and its fallback are both exercised.
    fn number_text() -> impl Strategy<Value = String> {
        prop_oneof![
            "-?(0|[1-9][0-9]{0,37})(\\.[0-9]{0,4}[1-9])?",
            "[+-]?[0-9]{0,4}(\\.[0-9]{0,3})?([eE][+-]?[0-9]{0,3})?",
            " ?[0-9a-z.+-]{0,6} ?",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// A batch's Lambda event is byte for byte what the serde
        /// implementation (`Batch::to_lambda_json` before this writer)
        /// produced.
        #[test]
        fn the_lambda_event_is_byte_identical_to_serde(
            records in proptest::collection::vec(stream_record(), 0..4),
        ) {
            let records: Vec<Arc<StreamRecord>> = records.into_iter().map(Arc::new).collect();
            let mut out = Vec::new();
            lambda_event(&records, &mut out);
            let expected = serde_json::to_vec(&LambdaEvent { records: &records }).unwrap();
            prop_assert_eq!(String::from_utf8(out).unwrap(), String::from_utf8(expected).unwrap());
        }

        /// A document is byte for byte what serde makes of [`Document`].
        #[test]
        fn the_document_is_byte_identical_to_serde(record in stream_record()) {
            let mut out = Vec::new();
            document(&record, &mut out);
            let expected = serde_json::to_vec(&Document::of(&record)).unwrap();
            prop_assert_eq!(String::from_utf8(out).unwrap(), String::from_utf8(expected).unwrap());
        }

        #[test]
        fn every_value_is_byte_identical_to_serde(value in attribute_value()) {
            let mut out = Vec::new();
            typed_value(&value, &mut out);
            prop_assert_eq!(out, serde_json::to_vec(&value).unwrap());
        }

        #[test]
        fn any_number_text_is_written_as_the_document_serializer_writes_it(
            text in number_text(),
        ) {
            let mut item = Item::new();
            item.insert("n".into(), AttributeValue::N(text.clone()));
            item.insert("ns".into(), AttributeValue::Ns(vec![text]));
            let mut out = Vec::new();
            plain_item(&item, &mut out);
            let expected = serde_json::to_vec(&crate::record::document::Plain(&item)).unwrap();
            prop_assert_eq!(String::from_utf8(out).unwrap(), String::from_utf8(expected).unwrap());
        }
    }
}

//! The filter's match tables, its error tables and its properties.

use super::oracle::{project_record, Projection};
use super::parse::OR_KEY;
use super::*;
use crate::record::{AttributeValue, ChangeData, EventName, Item, SequenceNumber, UserIdentity};
use proptest::prelude::*;
use serde_json::json;
use serde_json::Map;
use std::sync::Arc;

/// What `filter`'s patterns can reach, as the old matcher projected it.
fn projection(filter: &FilterSet) -> Projection {
    Projection::of_patterns(&filter.patterns)
}

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
        project_record(&shipped, &projection(&filter)).unwrap(),
        json!({ "dynamodb": { "NewImage": { "status": { "S": "shipped" } } } })
    );
    assert!(filter.matches_record(&shipped));

    shipped.dynamodb.new_image = None;
    assert_eq!(
        project_record(&shipped, &projection(&filter)).unwrap(),
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
        project_record(&shipped, &projection(&filter)).unwrap(),
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
            Ok(_) => failures.push(format!("{text}: parsed, expected an error with {fragment}")),
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
    let keys =
        proptest::collection::btree_map("[A-Za-z_][A-Za-z0-9_.#-]{0,12}", arb_attribute(), 1..3);
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
            project_record(&record, &projection(&filter)).unwrap(),
            projection(&filter).apply(whole)
        );
    }

    #[test]
    fn matches_record_agrees_with_the_old_projection(
        record in arb_any_record(),
        patterns in proptest::collection::vec(arb_record_pattern(), 1..4),
    ) {
        // The typed walk answers as the JSON projection it replaced did.
        let filter = FilterSet::parse(&Value::Array(patterns).to_string()).unwrap();
        let projected = project_record(&record, &projection(&filter)).unwrap();
        prop_assert_eq!(
            filter.matches_record(&record),
            filter.matches(&projected),
            "on {}",
            projected
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

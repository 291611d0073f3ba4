//! From FilterCriteria text to the compiled tree, refusing what Lambda
//! refuses with one line naming the pattern and field at fault.

use std::fmt::Write as _;

use serde_json::{Map, Number, Value};

use super::matching::{fold, Exclusion, Matcher, Node, Range, Rule};
use super::MAX_PATTERNS;

/// The keyword for "one of these objects must match".
pub(super) const OR_KEY: &str = "$or";

/// The three forms [`super::FilterSet::parse`] accepts, for its error message.
const ACCEPTED_SHAPES: &str =
    "a pattern object, an array of patterns or {\"Filters\": [{\"Pattern\": \"...\"}]}";

/// Longest rendering of a value quoted in an error message, in characters.
const SHOWN_VALUE_CHARS: usize = 80;

/// Parses FilterCriteria text into its compiled patterns (at least one).
pub(super) fn patterns(text: &str) -> Result<Box<[Node]>, String> {
    let root: Value = serde_json::from_str(text).map_err(|err| format!("not valid JSON: {err}"))?;
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
    patterns
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
        .collect()
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

//! The JSON form of events, shared by the HTTP endpoint and the local MQTT subscription.
//!
//! ```json
//! {"stream": "pump.telemetry",
//!  "fields": {"pressure_kpa": 101.5, "rpm": 1450, "running": true, "mode": "auto"},
//!  "tags": {"site": "north"},
//!  "ops": [{"op": "inc", "key": "pump/starts", "by": 1},
//!          {"op": "rollup", "key": "pump/pressure", "value": 101.5, "bucket_ms": 60000}]}
//! ```
//! A JSON number with a fraction or exponent is a double, one without is a long (it must fit
//! 64 bits); strings and booleans are what they are. `null`, arrays and objects are not field
//! values. Unknown members are refused, so a typo is an error rather than silently ignored
//! data. `schema_version` defaults to 1, `tags` and `ops` to empty.

use std::collections::BTreeMap;

use edgesync_core::Value;
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{IngestEvent, Op};

/// One event as JSON.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonEvent {
    stream: String,
    #[serde(default = "one")]
    schema_version: u32,
    #[serde(default)]
    fields: BTreeMap<String, Box<RawValue>>,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    // Raw: each op is read twice, for its shape ([`JsonOp`]) and for its value's text
    // ([`OpValue`]), since an internally tagged enum cannot hold a raw value.
    #[serde(default)]
    ops: Vec<Box<RawValue>>,
}

fn one() -> u32 {
    1
}

/// One state operation as JSON, tagged by `op`.
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
enum JsonOp {
    /// G-counter increment.
    Inc { key: String, by: u64 },
    /// PN-counter add (may be negative).
    Add { key: String, by: i64 },
    /// Max register.
    Max {
        key: String,
        #[serde(rename = "value")]
        _value: IgnoredAny,
    },
    /// Min register.
    Min {
        key: String,
        #[serde(rename = "value")]
        _value: IgnoredAny,
    },
    /// LWW register, ordered by the event's HLC.
    Lww {
        key: String,
        #[serde(rename = "value")]
        _value: IgnoredAny,
    },
    /// MV register write.
    Mv {
        key: String,
        #[serde(rename = "value")]
        _value: IgnoredAny,
    },
    /// OR-set add.
    SetAdd {
        key: String,
        #[serde(rename = "value")]
        _value: IgnoredAny,
    },
    /// OR-set remove.
    SetRemove {
        key: String,
        #[serde(rename = "value")]
        _value: IgnoredAny,
    },
    /// Rollup sample into the bucket of the event's time.
    Rollup {
        key: String,
        value: f64,
        bucket_ms: u64,
    },
}

/// The `value` of an op, as text (its shape is checked by [`JsonOp`]).
#[derive(Debug, Deserialize)]
struct OpValue {
    value: Option<Box<RawValue>>,
}

/// A JSON scalar as a typed value, judged on its text: an integer literal must fit a long
/// (parsed into a `Value`, serde_json would turn a larger one into a double silently).
fn value(raw: &RawValue) -> Result<Value, String> {
    let text = raw.get();
    let digits = text.strip_prefix('-').unwrap_or(text);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse::<i64>()
            .map(Value::Long)
            .map_err(|_| format!("integer {text} does not fit a 64-bit long"));
    }
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    match v {
        serde_json::Value::Bool(b) => Ok(Value::Bool(b)),
        serde_json::Value::String(s) => Ok(Value::String(s)),
        serde_json::Value::Number(n) => n
            .as_f64()
            .filter(|f| f.is_finite())
            .map(Value::Double)
            .ok_or_else(|| format!("number {n} is not a finite double")),
        serde_json::Value::Null => Err("null is not a value".into()),
        serde_json::Value::Array(_) => Err("an array is not a value".into()),
        serde_json::Value::Object(_) => Err("an object is not a value".into()),
    }
}

/// One op from its JSON text.
fn op(raw: &RawValue) -> Result<Op, String> {
    let o: JsonOp = serde_json::from_str(raw.get()).map_err(|e| e.to_string())?;
    let scalar = || -> Result<Value, String> {
        let v: OpValue = serde_json::from_str(raw.get()).map_err(|e| e.to_string())?;
        value(&v.value.ok_or("missing field `value`")?)
    };
    Ok(match o {
        JsonOp::Inc { key, by } => Op::Inc { key, by },
        JsonOp::Add { key, by } => Op::Add { key, by },
        JsonOp::Max { key, .. } => Op::Max {
            key,
            value: scalar()?,
        },
        JsonOp::Min { key, .. } => Op::Min {
            key,
            value: scalar()?,
        },
        JsonOp::Lww { key, .. } => Op::Lww {
            key,
            value: scalar()?,
        },
        JsonOp::Mv { key, .. } => Op::Mv {
            key,
            value: scalar()?,
        },
        JsonOp::SetAdd { key, .. } => Op::SetAdd {
            key,
            value: scalar()?,
        },
        JsonOp::SetRemove { key, .. } => Op::SetRemove {
            key,
            value: scalar()?,
        },
        JsonOp::Rollup {
            key,
            value,
            bucket_ms,
        } => Op::Rollup {
            key,
            value,
            bucket_ms,
        },
    })
}

fn convert(e: JsonEvent) -> Result<IngestEvent, String> {
    let mut fields = BTreeMap::new();
    for (name, v) in e.fields {
        let v = value(&v).map_err(|why| format!("field {name:?}: {why}"))?;
        fields.insert(name, v);
    }
    let ops = e
        .ops
        .into_iter()
        .enumerate()
        .map(|(i, o)| op(&o).map_err(|why| format!("op {i}: {why}")))
        .collect::<Result<_, _>>()?;
    Ok(IngestEvent {
        stream: e.stream,
        schema_version: e.schema_version,
        fields,
        tags: e.tags,
        ops,
    })
}

/// A JSON parse failure: which event (0-based, in input order) and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("event {index}: {reason}")]
pub struct ParseError {
    /// Which event.
    pub index: usize,
    /// Why.
    pub reason: String,
}

/// Parses one JSON event, or a JSON array of events.
pub fn parse_json(body: &[u8]) -> Result<Vec<IngestEvent>, ParseError> {
    let not_json = |e: serde_json::Error| ParseError {
        index: 0,
        reason: format!("not JSON: {e}"),
    };
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    let items: Vec<Box<RawValue>> = if first == Some(&b'[') {
        serde_json::from_slice(body).map_err(not_json)?
    } else {
        vec![serde_json::from_slice(body).map_err(not_json)?]
    };
    items
        .into_iter()
        .enumerate()
        .map(|(index, item)| {
            serde_json::from_str::<JsonEvent>(item.get())
                .map_err(|e| e.to_string())
                .and_then(convert)
                .map_err(|reason| ParseError { index, reason })
        })
        .collect()
}

/// Parses newline-delimited JSON: one event per non-empty line.
pub fn parse_ndjson(body: &[u8]) -> Result<Vec<IngestEvent>, ParseError> {
    body.split(|&b| b == b'\n')
        .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
        .enumerate()
        .map(|(index, line)| {
            serde_json::from_slice::<JsonEvent>(line)
                .map_err(|e| e.to_string())
                .and_then(convert)
                .map_err(|reason| ParseError { index, reason })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn numbers_are_typed_by_their_form() {
        let e = parse_json(br#"{"stream":"s","fields":{"a":1,"b":1.0,"c":true,"d":"x","e":-3}}"#)
            .unwrap();
        let f = &e[0].fields;
        assert_eq!(f["a"], Value::Long(1));
        assert_eq!(f["b"], Value::Double(1.0));
        assert_eq!(f["c"], Value::Bool(true));
        assert_eq!(f["d"], Value::String("x".into()));
        assert_eq!(f["e"], Value::Long(-3));
        assert_eq!(e[0].schema_version, 1);
    }

    #[test]
    fn an_integer_over_64_bits_is_refused_not_turned_into_a_double() {
        for body in [
            r#"{"stream":"s","fields":{"x":18446744073709551616}}"#,
            r#"{"stream":"s","fields":{"x":-9223372036854775809}}"#,
            r#"{"stream":"s","ops":[{"op":"max","key":"k","value":18446744073709551616}]}"#,
        ] {
            let e = parse_json(body.as_bytes()).unwrap_err();
            assert!(e.reason.contains("does not fit a 64-bit long"), "{e}");
        }
        let e = parse_json(br#"{"stream":"s","fields":{"x":-9223372036854775808,"y":1e3}}"#);
        let f = &e.unwrap()[0].fields;
        assert_eq!(f["x"], Value::Long(i64::MIN));
        assert_eq!(f["y"], Value::Double(1000.0));
    }

    #[test]
    fn unknown_members_and_non_scalars_are_refused_with_the_index() {
        let bad = [
            (r#"{"stream":"s","feilds":{}}"#, "unknown field"),
            (r#"{"stream":"s","fields":{"a":null}}"#, "null"),
            (r#"{"stream":"s","fields":{"a":[1]}}"#, "array"),
            (
                r#"{"stream":"s","fields":{"a":18446744073709551615}}"#,
                "64-bit",
            ),
            (
                r#"{"stream":"s","ops":[{"op":"inc","key":"k","by":-1}]}"#,
                "invalid value",
            ),
            (
                r#"{"stream":"s","ops":[{"op":"frobnicate","key":"k"}]}"#,
                "unknown variant",
            ),
            (
                r#"{"stream":"s","ops":[{"op":"inc","key":"k","by":1,"x":2}]}"#,
                "unknown field",
            ),
            (r#"{"fields":{}}"#, "missing field"),
        ];
        for (input, why) in bad {
            let body = format!(r#"[{{"stream":"ok"}}, {input}]"#);
            let err = parse_json(body.as_bytes()).unwrap_err();
            assert_eq!(err.index, 1, "{input}");
            assert!(err.reason.contains(why), "{input}: {}", err.reason);
        }
        assert!(parse_json(b"{not json")
            .unwrap_err()
            .reason
            .contains("not JSON"));
    }

    #[test]
    fn ndjson_skips_blank_lines_and_numbers_events() {
        let e = parse_ndjson(b"{\"stream\":\"a\"}\n\n{\"stream\":\"b\"}\r\n").unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[1].stream, "b");
        let err = parse_ndjson(b"{\"stream\":\"a\"}\n{\"stream\":1}\n").unwrap_err();
        assert_eq!(err.index, 1);
    }

    #[test]
    fn every_op_parses() {
        let e = parse_json(
            br#"{"stream":"s","ops":[
              {"op":"inc","key":"a","by":2},{"op":"add","key":"b","by":-2},
              {"op":"max","key":"c","value":3},{"op":"min","key":"d","value":"x"},
              {"op":"lww","key":"e","value":true},{"op":"mv","key":"f","value":1.5},
              {"op":"set_add","key":"g","value":"v"},{"op":"set_remove","key":"g","value":"v"},
              {"op":"rollup","key":"h","value":2.5,"bucket_ms":60000}]}"#,
        )
        .unwrap();
        assert_eq!(e[0].ops.len(), 9);
        assert_eq!(
            e[0].ops[8],
            Op::Rollup {
                key: "h".into(),
                value: 2.5,
                bucket_ms: 60000
            }
        );
    }
}

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
use serde::Deserialize;

use super::{IngestEvent, Op};

/// One event as JSON.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonEvent {
    stream: String,
    #[serde(default = "one")]
    schema_version: u32,
    #[serde(default)]
    fields: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    #[serde(default)]
    ops: Vec<JsonOp>,
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
        value: serde_json::Value,
    },
    /// Min register.
    Min {
        key: String,
        value: serde_json::Value,
    },
    /// LWW register, ordered by the event's HLC.
    Lww {
        key: String,
        value: serde_json::Value,
    },
    /// MV register write.
    Mv {
        key: String,
        value: serde_json::Value,
    },
    /// OR-set add.
    SetAdd {
        key: String,
        value: serde_json::Value,
    },
    /// OR-set remove.
    SetRemove {
        key: String,
        value: serde_json::Value,
    },
    /// Rollup sample into the bucket of the event's time.
    Rollup {
        key: String,
        value: f64,
        bucket_ms: u64,
    },
}

/// A JSON scalar as a typed value.
fn value(v: serde_json::Value) -> Result<Value, String> {
    match v {
        serde_json::Value::Bool(b) => Ok(Value::Bool(b)),
        serde_json::Value::String(s) => Ok(Value::String(s)),
        serde_json::Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Ok(Value::Long(i))
            } else if n.is_u64() {
                Err(format!("integer {n} does not fit a 64-bit long"))
            } else {
                n.as_f64()
                    .filter(|f| f.is_finite())
                    .map(Value::Double)
                    .ok_or_else(|| format!("number {n} is not a finite double"))
            }
        }
        serde_json::Value::Null => Err("null is not a value".into()),
        serde_json::Value::Array(_) => Err("an array is not a value".into()),
        serde_json::Value::Object(_) => Err("an object is not a value".into()),
    }
}

impl TryFrom<JsonOp> for Op {
    type Error = String;

    fn try_from(o: JsonOp) -> Result<Self, String> {
        Ok(match o {
            JsonOp::Inc { key, by } => Op::Inc { key, by },
            JsonOp::Add { key, by } => Op::Add { key, by },
            JsonOp::Max { key, value: v } => Op::Max {
                key,
                value: value(v)?,
            },
            JsonOp::Min { key, value: v } => Op::Min {
                key,
                value: value(v)?,
            },
            JsonOp::Lww { key, value: v } => Op::Lww {
                key,
                value: value(v)?,
            },
            JsonOp::Mv { key, value: v } => Op::Mv {
                key,
                value: value(v)?,
            },
            JsonOp::SetAdd { key, value: v } => Op::SetAdd {
                key,
                value: value(v)?,
            },
            JsonOp::SetRemove { key, value: v } => Op::SetRemove {
                key,
                value: value(v)?,
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
}

fn convert(e: JsonEvent) -> Result<IngestEvent, String> {
    let mut fields = BTreeMap::new();
    for (name, v) in e.fields {
        let v = value(v).map_err(|why| format!("field {name:?}: {why}"))?;
        fields.insert(name, v);
    }
    let ops = e
        .ops
        .into_iter()
        .enumerate()
        .map(|(i, o)| Op::try_from(o).map_err(|why| format!("op {i}: {why}")))
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
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| ParseError {
        index: 0,
        reason: format!("not JSON: {e}"),
    })?;
    let items = match v {
        serde_json::Value::Array(items) => items,
        one => vec![one],
    };
    items
        .into_iter()
        .enumerate()
        .map(|(index, item)| {
            serde_json::from_value::<JsonEvent>(item)
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

//! Events: immutable, typed, identified by their dot.

use std::collections::BTreeMap;

use crate::hlc::Hlc;
use crate::id::Dot;
use crate::value::Value;

/// Limits applied to every event, at ingest and again at every decoder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventLimits {
    /// Most fields per event.
    pub max_fields: usize,
    /// Most tags per event.
    pub max_tags: usize,
    /// Longest string field or tag value, in bytes.
    pub max_string_bytes: usize,
}

impl Default for EventLimits {
    fn default() -> Self {
        Self {
            max_fields: 64,
            max_tags: 32,
            max_string_bytes: 4096,
        }
    }
}

/// Longest stream name, in bytes.
pub const STREAM_NAME_MAX_LEN: usize = 128;
/// Longest field or tag name, in bytes.
pub const FIELD_NAME_MAX_LEN: usize = 64;
/// The field that carries when a reading was taken, in ms since the Unix epoch (a Long), where
/// the producer knows it (a Sparkplug B metric timestamp, a buffering sensor's clock). The
/// event's HLC stamp is when the agent stored it; analytics that window by the time of the
/// reading use this field when present and `hlc_wall_ms` otherwise.
pub const EVENT_TIME_FIELD: &str = "event_time_ms";
/// Longest state key, in bytes.
pub const STATE_KEY_MAX_LEN: usize = 256;

/// Why an event (or a name in it) was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// Stream names follow `[a-z0-9][a-z0-9._-]{0,127}`.
    #[error("stream name {name:?} is invalid: expected [a-z0-9][a-z0-9._-]{{0,127}}")]
    BadStreamName {
        /// The rejected name (truncated to 200 chars).
        name: String,
    },
    /// Field and tag names follow `[A-Za-z_][A-Za-z0-9_]{0,63}` (valid Avro names).
    #[error("{what} name {name:?} is invalid: expected [A-Za-z_][A-Za-z0-9_]{{0,63}}")]
    BadName {
        /// "field" or "tag".
        what: &'static str,
        /// The rejected name (truncated to 200 chars).
        name: String,
    },
    /// Too many fields or tags.
    #[error("{count} {what}s, the limit is {limit}")]
    TooMany {
        /// "field" or "tag".
        what: &'static str,
        /// How many there were.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// A string value over the limit.
    #[error("{what} {name:?} is {len} bytes, the limit is {limit}")]
    StringTooLong {
        /// "field" or "tag".
        what: &'static str,
        /// Its name.
        name: String,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// State keys are 1..=256 bytes of UTF-8 without control characters.
    #[error("state key {key:?} is invalid: 1..=256 bytes without control characters")]
    BadStateKey {
        /// The rejected key (truncated to 200 chars).
        key: String,
    },
}

fn clip(s: &str) -> String {
    s.chars().take(200).collect()
}

/// Checks a stream name.
pub fn validate_stream_name(name: &str) -> Result<(), EventError> {
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= STREAM_NAME_MAX_LEN
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|&c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(EventError::BadStreamName { name: clip(name) })
    }
}

/// Checks a field or tag name.
pub fn validate_name(what: &'static str, name: &str) -> Result<(), EventError> {
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= FIELD_NAME_MAX_LEN
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'_');
    if ok {
        Ok(())
    } else {
        Err(EventError::BadName {
            what,
            name: clip(name),
        })
    }
}

/// Checks a state (CRDT) key.
pub fn validate_state_key(key: &str) -> Result<(), EventError> {
    if key.is_empty() || key.len() > STATE_KEY_MAX_LEN || key.chars().any(char::is_control) {
        Err(EventError::BadStateKey { key: clip(key) })
    } else {
        Ok(())
    }
}

/// An event as appended by an agent.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Event {
    /// Identity: replica and seq.
    pub dot: Dot,
    /// HLC stamp at append.
    pub hlc: Hlc,
    /// User stream, e.g. `pump.telemetry`.
    pub stream: String,
    /// Version of the user's schema for this stream.
    pub schema_version: u32,
    /// Typed fields.
    pub fields: BTreeMap<String, Value>,
    /// String tags.
    pub tags: BTreeMap<String, String>,
}

impl Event {
    /// Checks names and sizes against `limits`.
    pub fn validate(&self, limits: &EventLimits) -> Result<(), EventError> {
        validate_stream_name(&self.stream)?;
        if self.fields.len() > limits.max_fields {
            return Err(EventError::TooMany {
                what: "field",
                count: self.fields.len(),
                limit: limits.max_fields,
            });
        }
        if self.tags.len() > limits.max_tags {
            return Err(EventError::TooMany {
                what: "tag",
                count: self.tags.len(),
                limit: limits.max_tags,
            });
        }
        let long = |what, name: &str, len| EventError::StringTooLong {
            what,
            name: clip(name),
            len,
            limit: limits.max_string_bytes,
        };
        for (k, v) in &self.fields {
            validate_name("field", k)?;
            if let Value::String(s) = v {
                if s.len() > limits.max_string_bytes {
                    return Err(long("field", k, s.len()));
                }
            }
        }
        for (k, v) in &self.tags {
            validate_name("tag", k)?;
            if v.len() > limits.max_string_bytes {
                return Err(long("tag", k, v.len()));
            }
        }
        Ok(())
    }

    /// Rough payload size in bytes (names and values), for batch sizing before encoding.
    pub fn approx_size(&self) -> usize {
        let fields: usize = self
            .fields
            .iter()
            .map(|(k, v)| {
                k.len()
                    + match v {
                        Value::String(s) => s.len() + 2,
                        Value::Bool(_) => 2,
                        Value::Double(_) | Value::Long(_) => 9,
                    }
            })
            .sum();
        let tags: usize = self.tags.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
        24 + self.stream.len() + fields + tags
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_their_grammars() {
        assert!(validate_stream_name("pump.telemetry").is_ok());
        assert!(validate_stream_name("Pump").is_err());
        assert!(validate_stream_name("a/b").is_err());
        assert!(validate_name("field", "pressure_kPa").is_ok());
        assert!(validate_name("field", "9lives").is_err());
        assert!(validate_name("field", "a-b").is_err());
        assert!(validate_state_key("pump-1/pressure.max").is_ok());
        assert!(validate_state_key("").is_err());
        assert!(validate_state_key("a\nb").is_err());
    }
}

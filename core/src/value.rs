//! Typed field values.

use std::cmp::Ordering;
use std::fmt;

/// A typed value: an event field, or the content of a register / set element.
///
/// Values are totally ordered (doubles by IEEE-754 `totalOrder`, variants by their declaration
/// order) so that they can be set elements and deterministic tie-breakers.
#[derive(Clone, Debug)]
pub enum Value {
    /// 64-bit float.
    Double(f64),
    /// 64-bit signed integer.
    Long(i64),
    /// UTF-8 string.
    String(String),
    /// Boolean.
    Bool(bool),
}

impl Value {
    fn rank(&self) -> u8 {
        match self {
            Value::Double(_) => 0,
            Value::Long(_) => 1,
            Value::String(_) => 2,
            Value::Bool(_) => 3,
        }
    }

    /// Name of the variant's type, as in the Avro schemas.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Double(_) => "double",
            Value::Long(_) => "long",
            Value::String(_) => "string",
            Value::Bool(_) => "boolean",
        }
    }
}

impl Ord for Value {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (Value::Double(a), Value::Double(b)) => a.total_cmp(b),
            (Value::Long(a), Value::Long(b)) => a.cmp(b),
            (Value::String(a), Value::String(b)) => a.cmp(b),
            (Value::Bool(a), Value::Bool(b)) => a.cmp(b),
            _ => self.rank().cmp(&other.rank()),
        }
    }
}

impl PartialOrd for Value {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Value {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Value {}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Double(v) => write!(f, "{v}"),
            Value::Long(v) => write!(f, "{v}"),
            Value::String(v) => write!(f, "{v:?}"),
            Value::Bool(v) => write!(f, "{v}"),
        }
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Double(v)
    }
}
impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Long(v)
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::String(v.to_owned())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::String(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_are_totally_ordered() {
        let nan = Value::Double(f64::NAN);
        assert_eq!(nan, nan.clone());
        assert!(Value::Double(-0.0) < Value::Double(0.0));
        assert!(
            Value::Double(1e300) < Value::Long(i64::MIN),
            "variant order first"
        );
    }
}

//! Small helpers to build and take apart `apache_avro::types::Value`s by field name.

use std::collections::HashMap;

use apache_avro::types::Value as Avro;
use edgesync_core::id::{DeviceId, Incarnation, ReplicaId};
use edgesync_core::Value;

use crate::error::DecodeError;

pub(crate) fn record(fields: Vec<(&'static str, Avro)>) -> Avro {
    Avro::Record(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

pub(crate) fn long_u64(v: u64) -> Avro {
    Avro::Long(clamp_u64(v))
}

/// A u64 as an Avro long. Only called for values the core keeps within 63 bits (seqs,
/// incarnations, buckets).
pub(crate) fn clamp_u64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Scalar union `["double", "long", "string", "boolean"]`, shifted by `offset` when the
/// union starts with `null`.
pub(crate) fn scalar(v: &Value, offset: u32) -> Avro {
    let (i, inner) = match v {
        Value::Double(x) => (0, Avro::Double(*x)),
        Value::Long(x) => (1, Avro::Long(*x)),
        Value::String(s) => (2, Avro::String(s.clone())),
        Value::Bool(b) => (3, Avro::Boolean(*b)),
    };
    Avro::Union(i + offset, Box::new(inner))
}

pub(crate) fn opt_scalar(v: Option<&Value>) -> Avro {
    match v {
        None => Avro::Union(0, Box::new(Avro::Null)),
        Some(v) => scalar(v, 1),
    }
}

pub(crate) fn scalar_from(field: &'static str, v: Avro) -> Result<Value, DecodeError> {
    let v = match v {
        Avro::Union(_, inner) => *inner,
        other => other,
    };
    Ok(match v {
        Avro::Double(x) => Value::Double(x),
        Avro::Long(x) => Value::Long(x),
        Avro::String(s) => Value::String(s),
        Avro::Boolean(b) => Value::Bool(b),
        _ => {
            return Err(DecodeError::Shape {
                field,
                expected: "double, long, string or boolean",
            })
        }
    })
}

pub(crate) fn opt_scalar_from(field: &'static str, v: Avro) -> Result<Option<Value>, DecodeError> {
    match v {
        Avro::Union(_, inner) if matches!(*inner, Avro::Null) => Ok(None),
        Avro::Null => Ok(None),
        other => scalar_from(field, other).map(Some),
    }
}

/// A long that must be >= 0.
pub(crate) fn unsigned(field: &'static str, v: i64) -> Result<u64, DecodeError> {
    u64::try_from(v).map_err(|_| DecodeError::Negative { field, value: v })
}

/// A long that must fit in a u32.
pub(crate) fn long_u32(field: &'static str, v: i64) -> Result<u32, DecodeError> {
    u32::try_from(v).map_err(|_| DecodeError::OutOfRange { field, value: v })
}

/// A seq: 1..=2^63-1.
pub(crate) fn seq(field: &'static str, v: i64) -> Result<u64, DecodeError> {
    match unsigned(field, v)? {
        0 => Err(DecodeError::OutOfRange { field, value: 0 }),
        s => Ok(s),
    }
}

/// A decoded record whose fields are taken out by name.
pub(crate) struct Rec {
    fields: HashMap<String, Avro>,
}

impl Rec {
    pub(crate) fn new(field: &'static str, v: Avro) -> Result<Self, DecodeError> {
        match v {
            Avro::Record(fields) => Ok(Self {
                fields: fields.into_iter().collect(),
            }),
            _ => Err(DecodeError::Shape {
                field,
                expected: "record",
            }),
        }
    }

    pub(crate) fn take(&mut self, field: &'static str) -> Result<Avro, DecodeError> {
        self.fields.remove(field).ok_or(DecodeError::Shape {
            field,
            expected: "present",
        })
    }

    /// A long, or a long with the `timestamp-millis` logical type (the schemas give it to
    /// wall-clock fields; the encoding is the same).
    pub(crate) fn long(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        match self.take(field)? {
            Avro::Long(v) | Avro::TimestampMillis(v) => Ok(v),
            _ => Err(DecodeError::Shape {
                field,
                expected: "long",
            }),
        }
    }

    /// A long that must be >= 0.
    pub(crate) fn unsigned(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        unsigned(field, self.long(field)?)
    }

    /// A long carrying a full u64 bit pattern (counts).
    pub(crate) fn bits_u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(self.long(field)? as u64)
    }

    /// A long that must fit in a u32.
    pub(crate) fn long_u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        long_u32(field, self.long(field)?)
    }

    pub(crate) fn double(&mut self, field: &'static str) -> Result<f64, DecodeError> {
        match self.take(field)? {
            Avro::Double(v) => Ok(v),
            _ => Err(DecodeError::Shape {
                field,
                expected: "double",
            }),
        }
    }

    pub(crate) fn string(&mut self, field: &'static str) -> Result<String, DecodeError> {
        match self.take(field)? {
            Avro::String(v) => Ok(v),
            _ => Err(DecodeError::Shape {
                field,
                expected: "string",
            }),
        }
    }

    pub(crate) fn bytes(&mut self, field: &'static str) -> Result<Vec<u8>, DecodeError> {
        match self.take(field)? {
            Avro::Bytes(v) => Ok(v),
            _ => Err(DecodeError::Shape {
                field,
                expected: "bytes",
            }),
        }
    }

    pub(crate) fn boolean(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        match self.take(field)? {
            Avro::Boolean(v) => Ok(v),
            _ => Err(DecodeError::Shape {
                field,
                expected: "boolean",
            }),
        }
    }

    /// A `["null", long]` union (the long may carry a logical type).
    pub(crate) fn opt_long(&mut self, field: &'static str) -> Result<Option<i64>, DecodeError> {
        match self.take(field)? {
            Avro::Union(_, inner) => match *inner {
                Avro::Null => Ok(None),
                Avro::Long(v) | Avro::TimestampMillis(v) => Ok(Some(v)),
                _ => Err(DecodeError::Shape {
                    field,
                    expected: "null or long",
                }),
            },
            _ => Err(DecodeError::Shape {
                field,
                expected: "union",
            }),
        }
    }

    /// The symbol of an enum field.
    pub(crate) fn symbol(&mut self, field: &'static str) -> Result<String, DecodeError> {
        match self.take(field)? {
            Avro::Enum(_, sym) => Ok(sym),
            _ => Err(DecodeError::Shape {
                field,
                expected: "enum",
            }),
        }
    }

    pub(crate) fn array(&mut self, field: &'static str) -> Result<Vec<Avro>, DecodeError> {
        match self.take(field)? {
            Avro::Array(v) => Ok(v),
            _ => Err(DecodeError::Shape {
                field,
                expected: "array",
            }),
        }
    }

    pub(crate) fn map(
        &mut self,
        field: &'static str,
    ) -> Result<HashMap<String, Avro>, DecodeError> {
        match self.take(field)? {
            Avro::Map(v) => Ok(v),
            _ => Err(DecodeError::Shape {
                field,
                expected: "map",
            }),
        }
    }

    /// A seq: 1..=2^63-1.
    pub(crate) fn seq(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        seq(field, self.long(field)?)
    }

    pub(crate) fn device(&mut self) -> Result<DeviceId, DecodeError> {
        Ok(DeviceId::new(&self.string("device")?)?)
    }

    pub(crate) fn incarnation(&mut self) -> Result<Incarnation, DecodeError> {
        Ok(Incarnation::new(self.unsigned("incarnation")?)?)
    }

    /// `device` and `incarnation` fields.
    pub(crate) fn replica(&mut self) -> Result<ReplicaId, DecodeError> {
        Ok(ReplicaId::new(self.device()?, self.incarnation()?))
    }
}

/// A record that starts with `device` and `incarnation`, then `rest`.
pub(crate) fn replica_record(
    r: &ReplicaId,
    rest: impl IntoIterator<Item = (&'static str, Avro)>,
) -> Avro {
    let mut f: Vec<(&'static str, Avro)> = replica_fields(r).into();
    f.extend(rest);
    record(f)
}

pub(crate) fn replica_fields(r: &ReplicaId) -> [(&'static str, Avro); 2] {
    [
        ("device", Avro::String(r.device.as_str().to_owned())),
        ("incarnation", long_u64(r.incarnation.get())),
    ]
}

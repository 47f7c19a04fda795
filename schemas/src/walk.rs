//! Checking an Avro binary datum against its writer schema without building values: every
//! length, varint, union branch and enum index is read and bounds-checked, nothing is
//! allocated. The bridge validates batches this way (well-formed and attributed to a device)
//! at a fraction of the cost of decoding them; the reconciler decodes them fully.

use std::collections::HashMap;

use apache_avro::schema::Name;
use apache_avro::Schema;

use crate::error::DecodeError;

/// Named types of a schema, for `Ref`s.
pub(crate) type Names = HashMap<Name, &'static Schema>;

const MAX_DEPTH: usize = 64;

fn malformed(expected: &'static str) -> DecodeError {
    DecodeError::Shape {
        field: "datum",
        expected,
    }
}

/// Reads a zig-zag varint long.
pub(crate) fn long(data: &mut &[u8]) -> Result<i64, DecodeError> {
    let mut v: u64 = 0;
    for i in 0..10 {
        let (&b, rest) = data.split_first().ok_or_else(|| malformed("a varint"))?;
        *data = rest;
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(((v >> 1) as i64) ^ -((v & 1) as i64));
        }
    }
    Err(malformed("a varint of at most 10 bytes"))
}

fn skip_bytes(data: &mut &[u8], n: usize) -> Result<(), DecodeError> {
    if data.len() < n {
        return Err(DecodeError::Truncated {
            len: data.len(),
            needed: n,
        });
    }
    *data = &data[n..];
    Ok(())
}

fn length(data: &mut &[u8]) -> Result<usize, DecodeError> {
    let n = long(data)?;
    usize::try_from(n).map_err(|_| malformed("a non-negative length"))
}

/// A string's bytes (UTF-8 checked).
pub(crate) fn string<'a>(data: &mut &'a [u8]) -> Result<&'a str, DecodeError> {
    let n = length(data)?;
    if data.len() < n {
        return Err(DecodeError::Truncated {
            len: data.len(),
            needed: n,
        });
    }
    let (s, rest) = data.split_at(n);
    *data = rest;
    std::str::from_utf8(s).map_err(|_| malformed("UTF-8"))
}

/// Skips one value of `schema`.
pub(crate) fn skip(
    schema: &Schema,
    names: &Names,
    data: &mut &[u8],
    depth: usize,
) -> Result<(), DecodeError> {
    if depth > MAX_DEPTH {
        return Err(malformed("nesting within the depth limit"));
    }
    match schema {
        Schema::Null => Ok(()),
        Schema::Boolean => match data.split_first() {
            Some((0 | 1, rest)) => {
                *data = rest;
                Ok(())
            }
            _ => Err(malformed("a boolean")),
        },
        Schema::Int
        | Schema::Long
        | Schema::Date
        | Schema::TimeMillis
        | Schema::TimeMicros
        | Schema::TimestampMillis
        | Schema::TimestampMicros
        | Schema::TimestampNanos
        | Schema::LocalTimestampMillis
        | Schema::LocalTimestampMicros
        | Schema::LocalTimestampNanos => long(data).map(drop),
        Schema::Float => skip_bytes(data, 4),
        Schema::Double => skip_bytes(data, 8),
        Schema::Bytes | Schema::BigDecimal | Schema::Decimal(_) | Schema::Uuid(_) => {
            let n = length(data)?;
            skip_bytes(data, n)
        }
        Schema::String => string(data).map(drop),
        Schema::Fixed(f) | Schema::Duration(f) => skip_bytes(data, f.size),
        Schema::Enum(e) => {
            let i = long(data)?;
            if i < 0 || i as usize >= e.symbols.len() {
                return Err(malformed("an enum index within the symbols"));
            }
            Ok(())
        }
        Schema::Union(u) => {
            let i = long(data)?;
            let v = usize::try_from(i)
                .ok()
                .and_then(|i| u.variants().get(i))
                .ok_or_else(|| malformed("a union branch within the variants"))?;
            skip(v, names, data, depth + 1)
        }
        Schema::Record(r) => {
            for f in &r.fields {
                skip(&f.schema, names, data, depth + 1)?;
            }
            Ok(())
        }
        Schema::Array(a) => blocks(data, |d| skip(&a.items, names, d, depth + 1)),
        Schema::Map(m) => blocks(data, |d| {
            string(d)?;
            skip(&m.types, names, d, depth + 1)
        }),
        Schema::Ref { name } => {
            let s = names
                .get(name)
                .ok_or_else(|| malformed("a known named type"))?;
            skip(s, names, data, depth + 1)
        }
    }
}

/// Array and map blocks: a count (negative: followed by a byte size), items, until 0.
fn blocks(
    data: &mut &[u8],
    mut item: impl FnMut(&mut &[u8]) -> Result<(), DecodeError>,
) -> Result<(), DecodeError> {
    loop {
        let n = long(data)?;
        if n == 0 {
            return Ok(());
        }
        let count = if n < 0 {
            length(data)?; // block size in bytes: the items are read anyway
            n.unsigned_abs()
        } else {
            n as u64
        };
        // Every item takes at least one byte in every schema used here, so a count beyond the
        // remaining input is malformed rather than a reason to loop.
        if count > data.len() as u64 {
            return Err(malformed("an item count within the input"));
        }
        for _ in 0..count {
            item(data)?;
        }
    }
}

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
#[inline]
pub(crate) fn long(data: &mut &[u8]) -> Result<i64, DecodeError> {
    // Most lengths, counts and branch indexes fit one byte.
    if let Some((&b, rest)) = data.split_first() {
        if b & 0x80 == 0 {
            *data = rest;
            return Ok(i64::from(b >> 1) ^ -i64::from(b & 1));
        }
    }
    long_slow(data)
}

fn long_slow(data: &mut &[u8]) -> Result<i64, DecodeError> {
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

#[inline]
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

#[inline]
pub(crate) fn length(data: &mut &[u8]) -> Result<usize, DecodeError> {
    let n = long(data)?;
    usize::try_from(n).map_err(|_| malformed("a non-negative length"))
}

/// A length-prefixed run of bytes (strings, bytes).
#[inline]
pub(crate) fn prefixed<'a>(data: &mut &'a [u8]) -> Result<&'a [u8], DecodeError> {
    let n = length(data)?;
    if data.len() < n {
        return Err(DecodeError::Truncated {
            len: data.len(),
            needed: n,
        });
    }
    let (s, rest) = data.split_at(n);
    *data = rest;
    Ok(s)
}

/// A string's bytes (UTF-8 checked).
#[inline]
pub(crate) fn string<'a>(data: &mut &'a [u8]) -> Result<&'a str, DecodeError> {
    std::str::from_utf8(prefixed(data)?).map_err(|_| malformed("UTF-8"))
}

/// A writer schema compiled for skipping: named types resolved to node indexes once, so a
/// walk is a tight loop over small nodes instead of a match over `Schema` with name lookups.
#[derive(Debug)]
pub(crate) struct Plan {
    nodes: Vec<Node>,
}

#[derive(Debug, Clone)]
enum Node {
    Null,
    Boolean,
    Long,
    Fixed(usize),
    Bytes,
    String,
    Enum(u64),
    Union(Box<[u32]>),
    Record(Box<[u32]>),
    Array(u32),
    Map(u32),
}

/// Index of the root node of every plan.
pub(crate) const ROOT: u32 = 0;

impl Plan {
    /// Compiles `schema`; `names` resolves its references.
    pub(crate) fn compile(schema: &Schema, names: &Names) -> Result<Self, DecodeError> {
        let mut plan = Plan { nodes: Vec::new() };
        let mut named = HashMap::new();
        plan.add(schema, names, &mut named, 0)?;
        Ok(plan)
    }

    fn add(
        &mut self,
        schema: &Schema,
        names: &Names,
        named: &mut HashMap<Name, u32>,
        depth: usize,
    ) -> Result<u32, DecodeError> {
        if depth > MAX_DEPTH {
            return Err(malformed("a schema nested within the depth limit"));
        }
        if let Schema::Ref { name } = schema {
            return match named.get(name) {
                Some(&target) => Ok(target),
                None => {
                    let s = names
                        .get(name)
                        .ok_or_else(|| malformed("a known named type"))?;
                    self.add(s, names, named, depth + 1)
                }
            };
        }
        let id = u32::try_from(self.nodes.len()).map_err(|_| malformed("a smaller schema"))?;
        // Placeholder first: a record may refer to itself.
        self.nodes.push(Node::Null);
        let node = match schema {
            Schema::Null | Schema::Ref { .. } => Node::Null,
            Schema::Boolean => Node::Boolean,
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
            | Schema::LocalTimestampNanos => Node::Long,
            Schema::Float => Node::Fixed(4),
            Schema::Double => Node::Fixed(8),
            Schema::Bytes | Schema::BigDecimal | Schema::Decimal(_) | Schema::Uuid(_) => {
                Node::Bytes
            }
            Schema::String => Node::String,
            Schema::Fixed(f) | Schema::Duration(f) => {
                named.insert(f.name.clone(), id);
                Node::Fixed(f.size)
            }
            Schema::Enum(e) => {
                named.insert(e.name.clone(), id);
                Node::Enum(e.symbols.len() as u64)
            }
            Schema::Union(u) => Node::Union(
                u.variants()
                    .iter()
                    .map(|v| self.add(v, names, named, depth + 1))
                    .collect::<Result<_, _>>()?,
            ),
            Schema::Record(r) => {
                named.insert(r.name.clone(), id);
                Node::Record(
                    r.fields
                        .iter()
                        .map(|f| self.add(&f.schema, names, named, depth + 1))
                        .collect::<Result<_, _>>()?,
                )
            }
            Schema::Array(a) => Node::Array(self.add(&a.items, names, named, depth + 1)?),
            Schema::Map(m) => Node::Map(self.add(&m.types, names, named, depth + 1)?),
        };
        self.nodes[id as usize] = node;
        Ok(id)
    }

    /// The field nodes of a record node (empty for anything else).
    pub(crate) fn fields(&self, id: u32) -> &[u32] {
        match self.nodes.get(id as usize) {
            Some(Node::Record(f)) => f,
            _ => &[],
        }
    }

    /// Skips one value of node `id`.
    pub(crate) fn skip(&self, id: u32, data: &mut &[u8], depth: usize) -> Result<(), DecodeError> {
        if depth > MAX_DEPTH {
            return Err(malformed("nesting within the depth limit"));
        }
        match &self.nodes[id as usize] {
            Node::Null => Ok(()),
            Node::Boolean => match data.split_first() {
                Some((0 | 1, rest)) => {
                    *data = rest;
                    Ok(())
                }
                _ => Err(malformed("a boolean")),
            },
            Node::Long => long(data).map(drop),
            Node::Fixed(n) => skip_bytes(data, *n),
            Node::Bytes => prefixed(data).map(drop),
            Node::String => skip_string(data),
            Node::Enum(symbols) => {
                let i = long(data)?;
                if i < 0 || i as u64 >= *symbols {
                    return Err(malformed("an enum index within the symbols"));
                }
                Ok(())
            }
            Node::Union(variants) => {
                let i = long(data)?;
                let v = usize::try_from(i)
                    .ok()
                    .and_then(|i| variants.get(i))
                    .ok_or_else(|| malformed("a union branch within the variants"))?;
                self.skip(*v, data, depth + 1)
            }
            Node::Record(fields) => {
                for f in fields.iter() {
                    self.skip(*f, data, depth + 1)?;
                }
                Ok(())
            }
            Node::Array(items) => blocks(data, |d| self.skip(*items, d, depth + 1)),
            Node::Map(values) => blocks(data, |d| {
                skip_string(d)?;
                self.skip(*values, d, depth + 1)
            }),
        }
    }
}

/// Skips a string, checking that it is UTF-8 (ASCII, the common case, without a call).
#[inline]
fn skip_string(data: &mut &[u8]) -> Result<(), DecodeError> {
    let s = prefixed(data)?;
    if s.is_ascii() || std::str::from_utf8(s).is_ok() {
        Ok(())
    } else {
        Err(malformed("UTF-8"))
    }
}

/// Array and map blocks: a count (negative: followed by a byte size), items, until 0.
pub(crate) fn blocks(
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

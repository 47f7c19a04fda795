//! The reconciler's hot path written by hand: reading this release's `DeltaBatch` datum and
//! writing its `Event` datum without building apache-avro `Value` trees (which cost about 25
//! allocations and a dozen hash lookups per event).
//!
//! Invariants, for the current schemas (`delta_batch.avsc`, `event.avsc`) only:
//! - [`write_event`] gives the bytes [`crate::encode`] gives for the event's value, map
//!   entries in key order included (a `BTreeMap<String, _>` iterates in the byte order the
//!   encoder sorts by);
//! - [`read_batch`] accepts exactly the datums apache-avro's reader accepts and yields the
//!   same parts as [`crate::convert::batch_parts_from_avro`].
//!
//! Debug builds (every test, every fuzz run) compute both paths on every call and panic if
//! they differ. Other writer schemas (versions registered with the codec) take the generic
//! path, which resolves them into the current one.

use std::collections::BTreeMap;

use edgesync_core::{DeviceId, Dot, DroppedRange, Event, Hlc, Incarnation, ReplicaId, Value};

use crate::encode::{bytes as put_bytes, len as put_len, long as put_long};
use crate::error::DecodeError;
use crate::value::{clamp_u64 as clamp, long_u32, seq, unsigned};
use crate::walk::{blocks, long, prefixed, string};

/// A batch as read, before its events get their seqs and its CRDT datums are decoded.
#[derive(Debug)]
pub(crate) struct BatchParts {
    pub(crate) replica: ReplicaId,
    pub(crate) first_seq: u64,
    /// In batch order; their dots' seqs are assigned with the dropped ranges.
    pub(crate) events: Vec<Event>,
    pub(crate) dropped: Vec<DroppedRange>,
    /// State keys and their `CrdtState` datums, in batch order.
    pub(crate) state: Vec<(String, Vec<u8>)>,
}

/// The symbols of `DropReason`, in the order of `delta_batch.avsc`.
pub(crate) const DROP_REASON_SYMBOLS: [&str; 4] = ["QUOTA", "AGE", "CORRUPT", "OTHER"];

fn malformed(expected: &'static str) -> DecodeError {
    DecodeError::Shape {
        field: "datum",
        expected,
    }
}

/// Reads a `DeltaBatch` datum (without framing) written with the current schema.
pub(crate) fn read_batch(mut datum: &[u8]) -> Result<BatchParts, DecodeError> {
    let d = &mut datum;
    let device = DeviceId::new(string(d)?)?;
    let incarnation = Incarnation::new(unsigned("incarnation", long(d)?)?)?;
    let replica = ReplicaId::new(device, incarnation);
    let first_seq = unsigned("first_seq", long(d)?)?;
    let mut events = Vec::new();
    blocks(d, |d| {
        events.push(read_batch_event(d, &replica)?);
        Ok(())
    })?;
    let mut dropped = Vec::new();
    blocks(d, |d| {
        let (first, last) = (seq("first", long(d)?)?, seq("last", long(d)?)?);
        let reason = usize::try_from(long(d)?)
            .ok()
            .and_then(|i| DROP_REASON_SYMBOLS.get(i))
            .ok_or_else(|| malformed("an enum index within the symbols"))?;
        dropped.push(crate::convert::dropped(first, last, reason)?);
        Ok(())
    })?;
    let mut state = Vec::new();
    blocks(d, |d| {
        let key = string(d)?.to_owned();
        state.push((key, prefixed(d)?.to_vec()));
        Ok(())
    })?;
    if !d.is_empty() {
        return Err(DecodeError::TrailingBytes(d.len()));
    }
    Ok(BatchParts {
        replica,
        first_seq,
        events,
        dropped,
        state,
    })
}

/// One `BatchEvent`; its dot's seq is a placeholder (1) until the batch assigns it.
fn read_batch_event(d: &mut &[u8], replica: &ReplicaId) -> Result<Event, DecodeError> {
    let wall_ms = unsigned("hlc_wall_ms", long(d)?)?;
    let logical = long_u32("hlc_logical", long(d)?)?;
    let stream = string(d)?.to_owned();
    let schema_version = long_u32("schema_version", long(d)?)?;
    let mut fields = BTreeMap::new();
    blocks(d, |d| {
        let k = string(d)?.to_owned();
        fields.insert(k, scalar(d)?);
        Ok(())
    })?;
    let mut tags = BTreeMap::new();
    blocks(d, |d| {
        let k = string(d)?.to_owned();
        tags.insert(k, string(d)?.to_owned());
        Ok(())
    })?;
    Ok(Event {
        dot: Dot::new(replica.clone(), 1),
        hlc: Hlc::new(wall_ms, logical),
        stream,
        schema_version,
        fields,
        tags,
    })
}

/// The scalar union `["double", "long", "string", "boolean"]`.
fn scalar(d: &mut &[u8]) -> Result<Value, DecodeError> {
    Ok(match long(d)? {
        0 => {
            let (x, rest) = d.split_first_chunk::<8>().ok_or(DecodeError::Truncated {
                len: d.len(),
                needed: 8,
            })?;
            *d = rest;
            Value::Double(f64::from_le_bytes(*x))
        }
        1 => Value::Long(long(d)?),
        2 => Value::String(string(d)?.to_owned()),
        3 => match d.split_first() {
            Some((&b @ (0 | 1), rest)) => {
                *d = rest;
                Value::Bool(b == 1)
            }
            _ => return Err(malformed("a boolean")),
        },
        _ => return Err(malformed("a union branch within the variants")),
    })
}

/// Appends the `Event` datum of `e` (without framing) to `out`.
pub(crate) fn write_event(e: &Event, out: &mut Vec<u8>) {
    let r = &e.dot.replica;
    put_bytes(r.device.as_str().as_bytes(), out);
    put_long(clamp(r.incarnation.get()), out);
    put_long(clamp(e.dot.seq), out);
    put_long(clamp(e.hlc.wall_ms), out);
    put_long(i64::from(e.hlc.logical), out);
    put_bytes(e.stream.as_bytes(), out);
    put_long(i64::from(e.schema_version), out);
    map(&e.fields, out, |v, out| match v {
        Value::Double(x) => {
            out.push(0);
            out.extend_from_slice(&x.to_le_bytes());
        }
        Value::Long(x) => {
            out.push(2); // zig-zag 1
            put_long(*x, out);
        }
        Value::String(s) => {
            out.push(4); // zig-zag 2
            put_bytes(s.as_bytes(), out);
        }
        Value::Bool(b) => {
            out.push(6); // zig-zag 3
            out.push(u8::from(*b));
        }
    });
    map(&e.tags, out, |v, out| put_bytes(v.as_bytes(), out));
}

/// A map in one block (none when empty), entries in key order.
fn map<V>(m: &BTreeMap<String, V>, out: &mut Vec<u8>, value: impl Fn(&V, &mut Vec<u8>)) {
    if !m.is_empty() {
        put_len(m.len(), out);
        for (k, v) in m {
            put_bytes(k.as_bytes(), out);
            value(v, out);
        }
    }
    out.push(0);
}

#[cfg(test)]
mod tests {
    #[test]
    fn drop_reason_symbols_are_the_schemas() {
        let avsc = crate::MessageKind::DeltaBatch.avsc();
        let symbols = avsc
            .split("\"symbols\": [")
            .nth(1)
            .and_then(|s| s.split(']').next())
            .unwrap_or_default();
        let quoted: Vec<String> = super::DROP_REASON_SYMBOLS
            .iter()
            .map(|s| format!("\"{s}\""))
            .collect();
        assert_eq!(symbols, quoted.join(", "));
    }
}

//! Core types <-> Avro values, following the `.avsc` files field by field.

use std::collections::{BTreeMap, BTreeSet};

use apache_avro::types::Value as Avro;
use edgesync_core::causal::{CausalContext, ReplicaContext};
use edgesync_core::crdt::{
    Crdt, CrdtKind, GCounter, LwwEntry, LwwRegister, MaxRegister, MinRegister, MvRegister, OrSet,
    PnCounter, RollupCell, RollupMap,
};
use edgesync_core::{
    Dot, DropReason, DroppedRange, Event, Hlc, ReplicaId, SeqRange, Value, VersionVector,
};

use crate::error::DecodeError;
use crate::value::{
    long_u64, opt_scalar, opt_scalar_from, record, replica_fields, replica_record, scalar,
    scalar_from, Rec,
};

// ---- events ----------------------------------------------------------------------------

fn fields_map(e: &Event) -> Avro {
    Avro::Map(
        e.fields
            .iter()
            .map(|(k, v)| (k.clone(), scalar(v, 0)))
            .collect(),
    )
}

fn tags_map(e: &Event) -> Avro {
    Avro::Map(
        e.tags
            .iter()
            .map(|(k, v)| (k.clone(), Avro::String(v.clone())))
            .collect(),
    )
}

/// Body fields shared by `Event` and `BatchEvent`.
fn event_body(e: &Event) -> [(&'static str, Avro); 6] {
    [
        ("hlc_wall_ms", long_u64(e.hlc.wall_ms)),
        ("hlc_logical", Avro::Long(i64::from(e.hlc.logical))),
        ("stream", Avro::String(e.stream.clone())),
        ("schema_version", Avro::Long(i64::from(e.schema_version))),
        ("fields", fields_map(e)),
        ("tags", tags_map(e)),
    ]
}

/// `edgesync.v1.Event`.
pub(crate) fn event_to_avro(e: &Event) -> Avro {
    let seq = [("seq", long_u64(e.dot.seq))];
    replica_record(&e.dot.replica, seq.into_iter().chain(event_body(e)))
}

/// `edgesync.v1.BatchEvent` (the dot is implied by the batch).
pub(crate) fn batch_event_to_avro(e: &Event) -> Avro {
    record(event_body(e).into())
}

/// The fields of a `BatchEvent`, to embed in a larger record (the spool record).
pub(crate) fn batch_event_to_avro_fields(e: &Event) -> [(&'static str, Avro); 6] {
    event_body(e)
}

fn hlc_from(r: &mut Rec) -> Result<Hlc, DecodeError> {
    let wall_ms = r.unsigned("hlc_wall_ms")?;
    let logical = r.long_u32("hlc_logical")?;
    Ok(Hlc::new(wall_ms, logical))
}

fn event_body_from(r: &mut Rec, dot: Dot) -> Result<Event, DecodeError> {
    let hlc = hlc_from(r)?;
    let stream = r.string("stream")?;
    let schema_version = r.long_u32("schema_version")?;
    let fields = r
        .map("fields")?
        .into_iter()
        .map(|(k, v)| Ok((k, scalar_from("fields", v)?)))
        .collect::<Result<BTreeMap<_, _>, DecodeError>>()?;
    let tags = r
        .map("tags")?
        .into_iter()
        .map(|(k, v)| match v {
            Avro::String(s) => Ok((k, s)),
            _ => Err(DecodeError::Shape {
                field: "tags",
                expected: "string",
            }),
        })
        .collect::<Result<BTreeMap<_, _>, DecodeError>>()?;
    Ok(Event {
        dot,
        hlc,
        stream,
        schema_version,
        fields,
        tags,
    })
}

pub(crate) fn event_from_avro(v: Avro) -> Result<Event, DecodeError> {
    let mut r = Rec::new("Event", v)?;
    let dot = Dot::new(r.replica()?, r.seq("seq")?);
    event_body_from(&mut r, dot)
}

pub(crate) fn batch_event_from_avro(v: Avro, dot: Dot) -> Result<Event, DecodeError> {
    event_body_from(&mut Rec::new("BatchEvent", v)?, dot)
}

/// A `DeltaBatch` value (any writer schema, resolved into the current one) as its parts; the
/// generic twin of [`crate::direct::read_batch`].
pub(crate) fn batch_parts_from_avro(v: Avro) -> Result<crate::direct::BatchParts, DecodeError> {
    let mut r = Rec::new("DeltaBatch", v)?;
    let replica: ReplicaId = r.replica()?;
    let first_seq = r.unsigned("first_seq")?;
    let events = r
        .array("events")?
        .into_iter()
        .map(|v| batch_event_from_avro(v, Dot::new(replica.clone(), 1)))
        .collect::<Result<Vec<_>, _>>()?;
    let dropped = r
        .array("dropped")?
        .into_iter()
        .map(dropped_from_avro)
        .collect::<Result<Vec<_>, _>>()?;
    let state = r
        .array("state")?
        .into_iter()
        .map(|v| {
            let mut s = Rec::new("StateDelta", v)?;
            Ok((s.string("key")?, s.bytes("crdt")?))
        })
        .collect::<Result<Vec<_>, DecodeError>>()?;
    Ok(crate::direct::BatchParts {
        replica,
        first_seq,
        events,
        dropped,
        state,
    })
}

/// The event fields of a larger record, and the rest of the record.
pub(crate) fn batch_event_from_avro_rec(
    v: Avro,
    dot: Dot,
    what: &'static str,
) -> Result<(Event, Rec), DecodeError> {
    let mut r = Rec::new(what, v)?;
    let e = event_body_from(&mut r, dot)?;
    Ok((e, r))
}

// ---- version vectors -----------------------------------------------------------------

/// Version vector entries of a state record.
pub(crate) fn vv_to_avro(vv: &VersionVector) -> Avro {
    Avro::Array(
        vv.iter()
            .map(|(r, seq)| replica_record(r, [("seq", long_u64(seq))]))
            .collect(),
    )
}

// ---- dropped ranges ------------------------------------------------------------------

/// `edgesync.v1.DroppedRange`.
pub(crate) fn dropped_to_avro(d: &DroppedRange) -> Avro {
    let i = DropReason::ALL
        .iter()
        .position(|r| *r == d.reason)
        .unwrap_or(0) as u32;
    record(vec![
        ("first", long_u64(d.range.start)),
        ("last", long_u64(d.range.end)),
        ("reason", Avro::Enum(i, d.reason.name().to_owned())),
    ])
}

pub(crate) fn dropped_from_avro(v: Avro) -> Result<DroppedRange, DecodeError> {
    let mut r = Rec::new("DroppedRange", v)?;
    let (first, last) = (r.seq("first")?, r.seq("last")?);
    dropped(first, last, &r.symbol("reason")?)
}

/// A dropped range from its fields (seqs already checked).
pub(crate) fn dropped(first: u64, last: u64, reason: &str) -> Result<DroppedRange, DecodeError> {
    let range = SeqRange::new(first, last).ok_or(DecodeError::Shape {
        field: "dropped",
        expected: "first <= last",
    })?;
    // OTHER (a reason this release does not know) is reported as damage: the seqs are gone
    // either way.
    let reason = DropReason::ALL
        .into_iter()
        .find(|x| x.name() == reason)
        .unwrap_or(DropReason::Corrupt);
    Ok(DroppedRange { range, reason })
}

// ---- CRDT states -----------------------------------------------------------------------

/// Position of a kind in the `CrdtState` union and the `CrdtKind` enum (both in `ALL` order).
pub(crate) fn kind_index(k: CrdtKind) -> u32 {
    CrdtKind::ALL.iter().position(|x| *x == k).unwrap_or(0) as u32
}

fn counts(g: &GCounter) -> Avro {
    Avro::Array(
        g.entries()
            .map(|(r, c)| replica_record(r, [("count", Avro::Long(c as i64))]))
            .collect(),
    )
}

fn counts_from(items: Vec<Avro>) -> Result<GCounter, DecodeError> {
    let entries = items
        .into_iter()
        .map(|v| {
            let mut r = Rec::new("ReplicaCount", v)?;
            Ok((r.replica()?, r.bits_u64("count")?))
        })
        .collect::<Result<Vec<_>, DecodeError>>()?;
    Ok(GCounter::from_entries(entries))
}

fn dot_to_avro(d: &Dot) -> Avro {
    replica_record(&d.replica, [("seq", long_u64(d.seq))])
}

fn dot_from(v: Avro) -> Result<Dot, DecodeError> {
    let mut r = Rec::new("Dot", v)?;
    Ok(Dot::new(r.replica()?, r.seq("seq")?))
}

fn context_to_avro(ctx: &CausalContext) -> Avro {
    Avro::Array(
        ctx.iter()
            .map(|(r, rc)| {
                let ranges = rc
                    .ranges()
                    .map(|x| record(vec![("start", long_u64(x.start)), ("end", long_u64(x.end))]))
                    .collect();
                replica_record(
                    r,
                    [
                        ("watermark", long_u64(rc.watermark())),
                        ("ranges", Avro::Array(ranges)),
                    ],
                )
            })
            .collect(),
    )
}

fn context_from(items: Vec<Avro>) -> Result<CausalContext, DecodeError> {
    let parts = items
        .into_iter()
        .map(|v| {
            let mut r = Rec::new("ReplicaContext", v)?;
            let replica: ReplicaId = r.replica()?;
            let watermark = r.unsigned("watermark")?;
            let ranges = r
                .array("ranges")?
                .into_iter()
                .map(|v| {
                    let mut x = Rec::new("SeqRange", v)?;
                    Ok((x.unsigned("start")?, x.unsigned("end")?))
                })
                .collect::<Result<Vec<_>, DecodeError>>()?;
            let rc = ReplicaContext::from_parts(&replica, watermark, ranges)?;
            Ok((replica, rc))
        })
        .collect::<Result<Vec<_>, DecodeError>>()?;
    Ok(CausalContext::from_parts(parts)?)
}

fn crdt_body(c: &Crdt) -> Avro {
    match c {
        Crdt::GCounter(g) => record(vec![("entries", counts(g))]),
        Crdt::PnCounter(p) => record(vec![("p", counts(&p.p)), ("n", counts(&p.n))]),
        Crdt::MaxRegister(r) => record(vec![("value", opt_scalar(r.get()))]),
        Crdt::MinRegister(r) => record(vec![("value", opt_scalar(r.get()))]),
        Crdt::LwwRegister(r) => {
            let entry = match r.entry() {
                None => Avro::Union(0, Box::new(Avro::Null)),
                Some(e) => {
                    let mut f = vec![
                        ("hlc_wall_ms", long_u64(e.hlc.wall_ms)),
                        ("hlc_logical", Avro::Long(i64::from(e.hlc.logical))),
                    ];
                    f.extend(replica_fields(&e.replica));
                    f.push(("value", scalar(&e.value, 0)));
                    Avro::Union(1, Box::new(record(f)))
                }
            };
            record(vec![("entry", entry)])
        }
        Crdt::MvRegister(r) => record(vec![
            (
                "entries",
                Avro::Array(
                    r.entries()
                        .map(|(d, v)| {
                            record(vec![("dot", dot_to_avro(d)), ("value", scalar(v, 0))])
                        })
                        .collect(),
                ),
            ),
            ("context", context_to_avro(r.context())),
        ]),
        Crdt::OrSet(s) => record(vec![
            (
                "entries",
                Avro::Array(
                    s.entries()
                        .map(|(v, dots)| {
                            record(vec![
                                ("value", scalar(v, 0)),
                                ("dots", Avro::Array(dots.iter().map(dot_to_avro).collect())),
                            ])
                        })
                        .collect(),
                ),
            ),
            ("context", context_to_avro(s.context())),
        ]),
        Crdt::RollupMap(m) => record(vec![(
            "cells",
            Avro::Array(
                m.cells()
                    .map(|((bucket, r), c)| {
                        let mut f = vec![("bucket_ms", long_u64(*bucket))];
                        f.extend(replica_fields(r));
                        f.extend([
                            ("version", long_u64(c.version)),
                            ("count", long_u64(c.count)),
                            ("sum", Avro::Double(c.sum)),
                            ("min", Avro::Double(c.min)),
                            ("max", Avro::Double(c.max)),
                        ]);
                        record(f)
                    })
                    .collect(),
            ),
        )]),
    }
}

/// `edgesync.v1.CrdtState`.
pub(crate) fn crdt_to_avro(c: &Crdt) -> Avro {
    record(vec![(
        "state",
        Avro::Union(kind_index(c.kind()), Box::new(crdt_body(c))),
    )])
}

fn rollup_cell_from(v: Avro) -> Result<((u64, ReplicaId), RollupCell), DecodeError> {
    let mut r = Rec::new("RollupCell", v)?;
    let bucket_ms = r.unsigned("bucket_ms")?;
    let replica = r.replica()?;
    let cell = RollupCell {
        version: r.unsigned("version")?,
        count: r.unsigned("count")?,
        sum: r.double("sum")?,
        min: r.double("min")?,
        max: r.double("max")?,
    };
    let finite = cell.sum.is_finite() && cell.min.is_finite() && cell.max.is_finite();
    if !finite || cell.count == 0 || cell.version == 0 || cell.min > cell.max {
        return Err(DecodeError::BadRollupCell { bucket_ms });
    }
    Ok(((bucket_ms, replica), cell))
}

fn lww_from(r: &mut Rec) -> Result<Crdt, DecodeError> {
    let entry = match r.take("entry")? {
        Avro::Union(_, b) if matches!(*b, Avro::Null) => None,
        Avro::Union(_, b) => {
            let mut e = Rec::new("LwwEntry", *b)?;
            Some(LwwEntry {
                hlc: hlc_from(&mut e)?,
                replica: e.replica()?,
                value: scalar_from("value", e.take("value")?)?,
            })
        }
        _ => {
            return Err(DecodeError::Shape {
                field: "entry",
                expected: "union",
            })
        }
    };
    Ok(Crdt::LwwRegister(
        entry.map_or_else(LwwRegister::default, LwwRegister::of),
    ))
}

fn mv_from(r: &mut Rec) -> Result<Crdt, DecodeError> {
    let entries = r
        .array("entries")?
        .into_iter()
        .map(|v| {
            let mut e = Rec::new("MvEntry", v)?;
            Ok((
                dot_from(e.take("dot")?)?,
                scalar_from("value", e.take("value")?)?,
            ))
        })
        .collect::<Result<Vec<(Dot, Value)>, DecodeError>>()?;
    let ctx = context_from(r.array("context")?)?;
    Ok(Crdt::MvRegister(MvRegister::from_parts(entries, ctx)))
}

fn or_set_from(r: &mut Rec) -> Result<Crdt, DecodeError> {
    let entries = r
        .array("entries")?
        .into_iter()
        .map(|v| {
            let mut e = Rec::new("OrSetEntry", v)?;
            let value = scalar_from("value", e.take("value")?)?;
            let dots = e
                .array("dots")?
                .into_iter()
                .map(dot_from)
                .collect::<Result<BTreeSet<Dot>, DecodeError>>()?;
            Ok((value, dots))
        })
        .collect::<Result<Vec<_>, DecodeError>>()?;
    let ctx = context_from(r.array("context")?)?;
    Ok(Crdt::OrSet(OrSet::from_parts(entries, ctx)))
}

pub(crate) fn crdt_from_avro(v: Avro) -> Result<Crdt, DecodeError> {
    let mut outer = Rec::new("CrdtState", v)?;
    let (index, body) = match outer.take("state")? {
        Avro::Union(i, b) => (i, *b),
        _ => {
            return Err(DecodeError::Shape {
                field: "state",
                expected: "union",
            })
        }
    };
    let kind = CrdtKind::ALL
        .get(index as usize)
        .copied()
        .ok_or(DecodeError::Shape {
            field: "state",
            expected: "a known CRDT kind",
        })?;
    let mut r = Rec::new("state", body)?;
    Ok(match kind {
        CrdtKind::GCounter => Crdt::GCounter(counts_from(r.array("entries")?)?),
        CrdtKind::PnCounter => Crdt::PnCounter(PnCounter {
            p: counts_from(r.array("p")?)?,
            n: counts_from(r.array("n")?)?,
        }),
        CrdtKind::MaxRegister => Crdt::MaxRegister(
            opt_scalar_from("value", r.take("value")?)?
                .map_or_else(MaxRegister::default, MaxRegister::of),
        ),
        CrdtKind::MinRegister => Crdt::MinRegister(
            opt_scalar_from("value", r.take("value")?)?
                .map_or_else(MinRegister::default, MinRegister::of),
        ),
        CrdtKind::LwwRegister => lww_from(&mut r)?,
        CrdtKind::MvRegister => mv_from(&mut r)?,
        CrdtKind::OrSet => or_set_from(&mut r)?,
        CrdtKind::RollupMap => Crdt::RollupMap(RollupMap::from_cells(
            r.array("cells")?
                .into_iter()
                .map(rollup_cell_from)
                .collect::<Result<Vec<_>, DecodeError>>()?,
        )),
    })
}

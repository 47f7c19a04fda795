//! Batch encode+compress, decompress+decode and check (the bridge's validation) throughput, in
//! events/s, with decompression alone as the floor of a check.
//!
//! A realistic batch: 500 telemetry events of one pump (6 typed fields, 2 tags) plus the joined
//! state deltas they produced (a counter, a max register, a rollup).
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use edgesync_core::arbitrary::replica;
use edgesync_core::crdt::{GCounter, MaxRegister, RollupMap};
use edgesync_core::{BatchBuilder, Crdt, DeltaBatch, Dot, Event, EventLimits, Hlc, Value};
use edgesync_schemas::{Codec, Limits};

const EVENTS: u64 = 500;

fn telemetry_batch() -> DeltaBatch {
    let r = replica(1);
    let mut b = BatchBuilder::new(r.clone(), 1, EventLimits::default());
    let (mut count, mut max, mut roll) = (
        GCounter::default(),
        MaxRegister::default(),
        RollupMap::default(),
    );
    for seq in 1..=EVENTS {
        let p = 100.0 + (seq % 17) as f64 * 0.25;
        let fields: BTreeMap<String, Value> = [
            ("pressure_kpa", Value::Double(p)),
            ("flow_lpm", Value::Double(12.5 + (seq % 5) as f64)),
            ("temp_c", Value::Double(41.0)),
            ("rpm", Value::Long(1450 + (seq % 9) as i64)),
            ("running", Value::Bool(true)),
            ("mode", Value::from("auto")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let e = Event {
            dot: Dot::new(r.clone(), seq),
            hlc: Hlc::new(1_764_000_000_000 + seq * 100, 0),
            stream: "pump.telemetry".into(),
            schema_version: 1,
            fields,
            tags: [("site", "plant-7"), ("line", "b")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        };
        let deltas = vec![
            (
                "pump-1/samples".to_owned(),
                Crdt::GCounter(count.inc(&r, 1)),
            ),
            (
                "pump-1/pressure.max".to_owned(),
                Crdt::MaxRegister(max.set(Value::Double(p))),
            ),
            (
                "pump-1/pressure.1m".to_owned(),
                Crdt::RollupMap(roll.record(&r, (seq / 600) * 60_000, p).unwrap()),
            ),
        ];
        b.push(e, deltas).unwrap();
    }
    b.finish().unwrap()
}

fn codec(c: &mut Criterion) {
    let codec = Codec::new(Limits::default()).unwrap();
    let batch = telemetry_batch();
    let bytes = codec.encode_batch(&batch).unwrap();
    let raw: usize = batch.events().iter().map(Event::approx_size).sum();
    eprintln!(
        "batch of {EVENTS} events: {} bytes on the wire, {raw} bytes of raw fields ({:.1}x)",
        bytes.len(),
        raw as f64 / bytes.len() as f64
    );
    let mut g = c.benchmark_group("batch");
    g.throughput(Throughput::Elements(EVENTS));
    g.bench_function("encode_compress", |b| {
        b.iter(|| black_box(codec.encode_batch(black_box(&batch)).unwrap()))
    });
    g.bench_function("decompress_decode", |b| {
        b.iter(|| black_box(codec.decode_batch(black_box(&bytes)).unwrap()))
    });
    // What the bridge does per batch, against decompression alone (its floor).
    g.bench_function("check", |b| {
        b.iter(|| black_box(codec.check_batch(black_box(&bytes)).unwrap()))
    });
    g.bench_function("decompress_only", |b| {
        b.iter(|| black_box(zstd::bulk::decompress(black_box(&bytes), 1 << 24).unwrap()))
    });
    g.finish();

    // One event per batch: what a connected agent sends when events trickle in.
    let (r, first) = (batch.replica().clone(), batch.events()[0].clone());
    let single = DeltaBatch::new(
        r,
        1,
        vec![first],
        Default::default(),
        &EventLimits::default(),
    )
    .unwrap();
    let single_bytes = codec.encode_batch(&single).unwrap();
    let mut g = c.benchmark_group("single_event_batch");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode_compress", |b| {
        b.iter(|| black_box(codec.encode_batch(black_box(&single)).unwrap()))
    });
    g.bench_function("decompress_decode", |b| {
        b.iter(|| black_box(codec.decode_batch(black_box(&single_bytes)).unwrap()))
    });
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);

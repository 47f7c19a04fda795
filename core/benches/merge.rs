//! Merge throughput: deltas joined per second, per CRDT type, and causal-context inserts.
//!
//! Each benchmark joins a prepared stream of deltas (as the reconciler's key stage does) into a
//! state; criterion reports elements/s = deltas/s on one core. Target: >= 2 M deltas/s.
#![allow(clippy::unwrap_used, missing_docs)]

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use edgesync_core::arbitrary::replica;
use edgesync_core::crdt::{
    GCounter, LwwRegister, MaxRegister, MinRegister, MvRegister, OrSet, PnCounter, RollupMap,
};
use edgesync_core::{CausalContext, Crdt, Dot, Hlc, Lattice, ReplicaId, Value};
use std::hint::black_box;

const DELTAS: usize = 10_000;
const REPLICAS: usize = 100;

/// Indexing yields a newly allocated replica id every time.
struct Fresh;
impl Fresh {
    fn get(&self, i: usize) -> ReplicaId {
        replica(i)
    }
}

/// Deltas as a fleet would produce them: round-robin over replicas, each mutating its own state.
fn deltas<S: Lattice>(mut f: impl FnMut(&mut S, usize, usize) -> S) -> Vec<S> {
    let mut states = vec![S::default(); REPLICAS];
    (0..DELTAS)
        .map(|i| f(&mut states[i % REPLICAS], i % REPLICAS, i))
        .collect()
}

fn bench_join<S: Lattice>(c: &mut Criterion, name: &str, ds: Vec<S>) {
    let mut g = c.benchmark_group("join");
    g.throughput(Throughput::Elements(ds.len() as u64));
    g.bench_function(name, |b| {
        b.iter(|| {
            let mut s = S::default();
            for d in &ds {
                s.join(d);
            }
            black_box(s)
        })
    });
    g.finish();
}

fn joins(c: &mut Criterion) {
    // A fresh id per delta, as the decoder produces them: no shared allocations to shortcut
    // the id comparisons.
    let rs = Fresh;
    bench_join(
        c,
        "g_counter",
        deltas(|s: &mut GCounter, r, _| s.inc(&rs.get(r), 1)),
    );
    bench_join(
        c,
        "pn_counter",
        deltas(|s: &mut PnCounter, r, i| s.add(&rs.get(r), if i % 3 == 0 { -1 } else { 2 })),
    );
    bench_join(
        c,
        "max_register",
        deltas(|s: &mut MaxRegister<Value>, _, i| s.set(Value::Long(i as i64))),
    );
    bench_join(
        c,
        "min_register",
        deltas(|s: &mut MinRegister<Value>, _, i| s.set(Value::Long(-(i as i64)))),
    );
    bench_join(
        c,
        "lww_register",
        deltas(|s: &mut LwwRegister<Value>, r, i| {
            s.set(Hlc::new(i as u64, 0), &rs.get(r), Value::Double(i as f64))
        }),
    );
    bench_join(
        c,
        "mv_register",
        deltas(|s: &mut MvRegister<Value>, r, i| s.write(&rs.get(r), Value::Long(i as i64))),
    );
    bench_join(
        c,
        "or_set",
        deltas(|s: &mut OrSet<Value>, r, i| {
            if i % 4 == 3 {
                s.remove(&Value::Long((i % 64) as i64))
            } else {
                s.add(&rs.get(r), Value::Long((i % 64) as i64))
            }
        }),
    );
    bench_join(
        c,
        "rollup_map",
        deltas(|s: &mut RollupMap, r, i| {
            s.record(&rs.get(r), (i / 1000) as u64 * 60_000, i as f64)
                .unwrap()
        }),
    );
    // Through the dynamically typed enum, as the key stage stores them.
    let dyn_deltas: Vec<Crdt> = deltas(|s: &mut GCounter, r, _| s.inc(&rs.get(r), 1))
        .into_iter()
        .map(Crdt::GCounter)
        .collect();
    let mut g = c.benchmark_group("join");
    g.throughput(Throughput::Elements(dyn_deltas.len() as u64));
    g.bench_function("crdt_enum_g_counter", |b| {
        b.iter(|| {
            let mut s = Crdt::GCounter(GCounter::default());
            for d in &dyn_deltas {
                s.join(d).unwrap();
            }
            black_box(s)
        })
    });
    g.finish();
}

fn causal_insert(c: &mut Criterion) {
    let in_order: Vec<Dot> = (0..DELTAS)
        .map(|i| Dot::new(replica(i % REPLICAS), (i / REPLICAS) as u64 + 1))
        .collect();
    // Pairs swapped: every other insert opens a one-dot gap that the next one closes.
    let mut swapped = in_order.clone();
    for pair in swapped.chunks_mut(2 * REPLICAS) {
        if pair.len() == 2 * REPLICAS {
            let (a, b) = pair.split_at_mut(REPLICAS);
            a.swap_with_slice(b);
        }
    }
    let mut g = c.benchmark_group("causal_insert");
    g.throughput(Throughput::Elements(DELTAS as u64));
    for (name, dots) in [("in_order", &in_order), ("with_gaps", &swapped)] {
        g.bench_function(name, |b| {
            b.iter_batched(
                CausalContext::new,
                |mut ctx| {
                    for d in dots {
                        ctx.insert(d);
                    }
                    ctx
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, joins, causal_insert);
criterion_main!(benches);

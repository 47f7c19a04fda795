//! The model pipeline in one process: devices append events and update shared CRDTs, cut them
//! into batches (and, as after a resend timeout, into *different* batches again), the codec
//! carries them as bytes, and a server decodes them in any order with duplicates, de-duplicates
//! by causal context and joins the deltas. Checked by history: every dot exactly once, nothing
//! missing, and the server's state equal (digest for digest) to the join of the edges' states.
//!
//! The broker-backed version of this suite arrives with the services (issues #5-#8).

use std::collections::{BTreeMap, BTreeSet};

use edgesync_core::arbitrary::{delivery_order, replica};
use edgesync_core::crdt::{GCounter, MaxRegister, MvRegister, OrSet, RollupMap};
use edgesync_core::{
    BatchBuilder, CausalContext, Crdt, Dot, Event, EventLimits, HlcClock, ReplicaId, StateDigest,
    Value,
};
use edgesync_schemas::{Codec, Limits};
use proptest::prelude::*;

/// One device: its replica, clock, local CRDT states, and every event it appended.
struct Device {
    replica: ReplicaId,
    clock: HlcClock,
    counter: GCounter,
    max: MaxRegister<Value>,
    online: OrSet<Value>,
    mode: MvRegister<Value>,
    rollup: RollupMap,
    log: Vec<(Event, Vec<(String, Crdt)>)>,
}

impl Device {
    fn new(i: usize) -> Self {
        Self {
            replica: replica(i),
            clock: HlcClock::new(60_000),
            counter: GCounter::default(),
            max: MaxRegister::default(),
            online: OrSet::default(),
            mode: MvRegister::default(),
            rollup: RollupMap::default(),
            log: Vec::new(),
        }
    }

    /// Appends one reading; the event and the deltas it produced go to the log.
    fn append(&mut self, now_ms: u64, pressure: f64, mode: Option<&str>) {
        let seq = self.log.len() as u64 + 1;
        let hlc = self.clock.now(now_ms);
        let dev = self.replica.device.as_str().to_owned();
        let mut deltas = vec![
            (
                "fleet/readings".to_owned(),
                Crdt::GCounter(self.counter.inc(&self.replica, 1)),
            ),
            (
                format!("{dev}/pressure.max"),
                Crdt::MaxRegister(self.max.set(Value::Double(pressure))),
            ),
            (
                "fleet/pressure.1m".to_owned(),
                Crdt::RollupMap(
                    self.rollup
                        .record(&self.replica, now_ms / 60_000 * 60_000, pressure)
                        .expect("finite"),
                ),
            ),
        ];
        if seq == 1 {
            deltas.push((
                "fleet/online".to_owned(),
                Crdt::OrSet(self.online.add(&self.replica, Value::from(dev.as_str()))),
            ));
        }
        if let Some(m) = mode {
            deltas.push((
                "fleet/mode".to_owned(),
                Crdt::MvRegister(self.mode.write(&self.replica, Value::from(m))),
            ));
        }
        let event = Event {
            dot: Dot::new(self.replica.clone(), seq),
            hlc,
            stream: "pump.telemetry".into(),
            schema_version: 1,
            fields: BTreeMap::from([("pressure_kpa".to_owned(), Value::Double(pressure))]),
            tags: BTreeMap::new(),
        };
        self.log.push((event, deltas));
    }

    /// The device's batches when cut every `size` events, encoded.
    fn batches(&self, codec: &Codec, size: usize) -> Vec<Vec<u8>> {
        self.log
            .chunks(size)
            .enumerate()
            .map(|(i, chunk)| {
                let first = (i * size) as u64 + 1;
                let mut b = BatchBuilder::new(self.replica.clone(), first, EventLimits::default());
                for (e, d) in chunk {
                    b.push(e.clone(), d.clone()).expect("valid event");
                }
                codec
                    .encode_batch(&b.finish().expect("non-empty"))
                    .expect("encodes")
            })
            .collect()
    }

    fn states(&self) -> BTreeMap<String, Crdt> {
        let dev = self.replica.device.as_str();
        let mut m = BTreeMap::from([
            (
                "fleet/readings".to_owned(),
                Crdt::GCounter(self.counter.clone()),
            ),
            (
                format!("{dev}/pressure.max"),
                Crdt::MaxRegister(self.max.clone()),
            ),
            (
                "fleet/pressure.1m".to_owned(),
                Crdt::RollupMap(self.rollup.clone()),
            ),
            ("fleet/online".to_owned(), Crdt::OrSet(self.online.clone())),
        ]);
        if self.mode != MvRegister::default() {
            m.insert("fleet/mode".to_owned(), Crdt::MvRegister(self.mode.clone()));
        }
        m
    }
}

/// What the server side does with one batch: de-duplicate events, join deltas.
#[derive(Default)]
struct Server {
    ctx: CausalContext,
    emitted: Vec<Dot>,
    state: BTreeMap<String, Crdt>,
}

impl Server {
    fn apply(&mut self, codec: &Codec, bytes: &[u8]) {
        let batch = codec.decode_batch(bytes).expect("a valid batch decodes");
        for e in batch.events() {
            if self.ctx.insert(&e.dot) {
                self.emitted.push(e.dot.clone());
            }
        }
        for (k, d) in batch.state() {
            match self.state.get_mut(k) {
                Some(s) => s.join(d).expect("one kind per key"),
                None => {
                    self.state.insert(k.clone(), d.clone());
                }
            }
        }
    }
}

fn join_maps(maps: impl IntoIterator<Item = BTreeMap<String, Crdt>>) -> BTreeMap<String, Crdt> {
    let mut out: BTreeMap<String, Crdt> = BTreeMap::new();
    for m in maps {
        for (k, s) in m {
            match out.get_mut(&k) {
                Some(x) => x.join(&s).expect("one kind per key"),
                None => {
                    out.insert(k, s);
                }
            }
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn every_dot_arrives_once_and_server_state_equals_the_edges(
        readings in prop::collection::vec((0usize..3, 0u64..600_000, 50.0f64..150.0, prop::option::weighted(0.1, prop::sample::select(vec!["auto", "manual"]))), 1..150),
        first_cut in 1usize..40,
        resend_cut in 1usize..40,
        seed in any::<u64>(),
    ) {
        let codec = Codec::new(Limits::default()).unwrap();
        let mut devices: Vec<Device> = (0..3).map(Device::new).collect();
        for (d, t, p, mode) in &readings {
            devices[*d].append(*t, *p, *mode);
        }
        // Every batch twice, cut differently the second time (a resend after a timeout).
        let wire: Vec<Vec<u8>> = devices
            .iter()
            .flat_map(|d| d.batches(&codec, first_cut).into_iter().chain(d.batches(&codec, resend_cut)))
            .collect();
        let mut server = Server::default();
        for i in delivery_order(wire.len(), seed) {
            server.apply(&codec, &wire[i]);
        }

        let produced: BTreeSet<Dot> = devices.iter().flat_map(|d| d.log.iter().map(|(e, _)| e.dot.clone())).collect();
        let emitted: BTreeSet<Dot> = server.emitted.iter().cloned().collect();
        prop_assert_eq!(server.emitted.len(), emitted.len(), "a dot was emitted twice");
        prop_assert_eq!(&emitted, &produced, "missing or extra dots");
        for d in &devices {
            let n = d.log.len() as u64;
            prop_assert_eq!(server.ctx.watermark(&d.replica), n);
            prop_assert!(server.ctx.missing(&d.replica, n).is_empty());
        }
        // Keys a device never touched are bottom at the edge and absent at the server.
        let edges: BTreeMap<String, Crdt> = join_maps(devices.iter().map(Device::states))
            .into_iter()
            .filter(|(_, s)| *s != s.kind().bottom())
            .collect();
        prop_assert_eq!(StateDigest::of_map(&server.state), StateDigest::of_map(&edges));
        prop_assert_eq!(&server.state, &edges);
        if let Some(Crdt::GCounter(g)) = server.state.get("fleet/readings") {
            prop_assert_eq!(g.value(), readings.len() as u128, "each reading counted once");
        }
    }
}

#[test]
fn a_gap_is_reported_as_an_exact_missing_range_until_redelivered() {
    let codec = Codec::new(Limits::default()).unwrap();
    let mut dev = Device::new(0);
    for t in 0..10 {
        dev.append(t * 1000, 100.0, None);
    }
    let batches = dev.batches(&codec, 3); // seqs 1-3, 4-6, 7-9, 10
    let mut server = Server::default();
    for i in [0, 2, 3] {
        server.apply(&codec, &batches[i]);
    }
    assert_eq!(server.ctx.watermark(&dev.replica), 3);
    let missing = server.ctx.missing(&dev.replica, 10);
    assert_eq!(missing.len(), 1);
    assert_eq!((missing[0].start, missing[0].end), (4, 6));
    server.apply(&codec, &batches[1]);
    assert_eq!(server.ctx.watermark(&dev.replica), 10);
}

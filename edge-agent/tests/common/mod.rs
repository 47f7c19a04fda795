//! Helpers shared by the agent's integration tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;

use edgesync_agent::spool::Spool;
use edgesync_core::crdt::GCounter;
use edgesync_core::{Crdt, DeviceId, Dot, Event, Hlc, ReplicaId, Value};
use edgesync_schemas::Codec;

/// Appends `n` telemetry events (each +1 on `fleet/readings`) in requests of 100.
pub fn fill(spool: &Spool, codec: &Codec, replica: &ReplicaId, n: u64) {
    let mut counter = GCounter::default();
    for chunk in 0..n.div_ceil(100) {
        let bodies = (0..100.min(n - chunk * 100))
            .map(|i| {
                let e = Event {
                    dot: Dot::new(replica.clone(), 0), // the spool assigns the seq
                    hlc: Hlc::new(1_000 + chunk * 100 + i, 0),
                    stream: "pump.telemetry".into(),
                    schema_version: 1,
                    fields: BTreeMap::from([("pressure_kpa".into(), Value::Double(101.5))]),
                    tags: BTreeMap::new(),
                };
                let d = Crdt::GCounter(counter.inc(replica, 1));
                codec
                    .encode_spool_record(&e, &[("fleet/readings".into(), d)])
                    .unwrap()
            })
            .collect();
        spool.append(bodies).unwrap();
    }
}

pub fn replica_of(spool: &Spool, device: &str) -> ReplicaId {
    ReplicaId::new(DeviceId::new(device).unwrap(), spool.meta().incarnation)
}

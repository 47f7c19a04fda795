//! Helpers shared by the agent's integration tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edgesync_agent::spool::Spool;
use edgesync_core::crdt::GCounter;
use edgesync_core::{Crdt, DeviceId, Dot, Event, Hlc, ReplicaId, Value};
use edgesync_protocol::{Server, ServerConfig};
use edgesync_schemas::{Ack, Codec, Limits};
use edgesync_testkit::unique;
use rumqttc::{Client, MqttOptions, Packet, QoS};

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

#[derive(Default)]
pub struct Seen {
    pub released: Vec<u64>,
    pub batches: u64,
    /// Batches that arrived wholly at or below the watermark already acknowledged.
    pub stale_batches: u64,
    /// Seqs the agent reported dropped at the edge.
    pub dropped: u64,
    /// The joined state deltas, by key.
    pub state: BTreeMap<String, Crdt>,
}

/// The test's stand-in for bridge + reconciler: apply and acknowledge, retained.
pub fn serve(addr: std::net::SocketAddr, seen: Arc<Mutex<Seen>>) {
    let mut o = MqttOptions::new(unique("server"), addr.ip().to_string(), addr.port());
    o.set_max_packet_size(4 << 20, 4 << 20);
    o.set_keep_alive(Duration::from_secs(5));
    let (client, mut conn) = Client::new(o, 64);
    client
        .subscribe("edgesync/v1/+/batch", QoS::AtLeastOnce)
        .unwrap();
    let codec = Codec::new(Limits::default()).unwrap();
    let mut server = Server::new(ServerConfig::default());
    std::thread::spawn(move || {
        for ev in conn.iter() {
            let Ok(rumqttc::Event::Incoming(Packet::Publish(p))) = ev else {
                continue;
            };
            let Ok(batch) = codec.decode_batch(&p.payload) else {
                continue;
            };
            let replica = batch.replica().clone();
            let before = server.watermark(&replica);
            let stale = batch.last_seq() <= before;
            let a = server.apply(batch, 0);
            {
                let mut s = seen.lock().unwrap();
                s.batches += 1;
                s.stale_batches += u64::from(stale);
                s.released.extend(a.released.iter().map(|e| e.dot.seq));
                s.dropped += a.dropped;
                for (k, d) in &a.deltas {
                    match s.state.get_mut(k) {
                        Some(c) => c.join(d).unwrap(),
                        None => {
                            s.state.insert(k.clone(), d.clone());
                        }
                    }
                }
            }
            let ack = Ack {
                replica: replica.clone(),
                watermark: a.watermark,
                acked_at_ms: 0,
            };
            let topic = format!("edgesync/v1/{}/ack", replica.device);
            let _ = client.publish(
                topic,
                QoS::AtLeastOnce,
                true,
                codec.encode_ack(&ack).unwrap(),
            );
        }
    });
}

/// One HTTP/1.1 request; returns status, head and body.
#[allow(unused_imports)] // not every test file uses it
pub use edgesync_testkit::http;

/// `n` NDJSON events, each +1 on the G-counter `readings` and a rollup sample.
pub fn ndjson(n: usize, start: usize) -> Vec<u8> {
    let mut out = String::new();
    for i in start..start + n {
        out.push_str(&format!(
            "{{\"stream\":\"pump.telemetry\",\"fields\":{{\"i\":{i},\"pressure_kpa\":101.5}},\"tags\":{{\"site\":\"north\"}},\"ops\":[{{\"op\":\"inc\",\"key\":\"readings\",\"by\":1}},{{\"op\":\"rollup\",\"key\":\"pressure\",\"value\":101.5,\"bucket_ms\":60000}}]}}\n"
        ));
    }
    out.into_bytes()
}

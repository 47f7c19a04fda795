//! Valid inputs for every target, to start a corpus from: libFuzzer mutates what decodes into
//! what almost does, which random bytes would seldom reach (a schema fingerprint, a zstd frame).

use std::collections::BTreeMap;

use edgesync_core::crdt::{Crdt, CrdtKind, GCounter};
use edgesync_core::{
    BatchBuilder, Dot, DropReason, Event, EventLimits, Hlc, SeqRange, Value, VersionVector,
};
use edgesync_schemas::{Ack, DeadLetter, DeadLetterReason, Framing, MessageKind, StateRecord};

use crate::checks::{codec, confluent_id, seed_replica, spool_dot};

fn event(seq: u64) -> Event {
    Event {
        dot: Dot::new(seed_replica(), seq),
        hlc: Hlc::new(1_764_000_000_000 + seq, 0),
        stream: "pump.telemetry".into(),
        schema_version: 1,
        fields: BTreeMap::from([
            ("pressure".into(), Value::Double(2.5)),
            ("ok".into(), Value::Bool(true)),
            ("site".into(), Value::String("north".into())),
        ]),
        tags: BTreeMap::from([("unit".into(), "bar".into())]),
    }
}

fn counter(n: u64) -> Crdt {
    let mut g = GCounter::default();
    Crdt::GCounter(g.inc(&seed_replica(), n))
}

/// Every seed input, as (target, bytes).
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let c = codec();
    let mut out: Vec<(&'static str, Vec<u8>)> = Vec::new();
    let mut b = BatchBuilder::new(seed_replica(), 1, EventLimits::default());
    b.push(event(1), [("pumped".to_owned(), counter(3))])
        .expect("a valid event");
    b.push(event(2), []).expect("a valid event");
    b.push_dropped(SeqRange { start: 3, end: 4 }, DropReason::Quota)
        .expect("a dense range");
    let batch = b.finish().expect("a valid batch");
    let compressed = c.encode_batch(&batch).expect("encodes");
    let plain = zstd::bulk::decompress(&compressed, 1 << 20).expect("a zstd frame");
    out.push(("batch", compressed));
    out.push(("batch_plain", plain));

    let single = Framing::SingleObject;
    let confluent = Framing::Confluent {
        schema_id: confluent_id(MessageKind::Event),
    };
    let e = event(1);
    out.push(("records", c.encode_event(&e, single).expect("encodes")));
    out.push(("records", c.encode_event(&e, confluent).expect("encodes")));
    let ack = Ack {
        replica: seed_replica(),
        watermark: 7,
        acked_at_ms: 1_764_000_000_000,
    };
    out.push(("records", c.encode_ack(&ack).expect("encodes")));
    let mut vv = VersionVector::new();
    vv.observe(&seed_replica(), 1);
    let state = StateRecord {
        key: "pumped".into(),
        state: counter(3),
        version_vector: vv,
        emitted_at_ms: 1_764_000_000_001,
    };
    out.push((
        "records",
        c.encode_state_record(&state, single).expect("encodes"),
    ));
    let dead = DeadLetter {
        reason: DeadLetterReason::Undecodable,
        detail: "zstd: unknown frame descriptor".into(),
        source: "mqtt:edgesync/v1/pump-7/batch".into(),
        device: Some("pump-7".into()),
        received_at_ms: 1_764_000_000_002,
        payload: vec![0x28, 0xb5, 0x2f, 0xfd],
    };
    out.push((
        "records",
        c.encode_dead_letter(&dead, single).expect("encodes"),
    ));
    let completeness = edgesync_schemas::Completeness {
        device: seed_replica().device,
        replicas: vec![edgesync_schemas::ReplicaCompleteness {
            incarnation: seed_replica().incarnation,
            watermark: 4,
            max_seen: 9,
            missing: vec![edgesync_core::SeqRange::new(5, 7).expect("a range")],
            gap_since_ms: Some(1_764_000_000_003),
            pending: 2,
            dropped: [("QUOTA".to_owned(), 1)].into(),
            clock_skew_ms: Some(-20),
            clock_skewed: false,
            wire_bytes: 1_024,
        }],
        emitted_at_ms: 1_764_000_000_004,
    };
    out.push((
        "records",
        c.encode_completeness(&completeness, single)
            .expect("encodes"),
    ));
    for kind in CrdtKind::ALL {
        out.push((
            "records",
            c.encode_crdt_state(&kind.bottom()).expect("encodes"),
        ));
    }
    out.push((
        "records",
        c.encode_crdt_state(&counter(5)).expect("encodes"),
    ));
    let mut spooled = event(1);
    spooled.dot = spool_dot();
    let body = c
        .encode_spool_record(&spooled, &[("pumped".into(), counter(1))])
        .expect("encodes");
    out.push(("records", body.clone()));

    for t in ["edgesync/v1/pump-7/batch", "edgesync/v1/pump-7/ack"] {
        out.push(("topic", t.as_bytes().to_vec()));
    }
    agent_seeds(&mut out, &body);
    service_seeds(&mut out);
    out
}

#[cfg(feature = "agent")]
fn agent_seeds(out: &mut Vec<(&'static str, Vec<u8>)>, spool_body: &[u8]) {
    use edgesync_agent::spool::keys::{dropped_record, event_record};
    for body in [
        &br#"{"stream":"pump.telemetry","fields":{"pressure":2.5,"ok":true},"tags":{"unit":"bar"}}"#[..],
        br#"[{"stream":"s","ops":[{"op":"inc","key":"k","by":1},{"op":"lww","key":"l","value":"x"}]},{"stream":"s","fields":{"a":1,"b":"two"}}]"#,
        b"{\"stream\":\"s\",\"ops\":[{\"op\":\"set_add\",\"key\":\"tags\",\"value\":\"a\"}]}\n{\"stream\":\"s\",\"ops\":[{\"op\":\"rollup\",\"key\":\"r\",\"value\":1.5,\"bucket_ms\":60000}]}\n",
    ] {
        out.push(("ingest_json", body.to_vec()));
    }
    out.push(("spool_record", event_record(1_764_000_000_000, spool_body)));
    out.push((
        "spool_record",
        dropped_record(1_764_000_000_000, 9, DropReason::Quota.byte()),
    ));
    let agent = include_str!("../../deploy/edge-agent.toml");
    out.push(("agent_config", agent.as_bytes().to_vec()));
}

#[cfg(not(feature = "agent"))]
fn agent_seeds(_: &mut Vec<(&'static str, Vec<u8>)>, _: &[u8]) {}

#[cfg(feature = "services")]
fn service_seeds(out: &mut Vec<(&'static str, Vec<u8>)>) {
    let bridge = include_str!("../../deploy/bridge.toml");
    let reconciler = include_str!("../../deploy/reconciler.toml");
    out.push(("bridge_config", bridge.as_bytes().to_vec()));
    out.push(("reconciler_config", reconciler.as_bytes().to_vec()));
}

#[cfg(not(feature = "services"))]
fn service_seeds(_: &mut Vec<(&'static str, Vec<u8>)>) {}

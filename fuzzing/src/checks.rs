//! The checks, one per target. Each panics, with what broke, when the decoder does something it
//! must not; every other outcome (a clear error included) passes.

use std::sync::OnceLock;

use edgesync_core::{Dot, ReplicaId};
use edgesync_schemas::{topics, Codec, EncodeError, Framing, Limits, MessageKind};

/// The codec the services run (default limits), also reading Confluent framing: schema id
/// `100 + index` is each kind's current schema, so the fuzzer can reach that framing too.
pub fn codec() -> &'static Codec {
    static CODEC: OnceLock<Codec> = OnceLock::new();
    CODEC.get_or_init(|| {
        let mut c = Codec::new(Limits::default()).expect("the shipped schemas parse");
        for kind in MessageKind::ALL {
            c.register_confluent_id(confluent_id(kind), kind);
        }
        c
    })
}

/// The Confluent schema id [`codec`] reads `kind` under.
pub fn confluent_id(kind: MessageKind) -> u32 {
    100 + kind.index() as u32
}

/// The dot spool records are decoded as (the spool gives each record its key's seq).
pub fn spool_dot() -> Dot {
    Dot::new(seed_replica(), 1)
}

pub(crate) fn seed_replica() -> ReplicaId {
    let device = edgesync_core::DeviceId::new("pump-7").expect("a valid id");
    let incarnation = edgesync_core::Incarnation::new(42).expect("a valid incarnation");
    ReplicaId::new(device, incarnation)
}

/// A re-encoding that only fails for size (a decoded value may encode larger than it came).
fn reencoded(r: Result<Vec<u8>, EncodeError>, what: &str) -> Option<Vec<u8>> {
    match r {
        Ok(b) => Some(b),
        Err(EncodeError::TooLarge { .. }) => None,
        Err(e) => panic!("a decoded {what} does not encode again: {e}"),
    }
}

/// A delta batch off MQTT: the reconciler's decode and the bridge's check agree, and a decoded
/// batch round-trips.
pub fn batch(data: &[u8]) {
    let c = codec();
    let checked = c.check_batch(data);
    match c.decode_batch(data) {
        Ok(b) => {
            let (replica, first) = checked.unwrap_or_else(|e| {
                panic!("the reconciler decodes a batch the bridge would dead-letter: {e}")
            });
            assert_eq!((&replica, first), (b.replica(), b.first_seq()));
            if let Some(again) = reencoded(c.encode_batch(&b), "batch") {
                let back = c.decode_batch(&again).expect("a re-encoded batch decodes");
                assert_eq!(back, b, "a batch changed through encode and decode");
            }
        }
        Err(e) => {
            let _ = e.dead_letter_reason();
        }
    }
}

/// A batch's plain (decompressed) bytes, compressed here and then decoded like [`batch`]: the
/// fuzzer mutates the Avro datum itself, which mutations of a zstd frame seldom reach.
pub fn batch_plain(data: &[u8]) {
    let compressed = zstd::bulk::compress(data, 1).expect("zstd compresses any bytes");
    batch(&compressed);
}

/// The same bytes as each Avro record kind (single-object or Confluent framing): whatever
/// decodes round-trips.
pub fn records(data: &[u8]) {
    let c = codec();
    let single = Framing::SingleObject;
    round_trip(
        data,
        "event",
        |b| c.decode_event(b),
        |e| c.encode_event(e, single),
    );
    round_trip(data, "ack", |b| c.decode_ack(b), |a| c.encode_ack(a));
    round_trip(
        data,
        "state record",
        |b| c.decode_state_record(b),
        |r| c.encode_state_record(r, single),
    );
    round_trip(
        data,
        "dead letter",
        |b| c.decode_dead_letter(b),
        |d| c.encode_dead_letter(d, single),
    );
    round_trip(
        data,
        "completeness",
        |b| c.decode_completeness(b),
        |r| c.encode_completeness(r, single),
    );
    round_trip(
        data,
        "CRDT state",
        |b| c.decode_crdt_state(b),
        |s| c.encode_crdt_state(s),
    );
    // The read-back's dot: never a panic, and the decoded event's own dot when it decodes.
    let dot = c.event_dot(data);
    if let Ok(e) = c.decode_event(data) {
        assert_eq!(
            dot.ok(),
            Some(e.dot),
            "event_dot differs from the decoded event's dot"
        );
    }
    spool_body(data);
}

/// What `decode` takes from `data` comes back the same through `encode` and `decode`.
fn round_trip<T: PartialEq + std::fmt::Debug, E>(
    data: &[u8],
    what: &str,
    decode: impl Fn(&[u8]) -> Result<T, E>,
    encode: impl Fn(&T) -> Result<Vec<u8>, EncodeError>,
) {
    let Ok(v) = decode(data) else { return };
    if let Some(b) = reencoded(encode(&v), what) {
        let back = decode(&b).unwrap_or_else(|_| panic!("a re-encoded {what} does not decode"));
        assert_eq!(back, v, "a {what} changed through encode and decode");
    }
}

/// A spool record's body (event and deltas) round-trips.
fn spool_body(body: &[u8]) {
    let c = codec();
    if let Ok((e, deltas)) = c.decode_spool_record(body, spool_dot()) {
        if let Some(b) = reencoded(c.encode_spool_record(&e, &deltas), "spool record") {
            let back = c.decode_spool_record(&b, spool_dot());
            assert_eq!(back.expect("re-encoded spool record"), (e, deltas));
        }
    }
}

/// An MQTT topic: one that names a device's batch topic is exactly that topic.
pub fn topic(data: &[u8]) {
    let Ok(t) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(device) = topics::device_of_batch(t) {
        assert_eq!(
            topics::batch(&device),
            t,
            "a topic parsed as another device's"
        );
    }
}

/// An HTTP ingest body, as JSON and as NDJSON: nothing invented.
#[cfg(feature = "agent")]
pub fn ingest_json(data: &[u8]) {
    use edgesync_agent::ingest::json::{parse_json, parse_ndjson};
    for events in [parse_json(data), parse_ndjson(data)].into_iter().flatten() {
        assert!(
            events.len() <= data.len() / 2,
            "{} events from {} bytes",
            events.len(),
            data.len()
        );
    }
}

/// A spool value read from disk: what decodes is written back identically, and an event's body
/// round-trips.
#[cfg(feature = "agent")]
pub fn spool_record(data: &[u8]) {
    use edgesync_agent::spool::keys::{decode, dropped_record, event_record, Record};
    match decode(data) {
        Some(Record::Event { appended_ms, body }) => {
            assert_eq!(event_record(appended_ms, body), data);
            spool_body(body);
        }
        Some(Record::Dropped {
            appended_ms,
            last,
            reason,
        }) => assert_eq!(dropped_record(appended_ms, last, reason), data),
        None => {}
    }
}

/// A configuration file's text: loaded and checked, or refused with a message.
#[cfg(any(feature = "agent", feature = "services"))]
fn config<C: edgesync_servicekit::config::ServiceConfig>(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = C::from_toml(text, "fuzz.toml") {
        assert!(!e.to_string().is_empty(), "an error without a message");
    }
}

/// The agent's configuration file.
#[cfg(feature = "agent")]
pub fn agent_config(data: &[u8]) {
    config::<edgesync_agent::config::Config>(data);
}

/// The bridge's configuration file.
#[cfg(feature = "services")]
pub fn bridge_config(data: &[u8]) {
    config::<edgesync_bridge::config::Config>(data);
}

/// The reconciler's configuration file.
#[cfg(feature = "services")]
pub fn reconciler_config(data: &[u8]) {
    config::<edgesync_reconciler::config::Config>(data);
}

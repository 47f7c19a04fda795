//! Codec round trips, schema evolution, and rejection of bad bytes (never a panic).

use std::collections::BTreeMap;

use edgesync_core::arbitrary::{self, any_value, replica, run, Model};
use edgesync_core::crdt::Crdt;
use edgesync_core::{
    BatchBuilder, DeltaBatch, Dot, DropReason, Event, EventLimits, Hlc, SeqRange, VersionVector,
};
use edgesync_schemas::{
    Ack, Codec, DeadLetter, DeadLetterReason, DecodeError, Framing, Limits, MessageKind,
    StateRecord,
};
use proptest::prelude::*;
use proptest::test_runner::Config;

fn config() -> Config {
    Config {
        cases: arbitrary::cases(),
        failure_persistence: None,
        ..Config::default()
    }
}

fn codec() -> Codec {
    Codec::new(Limits::default()).expect("schemas parse")
}

fn name() -> impl Strategy<Value = String> {
    "[a-z_][a-z0-9_]{0,10}"
}

fn event_body() -> impl Strategy<
    Value = (
        Hlc,
        String,
        u32,
        BTreeMap<String, edgesync_core::Value>,
        BTreeMap<String, String>,
    ),
> {
    (
        (0u64..=i64::MAX as u64, any::<u32>()).prop_map(|(w, l)| Hlc::new(w, l)),
        "[a-z0-9][a-z0-9._-]{0,20}",
        any::<u32>(),
        prop::collection::btree_map(name(), any_value(), 0..6),
        prop::collection::btree_map(name(), ".{0,12}", 0..4),
    )
}

fn event(dot: Dot) -> impl Strategy<Value = Event> {
    event_body().prop_map(move |(hlc, stream, schema_version, fields, tags)| Event {
        dot: dot.clone(),
        hlc,
        stream,
        schema_version,
        fields,
        tags,
    })
}

/// A state of every kind, from a generated causal history.
fn crdt() -> impl Strategy<Value = Crdt> {
    fn of<M: Model>(f: fn(M::State) -> Crdt) -> impl Strategy<Value = Crdt>
    where
        M::State: 'static,
    {
        arbitrary::history::<M>(3, 12).prop_map(move |h| {
            let o = run::<M>(3, &h);
            f(o.finals
                .into_iter()
                .fold(Default::default(), |a: M::State, s| {
                    edgesync_core::Lattice::joined(a, &s)
                }))
        })
    }
    prop_oneof![
        of::<arbitrary::GCounterModel>(Crdt::GCounter),
        of::<arbitrary::PnCounterModel>(Crdt::PnCounter),
        of::<arbitrary::MaxRegisterModel>(Crdt::MaxRegister),
        of::<arbitrary::MinRegisterModel>(Crdt::MinRegister),
        of::<arbitrary::LwwRegisterModel>(Crdt::LwwRegister),
        of::<arbitrary::MvRegisterModel>(Crdt::MvRegister),
        of::<arbitrary::OrSetModel>(Crdt::OrSet),
        of::<arbitrary::RollupMapModel>(Crdt::RollupMap),
    ]
}

fn batch() -> impl Strategy<Value = DeltaBatch> {
    (0usize..4, 1u64..1_000_000, 1usize..8).prop_flat_map(|(r, first, n)| {
        let rep = replica(r);
        let events: Vec<_> = (0..n as u64)
            .map(|i| event(Dot::new(rep.clone(), first + i)))
            .collect();
        (
            Just(rep),
            Just(first),
            events,
            // Which seqs were dropped at the edge, and why.
            prop::collection::vec(
                prop::option::weighted(0.2, prop::sample::select(DropReason::ALL.to_vec())),
                n,
            ),
            prop::collection::vec(("[a-z./-]{1,12}", crdt()), 0..4),
        )
            .prop_map(|(rep, first, events, drops, deltas)| {
                let mut b = BatchBuilder::new(rep, first, EventLimits::default());
                let mut deltas = deltas.into_iter();
                for (e, drop) in events.into_iter().zip(drops) {
                    if let Some(reason) = drop {
                        let seq = e.dot.seq;
                        let one = SeqRange::new(seq, seq).expect("seq >= 1");
                        b.push_dropped(one, reason).expect("next seq");
                        continue;
                    }
                    // Attach the deltas to the first event; the kinds of a key must agree.
                    let mut seen: BTreeMap<String, Crdt> = BTreeMap::new();
                    for (k, d) in deltas.by_ref() {
                        seen.entry(k).or_insert(d);
                    }
                    b.push(e, seen).expect("generated events are valid");
                }
                b.finish().expect("non-empty")
            })
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn batch_round_trips_byte_for_byte(b in batch()) {
        let c = codec();
        let bytes = c.encode_batch(&b).unwrap();
        let decoded = c.decode_batch(&bytes).unwrap();
        // Re-encoding what was decoded (its maps rebuilt with other hashers) gives the same
        // bytes: encoding is deterministic.
        prop_assert_eq!(c.encode_batch(&decoded).unwrap(), bytes);
        prop_assert_eq!(decoded, b);
    }

    #[test]
    fn event_round_trips_in_both_framings(e in event(Dot::new(replica(1), 42)), id in any::<u32>()) {
        let mut c = codec();
        c.register_confluent_id(id, MessageKind::Event);
        for framing in [Framing::SingleObject, Framing::Confluent { schema_id: id }] {
            let bytes = c.encode_event(&e, framing).unwrap();
            prop_assert_eq!(c.decode_event(&bytes).unwrap(), e.clone());
        }
    }

    #[test]
    fn spool_record_round_trips(
        e in event(Dot::new(replica(2), 9)),
        deltas in prop::collection::vec(("[a-z./-]{1,12}", crdt()), 0..3),
    ) {
        let c = codec();
        let bytes = c.encode_spool_record(&e, &deltas).unwrap();
        prop_assert_eq!(c.decode_spool_record(&bytes, e.dot.clone()).unwrap(), (e, deltas));
    }

    #[test]
    fn state_record_round_trips_with_its_digest(key in "[a-z./-]{1,20}", state in crdt(), t in 0u64..1<<40) {
        let c = codec();
        let vv: VersionVector = [(replica(0), 3), (replica(2), 9)].into_iter().collect();
        let rec = StateRecord { key, state, version_vector: vv, emitted_at_ms: t };
        let bytes = c.encode_state_record(&rec, Framing::SingleObject).unwrap();
        prop_assert_eq!(c.decode_state_record(&bytes).unwrap(), rec);
    }

    #[test]
    fn random_bytes_are_rejected_by_every_decoder(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let c = codec();
        prop_assert!(c.decode_batch(&bytes).is_err());
        prop_assert!(c.decode_event(&bytes).is_err());
        prop_assert!(c.decode_ack(&bytes).is_err());
        prop_assert!(c.decode_state_record(&bytes).is_err());
        prop_assert!(c.decode_dead_letter(&bytes).is_err());
        prop_assert!(c.decode_spool_record(&bytes, Dot::new(replica(0), 1)).is_err());
    }

    #[test]
    fn random_bytes_behind_a_valid_header_are_rejected(
        kind in prop::sample::select(MessageKind::ALL.to_vec()),
        tail in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        // Get past the framing so the Avro decoder itself sees garbage.
        let c = codec();
        let mut bytes = vec![0xC3, 0x01];
        bytes.extend_from_slice(&c.fingerprint(kind).to_le_bytes());
        bytes.extend_from_slice(&tail);
        let _ = c.decode_event(&bytes);
        let _ = c.decode_ack(&bytes);
        let _ = c.decode_state_record(&bytes);
        let _ = c.decode_dead_letter(&bytes);
        let packed = zstd::bulk::compress(&bytes, 1).unwrap();
        let _ = c.decode_batch(&packed);
    }

    #[test]
    fn corrupted_batches_never_panic_and_never_decode_to_something_else_unchecked(
        b in batch(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4),
    ) {
        let c = codec();
        // Corrupt the uncompressed datum, then recompress: exercises the Avro decoder and
        // every validation behind it rather than zstd's checksum.
        let packed = c.encode_batch(&b).unwrap();
        let mut plain = zstd::stream::decode_all(&packed[..]).unwrap();
        for (i, x) in flips {
            let at = i.index(plain.len());
            plain[at] ^= x;
        }
        let repacked = zstd::bulk::compress(&plain, 1).unwrap();
        if let Ok(d) = c.decode_batch(&repacked) {
            // Whatever decodes is a well-formed batch (DeltaBatch::new ran on it).
            prop_assert!(d.first_seq() >= 1);
            let dropped: u64 = d.dropped().iter().map(|x| x.range.len()).sum();
            prop_assert_eq!(d.events().len() as u64 + dropped, d.last_seq() - d.first_seq() + 1);
        }
    }

    #[test]
    fn checking_a_batch_agrees_with_decoding_it(
        b in batch(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 0..3),
        cut in any::<prop::sample::Index>(),
    ) {
        let c = codec();
        let packed = c.encode_batch(&b).unwrap();
        prop_assert_eq!(c.check_batch(&packed).unwrap(), (b.replica().clone(), b.first_seq()));
        let mut plain = zstd::stream::decode_all(&packed[..]).unwrap();
        let flipped = !flips.is_empty();
        for (i, x) in flips {
            let at = i.index(plain.len());
            plain[at] ^= x;
        }
        if !flipped {
            // A truncated datum is never well-formed.
            plain.truncate(cut.index(plain.len()));
        }
        let repacked = zstd::bulk::compress(&plain, 1).unwrap();
        // Never a panic; whatever decodes also checks, with the same identity.
        let checked = c.check_batch(&repacked);
        if let Ok(d) = c.decode_batch(&repacked) {
            prop_assert_eq!(checked.unwrap(), (d.replica().clone(), d.first_seq()));
        } else if !flipped {
            prop_assert!(checked.is_err(), "a truncated batch passed the check");
        }
    }

    #[test]
    fn every_truncation_is_rejected(e in event(Dot::new(replica(0), 7))) {
        let c = codec();
        let bytes = c.encode_event(&e, Framing::SingleObject).unwrap();
        for cut in 0..bytes.len() {
            prop_assert!(c.decode_event(&bytes[..cut]).is_err(), "prefix of {} accepted", cut);
        }
    }
}

#[test]
fn ack_and_dead_letter_round_trip() {
    let c = codec();
    let ack = Ack {
        replica: replica(3),
        watermark: 1234,
        acked_at_ms: 1_700_000_000_000,
    };
    assert_eq!(c.decode_ack(&c.encode_ack(&ack).unwrap()).unwrap(), ack);
    for reason in DeadLetterReason::ALL {
        let d = DeadLetter {
            reason,
            detail: "batch names another device".into(),
            source: "mqtt:edgesync/v1/pump-1/batch".into(),
            device: Some("pump-1".into()),
            received_at_ms: 5,
            payload: vec![0, 1, 2, 255],
        };
        let bytes = c.encode_dead_letter(&d, Framing::SingleObject).unwrap();
        assert_eq!(c.decode_dead_letter(&bytes).unwrap(), d);
    }
}

#[test]
fn a_dead_letter_keeps_the_first_64_kib_of_a_long_input_and_says_how_long_it_was() {
    let c = codec();
    let d = DeadLetter {
        reason: DeadLetterReason::Oversize,
        detail: "over the limit".into(),
        source: "mqtt:edgesync/v1/pump-1/batch".into(),
        device: Some("pump-1".into()),
        received_at_ms: 5,
        payload: (0..100_000u32).map(|i| i as u8).collect(),
    };
    let bytes = c.encode_dead_letter(&d, Framing::SingleObject).unwrap();
    assert!(bytes.len() < 70_000, "{}", bytes.len());
    let got = c.decode_dead_letter(&bytes).unwrap();
    assert_eq!(
        got.payload,
        d.payload[..edgesync_schemas::DEAD_LETTER_MAX_PAYLOAD]
    );
    assert_eq!(
        got.detail,
        "over the limit (payload: the first 65536 of 100000 bytes)"
    );
}

#[test]
fn a_reader_on_the_old_schema_reads_data_with_an_added_optional_field() {
    use apache_avro::types::Value as Avro;
    // Release N+1 adds `unit` (optional, default null) to Event; release N must still read it.
    let mut v2: serde_json_like::Json = serde_json_like::parse(MessageKind::Event.avsc());
    v2.add_field(r#"{"name": "unit", "type": ["null", "string"], "default": null}"#);
    let v2_json = v2.to_string();
    let v2_schema = apache_avro::Schema::parse_str(&v2_json).unwrap();

    let datum = Avro::Record(vec![
        ("device".into(), Avro::String("pump-1".into())),
        ("incarnation".into(), Avro::Long(9)),
        ("seq".into(), Avro::Long(3)),
        ("hlc_wall_ms".into(), Avro::Long(1000)),
        ("hlc_logical".into(), Avro::Long(2)),
        ("stream".into(), Avro::String("pump.telemetry".into())),
        ("schema_version".into(), Avro::Long(1)),
        (
            "fields".into(),
            Avro::Map(
                [(
                    "bar".to_string(),
                    Avro::Union(0, Box::new(Avro::Double(2.5))),
                )]
                .into(),
            ),
        ),
        ("tags".into(), Avro::Map(Default::default())),
        (
            "unit".into(),
            Avro::Union(1, Box::new(Avro::String("kPa".into()))),
        ),
    ]);
    // The spec's fingerprint (apache-avro's own differs for a schema with a logical type).
    let fp = codec()
        .register_writer_schema(MessageKind::Event, &v2_json)
        .unwrap();
    let mut bytes = vec![0xC3, 0x01];
    bytes.extend_from_slice(&fp.to_le_bytes());
    apache_avro::writer::datum::GenericDatumWriter::builder(&v2_schema)
        .build()
        .unwrap()
        .write_value(&mut bytes, datum)
        .unwrap();

    let mut old = codec();
    // Unknown until the writer schema is known (from a registry, or shipped with the release).
    assert!(matches!(
        old.decode_event(&bytes),
        Err(DecodeError::UnknownFingerprint(_))
    ));
    old.register_writer_schema(MessageKind::Event, &v2_json)
        .unwrap();
    let e = old.decode_event(&bytes).unwrap();
    assert_eq!(e.dot.seq, 3);
    assert_eq!(e.stream, "pump.telemetry");
    assert_eq!(e.fields["bar"], edgesync_core::Value::Double(2.5));
}

#[test]
fn the_analytics_schemas_fingerprints_are_pinned() {
    // The single-object fingerprint hashes a schema's Parsing Canonical Form, which keeps
    // names, types and order but drops docs and logical types: adding those (as this release
    // did) leaves data written by earlier releases readable. A change here is a new version of
    // the schema, to be made under the rules in schemas/README.md. Values as fastavro computes
    // them, so the outside reader agrees.
    let c = codec();
    for (kind, hex) in [
        (MessageKind::Event, "6571ca3623674e7a"),
        (MessageKind::StateRecord, "9b29f443a43012b4"),
        (MessageKind::DeadLetter, "7bb71f13148b1b94"),
        (MessageKind::Ack, "780deb49904e0978"),
        (MessageKind::Completeness, "bd6211f111b1a9b4"),
    ] {
        let got: String = c
            .fingerprint(kind)
            .to_le_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(got, hex, "{kind:?}");
    }
}

#[test]
fn a_completeness_record_round_trips_with_its_derived_fields() {
    use edgesync_schemas::{Completeness, ReplicaCompleteness};
    let c = codec();
    let line = |inc: u64, missing: Vec<SeqRange>, gap: Option<u64>| ReplicaCompleteness {
        incarnation: edgesync_core::id::Incarnation::new(inc).unwrap(),
        watermark: 4,
        max_seen: 10,
        missing,
        gap_since_ms: gap,
        pending: 3,
        dropped: BTreeMap::from([("QUOTA".to_owned(), 2)]),
        clock_skew_ms: Some(-1_500),
        clock_skewed: false,
        wire_bytes: 48_213,
    };
    let rec = Completeness {
        device: edgesync_core::DeviceId::new("pump-7").unwrap(),
        replicas: vec![
            line(
                1,
                vec![SeqRange::new(5, 6).unwrap(), SeqRange::new(9, 9).unwrap()],
                Some(1_000),
            ),
            line(2, vec![], None),
        ],
        emitted_at_ms: 61_000,
    };
    assert_eq!(rec.replicas[0].completeness(), 0.7);
    for framing in [Framing::SingleObject, Framing::Confluent { schema_id: 3 }] {
        let mut c = codec();
        c.register_confluent_id(3, MessageKind::Completeness);
        let bytes = c.encode_completeness(&rec, framing).unwrap();
        assert_eq!(c.decode_completeness(&bytes).unwrap(), rec);
    }
    // What a reader without this crate sees: the derived gap age and completeness.
    let bytes = c.encode_completeness(&rec, Framing::SingleObject).unwrap();
    let schema = apache_avro::Schema::parse_str(MessageKind::Completeness.avsc()).unwrap();
    let value = apache_avro::reader::datum::GenericDatumReader::builder(&schema)
        .build()
        .unwrap()
        .read_value(&mut &bytes[10..])
        .unwrap();
    let text = format!("{value:?}");
    assert!(
        text.contains("(\"gap_age_ms\", Union(1, Long(60000)))"),
        "{text}"
    );
    assert!(text.contains("(\"completeness\", Double(0.7))"), "{text}");
}

#[test]
fn confluent_ids_of_older_versions_are_read_and_outputs_take_the_registry_id() {
    let mut c = codec();
    assert_eq!(c.output_framing(MessageKind::Event), Framing::SingleObject);
    let e = Event {
        dot: Dot::new(replica(1), 3),
        hlc: Hlc::new(1_700_000_000_000, 2),
        stream: "pump.telemetry".into(),
        schema_version: 1,
        fields: BTreeMap::from([("bar".into(), edgesync_core::Value::Double(2.5))]),
        tags: BTreeMap::new(),
    };
    let single = c.encode_event(&e, Framing::SingleObject).unwrap();
    assert_eq!(&*c.as_output(MessageKind::Event, &single), &single[..]);

    // Version 1 of the subject is this release's schema (id 7); version 2 (id 8), a later
    // release's, adds an optional field. Both are read; outputs carry id 7.
    let mut v2: serde_json_like::Json = serde_json_like::parse(MessageKind::Event.avsc());
    v2.add_field(r#"{"name": "unit", "type": ["null", "string"], "default": null}"#);
    c.register_confluent_writer(7, MessageKind::Event, MessageKind::Event.avsc())
        .unwrap();
    c.register_confluent_writer(8, MessageKind::Event, &v2.to_string())
        .unwrap();
    c.use_registry_id(MessageKind::Event, 7);
    assert_eq!(
        c.output_framing(MessageKind::Event),
        Framing::Confluent { schema_id: 7 }
    );
    let framed = c.as_output(MessageKind::Event, &single).into_owned();
    assert_eq!(framed[..5], [0, 0, 0, 0, 7]);
    assert_eq!(framed[5..], single[10..]);
    assert_eq!(
        framed,
        c.encode_event(&e, c.output_framing(MessageKind::Event))
            .unwrap()
    );
    assert_eq!(c.decode_event(&framed).unwrap(), e);
    // The same datum under id 8 followed by a null `unit` (union branch 0) is v2's encoding.
    let mut newer = vec![0, 0, 0, 0, 8];
    newer.extend_from_slice(&single[10..]);
    newer.push(0);
    assert_eq!(c.decode_event(&newer).unwrap(), e);
    let mut unknown = framed.clone();
    unknown[4] = 9;
    assert!(matches!(
        c.decode_event(&unknown),
        Err(DecodeError::UnknownSchemaId(9))
    ));
    // Single-object records from before the switch stay readable.
    assert_eq!(c.decode_event(&single).unwrap(), e);
    // The dot is read under any header, known or not: what the exactly-once read-back needs.
    let fresh = codec();
    for bytes in [&single, &framed, &newer, &unknown] {
        assert_eq!(fresh.event_dot(bytes).unwrap(), e.dot);
    }
    let mut unknown_fingerprint = single.clone();
    unknown_fingerprint[2] ^= 0xFF;
    assert_eq!(fresh.event_dot(&unknown_fingerprint).unwrap(), e.dot);
    assert!(fresh.event_dot(&[0, 0, 0]).is_err());
    assert!(fresh.event_dot(&framed[..7]).is_err());
}

#[test]
fn oversized_payloads_and_zip_bombs_are_rejected() {
    let c = Codec::new(Limits::default()).unwrap();
    let big = vec![0u8; Limits::default().max_payload_bytes + 1];
    assert!(matches!(
        c.decode_batch(&big),
        Err(DecodeError::TooLarge {
            what: "payload",
            ..
        })
    ));
    // 64 MiB of zeros compresses to a few KiB: within the payload limit, over the decoded one.
    let bomb = zstd::bulk::compress(&vec![0u8; 64 << 20], 19).unwrap();
    assert!(bomb.len() < Limits::default().max_payload_bytes);
    assert!(matches!(
        c.decode_batch(&bomb),
        Err(DecodeError::TooLarge {
            what: "decompressed payload",
            ..
        })
    ));
}

/// At production limits: a batch of 2,000 events at the per-event maximum of fields, big
/// enough that its compressed size approaches the payload limit, round-trips; the encoder
/// refuses (with a typed error, so the agent can split the batch) what the decoder would refuse.
#[test]
fn batches_at_the_production_size_limits() {
    let c = codec();
    let r = replica(0);
    let limits = EventLimits::default();
    let mut b = edgesync_core::BatchBuilder::new(r.clone(), i64::MAX as u64 - 1_999, limits);
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for i in 0..2_000u64 {
        let fields = (0..limits.max_fields)
            .map(|f| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (format!("f{f}"), edgesync_core::Value::Long(x as i64))
            })
            .collect();
        let e = Event {
            dot: Dot::new(r.clone(), i64::MAX as u64 - 1_999 + i),
            hlc: Hlc::new(u64::MAX >> 1, u32::MAX),
            stream: "s".repeat(edgesync_core::event::STREAM_NAME_MAX_LEN),
            schema_version: u32::MAX,
            fields,
            tags: BTreeMap::new(),
        };
        b.push(e, []).unwrap();
    }
    let batch = b.finish().unwrap();
    assert_eq!(batch.last_seq(), i64::MAX as u64, "the last valid seq");
    // 128k random longs do not compress below the 1 MiB payload limit.
    match c.encode_batch(&batch) {
        Err(edgesync_schemas::EncodeError::TooLarge {
            what: "batch",
            len,
            limit,
        }) => {
            assert!(len > limit && limit == 1 << 20)
        }
        other => panic!("expected TooLarge, got {:?}", other.map(|b| b.len())),
    }
    // Half of it fits and round-trips; a codec with half the limit refuses it both ways.
    let half = DeltaBatch::new(
        r.clone(),
        batch.first_seq(),
        batch.events()[..1_000].to_vec(),
        BTreeMap::new(),
        &limits,
    )
    .unwrap();
    let bytes = c.encode_batch(&half).unwrap();
    assert_eq!(c.decode_batch(&bytes).unwrap(), half);
    let small = Codec::new(Limits {
        max_payload_bytes: bytes.len() / 2,
        ..Limits::default()
    })
    .unwrap();
    assert!(matches!(
        small.encode_batch(&half),
        Err(edgesync_schemas::EncodeError::TooLarge { .. })
    ));
    assert!(matches!(
        small.decode_batch(&bytes),
        Err(DecodeError::TooLarge {
            what: "payload",
            ..
        })
    ));
}

#[test]
fn framing_errors_are_typed() {
    let c = codec();
    assert!(matches!(
        c.decode_event(&[0xC3]),
        Err(DecodeError::Truncated { .. })
    ));
    assert!(matches!(
        c.decode_event(&[7, 7, 7]),
        Err(DecodeError::BadFraming { .. })
    ));
    let ack = c
        .encode_ack(&Ack {
            replica: replica(0),
            watermark: 1,
            acked_at_ms: 1,
        })
        .unwrap();
    assert!(matches!(
        c.decode_event(&ack),
        Err(DecodeError::WrongKind {
            expected: MessageKind::Event,
            found: MessageKind::Ack
        })
    ));
}

/// Just enough JSON handling to add a field to a schema in a test, without a JSON dependency.
mod serde_json_like {
    pub struct Json(String);
    pub fn parse(s: &str) -> Json {
        Json(s.to_owned())
    }
    impl Json {
        pub fn add_field(&mut self, field: &str) {
            // The schema's field list ends with the last `]` before the record's closing `}`.
            let end = self.0.rfind(']').expect("fields array");
            self.0.insert_str(end, &format!(",\n    {field}\n  "));
        }
    }
    impl std::fmt::Display for Json {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.0)
        }
    }
}

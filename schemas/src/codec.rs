//! The codec: framing, compression, limits, and the typed encode/decode API.

use std::collections::HashMap;
use std::io::Read;

use apache_avro::rabin::Rabin;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::types::Value as Avro;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::Schema;
use edgesync_core::crdt::Crdt;
use edgesync_core::{DeltaBatch, Dot, Event, EventLimits, ReplicaId, StateDigest, VersionVector};

use crate::convert;
use crate::error::{DecodeError, EncodeError};
use crate::records::{Ack, DeadLetter, StateRecord};
use crate::value::{long_u64, Rec};
use crate::{MessageKind, SchemaError};

/// Single-object encoding marker (Avro spec).
pub const SINGLE_OBJECT_MAGIC: [u8; 2] = [0xC3, 0x01];
/// Single-object header: magic + 8-byte CRC-64-AVRO fingerprint (little-endian).
pub const SINGLE_OBJECT_HEADER_LEN: usize = 10;
/// Confluent wire format marker.
pub const CONFLUENT_MAGIC: u8 = 0;
/// Confluent header: magic + 4-byte big-endian schema id.
pub const CONFLUENT_HEADER_LEN: usize = 5;

/// How a datum is framed on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// Avro single-object encoding: `C3 01`, schema fingerprint, datum. Self-describing without
    /// a registry; used for MQTT payloads and as the default on Kafka.
    SingleObject,
    /// Confluent Schema Registry wire format: `00`, schema id, datum.
    Confluent {
        /// The id the registry assigned to the writer schema.
        schema_id: u32,
    },
}

/// Size limits enforced by every decoder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest payload accepted as received (compressed for batches).
    pub max_payload_bytes: usize,
    /// Largest datum after decompression; also bounds any single allocation while decoding.
    pub max_decoded_bytes: usize,
    /// Limits on each event.
    pub event: EventLimits,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_payload_bytes: 1 << 20,
            max_decoded_bytes: 8 << 20,
            event: EventLimits::default(),
        }
    }
}

#[derive(Debug)]
struct Known {
    kind: MessageKind,
    schema: Schema,
    fingerprint: u64,
}

/// Encoder/decoder for every edgesync message. Holds the parsed schemas; cheap to share.
#[derive(Debug)]
pub struct Codec {
    limits: Limits,
    zstd_level: i32,
    /// Current (reader) schema per kind, indexed by [`MessageKind::index`].
    current: Vec<Known>,
    /// Every writer schema this codec can decode, by fingerprint.
    writers: HashMap<u64, Known>,
    /// Writer schemas by Confluent schema id.
    confluent: HashMap<u32, Known>,
}

fn fingerprint(schema: &Schema) -> u64 {
    let fp = schema.fingerprint::<Rabin>();
    let mut b = [0u8; 8];
    for (dst, src) in b.iter_mut().zip(fp.bytes.iter()) {
        *dst = *src;
    }
    u64::from_le_bytes(b)
}

impl Codec {
    /// A codec with the schemas of this release and `limits`.
    ///
    /// Also caps apache-avro's process-wide allocation limit at `limits.max_decoded_bytes` (the
    /// first codec created in a process sets it; later ones keep it).
    pub fn new(limits: Limits) -> Result<Self, SchemaError> {
        apache_avro::util::max_allocation_bytes(limits.max_decoded_bytes);
        let mut codec = Self {
            limits,
            zstd_level: 3,
            current: Vec::with_capacity(MessageKind::ALL.len()),
            writers: HashMap::new(),
            confluent: HashMap::new(),
        };
        for kind in MessageKind::ALL {
            let schema = Schema::parse_str(kind.avsc()).map_err(|e| SchemaError::Parse {
                kind,
                source: Box::new(e),
            })?;
            let fingerprint = fingerprint(&schema);
            codec.writers.insert(
                fingerprint,
                Known {
                    kind,
                    schema: schema.clone(),
                    fingerprint,
                },
            );
            codec.current.push(Known {
                kind,
                schema,
                fingerprint,
            });
        }
        Ok(codec)
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Sets the zstd level for batches (default 3).
    pub fn with_zstd_level(mut self, level: i32) -> Self {
        self.zstd_level = level;
        self
    }

    /// Fingerprint (CRC-64-AVRO) of the current schema of `kind`.
    pub fn fingerprint(&self, kind: MessageKind) -> u64 {
        self.current(kind).fingerprint
    }

    /// Makes another version of `kind`'s schema decodable (data written by an older or newer
    /// release); data is resolved into the current schema. Returns its fingerprint.
    pub fn register_writer_schema(
        &mut self,
        kind: MessageKind,
        json: &str,
    ) -> Result<u64, SchemaError> {
        let schema = Schema::parse_str(json).map_err(|e| SchemaError::Parse {
            kind,
            source: Box::new(e),
        })?;
        let fingerprint = fingerprint(&schema);
        self.writers.insert(
            fingerprint,
            Known {
                kind,
                schema,
                fingerprint,
            },
        );
        Ok(fingerprint)
    }

    /// Maps a Confluent schema id to the current schema of `kind` (as registered in a registry).
    pub fn register_confluent_id(&mut self, schema_id: u32, kind: MessageKind) {
        let k = self.current(kind);
        let known = Known {
            kind,
            schema: k.schema.clone(),
            fingerprint: k.fingerprint,
        };
        self.confluent.insert(schema_id, known);
    }

    fn current(&self, kind: MessageKind) -> &Known {
        // `new` pushes one schema per kind in `MessageKind::ALL` order.
        &self.current[kind.index()]
    }

    // ---- framing -----------------------------------------------------------------------

    fn write_datum(
        &self,
        kind: MessageKind,
        value: &Avro,
        out: &mut Vec<u8>,
    ) -> Result<(), EncodeError> {
        let k = self.current(kind);
        GenericDatumWriter::builder(&k.schema)
            .build()?
            .write_value_ref(out, value)?;
        Ok(())
    }

    fn encode_framed(
        &self,
        kind: MessageKind,
        value: &Avro,
        framing: Framing,
    ) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::with_capacity(256);
        match framing {
            Framing::SingleObject => {
                out.extend_from_slice(&SINGLE_OBJECT_MAGIC);
                out.extend_from_slice(&self.fingerprint(kind).to_le_bytes());
            }
            Framing::Confluent { schema_id } => {
                out.push(CONFLUENT_MAGIC);
                out.extend_from_slice(&schema_id.to_be_bytes());
            }
        }
        self.write_datum(kind, value, &mut out)?;
        Ok(out)
    }

    fn read_datum(
        &self,
        writer: &Known,
        kind: MessageKind,
        datum: &[u8],
    ) -> Result<Avro, DecodeError> {
        if writer.kind != kind {
            return Err(DecodeError::WrongKind {
                expected: kind,
                found: writer.kind,
            });
        }
        let current = self.current(kind);
        let reader_schema = (writer.fingerprint != current.fingerprint).then_some(&current.schema);
        let mut cursor = datum;
        let value = GenericDatumReader::builder(&writer.schema)
            .maybe_reader_schema(reader_schema)
            .build()?
            .read_value(&mut cursor)?;
        if !cursor.is_empty() {
            return Err(DecodeError::TrailingBytes(cursor.len()));
        }
        Ok(value)
    }

    fn decode_framed(&self, kind: MessageKind, bytes: &[u8]) -> Result<Avro, DecodeError> {
        if bytes.len() > self.limits.max_decoded_bytes {
            return Err(DecodeError::TooLarge {
                what: "datum",
                len: bytes.len(),
                limit: self.limits.max_decoded_bytes,
            });
        }
        match bytes {
            [0xC3, 0x01, rest @ ..] => {
                let Some((fp, datum)) = rest.split_first_chunk::<8>() else {
                    return Err(DecodeError::Truncated {
                        len: bytes.len(),
                        needed: SINGLE_OBJECT_HEADER_LEN,
                    });
                };
                let fp = u64::from_le_bytes(*fp);
                let writer = self
                    .writers
                    .get(&fp)
                    .ok_or(DecodeError::UnknownFingerprint(fp))?;
                self.read_datum(writer, kind, datum)
            }
            [CONFLUENT_MAGIC, rest @ ..] => {
                let Some((id, datum)) = rest.split_first_chunk::<4>() else {
                    return Err(DecodeError::Truncated {
                        len: bytes.len(),
                        needed: CONFLUENT_HEADER_LEN,
                    });
                };
                let id = u32::from_be_bytes(*id);
                let writer = self
                    .confluent
                    .get(&id)
                    .ok_or(DecodeError::UnknownSchemaId(id))?;
                self.read_datum(writer, kind, datum)
            }
            [0xC3] => Err(DecodeError::Truncated {
                len: 1,
                needed: SINGLE_OBJECT_HEADER_LEN,
            }),
            _ => Err(DecodeError::BadFraming {
                found: bytes.iter().take(2).copied().collect(),
            }),
        }
    }

    fn encode_crdt(&self, c: &Crdt) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::with_capacity(64);
        self.write_datum(MessageKind::CrdtState, &convert::crdt_to_avro(c), &mut out)?;
        Ok(out)
    }

    fn decode_crdt(&self, datum: &[u8]) -> Result<Crdt, DecodeError> {
        let current = self.current(MessageKind::CrdtState);
        let value = self.read_datum(current, MessageKind::CrdtState, datum)?;
        convert::crdt_from_avro(value)
    }

    // ---- delta batches -----------------------------------------------------------------

    /// Encodes a batch for MQTT: zstd over the single-object encoding.
    pub fn encode_batch(&self, batch: &DeltaBatch) -> Result<Vec<u8>, EncodeError> {
        let events = batch
            .events()
            .iter()
            .map(convert::batch_event_to_avro)
            .collect();
        let mut state = Vec::with_capacity(batch.state().len());
        for (key, c) in batch.state() {
            state.push(crate::value::record(vec![
                ("key", Avro::String(key.clone())),
                ("crdt", Avro::Bytes(self.encode_crdt(c)?)),
            ]));
        }
        let value = crate::value::replica_record(
            batch.replica(),
            [
                ("first_seq", long_u64(batch.first_seq())),
                ("events", Avro::Array(events)),
                ("state", Avro::Array(state)),
            ],
        );
        let plain = self.encode_framed(MessageKind::DeltaBatch, &value, Framing::SingleObject)?;
        if plain.len() > self.limits.max_decoded_bytes {
            return Err(EncodeError::TooLarge {
                what: "batch (uncompressed)",
                len: plain.len(),
                limit: self.limits.max_decoded_bytes,
            });
        }
        let packed =
            zstd::bulk::compress(&plain, self.zstd_level).map_err(EncodeError::Compress)?;
        if packed.len() > self.limits.max_payload_bytes {
            return Err(EncodeError::TooLarge {
                what: "batch",
                len: packed.len(),
                limit: self.limits.max_payload_bytes,
            });
        }
        Ok(packed)
    }

    fn decompress(&self, bytes: &[u8]) -> Result<Vec<u8>, DecodeError> {
        if bytes.len() > self.limits.max_payload_bytes {
            return Err(DecodeError::TooLarge {
                what: "payload",
                len: bytes.len(),
                limit: self.limits.max_payload_bytes,
            });
        }
        let limit = self.limits.max_decoded_bytes;
        let mut dec =
            zstd::stream::read::Decoder::with_buffer(bytes).map_err(DecodeError::Decompress)?;
        // Bound the decoder's window so a crafted frame header cannot demand a huge buffer.
        let window_log = usize::BITS - limit.max(1 << 10).leading_zeros();
        dec.window_log_max(window_log.clamp(10, 27))
            .map_err(DecodeError::Decompress)?;
        let mut out = Vec::new();
        dec.take(limit as u64 + 1)
            .read_to_end(&mut out)
            .map_err(DecodeError::Decompress)?;
        if out.len() > limit {
            return Err(DecodeError::TooLarge {
                what: "decompressed payload",
                len: out.len(),
                limit,
            });
        }
        Ok(out)
    }

    /// Decodes and validates a batch received over MQTT.
    pub fn decode_batch(&self, bytes: &[u8]) -> Result<DeltaBatch, DecodeError> {
        let plain = self.decompress(bytes)?;
        let mut r = Rec::new(
            "DeltaBatch",
            self.decode_framed(MessageKind::DeltaBatch, &plain)?,
        )?;
        let replica: ReplicaId = r.replica()?;
        let first_seq = r.unsigned("first_seq")?;
        let raw_events = r.array("events")?;
        let mut events = Vec::with_capacity(raw_events.len());
        for (i, v) in raw_events.into_iter().enumerate() {
            let seq = first_seq.saturating_add(i as u64);
            events.push(convert::batch_event_from_avro(
                v,
                Dot::new(replica.clone(), seq),
            )?);
        }
        let mut state = std::collections::BTreeMap::new();
        for v in r.array("state")? {
            let mut s = Rec::new("StateDelta", v)?;
            let key = s.string("key")?;
            let c = self.decode_crdt(&s.bytes("crdt")?)?;
            // A key repeated inside one batch is joined, exactly as the builder would have.
            match state.get_mut(&key) {
                None => {
                    state.insert(key, c);
                }
                Some(existing) => {
                    let existing: &mut Crdt = existing;
                    existing.join(&c).map_err(|source| {
                        DecodeError::Batch(edgesync_core::BatchError::Kind {
                            key: key.clone(),
                            source,
                        })
                    })?;
                }
            }
        }
        Ok(DeltaBatch::new(
            replica,
            first_seq,
            events,
            state,
            &self.limits.event,
        )?)
    }

    // ---- events ------------------------------------------------------------------------

    /// Encodes an event for the events topic.
    pub fn encode_event(&self, e: &Event, framing: Framing) -> Result<Vec<u8>, EncodeError> {
        self.encode_framed(MessageKind::Event, &convert::event_to_avro(e), framing)
    }

    /// Decodes and validates an event.
    pub fn decode_event(&self, bytes: &[u8]) -> Result<Event, DecodeError> {
        let e = convert::event_from_avro(self.decode_framed(MessageKind::Event, bytes)?)?;
        e.validate(&self.limits.event).map_err(|source| {
            DecodeError::Batch(edgesync_core::BatchError::Event { index: 0, source })
        })?;
        Ok(e)
    }

    // ---- acks, state records, dead letters ---------------------------------------------

    /// Encodes an ack (single-object; MQTT and Kafka).
    pub fn encode_ack(&self, a: &Ack) -> Result<Vec<u8>, EncodeError> {
        self.encode_framed(MessageKind::Ack, &a.to_avro(), Framing::SingleObject)
    }

    /// Decodes an ack.
    pub fn decode_ack(&self, bytes: &[u8]) -> Result<Ack, DecodeError> {
        Ack::from_avro(self.decode_framed(MessageKind::Ack, bytes)?)
    }

    /// Encodes a converged state record (digest, readable value and full state included).
    pub fn encode_state_record(
        &self,
        s: &StateRecord,
        framing: Framing,
    ) -> Result<Vec<u8>, EncodeError> {
        let crdt = self.encode_crdt(&s.state)?;
        self.encode_framed(MessageKind::StateRecord, &s.to_avro(crdt), framing)
    }

    /// Decodes a state record, checking its digest against its full state.
    pub fn decode_state_record(&self, bytes: &[u8]) -> Result<StateRecord, DecodeError> {
        let mut r = Rec::new(
            "StateRecord",
            self.decode_framed(MessageKind::StateRecord, bytes)?,
        )?;
        let state = self.decode_crdt(&r.bytes("crdt")?)?;
        StateRecord::from_avro(&mut r, state)
    }

    /// Encodes a dead letter.
    pub fn encode_dead_letter(
        &self,
        d: &DeadLetter,
        framing: Framing,
    ) -> Result<Vec<u8>, EncodeError> {
        self.encode_framed(MessageKind::DeadLetter, &d.to_avro(), framing)
    }

    /// Decodes a dead letter.
    pub fn decode_dead_letter(&self, bytes: &[u8]) -> Result<DeadLetter, DecodeError> {
        DeadLetter::from_avro(self.decode_framed(MessageKind::DeadLetter, bytes)?)
    }
}

/// Digest as stored in a state record.
pub(crate) fn digest_of(key: &str, state: &Crdt) -> StateDigest {
    StateDigest::of_state(key, state)
}

/// Version vector entries for a record.
pub(crate) fn vv_to_avro(vv: &VersionVector) -> Avro {
    Avro::Array(
        vv.iter()
            .map(|(r, seq)| crate::value::replica_record(r, [("seq", long_u64(seq))]))
            .collect(),
    )
}

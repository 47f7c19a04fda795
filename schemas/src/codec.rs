//! The codec: framing, compression, limits, and the typed encode/decode API.

use std::collections::HashMap;
use std::sync::OnceLock;

use apache_avro::rabin::Rabin;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::types::Value as Avro;
use apache_avro::Schema;
use edgesync_core::crdt::Crdt;
use edgesync_core::{DeltaBatch, Dot, Event, EventLimits, ReplicaId};

use crate::convert;
use crate::error::{DecodeError, EncodeError};
use crate::records::{Ack, Completeness, DeadLetter, StateRecord, DEAD_LETTER_MAX_PAYLOAD};
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

/// The built-in schemas, parsed once per process and kept for its lifetime, so that codecs can
/// hold ready-built (resolved) readers and writers instead of rebuilding them per message.
static BUILTIN: OnceLock<Vec<&'static Schema>> = OnceLock::new();

fn builtin() -> Result<&'static [&'static Schema], SchemaError> {
    if let Some(v) = BUILTIN.get() {
        return Ok(v);
    }
    let mut v: Vec<&'static Schema> = Vec::with_capacity(MessageKind::ALL.len());
    for kind in MessageKind::ALL {
        let schema = Schema::parse_str(kind.avsc()).map_err(|e| SchemaError::Parse {
            kind,
            source: Box::new(e),
        })?;
        v.push(Box::leak(Box::new(schema)));
    }
    Ok(BUILTIN.get_or_init(|| v))
}

fn build_error(kind: MessageKind) -> impl FnOnce(apache_avro::Error) -> SchemaError {
    move |e| SchemaError::Parse {
        kind,
        source: Box::new(e),
    }
}

/// A writer schema this codec can decode, with its reader (resolving into the current schema
/// when it is another version).
struct Known {
    kind: MessageKind,
    /// CRC-64-AVRO of the writer schema.
    fingerprint: u64,
    reader: GenericDatumReader<'static>,
    /// The writer schema, and its plan for checking data without decoding it.
    schema: &'static Schema,
    plan: crate::walk::Plan,
}

impl Known {
    /// A writer schema with its reader, and its plan compiled.
    fn new(
        kind: MessageKind,
        schema: &'static Schema,
        reader: GenericDatumReader<'static>,
    ) -> Result<Self, SchemaError> {
        let resolved =
            apache_avro::schema::ResolvedSchema::new(schema).map_err(build_error(kind))?;
        let plan = crate::walk::Plan::compile(schema, resolved.get_names()).map_err(|e| {
            SchemaError::Check {
                kind,
                detail: e.to_string(),
            }
        })?;
        Ok(Self {
            kind,
            fingerprint: fingerprint(schema),
            reader,
            schema,
            plan,
        })
    }
}

/// The current schema of one kind.
struct Current {
    fingerprint: u64,
    /// Checked against every value in debug builds; the bytes come from [`crate::encode`].
    schema: &'static Schema,
}

/// Encoder/decoder for every edgesync message. Holds ready-built readers and writers.
pub struct Codec {
    limits: Limits,
    zstd_level: i32,
    /// Current schema per kind, indexed by [`MessageKind::index`].
    current: Vec<Current>,
    /// Every writer schema this codec can decode, by fingerprint.
    writers: HashMap<u64, Known>,
    /// Confluent schema ids, each mapped to the fingerprint of a writer schema in `writers`.
    confluent: HashMap<u32, u64>,
    /// How records of each kind are framed on the Kafka topics this process writes for
    /// analytics (indexed by [`MessageKind::index`]): single-object unless a registry gave the
    /// kind an id ([`Codec::use_registry_id`]).
    outputs: Vec<Framing>,
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Codec")
            .field("limits", &self.limits)
            .field("zstd_level", &self.zstd_level)
            .field("writer_schemas", &self.writers.len())
            .field("confluent_ids", &self.confluent)
            .finish()
    }
}

/// Debug builds: the hand-written and the generic reader agree on a datum (both accept it with
/// the same parts, or both refuse it; the errors may name different faults of a datum that has
/// several).
fn same_outcome<T: std::fmt::Debug>(
    what: &str,
    direct: &Result<T, DecodeError>,
    generic: &Result<T, DecodeError>,
) {
    match (direct, generic) {
        (Ok(a), Ok(b)) => assert_eq!(format!("{a:?}"), format!("{b:?}"), "{what}: readers differ"),
        (Err(_), Err(_)) => {}
        (a, b) => panic!("{what}: direct reader gave {a:?}, apache-avro {b:?}"),
    }
}

/// CRC-64-AVRO of `schema`'s Parsing Canonical Form, as the Avro spec (and Java's and
/// fastavro's implementations) define it. apache-avro strips `logicalType` but then leaves
/// `{"type":"long"}` where the spec reduces it to `"long"`, so a schema with a logical type
/// would get a fingerprint no other reader computes; the schema is handed to it with the
/// logical types already stripped (the canonical form drops them anyway).
fn fingerprint(schema: &Schema) -> u64 {
    let stripped = serde_json::to_value(schema)
        .map(without_logical_types)
        .ok()
        .and_then(|json| Schema::parse(&json).ok());
    let fp = stripped.as_ref().unwrap_or(schema).fingerprint::<Rabin>();
    let mut b = [0u8; 8];
    for (dst, src) in b.iter_mut().zip(fp.bytes.iter()) {
        *dst = *src;
    }
    u64::from_le_bytes(b)
}

/// `json` with every `logicalType` attribute removed, and a `{"type": T}` left alone by that
/// reduced to `T` (the spec's [STRIP] and [PRIMITIVES] rules, in that order).
fn without_logical_types(json: serde_json::Value) -> serde_json::Value {
    use serde_json::Value as J;
    match json {
        J::Object(mut map) => {
            let had = map.remove("logicalType").is_some();
            if had && map.len() == 1 {
                if let Some(J::String(t)) = map.get("type") {
                    return J::String(t.clone());
                }
            }
            J::Object(
                map.into_iter()
                    .map(|(k, v)| (k, without_logical_types(v)))
                    .collect(),
            )
        }
        J::Array(items) => J::Array(items.into_iter().map(without_logical_types).collect()),
        other => other,
    }
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
            outputs: vec![Framing::SingleObject; MessageKind::ALL.len()],
        };
        for (kind, schema) in MessageKind::ALL.into_iter().zip(builtin()?.iter().copied()) {
            let fingerprint = fingerprint(schema);
            let reader = GenericDatumReader::builder(schema)
                .build()
                .map_err(build_error(kind))?;
            codec
                .writers
                .insert(fingerprint, Known::new(kind, schema, reader)?);
            codec.current.push(Current {
                fingerprint,
                schema,
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
    ///
    /// The parsed schema is kept for the life of the process (readers borrow it): register the
    /// versions a deployment knows, not one per message.
    pub fn register_writer_schema(
        &mut self,
        kind: MessageKind,
        json: &str,
    ) -> Result<u64, SchemaError> {
        let schema: &'static Schema = Box::leak(Box::new(
            Schema::parse_str(json).map_err(build_error(kind))?,
        ));
        let fingerprint = fingerprint(schema);
        let current = builtin()?[kind.index()];
        let reader = GenericDatumReader::builder(schema)
            .reader_schema(current)
            .build()
            .map_err(build_error(kind))?;
        self.writers
            .insert(fingerprint, Known::new(kind, schema, reader)?);
        Ok(fingerprint)
    }

    /// Maps a Confluent schema id to the current schema of `kind` (as registered in a registry).
    pub fn register_confluent_id(&mut self, schema_id: u32, kind: MessageKind) {
        let fp = self.current(kind).fingerprint;
        self.confluent.insert(schema_id, fp);
    }

    /// Maps a Confluent schema id to a version of `kind`'s schema (one the registry holds under
    /// that id), so that records written with it are read, resolved into the current schema.
    pub fn register_confluent_writer(
        &mut self,
        schema_id: u32,
        kind: MessageKind,
        json: &str,
    ) -> Result<(), SchemaError> {
        match Schema::parse_str(json) {
            Ok(s) if fingerprint(&s) == self.current(kind).fingerprint => {
                self.register_confluent_id(schema_id, kind);
            }
            _ => {
                let fp = self.register_writer_schema(kind, json)?;
                self.confluent.insert(schema_id, fp);
            }
        }
        Ok(())
    }

    /// Frames `kind`'s output records in the Confluent wire format with `schema_id`, the id a
    /// registry gave the current schema of `kind` (and reads that id).
    pub fn use_registry_id(&mut self, kind: MessageKind, schema_id: u32) {
        self.register_confluent_id(schema_id, kind);
        self.outputs[kind.index()] = Framing::Confluent { schema_id };
    }

    /// How `kind`'s output records are framed: [`Framing::SingleObject`] unless
    /// [`Codec::use_registry_id`] set an id.
    pub fn output_framing(&self, kind: MessageKind) -> Framing {
        self.outputs[kind.index()]
    }

    /// `single_object` (a `kind` record this codec encoded with [`Framing::SingleObject`]) as
    /// the output framing of `kind` gives it: the same datum, only the header differs.
    pub fn as_output<'a>(
        &self,
        kind: MessageKind,
        single_object: &'a [u8],
    ) -> std::borrow::Cow<'a, [u8]> {
        match (
            self.output_framing(kind),
            single_object.get(SINGLE_OBJECT_HEADER_LEN..),
        ) {
            (framing @ Framing::Confluent { .. }, Some(datum)) => {
                let mut out = Vec::with_capacity(CONFLUENT_HEADER_LEN + datum.len());
                self.header(kind, framing, &mut out);
                out.extend_from_slice(datum);
                std::borrow::Cow::Owned(out)
            }
            _ => std::borrow::Cow::Borrowed(single_object),
        }
    }

    /// The decoder entry of the current schema of `kind`.
    fn known_current(&self, kind: MessageKind) -> Result<&Known, DecodeError> {
        let fp = self.current(kind).fingerprint;
        self.writers
            .get(&fp)
            .ok_or(DecodeError::UnknownFingerprint(fp))
    }

    fn current(&self, kind: MessageKind) -> &Current {
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
        if cfg!(debug_assertions) && !value.validate(self.current(kind).schema) {
            return Err(EncodeError::Invalid(kind));
        }
        crate::encode::encode(value, out)
    }

    fn encode_framed(
        &self,
        kind: MessageKind,
        value: &Avro,
        framing: Framing,
    ) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::with_capacity(256);
        self.header(kind, framing, &mut out);
        self.write_datum(kind, value, &mut out)?;
        Ok(out)
    }

    /// Appends the framing header of a `kind` datum.
    fn header(&self, kind: MessageKind, framing: Framing, out: &mut Vec<u8>) {
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
        let mut cursor = datum;
        let value = writer.reader.read_value(&mut cursor)?;
        if !cursor.is_empty() {
            return Err(DecodeError::TrailingBytes(cursor.len()));
        }
        Ok(value)
    }

    fn decode_framed(&self, kind: MessageKind, bytes: &[u8]) -> Result<Avro, DecodeError> {
        let (writer, datum) = self.frame(bytes)?;
        self.read_datum(writer, kind, datum)
    }

    /// The writer schema a framed datum names, and the datum.
    fn frame<'a>(&self, bytes: &'a [u8]) -> Result<(&Known, &'a [u8]), DecodeError> {
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
                Ok((writer, datum))
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
                    .and_then(|fp| self.writers.get(fp))
                    .ok_or(DecodeError::UnknownSchemaId(id))?;
                Ok((writer, datum))
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
        let value = self.read_datum(
            self.known_current(MessageKind::CrdtState)?,
            MessageKind::CrdtState,
            datum,
        )?;
        convert::crdt_from_avro(value)
    }

    /// Encodes one CRDT state on its own (single-object): an agent's persisted state per key.
    pub fn encode_crdt_state(&self, c: &Crdt) -> Result<Vec<u8>, EncodeError> {
        self.encode_framed(
            MessageKind::CrdtState,
            &convert::crdt_to_avro(c),
            Framing::SingleObject,
        )
    }

    /// Decodes what [`Codec::encode_crdt_state`] wrote.
    pub fn decode_crdt_state(&self, bytes: &[u8]) -> Result<Crdt, DecodeError> {
        convert::crdt_from_avro(self.decode_framed(MessageKind::CrdtState, bytes)?)
    }

    // ---- delta batches -----------------------------------------------------------------

    /// Checks a batch without decoding it: within the size limits, decompresses, a known
    /// `DeltaBatch` writer schema, a datum that is well-formed against it with nothing after
    /// it; returns the replica and first seq it names. Much cheaper than
    /// [`Codec::decode_batch`] (no values are built); what it does not check is the batch's
    /// content (dense seqs, event limits, the CRDT datums), which the full decode does.
    pub fn check_batch(&self, bytes: &[u8]) -> Result<(ReplicaId, u64), DecodeError> {
        self.with_decompressed(bytes, |plain| {
            let (fp, mut datum) = match plain {
                [0xC3, 0x01, rest @ ..] => {
                    rest.split_first_chunk::<8>()
                        .ok_or(DecodeError::Truncated {
                            len: plain.len(),
                            needed: SINGLE_OBJECT_HEADER_LEN,
                        })?
                }
                _ => {
                    return Err(DecodeError::BadFraming {
                        found: plain.iter().take(2).copied().collect(),
                    })
                }
            };
            let fp = u64::from_le_bytes(*fp);
            let writer = self
                .writers
                .get(&fp)
                .ok_or(DecodeError::UnknownFingerprint(fp))?;
            if writer.kind != MessageKind::DeltaBatch {
                return Err(DecodeError::WrongKind {
                    expected: MessageKind::DeltaBatch,
                    found: writer.kind,
                });
            }
            let Schema::Record(r) = writer.schema else {
                return Err(DecodeError::Shape {
                    field: "DeltaBatch",
                    expected: "a record schema",
                });
            };
            let (mut device, mut incarnation, mut first_seq) = (None, None, None);
            let nodes = writer.plan.fields(crate::walk::ROOT);
            for (f, &node) in r.fields.iter().zip(nodes) {
                match (f.name.as_str(), &f.schema) {
                    ("device", Schema::String) => device = Some(crate::walk::string(&mut datum)?),
                    ("incarnation", Schema::Long) => {
                        incarnation = Some(crate::walk::long(&mut datum)?)
                    }
                    ("first_seq", Schema::Long) => first_seq = Some(crate::walk::long(&mut datum)?),
                    _ => writer.plan.skip(node, &mut datum, 0)?,
                }
            }
            if !datum.is_empty() {
                return Err(DecodeError::TrailingBytes(datum.len()));
            }
            let missing = |field| DecodeError::Shape {
                field,
                expected: "present",
            };
            let device = edgesync_core::DeviceId::new(device.ok_or_else(|| missing("device"))?)?;
            let inc = incarnation.ok_or_else(|| missing("incarnation"))?;
            let inc = u64::try_from(inc).map_err(|_| DecodeError::Negative {
                field: "incarnation",
                value: inc,
            })?;
            let first = first_seq.ok_or_else(|| missing("first_seq"))?;
            let first = u64::try_from(first).map_err(|_| DecodeError::Negative {
                field: "first_seq",
                value: first,
            })?;
            Ok((
                ReplicaId::new(device, edgesync_core::Incarnation::new(inc)?),
                first,
            ))
        })
    }

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
        let dropped = batch
            .dropped()
            .iter()
            .map(convert::dropped_to_avro)
            .collect();
        let value = crate::value::replica_record(
            batch.replica(),
            [
                ("first_seq", long_u64(batch.first_seq())),
                ("events", Avro::Array(events)),
                ("dropped", Avro::Array(dropped)),
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
            zstd_contexts::compress(&plain, self.zstd_level).map_err(EncodeError::Compress)?;
        if packed.len() > self.limits.max_payload_bytes {
            return Err(EncodeError::TooLarge {
                what: "batch",
                len: packed.len(),
                limit: self.limits.max_payload_bytes,
            });
        }
        Ok(packed)
    }

    /// Decompresses `bytes` into a per-thread buffer and hands the plain bytes to `f`.
    fn with_decompressed<T>(
        &self,
        bytes: &[u8],
        f: impl FnOnce(&[u8]) -> Result<T, DecodeError>,
    ) -> Result<T, DecodeError> {
        if bytes.len() > self.limits.max_payload_bytes {
            return Err(DecodeError::TooLarge {
                what: "payload",
                len: bytes.len(),
                limit: self.limits.max_payload_bytes,
            });
        }
        let limit = self.limits.max_decoded_bytes;
        let too_large = |len| DecodeError::TooLarge {
            what: "decompressed payload",
            len,
            limit,
        };
        if let Some(n) = zstd::bulk::Decompressor::upper_bound(bytes) {
            if n > limit {
                return Err(too_large(n));
            }
        }
        // Bound the decoder's window so a crafted frame header cannot demand a huge buffer.
        let window_log = (usize::BITS - limit.max(1 << 10).leading_zeros()).clamp(10, 27);
        zstd_contexts::with_decompressor(window_log, limit, |d, buf| {
            buf.clear();
            match d.decompress_to_buffer(bytes, buf) {
                // The buffer may be larger than this codec's limit (shared with other codecs).
                Ok(n) if n > limit => Err(too_large(n)),
                Ok(_) => f(buf),
                // A frame without a declared size that does not fit the buffer.
                Err(e) if e.to_string().contains("Destination buffer is too small") => {
                    Err(too_large(limit + 1))
                }
                Err(e) => Err(DecodeError::Decompress(e)),
            }
        })
    }

    /// Decodes and validates a batch received over MQTT. The current writer schema is read
    /// by hand ([`crate::direct`]), any other through apache-avro.
    pub fn decode_batch(&self, bytes: &[u8]) -> Result<DeltaBatch, DecodeError> {
        let kind = MessageKind::DeltaBatch;
        let parts = self.with_decompressed(bytes, |plain| {
            let (writer, datum) = self.frame(plain)?;
            if writer.fingerprint != self.fingerprint(kind) {
                return convert::batch_parts_from_avro(self.read_datum(writer, kind, datum)?);
            }
            let direct = crate::direct::read_batch(datum);
            if cfg!(debug_assertions) {
                let generic = self
                    .read_datum(writer, kind, datum)
                    .and_then(convert::batch_parts_from_avro);
                same_outcome("DeltaBatch", &direct, &generic);
            }
            direct
        })?;
        self.assemble_batch(parts)
    }

    /// Gives the events their seqs (in order, skipping the dropped ranges: the two together are
    /// dense, which `DeltaBatch::with_dropped` checks), decodes and joins the state deltas.
    fn assemble_batch(&self, p: crate::direct::BatchParts) -> Result<DeltaBatch, DecodeError> {
        let mut events = p.events;
        let (mut seq, mut next_drop) = (p.first_seq, p.dropped.iter().peekable());
        for e in &mut events {
            while let Some(d) = next_drop.next_if(|d| d.range.start <= seq) {
                seq = seq.max(d.range.end.saturating_add(1));
            }
            e.dot.seq = seq;
            seq = seq.saturating_add(1);
        }
        let mut state = std::collections::BTreeMap::new();
        for (key, datum) in p.state {
            let c = self.decode_crdt(&datum)?;
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
        Ok(DeltaBatch::with_dropped(
            p.replica,
            p.first_seq,
            events,
            p.dropped,
            state,
            &self.limits.event,
        )?)
    }

    // ---- spool records -----------------------------------------------------------------

    /// Encodes an event and the deltas it produced for the agent's spool (single-object, not
    /// compressed: RocksDB compresses its blocks).
    pub fn encode_spool_record(
        &self,
        event: &Event,
        deltas: &[(String, Crdt)],
    ) -> Result<Vec<u8>, EncodeError> {
        let mut f: Vec<(&'static str, Avro)> = convert::batch_event_to_avro_fields(event).into();
        let mut ds = Vec::with_capacity(deltas.len());
        for (key, c) in deltas {
            ds.push(crate::value::record(vec![
                ("key", Avro::String(key.clone())),
                ("crdt", Avro::Bytes(self.encode_crdt(c)?)),
            ]));
        }
        f.push(("deltas", Avro::Array(ds)));
        self.encode_framed(
            MessageKind::SpoolRecord,
            &crate::value::record(f),
            Framing::SingleObject,
        )
    }

    /// Decodes a spool record as the event with dot `dot` and its deltas.
    pub fn decode_spool_record(
        &self,
        bytes: &[u8],
        dot: Dot,
    ) -> Result<(Event, Vec<(String, Crdt)>), DecodeError> {
        let value = self.decode_framed(MessageKind::SpoolRecord, bytes)?;
        let (event, mut r) = convert::batch_event_from_avro_rec(value, dot, "SpoolRecord")?;
        event.validate(&self.limits.event).map_err(|source| {
            DecodeError::Batch(edgesync_core::BatchError::Event { index: 0, source })
        })?;
        let mut deltas = Vec::new();
        for v in r.array("deltas")? {
            let mut d = Rec::new("SpoolDelta", v)?;
            let key = d.string("key")?;
            edgesync_core::event::validate_state_key(&key)
                .map_err(edgesync_core::BatchError::StateKey)?;
            deltas.push((key, self.decode_crdt(&d.bytes("crdt")?)?));
        }
        Ok((event, deltas))
    }

    // ---- events ------------------------------------------------------------------------

    /// Encodes an event for the events topic.
    pub fn encode_event(&self, e: &Event, framing: Framing) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::with_capacity(128);
        self.encode_event_into(e, framing, &mut out)?;
        Ok(out)
    }

    /// [`Codec::encode_event`] into `out` (cleared first), so a caller encoding many events
    /// reuses one buffer. Written by hand ([`crate::direct`]).
    pub fn encode_event_into(
        &self,
        e: &Event,
        framing: Framing,
        out: &mut Vec<u8>,
    ) -> Result<(), EncodeError> {
        out.clear();
        self.header(MessageKind::Event, framing, out);
        crate::direct::write_event(e, out);
        if cfg!(debug_assertions) {
            let generic =
                self.encode_framed(MessageKind::Event, &convert::event_to_avro(e), framing)?;
            assert!(
                *out == generic,
                "direct and generic Event encodings differ: {e:?}"
            );
        }
        Ok(())
    }

    /// The dot of an event record, from the first fields of its datum (`device`,
    /// `incarnation`, `seq`: first in every version of `event.avsc`, which only ever appends
    /// fields), whatever its framing and whether or not this codec knows the writer schema or
    /// registry id. What the device stage's read-back needs: records a newer release or a
    /// registry this process has not seen wrote are still counted, never written again.
    pub fn event_dot(&self, bytes: &[u8]) -> Result<Dot, DecodeError> {
        let mut datum = match bytes {
            [0xC3, 0x01, rest @ ..] if rest.len() >= 8 => &rest[8..],
            [CONFLUENT_MAGIC, rest @ ..] if rest.len() >= 4 => &rest[4..],
            _ => {
                return Err(DecodeError::BadFraming {
                    found: bytes.iter().take(2).copied().collect(),
                })
            }
        };
        let device = edgesync_core::DeviceId::new(crate::walk::string(&mut datum)?)?;
        let incarnation = crate::value::unsigned("incarnation", crate::walk::long(&mut datum)?)?;
        let incarnation = edgesync_core::Incarnation::new(incarnation)?;
        let seq = crate::value::seq("seq", crate::walk::long(&mut datum)?)?;
        Ok(Dot::new(ReplicaId::new(device, incarnation), seq))
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

    /// Encodes a dead letter, keeping at most [`DEAD_LETTER_MAX_PAYLOAD`] of its payload (the
    /// detail then says how long the input was): a dead letter must fit in a Kafka record
    /// whatever input caused it, or the input would stall the stream it was refused from.
    pub fn encode_dead_letter(
        &self,
        d: &DeadLetter,
        framing: Framing,
    ) -> Result<Vec<u8>, EncodeError> {
        if d.payload.len() <= DEAD_LETTER_MAX_PAYLOAD {
            return self.encode_framed(MessageKind::DeadLetter, &d.to_avro(), framing);
        }
        let kept = DeadLetter {
            detail: format!(
                "{} (payload: the first {DEAD_LETTER_MAX_PAYLOAD} of {} bytes)",
                d.detail,
                d.payload.len()
            ),
            payload: d.payload[..DEAD_LETTER_MAX_PAYLOAD].to_vec(),
            ..d.clone()
        };
        self.encode_framed(MessageKind::DeadLetter, &kept.to_avro(), framing)
    }

    /// Decodes a dead letter.
    pub fn decode_dead_letter(&self, bytes: &[u8]) -> Result<DeadLetter, DecodeError> {
        DeadLetter::from_avro(self.decode_framed(MessageKind::DeadLetter, bytes)?)
    }

    /// Encodes a device's completeness record.
    pub fn encode_completeness(
        &self,
        c: &Completeness,
        framing: Framing,
    ) -> Result<Vec<u8>, EncodeError> {
        self.encode_framed(MessageKind::Completeness, &c.to_avro(), framing)
    }

    /// Decodes a completeness record.
    pub fn decode_completeness(&self, bytes: &[u8]) -> Result<Completeness, DecodeError> {
        Completeness::from_avro(self.decode_framed(MessageKind::Completeness, bytes)?)
    }
}

/// zstd contexts reused per thread: creating them costs more than compressing a small batch.
mod zstd_contexts {
    use std::cell::RefCell;
    use std::io;

    use zstd::bulk::{Compressor, Decompressor};
    use zstd::zstd_safe::DParameter;

    thread_local! {
        static COMPRESSOR: RefCell<Option<(i32, Compressor<'static>)>> = const { RefCell::new(None) };
        static DECOMPRESSOR: RefCell<Option<(u32, Decompressor<'static>, Vec<u8>)>> =
            const { RefCell::new(None) };
    }

    pub(super) fn compress(data: &[u8], level: i32) -> io::Result<Vec<u8>> {
        COMPRESSOR.with(|cell| {
            let mut slot = cell.borrow_mut();
            if slot.as_ref().is_none_or(|(l, _)| *l != level) {
                *slot = Some((level, Compressor::new(level)?));
            }
            match slot.as_mut() {
                Some((_, c)) => c.compress(data),
                None => Err(io::Error::other("zstd compressor unavailable")),
            }
        })
    }

    /// Runs `f` with this thread's decompressor (window capped at `window_log`) and a buffer of
    /// capacity `capacity`.
    pub(super) fn with_decompressor<T, E: From<io::Error>>(
        window_log: u32,
        capacity: usize,
        f: impl FnOnce(&mut Decompressor<'static>, &mut Vec<u8>) -> Result<T, E>,
    ) -> Result<T, E> {
        DECOMPRESSOR.with(|cell| {
            let mut slot = cell.borrow_mut();
            let fresh = slot
                .as_ref()
                .is_none_or(|(w, _, buf)| *w != window_log || buf.capacity() < capacity);
            if fresh {
                let mut d = Decompressor::new()?;
                d.set_parameter(DParameter::WindowLogMax(window_log))?;
                *slot = Some((window_log, d, Vec::with_capacity(capacity)));
            }
            match slot.as_mut() {
                Some((_, d, buf)) => f(d, buf),
                None => Err(io::Error::other("zstd decompressor unavailable").into()),
            }
        })
    }
}

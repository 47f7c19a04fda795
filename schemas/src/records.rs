//! The non-batch wire records: acks, converged state records, dead letters, completeness.

use std::collections::BTreeMap;

use apache_avro::types::Value as Avro;
use edgesync_core::crdt::Crdt;
use edgesync_core::id::{DeviceId, Incarnation};
use edgesync_core::{ReplicaId, SeqRange, StateDigest, Value, VersionVector};

use crate::convert::vv_to_avro;
use crate::error::DecodeError;
use crate::value::{long_u64, opt_scalar, record, replica_record, scalar, Rec};

/// The server's acknowledgement for one replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ack {
    /// The replica acknowledged.
    pub replica: ReplicaId,
    /// Every seq in `1..=watermark` is durable at the server.
    pub watermark: u64,
    /// Server wall clock when it became durable.
    pub acked_at_ms: u64,
}

impl Ack {
    pub(crate) fn to_avro(&self) -> Avro {
        replica_record(
            &self.replica,
            [
                ("watermark", long_u64(self.watermark)),
                ("acked_at_ms", long_u64(self.acked_at_ms)),
            ],
        )
    }

    pub(crate) fn from_avro(v: Avro) -> Result<Self, DecodeError> {
        let mut r = Rec::new("Ack", v)?;
        Ok(Self {
            replica: r.replica()?,
            watermark: r.unsigned("watermark")?,
            acked_at_ms: r.unsigned("acked_at_ms")?,
        })
    }
}

/// The converged value of one CRDT key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateRecord {
    /// The CRDT key (also the Kafka key).
    pub key: String,
    /// The full converged state.
    pub state: Crdt,
    /// Per replica, the highest event seq merged into it.
    pub version_vector: VersionVector,
    /// When it was emitted.
    pub emitted_at_ms: u64,
}

/// Why a state record was rejected.
fn digest_mismatch() -> DecodeError {
    DecodeError::Shape {
        field: "digest",
        expected: "the digest of key and state",
    }
}

fn saturate(v: i128) -> i64 {
    i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX })
}

impl StateRecord {
    /// The digest written with this record.
    pub fn digest(&self) -> StateDigest {
        StateDigest::of_state(&self.key, &self.state)
    }

    pub(crate) fn to_avro(&self, crdt: Vec<u8>) -> Avro {
        let kind = self.state.kind();
        let kind_index = crate::convert::kind_index(kind);
        let null = || Avro::Union(0, Box::new(Avro::Null));
        let (mut counter, mut register, mut values, mut buckets) =
            (null(), null(), Vec::new(), Vec::new());
        match &self.state {
            Crdt::GCounter(g) => {
                counter = Avro::Union(1, Box::new(Avro::Long(saturate(g.value() as i128))))
            }
            Crdt::PnCounter(p) => {
                counter = Avro::Union(1, Box::new(Avro::Long(saturate(p.value()))))
            }
            Crdt::MaxRegister(r) => register = opt_scalar(r.get()),
            Crdt::MinRegister(r) => register = opt_scalar(r.get()),
            Crdt::LwwRegister(r) => register = opt_scalar(r.get()),
            Crdt::MvRegister(r) => values = r.values().into_iter().map(|v| scalar(v, 0)).collect(),
            Crdt::OrSet(s) => values = s.elements().map(|v: &Value| scalar(v, 0)).collect(),
            Crdt::RollupMap(m) => {
                buckets = m
                    .buckets()
                    .into_iter()
                    .map(|(b, a)| {
                        record(vec![
                            ("bucket_ms", long_u64(b)),
                            ("count", long_u64(a.count)),
                            ("sum", Avro::Double(a.sum)),
                            ("min", Avro::Double(a.min)),
                            ("max", Avro::Double(a.max)),
                        ])
                    })
                    .collect()
            }
        }
        record(vec![
            ("key", Avro::String(self.key.clone())),
            ("kind", Avro::Enum(kind_index, kind.name().to_owned())),
            ("counter", counter),
            ("register", register),
            ("values", Avro::Array(values)),
            ("buckets", Avro::Array(buckets)),
            ("version_vector", vv_to_avro(&self.version_vector)),
            ("digest", Avro::Fixed(32, self.digest().0.to_vec())),
            ("crdt", Avro::Bytes(crdt)),
            ("emitted_at_ms", long_u64(self.emitted_at_ms)),
        ])
    }

    pub(crate) fn from_avro(r: &mut Rec, state: Crdt) -> Result<Self, DecodeError> {
        let key = r.string("key")?;
        edgesync_core::event::validate_state_key(&key)
            .map_err(edgesync_core::BatchError::StateKey)?;
        let mut version_vector = VersionVector::new();
        for v in r.array("version_vector")? {
            let mut e = Rec::new("VersionEntry", v)?;
            let replica = e.replica()?;
            version_vector.observe(&replica, e.unsigned("seq")?);
        }
        let digest = match r.take("digest")? {
            Avro::Fixed(32, b) => b,
            _ => return Err(digest_mismatch()),
        };
        let out = Self {
            key,
            state,
            version_vector,
            emitted_at_ms: r.unsigned("emitted_at_ms")?,
        };
        if out.digest().0.as_slice() != digest.as_slice() {
            return Err(digest_mismatch());
        }
        Ok(out)
    }
}

/// Why input went to the dead-letter topic. Order and names match `dead_letter.avsc`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeadLetterReason {
    /// The MQTT topic does not have the expected shape.
    BadTopic,
    /// The device id in the topic breaks the grammar.
    BadDeviceId,
    /// The batch names another device than its topic.
    DeviceMismatch,
    /// Over the size limit.
    Oversize,
    /// Could not be decompressed or decoded.
    Undecodable,
    /// Decoded, but not a well-formed batch.
    InvalidBatch,
    /// A state delta of a different CRDT kind than the key already has.
    KindMismatch,
    /// Anything else (also what an older reader sees for a newer reason).
    Other,
}

impl DeadLetterReason {
    /// Every reason, in schema order.
    pub const ALL: [DeadLetterReason; 8] = [
        DeadLetterReason::BadTopic,
        DeadLetterReason::BadDeviceId,
        DeadLetterReason::DeviceMismatch,
        DeadLetterReason::Oversize,
        DeadLetterReason::Undecodable,
        DeadLetterReason::InvalidBatch,
        DeadLetterReason::KindMismatch,
        DeadLetterReason::Other,
    ];

    /// The Avro enum symbol.
    pub fn symbol(self) -> &'static str {
        match self {
            DeadLetterReason::BadTopic => "BAD_TOPIC",
            DeadLetterReason::BadDeviceId => "BAD_DEVICE_ID",
            DeadLetterReason::DeviceMismatch => "DEVICE_MISMATCH",
            DeadLetterReason::Oversize => "OVERSIZE",
            DeadLetterReason::Undecodable => "UNDECODABLE",
            DeadLetterReason::InvalidBatch => "INVALID_BATCH",
            DeadLetterReason::KindMismatch => "KIND_MISMATCH",
            DeadLetterReason::Other => "OTHER",
        }
    }

    /// The metric label: the symbol in lower case (`bad_topic`).
    pub fn label(self) -> String {
        self.symbol().to_ascii_lowercase()
    }
}

/// The most bytes of the original input a dead letter carries (its first ones).
pub const DEAD_LETTER_MAX_PAYLOAD: usize = 64 << 10;

/// Input that could not be processed, kept with its reason and original bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    /// Why.
    pub reason: DeadLetterReason,
    /// Human-readable detail (the error message).
    pub detail: String,
    /// Where it came from (`mqtt:<topic>` or `kafka:<topic>/<partition>@<offset>`).
    pub source: String,
    /// The device, when known.
    pub device: Option<String>,
    /// When it was received.
    pub received_at_ms: u64,
    /// The original bytes (encoded: at most the first [`DEAD_LETTER_MAX_PAYLOAD`]).
    pub payload: Vec<u8>,
}

impl DeadLetter {
    pub(crate) fn to_avro(&self) -> Avro {
        let idx = DeadLetterReason::ALL
            .iter()
            .position(|r| *r == self.reason)
            .unwrap_or(DeadLetterReason::ALL.len() - 1) as u32;
        let device = match &self.device {
            None => Avro::Union(0, Box::new(Avro::Null)),
            Some(d) => Avro::Union(1, Box::new(Avro::String(d.clone()))),
        };
        record(vec![
            ("reason", Avro::Enum(idx, self.reason.symbol().to_owned())),
            ("detail", Avro::String(self.detail.clone())),
            ("source", Avro::String(self.source.clone())),
            ("device", device),
            ("received_at_ms", long_u64(self.received_at_ms)),
            ("payload", Avro::Bytes(self.payload.clone())),
        ])
    }

    pub(crate) fn from_avro(v: Avro) -> Result<Self, DecodeError> {
        let mut r = Rec::new("DeadLetter", v)?;
        let sym = r.symbol("reason")?;
        let reason = DeadLetterReason::ALL
            .into_iter()
            .find(|x| x.symbol() == sym)
            .unwrap_or(DeadLetterReason::Other);
        let device = match r.take("device")? {
            Avro::Union(_, b) => match *b {
                Avro::String(s) => Some(s),
                _ => None,
            },
            _ => None,
        };
        Ok(Self {
            reason,
            detail: r.string("detail")?,
            source: r.string("source")?,
            device,
            received_at_ms: r.unsigned("received_at_ms")?,
            payload: r.bytes("payload")?,
        })
    }
}

/// How complete one device's data is at the server (`completeness.avsc`): per replica of the
/// device, its line of the reconciler's completeness ledger.
#[derive(Clone, Debug, PartialEq)]
pub struct Completeness {
    /// The device (also the Kafka key).
    pub device: DeviceId,
    /// Its replicas, by incarnation.
    pub replicas: Vec<ReplicaCompleteness>,
    /// When it was emitted.
    pub emitted_at_ms: u64,
}

/// One replica's line in a [`Completeness`] record.
#[derive(Clone, Debug, PartialEq)]
pub struct ReplicaCompleteness {
    /// The spool incarnation.
    pub incarnation: Incarnation,
    /// Every seq in `1..=watermark` arrived or was dropped at the edge.
    pub watermark: u64,
    /// Highest seq that arrived.
    pub max_seen: u64,
    /// The seqs below `max_seen` that have not arrived.
    pub missing: Vec<SeqRange>,
    /// When the current gap opened (server clock).
    pub gap_since_ms: Option<u64>,
    /// Events held back above the gap.
    pub pending: u64,
    /// Seqs dropped at the edge, by reason symbol (`QUOTA`, `AGE`, `CORRUPT`, `OTHER`).
    pub dropped: BTreeMap<String, u64>,
    /// Receive time minus the HLC of the latest released event.
    pub clock_skew_ms: Option<i64>,
    /// `clock_skew_ms` is beyond the reconciler's bound.
    pub clock_skewed: bool,
    /// Bytes of the replica's batches received, as published (resent ones again).
    pub wire_bytes: u64,
}

impl ReplicaCompleteness {
    /// The fraction of `1..=max_seen` that arrived (1.0 without gaps).
    pub fn completeness(&self) -> f64 {
        Self::ratio(self.max_seen, &self.missing)
    }

    /// The fraction of `1..=max_seen` that arrived when `missing` did not.
    pub fn ratio(max_seen: u64, missing: &[SeqRange]) -> f64 {
        if max_seen == 0 {
            return 1.0;
        }
        // Saturating: a decoded record's ranges are not checked against max_seen.
        let missing = missing.iter().fold(0u64, |n, r| n.saturating_add(r.len()));
        max_seen.saturating_sub(missing) as f64 / max_seen as f64
    }

    fn to_avro(&self, emitted_at_ms: u64) -> Avro {
        let opt_long = |v: Option<i64>| match v {
            None => Avro::Union(0, Box::new(Avro::Null)),
            Some(x) => Avro::Union(1, Box::new(Avro::Long(x))),
        };
        let missing = self
            .missing
            .iter()
            .map(|m| {
                record(vec![
                    ("first", long_u64(m.start)),
                    ("last", long_u64(m.end)),
                ])
            })
            .collect();
        let dropped = self
            .dropped
            .iter()
            .map(|(r, n)| (r.clone(), long_u64(*n)))
            .collect();
        record(vec![
            ("incarnation", long_u64(self.incarnation.get())),
            ("watermark", long_u64(self.watermark)),
            ("max_seen", long_u64(self.max_seen)),
            ("missing", Avro::Array(missing)),
            (
                "gap_since_ms",
                opt_long(self.gap_since_ms.map(crate::value::clamp_u64)),
            ),
            (
                "gap_age_ms",
                opt_long(
                    self.gap_since_ms
                        .map(|g| crate::value::clamp_u64(emitted_at_ms.saturating_sub(g))),
                ),
            ),
            ("pending", long_u64(self.pending)),
            ("dropped", Avro::Map(dropped)),
            ("clock_skew_ms", opt_long(self.clock_skew_ms)),
            ("clock_skewed", Avro::Boolean(self.clock_skewed)),
            ("completeness", Avro::Double(self.completeness())),
            ("wire_bytes", long_u64(self.wire_bytes)),
        ])
    }

    fn from_avro(v: Avro) -> Result<Self, DecodeError> {
        let mut r = Rec::new("ReplicaCompleteness", v)?;
        let missing = r
            .array("missing")?
            .into_iter()
            .map(|m| {
                let mut m = Rec::new("MissingRange", m)?;
                let (first, last) = (m.seq("first")?, m.seq("last")?);
                SeqRange::new(first, last).ok_or(DecodeError::Shape {
                    field: "missing",
                    expected: "ranges with first <= last",
                })
            })
            .collect::<Result<_, _>>()?;
        let dropped = r
            .map("dropped")?
            .into_iter()
            .map(|(k, v)| match v {
                Avro::Long(n) if n >= 0 => Ok((k, n as u64)),
                _ => Err(DecodeError::Shape {
                    field: "dropped",
                    expected: "counts >= 0",
                }),
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            incarnation: r.incarnation()?,
            watermark: r.unsigned("watermark")?,
            max_seen: r.unsigned("max_seen")?,
            missing,
            gap_since_ms: r.opt_long("gap_since_ms")?.map(|g| g.max(0) as u64),
            pending: r.unsigned("pending")?,
            dropped,
            clock_skew_ms: r.opt_long("clock_skew_ms")?,
            clock_skewed: r.boolean("clock_skewed")?,
            wire_bytes: r.unsigned("wire_bytes")?,
        })
    }
}

impl Completeness {
    pub(crate) fn to_avro(&self) -> Avro {
        let replicas = self
            .replicas
            .iter()
            .map(|r| r.to_avro(self.emitted_at_ms))
            .collect();
        record(vec![
            ("device", Avro::String(self.device.as_str().to_owned())),
            ("replicas", Avro::Array(replicas)),
            ("emitted_at_ms", long_u64(self.emitted_at_ms)),
        ])
    }

    pub(crate) fn from_avro(v: Avro) -> Result<Self, DecodeError> {
        let mut r = Rec::new("Completeness", v)?;
        Ok(Self {
            device: r.device()?,
            replicas: r
                .array("replicas")?
                .into_iter()
                .map(ReplicaCompleteness::from_avro)
                .collect::<Result<_, _>>()?,
            emitted_at_ms: r.unsigned("emitted_at_ms")?,
        })
    }
}

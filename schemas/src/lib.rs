//! # edgesync-schemas: the wire contract
//!
//! The Avro schemas in `schemas/avro/*.avsc` are the contract with analytics teams and between
//! edgesync's own processes. This crate embeds them and provides [`Codec`], which maps the core
//! types to and from bytes:
//!
//! | message | schema | framing | where |
//! |---|---|---|---|
//! | [`edgesync_core::DeltaBatch`] | `delta_batch.avsc` | zstd( single-object ) | MQTT `edgesync/v1/{device}/batch` ([`topics`]), Kafka `edgesync.deltas` |
//! | [`Ack`] | `ack.avsc` | single-object | MQTT `edgesync/v1/{device}/ack` (retained), Kafka `edgesync.acks` |
//! | [`edgesync_core::Event`] | `event.avsc` | single-object or Confluent | Kafka `edgesync.events` |
//! | [`StateRecord`] | `state_record.avsc` | single-object or Confluent | Kafka `edgesync.state` (compacted) |
//! | [`DeadLetter`] | `dead_letter.avsc` | single-object or Confluent | Kafka `edgesync.dlq` |
//! | [`Completeness`] | `completeness.avsc` | single-object or Confluent | Kafka `edgesync.completeness` (compacted) |
//! | [`edgesync_core::Crdt`] | `crdt_state.avsc` | raw datum, nested as `bytes` | inside batches and state records |
//! | an event and its deltas | `spool_record.avsc` | single-object | an edge agent's spool (RocksDB) |
//!
//! Single-object encoding is `C3 01`, the 8-byte little-endian CRC-64-AVRO fingerprint of the
//! writer schema's Parsing Canonical Form, then the datum; the Confluent wire format is `00`,
//! a 4-byte big-endian registry id, then the datum.
//!
//! ## Decoding is bounded and total
//! Every decoder checks the payload size, decompresses into at most
//! [`Limits::max_decoded_bytes`] (with the zstd window capped accordingly), caps
//! apache-avro's per-allocation limit at the same size, rejects trailing bytes, and validates
//! the result (device-id grammar, 63-bit ids, dense seqs, canonical causal contexts, finite
//! rollups, event limits, digests). Every failure is a typed [`DecodeError`]; no input panics.
//! No schema has a zero-sized array item, so an array's element count is bounded by the input
//! length.
//!
//! ## Evolution
//! Readers resolve the writer's schema (found by fingerprint or registry id) into the current
//! one, so a field added with a default is read by older code as long as it knows the writer
//! schema ([`Codec::register_writer_schema`]). The nested `CrdtState` datum has no header: it
//! changes only together with a new version of the enclosing schema.

mod codec;
mod convert;
mod direct;
mod encode;
mod error;
mod records;
pub mod topics;
mod value;
mod walk;

pub use codec::{
    Codec, Framing, Limits, CONFLUENT_HEADER_LEN, CONFLUENT_MAGIC, SINGLE_OBJECT_HEADER_LEN,
    SINGLE_OBJECT_MAGIC,
};
pub use error::{DecodeError, EncodeError};
pub use records::{
    Ack, Completeness, DeadLetter, DeadLetterReason, ReplicaCompleteness, StateRecord,
    DEAD_LETTER_MAX_PAYLOAD,
};

/// The message kinds, one schema each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MessageKind {
    /// `event.avsc`
    Event,
    /// `delta_batch.avsc`
    DeltaBatch,
    /// `ack.avsc`
    Ack,
    /// `state_record.avsc`
    StateRecord,
    /// `dead_letter.avsc`
    DeadLetter,
    /// `crdt_state.avsc`
    CrdtState,
    /// `spool_record.avsc`
    SpoolRecord,
    /// `completeness.avsc`
    Completeness,
}

impl MessageKind {
    /// Every kind.
    pub const ALL: [MessageKind; 8] = [
        MessageKind::Event,
        MessageKind::DeltaBatch,
        MessageKind::Ack,
        MessageKind::StateRecord,
        MessageKind::DeadLetter,
        MessageKind::CrdtState,
        MessageKind::SpoolRecord,
        MessageKind::Completeness,
    ];

    /// Position in [`MessageKind::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The schema's JSON, as shipped in `schemas/avro/`.
    pub fn avsc(self) -> &'static str {
        match self {
            MessageKind::Event => include_str!("../avro/event.avsc"),
            MessageKind::DeltaBatch => include_str!("../avro/delta_batch.avsc"),
            MessageKind::Ack => include_str!("../avro/ack.avsc"),
            MessageKind::StateRecord => include_str!("../avro/state_record.avsc"),
            MessageKind::DeadLetter => include_str!("../avro/dead_letter.avsc"),
            MessageKind::CrdtState => include_str!("../avro/crdt_state.avsc"),
            MessageKind::SpoolRecord => include_str!("../avro/spool_record.avsc"),
            MessageKind::Completeness => include_str!("../avro/completeness.avsc"),
        }
    }

    /// File name under `schemas/avro/`.
    pub fn file_name(self) -> &'static str {
        match self {
            MessageKind::Event => "event.avsc",
            MessageKind::DeltaBatch => "delta_batch.avsc",
            MessageKind::Ack => "ack.avsc",
            MessageKind::StateRecord => "state_record.avsc",
            MessageKind::DeadLetter => "dead_letter.avsc",
            MessageKind::CrdtState => "crdt_state.avsc",
            MessageKind::SpoolRecord => "spool_record.avsc",
            MessageKind::Completeness => "completeness.avsc",
        }
    }
}

/// A schema that failed to parse.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// apache-avro rejected the schema JSON.
    #[error("schema for {kind:?} does not parse: {source}")]
    Parse {
        /// Which message kind.
        kind: MessageKind,
        /// The parser's error.
        source: Box<apache_avro::Error>,
    },
    /// The schema parses but cannot be compiled for checking (too deeply nested, unknown name).
    #[error("schema for {kind:?} cannot be compiled for checking: {detail}")]
    Check {
        /// Which message kind.
        kind: MessageKind,
        /// Why.
        detail: String,
    },
}

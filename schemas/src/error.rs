//! Codec errors. Decoding never panics: every way bytes can be wrong is a variant here.

use edgesync_core::batch::BatchError;
use edgesync_core::causal::ContextError;
use edgesync_core::id::{DeviceIdError, IncarnationOutOfRange};

use crate::{DeadLetterReason, MessageKind};

/// Why bytes could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Input (or its decompressed form) over the configured limit.
    #[error("{what} is {len} bytes or more, the limit is {limit}")]
    TooLarge {
        /// "payload" or "decompressed payload".
        what: &'static str,
        /// Size seen (a lower bound when decoding stopped early).
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// Shorter than the framing header.
    #[error("truncated: {len} bytes, the header alone needs {needed}")]
    Truncated {
        /// Bytes available.
        len: usize,
        /// Bytes needed.
        needed: usize,
    },
    /// Neither single-object (C3 01) nor Confluent (00) framing.
    #[error("unknown framing: first bytes {found:02x?}")]
    BadFraming {
        /// Up to the first two bytes.
        found: Vec<u8>,
    },
    /// A schema fingerprint (single-object) this codec does not know.
    #[error("unknown writer schema fingerprint {0:016x}")]
    UnknownFingerprint(u64),
    /// A Confluent schema id this codec does not know.
    #[error("unknown Confluent schema id {0}")]
    UnknownSchemaId(u32),
    /// The writer schema is for another message kind.
    #[error("expected a {expected:?} but the writer schema is for a {found:?}")]
    WrongKind {
        /// What the caller asked for.
        expected: MessageKind,
        /// What the bytes say they are.
        found: MessageKind,
    },
    /// zstd could not decompress the payload.
    #[error("zstd decompression failed: {0}")]
    Decompress(#[source] std::io::Error),
    /// The Avro datum is malformed or does not resolve against the reader schema.
    #[error("malformed Avro datum: {0}")]
    Avro(#[source] Box<apache_avro::Error>),
    /// Bytes left over after the datum.
    #[error("{0} trailing bytes after the datum")]
    TrailingBytes(usize),
    /// A decoded value does not have the shape its schema promises (a codec bug, reported
    /// instead of panicking).
    #[error("field {field}: expected {expected}")]
    Shape {
        /// The field.
        field: &'static str,
        /// What was expected there.
        expected: &'static str,
    },
    /// A long that must not be negative was negative.
    #[error("field {field} is {value}, must not be negative")]
    Negative {
        /// The field.
        field: &'static str,
        /// The value.
        value: i64,
    },
    /// An int that must not be negative was negative.
    #[error("field {field} is out of range: {value}")]
    OutOfRange {
        /// The field.
        field: &'static str,
        /// The value.
        value: i64,
    },
    /// A device id that breaks the grammar.
    #[error(transparent)]
    DeviceId(#[from] DeviceIdError),
    /// An incarnation beyond 63 bits.
    #[error(transparent)]
    Incarnation(#[from] IncarnationOutOfRange),
    /// A causal context that is not in canonical form.
    #[error(transparent)]
    Context(#[from] ContextError),
    /// The batch is not well formed (seqs, names, sizes, kinds).
    #[error(transparent)]
    Batch(#[from] BatchError),
    /// A rollup cell with non-finite aggregates or zero count.
    #[error("rollup cell for bucket {bucket_ms} is not well formed")]
    BadRollupCell {
        /// Its bucket.
        bucket_ms: u64,
    },
}

impl DecodeError {
    /// The dead-letter reason of input that failed to decode with this error: `INVALID_BATCH`
    /// for a datum that decoded but breaks a rule of the model (ids, contexts, a batch's seqs,
    /// names, sizes and kinds, rollup cells), `OVERSIZE` for input over a size limit as received
    /// or once decompressed (a zstd bomb is refused for its size, not its bytes),
    /// `UNDECODABLE` for bytes that are not a datum of a known schema at all.
    pub fn dead_letter_reason(&self) -> DeadLetterReason {
        match self {
            DecodeError::TooLarge { .. } => DeadLetterReason::Oversize,
            DecodeError::Negative { .. }
            | DecodeError::OutOfRange { .. }
            | DecodeError::DeviceId(_)
            | DecodeError::Incarnation(_)
            | DecodeError::Context(_)
            | DecodeError::Batch(_)
            | DecodeError::BadRollupCell { .. } => DeadLetterReason::InvalidBatch,
            _ => DeadLetterReason::Undecodable,
        }
    }
}

impl From<std::io::Error> for DecodeError {
    fn from(e: std::io::Error) -> Self {
        DecodeError::Decompress(e)
    }
}

impl From<apache_avro::Error> for DecodeError {
    fn from(e: apache_avro::Error) -> Self {
        DecodeError::Avro(Box::new(e))
    }
}

/// Why a value could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// The value does not fit the schema (a codec bug, reported instead of panicking).
    #[error("Avro encoding failed: {0}")]
    Avro(#[source] Box<apache_avro::Error>),
    /// A value that does not match its schema (checked in debug builds: a codec bug).
    #[error("value does not match the {0:?} schema")]
    Invalid(crate::MessageKind),
    /// A value type the schemas never use.
    #[error("cannot encode an Avro {0}")]
    Unsupported(&'static str),
    /// zstd failed.
    #[error("zstd compression failed: {0}")]
    Compress(#[source] std::io::Error),
    /// The encoded payload would exceed the limit the decoder enforces.
    #[error("encoded {what} is {len} bytes, the limit is {limit}")]
    TooLarge {
        /// What was encoded.
        what: &'static str,
        /// Its size.
        len: usize,
        /// The limit.
        limit: usize,
    },
}

impl From<apache_avro::Error> for EncodeError {
    fn from(e: apache_avro::Error) -> Self {
        EncodeError::Avro(Box::new(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_datum_breaking_a_rule_is_an_invalid_batch_and_other_bytes_are_undecodable() {
        let invalid = DecodeError::Negative {
            field: "seq",
            value: -1,
        };
        assert_eq!(invalid.dead_letter_reason(), DeadLetterReason::InvalidBatch);
        assert_eq!(
            DecodeError::TrailingBytes(3).dead_letter_reason(),
            DeadLetterReason::Undecodable
        );
        assert_eq!(
            DecodeError::UnknownFingerprint(7).dead_letter_reason(),
            DeadLetterReason::Undecodable
        );
        let bomb = DecodeError::TooLarge {
            what: "decompressed payload",
            len: 9 << 20,
            limit: 8 << 20,
        };
        assert_eq!(bomb.dead_letter_reason(), DeadLetterReason::Oversize);
    }
}

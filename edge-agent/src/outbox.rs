//! From spool to wire: the batch the protocol asks for, read from the spool.
//!
//! The agent's protocol state machine (`edgesync_protocol::Agent`) says which seqs to send
//! (`BatchRequest`); this reads them from the spool, decodes each record into its event and
//! state deltas, and builds the `DeltaBatch` (deltas joined per key, dropped ranges carried so
//! the server can account for them).

use edgesync_core::{BatchBuilder, BatchError, DeltaBatch, Dot, EventLimits, ReplicaId, SeqRange};
use edgesync_protocol::BatchRequest;
use edgesync_schemas::Codec;

use crate::spool::{DropReason, Entry, Spool, SpoolError};

/// Why a batch could not be built.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// Reading the spool failed.
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// The spool does not hold the requested seq (it was trimmed, or never written).
    #[error("seq {0} is not in the spool")]
    Missing(u64),
    /// Building the batch failed (a record that breaks the batch's rules).
    #[error(transparent)]
    Batch(#[from] BatchError),
}

/// A batch and what went into it.
#[derive(Clone, Debug)]
pub struct Built {
    /// The batch.
    pub batch: DeltaBatch,
    /// Records sent as dropped because they no longer decode.
    pub corrupt: usize,
    /// Spool bytes of its events (the raw size, before batching and compression).
    pub raw_bytes: u64,
}

/// Builds the batch for `req` from `spool`. A record that no longer decodes is sent as a
/// dropped seq with reason `Corrupt` (and counted by the caller), never silently skipped.
pub fn build_batch(
    spool: &Spool,
    codec: &Codec,
    replica: &ReplicaId,
    req: &BatchRequest,
) -> Result<Built, OutboxError> {
    let entries = spool.read(req.first_seq, req.max_events, req.max_bytes)?;
    let mut b = BatchBuilder::new(replica.clone(), req.first_seq, EventLimits::default());
    let (mut corrupt, mut raw_bytes) = (0, 0u64);
    let cap = req.first_seq + req.max_events as u64 - 1;
    for entry in entries {
        match entry {
            Entry::Event { seq, body, .. } if seq <= cap => {
                let dot = Dot::new(replica.clone(), seq);
                raw_bytes += body.len() as u64;
                match codec.decode_spool_record(&body, dot) {
                    Ok((event, deltas)) => b.push(event, deltas)?,
                    Err(_undecodable) => {
                        corrupt += 1;
                        b.push_dropped(one(seq), DropReason::Corrupt)?;
                    }
                }
            }
            Entry::Dropped {
                first,
                last,
                reason,
            } if first <= cap => {
                let range =
                    SeqRange::new(first, last.min(cap)).ok_or(OutboxError::Missing(first))?;
                b.push_dropped(range, reason)?;
            }
            _ => break,
        }
    }
    if b.is_empty() {
        return Err(OutboxError::Missing(req.first_seq));
    }
    Ok(Built {
        batch: b.finish()?,
        corrupt,
        raw_bytes,
    })
}

fn one(seq: u64) -> SeqRange {
    SeqRange {
        start: seq,
        end: seq,
    }
}

//! The spool's on-disk layout, in one place (public so that the fuzz targets and tools can
//! read a record as the spool does).
//!
//! ```text
//! key                      value
//! m/format                 u8 format version (1)
//! m/incarnation            u64 BE
//! m/next                   u64 BE   next seq to assign (never decreases)
//! m/acked                  u64 BE   highest seq the server acknowledged
//! s/<state key>            the agent's CRDT state for that key (opaque bytes), written in the
//!                          same batch as the events whose deltas it includes
//! e/<seq u64 BE>           record: kind u8 | appended_ms u64 BE | body
//!                            kind 0 = event, body = the event's bytes
//!                            kind 1 = dropped range, body = last seq u64 BE | reason u8
//! ```
//! Big-endian seqs make RocksDB's byte order the seq order, so a range scan reads events in
//! order and a trim is one `delete_range`. A record is written in the same `WriteBatch` as the
//! `m/next` that accounts for it, so a crash never leaves an assigned seq unrecorded.

pub(crate) const FORMAT: &[u8] = b"m/format";
pub(crate) const INCARNATION: &[u8] = b"m/incarnation";
pub(crate) const NEXT: &[u8] = b"m/next";
pub(crate) const ACKED: &[u8] = b"m/acked";
pub(crate) const FORMAT_VERSION: u8 = 1;
const EVENT_PREFIX: u8 = b'e';

pub(crate) const KIND_EVENT: u8 = 0;
pub(crate) const KIND_DROPPED: u8 = 1;
/// Bytes of a record before its body.
pub(crate) const RECORD_HEADER: usize = 9;

const STATE_PREFIX: &[u8] = b"s/";

/// Key of the agent state under `key`.
pub(crate) fn state_key(key: &str) -> Vec<u8> {
    let mut k = STATE_PREFIX.to_vec();
    k.extend_from_slice(key.as_bytes());
    k
}

/// The state key of a stored key, if it is one.
pub(crate) fn state_name(key: &[u8]) -> Option<&str> {
    std::str::from_utf8(key.strip_prefix(STATE_PREFIX)?).ok()
}

/// Key of the record at `seq`.
pub(crate) fn event_key(seq: u64) -> [u8; 10] {
    let mut k = [0u8; 10];
    k[0] = EVENT_PREFIX;
    k[1] = b'/';
    k[2..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// The seq of an event key, if it is one.
pub(crate) fn seq_of(key: &[u8]) -> Option<u64> {
    match key {
        [EVENT_PREFIX, b'/', rest @ ..] => Some(u64::from_be_bytes(rest.try_into().ok()?)),
        _ => None,
    }
}

pub(crate) fn u64_value(v: u64) -> [u8; 8] {
    v.to_be_bytes()
}

pub(crate) fn read_u64(v: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(v.try_into().ok()?))
}

/// An event record.
pub fn event_record(appended_ms: u64, body: &[u8]) -> Vec<u8> {
    let mut r = Vec::with_capacity(RECORD_HEADER + body.len());
    r.push(KIND_EVENT);
    r.extend_from_slice(&appended_ms.to_be_bytes());
    r.extend_from_slice(body);
    r
}

/// A record standing for the dropped seqs `seq..=last`.
pub fn dropped_record(appended_ms: u64, last: u64, reason: u8) -> Vec<u8> {
    let mut r = Vec::with_capacity(RECORD_HEADER + 9);
    r.push(KIND_DROPPED);
    r.extend_from_slice(&appended_ms.to_be_bytes());
    r.extend_from_slice(&last.to_be_bytes());
    r.push(reason);
    r
}

/// A decoded record.
#[derive(Debug, PartialEq, Eq)]
pub enum Record<'a> {
    /// An event: its spool record body (`Codec::decode_spool_record`).
    Event {
        /// When the agent stored it.
        appended_ms: u64,
        /// The encoded event and its deltas.
        body: &'a [u8],
    },
    /// Seqs from this record's own up to `last`, dropped.
    Dropped {
        /// When the drop was recorded.
        appended_ms: u64,
        /// The last dropped seq.
        last: u64,
        /// `DropReason::byte` of why.
        reason: u8,
    },
}

/// Decodes a record value; `None` if it is malformed.
pub fn decode(v: &[u8]) -> Option<Record<'_>> {
    if v.len() < RECORD_HEADER {
        return None;
    }
    let appended_ms = read_u64(&v[1..9])?;
    match v[0] {
        KIND_EVENT => Some(Record::Event {
            appended_ms,
            body: &v[RECORD_HEADER..],
        }),
        KIND_DROPPED if v.len() == RECORD_HEADER + 9 => Some(Record::Dropped {
            appended_ms,
            last: read_u64(&v[9..17])?,
            reason: v[17],
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_by_seq_and_round_trip() {
        let mut ks: Vec<_> = [300u64, 2, 1 << 40, 1]
            .iter()
            .map(|s| event_key(*s))
            .collect();
        ks.sort();
        let seqs: Vec<u64> = ks.iter().map(|k| seq_of(k).unwrap()).collect();
        assert_eq!(seqs, vec![1, 2, 300, 1 << 40]);
        assert_eq!(seq_of(NEXT), None);
        assert!(event_key(u64::MAX) > event_key(0) && NEXT > &event_key(u64::MAX)[..]);
    }

    #[test]
    fn records_round_trip_and_garbage_is_refused() {
        let e = event_record(7, b"abc");
        assert_eq!(
            decode(&e),
            Some(Record::Event {
                appended_ms: 7,
                body: b"abc"
            })
        );
        let d = dropped_record(9, 44, 2);
        assert_eq!(
            decode(&d),
            Some(Record::Dropped {
                appended_ms: 9,
                last: 44,
                reason: 2
            })
        );
        assert_eq!(decode(b"\x00short"), None);
        assert_eq!(decode(&[9u8; 20]), None);
    }
}

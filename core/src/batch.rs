//! Delta batches: what an agent sends for one replica and one dense seq range.
//!
//! A batch carries the events `first_seq..=last_seq` of one replica plus the *joined* state
//! deltas those events produced, keyed by CRDT key: a thousand increments of one counter in a
//! batch travel as a single G-counter entry.

use std::collections::BTreeMap;

use crate::causal::SeqRange;
use crate::crdt::{Crdt, KindMismatch};
use crate::event::{validate_state_key, Event, EventError, EventLimits};
use crate::id::{ReplicaId, SEQ_MAX};

/// Why a batch is not well formed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// A batch holds at least one event.
    #[error("a batch must hold at least one event")]
    Empty,
    /// The events' dots are not `first_seq, first_seq + 1, ...` of the batch's replica.
    #[error("event {index} has dot {found}, expected seq {expected_seq} of {replica}")]
    NotDense {
        /// Position in the batch.
        index: usize,
        /// The dot found, as text.
        found: String,
        /// The seq expected there.
        expected_seq: u64,
        /// The batch's replica, as text.
        replica: String,
    },
    /// Seq 0 or a seq beyond [`SEQ_MAX`].
    #[error("seq {0} is out of range 1..=2^63-1")]
    SeqOutOfRange(u64),
    /// An event failed validation.
    #[error("event {index}: {source}")]
    Event {
        /// Position in the batch.
        index: usize,
        /// What was wrong.
        source: EventError,
    },
    /// A state key failed validation.
    #[error(transparent)]
    StateKey(EventError),
    /// Two deltas of different CRDT kinds under one key.
    #[error("state key {key:?}: {source}")]
    Kind {
        /// The key.
        key: String,
        /// The mismatch.
        source: KindMismatch,
    },
}

/// Why seqs were dropped at the edge instead of being delivered.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum DropReason {
    /// The spool's byte quota (drop-oldest policy).
    Quota,
    /// The spool's age limit.
    Age,
    /// The spool record was damaged and could not be read.
    Corrupt,
}

impl DropReason {
    /// Every reason, in schema order.
    pub const ALL: [DropReason; 3] = [DropReason::Quota, DropReason::Age, DropReason::Corrupt];

    /// Stable name (Avro enum symbol, metric label).
    pub fn name(self) -> &'static str {
        match self {
            DropReason::Quota => "QUOTA",
            DropReason::Age => "AGE",
            DropReason::Corrupt => "CORRUPT",
        }
    }

    /// The byte a reason is stored as (the agent's spool, the reconciler's state store);
    /// stable across versions.
    pub fn byte(self) -> u8 {
        match self {
            DropReason::Quota => 1,
            DropReason::Age => 2,
            DropReason::Corrupt => 3,
        }
    }

    /// A stored byte back to its reason; a byte no version wrote means the record holding it
    /// is damaged, so its seqs count as [`DropReason::Corrupt`].
    pub fn from_byte(b: u8) -> DropReason {
        match b {
            1 => DropReason::Quota,
            2 => DropReason::Age,
            _ => DropReason::Corrupt,
        }
    }
}

/// Seqs of the batch's replica that were dropped at the edge, and why. They occupy their seqs
/// so that the seqs stay dense and the server can account for every one.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct DroppedRange {
    /// The dropped seqs.
    pub range: SeqRange,
    /// Why.
    pub reason: DropReason,
}

/// One replica's seq range: its events, the seqs dropped at the edge, and the joined state
/// deltas of the events.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct DeltaBatch {
    replica: ReplicaId,
    first_seq: u64,
    last_seq: u64,
    events: Vec<Event>,
    dropped: Vec<DroppedRange>,
    state: BTreeMap<String, Crdt>,
}

/// Checks that `events` and `dropped` together cover `first_seq..` densely, in order, without
/// overlap; returns the last seq.
fn check_dense(
    replica: &ReplicaId,
    first_seq: u64,
    events: &[Event],
    dropped: &[DroppedRange],
    limits: &EventLimits,
) -> Result<u64, BatchError> {
    if events.is_empty() && dropped.is_empty() {
        return Err(BatchError::Empty);
    }
    if first_seq == 0 {
        return Err(BatchError::SeqOutOfRange(0));
    }
    let mut expected = first_seq;
    let (mut ei, mut di) = (0, 0);
    while ei < events.len() || di < dropped.len() {
        if let Some(e) = events.get(ei).filter(|e| e.dot.seq == expected) {
            if e.dot.replica != *replica {
                return Err(not_dense(ei, &e.dot.to_string(), expected, replica));
            }
            e.validate(limits)
                .map_err(|source| BatchError::Event { index: ei, source })?;
            ei += 1;
            expected += 1;
        } else if let Some(d) = dropped.get(di).filter(|d| d.range.start == expected) {
            di += 1;
            expected = d.range.end.saturating_add(1);
        } else {
            let found = events.get(ei).map_or_else(
                || format!("dropped range starting at {}", dropped[di].range.start),
                |e| e.dot.to_string(),
            );
            return Err(not_dense(ei, &found, expected, replica));
        }
    }
    let last = expected - 1;
    if last > SEQ_MAX {
        return Err(BatchError::SeqOutOfRange(last));
    }
    Ok(last)
}

fn not_dense(index: usize, found: &str, expected_seq: u64, replica: &ReplicaId) -> BatchError {
    BatchError::NotDense {
        index,
        found: found.to_owned(),
        expected_seq,
        replica: replica.to_string(),
    }
}

impl DeltaBatch {
    /// Builds a batch of events only; see [`DeltaBatch::with_dropped`].
    pub fn new(
        replica: ReplicaId,
        first_seq: u64,
        events: Vec<Event>,
        state: BTreeMap<String, Crdt>,
        limits: &EventLimits,
    ) -> Result<Self, BatchError> {
        Self::with_dropped(replica, first_seq, events, Vec::new(), state, limits)
    }

    /// Builds a batch, checking that the events and dropped ranges together are exactly
    /// `first_seq..=last` of `replica`, each event is within `limits`, and every state key is
    /// valid.
    pub fn with_dropped(
        replica: ReplicaId,
        first_seq: u64,
        events: Vec<Event>,
        dropped: Vec<DroppedRange>,
        state: BTreeMap<String, Crdt>,
        limits: &EventLimits,
    ) -> Result<Self, BatchError> {
        let last_seq = check_dense(&replica, first_seq, &events, &dropped, limits)?;
        for key in state.keys() {
            validate_state_key(key).map_err(BatchError::StateKey)?;
        }
        Ok(Self {
            replica,
            first_seq,
            last_seq,
            events,
            dropped,
            state,
        })
    }

    /// The replica whose events these are.
    pub fn replica(&self) -> &ReplicaId {
        &self.replica
    }

    /// First seq of the batch.
    pub fn first_seq(&self) -> u64 {
        self.first_seq
    }

    /// Last seq of the batch.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// The events, in seq order.
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// The seqs dropped at the edge, in seq order.
    pub fn dropped(&self) -> &[DroppedRange] {
        &self.dropped
    }

    /// The joined state deltas, by key.
    pub fn state(&self) -> &BTreeMap<String, Crdt> {
        &self.state
    }

    /// Takes the batch apart: replica, first seq, events, dropped ranges, state deltas.
    pub fn into_parts(
        self,
    ) -> (
        ReplicaId,
        u64,
        Vec<Event>,
        Vec<DroppedRange>,
        BTreeMap<String, Crdt>,
    ) {
        (
            self.replica,
            self.first_seq,
            self.events,
            self.dropped,
            self.state,
        )
    }
}

/// Accumulates events and deltas into a batch, joining deltas per key as they arrive.
#[derive(Debug, Clone)]
pub struct BatchBuilder {
    replica: ReplicaId,
    first_seq: u64,
    next_seq: u64,
    events: Vec<Event>,
    dropped: Vec<DroppedRange>,
    state: BTreeMap<String, Crdt>,
    approx_bytes: usize,
    limits: EventLimits,
}

impl BatchBuilder {
    /// Starts a batch for `replica` at `first_seq`.
    pub fn new(replica: ReplicaId, first_seq: u64, limits: EventLimits) -> Self {
        Self {
            replica,
            first_seq,
            next_seq: first_seq,
            events: Vec::new(),
            dropped: Vec::new(),
            state: BTreeMap::new(),
            approx_bytes: 0,
            limits,
        }
    }

    /// Number of seqs covered so far (events and dropped seqs).
    pub fn len(&self) -> usize {
        (self.next_seq - self.first_seq) as usize
    }

    /// Whether nothing was pushed yet.
    pub fn is_empty(&self) -> bool {
        self.next_seq == self.first_seq
    }

    /// Rough size of the events so far (see [`Event::approx_size`]).
    pub fn approx_bytes(&self) -> usize {
        self.approx_bytes
    }

    fn not_next(&self, found: String) -> BatchError {
        BatchError::NotDense {
            index: self.events.len(),
            found,
            expected_seq: self.next_seq,
            replica: self.replica.to_string(),
        }
    }

    /// Adds the next event and the state deltas it produced.
    pub fn push(
        &mut self,
        event: Event,
        deltas: impl IntoIterator<Item = (String, Crdt)>,
    ) -> Result<(), BatchError> {
        let index = self.events.len();
        if event.dot.seq != self.next_seq || event.dot.replica != self.replica {
            return Err(self.not_next(event.dot.to_string()));
        }
        event
            .validate(&self.limits)
            .map_err(|source| BatchError::Event { index, source })?;
        let deltas: Vec<(String, Crdt)> = deltas.into_iter().collect();
        // Check every delta before changing anything, so a rejected push leaves no trace.
        for (key, d) in &deltas {
            validate_state_key(key).map_err(BatchError::StateKey)?;
            if let Some(existing) = self.state.get(key) {
                if existing.kind() != d.kind() {
                    return Err(BatchError::Kind {
                        key: key.clone(),
                        source: KindMismatch {
                            existing: existing.kind(),
                            incoming: d.kind(),
                        },
                    });
                }
            }
        }
        for (key, d) in deltas {
            match self.state.get_mut(&key) {
                Some(existing) => existing
                    .join(&d)
                    .map_err(|source| BatchError::Kind { key, source })?,
                None => {
                    self.state.insert(key, d);
                }
            }
        }
        self.approx_bytes += event.approx_size();
        self.events.push(event);
        self.next_seq += 1;
        Ok(())
    }

    /// Adds the next seqs as dropped at the edge.
    pub fn push_dropped(&mut self, range: SeqRange, reason: DropReason) -> Result<(), BatchError> {
        if range.start != self.next_seq || range.end > SEQ_MAX {
            return Err(self.not_next(format!("dropped range {}..={}", range.start, range.end)));
        }
        self.dropped.push(DroppedRange { range, reason });
        self.next_seq = range.end + 1;
        Ok(())
    }

    /// Finishes the batch.
    pub fn finish(self) -> Result<DeltaBatch, BatchError> {
        if self.is_empty() {
            return Err(BatchError::Empty);
        }
        Ok(DeltaBatch {
            replica: self.replica,
            first_seq: self.first_seq,
            last_seq: self.next_seq - 1,
            events: self.events,
            dropped: self.dropped,
            state: self.state,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hlc::Hlc;
    use crate::id::{DeviceId, Dot, Incarnation};

    #[test]
    fn drop_reasons_round_trip_through_their_stored_byte() {
        for r in DropReason::ALL {
            assert_eq!(DropReason::from_byte(r.byte()), r);
        }
        assert_eq!(DropReason::from_byte(0), DropReason::Corrupt);
        assert_eq!(DropReason::from_byte(99), DropReason::Corrupt);
    }

    fn ev(r: &ReplicaId, seq: u64) -> Event {
        Event {
            dot: Dot::new(r.clone(), seq),
            hlc: Hlc::new(seq, 0),
            stream: "s".into(),
            schema_version: 1,
            fields: BTreeMap::new(),
            tags: BTreeMap::new(),
        }
    }

    #[test]
    fn events_and_dropped_ranges_together_must_be_dense() {
        let r = ReplicaId::new(DeviceId::new("a").unwrap(), Incarnation::new(1).unwrap());
        let drop = |a, b| DroppedRange {
            range: SeqRange::new(a, b).unwrap(),
            reason: DropReason::Quota,
        };
        let l = EventLimits::default();
        let ok = DeltaBatch::with_dropped(
            r.clone(),
            3,
            vec![ev(&r, 3), ev(&r, 7)],
            vec![drop(4, 6)],
            BTreeMap::new(),
            &l,
        )
        .unwrap();
        assert_eq!((ok.first_seq(), ok.last_seq()), (3, 7));
        let only =
            DeltaBatch::with_dropped(r.clone(), 1, vec![], vec![drop(1, 9)], BTreeMap::new(), &l)
                .unwrap();
        assert_eq!(only.last_seq(), 9);
        assert!(
            DeltaBatch::with_dropped(
                r.clone(),
                3,
                vec![ev(&r, 3), ev(&r, 7)],
                vec![drop(4, 5)],
                BTreeMap::new(),
                &l
            )
            .is_err(),
            "hole at 6"
        );
        assert!(
            DeltaBatch::with_dropped(
                r.clone(),
                3,
                vec![ev(&r, 3), ev(&r, 4)],
                vec![drop(4, 5)],
                BTreeMap::new(),
                &l
            )
            .is_err(),
            "overlap"
        );
        let mut b = BatchBuilder::new(r.clone(), 1, l);
        b.push(ev(&r, 1), []).unwrap();
        b.push_dropped(SeqRange::new(2, 4).unwrap(), DropReason::Age)
            .unwrap();
        assert!(b.push(ev(&r, 4), []).is_err());
        b.push(ev(&r, 5), []).unwrap();
        assert_eq!(b.len(), 5);
        let batch = b.finish().unwrap();
        assert_eq!(
            (
                batch.last_seq(),
                batch.events().len(),
                batch.dropped().len()
            ),
            (5, 2, 1)
        );
    }
}

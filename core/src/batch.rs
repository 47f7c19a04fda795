//! Delta batches: what an agent sends for one replica and one dense seq range.
//!
//! A batch carries the events `first_seq..=last_seq` of one replica plus the *joined* state
//! deltas those events produced, keyed by CRDT key: a thousand increments of one counter in a
//! batch travel as a single G-counter entry.

use std::collections::BTreeMap;

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

/// Events of one replica's seq range plus their joined state deltas.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct DeltaBatch {
    replica: ReplicaId,
    first_seq: u64,
    events: Vec<Event>,
    state: BTreeMap<String, Crdt>,
}

impl DeltaBatch {
    /// Builds a batch, checking that the events are exactly `first_seq..` of `replica`, that
    /// each event is within `limits`, and that every state key is valid.
    pub fn new(
        replica: ReplicaId,
        first_seq: u64,
        events: Vec<Event>,
        state: BTreeMap<String, Crdt>,
        limits: &EventLimits,
    ) -> Result<Self, BatchError> {
        if events.is_empty() {
            return Err(BatchError::Empty);
        }
        let last = first_seq.saturating_add(events.len() as u64 - 1);
        if first_seq == 0 || last > SEQ_MAX {
            return Err(BatchError::SeqOutOfRange(if first_seq == 0 {
                0
            } else {
                last
            }));
        }
        for (index, e) in events.iter().enumerate() {
            let expected_seq = first_seq + index as u64;
            if e.dot.seq != expected_seq || e.dot.replica != replica {
                return Err(BatchError::NotDense {
                    index,
                    found: e.dot.to_string(),
                    expected_seq,
                    replica: replica.to_string(),
                });
            }
            e.validate(limits)
                .map_err(|source| BatchError::Event { index, source })?;
        }
        for key in state.keys() {
            validate_state_key(key).map_err(BatchError::StateKey)?;
        }
        Ok(Self {
            replica,
            first_seq,
            events,
            state,
        })
    }

    /// The replica whose events these are.
    pub fn replica(&self) -> &ReplicaId {
        &self.replica
    }

    /// Seq of the first event.
    pub fn first_seq(&self) -> u64 {
        self.first_seq
    }

    /// Seq of the last event.
    pub fn last_seq(&self) -> u64 {
        self.first_seq + self.events.len() as u64 - 1
    }

    /// The events, in seq order.
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// The joined state deltas, by key.
    pub fn state(&self) -> &BTreeMap<String, Crdt> {
        &self.state
    }

    /// Takes the batch apart.
    pub fn into_parts(self) -> (ReplicaId, u64, Vec<Event>, BTreeMap<String, Crdt>) {
        (self.replica, self.first_seq, self.events, self.state)
    }
}

/// Accumulates events and deltas into a batch, joining deltas per key as they arrive.
#[derive(Debug, Clone)]
pub struct BatchBuilder {
    replica: ReplicaId,
    first_seq: u64,
    events: Vec<Event>,
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
            events: Vec::new(),
            state: BTreeMap::new(),
            approx_bytes: 0,
            limits,
        }
    }

    /// Number of events so far.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether no event was pushed yet.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Rough size of the events so far (see [`Event::approx_size`]).
    pub fn approx_bytes(&self) -> usize {
        self.approx_bytes
    }

    /// Adds the next event and the state deltas it produced.
    pub fn push(
        &mut self,
        event: Event,
        deltas: impl IntoIterator<Item = (String, Crdt)>,
    ) -> Result<(), BatchError> {
        let index = self.events.len();
        let expected_seq = self.first_seq + index as u64;
        if event.dot.seq != expected_seq || event.dot.replica != self.replica {
            return Err(BatchError::NotDense {
                index,
                found: event.dot.to_string(),
                expected_seq,
                replica: self.replica.to_string(),
            });
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
        Ok(())
    }

    /// Finishes the batch.
    pub fn finish(self) -> Result<DeltaBatch, BatchError> {
        if self.events.is_empty() {
            return Err(BatchError::Empty);
        }
        Ok(DeltaBatch {
            replica: self.replica,
            first_seq: self.first_seq,
            events: self.events,
            state: self.state,
        })
    }
}

//! Max, min and last-writer-wins registers.

use super::Lattice;
use crate::hlc::Hlc;
use crate::id::ReplicaId;

/// Holds the largest value ever written. Bottom: nothing written.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct MaxRegister<T>(Option<T>);

impl<T> Default for MaxRegister<T> {
    fn default() -> Self {
        Self(None)
    }
}

impl<T: Ord + Clone> MaxRegister<T> {
    /// A register holding `v`.
    pub fn of(v: T) -> Self {
        Self(Some(v))
    }

    /// Writes `v` and returns the delta.
    pub fn set(&mut self, v: T) -> Self {
        let d = Self(Some(v));
        self.join(&d);
        d
    }

    /// The current value.
    pub fn get(&self) -> Option<&T> {
        self.0.as_ref()
    }
}

impl<T: Ord + Clone> Lattice for MaxRegister<T> {
    fn join(&mut self, other: &Self) {
        if let Some(o) = &other.0 {
            if self.0.as_ref().is_none_or(|s| o > s) {
                self.0 = Some(o.clone());
            }
        }
    }
}

/// Holds the smallest value ever written. Bottom: nothing written (not "the least value").
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct MinRegister<T>(Option<T>);

impl<T> Default for MinRegister<T> {
    fn default() -> Self {
        Self(None)
    }
}

impl<T: Ord + Clone> MinRegister<T> {
    /// A register holding `v`.
    pub fn of(v: T) -> Self {
        Self(Some(v))
    }

    /// Writes `v` and returns the delta.
    pub fn set(&mut self, v: T) -> Self {
        let d = Self(Some(v));
        self.join(&d);
        d
    }

    /// The current value.
    pub fn get(&self) -> Option<&T> {
        self.0.as_ref()
    }
}

impl<T: Ord + Clone> Lattice for MinRegister<T> {
    fn join(&mut self, other: &Self) {
        if let Some(o) = &other.0 {
            if self.0.as_ref().is_none_or(|s| o < s) {
                self.0 = Some(o.clone());
            }
        }
    }
}

/// One write of an LWW register. Ordered by `(hlc, replica, value)`: the HLC decides, the
/// replica breaks ties between devices, and the value only breaks ties that well-formed input
/// never produces (one replica never issues the same HLC twice) so that join stays a function.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct LwwEntry<T> {
    /// When it was written.
    pub hlc: Hlc,
    /// Who wrote it.
    pub replica: ReplicaId,
    /// What was written.
    pub value: T,
}

/// Last-writer-wins register on HLC stamps. Opt-in: concurrent writes are resolved by clock,
/// so the loser is dropped by design (use [`super::MvRegister`] to keep them).
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct LwwRegister<T>(Option<LwwEntry<T>>);

impl<T> Default for LwwRegister<T> {
    fn default() -> Self {
        Self(None)
    }
}

impl<T: Ord + Clone> LwwRegister<T> {
    /// A register holding one write.
    pub fn of(entry: LwwEntry<T>) -> Self {
        Self(Some(entry))
    }

    /// Writes `value` at `hlc` on behalf of `replica` and returns the delta.
    pub fn set(&mut self, hlc: Hlc, replica: &ReplicaId, value: T) -> Self {
        let d = Self(Some(LwwEntry {
            hlc,
            replica: replica.clone(),
            value,
        }));
        self.join(&d);
        d
    }

    /// The winning write.
    pub fn entry(&self) -> Option<&LwwEntry<T>> {
        self.0.as_ref()
    }

    /// The winning value.
    pub fn get(&self) -> Option<&T> {
        self.0.as_ref().map(|e| &e.value)
    }
}

impl<T: Ord + Clone> Lattice for LwwRegister<T> {
    fn join(&mut self, other: &Self) {
        if let Some(o) = &other.0 {
            if self.0.as_ref().is_none_or(|s| o > s) {
                self.0 = Some(o.clone());
            }
        }
    }
}

//! Max, min and last-writer-wins registers: one "keep the winner" lattice, three orders.

use std::marker::PhantomData;

use super::Lattice;
use crate::hlc::Hlc;
use crate::id::ReplicaId;

/// Which of two values an [`Extremum`] keeps. Implemented by the markers [`Max`] and [`Min`].
pub trait Direction: Copy + Eq + std::hash::Hash + std::fmt::Debug + Default {
    /// Whether `candidate` replaces `current`.
    fn wins<T: Ord>(candidate: &T, current: &T) -> bool;
}

/// Keep the largest value.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct Max;
impl Direction for Max {
    fn wins<T: Ord>(candidate: &T, current: &T) -> bool {
        candidate > current
    }
}

/// Keep the smallest value.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct Min;
impl Direction for Min {
    fn wins<T: Ord>(candidate: &T, current: &T) -> bool {
        candidate < current
    }
}

/// Holds the extreme (per `D`) of every value written. Bottom: nothing written — not "the
/// least value", so a min register starts empty rather than at some minimum.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Extremum<T, D> {
    value: Option<T>,
    direction: PhantomData<D>,
}

/// Register holding the largest value ever written.
pub type MaxRegister<T> = Extremum<T, Max>;
/// Register holding the smallest value ever written.
pub type MinRegister<T> = Extremum<T, Min>;

impl<T, D> Default for Extremum<T, D> {
    fn default() -> Self {
        Self {
            value: None,
            direction: PhantomData,
        }
    }
}

impl<T: Ord + Clone, D: Direction> Extremum<T, D> {
    /// A register holding `v`.
    pub fn of(v: T) -> Self {
        Self {
            value: Some(v),
            direction: PhantomData,
        }
    }

    /// Writes `v` and returns the delta.
    pub fn set(&mut self, v: T) -> Self {
        let d = Self::of(v);
        self.join(&d);
        d
    }

    /// The current value.
    pub fn get(&self) -> Option<&T> {
        self.value.as_ref()
    }
}

impl<T: Ord + Clone, D: Direction> Lattice for Extremum<T, D> {
    fn join(&mut self, other: &Self) {
        if let Some(o) = &other.value {
            if self.value.as_ref().is_none_or(|s| D::wins(o, s)) {
                self.value = Some(o.clone());
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

/// Last-writer-wins register on HLC stamps: the max register of its writes. Opt-in: concurrent
/// writes are resolved by clock, so the loser is dropped by design (use
/// [`super::MvRegister`] to keep them).
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct LwwRegister<T>(MaxRegister<LwwEntry<T>>);

impl<T> Default for LwwRegister<T> {
    fn default() -> Self {
        Self(MaxRegister::default())
    }
}

impl<T: Ord + Clone> LwwRegister<T> {
    /// A register holding one write.
    pub fn of(entry: LwwEntry<T>) -> Self {
        Self(MaxRegister::of(entry))
    }

    /// Writes `value` at `hlc` on behalf of `replica` and returns the delta.
    pub fn set(&mut self, hlc: Hlc, replica: &ReplicaId, value: T) -> Self {
        Self(self.0.set(LwwEntry {
            hlc,
            replica: replica.clone(),
            value,
        }))
    }

    /// The winning write.
    pub fn entry(&self) -> Option<&LwwEntry<T>> {
        self.0.get()
    }

    /// The winning value.
    pub fn get(&self) -> Option<&T> {
        self.0.get().map(|e| &e.value)
    }
}

impl<T: Ord + Clone> Lattice for LwwRegister<T> {
    fn join(&mut self, other: &Self) {
        self.0.join(&other.0);
    }
}

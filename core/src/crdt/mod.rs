//! Delta-state CRDTs (Almeida, Shoker, Baquero: "Delta State Replicated Data Types", 2018).
//!
//! Every type is a join-semilattice: [`Lattice::join`] is commutative, associative and
//! idempotent, and `Default` is the bottom. Mutators apply a change to the local state and
//! return the *delta*: the smallest state whose join with any replica's state has the same
//! effect. Deltas of one batch are joined into one (a thousand increments of one counter
//! travel as one entry), and duplicates or any delivery order give the same result.
//!
//! The law-named property tests in `core/tests/laws.rs` check all of this for every type.

mod counter;
mod dotted;
mod register;
mod rollup;

pub use counter::{GCounter, PnCounter};
pub use dotted::{MvRegister, OrSet};
pub use register::{
    Direction, Extremum, LwwEntry, LwwRegister, Max, MaxRegister, Min, MinRegister,
};
pub use rollup::{RollupAggregate, RollupCell, RollupMap};

use crate::value::Value;

/// A join-semilattice with `Default` as bottom.
pub trait Lattice: Clone + PartialEq + Default {
    /// Least upper bound of `self` and `other`, in place.
    fn join(&mut self, other: &Self);

    /// `a ⊔ b` as a new value.
    fn joined(mut self, other: &Self) -> Self {
        self.join(other);
        self
    }
}

/// The CRDT type of a key. The numeric codes are part of the canonical encoding (digests).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum CrdtKind {
    /// Grow-only counter.
    GCounter,
    /// Increment/decrement counter.
    PnCounter,
    /// Register holding the largest value written.
    MaxRegister,
    /// Register holding the smallest value written.
    MinRegister,
    /// Last-writer-wins register ordered by HLC, ties by replica.
    LwwRegister,
    /// Multi-value register: concurrent writes are all kept.
    MvRegister,
    /// Observed-remove set, add wins over concurrent remove.
    OrSet,
    /// Per time bucket and replica aggregates (count, sum, min, max).
    RollupMap,
}

impl CrdtKind {
    /// Every kind, in code order.
    pub const ALL: [CrdtKind; 8] = [
        CrdtKind::GCounter,
        CrdtKind::PnCounter,
        CrdtKind::MaxRegister,
        CrdtKind::MinRegister,
        CrdtKind::LwwRegister,
        CrdtKind::MvRegister,
        CrdtKind::OrSet,
        CrdtKind::RollupMap,
    ];

    /// Stable name (used in Avro enums, configs and logs).
    pub fn name(self) -> &'static str {
        match self {
            CrdtKind::GCounter => "G_COUNTER",
            CrdtKind::PnCounter => "PN_COUNTER",
            CrdtKind::MaxRegister => "MAX_REGISTER",
            CrdtKind::MinRegister => "MIN_REGISTER",
            CrdtKind::LwwRegister => "LWW_REGISTER",
            CrdtKind::MvRegister => "MV_REGISTER",
            CrdtKind::OrSet => "OR_SET",
            CrdtKind::RollupMap => "ROLLUP_MAP",
        }
    }

    /// Inverse of [`CrdtKind::name`].
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The bottom state of this kind.
    pub fn bottom(self) -> Crdt {
        match self {
            CrdtKind::GCounter => Crdt::GCounter(GCounter::default()),
            CrdtKind::PnCounter => Crdt::PnCounter(PnCounter::default()),
            CrdtKind::MaxRegister => Crdt::MaxRegister(MaxRegister::default()),
            CrdtKind::MinRegister => Crdt::MinRegister(MinRegister::default()),
            CrdtKind::LwwRegister => Crdt::LwwRegister(LwwRegister::default()),
            CrdtKind::MvRegister => Crdt::MvRegister(MvRegister::default()),
            CrdtKind::OrSet => Crdt::OrSet(OrSet::default()),
            CrdtKind::RollupMap => Crdt::RollupMap(RollupMap::default()),
        }
    }
}

/// Two states of different kinds under one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cannot join a {} into a {}", .incoming.name(), .existing.name())]
pub struct KindMismatch {
    /// Kind already stored.
    pub existing: CrdtKind,
    /// Kind that arrived.
    pub incoming: CrdtKind,
}

/// Declares [`Crdt`] from one list of its kinds (each a [`CrdtKind`] variant of the same name
/// and the type it holds), with `kind`, `join` and a `From` per type: adding a CRDT type
/// is one line here plus its `CrdtKind`.
macro_rules! crdts {
    ($($variant:ident($ty:ty)),* $(,)?) => {
        /// A CRDT state (or delta) of any kind, over [`Value`]s.
        #[derive(Clone, PartialEq, Eq, Debug)]
        pub enum Crdt {
            $(
                #[doc = concat!("See [`", stringify!($variant), "`].")]
                $variant($ty),
            )*
        }

        impl Crdt {
            /// The kind of this state.
            pub fn kind(&self) -> CrdtKind {
                match self {
                    $(Crdt::$variant(_) => CrdtKind::$variant,)*
                }
            }

            /// Joins `other` into `self`; states of different kinds never join.
            pub fn join(&mut self, other: &Crdt) -> Result<(), KindMismatch> {
                match (self, other) {
                    $((Crdt::$variant(a), Crdt::$variant(b)) => a.join(b),)*
                    (a, b) => {
                        return Err(KindMismatch {
                            existing: a.kind(),
                            incoming: b.kind(),
                        })
                    }
                }
                Ok(())
            }
        }

        $(impl From<$ty> for Crdt {
            fn from(v: $ty) -> Self {
                Crdt::$variant(v)
            }
        })*
    };
}

crdts!(
    GCounter(GCounter),
    PnCounter(PnCounter),
    MaxRegister(MaxRegister<Value>),
    MinRegister(MinRegister<Value>),
    LwwRegister(LwwRegister<Value>),
    MvRegister(MvRegister<Value>),
    OrSet(OrSet<Value>),
    RollupMap(RollupMap),
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_names_and_refuse_to_mix() {
        for k in CrdtKind::ALL {
            assert_eq!(CrdtKind::from_name(k.name()), Some(k));
            assert_eq!(k.bottom().kind(), k);
        }
        let mut a = CrdtKind::GCounter.bottom();
        let err = a.join(&CrdtKind::OrSet.bottom()).unwrap_err();
        assert_eq!(err.incoming, CrdtKind::OrSet);
    }
}

//! Dotted CRDTs: the multi-value register and the add-wins observed-remove set.
//!
//! Each write gets a fresh dot from the object's own causal context; the context remembers
//! every dot the object has seen, so a join can tell "removed/overwritten here" (dot in the
//! other side's context but not in its entries) from "not yet seen there".

use std::collections::{BTreeMap, BTreeSet};

use super::Lattice;
use crate::causal::CausalContext;
use crate::id::{Dot, ReplicaId};

/// Multi-value register: a write overwrites what its writer has seen; concurrent writes are
/// all kept and read together, never silently dropped.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct MvRegister<T> {
    entries: BTreeMap<Dot, T>,
    ctx: CausalContext,
}

impl<T> Default for MvRegister<T> {
    fn default() -> Self {
        Self {
            entries: BTreeMap::new(),
            ctx: CausalContext::new(),
        }
    }
}

impl<T: Ord + Clone> MvRegister<T> {
    /// Writes `value` on behalf of `replica`, overwriting every value seen, and returns the delta.
    pub fn write(&mut self, replica: &ReplicaId, value: T) -> Self {
        let dot = Dot::new(replica.clone(), self.ctx.next_seq(replica));
        let mut ctx = CausalContext::new();
        for d in self.entries.keys() {
            ctx.insert(d);
        }
        ctx.insert(&dot);
        let d = Self {
            entries: BTreeMap::from([(dot, value)]),
            ctx,
        };
        self.join(&d);
        d
    }

    /// The current values: one, or several after concurrent writes. Sorted, deduplicated.
    pub fn values(&self) -> Vec<&T> {
        let set: BTreeSet<&T> = self.entries.values().collect();
        set.into_iter().collect()
    }

    /// The entries (dot, value), in dot order.
    pub fn entries(&self) -> impl ExactSizeIterator<Item = (&Dot, &T)> {
        self.entries.iter()
    }

    /// The object's causal context.
    pub fn context(&self) -> &CausalContext {
        &self.ctx
    }

    /// Rebuilds from parts (decoding). Entries whose dots are outside `ctx` are added to it, so
    /// the result is always a well-formed state.
    pub fn from_parts(entries: impl IntoIterator<Item = (Dot, T)>, mut ctx: CausalContext) -> Self {
        let entries: BTreeMap<Dot, T> = entries.into_iter().collect();
        for d in entries.keys() {
            ctx.insert(d);
        }
        Self { entries, ctx }
    }
}

impl<T: Ord + Clone> Lattice for MvRegister<T> {
    fn join(&mut self, other: &Self) {
        // Keep ours unless the other side has seen the dot and dropped it.
        let other_ctx = &other.ctx;
        self.entries
            .retain(|d, _| other.entries.contains_key(d) || !other_ctx.contains(d));
        for (d, v) in &other.entries {
            if !self.ctx.contains(d) {
                self.entries.insert(d.clone(), v.clone());
            }
        }
        self.ctx.merge(other_ctx);
    }
}

/// Observed-remove set where an add wins over a concurrent remove of the same element.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct OrSet<T> {
    entries: BTreeMap<T, BTreeSet<Dot>>,
    ctx: CausalContext,
}

impl<T> Default for OrSet<T> {
    fn default() -> Self {
        Self {
            entries: BTreeMap::new(),
            ctx: CausalContext::new(),
        }
    }
}

impl<T: Ord + Clone> OrSet<T> {
    /// Adds `elem` on behalf of `replica` and returns the delta.
    pub fn add(&mut self, replica: &ReplicaId, elem: T) -> Self {
        let dot = Dot::new(replica.clone(), self.ctx.next_seq(replica));
        let mut ctx = self.dots_of(&elem);
        ctx.insert(&dot);
        let d = Self {
            entries: BTreeMap::from([(elem, BTreeSet::from([dot]))]),
            ctx,
        };
        self.join(&d);
        d
    }

    /// Removes `elem` (every add of it this replica has seen) and returns the delta.
    pub fn remove(&mut self, elem: &T) -> Self {
        let d = Self {
            entries: BTreeMap::new(),
            ctx: self.dots_of(elem),
        };
        self.join(&d);
        d
    }

    fn dots_of(&self, elem: &T) -> CausalContext {
        let mut ctx = CausalContext::new();
        for d in self.entries.get(elem).into_iter().flatten() {
            ctx.insert(d);
        }
        ctx
    }

    /// Whether `elem` is in the set.
    pub fn contains(&self, elem: &T) -> bool {
        self.entries.contains_key(elem)
    }

    /// The elements, sorted.
    pub fn elements(&self) -> impl ExactSizeIterator<Item = &T> {
        self.entries.keys()
    }

    /// Elements with the dots of the adds that keep them.
    pub fn entries(&self) -> impl ExactSizeIterator<Item = (&T, &BTreeSet<Dot>)> {
        self.entries.iter()
    }

    /// The object's causal context.
    pub fn context(&self) -> &CausalContext {
        &self.ctx
    }

    /// Rebuilds from parts (decoding): empty dot sets are dropped and every dot is added to
    /// `ctx`, so the result is always a well-formed state.
    pub fn from_parts(
        entries: impl IntoIterator<Item = (T, BTreeSet<Dot>)>,
        mut ctx: CausalContext,
    ) -> Self {
        let mut map: BTreeMap<T, BTreeSet<Dot>> = BTreeMap::new();
        for (e, dots) in entries {
            for d in &dots {
                ctx.insert(d);
            }
            if !dots.is_empty() {
                map.entry(e).or_default().extend(dots);
            }
        }
        Self { entries: map, ctx }
    }
}

impl<T: Ord + Clone> Lattice for OrSet<T> {
    fn join(&mut self, other: &Self) {
        let other_ctx = &other.ctx;
        let self_ctx = &self.ctx;
        let mut merged: BTreeMap<T, BTreeSet<Dot>> = BTreeMap::new();
        for (e, dots) in &self.entries {
            let theirs = other.entries.get(e);
            let keep: BTreeSet<Dot> = dots
                .iter()
                .filter(|d| theirs.is_some_and(|t| t.contains(*d)) || !other_ctx.contains(d))
                .cloned()
                .collect();
            if !keep.is_empty() {
                merged.insert(e.clone(), keep);
            }
        }
        for (e, dots) in &other.entries {
            let new: Vec<&Dot> = dots.iter().filter(|d| !self_ctx.contains(d)).collect();
            if !new.is_empty() {
                merged
                    .entry(e.clone())
                    .or_default()
                    .extend(new.into_iter().cloned());
            }
        }
        self.entries = merged;
        self.ctx.merge(other_ctx);
    }
}

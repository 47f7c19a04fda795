//! Dotted CRDTs: the multi-value register and the add-wins observed-remove set.
//!
//! Each write gets a fresh dot from the object's own causal context; the context remembers
//! every dot the object has seen, so a join can tell "removed/overwritten here" (dot in the
//! other side's context but not in its entries) from "not yet seen there".

use std::collections::{BTreeMap, BTreeSet};

use super::Lattice;
use crate::causal::CausalContext;
use crate::id::{Dot, ReplicaId};

/// Dots of `ours` that `ctx` has seen but `kept` does not keep: what a join must drop.
///
/// Walks `ctx`'s covered ranges against the dot-ordered map instead of walking all of `ours`,
/// so joining a small delta into a large state costs in proportion to the delta.
fn superseded<T>(
    ours: &BTreeMap<Dot, T>,
    ctx: &CausalContext,
    kept: impl Fn(&Dot) -> bool,
) -> Vec<Dot> {
    let mut out = Vec::new();
    for (replica, rc) in ctx.iter() {
        for range in rc.covered() {
            let lo = Dot::new(replica.clone(), range.start);
            if range.start == range.end {
                // Deltas' contexts are mostly single dots: one lookup instead of a range scan.
                if ours.contains_key(&lo) && !kept(&lo) {
                    out.push(lo);
                }
                continue;
            }
            let hi = Dot::new(replica.clone(), range.end);
            out.extend(
                ours.range(lo..=hi)
                    .map(|(d, _)| d)
                    .filter(|d| !kept(d))
                    .cloned(),
            );
        }
    }
    out
}

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
        // Drop ours where the other side has seen the dot and dropped it.
        for d in superseded(&self.entries, &other.ctx, |d| other.entries.contains_key(d)) {
            self.entries.remove(&d);
        }
        for (d, v) in &other.entries {
            if !self.ctx.contains(d) {
                self.entries.insert(d.clone(), v.clone());
            }
        }
        self.ctx.merge(&other.ctx);
    }
}

/// Observed-remove set where an add wins over a concurrent remove of the same element.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct OrSet<T> {
    entries: BTreeMap<T, BTreeSet<Dot>>,
    /// The same dots keyed by dot (derived from `entries`), so that a join finds the dots a
    /// delta's context removes without scanning every element.
    by_dot: BTreeMap<Dot, T>,
    ctx: CausalContext,
}

impl<T> Default for OrSet<T> {
    fn default() -> Self {
        Self {
            entries: BTreeMap::new(),
            by_dot: BTreeMap::new(),
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
            by_dot: BTreeMap::from([(dot.clone(), elem.clone())]),
            entries: BTreeMap::from([(elem, BTreeSet::from([dot]))]),
            ctx,
        };
        self.join(&d);
        d
    }

    /// Removes `elem` (every add of it this replica has seen) and returns the delta.
    pub fn remove(&mut self, elem: &T) -> Self {
        let d = Self {
            ctx: self.dots_of(elem),
            ..Self::default()
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
        let mut s = Self::default();
        for (e, dots) in entries {
            for d in dots {
                ctx.insert(&d);
                s.insert_dot(d, e.clone());
            }
        }
        s.ctx = ctx;
        s
    }

    fn insert_dot(&mut self, d: Dot, e: T) {
        // A dot names one add of one element; a (malformed) second element for it loses.
        if let std::collections::btree_map::Entry::Vacant(v) = self.by_dot.entry(d) {
            self.entries
                .entry(e.clone())
                .or_default()
                .insert(v.key().clone());
            v.insert(e);
        }
    }

    fn remove_dot(&mut self, d: &Dot) {
        if let Some(e) = self.by_dot.remove(d) {
            if let Some(dots) = self.entries.get_mut(&e) {
                dots.remove(d);
                if dots.is_empty() {
                    self.entries.remove(&e);
                }
            }
        }
    }
}

impl<T: Ord + Clone> Lattice for OrSet<T> {
    fn join(&mut self, other: &Self) {
        for d in superseded(&self.by_dot, &other.ctx, |d| other.by_dot.contains_key(d)) {
            self.remove_dot(&d);
        }
        for (d, e) in &other.by_dot {
            if !self.ctx.contains(d) {
                self.insert_dot(d.clone(), e.clone());
            }
        }
        self.ctx.merge(&other.ctx);
    }
}

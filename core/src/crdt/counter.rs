//! G-counter and PN-counter.

use std::collections::BTreeMap;

use super::Lattice;
use crate::id::ReplicaId;

/// Grow-only counter: per replica the count of its own increments; the value is their sum.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Default)]
pub struct GCounter {
    counts: BTreeMap<ReplicaId, u64>,
}

impl GCounter {
    /// Adds `n` on behalf of `replica` (saturating) and returns the delta.
    pub fn inc(&mut self, replica: &ReplicaId, n: u64) -> GCounter {
        let c = self
            .counts
            .get(replica)
            .copied()
            .unwrap_or(0)
            .saturating_add(n);
        // Zero counts are never stored, so equal counters are equal values.
        let mut d = GCounter::default();
        d.join_entry(replica, c);
        self.join(&d);
        d
    }

    /// The counter's value.
    pub fn value(&self) -> u128 {
        self.counts.values().map(|&c| u128::from(c)).sum()
    }

    /// Per-replica counts, in replica order.
    pub fn entries(&self) -> impl ExactSizeIterator<Item = (&ReplicaId, u64)> {
        self.counts.iter().map(|(r, &c)| (r, c))
    }

    /// Builds from per-replica counts (duplicates keep the largest; zeros are dropped, so the
    /// representation stays canonical).
    pub fn from_entries(entries: impl IntoIterator<Item = (ReplicaId, u64)>) -> Self {
        let mut g = GCounter::default();
        for (r, c) in entries {
            g.join_entry(&r, c);
        }
        g
    }

    fn join_entry(&mut self, r: &ReplicaId, c: u64) {
        if c == 0 {
            return;
        }
        match self.counts.get_mut(r) {
            Some(v) => *v = (*v).max(c),
            None => {
                self.counts.insert(r.clone(), c);
            }
        }
    }
}

impl Lattice for GCounter {
    fn join(&mut self, other: &Self) {
        for (r, &c) in &other.counts {
            self.join_entry(r, c);
        }
    }
}

/// Counter that goes up and down: a pair of G-counters.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Default)]
pub struct PnCounter {
    /// Increments.
    pub p: GCounter,
    /// Decrements.
    pub n: GCounter,
}

impl PnCounter {
    /// Adds `by` (may be negative) on behalf of `replica` and returns the delta.
    pub fn add(&mut self, replica: &ReplicaId, by: i64) -> PnCounter {
        let mut d = PnCounter::default();
        if by >= 0 {
            d.p = self.p.inc(replica, by.unsigned_abs());
        } else {
            d.n = self.n.inc(replica, by.unsigned_abs());
        }
        d
    }

    /// The counter's value.
    pub fn value(&self) -> i128 {
        // Each side is at most 2^64 * replicas; i128 holds any realistic fleet.
        self.p.value() as i128 - self.n.value() as i128
    }
}

impl Lattice for PnCounter {
    fn join(&mut self, other: &Self) {
        self.p.join(&other.p);
        self.n.join(&other.n);
    }
}
